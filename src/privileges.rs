//! Running as the user the operator picked. The container image runs as 65532:65532;
//! `--user` changes that. As the *arr images do, a process started as root with
//! `PUID` and `PGID` set switches to that uid and gid before it opens anything, so its
//! files belong to the same user as, say, Healarr's.

/// The `PUID`/`PGID` pair from the environment, when both are set.
pub fn wanted_ids(
    get: impl Fn(&str) -> Option<String>,
) -> Result<Option<(libc::uid_t, libc::gid_t)>, String> {
    let parse = |name: &str| -> Result<Option<u32>, String> {
        match get(name) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<u32>()
                .map(Some)
                .map_err(|_| format!("{name}: `{v}` is not a numeric user or group id")),
        }
    };
    match (parse("PUID")?, parse("PGID")?) {
        (Some(uid), Some(gid)) => Ok(Some((uid, gid))),
        (None, None) => Ok(None),
        (Some(_), None) => Err("PUID is set without PGID: set both".into()),
        (None, Some(_)) => Err("PGID is set without PUID: set both".into()),
    }
}

/// Switches a root process to `uid`:`gid` for good (supplementary groups dropped).
/// Must run before any other thread exists. Does nothing when not root.
pub fn switch_to(uid: libc::uid_t, gid: libc::gid_t) -> Result<bool, String> {
    // SAFETY: plain libc calls on this process's credentials; no memory is shared.
    unsafe {
        if libc::geteuid() != 0 {
            return Ok(false);
        }
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(format!("setgroups: {}", std::io::Error::last_os_error()));
        }
        if libc::setgid(gid) != 0 {
            return Err(format!(
                "setgid({gid}): {}",
                std::io::Error::last_os_error()
            ));
        }
        if libc::setuid(uid) != 0 {
            return Err(format!(
                "setuid({uid}): {}",
                std::io::Error::last_os_error()
            ));
        }
        if libc::getuid() != uid || libc::geteuid() != uid || libc::getgid() != gid {
            return Err(format!("still not {uid}:{gid} after switching"));
        }
    }
    Ok(true)
}

/// True when running as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::wanted_ids;

    #[test]
    fn both_or_neither_and_numbers_only() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(wanted_ids(env(&[])), Ok(None));
        assert_eq!(
            wanted_ids(env(&[("PUID", "1000"), ("PGID", "100")])),
            Ok(Some((1000, 100)))
        );
        assert!(wanted_ids(env(&[("PUID", "1000")]))
            .unwrap_err()
            .contains("PGID"));
        assert!(wanted_ids(env(&[("PUID", "abc"), ("PGID", "1")]))
            .unwrap_err()
            .contains("PUID: `abc`"));
    }
}

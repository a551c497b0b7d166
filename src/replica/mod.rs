//! Replicas: verified backups copied off the machine, to object storage (S3 and
//! S3-compatible services, GCS, Azure) or another disk, through the `object_store`
//! crate.
//!
//! A local backup is shipped only after it passed its own checks (see [`crate::backup`]).
//! On its way out it is compressed (zstd) and, unless a replica says
//! `encryption = "none"`, encrypted with age to the replica's recipients, in one
//! stream: the file is read once, a part at a time, and never held whole in memory.
//! The copy is a standard file: `age -d -i key.txt X | zstd -d > x.db` opens it
//! without dbwarden.
//!
//! # Layout under a replica's prefix
//!
//! ```text
//! backups/<backup name>.zst.age        the copy (`.zst` when not encrypted)
//! backups/<backup name>.manifest.json  written last: a copy counts only with it
//! backups/<backup name>.drill.json     the last restore drill's verdict
//! generations/<generation>/...         continuous replication (see [`stream`])
//! lease.json                           which service writes here (see [`lease`])
//! lease.lock                           file:// replicas only: the lock itself
//! ```
//!
//! Names are the local backups' names (`dbwarden-<UTC time>.db`), so the time of each
//! copy is in its name and a replica can be read, listed and pruned by a new machine
//! that has only the settings. The manifest's public part (sizes, the copy's SHA-256,
//! times) is plain JSON, so retention and catch-up need no secret; what the database
//! holds (its SHA-256, last event id, event count, schema) is sealed to the same age
//! recipients as the copy. Continuous replication's snapshots and WAL segments live
//! beside `backups/` under the same prefix ([`stream`]).
//!
//! Nothing here ever blocks the writer: shipping reads the verified backup file, never
//! the live database.

pub mod ack;
pub mod applier;
pub mod catalog;
pub mod codec;
pub mod compaction;
pub mod drill;
pub mod fetch;
pub mod lag_history;
pub mod layout;
pub mod lease;
pub mod manifest;
pub mod replicator;
pub mod retention;
pub mod segment;
pub mod ship;
pub mod shipper;
pub mod spool;
pub mod store;
pub mod stream;
pub mod streamer;
pub mod tailer;
pub mod uploads;
pub mod wal_restart;

use std::path::PathBuf;

use crate::config::CpuPriority;

pub use store::Replica;

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("replica {replica}: {source}")]
    Store {
        replica: String,
        #[source]
        source: object_store::Error,
    },
    #[error("replica {replica}: cannot be opened: {reason}")]
    Open { replica: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("replica {replica}: copy {name}: {reason}")]
    BadCopy {
        replica: String,
        name: String,
        reason: String,
    },
    #[error("replica {replica}: no copy named {name}")]
    NoSuchCopy { replica: String, name: String },
    #[error("replica {replica}: no complete copy")]
    Empty { replica: String },
    #[error("no replica named `{0}` in the settings")]
    UnknownReplica(String),
    #[error("cannot decrypt: {0}")]
    Decrypt(String),
    #[error("cannot encrypt: {0}")]
    Encrypt(String),
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error(transparent)]
    Segment(#[from] segment::SegmentError),
    #[error(transparent)]
    WalFile(#[from] crate::db::walfile::WalFileError),
    #[error("replica {replica}: written by another dbwarden service ({holder}{}); not writing there: stop that service, or give this one another prefix", renewed_at.map(|t| format!(", lease renewed {}", t.to_rfc3339())).unwrap_or_default())]
    LeaseHeld {
        replica: String,
        holder: String,
        renewed_at: Option<chrono::DateTime<chrono::Utc>>,
    },
    #[error("shipping stopped: the service is shutting down")]
    Cancelled,
}

impl ReplicaError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ReplicaError {
        let path = path.into();
        move |source| ReplicaError::Io { path, source }
    }
}

/// This machine's host name, as manifests and leases record who wrote them.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
    // or truncates, and the last byte is kept 0.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The niceness of shipping at `cpu_priority = "low"`, and where `SCHED_IDLE` is
/// refused (some container runtimes filter `sched_setscheduler`).
pub const SHIPPING_NICENESS: i32 = 10;

/// Lowers the calling thread's priority, and that of the threads it starts afterwards
/// (the runtime's blocking pool, zstd's workers: Linux threads inherit both), as the
/// replica's `cpu_priority` says. Compressing, encrypting and hashing a backup can keep
/// every core busy, and a woken writer must not wait behind them: at nice 10 alone the
/// writer's p99 while shipping was 2.4× idle on two cores; under `SCHED_IDLE` (the
/// default) a waking writer preempts shipping at once (BENCHMARKS.md).
///
/// The price of `SCHED_IDLE`: on a machine whose cores are all busy with other work
/// for hours, shipping gets only a sliver of CPU and waits for quieter moments; the
/// replica's `max_age_secs` alert says so if it waits too long, and `low` is the
/// setting for such machines.
/// Best effort: a failure is logged and shipping goes on at the priority it has.
pub fn lower_this_threads_priority(priority: CpuPriority) {
    if priority == CpuPriority::Normal {
        return;
    }
    // SAFETY: gettid has no preconditions; setpriority with PRIO_PROCESS and a thread
    // id changes only that thread's niceness on Linux.
    let rc = unsafe {
        libc::setpriority(
            libc::PRIO_PROCESS,
            libc::gettid() as libc::id_t,
            SHIPPING_NICENESS,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the shipping thread's niceness");
    }
    if priority == CpuPriority::Idle {
        // SAFETY: sched_param is plain integers (musl's has more fields than glibc's),
        // and all zeros is priority 0, SCHED_IDLE's only one; pid 0 is the calling
        // thread.
        let rc = unsafe {
            let param: libc::sched_param = std::mem::zeroed();
            libc::sched_setscheduler(0, libc::SCHED_IDLE, &param)
        };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "could not put the shipping thread under SCHED_IDLE");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_and_niceness() -> (i32, i32) {
        // SAFETY: pid 0 is the calling thread; getpriority with a thread id reads only
        // that thread's niceness.
        unsafe {
            (
                libc::sched_getscheduler(0),
                libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t),
            )
        }
    }

    fn lowered(priority: CpuPriority) -> ((i32, i32), (i32, i32)) {
        std::thread::spawn(move || {
            lower_this_threads_priority(priority);
            let own = policy_and_niceness();
            let started = std::thread::spawn(policy_and_niceness)
                .join()
                .expect("inner thread");
            (own, started)
        })
        .join()
        .expect("shipping thread")
    }

    #[test]
    fn shipping_threads_and_the_threads_they_start_run_at_the_replicas_priority() {
        let (own, started) = lowered(CpuPriority::Idle);
        assert_eq!(own, (libc::SCHED_IDLE, SHIPPING_NICENESS));
        assert_eq!(started, own, "a thread started afterwards inherits both");
        let (own, started) = lowered(CpuPriority::Low);
        assert_eq!(own, (libc::SCHED_OTHER, SHIPPING_NICENESS));
        assert_eq!(started, own);
        let (own, started) = lowered(CpuPriority::Normal);
        assert_eq!(own, policy_and_niceness(), "normal changes nothing");
        assert_eq!(started, own);
        assert_eq!(
            policy_and_niceness().0,
            libc::SCHED_OTHER,
            "the test's own thread is untouched"
        );
    }
}

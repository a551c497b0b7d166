//! `command` jobs: a program run without a shell, in its own process group.
//!
//! - argv is executed directly; write `["sh", "-c", "..."]` to get a shell.
//! - stdin is `/dev/null`; stdout and stderr are read concurrently and the last
//!   [`OUTPUT_LIMIT`] bytes of each are kept with the run.
//! - The environment is dbwarden's, minus every `DBWARDEN__*` variable (they may hold
//!   the API token or channel secrets), plus `DBWARDEN_JOB` (the job's name),
//!   `DBWARDEN_DATABASE` (the database path) and the job's own `env`.
//! - The program leads a new process group. On timeout or shutdown the whole group
//!   gets SIGTERM, then SIGKILL after [`TERM_GRACE`]. When the program exits, anything
//!   it left behind in its group is killed too: a job leaves nothing running.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};

use super::registry::{keep_tail, OUTPUT_LIMIT};
use super::{JobContext, JobReport, JobResult};

/// Between SIGTERM and SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(3);

/// Kills the process group when dropped (also when the run's future is abandoned).
struct ProcessGroup(libc::pid_t);

impl ProcessGroup {
    fn signal(&self, signal: libc::c_int) {
        // SAFETY: killpg only sends a signal; a group that no longer exists is ESRCH.
        unsafe {
            libc::killpg(self.0, signal);
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

type Tail = Arc<Mutex<Vec<u8>>>;

async fn read_tail(mut stream: impl AsyncRead + Unpin, tail: Tail) {
    let mut buf = [0u8; 8192];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if let Ok(mut t) = tail.lock() {
            t.extend_from_slice(&buf[..n]);
            if t.len() > 2 * OUTPUT_LIMIT {
                let excess = t.len() - OUTPUT_LIMIT;
                t.drain(..excess);
            }
        }
    }
}

fn describe(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended without a status".into(),
    }
}

pub async fn run(
    ctx: &JobContext,
    argv: &[String],
    workdir: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> JobResult {
    let Some((program, args)) = argv.split_first() else {
        return Err(JobReport::from("argv is empty"));
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("DBWARDEN__") {
            cmd.env_remove(key);
        }
    }
    cmd.env("DBWARDEN_JOB", ctx.name())
        .env("DBWARDEN_DATABASE", ctx.database())
        .envs(env);
    if let Some(dir) = workdir {
        cmd.current_dir(dir);
    }
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| JobReport::from(format!("cannot start `{program}`: {e}")))?;
    let group = match child.id() {
        Some(pid) => ProcessGroup(pid as libc::pid_t),
        None => {
            return Err(JobReport::from(
                "the program ended before it could be watched",
            ))
        }
    };
    let (out, err) = (Tail::default(), Tail::default());
    let readers = [
        child
            .stdout
            .take()
            .map(|s| tokio::spawn(read_tail(s, out.clone()))),
        child
            .stderr
            .take()
            .map(|s| tokio::spawn(read_tail(s, err.clone()))),
    ];
    let mut stopped = None;
    let status = tokio::select! {
        status = child.wait() => status,
        _ = ctx.cancelled() => {
            group.signal(libc::SIGTERM);
            match tokio::time::timeout(TERM_GRACE, child.wait()).await {
                Ok(status) => {
                    stopped = Some("stopped with SIGTERM");
                    status
                }
                Err(_) => {
                    stopped = Some("ignored SIGTERM; process group killed");
                    group.signal(libc::SIGKILL);
                    child.wait().await
                }
            }
        }
    };
    // Whatever the program left in its group goes too, which also closes the pipes.
    drop(group);
    for reader in readers.into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
    }
    let output = render_output(&out, &err);
    let elapsed = started.elapsed().as_millis();
    let status = status.map_err(|e| JobReport::from(format!("waiting for `{program}`: {e}")))?;
    let mut message = format!("`{program}`: {} after {elapsed} ms", describe(&status));
    if let Some(how) = stopped {
        message = format!("{message} ({how})");
    }
    let report = JobReport {
        message,
        output,
        unchanged: false,
    };
    if status.success() && stopped.is_none() {
        Ok(report)
    } else {
        Err(report)
    }
}

fn render_output(out: &Tail, err: &Tail) -> Option<String> {
    let text = |t: &Tail| {
        t.lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let (out, err) = (text(out), text(err));
    let mut rendered = String::new();
    if !out.is_empty() {
        rendered.push_str(&keep_tail(out, OUTPUT_LIMIT / 2));
    }
    if !err.is_empty() {
        if !rendered.is_empty() && !rendered.ends_with('\n') {
            rendered.push('\n');
        }
        rendered.push_str("[stderr] ");
        rendered.push_str(&keep_tail(err, OUTPUT_LIMIT / 2));
    }
    (!rendered.is_empty()).then_some(rendered)
}

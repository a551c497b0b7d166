//! What the power-loss harnesses share: the child's appends and how it reports them,
//! and the parent's reading of that report and of the cut.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dbwarden::events::NewEvent;
use rusqlite::Connection;

/// (key, aggregate id, event type, event data) of an acknowledged event.
pub type Acked = (String, String, String, serde_json::Value);

/// The `i`th event of appender `writer`: several aggregates and types, each with a
/// key of its own so the parent finds it whatever row id it got.
pub fn event(writer: usize, i: usize) -> NewEvent {
    let aggregate = format!("w{writer}-c{}", i % 5);
    let event_type = if i % 5 == 4 {
        "VerificationSuccess"
    } else if i.is_multiple_of(3) {
        "DownloadFailed"
    } else {
        "CorruptionDetected"
    };
    NewEvent::new(
        "corruption",
        &aggregate,
        event_type,
        serde_json::json!({ "n": i }),
    )
    .expect("a valid event")
    .with_key(uuid::Uuid::new_v4())
}

/// Appends `events` and reports the answer: an `ACK` line per event (as the harness
/// looks it up) or one `REFUSED` line.
pub async fn append_and_report(writer: &dbwarden::writer::WriterHandle, events: Vec<NewEvent>) {
    let described: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                "{} {} {} {}",
                e.key().map(|k| k.to_string()).unwrap_or_default(),
                e.aggregate_id(),
                e.event_type(),
                e.event_data()
            )
        })
        .collect();
    match writer.append(events).await {
        Ok(_) => described.iter().for_each(|d| println!("ACK {d}")),
        Err(e) => println!("REFUSED {e}"),
    }
}

/// The children's workload: `writers` tasks each make `appends` appends (of one or two
/// events) through the real writer while the jobs run one after another, each after
/// `pause`, each reported as `JOB name outcome` (`ok` or why not); answers once all
/// are done.
pub async fn append_while_jobs_run(
    service: &dbwarden::supervisor::Service,
    writers: usize,
    appends: usize,
    jobs: &[&str],
    pause: std::time::Duration,
) {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let writer = service.writer.clone();
        tasks.push(actix_rt::spawn(async move {
            for i in 0..appends {
                let events: Vec<NewEvent> = (0..1 + i % 2).map(|k| event(w, i * 2 + k)).collect();
                append_and_report(&writer, events).await;
            }
        }));
    }
    for job in jobs {
        actix_rt::time::sleep(pause).await;
        let outcome = match service.jobs.trigger(job, dbwarden::jobs::Trigger::Api) {
            Ok(done) => match done.await {
                Ok(run) if run.outcome == dbwarden::jobs::Outcome::Ok => "ok".to_string(),
                Ok(run) => format!("{:?}", run.outcome),
                Err(e) => format!("lost: {e}"),
            },
            Err(e) => format!("refused: {e}"),
        };
        println!("JOB {job} {outcome}");
    }
    for t in tasks {
        t.await.expect("an appender panicked");
    }
}

/// What a child printed: acknowledged events, refusals, and its other lines
/// (`WORD rest`) for the harness to read.
#[derive(Debug, Default)]
pub struct ChildReport {
    pub acked: Vec<Acked>,
    pub refused: Vec<String>,
    pub lines: Vec<(String, String)>,
}

impl ChildReport {
    /// Reads the child's stdout to its end.
    pub fn read(stdout: impl Read) -> ChildReport {
        let mut report = ChildReport::default();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("ACK ") {
                let mut parts = rest.splitn(4, ' ');
                if let (Some(k), Some(a), Some(t), Some(d)) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                {
                    let data = serde_json::from_str(d).expect("the child printed the event's data");
                    report.acked.push((k.into(), a.into(), t.into(), data));
                }
            } else if let Some(reason) = line.strip_prefix("REFUSED ") {
                report.refused.push(reason.to_string());
            } else if let Some((word, rest)) = line.split_once(' ') {
                report.lines.push((word.to_string(), rest.to_string()));
            }
        }
        report
    }

    /// The rest of each line that began with `word`.
    pub fn lines_of<'a>(&'a self, word: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.lines
            .iter()
            .filter(move |(w, _)| w == word)
            .map(|(_, rest)| rest.as_str())
    }

    /// The number the child printed as `SYNCS n` before its explicit cut.
    pub fn syncs(&self) -> Option<u64> {
        self.lines_of("SYNCS")
            .next()
            .and_then(|n| n.trim().parse().ok())
    }
}

/// What the crash VFS wrote to its report file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// `planned` or `explicit`.
    pub kind: String,
    /// The sync count at the cut.
    pub at: u64,
    /// For a planned cut, the file or directory whose sync it came before.
    pub before_sync_of: Option<std::path::PathBuf>,
}

pub fn read_cut(report: &Path) -> Option<Cut> {
    let text = std::fs::read_to_string(report).ok()?;
    let mut parts = text.trim().splitn(3, ' ');
    Some(Cut {
        kind: parts.next()?.to_string(),
        at: parts.next()?.parse().ok()?,
        before_sync_of: parts.next().map(std::path::PathBuf::from),
    })
}

/// The keys of acknowledged events that `conn`'s database lacks or holds changed.
pub fn missing(conn: &Connection, acked: &[Acked]) -> Vec<String> {
    let mut stmt = conn
        .prepare(
            "SELECT e.aggregate_id, e.event_type, e.event_data FROM dbwarden_event_keys k
               JOIN events e ON e.id = k.event_id WHERE k.event_key = ?1",
        )
        .expect("prepare");
    let mut lost = Vec::new();
    for (key, aggregate, event_type, data) in acked {
        let found: Option<(String, String, String)> = stmt
            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .ok();
        let same = found.as_ref().is_some_and(|(a, t, d)| {
            a == aggregate
                && t == event_type
                && serde_json::from_str::<serde_json::Value>(d).ok().as_ref() == Some(data)
        });
        if !same {
            lost.push(key.clone());
        }
    }
    lost
}

/// Where and how a child's power goes out: the crash VFS's plan.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    /// The sync before which the power goes out; `None`: the explicit cut after the
    /// workload.
    pub crash_at: Option<u64>,
    /// `all`, `subset`, `torn` or `kill`.
    pub mode: &'static str,
    pub seed: u64,
    /// `FULL`; the self-tests' `NORMAL` and `OFF` do not sync commits.
    pub synchronous: &'static str,
}

impl Point {
    /// Whether the power went out where this point planned it: at its sync, or for a
    /// point without one, at the explicit cut after the workload.
    pub fn cut_as_planned(&self, cut: Option<&(String, u64)>) -> bool {
        match (self.crash_at, cut) {
            (Some(n), Some((kind, at))) => kind == "planned" && *at == n,
            (None, Some((kind, _))) => kind == "explicit",
            (_, None) => false,
        }
    }
}

/// `runs` points without a planned cut (the power goes out after the workload), seeds
/// 1..=runs.
pub fn uncut(runs: u64, synchronous: &'static str) -> Vec<Point> {
    (1..=runs)
        .map(|seed| Point {
            crash_at: None,
            mode: "all",
            seed,
            synchronous,
        })
        .collect()
}

/// What a child's run left.
#[derive(Debug)]
pub struct ChildRun {
    pub printed: ChildReport,
    /// It ended with the crash VFS's exit code.
    pub power_cut: bool,
    pub cut: Option<Cut>,
}

/// Runs the ignored test `test` of this test binary as the child, with `dir_var` set to
/// `dir` (where it works and the cut is reported) and the crash VFS's plan from `point`;
/// a child still running after a minute fails the test.
pub fn run_child(test: &str, dir_var: &str, dir: &Path, point: &Point) -> ChildRun {
    let exe = std::env::current_exe().expect("test binary");
    let report = dir.join("cut-report");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        test,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(dir_var, dir)
    .env("DBWARDEN_CRASH_REPORT", &report)
    .env("DBWARDEN_CRASH_MODE", point.mode)
    .env("DBWARDEN_CRASH_SEED", point.seed.to_string())
    .env("DBWARDEN_CRASH_SYNCHRONOUS", point.synchronous)
    .env_remove("RUST_LOG")
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    match point.crash_at {
        Some(n) => cmd.env("DBWARDEN_CRASH_AT", n.to_string()),
        None => cmd.env_remove("DBWARDEN_CRASH_AT"),
    };
    let mut child = cmd.spawn().expect("spawn the child");
    let printed = ChildReport::read(child.stdout.take().expect("stdout"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the child hung at {point:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    ChildRun {
        printed,
        power_cut: status.code() == Some(dbwarden::db::crashvfs::EXIT_CODE),
        cut: read_cut(&report),
    }
}

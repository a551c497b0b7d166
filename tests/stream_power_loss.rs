//! Power loss while streaming: the real service runs in a child process on the
//! crash-simulating VFS (`db::crashvfs`) and streams to a real S3 server in this process
//! with `ack_writes = true`, while appenders write and checkpoints reset the WAL. The
//! power goes out at the Nth sync, counted across SQLite's files and dbwarden's own
//! (the spool's segments, their renames and directories, the shipped-records, the
//! snapshot), so the sweep cuts at each step of shipping; mode `kill` is SIGKILL at that
//! sync instead (nothing taken back). The S3 server keeps what it acknowledged, as a
//! remote service does; the local disk loses what was not synced.
//!
//! After each cut the harness checks:
//! - **the lost machine**: from S3 alone, the latest restore holds every acknowledged
//!   event (an acknowledgement means the replica had the commit);
//! - **the recovered machine**: the local database is intact and holds every
//!   acknowledged event;
//! - **recovery ships on**: the real binary started on the recovered directory ships
//!   what the cut run spooled and did not upload, and starts a new generation; once the
//!   newest generation restores to exactly the local database, every generation on S3
//!   restores, its chain reaching its furthest segment (no gap, nothing orphaned, no
//!   segment applied twice: the walk takes each position once and checks the WAL
//!   checksum chain across every segment), and no generation holds an event the
//!   recovered machine does not: what was shipped was durable first.
//!
//! `cargo test` cuts at 20 syncs spread over the run, the modes in turn;
//! `DBWARDEN_STREAM_POWER_LOSS_EVERY=1` (`.ci/run`) at every sync, the modes in turn;
//! `DBWARDEN_STREAM_POWER_LOSS_LONG=1` at every sync in every mode (RELIABILITY.md's
//! figures).

mod common;
#[path = "common/s3.rs"]
mod s3;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::crash::{self, append_and_report, event, Acked};
use dbwarden::db::{crashvfs, integrity};
use dbwarden::replica::stream::{self, Target};
use dbwarden::replica::Replica;
use dbwarden::supervisor::Service;
use s3::S3Server;

/// Concurrent appenders in the child, and appends each makes.
const WRITERS: usize = 3;
const APPENDS_PER_WRITER: usize = 8;
/// Checkpoints the child runs while the appenders write: each resets the WAL, so the
/// stream moves on to the next WAL.
const CHECKPOINTS: usize = 2;
/// The crash VFS's power-cut modes, and `kill`: SIGKILL at that sync.
const MODES: [&str; 4] = ["all", "subset", "torn", "kill"];
/// Cut points of the short sweep.
const SHORT_POINTS: u64 = 20;

// ------------------------------------------------------------------ the child

fn child_settings(dir: &Path) -> dbwarden::config::Settings {
    let toml = std::fs::read_to_string(dir.join("config.toml")).expect("the harness's settings");
    common::settings_with_file(
        dir,
        &toml,
        &[
            ("DBWARDEN__DATABASE__VFS", crashvfs::NAME),
            ("DBWARDEN__INTEGRITY__QUICK_AT_STARTUP", "false"),
        ],
    )
}

/// The workload: appends from several tasks through the real writer (each answered
/// only once S3 has it), checkpoints in between, one append after them, then an
/// explicit power cut.
#[test]
#[ignore = "the child process of the streaming power-loss harness; the harness runs it"]
fn stream_crash_child() {
    let Ok(dir) = std::env::var("DBWARDEN_STREAM_CRASH_DIR") else {
        return;
    };
    let settings = child_settings(Path::new(&dir));
    // libtest printed `test stream_crash_child ... ` without a newline: end that line.
    println!();
    actix_rt::System::new().block_on(async move {
        let service = Service::start(settings).await.expect("service starts");
        crash::append_while_jobs_run(
            &service,
            WRITERS,
            APPENDS_PER_WRITER,
            &["checkpoint"; CHECKPOINTS],
            Duration::from_millis(150),
        )
        .await;
        append_and_report(&service.writer, vec![event(WRITERS, 0)]).await;
        println!("SYNCS {}", crashvfs::sync_count());
        crashvfs::power_cut_now();
    });
}

// ------------------------------------------------------------------ the harness

use crash::Point;

#[derive(Debug, Default)]
struct Verdict {
    power_cut: bool,
    cut: Option<(String, u64)>,
    /// The step a planned cut came before ([`step_of`]).
    step: Option<&'static str>,
    syncs: Option<u64>,
    refused: Vec<String>,
    jobs: Vec<String>,
    acknowledged: usize,
    /// Acknowledged events the latest restore from S3 alone lacks (or why it failed).
    lost_on_replica: Vec<String>,
    /// Acknowledged events the recovered local database lacks.
    lost_locally: Vec<String>,
    /// Its integrity problems, or why it does not open.
    local_integrity: Vec<String>,
    /// Whatever went wrong after the restart: a generation that does not restore, a
    /// chain short of its furthest segment, an event the local database never kept.
    after_recovery: Vec<String>,
    generations: usize,
}

impl Verdict {
    fn cut_as_planned(&self, point: &Point) -> bool {
        point.cut_as_planned(self.cut.as_ref())
    }

    fn clean(&self) -> bool {
        self.power_cut
            && self.lost_on_replica.is_empty()
            && self.lost_locally.is_empty()
            && self.local_integrity.is_empty()
            && self.after_recovery.is_empty()
    }
}

/// What every point shares: the S3 server and the identity the replica encrypts to.
struct Harness {
    server: S3Server,
    root: tempfile::TempDir,
    identity: PathBuf,
    recipient: String,
}

impl Harness {
    async fn new() -> Harness {
        let root = tempfile::tempdir().expect("tempdir");
        let server = S3Server::start(&root.path().join("s3"), "stream-power-loss").await;
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public().to_string();
        let path = root.path().join("identity.txt");
        use age::secrecy::ExposeSecret;
        std::fs::write(&path, format!("{}\n", identity.to_string().expose_secret()))
            .expect("identity file");
        std::fs::write(root.path().join("s3-secret"), s3::SECRET_KEY).expect("secret");
        Harness {
            server,
            root,
            identity: path,
            recipient,
        }
    }

    /// The settings of one point: an S3 replica of its own prefix, acknowledging writes.
    fn config(&self, prefix: &str) -> String {
        format!(
            r#"
[[replicas]]
name = "s3"
url = "s3://{bucket}/{prefix}"
endpoint = "{endpoint}"
allow_http = true
access_key_id = "{access}"
secret_access_key_file = "{secret}"
age_recipients = ["{recipient}"]
cpu_priority = "low"
sync_interval_ms = 200
ack_writes = true
"#,
            bucket = self.server.bucket,
            endpoint = self.server.endpoint(),
            access = s3::ACCESS_KEY,
            secret = self.root.path().join("s3-secret").display(),
            recipient = self.recipient,
        )
    }

    async fn run_point(&self, index: usize, point: Point) -> Verdict {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = self.config(&format!("point-{index}-{}", point.seed));
        let settings = common::settings_with_file(dir.path(), &config, &[]);
        // The database exists (and its directory is durable) before the power is at stake.
        drop(dbwarden::db::open_and_migrate(&settings.database).expect("prepare the database"));
        let mut verdict = {
            let dir = dir.path().to_path_buf();
            tokio::task::spawn_blocking(move || run_child(&dir, point))
                .await
                .expect("the child's runner")
        };
        let acked = std::mem::take(&mut verdict.1);
        let mut verdict = verdict.0;
        let replica = Replica::open(&settings.replicas[0]).expect("open the replica");
        let identities = dbwarden::config::read_identities(&self.identity).expect("identity");
        let scratch = dir.path().join("scratch");
        std::fs::create_dir_all(&scratch).expect("scratch");
        // The lost machine: S3 alone.
        let lost = scratch.join("lost-machine.db");
        match stream::restore_point(
            &replica,
            &Target::Latest,
            &identities,
            &scratch.join("staging"),
            &lost,
        )
        .await
        {
            Ok(_) => {
                let conn = dbwarden::db::open_file_read_only(&lost).expect("open");
                verdict.lost_on_replica = crash::missing(&conn, &acked);
            }
            // Nothing on S3 is fine only while nothing was acknowledged.
            Err(e) if !acked.is_empty() => verdict
                .lost_on_replica
                .push(format!("the latest restore from S3 failed: {e}")),
            Err(_) => {}
        }
        // The recovered machine.
        let local = settings.database.path.clone();
        match rusqlite::Connection::open(&local) {
            Ok(conn) => {
                match integrity::problems(&conn, integrity::CheckKind::Full) {
                    Ok(p) => verdict.local_integrity.extend(p),
                    Err(e) => verdict.local_integrity.push(e.to_string()),
                }
                verdict.lost_locally = crash::missing(&conn, &acked);
            }
            Err(e) => verdict.local_integrity.push(format!("cannot open: {e}")),
        }
        if verdict.local_integrity.is_empty() {
            self.recover(dir.path(), &local, &replica, &identities, &mut verdict)
                .await;
        }
        verdict
    }

    /// Starts the real binary on the recovered directory, waits until its newest
    /// generation restores to exactly the local database, stops it, then restores every
    /// generation on S3.
    async fn recover(
        &self,
        dir: &Path,
        local: &Path,
        replica: &Replica,
        identities: &[age::x25519::Identity],
        verdict: &mut Verdict,
    ) {
        let env = common::test_env(dir, &[]);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut running = common::process::start_with(dir, &env);
        let scratch = dir.join("scratch");
        let newest = scratch.join("newest.db");
        let deadline = Instant::now() + Duration::from_secs(60);
        let caught_up = loop {
            let _ = std::fs::remove_file(&newest);
            let restored = stream::restore_point(
                replica,
                &Target::Latest,
                identities,
                &scratch.join("staging"),
                &newest,
            )
            .await;
            if restored.is_ok() && common::events_of(&newest) == common::events_of(local) {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &running.child.id().to_string()])
            .status();
        let exit = running.child.wait().expect("wait");
        if !caught_up {
            verdict
                .after_recovery
                .push("the newest generation never restored to the local database".into());
        }
        if exit.code() != Some(0) {
            verdict
                .after_recovery
                .push(format!("the restarted service exited with {exit:?}"));
        }
        let kept: std::collections::HashSet<String> =
            common::events_of(local).into_iter().collect();
        let generations = match stream::list(replica).await {
            Ok(g) => g,
            Err(e) => {
                verdict.after_recovery.push(format!("listing: {e}"));
                return;
            }
        };
        verdict.generations = generations.len();
        for generation in generations {
            let out = scratch.join(format!("{}.db", generation.name));
            let furthest = generation.segments.iter().map(|s| s.last).max();
            match stream::restore(
                replica,
                &generation,
                &Target::Latest,
                identities,
                &scratch.join("staging"),
                &out,
            )
            .await
            {
                Ok(restored) => {
                    let reached = restored.commit.map(|c| c.at);
                    if reached != furthest {
                        verdict.after_recovery.push(format!(
                            "generation {}: the chain ends at {reached:?}, its furthest segment at {furthest:?}",
                            generation.name
                        ));
                    }
                    let unknown: Vec<String> = common::events_of(&out)
                        .into_iter()
                        .filter(|e| !kept.contains(e))
                        .collect();
                    if !unknown.is_empty() {
                        verdict.after_recovery.push(format!(
                            "generation {} holds events the machine does not: {unknown:?}",
                            generation.name
                        ));
                    }
                }
                Err(e) => verdict
                    .after_recovery
                    .push(format!("generation {}: {e}", generation.name)),
            }
        }
    }
}

/// The step of shipping (or of SQLite) whose sync a cut came before, from the path
/// synced.
fn step_of(path: &Path) -> &'static str {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let in_spool = path.components().any(|c| c.as_os_str() == "stream-spool");
    match name {
        n if n.ends_with("-wal") => "a commit or checkpoint (the WAL)",
        n if n.ends_with(".db") && !in_spool => "a checkpoint (the database)",
        n if n.contains(".seg") => "a spooled segment",
        n if n.contains("shipped-") => "a shipped-record",
        n if n.starts_with("snapshot.db") => "a generation's snapshot",
        n if n.starts_with("snapshot.json") => "a generation's snapshot.json",
        _ if in_spool => "a spool directory",
        _ => "another file",
    }
}

/// Runs the child at `point`; answers its verdict so far and the events it acknowledged.
fn run_child(dir: &Path, point: Point) -> (Verdict, Vec<Acked>) {
    let run = crash::run_child(
        "stream_crash_child",
        "DBWARDEN_STREAM_CRASH_DIR",
        dir,
        &point,
    );
    let printed = run.printed;
    let verdict = Verdict {
        power_cut: run.power_cut,
        step: run
            .cut
            .as_ref()
            .and_then(|c| c.before_sync_of.as_deref())
            .map(step_of),
        cut: run.cut.map(|c| (c.kind, c.at)),
        syncs: printed.syncs(),
        refused: printed.refused.clone(),
        jobs: printed.lines_of("JOB").map(str::to_string).collect(),
        acknowledged: printed.acked.len(),
        ..Verdict::default()
    };
    (verdict, printed.acked)
}

/// Runs `points` two at a time (the CI machine has two cores); a point that ended
/// before its planned sync (that run synced less often than the calibration runs) runs
/// again, up to eight times in all, and is reported as it last ran.
async fn sweep(harness: &Harness, points: Vec<Point>) -> Vec<(Point, Verdict)> {
    use futures::StreamExt;
    let runs = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<(Point, Verdict)> = Vec::new();
    let mut todo = points;
    for attempt in 0..8 {
        let done: Vec<(Point, Verdict)> = futures::stream::iter(todo)
            .map(|point| {
                let run = runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async move { (point, harness.run_point(run, point).await) }
            })
            .buffer_unordered(2)
            .collect()
            .await;
        let (good, again): (Vec<_>, Vec<_>) = done
            .into_iter()
            .partition(|(p, v)| attempt == 7 || v.cut_as_planned(p));
        results.extend(good);
        todo = again.into_iter().map(|(p, _)| p).collect();
        if todo.is_empty() {
            break;
        }
    }
    results
}

fn report(results: &[(Point, Verdict)]) -> String {
    let cuts = results.iter().filter(|(_, v)| v.power_cut).count();
    let acked: usize = results.iter().map(|(_, v)| v.acknowledged).sum();
    let on_replica: usize = results.iter().map(|(_, v)| v.lost_on_replica.len()).sum();
    let locally: usize = results.iter().map(|(_, v)| v.lost_locally.len()).sum();
    let after: usize = results.iter().map(|(_, v)| v.after_recovery.len()).sum();
    let generations: usize = results.iter().map(|(_, v)| v.generations).sum();
    let mut steps: std::collections::BTreeMap<&str, usize> = Default::default();
    for step in results.iter().filter_map(|(_, v)| v.step) {
        *steps.entry(step).or_default() += 1;
    }
    let steps: Vec<String> = steps
        .iter()
        .map(|(s, n)| format!("{n} before {s}"))
        .collect();
    let steps = if steps.is_empty() {
        String::new()
    } else {
        format!(": {}", steps.join(", "))
    };
    format!(
        "{} crash points ({cuts} power cuts{steps}); {acked} acknowledged events checked: \
         {on_replica} missing from S3 alone, {locally} missing locally; {generations} \
         generations restored after recovery, {after} problems",
        results.len(),
    )
}

/// Syncs of an uncut run, to place the crash points: the fewest of three runs (group
/// commit and the tailer's timer make a run sync a few times more or less). Each run
/// must acknowledge every append and checkpoint each time.
async fn syncs_of_a_full_run(harness: &Harness) -> u64 {
    let uncut = crash::uncut(3, "FULL");
    let runs = sweep(harness, uncut).await;
    for (point, full) in &runs {
        assert!(
            full.cut_as_planned(point) && full.clean(),
            "an uncut run loses nothing and recovers: {full:?}"
        );
        assert!(full.refused.is_empty(), "no append was refused: {full:?}");
        assert_eq!(
            full.acknowledged,
            WRITERS * APPENDS_PER_WRITER * 3 / 2 + 1,
            "every append was acknowledged: {full:?}"
        );
        assert_eq!(
            full.jobs,
            vec!["checkpoint ok"; CHECKPOINTS],
            "every checkpoint ran: {full:?}"
        );
        assert_eq!(
            full.generations, 2,
            "the run's generation and the restart's: {full:?}"
        );
    }
    runs.iter()
        .map(|(_, v)| v.syncs.expect("the child reported its syncs"))
        .min()
        .expect("three runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_at_any_step_of_shipping_loses_no_acknowledged_event_and_leaves_no_gap() {
    let harness = Harness::new().await;
    let total = syncs_of_a_full_run(&harness).await;
    assert!(
        total > 30,
        "the workload syncs often enough to sweep: {total}"
    );
    let every_mode = std::env::var("DBWARDEN_STREAM_POWER_LOSS_LONG").is_ok();
    let at: Vec<u64> = if every_mode
        || std::env::var("DBWARDEN_STREAM_POWER_LOSS_EVERY").is_ok()
        || total <= SHORT_POINTS
    {
        (1..=total).collect()
    } else {
        (1..=SHORT_POINTS)
            .map(|k| k * total / SHORT_POINTS)
            .collect()
    };
    let mut points = Vec::new();
    for (i, n) in at.iter().enumerate() {
        let modes = if every_mode {
            &MODES[..]
        } else {
            &MODES[i % MODES.len()..=i % MODES.len()]
        };
        for mode in modes {
            points.push(Point {
                crash_at: Some(*n),
                mode,
                seed: 1000 * (i as u64 + 1) + n,
                synchronous: "FULL",
            });
        }
    }
    let results = sweep(&harness, points).await;
    let summary = report(&results);
    println!("stream power loss, {total} syncs per run: {summary}");
    let failures: Vec<String> = results
        .iter()
        .filter(|(p, v)| !v.clean() || !v.cut_as_planned(p))
        .map(|(p, v)| format!("{p:?}: {v:?}"))
        .collect();
    assert!(failures.is_empty(), "{summary}\n{}", failures.join("\n"));
    let cuts: std::collections::BTreeSet<u64> = results
        .iter()
        .filter_map(|(_, v)| v.cut.as_ref().map(|(_, n)| *n))
        .collect();
    assert_eq!(
        cuts,
        at.iter().copied().collect(),
        "every point cut where it meant to"
    );
    if at.len() as u64 == total {
        // Cutting at every sync reaches every step of shipping.
        let reached: std::collections::BTreeSet<&str> =
            results.iter().filter_map(|(_, v)| v.step).collect();
        for step in [
            "a commit or checkpoint (the WAL)",
            "a spooled segment",
            "a shipped-record",
            "a generation's snapshot",
            "a generation's snapshot.json",
            "a spool directory",
        ] {
            assert!(reached.contains(step), "no cut before {step}: {summary}");
        }
    }
}

/// The harness can fail: with `synchronous=NORMAL` SQLite does not sync a commit, the
/// tailer reads and ships it anyway, and the cut takes it back. The acknowledged events
/// are then missing locally and a generation on S3 holds events the recovered machine
/// never kept; S3 alone still has every acknowledged event (`ack_writes` waited for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_sees_commits_that_were_shipped_before_they_were_durable() {
    let harness = Harness::new().await;
    let uncut = crash::uncut(2, "NORMAL");
    let results = sweep(&harness, uncut).await;
    println!("self-test, synchronous=NORMAL: {}", report(&results));
    for (_, v) in &results {
        assert!(v.power_cut && v.lost_on_replica.is_empty(), "{v:?}");
        assert!(
            !v.lost_locally.is_empty(),
            "the cut took acknowledged commits back: {v:?}"
        );
        assert!(
            v.after_recovery
                .iter()
                .any(|p| p.contains("holds events the machine does not")),
            "a generation holds what the machine lost: {v:?}"
        );
    }
}

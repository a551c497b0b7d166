//! Simulated power loss: the real DbWriter, Checkpointer and BackupActor run in a child
//! process on the crash-simulating VFS (`db::crashvfs`), which cuts the power at the
//! Nth sync; the parent then recovers with the normal VFS and checks:
//! `integrity_check` ok, every event whose acknowledgement left the child is present,
//! the summary equals a recomputation, every file under a backup's final name verifies.
//!
//! `cargo test` runs a short sweep. `DBWARDEN_POWER_LOSS_LONG=1 cargo test --release
//! --test power_loss -- --nocapture` runs the long sweep (≥ 1,000 crash points) and
//! prints the figures that RELIABILITY.md carries.
//!
//! The harness proves it can fail: with `synchronous=OFF`, and with `NORMAL`
//! (acknowledged commits not yet synced), it must report lost events.

mod common;

use std::path::Path;
use std::time::Duration;

use common::crash::{self, append_and_report, event, Acked};
use dbwarden::db::{crashvfs, integrity, queries};
use dbwarden::events::NewEvent;
use dbwarden::supervisor::Service;

/// Concurrent appenders in the child, and appends each makes.
const WRITERS: usize = 3;
const APPENDS_PER_WRITER: usize = 16;
/// Events of the one append made after the workload's last job.
const TAIL_EVENTS: usize = 2;

// ------------------------------------------------------------------ the child

/// The jobs the workload runs, in order, while the appenders write. Two backups with
/// `keep_last = 1` make the second one's retention delete the first.
const JOBS: [&str; 4] = ["checkpoint", "backup", "checkpoint", "backup"];

fn child_settings(dir: &Path) -> dbwarden::config::Settings {
    common::settings_in(
        dir,
        &[
            ("DBWARDEN__DATABASE__VFS", crashvfs::NAME),
            ("DBWARDEN__INTEGRITY__QUICK_AT_STARTUP", "false"),
            ("DBWARDEN__BACKUP__KEEP_LAST", "1"),
            ("DBWARDEN__BACKUP__KEEP_DAILY", "0"),
            ("DBWARDEN__BACKUP__KEEP_WEEKLY", "0"),
        ],
    )
}

/// The workload, run in a child process: appends from several tasks through the real
/// writer, with checkpoints and backups in between and one append after the last job, then
/// an explicit power cut.
#[test]
#[ignore = "the child process of the power-loss harness; the harness runs it"]
fn crash_child() {
    let Ok(dir) = std::env::var("DBWARDEN_CRASH_CHILD_DIR") else {
        return;
    };
    let settings = child_settings(Path::new(&dir));
    // libtest has printed `test crash_child ... ` without a newline: end that line, or
    // the first report would be glued to it.
    println!();
    actix_rt::System::new().block_on(async move {
        let service = Service::start(settings).await.expect("service starts");
        // Each job's result is reported: the uncut run must show every one done.
        crash::append_while_jobs_run(&service, WRITERS, APPENDS_PER_WRITER, &JOBS, Duration::ZERO)
            .await;
        // One last append after the last checkpoint: whatever the appenders' timing,
        // some acknowledged commit then lives only in the WAL, so a setting that does not
        // sync commits (the self-test's NORMAL) must lose it at the cut.
        let tail: Vec<NewEvent> = (0..TAIL_EVENTS).map(|k| event(WRITERS, k)).collect();
        append_and_report(&service.writer, tail).await;
        println!("SYNCS {}", crashvfs::sync_count());
        crashvfs::power_cut_now();
    });
}

// ------------------------------------------------------------------ the harness

use crash::Point;

#[derive(Debug, Default)]
struct Verdict {
    power_cut: bool,
    /// What the VFS reported: `planned` or `explicit`, and the sync count at the cut.
    cut: Option<(String, u64)>,
    syncs: Option<u64>,
    /// Appends the writer refused (with why).
    refused: Vec<String>,
    /// (job, outcome) of the workload's jobs that finished before the cut.
    jobs: Vec<(String, String)>,
    acknowledged: usize,
    lost: Vec<String>,
    integrity: Vec<String>,
    summary: Vec<String>,
    bad_backups: Vec<String>,
    backups: usize,
}

impl Verdict {
    /// Whether the power went out where `point` planned it: at its sync, or for a point
    /// without one, at the explicit cut after the workload.
    fn cut_as_planned(&self, point: &Point) -> bool {
        point.cut_as_planned(self.cut.as_ref())
    }

    fn clean(&self) -> bool {
        self.lost.is_empty()
            && self.integrity.is_empty()
            && self.summary.is_empty()
            && self.bad_backups.is_empty()
    }
}

fn run_point(point: Point) -> Verdict {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = common::settings_in(dir.path(), &[]);
    // The database exists (and its directory is durable) before the power is at stake.
    drop(dbwarden::db::open_and_migrate(&settings.database).expect("prepare the database"));
    let run = crash::run_child(
        "crash_child",
        "DBWARDEN_CRASH_CHILD_DIR",
        dir.path(),
        &point,
    );
    let printed = run.printed;
    let mut verdict = Verdict {
        power_cut: run.power_cut,
        cut: run.cut.map(|c| (c.kind, c.at)),
        refused: printed.refused.clone(),
        syncs: printed.syncs(),
        jobs: printed
            .lines_of("JOB")
            .filter_map(|rest| rest.split_once(' '))
            .map(|(job, outcome)| (job.to_string(), outcome.to_string()))
            .collect(),
        ..Verdict::default()
    };
    let acked = printed.acked;
    verdict.acknowledged = acked.len();
    check_recovery(
        &settings.database.path,
        &settings.backup.dir,
        &acked,
        &mut verdict,
    );
    verdict
}

/// Recovery in this process, with the normal VFS.
fn check_recovery(db: &Path, backups: &Path, acked: &[Acked], v: &mut Verdict) {
    let conn = match rusqlite::Connection::open(db) {
        Ok(c) => c,
        Err(e) => {
            v.integrity.push(format!("cannot open: {e}"));
            return;
        }
    };
    match integrity::problems(&conn, integrity::CheckKind::Full) {
        Ok(p) => v.integrity.extend(p),
        Err(e) => v.integrity.push(e.to_string()),
    }
    v.lost.extend(crash::missing(&conn, acked));
    match queries::summary_differences(&conn) {
        Ok(d) => v.summary.extend(d),
        Err(e) => v.summary.push(e.to_string()),
    }
    let finals = common::final_backups(backups);
    v.backups = finals.len();
    v.bad_backups.extend(
        finals
            .into_iter()
            .filter_map(|(path, problem)| problem.map(|p| format!("{}: {p}", path.display()))),
    );
}

const MODES: [&str; 3] = ["all", "subset", "torn"];

/// Runs `points` two at a time (the CI machine has two cores).
fn sweep(points: Vec<Point>) -> Vec<(Point, Verdict)> {
    let points = std::sync::Mutex::new(points.into_iter().enumerate().collect::<Vec<_>>());
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let next = points.lock().expect("lock").pop();
                let Some((i, point)) = next else { break };
                let verdict = run_point(point);
                results.lock().expect("lock").push((i, point, verdict));
            });
        }
    });
    let mut results = results.into_inner().expect("results");
    results.sort_by_key(|(i, _, _)| *i);
    results.into_iter().map(|(_, p, v)| (p, v)).collect()
}

fn report(results: &[(Point, Verdict)]) -> String {
    let crashed = results.iter().filter(|(_, v)| v.power_cut).count();
    let acked: usize = results.iter().map(|(_, v)| v.acknowledged).sum();
    let lost: usize = results.iter().map(|(_, v)| v.lost.len()).sum();
    let integrity = results
        .iter()
        .filter(|(_, v)| !v.integrity.is_empty())
        .count();
    let summary = results
        .iter()
        .filter(|(_, v)| !v.summary.is_empty())
        .count();
    let backups: usize = results.iter().map(|(_, v)| v.backups).sum();
    let bad: usize = results.iter().map(|(_, v)| v.bad_backups.len()).sum();
    format!(
        "{} crash points ({crashed} power cuts); {acked} acknowledged events checked, {lost} lost; \
         {integrity} integrity failures; {summary} summary differences; {backups} backups under \
         final names, {bad} bad",
        results.len()
    )
}

/// Syncs of an uninterrupted run, to place the crash points: the fewest of five runs
/// (group commit merges concurrent appends differently each time, so a run makes a few
/// syncs more or less). Each run must do every job of the workload and leave one
/// verified backup.
fn syncs_of_a_full_run() -> u64 {
    let runs = sweep(crash::uncut(5, "FULL"));
    for (point, full) in &runs {
        assert!(
            full.power_cut && full.cut_as_planned(point),
            "the explicit cut at the end ran: {full:?}"
        );
        assert!(
            full.clean(),
            "a cut after the last sync loses nothing: {full:?}"
        );
        let done: Vec<&str> = full.jobs.iter().map(|(job, _)| job.as_str()).collect();
        assert_eq!(done, JOBS, "every job of the workload ran: {full:?}");
        assert!(
            full.jobs.iter().all(|(_, outcome)| outcome == "ok"),
            "every job of the workload succeeded: {full:?}"
        );
        assert_eq!(
            full.backups, 1,
            "the second backup's retention removed the first: {full:?}"
        );
        assert!(full.refused.is_empty(), "no append was refused: {full:?}");
        assert_eq!(
            full.acknowledged,
            WRITERS * APPENDS_PER_WRITER * 3 / 2 + TAIL_EVENTS,
            "every append was acknowledged: {full:?}"
        );
    }
    runs.iter()
        .map(|(_, v)| v.syncs.expect("the child reported its syncs"))
        .min()
        .expect("five runs")
}

/// Runs each point; one that ended before its planned sync (that run synced less often
/// than the calibration runs did) is run again, up to eight times in all. A point that
/// never cut where it meant to fails the sweep.
fn sweep_every_cut_as_planned(points: Vec<Point>) -> Vec<(Point, Verdict)> {
    let mut results = sweep(points);
    for _ in 0..7 {
        let again: Vec<Point> = results
            .iter()
            .filter(|(p, v)| !v.cut_as_planned(p))
            .map(|(p, _)| *p)
            .collect();
        if again.is_empty() {
            break;
        }
        results.retain(|(p, v)| v.cut_as_planned(p));
        results.extend(sweep(again));
    }
    results
}

#[test]
fn acknowledged_events_and_backups_survive_power_cuts_at_every_sync() {
    let total = syncs_of_a_full_run();
    assert!(
        total > 20,
        "the workload syncs often enough to sweep: {total}"
    );
    // Short (in `cargo test`): every sync point up to the fewest syncs of the calibration
    // runs, in every mode, once. Long: the same with nine seeds.
    // `DBWARDEN_POWER_LOSS_SEEDS=N` for a sweep in between (CI runs 3).
    let seeds: u64 = match std::env::var("DBWARDEN_POWER_LOSS_SEEDS") {
        Ok(n) => n.parse().expect("DBWARDEN_POWER_LOSS_SEEDS is a number"),
        Err(_) if std::env::var("DBWARDEN_POWER_LOSS_LONG").is_ok() => 9,
        Err(_) => 1,
    };
    let mut points = Vec::new();
    for seed in 1..=seeds {
        for n in 1..=total {
            for mode in MODES {
                points.push(Point {
                    crash_at: Some(n),
                    mode,
                    seed: seed * 1000 + n,
                    synchronous: "FULL",
                });
            }
        }
    }
    let results = sweep_every_cut_as_planned(points);
    let summary = report(&results);
    println!("power loss, synchronous=FULL, {total} syncs per run: {summary}");
    let failures: Vec<String> = results
        .iter()
        .filter(|(p, v)| !v.clean() || !v.power_cut || !v.cut_as_planned(p))
        .map(|(p, v)| format!("{p:?}: {v:?}"))
        .collect();
    assert!(failures.is_empty(), "{summary}\n{}", failures.join("\n"));
    // Every cut landed at its own sync: the points cover 1..=total, each mode.
    for mode in MODES {
        let mut at: Vec<u64> = results
            .iter()
            .filter(|(p, _)| p.mode == mode)
            .filter_map(|(_, v)| v.cut.as_ref().map(|(_, n)| *n))
            .collect();
        at.sort_unstable();
        at.dedup();
        assert_eq!(at, (1..=total).collect::<Vec<_>>(), "mode {mode}");
    }
}

#[test]
fn the_harness_reports_losses_when_commits_are_not_synced() {
    for synchronous in ["OFF", "NORMAL"] {
        let results = sweep(crash::uncut(2, synchronous));
        let lost: usize = results.iter().map(|(_, v)| v.lost.len()).sum();
        println!("self-test, synchronous={synchronous}: {}", report(&results));
        assert!(
            lost > 0,
            "with synchronous={synchronous} a power cut must lose acknowledged events: {results:?}"
        );
        // Backups stay proven even then: dbwarden fsyncs a copy itself before it takes
        // its final name, whatever SQLite's setting (without that fsync, this fails).
        let backups: usize = results.iter().map(|(_, v)| v.backups).sum();
        let bad: usize = results.iter().map(|(_, v)| v.bad_backups.len()).sum();
        assert!(backups > 0 && bad == 0, "{results:?}");
    }
}

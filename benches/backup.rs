//! The backup path on a database of 1 GB or more, in one run:
//!
//! - the copy step: `VACUUM INTO` vs the online backup API (one `step(-1)`, from its
//!   own connection) vs `sqlite3 .backup` vs `cp` of the checkpointed file (the
//!   physical limit);
//! - the verification step: `quick_check` vs `integrity_check` of the copy, and the
//!   SHA-256 pass;
//! - dbwarden's whole verified backup against copy + integrity_check + SHA-256 run
//!   separately;
//! - writer append latency (p50/p99, one event per transaction) and WAL growth while
//!   each copy runs, against idle.
//!
//! ```text
//! cargo bench --bench backup                           # ~1.1 GB database
//! DBWARDEN_BENCH_DB_MB=200 cargo bench --bench backup  # smaller
//! ```

use std::process::Command;
use std::time::{Duration, Instant};

use dbwarden::backup::{catalog, take_backup};
use dbwarden::db::{self, integrity, CheckpointMode};
use rusqlite::{Connection, OpenFlags};

mod common;
use common::{build, fsync, settings_for, start_load, stop_load, timed, LoadResult};

fn main() {
    let mb: u64 = std::env::var("DBWARDEN_BENCH_DB_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1100);
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = settings_for(dir.path());
    let (size, build_time) = timed(|| build(&settings, mb));
    let src = settings.database.path.clone();
    println!(
        "SQLite {}; database {:.2} GB built in {:.0} s",
        rusqlite::version(),
        size as f64 / 1e9,
        build_time.as_secs_f64()
    );

    // Idle baseline for the writer.
    let load = start_load(&settings);
    std::thread::sleep(Duration::from_secs(3));
    let idle = stop_load(load);

    let out = |name: &str| dir.path().join(name);
    let mut rows: Vec<(String, Duration, Option<LoadResult>)> = Vec::new();

    // cp of the checkpointed file, no writer: the physical limit.
    {
        let conn = db::open_writer(&settings.database).expect("writer");
        db::wal_checkpoint(&conn, CheckpointMode::Truncate).expect("checkpoint");
    }
    let (_, t) = timed(|| {
        std::fs::copy(&src, out("cp.db")).expect("cp");
        fsync(&out("cp.db"));
    });
    rows.push((
        "cp of the checkpointed file (no writer; unsafe while one runs)".into(),
        t,
        None,
    ));

    let load = start_load(&settings);
    let (_, t) = timed(|| {
        let r = Connection::open_with_flags(&src, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open");
        r.execute("VACUUM INTO ?1", [out("vacuum.db").to_str().expect("utf8")])
            .expect("vacuum into");
        fsync(&out("vacuum.db"));
    });
    rows.push((
        "VACUUM INTO (own read-only connection)".into(),
        t,
        Some(stop_load(load)),
    ));

    let load = start_load(&settings);
    let (_, t) = timed(|| {
        let r = Connection::open_with_flags(&src, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open");
        let mut dst = Connection::open(out("api.db")).expect("dst");
        let backup = rusqlite::backup::Backup::new(&r, &mut dst).expect("backup");
        backup.step(-1).expect("step");
        drop(backup);
        drop(dst);
        fsync(&out("api.db"));
    });
    rows.push((
        "online backup API, one step(-1) (own connection)".into(),
        t,
        Some(stop_load(load)),
    ));

    // Debian's CLI steps the backup API a few pages at a time, and the API restarts
    // whenever the source is written: under a steady writer it may never finish, so it
    // gets a bound.
    let cli_bound = Duration::from_secs(120);
    let has_cli = Command::new("sqlite3").arg("-version").output().is_ok();
    let mut cli_note = String::new();
    if has_cli {
        let load = start_load(&settings);
        let started = Instant::now();
        let mut child = Command::new("sqlite3")
            .arg(&src)
            .arg(format!(".backup '{}'", out("cli.db").display()))
            .spawn()
            .expect("sqlite3");
        let finished = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break status.success();
            }
            if started.elapsed() > cli_bound {
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let t = started.elapsed();
        if finished {
            fsync(&out("cli.db"));
        } else {
            let copied = std::fs::metadata(out("cli.db"))
                .map(|m| m.len())
                .unwrap_or(0);
            cli_note = format!(
                "sqlite3 .backup did not finish within {} s under the writer ({:.0} MB of {:.0} MB copied when stopped)",
                cli_bound.as_secs(),
                copied as f64 / 1e6,
                size as f64 / 1e6
            );
        }
        rows.push((
            format!(
                "sqlite3 .backup (Debian's CLI, SQLite 3.40){}",
                if finished { "" } else { " — DID NOT FINISH" }
            ),
            t,
            Some(stop_load(load)),
        ));
    }

    let copy = out("vacuum.db");
    let ro =
        || Connection::open_with_flags(&copy, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open copy");
    let (_, quick) = timed(|| {
        assert!(integrity::problems(&ro(), integrity::CheckKind::Quick)
            .expect("quick")
            .is_empty())
    });
    let (_, full) = timed(|| {
        assert!(integrity::problems(&ro(), integrity::CheckKind::Full)
            .expect("full")
            .is_empty())
    });
    let (_, sha) = timed(|| catalog::sha256_file(&copy).expect("sha"));

    // The service creates the backup directory at startup; here, the bench does.
    dbwarden::backup::ensure_dir(&settings.backup.dir).expect("backup directory");
    let load = start_load(&settings);
    let (manifest, whole) = timed(|| {
        take_backup(&settings.database, &settings.backup, &|_| {}).expect("verified backup")
    });
    let whole_load = stop_load(load);

    let vacuum_time = rows[1].1;
    let cp_time = rows[0].1;
    println!();
    println!("| copy step | time | ÷ cp | writer p50 | writer p99 | appends | WAL max |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    println!(
        "| idle (no copy) | — | — | {:.2} ms | {:.2} ms | {} | {:.1} MB |",
        idle.p50.as_secs_f64() * 1e3,
        idle.p99.as_secs_f64() * 1e3,
        idle.appends,
        idle.wal_max_mb
    );
    for (name, t, load) in &rows {
        match load {
            Some(l) => println!(
                "| {name} | {:.2} s | {:.2}× | {:.2} ms | {:.2} ms | {} | {:.1} MB |",
                t.as_secs_f64(),
                t.as_secs_f64() / cp_time.as_secs_f64(),
                l.p50.as_secs_f64() * 1e3,
                l.p99.as_secs_f64() * 1e3,
                l.appends,
                l.wal_max_mb
            ),
            None => println!(
                "| {name} | {:.2} s | 1.00× | — | — | — | — |",
                t.as_secs_f64()
            ),
        }
    }
    println!();
    println!("| verification of the copy | time |");
    println!("|---|---:|");
    println!("| quick_check | {:.2} s |", quick.as_secs_f64());
    println!("| integrity_check | {:.2} s |", full.as_secs_f64());
    println!("| SHA-256 | {:.2} s |", sha.as_secs_f64());
    if !cli_note.is_empty() {
        println!();
        println!("{cli_note}");
    }
    println!();
    let parts = vacuum_time + full + sha;
    println!(
        "whole verified backup (quick_check of the source + VACUUM INTO + integrity_check + fsync + rename + SHA-256 + manifest): {:.2} s, under writer load (p50 {:.2} ms, p99 {:.2} ms, WAL max {:.1} MB); copy + integrity_check + SHA-256 run separately: {:.2} s ({:.2}×); backup {} of {:.2} GB",
        whole.as_secs_f64(),
        whole_load.p50.as_secs_f64() * 1e3,
        whole_load.p99.as_secs_f64() * 1e3,
        whole_load.wal_max_mb,
        parts.as_secs_f64(),
        whole.as_secs_f64() / parts.as_secs_f64(),
        manifest.name,
        manifest.size_bytes as f64 / 1e9
    );
}

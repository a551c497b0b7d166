//! `dbwarden check [--summary | --full]` and `dbwarden check --repair`.

use std::time::Duration;

use anyhow::{bail, Context};

use super::{client::ServiceClient, spinner};
use dbwarden::config::Settings;
use dbwarden::db::{self, integrity, queries};

pub fn check(settings: &Settings, summary_only: bool, full: bool) -> anyhow::Result<u8> {
    let path = &settings.database.path;
    if !path.exists() {
        bail!("database {} does not exist", path.display());
    }
    let conn = db::open_reader(&settings.database)
        .with_context(|| format!("opening {}", path.display()))?;
    if !db::migrations::is_current(&conn)? {
        bail!(
            "{} is not migrated to this version; run `dbwarden migrate` first",
            path.display()
        );
    }
    let mut failed = false;
    if !summary_only {
        let (kind, name) = if full {
            (
                integrity::CheckKind::Full,
                "integrity_check + foreign_key_check",
            )
        } else {
            (integrity::CheckKind::Quick, "quick_check")
        };
        let working = spinner(format!("{name} of {}", path.display()));
        let checked = dbwarden::auditor::check_database(&settings.database, kind, &|_| {});
        working.finish_and_clear();
        let (record, _) = checked?;
        if record.ok {
            println!("{name}: ok ({} ms)", record.duration_ms);
        } else {
            failed = true;
            println!("{name}: {} problem(s)", record.problems.len());
            for p in &record.problems {
                println!("  {p}");
            }
        }
    }
    let findings = db::guard::inspect(&conn, true)?;
    for t in &findings.foreign_triggers {
        failed = true;
        println!(
            "summary: trigger {} on {} (not dbwarden's) writes {}",
            t.name,
            t.on_table,
            t.writes.join(" and ")
        );
    }
    if let Some((Some(was), now)) = findings.healarr_version_change {
        failed = true;
        println!("summary: Healarr's schema version changed from {was} to {now} since dbwarden last looked");
    }
    if findings.drift.is_empty() {
        println!(
            "summary: exact ({} corruptions)",
            queries::bucket_counts(&conn)?.values().sum::<i64>()
        );
    } else {
        failed = true;
        println!(
            "summary: {} difference(s) from a recomputation",
            findings.drift.len()
        );
        for d in &findings.drift {
            println!("  {d}");
        }
    }
    if failed && findings.needs_repair() {
        println!(
            "run `dbwarden check --repair` to remove foreign triggers and rebuild the summary"
        );
    }
    Ok(u8::from(failed))
}

/// `check --repair`: through the running service's DbWriter when it holds the
/// database, else on a read-write connection of our own under the database lock.
pub fn repair(settings: &Settings) -> anyhow::Result<u8> {
    let path = &settings.database.path;
    if !path.exists() {
        bail!("database {} does not exist", path.display());
    }
    let report: db::guard::RepairReport = match db::lock::acquire(path) {
        Ok(_lock) => {
            let mut conn = db::open_writer(&settings.database)
                .with_context(|| format!("opening {}", path.display()))?;
            if !db::migrations::is_current(&conn)? {
                bail!(
                    "{} is not migrated to this version; run `dbwarden migrate` first",
                    path.display()
                );
            }
            db::guard::repair(&mut conn).context("repairing the summary")?
        }
        Err(db::lock::LockError::Held { .. }) => {
            // A rebuild of a large summary takes a while: bound it generously.
            let client = ServiceClient::new(settings).with_timeout(Duration::from_secs(3600));
            let body = actix_rt::System::new()
                .block_on(client.post(&["api", "summary", "repair"], None))
                .context("asking the running service to repair the summary")?;
            serde_json::from_value(body).context("the service's answer")?
        }
        Err(e) => return Err(e.into()),
    };
    let found = report.found.describe();
    println!(
        "found: {}",
        if found.is_empty() {
            "nothing wrong"
        } else {
            &found
        }
    );
    for t in &report.triggers_removed {
        println!("removed trigger {t}");
    }
    println!(
        "rebuilt the summary: {} corruption row(s) changed, {} row(s) in all ({} ms)",
        report.rows_changed, report.rows, report.duration_ms
    );
    Ok(0)
}

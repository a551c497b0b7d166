//! `dbwarden restore FILE | --latest [--dry-run]`: replace the database with a
//! verified backup (refused while the service runs).

use std::path::PathBuf;

use super::spinner;
use dbwarden::config::Settings;

pub fn restore(
    settings: &Settings,
    file: Option<PathBuf>,
    latest: bool,
    dry_run: bool,
) -> anyhow::Result<u8> {
    let _guard = dbwarden::logging::init(&settings.logging)?;
    let backup = match (file, latest) {
        (Some(f), _) => f,
        (None, _) => dbwarden::restore::latest(settings)?,
    };
    let working = spinner(format!("verifying {} and restoring it", backup.display()));
    let plan = if dry_run {
        // A dry run is refused too while the service holds the database.
        dbwarden::db::lock::acquire(&settings.database.path)
            .map_err(anyhow::Error::from)
            .and_then(|_lock| Ok(dbwarden::restore::plan(settings, &backup)?))
    } else {
        dbwarden::restore::restore(settings, &backup).map_err(anyhow::Error::from)
    };
    working.finish_and_clear();
    let plan = plan?;
    let verb = if dry_run { "would restore" } else { "restored" };
    println!(
        "{verb} {} into {}",
        plan.backup.display(),
        plan.database.display()
    );
    match &plan.keep_current_as {
        Some(p) => println!("current database kept as {} (verified copy)", p.display()),
        None => println!("no readable current database to keep"),
    }
    Ok(dbwarden::exit::OK)
}

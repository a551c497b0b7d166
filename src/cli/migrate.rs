//! `dbwarden migrate`: apply pending migrations (adopting a Healarr database first).

use anyhow::Context;

use dbwarden::config::Settings;
use dbwarden::db;

pub fn migrate(settings: &Settings) -> anyhow::Result<u8> {
    let _guard = dbwarden::logging::init(&settings.logging)?;
    let (_conn, report) = db::open_and_migrate(&settings.database)
        .with_context(|| format!("migrating {}", settings.database.path.display()))?;
    println!(
        "{}: {} migration(s) applied ({}), {} already applied",
        settings.database.path.display(),
        report.applied.len(),
        report.applied.join(", "),
        report.already_applied
    );
    Ok(dbwarden::exit::OK)
}

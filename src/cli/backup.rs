//! `dbwarden backup`: one verified backup now.

use std::time::Duration;

use anyhow::Context;

use super::{client::ServiceClient, spinner};
use dbwarden::config::Settings;
use dbwarden::db;

pub fn backup(settings: &Settings) -> anyhow::Result<u8> {
    let working = spinner(format!(
        "backing up {} (check, copy, verify, hash)",
        settings.database.path.display()
    ));
    let manifest = backup_now(settings);
    working.finish_and_clear();
    let manifest = manifest.context("backup failed")?;
    println!("{}", serde_json::to_string_pretty(&manifest)?);
    Ok(dbwarden::exit::OK)
}

/// `dbwarden backup`: through the running service when it holds the database (so its
/// BackupActor, health and metrics know of it), else in this process. The database
/// lock is only looked at, not kept: a service may start meanwhile, and the backup
/// directory's own lock keeps its backups and ours apart.
fn backup_now(settings: &Settings) -> anyhow::Result<serde_json::Value> {
    match db::lock::acquire(&settings.database.path) {
        Ok(lock) => {
            drop(lock);
            dbwarden::backup::ensure_dir(&settings.backup.dir)
                .context("creating the backup directory")?;
            let manifest =
                dbwarden::backup::take_backup(&settings.database, &settings.backup, &|_| {})?;
            Ok(serde_json::to_value(manifest)?)
        }
        Err(db::lock::LockError::Held { .. }) => {
            let client = ServiceClient::new(settings).with_timeout(Duration::from_secs(6 * 3600));
            Ok(actix_rt::System::new()
                .block_on(client.post(&["api", "backups"], None))
                .context("asking the running service for a backup")?)
        }
        Err(e) => Err(e.into()),
    }
}

//! `dbwarden replicas list [NAME]`: what each replica holds, read from the replica
//! itself (a new machine with only the settings sees the same).
//! `dbwarden replicas drill [NAME]`: a restore drill now, through the running service
//! when it holds the database (its health, metrics and alerts then know of it), else in
//! this process.

use anyhow::Context;
use clap::Subcommand;

use std::time::Duration;

use super::client::ServiceClient;
use dbwarden::config::{ReplicaSettings, Settings};
use dbwarden::db;
use dbwarden::jobs::drill_job_name;
use dbwarden::replica::{self, catalog::CopyStatus, Replica};

#[derive(Subcommand)]
pub enum ReplicasCommand {
    /// List the copies on every replica, or on the one named: time, status, size,
    /// last drill. Exit 1 when a replica cannot be read.
    List {
        /// A replica's `name`.
        name: Option<String>,
        /// One JSON document instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Run a restore drill of every replica, or of the one named: download the newest
    /// copy and one older one, decrypt, decompress, integrity_check, compare with the
    /// manifest. Exit 1 when a copy fails or a drill cannot run.
    Drill {
        /// A replica's `name`.
        name: Option<String>,
    },
}

pub fn replicas(settings: &Settings, command: ReplicasCommand) -> anyhow::Result<u8> {
    match command {
        ReplicasCommand::List { name, json } => list(settings, name, json),
        ReplicasCommand::Drill { name } => drill(settings, name),
    }
}

fn chosen<'a>(
    settings: &'a Settings,
    name: &Option<String>,
) -> anyhow::Result<Vec<&'a ReplicaSettings>> {
    let chosen: Vec<_> = match name {
        Some(name) => {
            let found = settings.replicas.iter().find(|r| &r.name == name);
            vec![found.with_context(|| format!("no replica named `{name}` in the settings"))?]
        }
        None => settings.replicas.iter().collect(),
    };
    if chosen.is_empty() {
        println!("no replicas configured (add a [[replicas]] table to the settings)");
    }
    Ok(chosen)
}

fn drill(settings: &Settings, name: Option<String>) -> anyhow::Result<u8> {
    let chosen = chosen(settings, &name)?;
    let through_service = match db::lock::acquire(&settings.database.path) {
        Ok(lock) => {
            drop(lock);
            false
        }
        Err(db::lock::LockError::Held { .. }) => true,
        Err(e) => return Err(e.into()),
    };
    let mut failed = false;
    for replica_settings in chosen {
        let name = &replica_settings.name;
        let result: anyhow::Result<(bool, String)> = if through_service {
            let client = ServiceClient::new(settings).with_timeout(Duration::from_secs(6 * 3600));
            let job = drill_job_name(name);
            actix_rt::System::new()
                .block_on(client.post(&["api", "jobs", &job, "run"], Some("wait=true")))
                .context("asking the running service for a drill")
                .map(|run| {
                    (
                        run["outcome"] == "ok",
                        run["message"].as_str().unwrap_or_default().to_string(),
                    )
                })
        } else {
            drill_here(settings, replica_settings).map(|d| (d.ok(), d.summary()))
        };
        match result {
            Ok((true, summary)) => println!("{name}: drill passed: {summary}"),
            Ok((false, summary)) => {
                failed = true;
                println!("{name}: drill FAILED: {summary}");
            }
            Err(e) => {
                failed = true;
                eprintln!("dbwarden: {name}: {e:#}");
            }
        }
    }
    Ok(if failed {
        dbwarden::exit::NOT_OK
    } else {
        dbwarden::exit::OK
    })
}

fn drill_here(
    settings: &Settings,
    replica_settings: &ReplicaSettings,
) -> anyhow::Result<replica::drill::DrillOutcome> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let replica = Replica::open(replica_settings)?;
    let identities = replica::drill::identities(&replica)?;
    let staging = replica::drill::staging_dir(&settings.backup.dir, &replica_settings.name);
    Ok(runtime.block_on(replica::drill::run(&replica, &identities, &staging))?)
}

fn list(settings: &Settings, name: Option<String>, json: bool) -> anyhow::Result<u8> {
    let chosen = chosen(settings, &name)?;
    if chosen.is_empty() {
        return Ok(dbwarden::exit::OK);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut failed = false;
    let mut documents = Vec::new();
    for settings in chosen {
        let listed = Replica::open(settings)
            .and_then(|replica| runtime.block_on(replica::catalog::list(&replica)));
        let copies = match listed {
            Ok(copies) => copies,
            Err(e) => {
                failed = true;
                eprintln!("dbwarden: {e}");
                documents
                    .push(serde_json::json!({ "replica": settings.name, "error": e.to_string() }));
                continue;
            }
        };
        if json {
            documents.push(serde_json::json!({ "replica": settings.name, "url": settings.url.text, "copies": copies }));
            continue;
        }
        let complete = copies
            .iter()
            .filter(|c| c.status == CopyStatus::Complete)
            .count();
        println!(
            "{} ({}): {} copies, {complete} complete",
            settings.name,
            settings.url.text,
            copies.len()
        );
        for copy in &copies {
            let status = match copy.status {
                CopyStatus::Complete => "complete",
                CopyStatus::Bad => "BAD",
                CopyStatus::Incomplete => "incomplete",
            };
            let size = copy
                .object_bytes
                .map(|b| format!("{b} bytes"))
                .unwrap_or_else(|| "-".into());
            let drill = match &copy.drill {
                Some(d) if d.ok => format!("drill ok {}", d.at.format("%Y-%m-%d %H:%M")),
                Some(d) => format!(
                    "drill FAILED {}: {}",
                    d.at.format("%Y-%m-%d %H:%M"),
                    d.detail
                ),
                None => "never drilled".into(),
            };
            let problem = copy
                .problem
                .as_deref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default();
            println!(
                "  {}  {status:<10}  {size:>16}  {drill}{problem}",
                copy.name
            );
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&documents)?);
    }
    Ok(if failed {
        dbwarden::exit::NOT_OK
    } else {
        dbwarden::exit::OK
    })
}

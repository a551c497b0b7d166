//! `dbwarden restore FILE | --latest | --from NAME (--latest | --backup ID | --at TIME |
//! --event-id N) [--identity FILE] [--output PATH] [--dry-run]`: replace the database
//! with a verified backup or a point of a replica's streamed commits (refused while the
//! service runs), or restore one beside it.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::spinner;
use dbwarden::config::{ReplicaSettings, Settings};
use dbwarden::restore::{Pick, Proof};

/// Which backup, from the command line.
pub struct Source {
    /// None with no --backup: the newest good backup.
    pub file: Option<PathBuf>,
    pub from: Option<String>,
    pub backup: Option<String>,
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    pub event_id: Option<i64>,
    pub identity: Option<PathBuf>,
}

pub fn restore(
    settings: &Settings,
    source: Source,
    output: Option<PathBuf>,
    dry_run: bool,
) -> anyhow::Result<u8> {
    let _guard = dbwarden::logging::init(&settings.logging)?;
    let target = match &output {
        Some(path) => {
            if same_file(path, &settings.database.path) {
                anyhow::bail!(
                    "--output {} is the configured database: leave --output out to restore in place",
                    path.display()
                );
            }
            let mut beside = settings.clone();
            beside.database.path = path.clone();
            beside
        }
        None => settings.clone(),
    };
    // A replica the settings do not have is refused before anything is touched.
    let replica = source
        .from
        .as_deref()
        .map(|name| replica_named(settings, name))
        .transpose()?;
    // Refused while the service runs, before a copy is downloaded for nothing (the
    // restore itself takes the lock again).
    drop(dbwarden::db::lock::acquire(&target.database.path)?);
    // A copy from a replica is brought back into a directory beside the target first.
    let stage = staging_dir(&target.database.path);
    let fetched = match replica {
        Some(replica) => Some(fetch(settings, replica, &source, &stage)?),
        None => None,
    };
    let backup = match (&fetched, source.file) {
        (Some(fetched), _) => fetched.path.clone(),
        (None, Some(f)) => f,
        (None, None) => dbwarden::restore::latest(settings)?,
    };
    let proof = if fetched.is_some() {
        Proof::Fetched
    } else {
        Proof::CheckHere
    };
    let working = spinner(match proof {
        Proof::CheckHere => format!("verifying {} and restoring it", backup.display()),
        Proof::Fetched => format!("restoring {}", backup.display()),
    });
    let plan = if dry_run {
        // A dry run is refused too while the service holds the database.
        dbwarden::db::lock::acquire(&target.database.path)
            .map_err(anyhow::Error::from)
            .and_then(|_lock| Ok(dbwarden::restore::plan(&target, &backup, proof)?))
    } else {
        dbwarden::restore::restore(&target, &backup, proof).map_err(anyhow::Error::from)
    };
    working.finish_and_clear();
    if fetched.is_some() {
        let _ = std::fs::remove_dir_all(&stage);
    }
    let plan = plan?;
    let verb = if dry_run { "would restore" } else { "restored" };
    let shown = match (&source.from, &fetched) {
        (Some(name), Some(fetched)) => format!("{} from replica {name}", fetched.what),
        _ => plan.backup.display().to_string(),
    };
    println!("{verb} {shown} into {}", plan.database.display());
    match &plan.keep_current_as {
        Some(p) => println!("current database kept as {} (verified copy)", p.display()),
        None => println!("no readable current database to keep"),
    }
    Ok(dbwarden::exit::OK)
}

fn replica_named<'a>(settings: &'a Settings, name: &str) -> anyhow::Result<&'a ReplicaSettings> {
    settings
        .replicas
        .iter()
        .find(|r| r.name == name)
        .with_context(|| {
            let known: Vec<&str> = settings.replicas.iter().map(|r| r.name.as_str()).collect();
            format!("no replica named `{name}` (the settings have: {known:?})")
        })
}

fn fetch(
    settings: &Settings,
    replica: &ReplicaSettings,
    source: &Source,
    stage: &Path,
) -> anyhow::Result<dbwarden::restore::FromReplica> {
    let name = replica.name.as_str();
    let identities = dbwarden::restore::identities_for(replica, source.identity.as_deref())?;
    use dbwarden::replica::stream::Target;
    let pick = match (&source.backup, source.at, source.event_id) {
        (Some(id), _, _) => Pick::Named(id.clone()),
        (None, Some(at), _) => Pick::Point(Target::At(at)),
        (None, None, Some(id)) => Pick::Point(Target::EventId(id)),
        (None, None, None) => Pick::Latest,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let working = spinner(format!(
        "downloading and proving a copy from replica {name}"
    ));
    let fetched = runtime.block_on(dbwarden::restore::fetch_from_replica(
        settings,
        name,
        &pick,
        &identities,
        stage,
    ));
    working.finish_and_clear();
    if fetched.is_err() {
        let _ = std::fs::remove_dir_all(stage);
    }
    Ok(fetched?)
}

/// `<database dir>/.dbwarden-replica-restore`: on the target's disk, so the proven file
/// is restored from there without crossing file systems.
fn staging_dir(database: &Path) -> PathBuf {
    let dir = match database.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    dir.join(".dbwarden-replica-restore")
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

//! The Shipper: one per replica, each on its own thread with its own runtime, so a
//! replica that is slow, down or refusing never delays the writer, the backups or the
//! other replicas. The thread runs at the replica's `cpu_priority` (`SCHED_IDLE` by
//! default: [`super::lower_this_threads_priority`]), so compressing a backup never
//! keeps the writer from a CPU.
//!
//! It wakes when a verified backup is recorded (the BackupHandle's `verified` signal)
//! and once at start, then catches up: every good local backup newer than the
//! replica's newest complete copy is shipped, oldest first (only the newest when the
//! replica is empty), and so is every one whose copy there a drill failed; then the
//! replica's retention runs. A failure is retried with
//! backoff (30 s doubling to 15 min); once the newest good copy there is older than
//! the replica's `max_age_secs`, a `replica_stale:<name>` alert is raised, resolved
//! when it catches up. Restore drills ([`super::drill`]) run on the same thread when
//! asked ([`ShipperHandles::drill`], which the `drill-<name>` jobs call on each
//! replica's `drill_schedule`), so a drill never races the replica's retention; a
//! failed drill is a critical `replica_drill:<name>` alert. Shutdown cancels an upload in flight (its multipart upload is
//! aborted, and no manifest was written, so nothing half-done ever counts).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::ack::AckGate;
use super::catalog::{self, CopyStatus};
use super::drill::{self, DrillOutcome};
use super::lease::SharedLease;
use super::replicator::TailerBoard;
use super::spool::Spool;
use super::{retention, ship, uploads, Replica, ReplicaError};
use crate::backup::catalog::{self as local_catalog, BackupStatus};
use crate::config::Settings;
use crate::notifier::{Notifier, Severity};

const FIRST_RETRY: Duration = Duration::from_secs(30);
const LONGEST_RETRY: Duration = Duration::from_secs(15 * 60);

/// How one replica stands, for health, metrics and the status page.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicaStatus {
    pub name: String,
    pub kind: String,
    /// When the newest complete copy there was taken (its backup's time).
    pub newest_copy_at: Option<DateTime<Utc>>,
    pub complete_copies: usize,
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// The last attempt's error; `None` once an attempt succeeded.
    pub last_error: Option<String>,
    pub shipped_bytes: u64,
    pub shipped_copies: u64,
    pub failures: u64,
    /// How old the newest copy may be before health is degraded.
    pub max_age_secs: u64,
    /// The last drill that ran to a verdict.
    pub last_drill: Option<DrillOutcome>,
    /// Why the last drill could not run, if it could not (cleared by one that did).
    pub last_drill_error: Option<String>,
    /// Set while another service holds this replica's lease: this one writes nothing
    /// there.
    pub held_by: Option<String>,
    /// Continuous replication to it; `None` when it does not stream.
    pub stream: Option<StreamStatus>,
}

/// How continuous replication to one replica stands.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamStatus {
    /// The generation it is being sent, and the last position it holds there.
    pub generation: Option<String>,
    pub through: Option<String>,
    pub snapshots_shipped: u64,
    pub segments_shipped: u64,
    /// Stored (compressed, encrypted) bytes of snapshots and segments.
    pub bytes_shipped: u64,
    /// Objects written (a snapshot is two: it and its manifest).
    pub uploads: u64,
    /// Requests taking or renewing the lease (two each: read, then write).
    pub lease_requests: u64,
    pub failures: u64,
    /// Merged segments compaction wrote, and the segments they replaced (deleted).
    pub compactions: u64,
    pub segments_compacted: u64,
    /// Listings and deletions compaction made.
    pub compaction_requests: u64,
    pub compaction_failures: u64,
    pub last_shipped_at: Option<DateTime<Utc>>,
    /// The last upload's error; `None` once one succeeded.
    pub last_error: Option<String>,
    /// Seconds since the oldest commit it does not hold was read (0: it holds all).
    pub lag_seconds: f64,
    /// Spooled bytes it does not hold yet.
    pub lag_bytes: u64,
    pub max_lag_secs: u64,
}

impl StreamStatus {
    pub fn is_lagging(&self) -> bool {
        self.lag_seconds > self.max_lag_secs as f64
    }

    pub fn lag_reason(&self, name: &str) -> String {
        let error = match &self.last_error {
            Some(e) => format!("; last upload: {e}"),
            None => String::new(),
        };
        format!(
            "replica {name}: replication lags {:.0} s behind (more than {} s), {} bytes waiting{error}",
            self.lag_seconds, self.max_lag_secs, self.lag_bytes
        )
    }
}

impl ReplicaStatus {
    /// True when the newest complete copy is older than allowed (or there is none yet
    /// and the service has been up longer than that).
    pub fn is_stale(&self, now: DateTime<Utc>, uptime: Duration) -> bool {
        let limit = chrono::Duration::seconds(self.max_age_secs as i64);
        match self.newest_copy_at {
            Some(at) => now - at > limit,
            None => uptime.as_secs() > self.max_age_secs,
        }
    }

    /// Takes the complete copies' count and newest time from a fresh listing.
    fn count_copies(&mut self, copies: &[catalog::RemoteCopy]) {
        let complete = copies.iter().filter(|c| c.status == CopyStatus::Complete);
        self.complete_copies = complete.clone().count();
        self.newest_copy_at = complete.map(|c| c.created_at).max();
    }

    /// Why health is degraded by this replica, for `reasons`.
    pub fn stale_reason(&self) -> String {
        let newest = match self.newest_copy_at {
            Some(at) => format!("its newest copy is from {}", at.to_rfc3339()),
            None => "it holds no copy yet".to_string(),
        };
        let error = match &self.last_error {
            Some(e) => format!("; last attempt: {e}"),
            None => String::new(),
        };
        format!(
            "replica {}: no copy newer than {} s ({newest}){error}",
            self.name, self.max_age_secs
        )
    }
}

/// Every replica's status.
#[derive(Debug, Default)]
pub struct ReplicaBoard {
    replicas: Mutex<Vec<ReplicaStatus>>,
    /// Continuous replication's spool, from which each streaming replica's lag is read.
    spool: std::sync::OnceLock<Arc<Mutex<Spool>>>,
    /// The replication tailer's generations and gaps.
    tailer: std::sync::OnceLock<Arc<TailerBoard>>,
    /// Where writes wait for `ack_writes` replicas.
    gate: std::sync::OnceLock<Arc<AckGate>>,
}

impl ReplicaBoard {
    /// A status for each configured replica, nothing shipped yet.
    pub fn for_settings(settings: &Settings) -> ReplicaBoard {
        let replicas = settings
            .replicas
            .iter()
            .map(|replica| {
                let max_age = replica
                    .max_age_secs
                    .map(Duration::from_secs)
                    .unwrap_or_else(|| settings.backup.max_age());
                ReplicaStatus {
                    name: replica.name.clone(),
                    kind: replica.target().kind().to_string(),
                    max_age_secs: max_age.as_secs(),
                    stream: replica.stream.then(|| StreamStatus {
                        max_lag_secs: replica.max_lag_secs,
                        ..StreamStatus::default()
                    }),
                    ..ReplicaStatus::default()
                }
            })
            .collect();
        ReplicaBoard {
            replicas: Mutex::new(replicas),
            spool: std::sync::OnceLock::new(),
            tailer: std::sync::OnceLock::new(),
            gate: std::sync::OnceLock::new(),
        }
    }

    /// Every replica's status; a streaming replica's lag as of now.
    pub fn view(&self) -> Vec<ReplicaStatus> {
        let mut view = self.replicas.lock().map(|r| r.clone()).unwrap_or_default();
        if let Some(spool) = self.spool.get().and_then(|s| s.lock().ok()) {
            let now = Utc::now();
            for status in &mut view {
                if let Some(stream) = status.stream.as_mut() {
                    let lag = spool.lag(&status.name, now);
                    stream.lag_seconds = lag.seconds;
                    stream.lag_bytes = lag.bytes;
                }
            }
        }
        view
    }

    pub(super) fn watch_spool(&self, spool: Arc<Mutex<Spool>>, tailer: Arc<TailerBoard>) {
        let _ = self.spool.set(spool);
        let _ = self.tailer.set(tailer);
    }

    pub(super) fn watch_gate(&self, gate: Arc<AckGate>) {
        let _ = self.gate.set(gate);
    }

    /// The acknowledgement gate, while replication runs.
    pub fn gate(&self) -> Option<&AckGate> {
        self.gate.get().map(|g| g.as_ref())
    }

    /// The replication tailer's board, while replication runs.
    pub fn tailer(&self) -> Option<&TailerBoard> {
        self.tailer.get().map(|t| t.as_ref())
    }

    pub(super) fn update_stream(&self, name: &str, change: impl FnOnce(&mut StreamStatus)) {
        self.update(name, |s| {
            if let Some(stream) = s.stream.as_mut() {
                change(stream);
            }
        });
    }

    fn update(&self, name: &str, change: impl FnOnce(&mut ReplicaStatus)) {
        if let Ok(mut replicas) = self.replicas.lock() {
            if let Some(status) = replicas.iter_mut().find(|r| r.name == name) {
                change(status);
            }
        }
    }
}

/// The running shippers.
pub struct Shippers {
    pub board: Arc<ReplicaBoard>,
    pub handles: ShipperHandles,
    cancel: CancellationToken,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Shippers {
    /// Starts one shipper per configured replica. `verified` changes each time a
    /// verified backup is recorded.
    pub fn start(
        settings: &Settings,
        verified: watch::Receiver<u64>,
        notifier: &Notifier,
        leases: &[(String, SharedLease)],
        board: Arc<ReplicaBoard>,
    ) -> Result<Shippers, ReplicaError> {
        let cancel = CancellationToken::new();
        let mut threads = Vec::new();
        let mut handles = ShipperHandles::default();
        for replica_settings in &settings.replicas {
            let replica = Replica::open(replica_settings)?;
            let (commands_tx, commands) = mpsc::channel(4);
            handles
                .senders
                .push((replica_settings.name.clone(), commands_tx));
            let shipper = Shipper {
                lease: leases
                    .iter()
                    .find(|(n, _)| *n == replica_settings.name)
                    .map(|(_, l)| l.clone())
                    .ok_or_else(|| ReplicaError::UnknownReplica(replica_settings.name.clone()))?,
                releases_lease: !replica_settings.stream,
                staging: drill::staging_dir(&settings.backup.dir, &replica_settings.name),
                replica,
                backup_dir: settings.backup.dir.clone(),
                board: board.clone(),
                notifier: notifier.clone(),
                cancel: cancel.child_token(),
                started: std::time::Instant::now(),
            };
            let verified = verified.clone();
            let priority = replica_settings.cpu_priority;
            let thread = std::thread::Builder::new()
                .name(format!("replica-{}", replica_settings.name))
                .spawn(move || {
                    super::lower_this_threads_priority(priority);
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime.block_on(shipper.run(verified, commands)),
                        Err(e) => tracing::error!(replica = %shipper.replica.name(), error = %e, "cannot start the shipper's runtime"),
                    }
                })
                .map_err(ReplicaError::io(PathBuf::from("replica shipper thread")))?;
            threads.push(thread);
        }
        Ok(Shippers {
            board,
            handles,
            cancel,
            threads,
        })
    }

    /// Stops every shipper (an upload in flight is aborted) and waits for them.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        for thread in self.threads {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// Deletes this service's lease at a stop; bounded: a replica that does not answer must
/// not hold up the stop.
pub(super) async fn release_lease(lease: &SharedLease, replica: &Replica) {
    let release = async { lease.lock().await.release(replica).await };
    if tokio::time::timeout(Duration::from_secs(5), release)
        .await
        .is_err()
    {
        tracing::debug!(replica = %replica.name(), "the lease was not released: the replica did not answer");
    }
}

/// What a shipper can be asked to do besides shipping.
enum Command {
    Drill(oneshot::Sender<Result<DrillOutcome, ReplicaError>>),
}

/// Handles to the running shippers, by replica name.
#[derive(Clone, Default)]
pub struct ShipperHandles {
    senders: Vec<(String, mpsc::Sender<Command>)>,
}

impl ShipperHandles {
    /// Runs a restore drill of the replica `name` now, on its shipper's thread, after
    /// the upload in progress, if any.
    pub async fn drill(&self, name: &str) -> Result<DrillOutcome, ReplicaError> {
        let sender = self
            .senders
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
            .ok_or_else(|| ReplicaError::UnknownReplica(name.to_string()))?;
        let (reply, answer) = oneshot::channel();
        sender
            .send(Command::Drill(reply))
            .await
            .map_err(|_| ReplicaError::Cancelled)?;
        answer.await.map_err(|_| ReplicaError::Cancelled)?
    }
}

struct Shipper {
    replica: Replica,
    /// Taken or renewed before every write to the replica.
    lease: SharedLease,
    /// False when the replica streams: its Streamer stops last and releases it.
    releases_lease: bool,
    /// Where drills download to, emptied after each.
    staging: PathBuf,
    backup_dir: PathBuf,
    board: Arc<ReplicaBoard>,
    notifier: Notifier,
    cancel: CancellationToken,
    started: std::time::Instant,
}

impl Shipper {
    async fn run(self, mut verified: watch::Receiver<u64>, mut commands: mpsc::Receiver<Command>) {
        let name = self.replica.name().to_string();
        let mut retry = FIRST_RETRY;
        let mut due = Some(tokio::time::Instant::now());
        loop {
            let wake = due.unwrap_or_else(|| tokio::time::Instant::now() + LONGEST_RETRY * 4);
            tokio::select! {
                () = self.cancel.cancelled() => break,
                changed = verified.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    due = Some(tokio::time::Instant::now());
                    continue;
                }
                Some(Command::Drill(reply)) = commands.recv() => {
                    let outcome = self.drill().await;
                    let _ = reply.send(outcome);
                    continue;
                }
                () = tokio::time::sleep_until(wake) => {}
            }
            if due.is_none() {
                continue;
            }
            let outcome = self.catch_up().await;
            let now = Utc::now();
            match outcome {
                Ok(()) => {
                    retry = FIRST_RETRY;
                    due = None;
                    self.board.update(&name, |s| {
                        s.last_attempt_at = Some(now);
                        s.last_error = None;
                    });
                    self.notifier.resolve(
                        &format!("replica_stale:{name}"),
                        format!("replica {name} holds a current copy again"),
                    );
                }
                Err(ReplicaError::Cancelled) => break,
                Err(e) => {
                    tracing::warn!(replica = %name, error = %e, retry_in = ?retry, "shipping to the replica failed; local backups go on");
                    self.board.update(&name, |s| {
                        s.last_attempt_at = Some(now);
                        s.last_error = Some(e.to_string());
                        s.failures += 1;
                    });
                    let stale = self
                        .board
                        .view()
                        .iter()
                        .find(|s| s.name == name)
                        .is_some_and(|s| s.is_stale(now, self.started.elapsed()));
                    if stale {
                        self.notifier.alert(
                            &format!("replica_stale:{name}"),
                            Severity::Warning,
                            format!("replica {name} has no current copy: {e}"),
                            serde_json::json!({ "replica": name, "error": e.to_string() }),
                        );
                    }
                    due = Some(tokio::time::Instant::now() + retry);
                    retry = (retry * 2).min(LONGEST_RETRY);
                }
            }
        }
        if self.releases_lease {
            release_lease(&self.lease, &self.replica).await;
        }
        tracing::debug!(replica = %name, "shipper stopped");
    }

    /// Takes or renews the lease; while another service holds it, says so on the board
    /// and in an alert, and nothing is written.
    async fn hold_lease(&self) -> Result<(), ReplicaError> {
        let name = self.replica.name().to_string();
        let key = format!("replica_lease:{name}");
        let held = self.lease.lock().await.hold(&self.replica).await;
        match &held {
            Err(ReplicaError::LeaseHeld { holder, .. }) => {
                let holder = holder.clone();
                self.board.update(&name, |s| s.held_by = Some(holder));
                if let Err(e) = &held {
                    self.notifier.alert(
                        &key,
                        Severity::Warning,
                        e.to_string(),
                        serde_json::json!({ "replica": name }),
                    );
                }
            }
            Ok(()) => {
                let was_held = self
                    .board
                    .view()
                    .iter()
                    .any(|s| s.name == name && s.held_by.is_some());
                if was_held {
                    self.board.update(&name, |s| s.held_by = None);
                    self.notifier.resolve(
                        &key,
                        format!("replica {name}: this service holds its lease again"),
                    );
                }
            }
            Err(_) => {}
        }
        held
    }

    /// One drill, its result on the board and in the alerts.
    async fn drill(&self) -> Result<DrillOutcome, ReplicaError> {
        let name = self.replica.name().to_string();
        let key = format!("replica_drill:{name}");
        let outcome = match (self.hold_lease().await, drill::identities(&self.replica)) {
            (Err(e), _) | (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(identities)) => drill::run(&self.replica, &identities, &self.staging).await,
        };
        match &outcome {
            Ok(drilled) if drilled.ok() => {
                tracing::info!(replica = %name, result = %drilled.summary(), "restore drill passed");
                self.notifier.resolve(
                    &key,
                    format!(
                        "replica {name}: the restore drill passed: {}",
                        drilled.summary()
                    ),
                );
            }
            Ok(drilled) => {
                tracing::error!(replica = %name, result = %drilled.summary(), "restore drill FAILED");
                self.notifier.alert(
                    &key,
                    Severity::Critical,
                    format!(
                        "replica {name}: a copy failed its restore drill: {}",
                        drilled.summary()
                    ),
                    serde_json::json!({ "replica": name, "copies": drilled.copies }),
                );
            }
            Err(e) => {
                tracing::warn!(replica = %name, error = %e, "the restore drill could not run");
                self.notifier.alert(
                    &key,
                    Severity::Warning,
                    format!("replica {name}: the restore drill could not run: {e}"),
                    serde_json::json!({ "replica": name, "error": e.to_string() }),
                );
            }
        }
        let copies = catalog::list(&self.replica).await.ok();
        self.board.update(&name, |s| {
            match &outcome {
                Ok(drilled) => {
                    s.last_drill = Some(drilled.clone());
                    s.last_drill_error = None;
                }
                Err(e) => s.last_drill_error = Some(e.to_string()),
            }
            if let Some(copies) = &copies {
                s.count_copies(copies);
            }
        });
        outcome
    }

    /// Cleans up what uploads cut short left (`file://` staging files, S3/GCS/Azure
    /// uploads in the ledger). A failure is logged and tried again next round: cleaning
    /// up never stops shipping.
    async fn clean_up_cut_uploads(&self) {
        let name = self.replica.name().to_string();
        let replica = self.replica.clone();
        let removed = match tokio::task::spawn_blocking(move || replica.remove_abandoned_uploads())
            .await
        {
            Ok(Ok(removed)) => removed,
            Ok(Err(e)) => {
                tracing::warn!(replica = %name, error = %e, "could not delete what uploads cut short left; trying again next round");
                0
            }
            Err(e) => {
                tracing::warn!(replica = %name, error = %e, "the clean-up of uploads cut short did not finish");
                0
            }
        };
        let ledger = uploads::Ledger::of(&self.backup_dir, &name);
        let aborted = uploads::abort_abandoned(&self.replica, &ledger).await;
        if removed + aborted > 0 {
            tracing::info!(replica = %name, removed, aborted, "cleaned up what uploads cut short had left");
        }
    }

    /// Ships what the replica lacks, oldest first, then applies its retention.
    async fn catch_up(&self) -> Result<(), ReplicaError> {
        self.hold_lease().await?;
        self.clean_up_cut_uploads().await;
        let dir = self.backup_dir.clone();
        let local = tokio::task::spawn_blocking(move || local_catalog::list(&dir))
            .await
            .map_err(|e| ReplicaError::Io {
                path: self.backup_dir.clone(),
                source: std::io::Error::other(e),
            })??;
        let good: Vec<_> = local
            .into_iter()
            .filter(|m| m.status == BackupStatus::Good)
            .collect();
        let copies = catalog::list(&self.replica).await?;
        let newest_there = copies
            .iter()
            .filter(|c| c.status == CopyStatus::Complete)
            .map(|c| c.created_at)
            .max();
        let status_there = |name: &str| copies.iter().find(|c| c.name == name).map(|c| c.status);
        // Newer than the newest copy there, or there but failed by a drill.
        let mut missing: Vec<_> = good
            .iter()
            .filter(|m| match (status_there(&m.name), newest_there) {
                (Some(CopyStatus::Bad), _) => true,
                (Some(CopyStatus::Complete), _) => false,
                (_, Some(newest)) => m.created_at > newest,
                (_, None) => false,
            })
            .collect();
        if newest_there.is_none() {
            missing.extend(good.last());
        }
        missing.sort_by_key(|m| m.created_at);
        missing.dedup_by(|a, b| a.name == b.name);
        let name = self.replica.name().to_string();
        for manifest in missing {
            let shipped =
                ship::ship(&self.replica, &self.backup_dir, manifest, &self.cancel).await?;
            self.board.update(&name, |s| {
                s.shipped_bytes += shipped.object_bytes;
                s.shipped_copies += 1;
            });
        }
        let copies = catalog::list(&self.replica).await?;
        retention::prune(&self.replica, &copies).await?;
        let copies = catalog::list(&self.replica).await?;
        self.board.update(&name, |s| s.count_copies(&copies));
        Ok(())
    }
}

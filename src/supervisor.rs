//! Starts the service's parts in order and stops them in reverse, explicitly.
//!
//! Start: job files (invalid ones stop startup) → database lock → notifier →
//! database (open, adopt, migrate) → reader pool → DbWriter → Checkpointer,
//! IntegrityAuditor, BackupActor → one replica Shipper per replica → job registry →
//! cron scheduler → HTTP.
//! Stop: refuse new writes (503) → stop the scheduler → running jobs finish or are
//! cancelled (`jobs.shutdown_wait_secs`) while HTTP requests in flight finish
//! (`api.shutdown_grace_secs`) → shippers stop (an upload in flight is aborted) →
//! backups and checks are interrupted → the writer
//! commits everything it accepted, runs a final TRUNCATE checkpoint and closes the
//! connection → its thread is joined → notifications are flushed.
//!
//! actix does not restart an actor that panicked, and `System::stop` neither drains
//! mailboxes nor joins threads, so nothing here relies on either: a panic anywhere
//! triggers the same ordered shutdown and a non-zero exit, so systemd restarts us.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use actix::Arbiter;
use actix_web::dev::ServerHandle;
use tokio::sync::Notify;

use crate::api::{self, AppState};
use crate::auditor::{AuditorHandle, IntegrityBoard};
use crate::backup::{self, actor::BackupHandle, catalog};
use crate::checkpointer::Checkpointer;
use crate::config::Settings;
use crate::db::{self, readers::ReaderPool, CheckpointResult, DbError};
use crate::jobs::registry::{JobDeps, Registry, RegistryError};
use crate::jobs::{self, builtin, JobErrors, JobSpec, Trigger};
use crate::metrics::Metrics;
use crate::notifier::{Notifier, Severity};
use crate::replica::replicator::{self, Replicator};
use crate::replica::shipper::{ReplicaBoard, Shippers};
use crate::replica::{lease, ReplicaError};
use crate::scheduler::{Scheduler, SchedulerError};
use crate::writer::{DbWriter, WriterHandle};

/// Exit code after a panic (EX_SOFTWARE).
pub const EXIT_PANIC: i32 = crate::exit::SOFTWARE as i32;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("backups: {0}")]
    Backup(#[from] backup::BackupError),
    #[error(transparent)]
    Lock(#[from] db::lock::LockError),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error("invalid job files:\n{0}")]
    Jobs(#[from] JobErrors),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// How much of the service to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Everything: HTTP API, cron scheduler, startup backup and check.
    Serve,
    /// Only the database, the actors and the job registry, for `dbwarden jobs run`:
    /// no HTTP, no schedule, no startup tasks.
    OneShot,
}

/// Configures a service before it starts: extra (Rust) jobs and the mode.
pub struct ServiceBuilder {
    settings: Settings,
    jobs: Vec<JobSpec>,
    mode: Mode,
}

impl ServiceBuilder {
    /// Registers a job beside the built-in and `jobs/*.toml` ones.
    pub fn job(mut self, spec: JobSpec) -> ServiceBuilder {
        self.jobs.push(spec);
        self
    }

    pub fn mode(mut self, mode: Mode) -> ServiceBuilder {
        self.mode = mode;
        self
    }

    /// Starts everything; must run inside an actix `System`.
    pub async fn start(self) -> Result<Service, StartError> {
        Service::start_with(self.settings, self.jobs, self.mode).await
    }
}

/// A running service.
pub struct Service {
    /// Where the API listens (`0.0.0.0:0` in [`Mode::OneShot`], which serves nothing).
    pub addr: SocketAddr,
    pub writer: WriterHandle,
    pub jobs: Arc<Registry>,
    server: Option<ServerHandle>,
    writer_arbiter: Arbiter,
    backups: BackupHandle,
    backup_arbiter: Arbiter,
    auditor: AuditorHandle,
    auditor_arbiter: Arbiter,
    /// One per replica; stopped before the backups (an upload in flight is aborted).
    shippers: Option<Shippers>,
    /// Continuous replication; stopped after the writer, so its final commits and
    /// checkpoint are shipped.
    replicator: Option<Replicator>,
    scheduler: Option<Scheduler>,
    notifier: Notifier,
    flush_bound: std::time::Duration,
    jobs_wait: std::time::Duration,
    /// Released last, when the service is dropped.
    _lock: db::lock::DatabaseLock,
    accepting: Arc<AtomicBool>,
}

#[derive(Debug)]
pub struct ShutdownReport {
    pub final_checkpoint: Result<CheckpointResult, String>,
}

impl Service {
    /// Starts everything with the configured jobs; must run inside an actix `System`.
    pub async fn start(settings: Settings) -> Result<Service, StartError> {
        Service::builder(settings).start().await
    }

    pub fn builder(settings: Settings) -> ServiceBuilder {
        ServiceBuilder {
            settings,
            jobs: Vec::new(),
            mode: Mode::Serve,
        }
    }

    async fn start_with(
        settings: Settings,
        extra_jobs: Vec<JobSpec>,
        mode: Mode,
    ) -> Result<Service, StartError> {
        let custom_jobs = jobs::load_dir(&settings.jobs.dir)?;
        let mut settings = settings;
        if replicator::streams(&settings) {
            // The Checkpointer is then the only checkpointer on dbwarden's connections,
            // and each of its checkpoints waits until replication has every frame.
            settings.database.wal_autocheckpoint_pages = 0;
        }
        let settings = Arc::new(settings);
        let notifier = Notifier::start(&settings.notify);
        let _ = PANIC_NOTIFIER.set(notifier.clone());
        let lock = db::lock::acquire(&settings.database.path)?;
        let wal_left = db::hot_wal_bytes(&settings.database.path);
        // Adoption of a large Healarr database copies and rebuilds: off the async thread.
        let db_settings = settings.database.clone();
        let (conn, report, clean_stop) = tokio::task::spawn_blocking(move || {
            let (conn, report) = db::open_and_migrate(&db_settings)?;
            let clean_stop = db::queries::take_clean_stop(&conn)?;
            Ok::<_, DbError>((conn, report, clean_stop))
        })
        .await
        .map_err(|source| DbError::Task { source })??;
        report_previous_stop(&notifier, wal_left, clean_stop);
        if !report.applied.is_empty() {
            tracing::info!(applied = ?report.applied, "database migrated");
        }
        if let Some(repair) = &report.summary_repair {
            crate::auditor::alert_summary_repaired(&notifier, repair);
        }
        let page_size = db::wal::page_size(&conn)?;
        let readers = ReaderPool::open(&settings.database)?;
        let metrics = Arc::new(Metrics::new()?);
        let replica_board = Arc::new(ReplicaBoard::for_settings(&settings));
        let leases = lease::for_replicas(&settings.replicas, &settings.database.path);
        // Started before the writer, which tells it of every commit and checkpoint.
        let replicator = match mode {
            Mode::Serve => Replicator::start(&settings, &leases, &replica_board, &notifier)?,
            Mode::OneShot => None,
        };
        let (writer, writer_arbiter) = DbWriter::start(
            conn,
            settings.writer.mailbox_capacity,
            settings.writer.max_batch_requests,
            notifier.clone(),
            metrics.clone(),
            replicator.as_ref().map(|r| {
                Box::new(r.link.clone()) as Box<dyn crate::writer::replication::Replication>
            }),
        );
        let checkpointer = Arc::new(Checkpointer::new(
            writer.clone(),
            page_size,
            settings.checkpoint.wal_alert_bytes,
            notifier.clone(),
            metrics.clone(),
        ));
        let integrity = Arc::new(IntegrityBoard::default());
        let (auditor, auditor_arbiter) = AuditorHandle::start(
            settings.database.clone(),
            integrity.clone(),
            notifier.clone(),
            metrics.clone(),
            writer.clone(),
        );
        let (backups, backup_arbiter) =
            start_backups(&settings, integrity.clone(), &notifier, &metrics)?;
        // Shipping outlives a one-shot command's run: replicas are the service's.
        let shippers = match mode {
            Mode::Serve => Some(Shippers::start(
                &settings,
                backups.verified(),
                &notifier,
                &leases,
                replica_board.clone(),
            )?),
            Mode::OneShot => None,
        };
        let mut specs = builtin::specs(&settings, &backups, &auditor, &checkpointer);
        if let Some(shippers) = &shippers {
            specs.extend(builtin::drill_specs(&settings, &shippers.handles));
        }
        specs.extend(custom_jobs.into_iter().map(jobs::custom::spec));
        specs.extend(extra_jobs);
        let registry = Registry::new(
            specs,
            JobDeps {
                writer: writer.clone(),
                readers: readers.clone(),
                notifier: notifier.clone(),
                database: settings.database.path.clone(),
                history_keep: settings.jobs.history_keep,
                metrics: metrics.clone(),
            },
        )?;
        let jobs_wait = std::time::Duration::from_secs(settings.jobs.shutdown_wait_secs);
        let flush_bound = std::time::Duration::from_secs(settings.notify.shutdown_flush_secs);
        let accepting = Arc::new(AtomicBool::new(true));
        let state = AppState {
            settings: settings.clone(),
            writer: writer.clone(),
            readers,
            backups: backups.clone(),
            integrity,
            checkpoints: checkpointer.board.clone(),
            jobs: registry.clone(),
            replicas: replica_board,
            metrics: metrics.clone(),
            notifier: notifier.clone(),
            started: Instant::now(),
            accepting: accepting.clone(),
        };
        let (addr, server, scheduler) = match mode {
            Mode::OneShot => (SocketAddr::from(([0, 0, 0, 0], 0)), None, None),
            Mode::Serve => {
                let (addr, server, scheduler) =
                    serve(&settings, &registry, state, &notifier).await?;
                (addr, Some(server), Some(scheduler))
            }
        };
        Ok(Service {
            addr,
            writer,
            jobs: registry,
            server,
            writer_arbiter,
            backups,
            backup_arbiter,
            auditor,
            auditor_arbiter,
            shippers,
            replicator,
            scheduler,
            flush_bound,
            jobs_wait,
            notifier,
            accepting,
            _lock: lock,
        })
    }

    /// Ordered shutdown. With `graceful = false` (a second signal) requests in flight
    /// are cut, but the writer still commits everything it accepted.
    pub async fn shutdown(self, graceful: bool) -> ShutdownReport {
        self.accepting.store(false, Ordering::Release);
        if let Some(scheduler) = self.scheduler {
            scheduler.shutdown().await;
        }
        let server = self.server.clone();
        tokio::join!(self.jobs.shutdown(self.jobs_wait), async move {
            if let Some(server) = server {
                server.stop(graceful).await;
            }
        });
        if let Some(shippers) = self.shippers {
            shippers.shutdown().await;
        }
        self.backups.interrupt();
        self.auditor.interrupt();
        for arbiter in [self.backup_arbiter, self.auditor_arbiter] {
            arbiter.stop();
            let _ = tokio::task::spawn_blocking(move || arbiter.join()).await;
        }
        let mut replicator = self.replicator;
        if let Some(replicator) = replicator.as_mut() {
            replicator.stop_wal_restarts().await;
        }
        let final_checkpoint = self.writer.shutdown().await.map_err(|e| e.to_string());
        self.writer_arbiter.stop();
        let arbiter = self.writer_arbiter;
        let _ = tokio::task::spawn_blocking(move || arbiter.join()).await;
        if let Some(replicator) = replicator {
            replicator.shutdown().await;
        }
        if self.server.is_some() {
            self.notifier.alert(
                "service_stopped",
                Severity::Info,
                "dbwarden stopped in order",
                serde_json::json!({ "final_checkpoint": format!("{final_checkpoint:?}") }),
            );
        }
        self.notifier.flush(self.flush_bound).await;
        tracing::info!(?final_checkpoint, "dbwarden stopped");
        ShutdownReport { final_checkpoint }
    }

    /// The IntegrityAuditor, to run a check now.
    pub fn auditor(&self) -> &AuditorHandle {
        &self.auditor
    }

    /// Stops the HTTP server at once; used when a second signal arrives.
    pub fn server_handle(&self) -> Option<ServerHandle> {
        self.server.clone()
    }
}

/// A WAL with content at startup means a crash, unless the previous run recorded a
/// clean stop: then another connection's read transaction kept the final checkpoint
/// from emptying it (or another program kept writing after we stopped).
fn report_previous_stop(notifier: &Notifier, wal_left: Option<u64>, clean_stop: Option<String>) {
    match (wal_left, clean_stop) {
        (Some(bytes), None) => notifier.alert(
            "unclean_startup",
            Severity::Warning,
            format!("the previous run did not stop cleanly: a {bytes}-byte WAL was left; SQLite recovers it now"),
            serde_json::json!({ "wal_bytes": bytes }),
        ),
        (Some(bytes), Some(at)) => tracing::info!(
            wal_bytes = bytes,
            stopped_at = %at,
            "the previous run stopped in order; its WAL stayed because another connection was reading or writing the database"
        ),
        (None, _) => {}
    }
}

/// What only a serving service starts: the startup runs, the cron scheduler and the
/// HTTP API.
async fn serve(
    settings: &Settings,
    registry: &Arc<Registry>,
    state: AppState,
    notifier: &Notifier,
) -> Result<(SocketAddr, ServerHandle, Scheduler), StartError> {
    for (wanted, job) in [
        (settings.integrity.quick_at_startup, builtin::QUICK_CHECK),
        (settings.backup.at_startup, builtin::BACKUP),
    ] {
        if wanted {
            if let Err(e) = registry.trigger(job, Trigger::Startup) {
                tracing::error!(job, error = %e, "startup run could not start");
            }
        }
    }
    let scheduler = Scheduler::start(registry.clone()).await?;
    let wanted = settings.listen_addr();
    let listener = TcpListener::bind(wanted).map_err(|source| StartError::Listen {
        addr: wanted,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: wanted,
        source,
    })?;
    if !addr.ip().is_loopback() && settings.api.token.is_none() {
        tracing::warn!(%addr, "listening beyond loopback without api.token: anyone who can reach this port can write events");
    }
    let server =
        api::serve(listener, state).map_err(|source| StartError::Listen { addr, source })?;
    let handle = server.handle();
    actix_rt::spawn(server);
    notifier.alert(
        "service_started",
        Severity::Info,
        format!("dbwarden {} started on {addr}", env!("CARGO_PKG_VERSION")),
        serde_json::json!({ "database": settings.database.path, "sqlite": rusqlite::version() }),
    );
    tracing::info!(%addr, database = %settings.database.path.display(), sqlite = rusqlite::version(), "dbwarden started");
    Ok((addr, handle, scheduler))
}

/// Starts the BackupActor after cleaning up what an interrupted backup left.
fn start_backups(
    settings: &Settings,
    integrity: Arc<IntegrityBoard>,
    notifier: &Notifier,
    metrics: &Arc<Metrics>,
) -> Result<(BackupHandle, Arbiter), StartError> {
    backup::ensure_dir(&settings.backup.dir)?;
    let leftovers = catalog::remove_leftovers(&settings.backup.dir)?;
    if !leftovers.is_empty() {
        notifier.alert(
            "unclean_startup",
            Severity::Warning,
            format!(
                "unclean shutdown: removed {} temporary backup file(s) an interrupted backup left",
                leftovers.len()
            ),
            serde_json::json!(leftovers),
        );
    }
    let (handle, arbiter) = BackupHandle::start(
        settings.database.clone(),
        settings.backup.clone(),
        integrity,
        notifier.clone(),
        metrics.clone(),
    );
    Ok((handle, arbiter))
}

/// The notifier the panic hook reports to, once the service started.
static PANIC_NOTIFIER: OnceLock<Notifier> = OnceLock::new();

fn panic_notify() -> &'static (Notify, AtomicBool) {
    static PANICKED: OnceLock<(Notify, AtomicBool)> = OnceLock::new();
    PANICKED.get_or_init(|| (Notify::new(), AtomicBool::new(false)))
}

/// Installs a panic hook that logs the panic and asks the supervisor for an ordered
/// shutdown with a non-zero exit, instead of leaving a silently dead actor.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(panic = %info, "a part of dbwarden panicked; shutting down in order");
        if let Some(notifier) = PANIC_NOTIFIER.get() {
            notifier.alert(
                "panic",
                Severity::Critical,
                format!(
                    "a part of dbwarden panicked ({info}); shutting down in order to be restarted"
                ),
                serde_json::Value::Null,
            );
        }
        let (notify, flag) = panic_notify();
        flag.store(true, Ordering::SeqCst);
        notify.notify_one();
        default(info);
    }));
}

/// Runs until SIGTERM, SIGINT or a panic, then shuts down in order. Returns the
/// process exit code.
pub async fn run(settings: Settings) -> Result<i32, StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    install_panic_hook();
    let mut term = signal(SignalKind::terminate()).map_err(|source| StartError::Listen {
        addr: settings.listen_addr(),
        source,
    })?;
    let mut int = signal(SignalKind::interrupt()).map_err(|source| StartError::Listen {
        addr: settings.listen_addr(),
        source,
    })?;
    let service = Service::start(settings).await?;
    // systemd `Type=notify`: ready once the API answers (a no-op without NOTIFY_SOCKET).
    if let Err(e) = sd_notify::notify(
        false,
        &[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&format!("serving on {}", service.addr)),
        ],
    ) {
        tracing::warn!(error = %e, "could not tell systemd the service is ready");
    }
    let (notify, panicked) = panic_notify();
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        _ = notify.notified() => tracing::error!("panic: shutting down"),
    }
    // A second signal cuts requests in flight short; the writer still drains.
    let server = service.server_handle();
    let hurry = actix_rt::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::warn!("second signal: not waiting for requests in flight");
        if let Some(server) = server {
            server.stop(false).await;
        }
    });
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let report = service.shutdown(true).await;
    hurry.abort();
    let code = if panicked.load(Ordering::SeqCst) {
        EXIT_PANIC
    } else if report.final_checkpoint.is_err() {
        1
    } else {
        0
    };
    Ok(code)
}

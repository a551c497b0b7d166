//! The Replicator: continuous replication of every commit, whoever made it, to every
//! replica with `stream = true`, each within its `sync_interval_ms`.
//!
//! # Moving parts
//!
//! - The **tailer thread** owns the [`Tailer`] and its [read pin](crate::db::pin). It
//!   makes a pass when the DbWriter says it committed (at most every
//!   [`MIN_PASS_GAP`]; at once when a replica has `ack_writes`, unless every such
//!   replica is uploading and will ask for the pass as its upload ends, see
//!   [`super::ack`]), when the DbWriter is about to checkpoint, and every tenth of the
//!   shortest sync interval in any case (at least [`MIN_PASS_GAP`] apart), which is how
//!   commits of a direct writer (Healarr on its own connection) are found: so they wait
//!   at most that long more than the DbWriter's for their upload. A pass that finds
//!   nothing reads the wal-index header and nothing else. Each pass spools the new
//!   commits' frames as one segment, durably ([`super::spool`]).
//! - One **[Streamer](super::streamer)** per streaming replica uploads from the spool.
//! - A start begins a new generation: a snapshot of the database as it is then, so
//!   whatever happened while dbwarden was down (a direct writer's commits, a restore)
//!   is in it. What an earlier run spooled and did not upload goes up first.
//!
//! # Checkpoints
//!
//! dbwarden's connections do not checkpoint on their own while a replica streams
//! (`wal_autocheckpoint = 0`, set by the supervisor); the Checkpointer's checkpoints run
//! on the DbWriter's connection, which calls [`ReplicationLink::before_checkpoint`]
//! first: the tailer makes a pass (every frame committed so far is then in the spool)
//! and, for a RESTART or TRUNCATE checkpoint, which must wait for every reader, lets go
//! of its pin until [`ReplicationLink::after_checkpoint`]. A PASSIVE checkpoint keeps
//! the pin: it copies frames back only up to the pin's snapshot, all of them spooled.
//!
//! Between those, the tailer asks the [WAL restarter](super::wal_restart) for a
//! PASSIVE checkpoint whenever the WAL is past [`RESTART_FRAMES`]: with the same pass
//! first, and writers held off for its last step, so that the WAL restarts under a
//! writer that never pauses instead of growing until the next scheduled checkpoint.
//!
//! A direct writer's own checkpoints (SQLite's automatic one on Healarr's connection)
//! cannot reset the WAL over frames not yet read: the pin is a reader whose snapshot
//! holds them. Between the pass before a RESTART/TRUNCATE checkpoint and the checkpoint
//! itself a direct writer may still commit; if the checkpoint then resets the WAL over
//! that commit, the next pass finds the commit count short and reports a **gap**: the
//! tailer raises a `replication_gap` alert and begins a new generation from a fresh
//! snapshot. A restore never crosses a gap; it restores to a generation's last commit or
//! to any point of the newer one.

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::ack::AckGate;
use super::lag_history::{self, LagHistory};
use super::lease::SharedLease;
use super::shipper::ReplicaBoard;
use super::spool::{self, Spool};
use super::streamer::Streamer;
use super::tailer::{Pass, Tailer};
use super::wal_restart::{self, WalRestarter};
use super::{Replica, ReplicaError};
use crate::config::Settings;
use crate::db::{self, pin::ReadPin, CheckpointMode};
use crate::notifier::{Notifier, Severity};

/// Commits closer together than this share a pass (and a spooled piece).
pub const MIN_PASS_GAP: Duration = Duration::from_millis(100);
/// The WAL's length, in frames, past which the tailer asks the [`WalRestarter`] for a
/// checkpoint that lets it restart: SQLite's default automatic checkpoint, which is what a direct writer's own
/// connection would restart the WAL at if no pin held it. A WAL kept this short is
/// overwritten in place, where one that grows makes every commit extend the file (the
/// direct writer then loses half its commits, BENCHMARKS.md).
pub const RESTART_FRAMES: u32 = 1000;
/// The longest the tailer waits between two asks while the WAL does not restart (a
/// reader of another program holds an old snapshot): the wait doubles from one pass.
const LONGEST_RESTART_WAIT: Duration = Duration::from_secs(10);
/// How long the tailer keeps its pin released for a checkpoint that never says it
/// ended (the DbWriter stopped mid-way): then it pins again.
const RELEASE_LIMIT: Duration = Duration::from_secs(30);
/// How long a stop waits for the streamers to upload what is spooled.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

enum Message {
    Committed,
    BeforeCheckpoint {
        resets_wal: bool,
        done: SyncSender<()>,
    },
    AfterCheckpoint {
        done: SyncSender<()>,
    },
    /// A streamer is about to take what is spooled for an upload: a pass first, so the
    /// commits made since the last one go up with it.
    BeforeUpload {
        done: tokio::sync::oneshot::Sender<()>,
    },
    Stop,
}

/// How long a streamer waits for the tailer's pass before an upload; a busy tailer
/// only means the upload holds what was spooled.
const BEFORE_UPLOAD_WAIT: Duration = Duration::from_millis(250);

/// A streamer's way to ask the tailer for a pass before it uploads.
pub struct TailerNudge {
    messages: SyncSender<Message>,
}

impl TailerNudge {
    /// Returns once the tailer made a pass, or after [`BEFORE_UPLOAD_WAIT`].
    pub async fn pass_before_upload(&self) {
        let (done, passed) = tokio::sync::oneshot::channel();
        if self
            .messages
            .try_send(Message::BeforeUpload { done })
            .is_ok()
        {
            let _ = tokio::time::timeout(BEFORE_UPLOAD_WAIT, passed).await;
        }
    }
}

/// The DbWriter's side of replication: cheap to clone, never blocks a commit.
#[derive(Clone)]
pub struct ReplicationLink {
    messages: SyncSender<Message>,
    gate: Arc<AckGate>,
}

impl crate::writer::replication::Replication for ReplicationLink {
    fn committed(&self) {
        ReplicationLink::committed(self);
    }

    fn before_checkpoint(&self, mode: CheckpointMode, wait: Duration) -> bool {
        ReplicationLink::before_checkpoint(self, mode, wait)
    }

    fn after_checkpoint(&self, wait: Duration) -> bool {
        ReplicationLink::after_checkpoint(self, wait)
    }

    fn acknowledgement(
        &self,
        requests: usize,
    ) -> Option<crate::writer::replication::Acknowledgement> {
        if !self.gate.is_active() {
            return None;
        }
        let gate = self.gate.clone();
        let (n, waiting) = gate.committed(requests);
        Some(Box::pin(async move {
            let answered = gate.wait(n).await.map(|_| ());
            drop(waiting);
            answered
        }))
    }
}

impl ReplicationLink {
    /// Something was committed: a pass soon.
    pub fn committed(&self) {
        // A full queue already holds a message that leads to a pass.
        let _ = self.messages.try_send(Message::Committed);
    }

    /// Blocks until the tailer has spooled every commit so far and, when `mode`
    /// resets the WAL, released its pin; at most `wait`, answering whether it did or has
    /// stopped (a tailer that does not answer only risks a gap, which it would detect).
    pub fn before_checkpoint(&self, mode: CheckpointMode, wait: Duration) -> bool {
        let resets_wal = !matches!(mode, CheckpointMode::Passive | CheckpointMode::Noop);
        self.ask(|done| Message::BeforeCheckpoint { resets_wal, done }, wait)
    }

    /// Blocks until the tailer has moved its pin past the checkpoint (at most `wait`),
    /// answering whether it did or has stopped: a pin begun on a WAL the checkpoint copied back
    /// entirely holds no part of it, so the next commit can restart the WAL.
    pub fn after_checkpoint(&self, wait: Duration) -> bool {
        self.ask(|done| Message::AfterCheckpoint { done }, wait)
    }

    /// Sends the message `with` makes and waits, at most `wait`, for the tailer to
    /// answer it. A tailer that stopped holds no pin: nothing to wait for.
    fn ask(&self, with: impl FnOnce(SyncSender<()>) -> Message, wait: Duration) -> bool {
        let (done, answered) = mpsc::sync_channel(1);
        self.messages.send(with(done)).is_err() || answered.recv_timeout(wait).is_ok()
    }
}

/// The last gap the tailer found, for health and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct GapRecord {
    pub at: DateTime<Utc>,
    pub reason: String,
    /// The generation begun after it.
    pub generation: Option<String>,
}

/// What health and metrics read of the tailer.
#[derive(Debug, Default)]
pub struct TailerBoard {
    pub generation: Mutex<Option<String>>,
    pub last_gap: Mutex<Option<GapRecord>>,
    pub gaps: std::sync::atomic::AtomicU64,
    pub generations: std::sync::atomic::AtomicU64,
    /// Each streaming replica's lag over the last day (the status page's chart).
    pub lag: Mutex<LagHistory>,
}

/// The running replicator.
pub struct Replicator {
    pub link: ReplicationLink,
    pub spool: Arc<Mutex<Spool>>,
    pub tailer_board: Arc<TailerBoard>,
    pub gate: Arc<AckGate>,
    messages: SyncSender<Message>,
    tailer: std::thread::JoinHandle<()>,
    restarter: Option<WalRestarter>,
    streamers: Vec<std::thread::JoinHandle<()>>,
    drain: CancellationToken,
    cancel: CancellationToken,
}

impl Replicator {
    /// Starts replication when some replica streams; `None` otherwise. The first
    /// generation's snapshot is taken on the tailer's thread, so a large database
    /// does not delay the start.
    pub fn start(
        settings: &Settings,
        leases: &[(String, SharedLease)],
        board: &Arc<ReplicaBoard>,
        notifier: &Notifier,
    ) -> Result<Option<Replicator>, ReplicaError> {
        let streaming: Vec<_> = settings.replicas.iter().filter(|r| r.stream).collect();
        if streaming.is_empty() {
            return Ok(None);
        }
        let names: Vec<String> = streaming.iter().map(|r| r.name.clone()).collect();
        let root = spool::dir(&settings.backup.dir);
        let spool = Arc::new(Mutex::new(Spool::load(&root, &names)?));
        let tailer_board = Arc::new(TailerBoard::default());
        board.watch_spool(spool.clone(), tailer_board.clone());
        let gate = Arc::new(AckGate::new(
            streaming
                .iter()
                .filter(|r| r.ack_writes)
                .map(|r| {
                    (
                        r.name.clone(),
                        Duration::from_millis(r.ack_timeout_ms),
                        r.ack_fallback_local,
                    )
                })
                .collect(),
            spool.clone(),
        ));
        board.watch_gate(gate.clone());
        let (spooled_tx, spooled) = watch::channel(0u64);
        let (messages, inbox) = mpsc::sync_channel(64);
        let restarter = WalRestarter::start(
            &settings.database,
            ReplicationLink {
                messages: messages.clone(),
                gate: gate.clone(),
            },
        )
        .inspect_err(|e| tracing::warn!(error = %e, "cannot start the WAL restarter; under a direct writer that never pauses the WAL then restarts only at scheduled checkpoints"))
        .ok();
        let drain = CancellationToken::new();
        let cancel = CancellationToken::new();
        let mut streamers = Vec::new();
        for replica_settings in &streaming {
            let lease = leases
                .iter()
                .find(|(n, _)| *n == replica_settings.name)
                .map(|(_, l)| l.clone())
                .ok_or_else(|| ReplicaError::UnknownReplica(replica_settings.name.clone()))?;
            let streamer = Streamer {
                replica: Replica::open(replica_settings)?,
                lease,
                spool: spool.clone(),
                board: board.clone(),
                interval: Duration::from_millis(replica_settings.sync_interval_ms),
                compact_every: Duration::from_secs(replica_settings.compact_interval_secs),
                gate: gate.clone(),
                tailer: TailerNudge {
                    messages: messages.clone(),
                },
                drain: drain.clone(),
                cancel: cancel.clone(),
            };
            let spooled = spooled.clone();
            let priority = replica_settings.cpu_priority;
            let name = replica_settings.name.clone();
            let thread = std::thread::Builder::new()
                .name(format!("stream-{name}"))
                .spawn(move || {
                    super::lower_this_threads_priority(priority);
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime.block_on(streamer.run(spooled)),
                        Err(e) => tracing::error!(replica = %name, error = %e, "cannot start the streamer's runtime"),
                    }
                })
                .map_err(ReplicaError::io(PathBuf::from("replica streamer thread")))?;
            streamers.push(thread);
        }
        let snapshot_every = streaming
            .iter()
            .map(|r| Duration::from_secs(r.stream_retention_secs))
            .min()
            .unwrap_or(Duration::from_secs(86_400));
        let poll = streaming
            .iter()
            .map(|r| Duration::from_millis(r.sync_interval_ms) / 10)
            .min()
            .unwrap_or(Duration::from_millis(500))
            .max(MIN_PASS_GAP);
        let tailing = Tailing {
            settings: settings.database.clone(),
            spool: spool.clone(),
            spooled: spooled_tx,
            notifier: notifier.clone(),
            board: tailer_board.clone(),
            poll,
            gate: gate.clone(),
            tailer: None,
            snapshot_every,
            began: Instant::now(),
            restart: restarter.as_ref().map(WalRestarter::asker),
            restarts: Restarts::default(),
        };
        let tailer = std::thread::Builder::new()
            .name("replication-tailer".into())
            .spawn(move || tailing.run(inbox))
            .map_err(ReplicaError::io(PathBuf::from("replication tailer thread")))?;
        Ok(Some(Replicator {
            link: ReplicationLink {
                messages: messages.clone(),
                gate: gate.clone(),
            },
            spool,
            tailer_board,
            gate,
            messages,
            tailer,
            restarter,
            streamers,
            drain,
            cancel,
        }))
    }

    /// Stops the [`WalRestarter`] (after a checkpoint it is in, if any): call it
    /// before the DbWriter's final checkpoint, which it would otherwise hold up.
    pub async fn stop_wal_restarts(&mut self) {
        if let Some(restarter) = self.restarter.take() {
            let _ = tokio::task::spawn_blocking(move || restarter.stop()).await;
        }
    }

    /// Call after the DbWriter stopped: a last pass spools its final commits, the
    /// streamers upload what they can within [`DRAIN_LIMIT`], and everything stops.
    pub async fn shutdown(mut self) {
        self.stop_wal_restarts().await;
        let _ = self.messages.send(Message::Stop);
        let tailer = self.tailer;
        let _ = tokio::task::spawn_blocking(move || tailer.join()).await;
        self.drain.cancel();
        let cancel = self.cancel.clone();
        let streamers = self.streamers;
        let joined = tokio::task::spawn_blocking(move || {
            for thread in streamers {
                let _ = thread.join();
            }
        });
        tokio::pin!(joined);
        tokio::select! {
            _ = &mut joined => {}
            () = tokio::time::sleep(DRAIN_LIMIT) => {
                tracing::warn!("replicas did not take everything spooled before the stop; the rest goes up at the next start");
                cancel.cancel();
                let _ = joined.await;
            }
        }
    }
}

/// The tailer thread's state.
struct Tailing {
    settings: crate::config::DatabaseSettings,
    spool: Arc<Mutex<Spool>>,
    spooled: watch::Sender<u64>,
    notifier: Notifier,
    board: Arc<TailerBoard>,
    poll: Duration,
    gate: Arc<AckGate>,
    tailer: Option<Tailer>,
    /// A generation older than this is followed by a new one (a fresh snapshot), so
    /// older ones can leave the replicas' retention windows.
    snapshot_every: Duration,
    /// When the current generation began.
    began: Instant,
    /// Asks the [`WalRestarter`] for a checkpoint; `None` when it could not start.
    restart: Option<SyncSender<wal_restart::Ask>>,
    restarts: Restarts,
}

/// When the tailer last asked for a WAL restart, and how long it waits to ask again.
#[derive(Default)]
struct Restarts {
    /// The stream's end and the time at the last ask.
    asked: Option<(super::segment::Position, Instant)>,
    wait: Duration,
}

impl Tailing {
    fn run(mut self, inbox: mpsc::Receiver<Message>) {
        let mut released_until: Option<Instant> = None;
        let mut last_pass = Instant::now();
        let mut due = Instant::now();
        let mut last_sample: Option<Instant> = None;
        loop {
            let wait = match released_until {
                Some(until) => until.saturating_duration_since(Instant::now()),
                None => due.saturating_duration_since(Instant::now()),
            };
            match inbox.recv_timeout(wait) {
                Ok(Message::Committed) => {
                    // A commit waiting for its acknowledgement is read at once, unless
                    // every replica it waits for is uploading: each asks for a pass
                    // when its upload ends, and this commit goes up after that.
                    if released_until.is_none() && !self.gate.all_uploading() {
                        let gap = if self.gate.is_active() {
                            Duration::ZERO
                        } else {
                            MIN_PASS_GAP
                        };
                        due = due.min(last_pass + gap);
                    }
                    continue;
                }
                Ok(Message::BeforeCheckpoint { resets_wal, done }) => {
                    released_until = None;
                    self.pass();
                    if resets_wal {
                        if let Some(tailer) = self.tailer.as_mut() {
                            tailer.release_pin();
                        }
                        released_until = Some(Instant::now() + RELEASE_LIMIT);
                    }
                    let _ = done.send(());
                }
                Ok(Message::BeforeUpload { done }) => {
                    // Not while a checkpoint has the pin released: a pass would pin
                    // again and make the checkpoint wait for it.
                    if released_until.is_none() {
                        self.pass();
                    }
                    let _ = done.send(());
                    if released_until.is_none() {
                        self.ask_for_a_restart();
                    }
                }
                Ok(Message::AfterCheckpoint { done }) => {
                    released_until = None;
                    self.pass();
                    let _ = done.send(());
                }
                Err(RecvTimeoutError::Timeout) => {
                    released_until = None;
                    self.pass();
                    self.ask_for_a_restart();
                }
                Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    self.pass();
                    break;
                }
            }
            last_pass = Instant::now();
            due = last_pass + self.poll;
            if last_sample.is_none_or(|at| at.elapsed() >= lag_history::SAMPLE_EVERY) {
                self.sample_lag();
                last_sample = Some(Instant::now());
            }
        }
        tracing::debug!("replication tailer stopped");
    }

    /// Asks the [`WalRestarter`] for a checkpoint that lets the WAL restart, when the WAL is
    /// past [`RESTART_FRAMES`] and grew since the last ask. While asks do not restart
    /// it, they come further apart (doubling to [`LONGEST_RESTART_WAIT`]); a restart
    /// brings them back to every pass.
    fn ask_for_a_restart(&mut self) {
        let Some(end) = self.tailer.as_ref().map(Tailer::end) else {
            return;
        };
        if end.frame < RESTART_FRAMES {
            return;
        }
        if let Some((at, when)) = self.restarts.asked {
            if at == end || when.elapsed() < self.restarts.wait {
                return;
            }
            self.restarts.wait = if at.wal == end.wal {
                (self.restarts.wait * 2).clamp(MIN_PASS_GAP, LONGEST_RESTART_WAIT)
            } else {
                Duration::ZERO
            };
        }
        if let Some(restarter) = &self.restart {
            // A full queue already holds an ask.
            let _ = restarter.try_send(wal_restart::Ask::Restart);
            self.restarts.asked = Some((end, Instant::now()));
        }
    }

    fn sample_lag(&self) {
        let now = Utc::now();
        let (Ok(spool), Ok(mut history)) = (self.spool.lock(), self.board.lag.lock()) else {
            return;
        };
        for replica in spool.replicas() {
            history.record(replica, now, spool.lag(replica, now));
        }
    }

    /// One pass; begins the generation first when there is none (the start, or a
    /// start that failed before).
    fn pass(&mut self) {
        let Some(tailer) = self.tailer.as_mut() else {
            self.begin(None);
            return;
        };
        let ended = match self.spool.lock() {
            Ok(spool) => spool.ended(tailer.generation()).map(str::to_string),
            Err(_) => None,
        };
        if let Some(reason) = ended {
            self.gap(reason);
            return;
        }
        // Read before the pass pins: every commit counted by now is in it.
        let covered = self.gate.committed_so_far();
        let began = std::time::Instant::now();
        let passed = tailer.pass(Utc::now());
        let pass_ms = began.elapsed().as_secs_f64() * 1e3;
        match passed {
            Ok(Pass::Idle) => {
                if let Ok(mut spool) = self.spool.lock() {
                    spool.passed(covered);
                }
                self.gate.progressed();
            }
            Ok(Pass::Spooled { header, path }) => {
                tracing::debug!(piece = %header.name(), pass_ms, "commits spooled");
                if let Ok(mut spool) = self.spool.lock() {
                    spool.add(header, path, covered);
                }
                self.spooled.send_modify(|n| *n += 1);
                if self.began.elapsed() >= self.snapshot_every {
                    tracing::info!("the generation is as old as the shortest stream_retention_secs: a new one begins from a fresh snapshot");
                    let pin = self.tailer.take().map(Tailer::into_pin);
                    self.begin(pin);
                }
            }
            Ok(Pass::Gap { reason }) => self.gap(reason),
            Err(e) => {
                tracing::warn!(error = %e, "a replication pass failed; trying again at the next one");
            }
        }
    }

    /// The current generation cannot go on (`reason`): alert, and begin a new one from
    /// a fresh snapshot.
    fn gap(&mut self, reason: String) {
        let old = self
            .tailer
            .as_ref()
            .map(|t| t.generation().to_string())
            .unwrap_or_default();
        tracing::error!(generation = %old, %reason, "replication found commits it cannot ship in order; starting a new generation");
        self.board
            .gaps
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut last) = self.board.last_gap.lock() {
            *last = Some(GapRecord {
                at: Utc::now(),
                reason: reason.clone(),
                generation: None,
            });
        }
        self.notifier.alert(
            "replication_gap",
            Severity::Warning,
            format!("replication of generation {old} stopped at a gap ({reason}); a new generation starts from a fresh snapshot"),
            serde_json::json!({ "generation": old, "reason": reason }),
        );
        let pin = self.tailer.take().map(Tailer::into_pin);
        self.begin(pin);
    }

    fn begin(&mut self, pin: Option<ReadPin>) {
        let pin = match pin {
            Some(pin) => pin,
            None => match open_pin(&self.settings) {
                Ok(pin) => pin,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open the replication's read connections; trying again");
                    return;
                }
            },
        };
        let root = match self.spool.lock() {
            Ok(spool) => spool.root().to_path_buf(),
            Err(_) => return,
        };
        let covered = self.gate.committed_so_far();
        match Tailer::start(&self.settings.path, pin, &root, Utc::now()) {
            Ok((tailer, info)) => {
                tracing::info!(generation = %info.generation, position = %info.position, last_event_id = info.last_event_id, "replication generation begun");
                if let Ok(mut spool) = self.spool.lock() {
                    spool.begin(tailer.dir(), info.clone(), covered);
                }
                if let Ok(mut current) = self.board.generation.lock() {
                    *current = Some(info.generation.clone());
                }
                if let Ok(mut last) = self.board.last_gap.lock() {
                    if let Some(gap) = last.as_mut().filter(|g| g.generation.is_none()) {
                        gap.generation = Some(info.generation.clone());
                    }
                }
                self.board
                    .generations
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.tailer = Some(tailer);
                self.began = Instant::now();
                self.spooled.send_modify(|n| *n += 1);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot begin a replication generation; trying again at the next pass");
            }
        }
    }
}

fn open_pin(settings: &crate::config::DatabaseSettings) -> Result<ReadPin, db::DbError> {
    Ok(ReadPin::new(
        &settings.path,
        [db::open_reader(settings)?, db::open_reader(settings)?],
    ))
}

/// Whether any replica streams, so dbwarden's connections leave checkpoints to the
/// Checkpointer.
pub fn streams(settings: &Settings) -> bool {
    settings.replicas.iter().any(|r| r.stream)
}

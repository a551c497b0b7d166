//! The WAL restarter: checkpoints that let the WAL restart while a replica streams,
//! under a direct writer that never pauses (Healarr on its own connection) as under
//! dbwarden's own writes. The tailer asks for one each time the WAL is past
//! [`RESTART_FRAMES`](super::replicator::RESTART_FRAMES) and grew since its last ask.
//!
//! **Why.** The read pin keeps any connection from restarting the WAL over frames not
//! yet read, and it sits a pass behind a writer that never pauses, so without these
//! the WAL is never entirely copied back and never restarts until dbwarden's next
//! scheduled checkpoint (every five minutes by default). A WAL that grows makes every
//! commit extend the file, and that alone costs such a writer about half its commits
//! (`contrib/held-reader-cost.py`, BENCHMARKS.md); a WAL that restarts is overwritten in
//! place, which costs it nothing.
//!
//! **How, and why it loses nothing.** Like the Checkpointer's checkpoints it runs only
//! with every frame up to it spooled, and it is PASSIVE: it copies frames back only up
//! to the pin, never resets the WAL itself, and waits for no reader. In two steps, so
//! that writers are held off only for the last few milliseconds of commits:
//! 1. the tailer makes a pass (everything so far is spooled, the pin at the end) and a
//!    PASSIVE checkpoint copies the WAL back up to there, while writers go on;
//! 2. with every other writer held off (its own connection's `BEGIN IMMEDIATE`, which
//!    writes nothing, [`db::with_writers_held`]): the tailer passes again (the
//!    commits made during step 1), a PASSIVE checkpoint copies the rest back, and the
//!    tailer moves its pin on a WAL that is now entirely in the database, which SQLite
//!    lets a reader do without holding any of it; then writers go on.
//!
//! The next commit, by whichever connection, restarts the WAL from its start, over
//! frames all read; and until the pin moves again no checkpoint can copy anything of
//! the new WAL back, so no second restart can come before its frames are read. A
//! commit of another program's between the steps, a reader of its holding an old
//! snapshot, or a write lock not won within [`db::HOLD_WRITERS_WAIT`] only means no
//! restart this time: nothing here can lose a frame, and the tailer's commit count
//! would show it if anything did (a gap, and a new generation).
//!
//! Its two connections (one to hold writers off, one to checkpoint) are its own, on its
//! own thread, so the DbWriter goes on committing through step 1, and is held off in
//! step 2 like any other writer. The Checkpointer's scheduled checkpoints are
//! unchanged: they still run on the DbWriter's connection.

use std::path::PathBuf;
use std::sync::mpsc::{self, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::replicator::ReplicationLink;
use super::ReplicaError;
use crate::config::DatabaseSettings;
use crate::db::{self, CheckpointMode};

/// How long the first step waits for the tailer's pass: it holds nobody up, and a
/// tailer far behind a writer (a busy spell after a snapshot) may take a while.
const FIRST_PASS_WAIT: Duration = Duration::from_secs(30);
/// How long the second step, which holds writers off, waits for each of the tailer's
/// passes (they read only what the first step's took to commit).
const HELD_PASS_WAIT: Duration = Duration::from_secs(1);

pub enum Ask {
    Restart,
    Stop,
}

pub struct WalRestarter {
    asks: SyncSender<Ask>,
    thread: JoinHandle<()>,
}

impl WalRestarter {
    /// Opens its connections and starts its thread.
    pub fn start(
        settings: &DatabaseSettings,
        tailer: ReplicationLink,
    ) -> Result<WalRestarter, ReplicaError> {
        let lock = db::open_for_wal_restarts(settings)?;
        let checkpoints = db::open_for_wal_restarts(settings)?;
        let (asks, inbox) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("wal-restarter".into())
            .spawn(move || {
                while let Ok(Ask::Restart) = inbox.recv() {
                    restart(&lock, &checkpoints, &tailer);
                    // An ask made during that one is about the WAL before it.
                    match inbox.try_recv() {
                        Ok(Ask::Stop) => break,
                        Ok(Ask::Restart) | Err(_) => {}
                    }
                }
            })
            .map_err(ReplicaError::io(PathBuf::from("WAL restarter thread")))?;
        Ok(WalRestarter { asks, thread })
    }

    /// Where the tailer sends its asks.
    pub fn asker(&self) -> SyncSender<Ask> {
        self.asks.clone()
    }

    /// Ends the thread once the checkpoint it is in, if any, is done.
    pub fn stop(self) {
        let _ = self.asks.send(Ask::Stop);
        let _ = self.thread.join();
    }
}

/// The two steps of the module's docs.
fn restart(lock: &Connection, checkpoints: &Connection, tailer: &ReplicationLink) {
    let began = Instant::now();
    if !tailer.before_checkpoint(CheckpointMode::Passive, FIRST_PASS_WAIT) {
        return;
    }
    if let Err(e) = db::passive_checkpoint_soon(checkpoints) {
        tracing::warn!(error = %e, "the checkpoint before a WAL restart failed");
        return;
    }
    let unheld = began.elapsed();
    let step = db::with_writers_held(lock, |held| {
        if !held {
            return None;
        }
        let holding = Instant::now();
        let passed = tailer.before_checkpoint(CheckpointMode::Passive, HELD_PASS_WAIT);
        let result = db::passive_checkpoint_soon(checkpoints);
        let moved = passed && tailer.after_checkpoint(HELD_PASS_WAIT);
        Some((passed, moved, result, holding, holding.elapsed()))
    });
    let (passed, moved, result, holding, held_for) = match step {
        Ok(Some(step)) => step,
        Ok(None) => {
            tracing::debug!(
                "writers kept the write lock; the WAL restarts at a later ask or checkpoint"
            );
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "could not let writers go after a WAL restart's checkpoint");
            return;
        }
    };
    match result {
        Ok(r) => tracing::debug!(
            passed,
            moved,
            unheld_ms = unheld.as_secs_f64() * 1e3,
            lock_wait_ms = (holding - began - unheld).as_secs_f64() * 1e3,
            held_ms = held_for.as_secs_f64() * 1e3,
            frames = r.log_frames,
            checkpointed = r.checkpointed_frames,
            "WAL checkpointed for a restart"
        ),
        Err(e) => tracing::warn!(error = %e, "the checkpoint for a WAL restart failed"),
    }
}

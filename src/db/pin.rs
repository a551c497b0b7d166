//! The read pin: a read transaction continuous replication holds so that no
//! connection, dbwarden's or a direct writer's, can restart the WAL over frames not
//! yet read.
//!
//! SQLite restarts a WAL (writes new frames from its start, over the old ones) only
//! when every frame is back in the database and no reader holds one of the WAL's read
//! marks; a reader whose snapshot includes WAL frames holds one, and a checkpoint never
//! copies frames past the oldest such reader either. So while the pin's transaction is
//! open the frames after its snapshot stay in the WAL, whoever checkpoints.
//!
//! The pin moves forward by opening its next transaction on a second connection before
//! letting the first go, so there is never a moment with no pin. A transaction begun
//! when the WAL is entirely back in the database uses no read mark and holds nothing:
//! that only happens when everything in the WAL was read already, and a restart then
//! loses nothing; what could be lost after it, [`crate::replica::tailer`] finds from
//! the wal-index's commit counter.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::walfile::{self, WalIndex};
use super::{queries, DbError};

/// How often [`ReadPin::advance`] tries to begin its transaction with no commit in
/// between, so it knows exactly which commit its snapshot is.
const EXACT_TRIES: usize = 8;

pub struct ReadPin {
    database: PathBuf,
    connections: [Connection; 2],
    /// Which connection holds the pin, if one does.
    held: Option<usize>,
}

/// Where a pin's snapshot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pinned {
    /// The wal-index header as of the pin's snapshot when `exact`, else as of just
    /// after it (the snapshot is then at or before it). `None`: no WAL yet.
    pub index: Option<WalIndex>,
    pub exact: bool,
    /// The highest event id ever assigned as of the pin's snapshot
    /// ([`queries::event_id_counter`]).
    pub last_event_id: i64,
}

impl ReadPin {
    /// `connections` are two read connections to `database`.
    pub fn new(database: &Path, connections: [Connection; 2]) -> ReadPin {
        ReadPin {
            database: database.to_path_buf(),
            connections,
            held: None,
        }
    }

    /// Begins a read transaction on the connection not holding the pin, then lets the
    /// old one go. It tries to begin where no commit lands between reading the
    /// wal-index and beginning, so that the snapshot is known exactly.
    pub fn advance(&mut self) -> Result<Pinned, DbError> {
        let next = self.held.map_or(0, |i| 1 - i);
        let conn = &self.connections[next];
        let mut pinned = None;
        for _ in 0..EXACT_TRIES {
            let before = walfile::read_wal_index(&self.database)?;
            conn.execute_batch("BEGIN DEFERRED")?;
            let last_event_id = match queries::event_id_counter(conn) {
                Ok(id) => id,
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    return Err(e);
                }
            };
            let after = walfile::read_wal_index(&self.database)?;
            let exact = before == after;
            pinned = Some(Pinned {
                index: after,
                exact,
                last_event_id,
            });
            if exact {
                break;
            }
            conn.execute_batch("ROLLBACK")?;
        }
        let pinned = match pinned {
            Some(p) if p.exact => p,
            // Commits kept landing: pin anyway, at a snapshot not known exactly.
            _ => {
                conn.execute_batch("BEGIN DEFERRED")?;
                let last_event_id = queries::event_id_counter(conn)?;
                Pinned {
                    index: walfile::read_wal_index(&self.database)?,
                    exact: false,
                    last_event_id,
                }
            }
        };
        self.release_held();
        self.held = Some(next);
        Ok(pinned)
    }

    /// Lets go of the pin: a checkpoint may then restart the WAL.
    pub fn release(&mut self) {
        self.release_held();
        self.held = None;
    }

    /// The connection holding the pin, its transaction open at the pin's snapshot (a
    /// snapshot copied through it is exactly that snapshot).
    pub fn connection(&self) -> Option<&Connection> {
        self.held.map(|i| &self.connections[i])
    }

    fn release_held(&mut self) {
        if let Some(i) = self.held {
            if let Err(e) = self.connections[i].execute_batch("ROLLBACK") {
                tracing::warn!(error = %e, "could not end the replication pin's read transaction");
            }
        }
    }
}

//! The one measure of the WAL that matters: content not yet checkpointed back into the
//! database. The `-wal` file keeps its high-water size after a checkpoint (until
//! TRUNCATE or `journal_size_limit`), so its size alone is a poor signal; health, the
//! Checkpointer's threshold and `/metrics` all use [`pending_bytes`].
//!
//! The WAL file format (sqlite.org/fileformat2.html): a 32-byte header, then frames of
//! a 24-byte header and one page each.

use rusqlite::Connection;

use super::{wal_checkpoint, CheckpointMode, CheckpointResult, DbError};

/// Bytes of the WAL file header.
pub const HEADER_BYTES: i64 = 32;
/// Bytes of each frame's header, before its page.
pub const FRAME_HEADER_BYTES: i64 = 24;

/// WAL content the checkpoint result says is not yet back in the database, in bytes:
/// the frames not checkpointed, each a frame header and a page.
pub fn pending_bytes(result: &CheckpointResult, page_size: i64) -> i64 {
    (result.log_frames - result.checkpointed_frames).max(0) * (page_size + FRAME_HEADER_BYTES)
}

/// The database's page size.
pub fn page_size(conn: &Connection) -> Result<i64, DbError> {
    Ok(conn.query_row("PRAGMA page_size", [], |r| r.get(0))?)
}

/// What the WAL holds now, read without checkpointing anything (`NOOP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalState {
    pub frames: i64,
    pub pending_bytes: i64,
}

pub fn state(conn: &Connection) -> Result<WalState, DbError> {
    let now = wal_checkpoint(conn, CheckpointMode::Noop)?;
    Ok(WalState {
        frames: now.log_frames.max(0),
        pending_bytes: pending_bytes(&now, page_size(conn)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The format constants, checked against a WAL SQLite really wrote: with no
    /// checkpoint, the file is one header and one frame header plus page per frame.
    #[test]
    fn a_wal_file_is_a_header_and_frames_of_the_sizes_named_here() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("w.db");
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
             CREATE TABLE t(x); INSERT INTO t VALUES (randomblob(10000));",
        )
        .expect("write");
        let state = state(&conn).expect("state");
        let page = page_size(&conn).expect("page size");
        assert!(state.frames > 2, "the write spans several pages");
        let file = std::fs::metadata(dir.path().join("w.db-wal"))
            .expect("wal")
            .len() as i64;
        assert_eq!(
            file,
            HEADER_BYTES + state.frames * (page + FRAME_HEADER_BYTES)
        );
        assert_eq!(state.pending_bytes, file - HEADER_BYTES);
    }

    /// Frames not yet checkpointed, each a frame header and a page; never negative
    /// (SQLite answers -1 for both counts when it is not in WAL mode). (Found by
    /// mutation testing: `-` → `+` went unnoticed.)
    #[test]
    fn pending_bytes_count_the_frames_not_yet_checkpointed() {
        let result = |log_frames, checkpointed_frames| CheckpointResult {
            busy: false,
            log_frames,
            checkpointed_frames,
        };
        assert_eq!(pending_bytes(&result(10, 4), 4096), 6 * (4096 + 24));
        assert_eq!(pending_bytes(&result(10, 10), 4096), 0);
        assert_eq!(pending_bytes(&result(-1, -1), 4096), 0);
        assert_eq!(pending_bytes(&result(3, 0), 1024), 3 * (1024 + 24));
    }
}

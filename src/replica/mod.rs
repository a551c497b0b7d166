//! Replicas: verified backups copied off the machine, to object storage (S3 and
//! S3-compatible services, GCS, Azure) or another disk, through the `object_store`
//! crate.
//!
//! A local backup is shipped only after it passed its own checks (see [`crate::backup`]).
//! On its way out it is compressed (zstd) and, unless a replica says
//! `encryption = "none"`, encrypted with age to the replica's recipients, in one
//! stream: the file is read once, a part at a time, and never held whole in memory.
//! The copy is a standard file: `age -d -i key.txt X | zstd -d > x.db` opens it
//! without dbwarden.
//!
//! # Layout under a replica's prefix
//!
//! ```text
//! backups/<backup name>.zst.age        the copy (`.zst` when not encrypted)
//! backups/<backup name>.manifest.json  written last: a copy counts only with it
//! backups/<backup name>.drill.json     the last restore drill's verdict
//! lease.json                           which service writes here (see [`lease`])
//! lease.lock                           file:// replicas only: the lock itself
//! ```
//!
//! Names are the local backups' names (`dbwarden-<UTC time>.db`), so the time of each
//! copy is in its name and a replica can be read, listed and pruned by a new machine
//! that has only the settings. The manifest's public part (sizes, the copy's SHA-256,
//! times) is plain JSON, so retention and catch-up need no secret; what the database
//! holds (its SHA-256, last event id, event count, schema) is sealed to the same age
//! recipients as the copy. Continuous replication (WAL segments) will live beside
//! `backups/` under the same prefix.
//!
//! Nothing here ever blocks the writer: shipping reads the verified backup file, never
//! the live database.

pub mod catalog;
pub mod codec;
pub mod drill;
pub mod fetch;
pub mod layout;
pub mod lease;
pub mod manifest;
pub mod retention;
pub mod ship;
pub mod shipper;
pub mod store;

use std::path::PathBuf;

pub use store::Replica;

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("replica {replica}: {source}")]
    Store {
        replica: String,
        #[source]
        source: object_store::Error,
    },
    #[error("replica {replica}: cannot be opened: {reason}")]
    Open { replica: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("replica {replica}: copy {name}: {reason}")]
    BadCopy {
        replica: String,
        name: String,
        reason: String,
    },
    #[error("replica {replica}: no copy named {name}")]
    NoSuchCopy { replica: String, name: String },
    #[error("replica {replica}: no complete copy")]
    Empty { replica: String },
    #[error("no replica named `{0}` in the settings")]
    UnknownReplica(String),
    #[error("cannot decrypt: {0}")]
    Decrypt(String),
    #[error("cannot encrypt: {0}")]
    Encrypt(String),
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error("replica {replica}: written by another dbwarden service ({holder}{}); not writing there: stop that service, or give this one another prefix", renewed_at.map(|t| format!(", lease renewed {}", t.to_rfc3339())).unwrap_or_default())]
    LeaseHeld {
        replica: String,
        holder: String,
        renewed_at: Option<chrono::DateTime<chrono::Utc>>,
    },
    #[error("shipping stopped: the service is shutting down")]
    Cancelled,
}

impl ReplicaError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ReplicaError {
        let path = path.into();
        move |source| ReplicaError::Io { path, source }
    }
}

/// This machine's host name, as manifests and leases record who wrote them.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
    // or truncates, and the last byte is kept 0.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// How much lower than the writer shipping and drills run (`nice`): compressing,
/// encrypting and hashing a backup can keep every core busy, and the writer's commits
/// must not wait for a CPU behind them (measured in BENCHMARKS.md).
pub const SHIPPING_NICENESS: i32 = 10;

/// Lowers the calling thread's scheduling priority to [`SHIPPING_NICENESS`]; threads
/// it starts afterwards (the runtime's blocking pool, zstd's workers) inherit it.
/// Best effort: a failure is logged and shipping goes on at normal priority.
pub fn lower_this_threads_priority() {
    // SAFETY: gettid has no preconditions; setpriority with PRIO_PROCESS and a thread
    // id changes only that thread's niceness on Linux.
    let rc = unsafe {
        libc::setpriority(
            libc::PRIO_PROCESS,
            libc::gettid() as libc::id_t,
            SHIPPING_NICENESS,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the shipping thread's priority");
    }
}

//! A small pool of read-only connections. Readers in WAL mode never wait for the
//! writer, and each query runs on tokio's blocking pool, never on an async thread.

use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use tokio::sync::Semaphore;

use super::{open_reader, DbError};
use crate::config::DatabaseSettings;

pub struct ReaderPool {
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
    settings: DatabaseSettings,
}

impl ReaderPool {
    /// Opens `settings.readers` connections now, so a bad path fails at startup.
    pub fn open(settings: &DatabaseSettings) -> Result<Arc<ReaderPool>, DbError> {
        let idle = (0..settings.readers)
            .map(|_| open_reader(settings))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(ReaderPool {
            idle: Mutex::new(idle),
            permits: Semaphore::new(settings.readers),
            settings: settings.clone(),
        }))
    }

    /// Runs `f` with a reader connection on the blocking pool.
    pub async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut Connection) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| DbError::PoolClosed)?;
        let pooled = self.idle.lock().map_err(|_| DbError::PoolPoisoned)?.pop();
        let conn = match pooled {
            Some(c) => c,
            // A connection is lost only when a query panicked; replace it.
            None => open_reader(&self.settings)?,
        };
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let mut conn = conn;
            let result = f(&mut conn);
            (conn, result)
        })
        .await
        .map_err(|source| DbError::Task { source })?;
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
        result
    }
}

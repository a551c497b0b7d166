//! Whether backups are being taken: one assessment that health, `/metrics` and the
//! status page all read, so none of them shows green while nothing is being saved.
//!
//! Backups are unhealthy (health `degraded`, with the reason) when
//! - the latest backup attempt failed;
//! - the newest verified backup is older than `backup.max_age_secs` (default: twice the
//!   longest gap of `backup.schedule`), or there is none and the service has run longer
//!   than that;
//! - re-verification marked the newest backup bad.
//!
//! They recover with the next verified backup.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::catalog::{BackupStatus, Manifest};

/// The latest attempt, kept by the BackupHandle.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub at: DateTime<Utc>,
    /// `None` when it produced a verified backup.
    pub error: Option<String>,
}

/// A board (the last-known state an actor publishes for others to read without asking it):
/// the latest backup attempt of this run of the service.
#[derive(Debug, Default)]
pub struct BackupBoard {
    last: Mutex<Option<Attempt>>,
}

impl BackupBoard {
    pub fn record(&self, error: Option<String>) {
        if let Ok(mut last) = self.last.lock() {
            *last = Some(Attempt {
                at: Utc::now(),
                error,
            });
        }
    }

    pub fn last(&self) -> Option<Attempt> {
        self.last.lock().ok().and_then(|l| l.clone())
    }
}

/// The `backup` part of health.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct BackupHealth {
    /// When the newest good backup was verified.
    pub last_verified_at: Option<DateTime<Utc>>,
    /// Seconds since then.
    pub age_seconds: Option<i64>,
    /// The oldest the newest verified backup may be.
    pub max_age_seconds: i64,
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// Why the latest attempt failed; `None` when it succeeded (or none was made).
    pub last_error: Option<String>,
    /// Why backups are unhealthy; empty when they are fine.
    pub problems: Vec<String>,
}

fn hours(seconds: i64) -> String {
    if seconds >= 7200 {
        format!("{} h", seconds / 3600)
    } else {
        format!("{} min", seconds / 60)
    }
}

/// Judges the catalog and the latest attempt at `now`, for a service up `uptime`.
pub fn assess(
    catalog: &[Manifest],
    last_attempt: Option<Attempt>,
    max_age: Duration,
    uptime: Duration,
    now: DateTime<Utc>,
) -> BackupHealth {
    let max_age_seconds = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
    let newest_good = catalog
        .iter()
        .filter(|m| m.status == BackupStatus::Good)
        .max_by_key(|m| m.verified_at);
    let age_seconds = newest_good.map(|m| (now - m.verified_at).num_seconds().max(0));
    let mut problems = Vec::new();
    if let Some(Attempt {
        at,
        error: Some(error),
    }) = &last_attempt
    {
        problems.push(format!(
            "the latest backup attempt failed ({}): {error}",
            at.format("%Y-%m-%d %H:%M:%S UTC")
        ));
    }
    match age_seconds {
        Some(age) if age > max_age_seconds => problems.push(format!(
            "the newest verified backup is {} old, more than backup.max_age_secs ({})",
            hours(age),
            hours(max_age_seconds)
        )),
        None if uptime > max_age => problems.push(format!(
            "there is no verified backup, and the service has run {} (backup.max_age_secs is {})",
            hours(i64::try_from(uptime.as_secs()).unwrap_or(i64::MAX)),
            hours(max_age_seconds)
        )),
        _ => {}
    }
    if let Some(newest) = catalog
        .iter()
        .max_by_key(|m| (m.created_at, m.name.clone()))
    {
        if newest.status == BackupStatus::Bad {
            problems.push(format!(
                "the newest backup {} failed re-verification: {}",
                newest.name,
                newest.problem.as_deref().unwrap_or("no reason recorded")
            ));
        }
    }
    BackupHealth {
        last_verified_at: newest_good.map(|m| m.verified_at),
        age_seconds,
        max_age_seconds,
        last_attempt_at: last_attempt.as_ref().map(|a| a.at),
        last_error: last_attempt.and_then(|a| a.error),
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(name: &str, created: DateTime<Utc>, status: BackupStatus) -> Manifest {
        Manifest {
            name: name.into(),
            size_bytes: 1,
            sha256: String::new(),
            created_at: created,
            schema_version: String::new(),
            last_event_id: 0,
            verified_at: created,
            status,
            problem: (status == BackupStatus::Bad).then(|| "SHA-256 differs".into()),
            duration_ms: None,
        }
    }

    #[test]
    fn each_reason_alone_and_recovery() {
        let now = Utc::now();
        let h = |n: i64| chrono::Duration::hours(n);
        let max = Duration::from_secs(12 * 3600);
        let up = Duration::from_secs(3600);
        let fresh = [manifest("a", now - h(1), BackupStatus::Good)];
        assert!(assess(&fresh, None, max, up, now).problems.is_empty());

        let old = [manifest("a", now - h(13), BackupStatus::Good)];
        let judged = assess(&old, None, max, up, now);
        assert_eq!(judged.problems.len(), 1, "{judged:?}");
        assert!(judged.problems[0].contains("13 h old"), "{judged:?}");
        assert_eq!(judged.age_seconds, Some(13 * 3600));
        // Exactly as old as allowed is still fine; a second more is not.
        let at_limit = [manifest("a", now - h(12), BackupStatus::Good)];
        assert!(assess(&at_limit, None, max, up, now).problems.is_empty());
        let past = [manifest(
            "a",
            now - h(12) - chrono::Duration::seconds(1),
            BackupStatus::Good,
        )];
        assert_eq!(assess(&past, None, max, up, now).problems.len(), 1);

        let failed = Attempt {
            at: now,
            error: Some("the backup directory is missing".into()),
        };
        let judged = assess(&fresh, Some(failed), max, up, now);
        assert!(
            judged.problems[0].contains("directory is missing"),
            "{judged:?}"
        );
        assert_eq!(
            judged.last_error.as_deref(),
            Some("the backup directory is missing")
        );

        let bad_newest = [
            manifest("a", now - h(2), BackupStatus::Good),
            manifest("b", now - h(1), BackupStatus::Bad),
        ];
        let judged = assess(&bad_newest, None, max, up, now);
        assert!(
            judged.problems[0].contains("b failed re-verification"),
            "{judged:?}"
        );

        assert!(
            assess(&[], None, max, up, now).problems.is_empty(),
            "just started"
        );
        assert!(
            assess(&[], None, max, max, now).problems.is_empty(),
            "up exactly as long as allowed without one"
        );
        let long_up = Duration::from_secs(13 * 3600);
        assert_eq!(assess(&[], None, max, long_up, now).problems.len(), 1);

        let ok = Attempt {
            at: now,
            error: None,
        };
        assert!(assess(&fresh, Some(ok), max, up, now).problems.is_empty());
    }
}

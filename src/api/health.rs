//! `GET /api/health` and `GET /api/stats/dashboard`: answered from the count table and
//! in-memory state, never from a scan.
//!
//! Health follows Healarr's shape (`status`, `version`, `uptime` as "1d 2h 3m",
//! `database` {status: connected | error, size_bytes, wal_bytes},
//! `pending_corruptions`). `status` is `healthy`, `degraded` (writes failing on
//! storage, or backups not being taken: see [`crate::backup::health`]) or `failing`
//! (the writer is gone, or the last integrity check failed); `failing` answers 503
//! so container health checks notice, the others 200. A replica whose newest complete
//! copy is older than its `max_age_secs`, or whose last restore drill failed, makes
//! health `degraded`, naming the replica.

use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::error::ApiError;
use super::AppState;
use crate::db::{self, queries};

fn uptime_text(d: Duration) -> String {
    let minutes = d.as_secs() / 60;
    let (days, hours, minutes) = (minutes / 1440, (minutes / 60) % 24, minutes % 60);
    if days > 0 {
        format!("{days}d {hours}h {minutes}m")
    } else if hours > 0 {
        format!("{hours}h {minutes}m")
    } else {
        format!("{minutes}m")
    }
}

struct DbFacts {
    pending: i64,
    wal_bytes: i64,
    size_bytes: u64,
}

#[utoipa::path(
    get,
    path = "/api/health",
    tag = "status",
    security(()),
    responses(
        (status = 200, description = "healthy or degraded (see `reasons`)", body = Object),
        (status = 503, description = "failing: the writer is gone", body = Object)
    )
)]
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let db_path = state.settings.database.path.clone();
    let facts = state
        .readers
        .run(move |conn| {
            let pending = queries::pending_count(conn)?;
            // Un-checkpointed WAL content, not the file's high-water size.
            let wal_bytes = db::wal::state(conn)?.pending_bytes;
            let size_bytes = std::fs::metadata(&db_path).map(|m| m.len()).unwrap_or(0);
            Ok(DbFacts {
                pending,
                wal_bytes,
                size_bytes,
            })
        })
        .await;
    let writer_alive = state.writer.is_alive();
    let storage_failing = state.writer.stats().storage_failing.load(Ordering::Relaxed);
    let mut database = json!({ "status": "connected" });
    let mut status = "healthy";
    let mut reasons: Vec<String> = Vec::new();
    let pending = match facts {
        Ok(f) => {
            database["size_bytes"] = json!(f.size_bytes);
            database["wal_bytes"] = json!(f.wal_bytes);
            f.pending
        }
        Err(e) => {
            database["status"] = json!("error");
            database["error"] = json!(e.to_string());
            status = "degraded";
            reasons.push(format!("database read failed: {e}"));
            0
        }
    };
    if storage_failing {
        status = "degraded";
        let last = state
            .writer
            .stats()
            .last_error
            .lock()
            .ok()
            .and_then(|l| l.clone())
            .unwrap_or_default();
        reasons.push(format!("writes are failing: {last}"));
    }
    let backups = state.backups.clone();
    let uptime = state.started.elapsed();
    let backup = match web::block(move || backups.health(uptime)).await {
        Ok(Ok(b)) => {
            if !b.problems.is_empty() {
                status = "degraded";
                reasons.extend(b.problems.iter().cloned());
            }
            json!(b)
        }
        Ok(Err(e)) => {
            status = "degraded";
            reasons.push(format!("the backup catalog could not be read: {e}"));
            json!(null)
        }
        Err(e) => {
            status = "degraded";
            reasons.push(format!("the backup catalog could not be read: {e}"));
            json!(null)
        }
    };
    let now = chrono::Utc::now();
    let replicas: Vec<_> = state
        .replicas
        .view()
        .into_iter()
        .map(|r| {
            let stale = r.is_stale(now, uptime);
            if stale {
                status = "degraded";
                reasons.push(r.stale_reason());
            }
            if let Some(holder) = &r.held_by {
                status = "degraded";
                reasons.push(format!(
                    "replica {}: written by another dbwarden service ({holder}); this one ships nothing there",
                    r.name
                ));
            }
            if let Some(drill) = r.last_drill.as_ref().filter(|d| !d.ok()) {
                status = "degraded";
                reasons.push(format!(
                    "replica {}: the restore drill of {} failed: {}",
                    r.name,
                    drill.at.to_rfc3339(),
                    drill.summary()
                ));
            }
            if let Some(stream) = r.stream.as_ref().filter(|s| s.is_lagging()) {
                status = "degraded";
                reasons.push(stream.lag_reason(&r.name));
            }
            let mut view = json!(r);
            view["stale"] = json!(stale);
            view
        })
        .collect();
    if let Some(gate) = state.replicas.gate() {
        for name in gate.failing() {
            status = "degraded";
            reasons.push(format!(
                "replica {name}: writes are answered 503 until it takes commits again (ack_writes), its uploads are failing"
            ));
        }
    }
    let replication = state.replicas.tailer().map(|t| {
        json!({
            "generation": t.generation.lock().ok().and_then(|g| g.clone()),
            "generations": t.generations.load(std::sync::atomic::Ordering::Relaxed),
            "gaps": t.gaps.load(std::sync::atomic::Ordering::Relaxed),
            "last_gap": t.last_gap.lock().ok().and_then(|g| g.clone()),
        })
    });
    let integrity = state.integrity.view();
    if integrity.result == "failing" {
        status = "failing";
        reasons.push("the last integrity check failed; backups are held back".into());
    }
    if !writer_alive {
        status = "failing";
        database["status"] = json!("error");
        reasons.push("the database writer has stopped".into());
    }
    let body = json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "revision": env!("DBWARDEN_REVISION"),
        "uptime": uptime_text(state.started.elapsed()),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "database": database,
        "pending_corruptions": pending,
        "integrity": integrity,
        "checkpoint": state.checkpoints.last(),
        "backup": backup,
        "replicas": replicas,
        "replication": replication,
        "reasons": reasons,
    });
    if status == "failing" {
        HttpResponse::ServiceUnavailable().json(body)
    } else {
        HttpResponse::Ok().json(body)
    }
}

/// Counts per bucket, `total` (every corruption except ignored ones, as Healarr
/// counts), `corruptions_today` (CorruptionDetected events created today, UTC, of
/// corruptions not ignored, as Healarr counts them) and
/// `success_rate` (Healarr's: resolved × 100 / (resolved + orphaned), 100 when nothing
/// finished and nothing is in progress, else 0).
#[utoipa::path(
    get,
    path = "/api/stats/dashboard",
    tag = "status",
    responses((status = 200, description = "Counts per bucket, total, corruptions today, success rate", body = Object))
)]
pub async fn dashboard(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let today = crate::time::today_prefix();
    let (buckets, today_count) = state
        .readers
        .run(move |conn| {
            Ok((
                queries::bucket_counts(conn)?,
                queries::corruptions_detected_on(conn, &today)?,
            ))
        })
        .await?;
    let get = |b: &str| buckets.get(b).copied().unwrap_or(0);
    let total: i64 = buckets
        .iter()
        .filter(|(b, _)| b.as_str() != "ignored")
        .map(|(_, n)| n)
        .sum();
    let (resolved, orphaned) = (get("resolved"), get("orphaned"));
    let success_rate = if resolved + orphaned > 0 {
        resolved * 100 / (resolved + orphaned)
    } else if get("in_progress") > 0 {
        0
    } else {
        100
    };
    Ok(HttpResponse::Ok().json(json!({
        "buckets": buckets,
        "total": total,
        "corruptions_today": today_count,
        "success_rate": success_rate,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_reads_like_healarr() {
        assert_eq!(uptime_text(Duration::from_secs(59)), "0m");
        assert_eq!(uptime_text(Duration::from_secs(3 * 3600 + 120)), "3h 2m");
        assert_eq!(
            uptime_text(Duration::from_secs(2 * 86400 + 3600)),
            "2d 1h 0m"
        );
    }
}

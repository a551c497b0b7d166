//! `GET /metrics`: the Prometheus text exposition, plus the middleware that counts
//! every HTTP request by route pattern (never the raw path, so ids do not multiply
//! series), method and status.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};

use super::error::ApiError;
use super::AppState;
use crate::backup::catalog::{self, BackupStatus};
use crate::db::{self, queries};
use crate::metrics::{ReplicaFigures, ReplicationFigures, Snapshot, StreamFigures};

/// Counts and times each request once it is answered.
pub async fn count_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        _ => "other",
    };
    let result = next.call(req).await;
    if let Some(state) = state {
        // An error from an inner middleware (before routing) has no route pattern.
        let (route, status) = match &result {
            Ok(response) => (
                response
                    .request()
                    .match_pattern()
                    .unwrap_or_else(|| "unmatched".to_string()),
                response.status(),
            ),
            Err(e) => ("unmatched".to_string(), e.as_response_error().status_code()),
        };
        let status = status.as_u16().to_string();
        state
            .metrics
            .http_requests
            .with_label_values(&[&route, method, &status])
            .inc();
        state
            .metrics
            .http_request_seconds
            .with_label_values(&[&route, method])
            .observe(started.elapsed().as_secs_f64());
    }
    result
}

fn file_len(path: std::path::PathBuf) -> Option<i64> {
    std::fs::metadata(path)
        .ok()
        .and_then(|m| i64::try_from(m.len()).ok())
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "status",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"))
)]
pub async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let db = state.settings.database.path.clone();
    let backup_dir = state.backups.cfg.dir.clone();
    let backup_handle = state.backups.clone();
    let uptime = state.started.elapsed();
    let (database_bytes, wal_file_bytes, backups, backup_health) = web::block(move || {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        (
            file_len(db),
            file_len(wal.into()),
            catalog::list(&backup_dir).unwrap_or_default(),
            backup_handle.health(uptime).ok(),
        )
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let wal = state.readers.run(|conn| db::wal::state(conn)).await.ok();
    let good: Vec<_> = backups
        .iter()
        .filter(|m| m.status == BackupStatus::Good)
        .collect();
    let newest_backup = good.iter().max_by_key(|m| m.verified_at).map(|m| {
        (
            i64::try_from(m.size_bytes).unwrap_or(i64::MAX),
            (chrono::Utc::now() - m.verified_at).num_seconds().max(0),
        )
    });
    let corruptions = state
        .readers
        .run(|conn| queries::bucket_counts(conn))
        .await?
        .into_iter()
        .collect();
    let snapshot = Snapshot {
        writes_in_flight: state.writer.in_flight(),
        wal_bytes: wal.map(|w| w.pending_bytes),
        wal_frames: wal.map(|w| w.frames),
        wal_file_bytes,
        checkpoint_starved: state.checkpoints.last().map(|c| c.starved),
        integrity_failing: state.integrity.view().result == "failing",
        database_bytes,
        newest_backup,
        backups_stored: good.len() as i64,
        backups_healthy: backup_health.map(|h| h.problems.is_empty()),
        notifications: state
            .notifier
            .stats()
            .into_iter()
            .map(|(name, s)| {
                use std::sync::atomic::Ordering::Relaxed;
                (
                    name,
                    s.sent.load(Relaxed),
                    s.failed.load(Relaxed),
                    s.dropped.load(Relaxed),
                )
            })
            .collect(),
        corruptions,
        replicas: replica_figures(&state, uptime),
        replication: state.replicas.tailer().map(|t| {
            use std::sync::atomic::Ordering::Relaxed;
            ReplicationFigures {
                generations: t.generations.load(Relaxed),
                gaps: t.gaps.load(Relaxed),
                last_gap_at: t
                    .last_gap
                    .lock()
                    .ok()
                    .and_then(|g| g.as_ref().map(|g| g.at.timestamp())),
                ack_refused: state.replicas.gate().map_or(0, |g| g.refused.load(Relaxed)),
                ack_fell_back: state
                    .replicas
                    .gate()
                    .map_or(0, |g| g.fell_back.load(Relaxed)),
            }
        }),
    };
    let text = state
        .metrics
        .render(&snapshot)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text))
}

fn replica_figures(state: &AppState, uptime: std::time::Duration) -> Vec<ReplicaFigures> {
    let now = chrono::Utc::now();
    state
        .replicas
        .view()
        .into_iter()
        .map(|r| ReplicaFigures {
            newest_copy_age_secs: r.newest_copy_at.map(|at| (now - at).num_seconds().max(0)),
            complete_copies: i64::try_from(r.complete_copies).unwrap_or(i64::MAX),
            shipped_bytes: r.shipped_bytes,
            shipped_copies: r.shipped_copies,
            failures: r.failures,
            stale: r.is_stale(now, uptime),
            last_drill: r
                .last_drill
                .as_ref()
                .map(|d| (d.ok(), (now - d.at).num_seconds().max(0))),
            stream: r.stream.as_ref().map(|s| StreamFigures {
                lag_seconds: s.lag_seconds,
                lag_bytes: s.lag_bytes,
                lagging: s.is_lagging(),
                snapshots: s.snapshots_shipped,
                segments: s.segments_shipped,
                bytes: s.bytes_shipped,
                puts: s.uploads,
                lease_requests: s.lease_requests,
                failures: s.failures,
                compactions: s.compactions,
                segments_compacted: s.segments_compacted,
                compaction_requests: s.compaction_requests,
                compaction_failures: s.compaction_failures,
            }),
            name: r.name,
        })
        .collect()
}

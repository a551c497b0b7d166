//! The status page (`GET /`, one self-contained HTML file embedded in the binary, no
//! external assets) and the history it charts that no other endpoint has
//! (`GET /api/status/history`: the last 24 h of checkpoints and of replication lag,
//! the recent alerts).
//!
//! The page itself is served without the token (it holds no data); it asks for the
//! token once when the API answers 401 and keeps it in the browser's session storage.

use actix_web::{web, HttpResponse};

use super::schema::StatusHistory;
use super::AppState;

const PAGE: &str = include_str!("../../assets/status.html");

#[utoipa::path(
    get,
    path = "/",
    tag = "status",
    security(()),
    responses((status = 200, description = "The status page", body = String, content_type = "text/html"))
)]
pub async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:"))
        .body(PAGE)
}

#[utoipa::path(
    get,
    path = "/api/status/history",
    tag = "status",
    responses((status = 200, description = "Checkpoints and replication lag of the last 24 h and the recent alerts, oldest first", body = StatusHistory))
)]
pub async fn history(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(StatusHistory {
        checkpoints: state
            .checkpoints
            .history()
            .into_iter()
            .filter_map(|c| serde_json::to_value(c).ok())
            .collect(),
        alerts: state
            .notifier
            .recent()
            .into_iter()
            .filter_map(|a| serde_json::to_value(a).ok())
            .collect(),
        replication_lag: state
            .replicas
            .tailer()
            .and_then(|t| t.lag.lock().ok().map(|h| h.view()))
            .unwrap_or_default()
            .into_iter()
            .filter_map(|series| serde_json::to_value(series).ok())
            .collect(),
    })
}

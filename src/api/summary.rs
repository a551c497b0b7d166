//! `POST /api/summary/repair`: remove triggers of other programs that write the
//! summary and rebuild it through the DbWriter (what `dbwarden check --repair` asks a
//! running service for). The scheduled checks do the same by themselves.

use actix_web::{web, HttpResponse};

use super::error::ApiError;
use super::AppState;
use crate::db::guard::RepairReport;

#[utoipa::path(
    post,
    path = "/api/summary/repair",
    tag = "maintenance",
    responses((status = 200, description = "What was found and what the rebuild changed", body = RepairReport))
)]
pub async fn repair(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let report = state.writer.repair_summary().await?;
    if report.rows_changed > 0 || !report.triggers_removed.is_empty() {
        crate::auditor::alert_summary_repaired(&state.notifier, &report);
    }
    Ok(HttpResponse::Ok().json(report))
}

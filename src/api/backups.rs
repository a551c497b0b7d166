//! `POST /api/backups` (take one now; answers with the manifest once verified) and
//! `GET /api/backups` (the catalog, oldest first).

use actix_web::{web, HttpResponse};

use super::error::ApiError;
use super::schema::BackupList;
use super::schema::ErrorBody;
use super::AppState;
use crate::backup::catalog::Manifest;
use crate::backup::{catalog, BackupError};

impl From<BackupError> for ApiError {
    fn from(e: BackupError) -> ApiError {
        match e {
            _ if e.is_disk_full() => {
                tracing::error!(error = %e, "backup failed: the disk is full");
                ApiError::InsufficientStorage
            }
            BackupError::AlreadyRunning | BackupError::DirectoryBusy { .. } => {
                ApiError::Conflict(e.to_string())
            }
            BackupError::SourceCorrupt(_) | BackupError::Unavailable => {
                ApiError::Unavailable(e.to_string())
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

#[utoipa::path(
    post,
    path = "/api/backups",
    tag = "backups",
    responses(
        (status = 201, description = "Taken and verified", body = Manifest),
        (status = 409, description = "A backup is already running", body = ErrorBody)
    )
)]
pub async fn create(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let manifest = state.backups.take().await?;
    Ok(HttpResponse::Created().json(manifest))
}

#[utoipa::path(
    get,
    path = "/api/backups",
    tag = "backups",
    responses((status = 200, description = "The catalog, oldest first", body = BackupList))
)]
pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let dir = state.backups.cfg.dir.clone();
    let backups = web::block(move || catalog::list(&dir))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(HttpResponse::Ok().json(BackupList { backups }))
}

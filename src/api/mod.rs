//! The HTTP API (actix-web). Handlers read through the reader pool and write only
//! through the DbWriter; none of them blocks an async thread on SQLite.

mod auth;
mod backups;
mod corruptions;
pub mod error;
mod events;
mod health;
mod jobs;
mod limits;
mod metrics;

use std::net::TcpListener;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_governor::Governor;
use actix_web::middleware::{from_fn, Condition, ErrorHandlers};
use actix_web::{dev::Server, web, App, HttpRequest, HttpResponse, HttpServer};

use crate::auditor::IntegrityBoard;
use crate::backup::actor::BackupHandle;
use crate::checkpointer::CheckpointBoard;
use crate::config::Settings;
use crate::db::readers::ReaderPool;
use crate::jobs::registry::Registry;
use crate::writer::WriterHandle;
use error::ApiError;

/// What every handler can reach.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub writer: WriterHandle,
    pub readers: Arc<ReaderPool>,
    pub backups: BackupHandle,
    pub integrity: Arc<IntegrityBoard>,
    pub checkpoints: Arc<CheckpointBoard>,
    pub jobs: Arc<Registry>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub notifier: crate::notifier::Notifier,
    pub started: Instant,
    /// Cleared when shutdown begins: new writes get 503 while requests in flight finish.
    pub accepting: Arc<AtomicBool>,
}

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/metrics")
            .route(web::get().to(metrics::metrics))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/events")
            .route(web::post().to(events::append))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/health")
            .route(web::get().to(health::health))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/stats/dashboard")
            .route(web::get().to(health::dashboard))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/backups")
            .route(web::get().to(backups::list))
            .route(web::post().to(backups::create))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/corruptions")
            .route(web::get().to(corruptions::list))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/corruptions/{id}")
            .route(web::get().to(corruptions::get))
            .route(web::delete().to(corruptions::delete))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/jobs")
            .route(web::get().to(jobs::list))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/jobs/{name}/runs")
            .route(web::get().to(jobs::runs))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/jobs/{name}/run")
            .route(web::post().to(jobs::run))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/corruptions/{id}/history")
            .route(web::get().to(corruptions::history))
            .default_service(web::to(method_not_allowed)),
    );
}

async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!("route {}", req.path())))
}

/// Binds the HTTP server on `listener`; the caller drives the returned future and
/// stops it through its handle.
pub fn serve(listener: TcpListener, state: AppState) -> std::io::Result<Server> {
    let workers = state.settings.api.workers;
    let grace = state.settings.api.shutdown_grace_secs;
    let rate_limit = limits::rate_limit(&state.settings.api);
    let unlimited = actix_governor::GovernorConfigBuilder::default()
        .key_extractor(limits::ClientAddress)
        .finish()
        .ok_or_else(|| std::io::Error::other("rate limiter configuration"))?;
    let state = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(from_fn(auth::require_token))
            .wrap(Condition::new(
                rate_limit.is_some(),
                Governor::new(rate_limit.as_ref().unwrap_or(&unlimited)),
            ))
            .wrap(from_fn(limits::limit_headers))
            .wrap(from_fn(metrics::count_requests))
            .wrap(ErrorHandlers::new().default_handler(error::json_error_fallback))
            .configure(routes)
            .default_service(web::to(not_found))
    })
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(grace)
    .client_request_timeout(Duration::from_secs(30))
    .listen(listener)?
    .run();
    Ok(server)
}

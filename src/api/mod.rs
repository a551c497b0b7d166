//! The HTTP API (actix-web). Handlers read through the reader pool and write only
//! through the DbWriter; none of them blocks an async thread on SQLite.

mod auth;
mod backups;
mod corruptions;
pub(crate) mod error;
mod events;
mod health;
mod jobs;
mod limits;
mod metrics;
pub(crate) mod openapi;
pub(crate) mod schema;
mod status;
mod summary;

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
use crate::replica::shipper::ReplicaBoard;
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
    /// How each replica stands (empty when none is configured).
    pub replicas: Arc<ReplicaBoard>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub notifier: crate::notifier::Notifier,
    pub started: Instant,
    /// Cleared when shutdown begins: new writes get 503 while requests in flight finish.
    pub accepting: Arc<AtomicBool>,
}

/// Declares every route once: `routes` registers them (each path answers 405 to other
/// methods) and `ROUTES` lists them, so a test can hold the OpenAPI document to it.
macro_rules! api_routes {
    ($($path:literal => [$($method:ident => $handler:path),+ $(,)?]),+ $(,)?) => {
        /// (path, methods) of every route the app registers.
        pub const ROUTES: &[(&str, &[&str])] = &[$(($path, &[$(stringify!($method)),+])),+];

        fn routes(cfg: &mut web::ServiceConfig) {
            $(
                cfg.service(
                    web::resource($path)
                        $(.route(web::$method().to($handler)))+
                        .default_service(web::to(method_not_allowed)),
                );
            )+
        }
    };
}

api_routes! {
    "/" => [get => status::page],
    "/api/status/history" => [get => status::history],
    "/metrics" => [get => metrics::metrics],
    "/api/openapi.json" => [get => openapi::openapi_json],
    "/api/events" => [post => events::append],
    "/api/health" => [get => health::health],
    "/api/stats/dashboard" => [get => health::dashboard],
    "/api/backups" => [get => backups::list, post => backups::create],
    "/api/corruptions" => [get => corruptions::list],
    "/api/corruptions/{id}" => [get => corruptions::get, delete => corruptions::delete],
    "/api/corruptions/{id}/history" => [get => corruptions::history],
    "/api/jobs" => [get => jobs::list],
    "/api/jobs/{name}/runs" => [get => jobs::runs],
    "/api/jobs/{name}/run" => [post => jobs::run],
    "/api/summary/repair" => [post => summary::repair],
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
    let (limit_rate, rate_limit) = limits::rate_limit(&state.settings.api)?;
    let state = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(from_fn(auth::require_token))
            .wrap(Condition::new(limit_rate, Governor::new(&rate_limit)))
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

//! The bodies the API answers with (and the event it accepts), as types: handlers
//! serialize these, and the OpenAPI document is generated from the same definitions.

use serde::Serialize;
use utoipa::ToSchema;

use crate::backup::catalog::Manifest;
use crate::db::queries::{CorruptionSummary, StoredEvent};
use crate::jobs::registry::JobInfo;
use crate::jobs::JobRun;

/// Every error: `{"error": {"code", "message", "field"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `bad_request`, `not_found`, `rate_limited`.
    pub code: String,
    pub message: String,
    /// The request field at fault, e.g. `events[3].aggregate_id` or `limit`.
    pub field: Option<String>,
}

/// One event to append (`POST /api/events` takes one or an array of them). Unknown
/// fields are refused.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)] // Parsed by hand in `events::parse_body`; this type documents it.
pub struct NewEventBody {
    /// 1 to 256 bytes.
    #[schema(min_length = 1, max_length = 256)]
    pub aggregate_type: String,
    /// 1 to 256 bytes.
    #[schema(min_length = 1, max_length = 256)]
    pub aggregate_id: String,
    /// 1 to 256 bytes.
    #[schema(min_length = 1, max_length = 256)]
    pub event_type: String,
    /// Any JSON value, `null` included; required.
    pub event_data: serde_json::Value,
    /// Default 1.
    pub event_version: Option<i64>,
    /// RFC 3339; default now.
    pub created_at: Option<String>,
    /// A UUID: appending the same id again writes nothing and answers the first row id.
    pub id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Appended {
    /// Row ids of the events, in request order; answered after the durable commit.
    pub ids: Vec<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CorruptionPage {
    pub items: Vec<CorruptionSummary>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryPage {
    pub events: Vec<StoredEvent>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    pub corruption_id: String,
    pub deleted_events: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BackupList {
    pub backups: Vec<Manifest>,
}

/// A job with its last run (null before the first).
#[derive(Debug, Serialize, ToSchema)]
pub struct JobEntry {
    #[serde(flatten)]
    pub info: JobInfo,
    pub last_run: Option<JobRun>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobEntry>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobRuns {
    pub job: String,
    pub runs: Vec<JobRun>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobStarted {
    pub job: String,
    pub started: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatusHistory {
    /// Checkpoint results: at, mode, busy, log_frames, checkpointed_frames,
    /// pending_bytes, over_threshold, starved.
    #[schema(value_type = Vec<Object>)]
    pub checkpoints: Vec<serde_json::Value>,
    /// Alerts and resolutions: key, severity, message, details, resolved, at.
    #[schema(value_type = Vec<Object>)]
    pub alerts: Vec<serde_json::Value>,
    /// Per streaming replica, the worst replication lag of each minute of the last
    /// 24 h: replica, points (at, seconds, bytes). Empty when nothing streams.
    #[schema(value_type = Vec<Object>)]
    pub replication_lag: Vec<serde_json::Value>,
}

//! `/api/corruptions`: list, one, history and delete, all from the summary table.
//!
//! Lists are ordered by `corruption_id` with keyset pagination: `next_cursor` is an
//! opaque token for the last row returned, so pages stay stable while rows change.
//! `status` takes a bucket name, `active` (every state outside resolved, orphaned and
//! ignored, as Healarr counts), `other` (states in no bucket), `all` (the default),
//! or an exact state such as `DownloadFailed`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use actix_web::{web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::error::ApiError;
use super::schema::{CorruptionPage, Deleted, HistoryPage};
use super::AppState;
use crate::db::queries::CorruptionSummary;
use crate::db::queries::{self, StatusFilter, BUCKETS};
use crate::events::MAX_NAME_BYTES;

const DEFAULT_LIMIT: u32 = 50;

/// Parses the query string, refusing unknown and repeated parameters by name.
pub(super) fn query_params(
    req: &HttpRequest,
    allowed: &[&str],
) -> Result<HashMap<String, String>, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(req.query_string())
        .map_err(|e| ApiError::bad("query", format!("is not a valid query string ({e})")))?;
    let mut out = HashMap::new();
    for (k, v) in pairs {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::bad(
                k.clone(),
                format!("is not a known parameter (known: {})", allowed.join(", ")),
            ));
        }
        if out.insert(k.clone(), v).is_some() {
            return Err(ApiError::bad(k, "is given more than once"));
        }
    }
    Ok(out)
}

pub(super) fn parse_limit(params: &HashMap<String, String>, max: u32) -> Result<u32, ApiError> {
    match params.get("limit") {
        None => Ok(DEFAULT_LIMIT.min(max)),
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad(
                "limit",
                format!("must be a whole number from 1 to {max}"),
            )),
        },
    }
}

fn parse_status(value: Option<&String>) -> Result<StatusFilter, ApiError> {
    let Some(v) = value else {
        return Ok(StatusFilter::All);
    };
    Ok(match v.as_str() {
        "all" => StatusFilter::All,
        "active" => StatusFilter::Active,
        "other" => StatusFilter::Other,
        b if BUCKETS.contains(&b) => StatusFilter::Bucket(b.to_string()),
        s if !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric()) => {
            StatusFilter::State(s.to_string())
        }
        _ => {
            return Err(ApiError::bad(
                "status",
                format!(
                    "must be all, active, other, a bucket ({}) or a state name like DownloadFailed",
                    BUCKETS.join(", ")
                ),
            ))
        }
    })
}

fn encode_cursor(last: &str) -> String {
    URL_SAFE_NO_PAD.encode(last.as_bytes())
}

fn decode_cursor(cursor: &str) -> Result<String, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor.as_bytes())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad("cursor", "is not a cursor this API returned"))
}

fn check_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > MAX_NAME_BYTES || id.chars().any(char::is_control) {
        return Err(ApiError::bad(
            "id",
            format!("must be 1 to {MAX_NAME_BYTES} bytes without control characters"),
        ));
    }
    Ok(())
}

#[utoipa::path(
    get,
    path = "/api/corruptions",
    tag = "corruptions",
    params(
        ("status" = Option<String>, Query, description = "A bucket, `active`, `other`, `all` (default) or a state name"),
        ("path_id" = Option<i64>, Query, description = "Only this scan path"),
        ("limit" = Option<u32>, Query, description = "1 to `api.max_page_size` (default 50)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")
    ),
    responses((status = 200, description = "Summary rows by corruption_id", body = CorruptionPage))
)]
pub async fn list(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let params = query_params(&req, &["status", "path_id", "limit", "cursor"])?;
    let limit = parse_limit(&params, state.settings.api.max_page_size)?;
    let status = parse_status(params.get("status"))?;
    let path_id = params
        .get("path_id")
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| ApiError::bad("path_id", "must be a whole number"))
        })
        .transpose()?;
    let after = params.get("cursor").map(|c| decode_cursor(c)).transpose()?;
    let items = state
        .readers
        .run(move |conn| queries::list_corruptions(conn, &status, path_id, after.as_deref(), limit))
        .await?;
    let next_cursor = (items.len() == limit as usize)
        .then(|| items.last().map(|s| encode_cursor(&s.corruption_id)))
        .flatten();
    Ok(HttpResponse::Ok().json(CorruptionPage { items, next_cursor }))
}

#[utoipa::path(
    get,
    path = "/api/corruptions/{id}",
    tag = "corruptions",
    params(("id" = String, Path, description = "corruption_id")),
    responses((status = 200, description = "One summary row", body = CorruptionSummary))
)]
pub async fn get(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    check_id(&id)?;
    let lookup = id.clone();
    let row = state
        .readers
        .run(move |conn| queries::get_corruption(conn, &lookup))
        .await?;
    match row {
        Some(row) => Ok(HttpResponse::Ok().json(row)),
        None => Err(ApiError::NotFound(format!("corruption {id}"))),
    }
}

#[utoipa::path(
    get,
    path = "/api/corruptions/{id}/history",
    tag = "corruptions",
    params(
        ("id" = String, Path, description = "corruption_id"),
        ("limit" = Option<u32>, Query, description = "1 to `api.max_page_size` (default 50)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")
    ),
    responses((status = 200, description = "The aggregate's events in id order", body = HistoryPage))
)]
pub async fn history(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    check_id(&id)?;
    let params = query_params(&req, &["limit", "cursor"])?;
    let limit = parse_limit(&params, state.settings.api.max_page_size)?;
    let after = match params.get("cursor") {
        None => 0,
        Some(c) => decode_cursor(c)?
            .parse::<i64>()
            .map_err(|_| ApiError::bad("cursor", "is not a cursor this API returned"))?,
    };
    let lookup = id.clone();
    let events = state
        .readers
        .run(move |conn| queries::corruption_history(conn, &lookup, after, limit))
        .await?;
    if events.is_empty() && after == 0 {
        return Err(ApiError::NotFound(format!("corruption {id}")));
    }
    let next_cursor = (events.len() == limit as usize)
        .then(|| events.last().map(|e| encode_cursor(&e.id.to_string())))
        .flatten();
    Ok(HttpResponse::Ok().json(HistoryPage {
        events,
        next_cursor,
    }))
}

#[utoipa::path(
    delete,
    path = "/api/corruptions/{id}",
    tag = "corruptions",
    params(("id" = String, Path, description = "corruption_id")),
    responses((status = 200, description = "Its events were deleted; the summary followed", body = Deleted))
)]
pub async fn delete(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    if !state.accepting.load(Ordering::Acquire) {
        return Err(ApiError::ShuttingDown);
    }
    let id = path.into_inner();
    check_id(&id)?;
    let deleted = state.writer.delete_corruption(id.clone()).await?;
    if deleted == 0 {
        return Err(ApiError::NotFound(format!("corruption {id}")));
    }
    Ok(HttpResponse::Ok().json(Deleted {
        corruption_id: id,
        deleted_events: deleted,
    }))
}

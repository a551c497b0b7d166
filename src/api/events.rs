//! `POST /api/events`: one event or an array, answered with row ids after COMMIT.

use std::sync::atomic::Ordering;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use super::error::ApiError;
use super::schema::Appended;
use super::schema::NewEventBody;
use super::AppState;
use crate::events::parse_body;

pub(super) fn require_json(req: &HttpRequest) -> Result<(), ApiError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        })
        .unwrap_or(false);
    if is_json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

pub(super) async fn read_body(payload: web::Payload, limit: usize) -> Result<web::Bytes, ApiError> {
    match payload.to_bytes_limited(limit).await {
        Err(_) => Err(ApiError::PayloadTooLarge { limit }),
        Ok(Err(e)) => Err(ApiError::bad("body", format!("could not be read: {e}"))),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

#[utoipa::path(
    post,
    path = "/api/events",
    tag = "events",
    request_body(content = Vec<NewEventBody>, description = "One event object or an array of them (at most `api.max_batch_events`)"),
    responses((status = 201, description = "Committed with synchronous=FULL", body = Appended))
)]
pub async fn append(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    if !state.accepting.load(Ordering::Acquire) {
        return Err(ApiError::ShuttingDown);
    }
    require_json(&req)?;
    let body = read_body(payload, state.settings.api.max_body_bytes).await?;
    let events = parse_body(&body, state.settings.api.max_batch_events)?;
    let ids = state.writer.append(events).await?;
    Ok(HttpResponse::Created().json(Appended { ids }))
}

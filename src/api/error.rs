//! Every error the API returns is `{"error": {"code", "message", "field"}}` with a
//! status that says whose mistake it was: 4xx for the client's, 5xx only for ours.

use actix_web::dev::ServiceResponse;
use actix_web::http::{header, StatusCode};
use actix_web::middleware::ErrorHandlerResponse;
use actix_web::{HttpResponse, ResponseError};

use crate::db::DbError;
use crate::events::FieldError;
use crate::writer::WriteError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest {
        field: Option<String>,
        message: String,
    },
    #[error("authentication required: send `Authorization: Bearer <token>`")]
    Unauthorized,
    #[error("{0} not found")]
    NotFound(String),
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("request headers are larger than {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("the service is busy; retry shortly")]
    Busy,
    #[error("the service is shutting down")]
    ShuttingDown,
    #[error("the disk is full; the write was not stored")]
    InsufficientStorage,
    /// An `ack_writes` replica did not take the commit (503, `Retry-After`).
    #[error("{0}")]
    NotReplicated(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. } => "bad_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::HeadersTooLarge { .. } => "request_header_fields_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::Conflict(_) => "conflict",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Busy => "busy",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::InsufficientStorage => "insufficient_storage",
            ApiError::NotReplicated(_) => "not_replicated",
            ApiError::Internal(_) => "internal",
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            ApiError::BadRequest { field, .. } => field.as_deref(),
            _ => None,
        }
    }
}

pub fn error_body(code: &str, message: &str, field: Option<&str>) -> super::schema::ErrorBody {
    super::schema::ErrorBody {
        error: super::schema::ErrorDetail {
            code: code.to_string(),
            message: message.to_string(),
            field: field.map(str::to_string),
        },
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Busy
            | ApiError::ShuttingDown
            | ApiError::Unavailable(_)
            | ApiError::NotReplicated(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        match self {
            ApiError::Busy | ApiError::ShuttingDown | ApiError::InsufficientStorage => {
                res.insert_header((header::RETRY_AFTER, "1"));
            }
            ApiError::NotReplicated(_) => {
                res.insert_header((header::RETRY_AFTER, "5"));
            }
            ApiError::Unauthorized => {
                res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            _ => {}
        }
        if let ApiError::Internal(detail) = self {
            tracing::error!(error = %detail, "internal error answering a request");
        }
        res.json(error_body(self.code(), &self.to_string(), self.field()))
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> ApiError {
        ApiError::BadRequest {
            message: format!("{} {}", e.field, e.reason),
            field: Some(e.field),
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> ApiError {
        match e {
            WriteError::Rejected(reason) => ApiError::BadRequest {
                field: None,
                message: reason,
            },
            WriteError::Busy => ApiError::Busy,
            WriteError::DiskFull(_) => ApiError::InsufficientStorage,
            WriteError::Unavailable => ApiError::ShuttingDown,
            WriteError::Storage(detail) => ApiError::Internal(detail.to_string()),
            e @ WriteError::NotReplicated { .. } => ApiError::NotReplicated(e.to_string()),
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> ApiError {
        ApiError::Internal(e.to_string())
    }
}

/// Rewrites any error response that is not JSON yet (actix's own 404s, 405s, extractor
/// errors) into the API's error shape, keeping its status.
pub fn json_error_fallback<B>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = res
        .response()
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let (req, _) = res.into_parts();
    let (code, message) = match status {
        StatusCode::NOT_FOUND => ("not_found", "no such route".to_string()),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "method not allowed on this route".to_string(),
        ),
        s => (
            if s.is_client_error() {
                "bad_request"
            } else {
                "internal"
            },
            s.canonical_reason().unwrap_or("error").to_string(),
        ),
    };
    let response = HttpResponse::build(status).json(error_body(code, &message, None));
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, response).map_into_right_body::<B>(),
    ))
}

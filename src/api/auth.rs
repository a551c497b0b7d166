//! Token authentication: when `api.token` is set, every request except `GET /` (the
//! status page), `GET /api/health` (and `GET /metrics` with `metrics.public = true`)
//! needs `Authorization: Bearer <token>` or, as Healarr's clients send their key,
//! `X-Api-Key: <token>`.
//!
//! Both sides are hashed before the constant-time comparison, so neither the content
//! nor the length of the token leaks through timing.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::Next;
use actix_web::web;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;

pub fn token_matches(expected: &str, presented: &str) -> bool {
    let a = Sha256::digest(expected.as_bytes());
    let b = Sha256::digest(presented.as_bytes());
    a.ct_eq(&b).into()
}

/// The header Healarr's API clients send their key in.
pub const API_KEY_HEADER: &str = "x-api-key";

/// The token of an `Authorization: Bearer <token>` value. The scheme is
/// case-insensitive, as every HTTP authentication scheme is (RFC 9110, 11.1).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

pub async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let settings = req
        .app_data::<web::Data<AppState>>()
        .map(|s| (s.settings.api.token.clone(), s.settings.metrics.public));
    if let Some((Some(expected), metrics_public)) = settings {
        let open = req.method() == Method::GET
            && (matches!(req.path(), "/" | "/api/health")
                || (metrics_public && req.path() == "/metrics"));
        if !open {
            let headers = req.headers();
            let presented = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer_token)
                .or_else(|| {
                    headers
                        .get(API_KEY_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                });
            match presented {
                Some(p) if token_matches(&expected, p) => {}
                _ => return Err(ApiError::Unauthorized.into()),
            }
        }
    }
    next.call(req).await
}

#[cfg(test)]
mod tests {
    use super::{bearer_token, token_matches};

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in ["Bearer abc", "bearer abc", "BEARER  abc ", "bEaReR abc"] {
            assert_eq!(bearer_token(value), Some("abc"), "{value}");
        }
        for value in ["Basic abc", "Bearer", "Bearer ", "Bearerabc", ""] {
            assert_eq!(bearer_token(value), None, "{value}");
        }
    }

    #[test]
    fn compares_tokens() {
        assert!(token_matches("s3cret", "s3cret"));
        assert!(!token_matches("s3cret", "s3cre"));
        assert!(!token_matches("s3cret", ""));
    }
}

//! Limits that hold under a flood from one client: the size of a request's headers
//! (bodies are bounded by `api.max_body_bytes` where they are read) and the request
//! rate per client address (`api.rate_limit_per_second`, `api.rate_limit_burst`; a token
//! bucket from `actix-governor`). Refusals are JSON errors like every other.
//!
//! The rate is counted per peer IP address (IPv6 per /56, as providers hand them out),
//! so behind a reverse proxy every client shares the proxy's bucket: raise the limit
//! there, or set it to 0 to leave limiting to the proxy.

use actix_governor::governor::clock::{Clock, DefaultClock, QuantaInstant};
use actix_governor::governor::middleware::NoOpMiddleware;
use actix_governor::governor::NotUntil;
use actix_governor::{
    GovernorConfig, GovernorConfigBuilder, KeyExtractor, PeerIpKeyExtractor,
    SimpleKeyExtractionError,
};
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{HttpResponse, HttpResponseBuilder};

use super::error::{error_body, ApiError};
use crate::config::ApiSettings;

/// Largest total size of a request's headers the API serves, in bytes. Larger ones get
/// a JSON 431 here; headers beyond what the HTTP parser itself buffers (far more) get
/// its bare 431 before any route runs.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Refuses requests whose headers add up to more than [`MAX_HEADER_BYTES`].
pub async fn limit_headers(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let size: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if size > MAX_HEADER_BYTES {
        return Err(ApiError::HeadersTooLarge {
            limit: MAX_HEADER_BYTES,
        }
        .into());
    }
    next.call(req).await
}

/// Keys requests by peer address, like actix-governor's own extractor, and answers
/// an exhausted bucket with a JSON 429 and `Retry-After`.
#[derive(Clone)]
pub struct ClientAddress;

impl KeyExtractor for ClientAddress {
    type Key = <PeerIpKeyExtractor as KeyExtractor>::Key;
    type KeyExtractionError = SimpleKeyExtractionError<&'static str>;

    fn extract(&self, req: &ServiceRequest) -> Result<Self::Key, Self::KeyExtractionError> {
        PeerIpKeyExtractor.extract(req)
    }

    fn exceed_rate_limit_response(
        &self,
        negative: &NotUntil<QuantaInstant>,
        mut response: HttpResponseBuilder,
    ) -> HttpResponse {
        let wait = negative.wait_time_from(DefaultClock::default().now());
        let retry_after = wait.as_secs().max(1);
        response
            .insert_header((header::RETRY_AFTER, retry_after.to_string()))
            .json(error_body(
                "rate_limited",
                &format!("too many requests from this address; retry in {retry_after} s"),
                None,
            ))
    }
}

/// Whether to limit (`api.rate_limit_per_second` above 0), and the limiter's
/// configuration (built either way: actix's `Condition` wants the middleware).
pub fn rate_limit(
    settings: &ApiSettings,
) -> std::io::Result<(bool, GovernorConfig<ClientAddress, NoOpMiddleware>)> {
    let config = GovernorConfigBuilder::default()
        .requests_per_second(settings.rate_limit_per_second.max(1))
        .burst_size(settings.rate_limit_burst)
        .key_extractor(ClientAddress)
        .finish()
        .ok_or_else(|| std::io::Error::other("api.rate_limit_burst must be at least 1"))?;
    Ok((settings.rate_limit_per_second > 0, config))
}

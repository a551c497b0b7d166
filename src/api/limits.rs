//! Limits that hold under a flood from one client: the size of a request's headers
//! (bodies are bounded by `api.max_body_bytes` where they are read) and the request
//! rate per client address (`api.rate_limit_per_second`, `api.rate_limit_burst`; a token
//! bucket from `actix-governor`). Refusals are JSON errors like every other.
//!
//! The rate is counted per peer IP address (IPv6 per /56, as providers hand them out),
//! so behind a reverse proxy every client shares the proxy's bucket: raise the limit
//! there, or set it to 0 to leave limiting to the proxy.
//!
//! Two choices keep the limiter from starving the people it protects:
//! - Loopback clients are not limited unless `api.rate_limit_loopback = true`: on one
//!   host every client (Healarr, scripts, `dbwarden` itself) shares 127.0.0.1, so a
//!   per-address limit would mostly throttle the service's own users. The limit is for
//!   listeners reachable from elsewhere.
//! - Operations (`POST /api/backups`, `POST /api/jobs/{name}/run`,
//!   `POST /api/summary/repair`) have a bucket of their own per address, so event
//!   traffic can never use up the budget an operator needs.

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

/// Which budget a request draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Budget {
    /// Events, reads, everything else.
    Traffic,
    /// Backups, job runs and repairs: an operator's requests.
    Operations,
}

impl Budget {
    pub fn of(req: &ServiceRequest) -> Budget {
        let path = req.path();
        let operation = req.method() == actix_web::http::Method::POST
            && (path == "/api/backups"
                || path == "/api/summary/repair"
                || (path.starts_with("/api/jobs/") && path.ends_with("/run")));
        if operation {
            Budget::Operations
        } else {
            Budget::Traffic
        }
    }
}

/// Every loopback address counts as this one.
const LOOPBACK: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// Keys requests by peer address (like actix-governor's own extractor) and budget,
/// exempts loopback clients unless told otherwise, and answers an exhausted bucket
/// with a JSON 429 and `Retry-After`.
#[derive(Clone)]
pub struct ClientAddress {
    limit_loopback: bool,
}

impl KeyExtractor for ClientAddress {
    type Key = (std::net::IpAddr, Budget);
    type KeyExtractionError = SimpleKeyExtractionError<&'static str>;

    fn extract(&self, req: &ServiceRequest) -> Result<Self::Key, Self::KeyExtractionError> {
        let ip = PeerIpKeyExtractor.extract(req)?;
        let loopback = req.peer_addr().is_some_and(|a| a.ip().is_loopback());
        Ok((if loopback { LOOPBACK } else { ip }, Budget::of(req)))
    }

    fn whitelisted_keys(&self) -> Vec<Self::Key> {
        if self.limit_loopback {
            Vec::new()
        } else {
            vec![(LOOPBACK, Budget::Traffic), (LOOPBACK, Budget::Operations)]
        }
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
        .key_extractor(ClientAddress {
            limit_loopback: settings.rate_limit_loopback,
        })
        .finish()
        .ok_or_else(|| std::io::Error::other("api.rate_limit_burst must be at least 1"))?;
    Ok((settings.rate_limit_per_second > 0, config))
}

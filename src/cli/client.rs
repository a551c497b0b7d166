//! Talking to a running service from the command line (`dbwarden status`,
//! `dbwarden jobs run`, `backup` and `check --repair` while the service holds the
//! database): its address is `api.listen` (loopback when that is a wildcard address)
//! and `api.token` is sent.
//!
//! Every request is bounded: connecting takes at most [`CONNECT_TIMEOUT`], and the
//! whole answer at most the client's timeout ([`DEFAULT_TIMEOUT`] unless the caller
//! sets one that fits the work asked for), so a stuck service never hangs the command.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use dbwarden::config::Settings;

/// Longest wait for a connection to the service.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a quick answer (health, status).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no dbwarden service answers at {addr}: {reason}")]
    Unreachable { addr: SocketAddr, reason: String },
    #[error("the service at {addr} did not answer within {} s", .after.as_secs_f64())]
    TimedOut { addr: SocketAddr, after: Duration },
    #[error("the service at {addr} answered HTTP {status}: {message}")]
    Refused {
        addr: SocketAddr,
        status: u16,
        message: String,
    },
}

pub struct ServiceClient {
    addr: SocketAddr,
    token: Option<String>,
    http: reqwest::Client,
    timeout: Duration,
}

impl ServiceClient {
    pub fn new(settings: &Settings) -> ServiceClient {
        let mut addr = settings.listen_addr();
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .unwrap_or_default();
        ServiceClient {
            addr,
            token: settings.api.token.clone(),
            http,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Bounds every request of this client by `timeout` (the work it asks for may
    /// take longer than a health answer).
    pub fn with_timeout(mut self, timeout: Duration) -> ServiceClient {
        self.timeout = timeout;
        self
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn url(&self, segments: &[&str], query: Option<&str>) -> Result<reqwest::Url, ClientError> {
        let mut url = reqwest::Url::parse(&format!("http://{}/", self.addr)).map_err(|e| {
            ClientError::Unreachable {
                addr: self.addr,
                reason: e.to_string(),
            }
        })?;
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url.set_query(query);
        Ok(url)
    }

    /// Sends a request; answers with the status and the JSON body.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<(u16, Value), ClientError> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
        .timeout(self.timeout);
        let unreachable = |e: reqwest::Error| {
            if e.is_timeout() && !e.is_connect() {
                ClientError::TimedOut {
                    addr: self.addr,
                    after: self.timeout,
                }
            } else {
                ClientError::Unreachable {
                    addr: self.addr,
                    reason: e.to_string(),
                }
            }
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.map_err(unreachable)?;
        Ok((status, body))
    }

    /// GET; any answer with a JSON body is returned, whatever its status.
    pub async fn get(&self, segments: &[&str]) -> Result<(u16, Value), ClientError> {
        let url = self.url(segments, None)?;
        self.send(self.http.get(url)).await
    }

    /// POST; a non-2xx answer is an error carrying the service's message.
    pub async fn post(&self, segments: &[&str], query: Option<&str>) -> Result<Value, ClientError> {
        let url = self.url(segments, query)?;
        let (status, body) = self.send(self.http.post(url)).await?;
        if !(200..300).contains(&status) {
            return Err(ClientError::Refused {
                addr: self.addr,
                status,
                message: body["error"]["message"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| body.to_string()),
            });
        }
        Ok(body)
    }
}

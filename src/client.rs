//! Talking to a running service from the command line (`dbwarden status`,
//! `dbwarden jobs run` while the service holds the database): its address is
//! `api.listen` (loopback when that is a wildcard address) and `api.token` is sent.

use std::net::SocketAddr;

use serde_json::Value;

use crate::config::Settings;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no dbwarden service answers at {addr}: {reason}")]
    Unreachable { addr: SocketAddr, reason: String },
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
}

impl ServiceClient {
    pub fn new(settings: &Settings) -> ServiceClient {
        let mut addr = settings.listen_addr();
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        ServiceClient {
            addr,
            token: settings.api.token.clone(),
            http: reqwest::Client::new(),
        }
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
        };
        let unreachable = |e: reqwest::Error| ClientError::Unreachable {
            addr: self.addr,
            reason: e.to_string(),
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

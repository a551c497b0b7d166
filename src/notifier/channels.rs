//! How each channel type formats and sends an alert. One request per alert; the
//! retry loop lives in the notifier, not here.

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use super::{Alert, Severity};
use crate::config::ChannelSettings;

/// Header carrying `sha256=<hex HMAC of the body>` on generic webhooks with a secret.
pub const SIGNATURE_HEADER: &str = "X-Dbwarden-Signature";

pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn title(alert: &Alert) -> String {
    let state = if alert.resolved {
        "RESOLVED"
    } else {
        alert.severity.label()
    };
    format!("[dbwarden {state}] {}", alert.key)
}

fn text(alert: &Alert) -> String {
    format!("{}: {}", title(alert), alert.message)
}

/// The generic JSON document: everything an alert carries.
pub fn alert_json(alert: &Alert) -> Value {
    json!({
        "key": alert.key,
        "severity": alert.severity,
        "message": alert.message,
        "details": alert.details,
        "resolved": alert.resolved,
        "at": alert.at,
        "service": "dbwarden",
    })
}

/// Builds the request for one channel.
pub fn request(
    client: &reqwest::Client,
    channel: &ChannelSettings,
    alert: &Alert,
) -> reqwest::RequestBuilder {
    match channel {
        ChannelSettings::Webhook { url, secret } => {
            let body = alert_json(alert).to_string();
            let mut req = client.post(url).header("content-type", "application/json");
            if let Some(secret) = secret {
                req = req.header(SIGNATURE_HEADER, signature(secret, body.as_bytes()));
            }
            req.body(body)
        }
        ChannelSettings::Ntfy { url, token } => {
            let priority = match alert.severity {
                Severity::Critical if !alert.resolved => "5",
                Severity::Warning if !alert.resolved => "4",
                _ => "3",
            };
            let mut req = client
                .post(url)
                .header("Title", title(alert))
                .header("Priority", priority)
                .header(
                    "Tags",
                    if alert.resolved {
                        "white_check_mark"
                    } else {
                        "warning"
                    },
                );
            if let Some(token) = token {
                req = req.bearer_auth(token);
            }
            req.body(alert.message.clone())
        }
        ChannelSettings::Discord { url } => {
            client.post(url).json(&json!({ "content": text(alert) }))
        }
        ChannelSettings::Slack { url } => client.post(url).json(&json!({ "text": text(alert) })),
        ChannelSettings::Gotify { url, token } => {
            let priority = match alert.severity {
                Severity::Critical if !alert.resolved => 8,
                Severity::Warning if !alert.resolved => 5,
                _ => 2,
            };
            client
                .post(format!("{}/message", url.trim_end_matches('/')))
                .header("X-Gotify-Key", token)
                .json(&json!({ "title": title(alert), "message": alert.message, "priority": priority }))
        }
        ChannelSettings::Heartbeat { url } => client.get(url),
        ChannelSettings::Apprise { url, urls, tag } => {
            let kind = match alert.severity {
                _ if alert.resolved => "success",
                Severity::Critical => "failure",
                Severity::Warning => "warning",
                Severity::Info => "info",
            };
            let mut body = json!({ "title": title(alert), "body": alert.message, "type": kind });
            if let Some(urls) = urls {
                body["urls"] = json!(urls);
            }
            if let Some(tag) = tag {
                body["tag"] = json!(tag);
            }
            client.post(url).json(&body)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::signature;

    #[test]
    fn signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}

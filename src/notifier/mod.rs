//! The Notifier: alerts to any number of channels at once.
//!
//! An alert has a key, a severity, a message and details. The same key is not sent
//! again within `notify.cooldown_secs`; when the condition clears, a "resolved" notice
//! follows (only for keys that were alerted). The `log` channel is always on.
//!
//! Every channel has its own task and its own bounded queue: a slow or dead channel
//! never delays the writer, the other actors or the other channels. Delivery has a
//! timeout and retries with exponential backoff; what a full queue drops is logged and
//! counted. The dead-man heartbeat is pinged after each successful backup instead.

pub mod channels;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::config::{ChannelSettings, NotifySettings};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn label(self) -> &'static str {
        match self {
            Severity::Info => "INFO",
            Severity::Warning => "WARNING",
            Severity::Critical => "CRITICAL",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub key: String,
    pub severity: Severity,
    pub message: String,
    pub details: Value,
    pub resolved: bool,
    pub at: DateTime<Utc>,
}

/// Counters per channel: sent, failed (after every retry), dropped (queue full).
#[derive(Debug, Default)]
pub struct ChannelStats {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
}

struct Channel {
    name: String,
    queue: mpsc::Sender<Alert>,
    stats: Arc<ChannelStats>,
    heartbeat: bool,
}

#[derive(Default)]
struct KeyState {
    last_sent: Option<Instant>,
    open: bool,
}

/// The cheap, cloneable way to raise and resolve alerts.
#[derive(Clone)]
pub struct Notifier {
    channels: Arc<Vec<Channel>>,
    keys: Arc<Mutex<HashMap<String, KeyState>>>,
    cooldown: Duration,
    /// The last [`RECENT`] alerts and resolutions raised (sent or held back by the
    /// cooldown), newest last, for the status page.
    recent: Arc<Mutex<std::collections::VecDeque<Alert>>>,
}

const RECENT: usize = 50;

impl Notifier {
    /// Starts one delivery task per configured channel on the current runtime.
    pub fn start(settings: &NotifySettings) -> Notifier {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(settings.timeout_secs))
            .user_agent(concat!("dbwarden/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        let mut channels = Vec::new();
        for (i, channel) in settings.channels.iter().enumerate() {
            let (tx, rx) = mpsc::channel(settings.queue_capacity);
            let stats = Arc::new(ChannelStats::default());
            let name = format!("{}[{i}]", channel.kind());
            tokio::spawn(deliver(
                name.clone(),
                channel.clone(),
                client.clone(),
                rx,
                stats.clone(),
                settings.retries,
            ));
            channels.push(Channel {
                name,
                queue: tx,
                stats,
                heartbeat: matches!(channel, ChannelSettings::Heartbeat { .. }),
            });
        }
        Notifier {
            channels: Arc::new(channels),
            keys: Arc::default(),
            cooldown: Duration::from_secs(settings.cooldown_secs),
            recent: Arc::default(),
        }
    }

    /// A notifier with only the log channel (CLI commands, tests).
    pub fn log_only() -> Notifier {
        Notifier {
            channels: Arc::new(Vec::new()),
            keys: Arc::default(),
            cooldown: Duration::from_secs(3600),
            recent: Arc::default(),
        }
    }

    /// Raises an alert, unless the same key was sent within the cooldown. Info alerts
    /// (startup, shutdown) are never held back.
    pub fn alert(&self, key: &str, severity: Severity, message: impl Into<String>, details: Value) {
        let message = message.into();
        let send = match self.keys.lock() {
            Ok(mut keys) => {
                let state = keys.entry(key.to_string()).or_default();
                let cooled = state.last_sent.is_none_or(|t| t.elapsed() >= self.cooldown);
                if severity != Severity::Info {
                    state.open = true;
                }
                if cooled || severity == Severity::Info {
                    state.last_sent = Some(Instant::now());
                    true
                } else {
                    false
                }
            }
            Err(_) => true,
        };
        log_alert(key, severity, &message, false);
        let alert = Alert {
            key: key.to_string(),
            severity,
            message,
            details,
            resolved: false,
            at: Utc::now(),
        };
        self.remember(&alert);
        if send {
            self.fan_out(alert);
        }
    }

    /// The condition behind `key` cleared: sends a "resolved" notice if it had been
    /// alerted, and resets its cooldown.
    pub fn resolve(&self, key: &str, message: impl Into<String>) {
        let was_open = match self.keys.lock() {
            Ok(mut keys) => keys.remove(key).is_some_and(|s| s.open),
            Err(_) => false,
        };
        if was_open {
            let message = message.into();
            log_alert(key, Severity::Info, &message, true);
            let alert = Alert {
                key: key.to_string(),
                severity: Severity::Info,
                message,
                details: Value::Null,
                resolved: true,
                at: Utc::now(),
            };
            self.remember(&alert);
            self.fan_out(alert);
        }
    }

    /// Pings the dead-man heartbeat channels (after a successful backup).
    pub fn heartbeat(&self) {
        let beat = Alert {
            key: "heartbeat".into(),
            severity: Severity::Info,
            message: "backup verified".into(),
            details: Value::Null,
            resolved: false,
            at: Utc::now(),
        };
        for channel in self.channels.iter().filter(|c| c.heartbeat) {
            enqueue(channel, beat.clone());
        }
    }

    /// The latest alerts and resolutions, oldest first.
    pub fn recent(&self) -> Vec<Alert> {
        self.recent
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn remember(&self, alert: &Alert) {
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() >= RECENT {
                recent.pop_front();
            }
            recent.push_back(alert.clone());
        }
    }

    fn fan_out(&self, alert: Alert) {
        for channel in self.channels.iter().filter(|c| !c.heartbeat) {
            enqueue(channel, alert.clone());
        }
    }

    /// Sent / failed / dropped per channel.
    pub fn stats(&self) -> Vec<(String, Arc<ChannelStats>)> {
        self.channels
            .iter()
            .map(|c| (c.name.clone(), c.stats.clone()))
            .collect()
    }

    /// Waits up to `bound` for every queue to drain (at shutdown).
    pub async fn flush(&self, bound: Duration) {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline
            && self
                .channels
                .iter()
                .any(|c| c.queue.capacity() < c.queue.max_capacity())
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn enqueue(channel: &Channel, alert: Alert) {
    if channel.queue.try_send(alert).is_err() {
        channel.stats.dropped.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(channel = %channel.name, "notification queue full; alert dropped");
    }
}

fn log_alert(key: &str, severity: Severity, message: &str, resolved: bool) {
    match (resolved, severity) {
        (true, _) => tracing::info!(alert = key, "RESOLVED: {message}"),
        (false, Severity::Critical) => tracing::error!(alert = key, "CRITICAL: {message}"),
        (false, Severity::Warning) => tracing::warn!(alert = key, "WARNING: {message}"),
        (false, Severity::Info) => tracing::info!(alert = key, "{message}"),
    }
}

/// One channel's delivery loop: a request per alert, retried with backoff.
async fn deliver(
    name: String,
    channel: ChannelSettings,
    client: reqwest::Client,
    mut queue: mpsc::Receiver<Alert>,
    stats: Arc<ChannelStats>,
    retries: u32,
) {
    while let Some(alert) = queue.recv().await {
        let mut attempt = 0;
        loop {
            let outcome = channels::request(&client, &channel, &alert).send().await;
            match outcome {
                Ok(res) if res.status().is_success() => {
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                other => {
                    let why = match other {
                        Ok(res) => format!("HTTP {}", res.status()),
                        Err(e) => e.to_string(),
                    };
                    if attempt >= retries {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(channel = %name, alert = %alert.key, error = %why, "notification failed after retries");
                        break;
                    }
                    let backoff = Duration::from_millis(250 * (1 << attempt.min(6)));
                    tracing::debug!(channel = %name, error = %why, ?backoff, "notification failed; retrying");
                    tokio::time::sleep(backoff).await;
                    attempt += 1;
                }
            }
        }
    }
}

//! Settings: embedded defaults → a distribution's defaults (`DBWARDEN_DEFAULTS`, the
//! container image's) → TOML file → `DBWARDEN__SECTION__KEY` environment.
//!
//! The repo's `config.toml` is compiled in as the defaults layer, so the documented
//! defaults and the real ones cannot drift apart. Every key a user gives is checked
//! against the known set before deserialising, so a typo is an error that names the
//! key and the layer it came from, not a silently ignored setting.
//!
//! Every secret setting (see [`SECRET_KEYS`]) may instead be given as `<key>_file`:
//! the path of a file that holds it, as Docker secrets and systemd credentials
//! provide them (`api.token_file`, `DBWARDEN__API__TOKEN_FILE`, a channel's
//! `secret_file` or `token_file`). The file's content, without its final newline,
//! becomes the value.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat, ValueKind};

use crate::cron::Schedule;
use serde::{Deserialize, Serialize};

mod replicas;
pub use replicas::{
    read_identities, CpuPriority, Encryption, ReplicaSettings, ReplicaTarget, ReplicaUrl,
};

/// The documented defaults, embedded at build time.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../config.toml");
/// Environment prefix: `DBWARDEN__DATABASE__PATH` sets `database.path`.
pub const ENV_PREFIX: &str = "DBWARDEN";
/// Config file read when `--config` is not given; skipped when it does not exist.
pub const DEFAULT_CONFIG_PATH: &str = "./config.toml";
/// Environment variable naming a TOML file of defaults that sits between the built-in
/// ones and the settings file (the container image sets it).
pub const DEFAULTS_ENV: &str = "DBWARDEN_DEFAULTS";
/// The value of the hidden `database.vfs` setting that selects the crash-simulating
/// VFS of the power-loss tests; refused by a build without it (every release build).
pub const CRASH_VFS: &str = "dbwarden-crash";
/// Names of the settings that hold secrets; `<name>_file` reads one from a file.
pub const SECRET_KEYS: &[&str] = &["token", "secret", "urls", "secret_access_key"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("unknown setting `{key}` (from {origin})")]
    UnknownKey { key: String, origin: String },
    #[error("setting `{key}` (from {origin}): {reason}")]
    Invalid {
        key: String,
        origin: String,
        reason: String,
    },
    #[error("{0}")]
    Load(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub writer: WriterSettings,
    pub backup: BackupSettings,
    pub checkpoint: CheckpointSettings,
    pub integrity: IntegritySettings,
    pub notify: NotifySettings,
    pub jobs: JobsSettings,
    pub api: ApiSettings,
    pub metrics: MetricsSettings,
    pub logging: LoggingSettings,
    /// Off-machine copies, one `[[replicas]]` table each (none by default).
    #[serde(default)]
    pub replicas: Vec<ReplicaSettings>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub path: PathBuf,
    pub busy_timeout_ms: u64,
    pub journal_size_limit_bytes: i64,
    pub wal_autocheckpoint_pages: u32,
    pub readers: usize,
    /// Hidden, for the power-loss tests only: `"dbwarden-crash"` opens every connection
    /// through the crash-simulating VFS (`db::crashvfs`). Unset: SQLite's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vfs: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriterSettings {
    pub mailbox_capacity: usize,
    pub max_batch_requests: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSettings {
    pub dir: PathBuf,
    pub schedule: Schedule,
    pub reverify_schedule: Schedule,
    pub at_startup: bool,
    pub keep_last: usize,
    pub keep_daily: usize,
    pub keep_weekly: usize,
    /// Oldest the newest verified backup may be before health is degraded. Unset:
    /// twice the longest gap of `schedule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_secs: Option<u64>,
}

impl BackupSettings {
    /// `max_age_secs`, or twice the longest gap between the schedule's next runs.
    pub fn max_age(&self) -> std::time::Duration {
        self.max_age_secs
            .map(std::time::Duration::from_secs)
            .or_else(|| {
                self.schedule
                    .longest_interval(chrono::Utc::now(), 32)
                    .map(|gap| gap * 2)
            })
            .unwrap_or(std::time::Duration::from_secs(2 * 86_400))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSettings {
    pub schedule: Schedule,
    pub wal_alert_bytes: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegritySettings {
    pub quick_schedule: Schedule,
    pub full_schedule: Schedule,
    pub quick_at_startup: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsSettings {
    pub dir: PathBuf,
    /// Runs kept per job in the run history table.
    pub history_keep: u32,
    /// At shutdown, how long running jobs may take to finish before they are cancelled.
    pub shutdown_wait_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Serve `GET /metrics` without the API token (for a scraper on a trusted network).
    pub public: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySettings {
    pub cooldown_secs: u64,
    pub timeout_secs: u64,
    pub retries: u32,
    pub queue_capacity: usize,
    pub shutdown_flush_secs: u64,
    #[serde(default)]
    pub channels: Vec<ChannelSettings>,
}

/// One notification channel; `kind` picks the format.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChannelSettings {
    /// Generic JSON POST; with `secret`, signed with HMAC-SHA256.
    Webhook {
        url: String,
        secret: Option<String>,
    },
    /// ntfy topic URL, e.g. https://ntfy.sh/my-topic.
    Ntfy {
        url: String,
        token: Option<String>,
    },
    Discord {
        url: String,
    },
    Slack {
        url: String,
    },
    /// Gotify server base URL and application token.
    Gotify {
        url: String,
        token: String,
    },
    /// Dead-man switch: GET after each verified backup.
    Heartbeat {
        url: String,
    },
    /// An Apprise API server (reaches 100+ services): `url` is its `/notify/<key>`
    /// endpoint for a stored configuration, or `/notify` with `urls` (Apprise URLs,
    /// comma-separated: a secret) for a stateless one; `tag` picks stored targets.
    Apprise {
        url: String,
        urls: Option<String>,
        tag: Option<String>,
    },
}

impl ChannelSettings {
    pub fn kind(&self) -> &'static str {
        match self {
            ChannelSettings::Webhook { .. } => "webhook",
            ChannelSettings::Ntfy { .. } => "ntfy",
            ChannelSettings::Discord { .. } => "discord",
            ChannelSettings::Slack { .. } => "slack",
            ChannelSettings::Gotify { .. } => "gotify",
            ChannelSettings::Heartbeat { .. } => "heartbeat",
            ChannelSettings::Apprise { .. } => "apprise",
        }
    }

    pub fn url(&self) -> &str {
        match self {
            ChannelSettings::Webhook { url, .. }
            | ChannelSettings::Ntfy { url, .. }
            | ChannelSettings::Discord { url }
            | ChannelSettings::Slack { url }
            | ChannelSettings::Gotify { url, .. }
            | ChannelSettings::Heartbeat { url }
            | ChannelSettings::Apprise { url, .. } => url,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    #[serde(deserialize_with = "listen_address")]
    pub listen: SocketAddr,
    #[serde(default)]
    pub token: Option<String>,
    pub max_body_bytes: usize,
    pub max_batch_events: usize,
    pub max_page_size: u32,
    pub workers: usize,
    pub shutdown_grace_secs: u64,
    /// Requests per second per client address; 0 turns rate limiting off.
    pub rate_limit_per_second: u64,
    /// Requests a client may make at once before the rate applies.
    pub rate_limit_burst: u32,
    /// Limit loopback clients too (off: the limit is for clients on other hosts).
    pub rate_limit_loopback: bool,
    /// Refuse to start without `api.token` (the container image turns it on).
    pub require_token: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingSettings {
    pub level: String,
    pub format: LogFormat,
    #[serde(default)]
    pub dir: Option<PathBuf>,
    pub keep_files: usize,
}

/// `logging.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Lines for people.
    Text,
    /// One JSON object per line, for a pipeline that parses logs.
    Json,
}

/// Where the settings file comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// `./config.toml` if it exists, else the embedded defaults alone.
    Default,
    /// A file the user named: it must exist.
    Explicit(PathBuf),
}

impl Settings {
    /// Loads defaults → file → environment (the real process environment).
    pub fn load(source: &ConfigSource) -> Result<Settings, ConfigError> {
        Self::load_with_env(source, std::env::vars())
    }

    /// Like [`Settings::load`] with an explicit environment, so tests need not touch
    /// the process's own.
    pub fn load_with_env(
        source: &ConfigSource,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let all_env: Vec<(String, String)> = env.into_iter().collect();
        let distribution_defaults = all_env
            .iter()
            .find(|(k, _)| k == DEFAULTS_ENV)
            .map(|(_, v)| PathBuf::from(v));
        let env: config::Map<String, String> = all_env
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
            .cloned()
            .collect();
        let file = match source {
            ConfigSource::Default => {
                let p = Path::new(DEFAULT_CONFIG_PATH);
                p.exists().then(|| p.to_path_buf())
            }
            ConfigSource::Explicit(p) => {
                if !p.is_file() {
                    return Err(ConfigError::File {
                        path: p.display().to_string(),
                        reason: "no such file".into(),
                    });
                }
                Some(p.clone())
            }
        };
        let defaults = Config::builder()
            .add_source(File::from_str(DEFAULT_CONFIG_TOML, FileFormat::Toml))
            .build()
            .map_err(|e| ConfigError::Load(format!("embedded defaults: {e}")))?;
        let known = flatten_keys(&defaults);

        let mut builder =
            Config::builder().add_source(File::from_str(DEFAULT_CONFIG_TOML, FileFormat::Toml));
        for path in distribution_defaults.iter().chain(&file) {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            // Parsed on its own first so its unknown keys can be blamed on it.
            let user = Config::builder()
                .add_source(File::from_str(&text, FileFormat::Toml))
                .build()
                .map_err(|e| ConfigError::File {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            check_known(&user, &known, &path.display().to_string())?;
            builder = builder.add_source(File::from(path.as_path()).format(FileFormat::Toml));
        }
        let environment = Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(Some(env));
        let env_only = Config::builder()
            .add_source(environment.clone())
            .build()
            .map_err(|e| ConfigError::Load(format!("environment: {e}")))?;
        check_known(&env_only, &known, "environment")?;
        builder = builder.add_source(environment);

        let merged = builder
            .build()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        let origin = |key: &str| origin_of(&merged, key);
        let settings: Settings = with_secret_files(&merged, &origin)?
            .try_deserialize()
            .map_err(|e| read_error(e, &origin))?;
        settings.validate(&origin, &all_env)?;
        Ok(settings)
    }

    /// Each section checks its own values; the first problem is the error.
    fn validate(
        &self,
        origin: &dyn Fn(&str) -> String,
        env: &[(String, String)],
    ) -> Result<(), ConfigError> {
        let check = Check { origin };
        self.database.validate(&check)?;
        self.writer.validate(&check)?;
        self.backup.validate(&check)?;
        self.checkpoint.validate(&check)?;
        self.notify.validate(&check)?;
        self.jobs.validate(&check)?;
        self.api.validate(&check)?;
        self.logging.validate(&check)?;
        replicas::validate(&self.replicas, env, &check)
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.api.listen
    }

    /// The effective settings as TOML, with secrets masked.
    pub fn to_masked_toml(&self) -> String {
        let mut shown = self.clone();
        if shown.api.token.is_some() {
            shown.api.token = Some("********".into());
        }
        for channel in &mut shown.notify.channels {
            match channel {
                ChannelSettings::Webhook {
                    secret: Some(s), ..
                }
                | ChannelSettings::Ntfy { token: Some(s), .. }
                | ChannelSettings::Apprise { urls: Some(s), .. } => *s = "********".into(),
                ChannelSettings::Gotify { token, .. } => *token = "********".into(),
                _ => {}
            }
        }
        for replica in &mut shown.replicas {
            if replica.secret_access_key.is_some() {
                replica.secret_access_key = Some("********".into());
            }
        }
        toml_render(&shown)
    }
}

/// What a section's check needs: where each key came from, and the shapes of error.
struct Check<'a> {
    origin: &'a dyn Fn(&str) -> String,
}

impl Check<'_> {
    fn invalid(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_string(),
            origin: (self.origin)(key),
            reason: reason.into(),
        }
    }

    /// `value` within `lo..=hi`, or an error naming the key and the range.
    fn range<T>(&self, key: &str, value: T, lo: T, hi: T) -> Result<(), ConfigError>
    where
        T: PartialOrd + std::fmt::Display,
    {
        if value < lo || value > hi {
            Err(self.invalid(key, format!("{value} is out of range {lo}..={hi}")))
        } else {
            Ok(())
        }
    }
}

impl DatabaseSettings {
    fn validate(&self, check: &Check) -> Result<(), ConfigError> {
        if self.path.as_os_str().is_empty() {
            return Err(check.invalid("database.path", "must not be empty"));
        }
        if self.path.is_dir() {
            return Err(check.invalid(
                "database.path",
                format!("{} is a directory", self.path.display()),
            ));
        }
        check.range("database.busy_timeout_ms", self.busy_timeout_ms, 1, 600_000)?;
        check.range(
            "database.journal_size_limit_bytes",
            self.journal_size_limit_bytes,
            0,
            1 << 30,
        )?;
        check.range(
            "database.wal_autocheckpoint_pages",
            self.wal_autocheckpoint_pages,
            0,
            1_000_000,
        )?;
        check.range("database.readers", self.readers, 1, 64)?;
        if let Some(vfs) = &self.vfs {
            if !cfg!(feature = "crash-vfs") {
                return Err(check.invalid(
                    "database.vfs",
                    "this build has no VFS to choose: the crash VFS exists only in test builds",
                ));
            }
            if vfs != CRASH_VFS {
                return Err(check.invalid(
                    "database.vfs",
                    format!("`{vfs}` is not a known VFS (only `{CRASH_VFS}`, for tests)"),
                ));
            }
        }
        Ok(())
    }
}

impl WriterSettings {
    fn validate(&self, check: &Check) -> Result<(), ConfigError> {
        check.range("writer.mailbox_capacity", self.mailbox_capacity, 1, 100_000)?;
        check.range(
            "writer.max_batch_requests",
            self.max_batch_requests,
            1,
            100_000,
        )
    }
}

impl BackupSettings {
    fn validate(&self, check: &Check) -> Result<(), ConfigError> {
        if self.dir.as_os_str().is_empty() {
            return Err(check.invalid("backup.dir", "must not be empty"));
        }
        if self.dir.is_file() {
            return Err(check.invalid(
                "backup.dir",
                format!("{} is a file, not a directory", self.dir.display()),
            ));
        }
        check.range("backup.keep_last", self.keep_last, 0, 10_000)?;
        check.range("backup.keep_daily", self.keep_daily, 0, 10_000)?;
        check.range("backup.keep_weekly", self.keep_weekly, 0, 10_000)?;
        if let Some(age) = self.max_age_secs {
            check.range("backup.max_age_secs", age, 60, 366 * 86_400)?;
        }
        Ok(())
    }
}

impl CheckpointSettings {
    fn validate(&self, check: &Check) -> Result<(), ConfigError> {
        check.range(
            "checkpoint.wal_alert_bytes",
            self.wal_alert_bytes,
            1,
            1 << 40,
        )
    }
}

impl NotifySettings {
    fn validate(&self, check: &Check) -> Result<(), ConfigError> {
        check.range("notify.cooldown_secs", self.cooldown_secs, 0, 7 * 86_400)?;
        check.range("notify.timeout_secs", self.timeout_secs, 1, 300)?;
        check.range("notify.retries", self.retries, 0, 10)?;
        check.range("notify.queue_capacity", self.queue_capacity, 1, 100_000)?;
        check.range(
            "notify.shutdown_flush_secs",
            self.shutdown_flush_secs,
            0,
            120,
        )?;
        for (i, channel) in self.channels.iter().enumerate() {
            http_url(channel.url()).map_err(|reason| {
                check.invalid(
                    "notify.channels",
                    format!("channel {i} ({}): {reason}", channel.kind()),
                )
            })?;
        }
        Ok(())
    }
}

impl JobsSettings {
    fn validate(&self, check: &Check) -> Result<(), ConfigError> {
        check.range("jobs.history_keep", self.history_keep, 1, 100_000)?;
        check.range("jobs.shutdown_wait_secs", self.shutdown_wait_secs, 0, 3600)
    }
}

impl ApiSettings {
    fn validate(&self, check: &Check) -> Result<(), ConfigError> {
        match &self.token {
            Some(token) if token.trim().is_empty() => {
                return Err(check.invalid("api.token", "must not be empty when set"));
            }
            None if self.require_token => {
                return Err(check.invalid(
                    "api.token",
                    format!(
                        "is required (api.require_token = true) to listen on {}: set api.token or api.token_file, or set api.require_token = false to run without one (anyone who can reach the port can then write events)",
                        self.listen
                    ),
                ));
            }
            _ => {}
        }
        check.range("api.max_body_bytes", self.max_body_bytes, 1024, 64 << 20)?;
        check.range("api.max_batch_events", self.max_batch_events, 1, 100_000)?;
        check.range("api.max_page_size", self.max_page_size, 1, 10_000)?;
        check.range("api.workers", self.workers, 1, 64)?;
        check.range(
            "api.rate_limit_per_second",
            self.rate_limit_per_second,
            0,
            1_000_000,
        )?;
        check.range("api.rate_limit_burst", self.rate_limit_burst, 1, 1_000_000)?;
        check.range("api.shutdown_grace_secs", self.shutdown_grace_secs, 1, 300)
    }
}

impl LoggingSettings {
    fn validate(&self, check: &Check) -> Result<(), ConfigError> {
        if tracing_subscriber::EnvFilter::try_new(&self.level).is_err() {
            return Err(check.invalid(
                "logging.level",
                format!("`{}` is not a level or tracing filter", self.level),
            ));
        }
        check.range("logging.keep_files", self.keep_files, 1, 3650)
    }
}

/// `api.listen` read as an address, so a bad one is refused with the key and an example.
fn listen_address<'de, D>(deserializer: D) -> Result<SocketAddr, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!("`{text}` is not an address like 127.0.0.1:8484"))
    })
}

/// Real TOML (the `toml` crate's), which `--config` reads back as it is; unset
/// optional keys are left out.
fn toml_render(settings: &Settings) -> String {
    toml::to_string(settings)
        .unwrap_or_else(|e| format!("# the settings could not be shown as TOML: {e}\n"))
}

/// `text` as an http(s) URL, or why it is not one (notification channels, `http`
/// jobs).
pub fn http_url(text: &str) -> Result<reqwest::Url, String> {
    match reqwest::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Ok(url),
        _ => Err(format!("`{text}` is not an http(s) URL")),
    }
}

/// A value that did not deserialize: with the key and where it came from when
/// config-rs knows the key (a typed setting's own check, such as a cron schedule).
fn read_error(e: config::ConfigError, origin: &dyn Fn(&str) -> String) -> ConfigError {
    match e {
        config::ConfigError::At {
            error,
            key: Some(key),
            ..
        } => {
            // config-rs writes an array element's field as `replicas[0]url`.
            let key = key
                .replace("]", "].")
                .replace("].[", "][")
                .replace("].]", "]]");
            let key = key.trim_end_matches('.').to_string();
            ConfigError::Invalid {
                origin: origin(&key),
                key,
                reason: error.to_string(),
            }
        }
        other => ConfigError::Load(other.to_string()),
    }
}

/// `merged` with every `<secret>_file` key replaced by `<secret>` = the file's content.
fn with_secret_files(
    merged: &Config,
    origin: &dyn Fn(&str) -> String,
) -> Result<Config, ConfigError> {
    let mut tree: serde_json::Value = merged
        .clone()
        .try_deserialize()
        .map_err(|e| ConfigError::Load(e.to_string()))?;
    if !read_secret_files(&mut tree, "", origin)? {
        return Ok(merged.clone());
    }
    // Back through TOML so the settings are read with the same lenient conversions.
    drop_nulls(&mut tree);
    let text = toml::to_string(&tree).map_err(|e| ConfigError::Load(e.to_string()))?;
    Config::builder()
        .add_source(File::from_str(&text, FileFormat::Toml))
        .build()
        .map_err(|e| ConfigError::Load(e.to_string()))
}

fn drop_nulls(node: &mut serde_json::Value) {
    match node {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// Replaces `<secret>_file` keys anywhere in `node` (tables and arrays of tables);
/// true when one was found.
fn read_secret_files(
    node: &mut serde_json::Value,
    at: &str,
    origin: &dyn Fn(&str) -> String,
) -> Result<bool, ConfigError> {
    let mut found = false;
    match node {
        serde_json::Value::Object(map) => {
            for name in SECRET_KEYS {
                let file_key = format!("{name}_file");
                let Some(path) = map.remove(&file_key) else {
                    continue;
                };
                found = true;
                let key = if at.is_empty() {
                    file_key.clone()
                } else {
                    format!("{at}.{file_key}")
                };
                let invalid = |reason: String| ConfigError::Invalid {
                    key: key.clone(),
                    origin: origin(&key),
                    reason,
                };
                if map.get(*name).is_some_and(|v| !v.is_null()) {
                    return Err(invalid(format!("give `{name}` or `{file_key}`, not both")));
                }
                let path = path
                    .as_str()
                    .ok_or_else(|| invalid("must be the path of a file".into()))?;
                let text = std::fs::read_to_string(path)
                    .map_err(|e| invalid(format!("cannot read {path}: {e}")))?;
                let secret = text.trim_end_matches(['\n', '\r']);
                if secret.is_empty() {
                    return Err(invalid(format!("{path} is empty")));
                }
                map.insert(name.to_string(), serde_json::Value::from(secret));
            }
            for (key, child) in map.iter_mut() {
                let child_at = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                found |= read_secret_files(child, &child_at, origin)?;
            }
        }
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                found |= read_secret_files(item, &format!("{at}[{i}]"), origin)?;
            }
        }
        _ => {}
    }
    Ok(found)
}

fn flatten_keys(config: &Config) -> BTreeMap<String, ()> {
    let mut keys = BTreeMap::new();
    if let Ok(table) = config.cache.clone().into_table() {
        for (section, value) in table {
            if let ValueKind::Table(inner) = value.kind {
                for key in inner.keys() {
                    keys.insert(format!("{section}.{key}"), ());
                }
            }
        }
    }
    keys
}

/// Every key in `layer` must be a known `section.key`. Optional keys that are only
/// commented out in the defaults are added here by name.
/// Top-level arrays of tables.
const ARRAY_SECTIONS: &[&str] = &["replicas"];

fn check_known(
    layer: &Config,
    known: &BTreeMap<String, ()>,
    origin: &str,
) -> Result<(), ConfigError> {
    const OPTIONAL: &[&str] = &[
        "api.token",
        "api.token_file",
        "logging.dir",
        "database.vfs",
        "backup.max_age_secs",
    ];
    let table = match layer.cache.clone().into_table() {
        Ok(t) => t,
        Err(_) => return Ok(()),
    };
    for (section, value) in table {
        let inner = match value.kind {
            ValueKind::Table(inner) => inner,
            // `[[replicas]]`: each table's keys are checked when it is read
            // (`deny_unknown_fields`), with its index in the error.
            ValueKind::Array(_) if ARRAY_SECTIONS.contains(&section.as_str()) => continue,
            _ => {
                return Err(ConfigError::UnknownKey {
                    key: section,
                    origin: origin.to_string(),
                })
            }
        };
        for (key, v) in inner {
            let full = format!("{section}.{key}");
            if !known.contains_key(&full) && !OPTIONAL.contains(&full.as_str()) {
                return Err(ConfigError::UnknownKey {
                    key: full,
                    origin: v
                        .origin()
                        .map(str::to_string)
                        .unwrap_or_else(|| origin.to_string()),
                });
            }
        }
    }
    Ok(())
}

fn origin_of(config: &Config, key: &str) -> String {
    // Walk the merged tree: `Config::get` would rebuild the value without its origin.
    let mut node = config.cache.clone();
    // `replicas[1].url` walks `replicas`, element 1, then `url`.
    let parts = key.split('.').flat_map(|part| {
        let mut pieces = part.split('[');
        let name = pieces.next().unwrap_or_default();
        std::iter::once(name.to_string())
            .chain(pieces.map(|index| format!("[{}", index.trim_end_matches(']'))))
    });
    for part in parts {
        let next = match (node.kind, part.strip_prefix('[')) {
            (ValueKind::Array(items), Some(index)) => index
                .parse::<usize>()
                .ok()
                .and_then(|i| items.into_iter().nth(i)),
            (ValueKind::Table(mut table), None) => table.remove(&part),
            _ => None,
        };
        match next {
            Some(v) => node = v,
            None => return "defaults".to_string(),
        }
    }
    match node.origin() {
        Some(o) if o.starts_with(ENV_PREFIX) || o.contains("environment") => {
            "environment".to_string()
        }
        Some(o) => o.to_string(),
        None => "defaults".to_string(),
    }
}

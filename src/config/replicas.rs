//! `[[replicas]]`: where verified backups are copied off the machine.
//!
//! Every replica setting lives in its own `[[replicas]]` table, so two replicas never
//! share a value by accident (a NAS can keep more copies than a paid bucket). Everything
//! that can be checked without the network is checked at load: the URL, the endpoint,
//! the credentials being there, every age recipient, the identity file matching one of
//! them, the ranges. A problem names `replicas[<i>].<key>` and says why.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{http_url, Check, ConfigError};
use crate::cron::Schedule;

/// Where a replica's objects live, read from its `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaTarget {
    /// `s3://bucket/prefix`: AWS S3 or an S3-compatible service (with `endpoint`).
    S3 { bucket: String, prefix: String },
    /// `gs://bucket/prefix`: Google Cloud Storage.
    Gcs { bucket: String, prefix: String },
    /// `az://container/prefix`: Azure Blob Storage.
    Azure { container: String, prefix: String },
    /// `file:///absolute/path`: another disk or a NAS mount.
    File { path: PathBuf },
}

impl ReplicaTarget {
    pub fn parse(text: &str) -> Result<ReplicaTarget, String> {
        let url = reqwest::Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
        let bucket_and_prefix = |what: &str| -> Result<(String, String), String> {
            let bucket = url.host_str().unwrap_or_default().to_string();
            if bucket.is_empty() {
                return Err(format!(
                    "`{text}` names no {what} (`{}://{what}/prefix`)",
                    url.scheme()
                ));
            }
            if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
                return Err(format!(
                    "`{text}`: give only `{}://{what}/prefix` (credentials and options are separate settings)",
                    url.scheme()
                ));
            }
            let prefix = url.path().trim_matches('/').to_string();
            Ok((bucket, prefix))
        };
        match url.scheme() {
            "s3" => {
                let (bucket, prefix) = bucket_and_prefix("bucket")?;
                Ok(ReplicaTarget::S3 { bucket, prefix })
            }
            "gs" => {
                let (bucket, prefix) = bucket_and_prefix("bucket")?;
                Ok(ReplicaTarget::Gcs { bucket, prefix })
            }
            "az" | "azure" => {
                let (container, prefix) = bucket_and_prefix("container")?;
                Ok(ReplicaTarget::Azure { container, prefix })
            }
            "file" => {
                if url.host_str().is_some_and(|h| !h.is_empty()) {
                    return Err(format!(
                        "`{text}`: a file URL has an absolute path and no host (`file:///mnt/nas/dbwarden`)"
                    ));
                }
                let path = url
                    .to_file_path()
                    .map_err(|()| format!("`{text}` is not an absolute file path"))?;
                if path.parent().is_none() {
                    return Err(format!("`{text}`: refusing the root directory"));
                }
                Ok(ReplicaTarget::File { path })
            }
            other => Err(format!(
                "`{text}`: unknown scheme `{other}` (use s3://, gs://, az:// or file://)"
            )),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ReplicaTarget::S3 { .. } => "s3",
            ReplicaTarget::Gcs { .. } => "gcs",
            ReplicaTarget::Azure { .. } => "azure",
            ReplicaTarget::File { .. } => "file",
        }
    }
}

/// A replica's `url` as written, and what it means; read once, at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaUrl {
    pub text: String,
    pub target: ReplicaTarget,
}

impl Serialize for ReplicaUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for ReplicaUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ReplicaUrl, D::Error> {
        let text = String::deserialize(d)?;
        let target = ReplicaTarget::parse(&text).map_err(serde::de::Error::custom)?;
        Ok(ReplicaUrl { text, target })
    }
}

/// How copies are protected before they leave the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encryption {
    /// age (X25519 recipients): the bucket's owner sees sizes and times, nothing else.
    Age,
    /// Compressed only; allowed only when said explicitly.
    None,
}

/// How the replica's shipping and drills share the CPU with the rest of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum CpuPriority {
    /// Linux's `SCHED_IDLE`: only CPU time nothing else wants. The writer never waits
    /// behind shipping; on a machine kept busy for hours, shipping waits too.
    #[default]
    Idle,
    /// nice 10: a smaller share of a busy CPU, never none.
    Low,
    /// The service's own priority: shipping competes with the writer as an equal.
    Normal,
}

impl TryFrom<String> for CpuPriority {
    type Error = String;

    fn try_from(text: String) -> Result<CpuPriority, String> {
        match text.as_str() {
            "idle" => Ok(CpuPriority::Idle),
            "low" => Ok(CpuPriority::Low),
            "normal" => Ok(CpuPriority::Normal),
            other => Err(format!(
                "`{other}` is not a CPU priority: use \"idle\", \"low\" or \"normal\""
            )),
        }
    }
}

impl Encryption {
    pub fn as_str(self) -> &'static str {
        match self {
            Encryption::Age => "age",
            Encryption::None => "none",
        }
    }
}

/// One `[[replicas]]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaSettings {
    /// Short name used in logs, metrics, health and `--from` (letters, digits, `-`, `_`).
    pub name: String,
    /// `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix` or
    /// `file:///absolute/path`.
    pub url: ReplicaUrl,
    /// S3-compatible services: the endpoint, e.g. `https://s3.eu-central-003.backblazeb2.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Plain `http://` endpoints are refused unless this is true (a server on loopback).
    #[serde(default)]
    pub allow_http: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// `https://bucket.endpoint/` instead of `https://endpoint/bucket/` (path style).
    #[serde(default)]
    pub virtual_hosted_style: bool,
    /// S3 credentials; when both are unset, `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` from the environment are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// A secret: give `secret_access_key_file` (a file holding it) rather than the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    /// Further object_store options for the service (`google_service_account`,
    /// `azure_storage_account_key`, ...); each key is checked at load.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    #[serde(default = "default_encryption")]
    pub encryption: Encryption,
    /// age recipients (`age1...`) the copies are encrypted to.
    #[serde(default)]
    pub age_recipients: Vec<String>,
    /// The identity (`AGE-SECRET-KEY-1...`) that drills decrypt with. Not needed to
    /// ship; keep it off the machine if drills run elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_identity_file: Option<PathBuf>,
    #[serde(default = "default_keep_last")]
    pub keep_last: usize,
    #[serde(default = "default_keep_daily")]
    pub keep_daily: usize,
    #[serde(default = "default_keep_weekly")]
    pub keep_weekly: usize,
    /// When to prove the newest copy and an older one restorable (UTC cron, seconds
    /// first; default Sundays 05:00).
    #[serde(default = "default_drill_schedule")]
    pub drill_schedule: Schedule,
    /// Health turns `degraded`, naming this replica, when its newest good copy is older
    /// than this. Unset: the same bound as the local backups (`backup.max_age_secs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_secs: Option<u64>,
    /// Upload rate limit in bytes per second; 0 is unlimited.
    #[serde(default)]
    pub max_bytes_per_second: u64,
    /// Parts of one copy uploaded at once.
    #[serde(default = "default_concurrency")]
    pub max_concurrent_uploads: usize,
    /// Size of each multipart part, in MiB (5..=4096: S3's limits).
    #[serde(default = "default_part_size")]
    pub part_size_mib: usize,
    /// Another service may take this replica's lease over once its holder has not
    /// renewed it for this long. The holder renews it whenever it writes there (every
    /// backup at least), so keep it well above the backup interval.
    #[serde(default = "default_lease_expire")]
    pub lease_expire_secs: u64,
    /// `idle` (default) or `low`; see [`CpuPriority`].
    #[serde(default)]
    pub cpu_priority: CpuPriority,
    /// Continuous replication: every commit, as WAL segments after a snapshot, besides
    /// the backup copies (see [`crate::replica::replicator`]). While any replica
    /// streams, dbwarden's connections do not checkpoint on their own.
    #[serde(default = "default_stream")]
    pub stream: bool,
    /// How often this replica receives what was committed: at most one segment upload
    /// per interval, holding every commit made in it.
    #[serde(default = "default_sync_interval")]
    pub sync_interval_ms: u64,
    /// Health turns `degraded` when the oldest commit not yet in this replica is older
    /// than this.
    #[serde(default = "default_max_lag")]
    pub max_lag_secs: u64,
    /// Every point of the last this many seconds stays restorable on this replica;
    /// older generations are deleted. A new generation (a fresh snapshot) begins when
    /// the current one is this old (the shortest of the streaming replicas').
    #[serde(default = "default_stream_retention")]
    pub stream_retention_secs: u64,
    /// How often the segments shipped since the last time are merged into larger ones
    /// ([`crate::replica::compaction`]); the spool keeps what was shipped until then.
    #[serde(default = "default_compact_interval")]
    pub compact_interval_secs: u64,
    /// Acknowledge a write only once its commit is in this replica (it must stream).
    /// While the replica cannot take it, writes are answered 503 with `Retry-After`.
    #[serde(default)]
    pub ack_writes: bool,
    /// With `ack_writes`: how long a write waits for the replica before it is refused.
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout_ms: u64,
    /// With `ack_writes`: after `ack_timeout_ms`, acknowledge on the local commit alone
    /// (logged and counted) instead of refusing. Off: never a false acknowledgement.
    #[serde(default)]
    pub ack_fallback_local: bool,
}

fn default_encryption() -> Encryption {
    Encryption::Age
}
fn default_keep_last() -> usize {
    7
}
fn default_keep_daily() -> usize {
    14
}
fn default_keep_weekly() -> usize {
    8
}
fn default_drill_schedule() -> Schedule {
    Schedule::parse("0 0 5 * * Sun").expect("the default drill schedule parses")
}
fn default_concurrency() -> usize {
    4
}
fn default_part_size() -> usize {
    8
}
fn default_lease_expire() -> u64 {
    86_400
}
fn default_stream() -> bool {
    true
}
fn default_sync_interval() -> u64 {
    1_000
}
fn default_max_lag() -> u64 {
    60
}
fn default_stream_retention() -> u64 {
    86_400
}
fn default_compact_interval() -> u64 {
    3_600
}
fn default_ack_timeout() -> u64 {
    10_000
}

impl ReplicaSettings {
    pub fn target(&self) -> &ReplicaTarget {
        &self.url.target
    }

    /// The parsed `age_recipients` (checked at load).
    pub fn recipients(&self) -> Vec<age::x25519::Recipient> {
        self.age_recipients
            .iter()
            .filter_map(|r| age::x25519::Recipient::from_str(r.trim()).ok())
            .collect()
    }

    pub fn part_size_bytes(&self) -> usize {
        self.part_size_mib << 20
    }
}

/// Reads an age identity file (as `age-keygen` writes it: comments and one or more
/// `AGE-SECRET-KEY-1...` lines).
pub fn read_identities(path: &std::path::Path) -> Result<Vec<age::x25519::Identity>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut identities = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let identity = age::x25519::Identity::from_str(line).map_err(|_| {
            format!(
                "{} line {}: not an age identity (AGE-SECRET-KEY-1...)",
                path.display(),
                n + 1
            )
        })?;
        identities.push(identity);
    }
    if identities.is_empty() {
        return Err(format!("{} holds no age identity", path.display()));
    }
    Ok(identities)
}

/// Checks every replica; `env` is the process environment (for the `AWS_*` fallback).
pub(super) fn validate(
    replicas: &[ReplicaSettings],
    env: &[(String, String)],
    check: &Check,
) -> Result<(), ConfigError> {
    for (i, replica) in replicas.iter().enumerate() {
        replica.validate(i, env, check)?;
        if let Some(first) = replicas[..i].iter().position(|r| r.name == replica.name) {
            return Err(check.invalid(
                &format!("replicas[{i}].name"),
                format!(
                    "`{}` is already the name of replicas[{first}]",
                    replica.name
                ),
            ));
        }
    }
    Ok(())
}

impl ReplicaSettings {
    fn validate(
        &self,
        i: usize,
        env: &[(String, String)],
        check: &Check,
    ) -> Result<(), ConfigError> {
        let key = |k: &str| format!("replicas[{i}].{k}");
        let valid_name = !self.name.is_empty()
            && self.name.len() <= 32
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name {
            return Err(check.invalid(
                &key("name"),
                format!(
                    "`{}` must be 1 to 32 letters, digits, `-` or `_`",
                    self.name
                ),
            ));
        }
        self.validate_transport(&self.url.target, &key, env, check)?;
        self.validate_encryption(&key, check)?;
        check.range(&key("keep_last"), self.keep_last, 1, 10_000)?;
        check.range(&key("keep_daily"), self.keep_daily, 0, 10_000)?;
        check.range(&key("keep_weekly"), self.keep_weekly, 0, 10_000)?;
        check.range(
            &key("lease_expire_secs"),
            self.lease_expire_secs,
            3_600,
            366 * 86_400,
        )?;
        if let Some(age) = self.max_age_secs {
            check.range(&key("max_age_secs"), age, 60, 366 * 86_400)?;
        }
        if self.max_bytes_per_second != 0 {
            check.range(
                &key("max_bytes_per_second"),
                self.max_bytes_per_second,
                64 << 10,
                u64::MAX,
            )?;
        }
        check.range(
            &key("max_concurrent_uploads"),
            self.max_concurrent_uploads,
            1,
            64,
        )?;
        check.range(&key("part_size_mib"), self.part_size_mib, 5, 4096)?;
        check.range(
            &key("sync_interval_ms"),
            self.sync_interval_ms,
            100,
            3_600_000,
        )?;
        check.range(&key("max_lag_secs"), self.max_lag_secs, 1, 366 * 86_400)?;
        check.range(&key("ack_timeout_ms"), self.ack_timeout_ms, 100, 600_000)?;
        check.range(
            &key("stream_retention_secs"),
            self.stream_retention_secs,
            10,
            3_660 * 86_400,
        )?;
        check.range(
            &key("compact_interval_secs"),
            self.compact_interval_secs,
            1,
            7 * 86_400,
        )?;
        if self.ack_writes && !self.stream {
            return Err(check.invalid(
                &key("ack_writes"),
                "needs stream = true: writes are acknowledged once their commit is streamed there",
            ));
        }
        if self.ack_fallback_local && !self.ack_writes {
            return Err(check.invalid(
                &key("ack_fallback_local"),
                "only applies with ack_writes = true",
            ));
        }
        Ok(())
    }

    fn validate_transport(
        &self,
        target: &ReplicaTarget,
        key: &dyn Fn(&str) -> String,
        env: &[(String, String)],
        check: &Check,
    ) -> Result<(), ConfigError> {
        let s3_only = [
            ("endpoint", self.endpoint.is_some()),
            ("region", self.region.is_some()),
            ("virtual_hosted_style", self.virtual_hosted_style),
            ("access_key_id", self.access_key_id.is_some()),
            ("secret_access_key", self.secret_access_key.is_some()),
        ];
        if !matches!(target, ReplicaTarget::S3 { .. }) {
            if let Some((name, _)) = s3_only.iter().find(|(_, set)| *set) {
                return Err(check.invalid(
                    &key(name),
                    format!("only applies to s3:// replicas, not {}", target.kind()),
                ));
            }
        }
        if matches!(target, ReplicaTarget::File { .. }) {
            if self.allow_http {
                return Err(check.invalid(&key("allow_http"), "does not apply to file:// replicas"));
            }
            if let Some(option) = self.options.keys().next() {
                return Err(check.invalid(
                    &key(&format!("options.{option}")),
                    "file:// replicas take no options",
                ));
            }
        }
        if let Some(endpoint) = &self.endpoint {
            http_url(endpoint).map_err(|r| check.invalid(&key("endpoint"), r))?;
            if endpoint.starts_with("http://") && !self.allow_http {
                return Err(check.invalid(
                    &key("endpoint"),
                    format!("`{endpoint}` is plain http: set allow_http = true to allow it (loopback or a trusted network only)"),
                ));
            }
        }
        for option in self.options.keys() {
            let known = match target {
                ReplicaTarget::S3 { .. } => {
                    object_store::aws::AmazonS3ConfigKey::from_str(option).is_ok()
                }
                ReplicaTarget::Gcs { .. } => {
                    object_store::gcp::GoogleConfigKey::from_str(option).is_ok()
                }
                ReplicaTarget::Azure { .. } => {
                    object_store::azure::AzureConfigKey::from_str(option).is_ok()
                }
                ReplicaTarget::File { .. } => false,
            };
            if !known {
                return Err(check.invalid(
                    &key(&format!("options.{option}")),
                    format!("not an option of {} replicas", target.kind()),
                ));
            }
        }
        if let ReplicaTarget::S3 { .. } = target {
            let from_env = |name: &str| env.iter().any(|(k, v)| k == name && !v.is_empty());
            match (&self.access_key_id, &self.secret_access_key) {
                (Some(_), Some(_)) => {}
                (Some(_), None) => {
                    return Err(check.invalid(
                        &key("secret_access_key"),
                        "is required with access_key_id (give secret_access_key_file)",
                    ))
                }
                (None, Some(_)) => {
                    return Err(
                        check.invalid(&key("access_key_id"), "is required with secret_access_key")
                    )
                }
                (None, None) => {
                    if !(from_env("AWS_ACCESS_KEY_ID") && from_env("AWS_SECRET_ACCESS_KEY")) {
                        return Err(check.invalid(
                            &key("access_key_id"),
                            "no credentials: set access_key_id and secret_access_key_file, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment",
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn validate_encryption(
        &self,
        key: &dyn Fn(&str) -> String,
        check: &Check,
    ) -> Result<(), ConfigError> {
        match self.encryption {
            Encryption::None => {
                if !self.age_recipients.is_empty() {
                    return Err(check.invalid(
                        &key("age_recipients"),
                        "given, but encryption = \"none\": remove them or set encryption = \"age\"",
                    ));
                }
                return Ok(());
            }
            Encryption::Age => {}
        }
        if self.age_recipients.is_empty() {
            return Err(check.invalid(
                &key("age_recipients"),
                "at least one age recipient (age1...) is required; to ship unencrypted copies say encryption = \"none\"",
            ));
        }
        let mut recipients = Vec::new();
        for (n, text) in self.age_recipients.iter().enumerate() {
            let recipient = age::x25519::Recipient::from_str(text.trim()).map_err(|e| {
                check.invalid(
                    &format!("{}[{n}]", key("age_recipients")),
                    format!("`{text}` is not an age recipient (age1...): {e}"),
                )
            })?;
            recipients.push(recipient.to_string());
        }
        if let Some(path) = &self.age_identity_file {
            let identities =
                read_identities(path).map_err(|r| check.invalid(&key("age_identity_file"), r))?;
            let matches = identities
                .iter()
                .any(|id| recipients.contains(&id.to_public().to_string()));
            if !matches {
                return Err(check.invalid(
                    &key("age_identity_file"),
                    format!(
                        "{} holds no identity for any of age_recipients: drills could not decrypt",
                        path.display()
                    ),
                ));
            }
        }
        Ok(())
    }
}

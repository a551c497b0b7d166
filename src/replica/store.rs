//! Opening a replica: its settings turned into an `object_store` client and a layout.
//!
//! Opening makes no request (object_store builders only check their arguments), so a
//! replica that is down at startup delays its shipping, never the service.
//!
//! Requests, unless a replica's `options` say otherwise (`timeout`, `connect_timeout`
//! are object_store's client keys):
//! - a whole request may take 15 minutes, not object_store's 30 s: one 8 MiB part over
//!   a home uplink of 1 Mbit/s takes about a minute, and would never finish;
//! - connecting may take 10 s;
//! - a failed request is retried 3 times within a minute (object_store's default is 10
//!   times within 3 minutes). The Shipper retries the whole copy with its own backoff
//!   (30 s to 15 min), so a replica that is down is noticed, reported and retried
//!   rather than waited for.
//!
//! An upload cut short by a kill leaves its parts behind. On S3, GCS and Azure they are
//! an unfinished multipart upload, which object_store can neither list nor abort
//! without its id, so dbwarden writes each upload's id down before its first part and
//! aborts what a killed process left ([`super::uploads`]). On a `file://` replica they
//! are one staging file beside the object (`<object>#<n>`, hidden from listings):
//! [`Replica::remove_abandoned_uploads`] deletes those of dbwarden's own objects.
//! Both run before each round of shipping.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::multipart::MultipartStore;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use super::layout::Layout;
use super::ReplicaError;
use crate::config::{ReplicaSettings, ReplicaTarget};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_RETRIES: usize = 3;
const RETRY_WITHIN: Duration = Duration::from_secs(60);

/// One replica, ready for requests.
#[derive(Clone)]
pub struct Replica {
    pub settings: ReplicaSettings,
    pub store: Arc<dyn ObjectStore>,
    /// The same store's multipart API, where it has one (S3, GCS, Azure): uploads go
    /// through it so that their ids are known ([`super::uploads`]).
    pub multipart: Option<Arc<dyn MultipartStore>>,
    pub layout: Layout,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Replica({} at {})",
            self.settings.name, self.settings.url.text
        )
    }
}

impl Replica {
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// Builds the client for `settings`; `file://` directories are created (0700).
    pub fn open(settings: &ReplicaSettings) -> Result<Replica, ReplicaError> {
        // rustls has one provider compiled in (ring); installing it process-wide makes
        // the choice explicit for reqwest's rustls without a provider of its own.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let failed = |reason: String| ReplicaError::Open {
            replica: settings.name.clone(),
            reason,
        };
        let option_error =
            |key: &str, e: object_store::Error| failed(format!("options.{key}: {e}"));
        let client = ClientOptions::new()
            .with_allow_http(settings.allow_http)
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(CONNECT_TIMEOUT);
        let retry = RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: REQUEST_RETRIES,
            retry_timeout: RETRY_WITHIN,
        };
        type Stores = (Arc<dyn ObjectStore>, Option<Arc<dyn MultipartStore>>);
        fn both<S: ObjectStore + MultipartStore>(store: S) -> Stores {
            let store = Arc::new(store);
            (store.clone(), Some(store))
        }
        let ((store, multipart), prefix): (Stores, String) = match settings.target() {
            ReplicaTarget::S3 { bucket, prefix } => {
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_client_options(client)
                    .with_retry(retry)
                    .with_virtual_hosted_style_request(settings.virtual_hosted_style);
                if let Some(endpoint) = &settings.endpoint {
                    builder = builder.with_endpoint(endpoint);
                    if settings.region.is_none() {
                        // S3-compatible services sign with any region; AWS's default.
                        builder = builder.with_region("us-east-1");
                    }
                }
                if let Some(region) = &settings.region {
                    builder = builder.with_region(region);
                }
                if let (Some(id), Some(secret)) =
                    (&settings.access_key_id, &settings.secret_access_key)
                {
                    builder = builder
                        .with_access_key_id(id)
                        .with_secret_access_key(secret);
                }
                for (key, value) in &settings.options {
                    let key = AmazonS3ConfigKey::from_str(key).map_err(|e| option_error(key, e))?;
                    builder = builder.with_config(key, value);
                }
                let store = builder.build().map_err(|e| failed(e.to_string()))?;
                (both(store), prefix.clone())
            }
            ReplicaTarget::Gcs { bucket, prefix } => {
                let mut builder = GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_client_options(client)
                    .with_retry(retry);
                for (key, value) in &settings.options {
                    let key = GoogleConfigKey::from_str(key).map_err(|e| option_error(key, e))?;
                    builder = builder.with_config(key, value);
                }
                let store = builder.build().map_err(|e| failed(e.to_string()))?;
                (both(store), prefix.clone())
            }
            ReplicaTarget::Azure { container, prefix } => {
                let mut builder = MicrosoftAzureBuilder::from_env()
                    .with_container_name(container)
                    .with_client_options(client)
                    .with_retry(retry);
                for (key, value) in &settings.options {
                    let key = AzureConfigKey::from_str(key).map_err(|e| option_error(key, e))?;
                    builder = builder.with_config(key, value);
                }
                let store = builder.build().map_err(|e| failed(e.to_string()))?;
                (both(store), prefix.clone())
            }
            ReplicaTarget::File { path } => {
                crate::db::create_private_dir(path).map_err(ReplicaError::io(path))?;
                // fsync on: a copy on another disk must survive that disk's power loss
                // as an object acknowledged by S3 would.
                let store = LocalFileSystem::new_with_prefix(path)
                    .map_err(|e| failed(e.to_string()))?
                    .with_fsync(true);
                ((Arc::new(store), None), String::new())
            }
        };
        Ok(Replica {
            settings: settings.clone(),
            store,
            multipart,
            layout: Layout::new(&prefix),
        })
    }

    /// Deletes what uploads cut short left on a `file://` replica: object_store's
    /// staging files (`<object>#<digits>`) of the objects dbwarden writes under
    /// `backups/`. Anything else is not ours and stays. Call it only while holding the
    /// replica's lease and with no upload of this service in flight (the shipper's own
    /// thread, before it ships). Answers how many were deleted; 0 for other stores.
    pub fn remove_abandoned_uploads(&self) -> Result<usize, ReplicaError> {
        let ReplicaTarget::File { path } = self.settings.target() else {
            return Ok(0);
        };
        let backups = path.join(self.layout.backups().as_ref());
        let entries = match std::fs::read_dir(&backups) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => {
                return Err(ReplicaError::Io {
                    path: backups,
                    source: e,
                })
            }
        };
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(ReplicaError::io(&backups))?;
            let file_name = entry.file_name();
            let Some((object, upload)) = file_name.to_str().and_then(|n| n.rsplit_once('#')) else {
                continue;
            };
            let staged = !upload.is_empty() && upload.bytes().all(|b| b.is_ascii_digit());
            if staged
                && self
                    .layout
                    .parse(&self.layout.backups().join(object))
                    .is_some()
            {
                std::fs::remove_file(entry.path()).map_err(ReplicaError::io(entry.path()))?;
                removed += 1;
            }
        }
        if removed > 0 {
            crate::db::durable::sync_dir(&backups).map_err(ReplicaError::io(&backups))?;
        }
        Ok(removed)
    }

    /// An object store error, with this replica's name.
    pub fn error(&self, source: object_store::Error) -> ReplicaError {
        ReplicaError::Store {
            replica: self.settings.name.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abandoned_uploads_of_dbwarden_objects_are_deleted_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[[replicas]]\nname = \"nas\"\nurl = \"file://{}\"\nencryption = \"none\"\n",
                dir.path().join("nas").display()
            ),
        )
        .expect("config");
        let settings = crate::config::Settings::load_with_env(
            &crate::config::ConfigSource::Explicit(config),
            [(
                "DBWARDEN__DATABASE__PATH".to_string(),
                dir.path().join("events.db").display().to_string(),
            )],
        );
        let settings = settings.expect("settings");
        let replica = Replica::open(&settings.replicas[0]).expect("open");
        let backups = dir.path().join("nas/backups");
        std::fs::create_dir_all(&backups).expect("dir");
        let name = "dbwarden-20261202T101500Z.db";
        let ours = [
            format!("{name}.zst.age#1"),
            format!("{name}.zst#12"),
            format!("{name}.manifest.json#3"),
        ];
        let kept = [
            format!("{name}.zst.age"),
            format!("{name}.zst.age#"),
            format!("{name}.zst.age#x1"),
            "holiday.tar#1".to_string(),
            "dbwarden-garbage.db.zst#1".to_string(),
        ];
        for file in ours.iter().chain(&kept) {
            std::fs::write(backups.join(file), "x").expect("write");
        }
        assert_eq!(replica.remove_abandoned_uploads().expect("removed"), 3);
        let mut left: Vec<String> = std::fs::read_dir(&backups)
            .expect("list")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        left.sort();
        let mut expected = kept.to_vec();
        expected.sort();
        assert_eq!(left, expected);
    }
}

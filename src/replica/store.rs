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

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
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
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match settings.target() {
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
                (Arc::new(store), prefix.clone())
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
                (Arc::new(store), prefix.clone())
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
                (Arc::new(store), prefix.clone())
            }
            ReplicaTarget::File { path } => {
                crate::db::create_private_dir(path).map_err(ReplicaError::io(path))?;
                // fsync on: a copy on another disk must survive that disk's power loss
                // as an object acknowledged by S3 would.
                let store = LocalFileSystem::new_with_prefix(path)
                    .map_err(|e| failed(e.to_string()))?
                    .with_fsync(true);
                (Arc::new(store), String::new())
            }
        };
        Ok(Replica {
            settings: settings.clone(),
            store,
            layout: Layout::new(&prefix),
        })
    }

    /// An object store error, with this replica's name.
    pub fn error(&self, source: object_store::Error) -> ReplicaError {
        ReplicaError::Store {
            replica: self.settings.name.clone(),
            source,
        }
    }
}

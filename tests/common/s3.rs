//! A real S3 server for the tests, behind a [`FaultProxy`]: by default the `s3s`
//! protocol implementation over the `s3s-fs` file-system backend, served by hyper in
//! the test process with SigV4 authentication; with `DBWARDEN_TEST_S3_ENDPOINT` set
//! (`.ci/run` sets it to a moto server on loopback), that server instead: a second,
//! independent implementation of S3's semantics. dbwarden talks to the proxy over HTTP
//! exactly as to any S3 service.
//!
//! Each server has a bucket of its own, so tests sharing one external server never see
//! each other's objects. The test reads and changes objects behind dbwarden's back
//! through the S3 API itself (never the backend's files), so the same tests run
//! against either server. "Stopping" the server is the proxy refusing connections.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::TryStreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::task::JoinSet;

#[path = "fault_proxy.rs"]
mod fault_proxy;
pub use fault_proxy::{Fault, FaultProxy};

pub const ACCESS_KEY: &str = "dbwarden-test";
pub const SECRET_KEY: &str = "dbwarden-test-secret";
/// An external S3 server to test against instead of the in-process one.
pub const ENDPOINT_ENV: &str = "DBWARDEN_TEST_S3_ENDPOINT";

static BUCKETS: AtomicUsize = AtomicUsize::new(0);

pub struct S3Server {
    /// This server's bucket.
    pub bucket: String,
    pub proxy: FaultProxy,
    /// A client straight to the server (not through the proxy), for the test's own
    /// reads and changes.
    client: AmazonS3,
    backend_addr: SocketAddr,
    backend: Option<tokio::task::JoinHandle<()>>,
}

impl S3Server {
    /// A server with a fresh bucket named after `bucket`; the in-process one stores
    /// its files under `root`.
    pub async fn start(root: &Path, bucket: &str) -> S3Server {
        let bucket = format!(
            "{bucket}-{}-{}",
            std::process::id(),
            BUCKETS.fetch_add(1, Ordering::Relaxed)
        );
        let (backend_addr, backend) = match std::env::var(ENDPOINT_ENV) {
            Ok(endpoint) => {
                create_bucket(&endpoint, &bucket).await;
                let addr = endpoint
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .parse()
                    .unwrap_or_else(|e| panic!("{ENDPOINT_ENV}={endpoint}: {e}"));
                (addr, None)
            }
            Err(_) => {
                std::fs::create_dir_all(root.join(&bucket)).expect("bucket directory");
                let (addr, task) = serve_in_process(root).await;
                (addr, Some(task))
            }
        };
        // As dbwarden does (`replica::store`): one crypto provider, ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = AmazonS3Builder::new()
            .with_bucket_name(&bucket)
            .with_endpoint(format!("http://{backend_addr}"))
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .build()
            .expect("test client");
        S3Server {
            bucket,
            proxy: FaultProxy::start(backend_addr).await,
            client,
            backend_addr,
            backend,
        }
    }

    /// Where dbwarden is pointed: the proxy.
    pub fn endpoint(&self) -> String {
        self.proxy.endpoint()
    }

    /// The server itself, without the proxy (benchmarks).
    pub fn direct_endpoint(&self) -> String {
        format!("http://{}", self.backend_addr)
    }

    /// The server goes away: connections are refused, open ones cut.
    pub async fn stop(&self) {
        self.proxy.set(Fault::Refuse);
    }

    /// The server is back, with everything it held.
    pub async fn restart(&self) {
        self.proxy.set(Fault::None);
    }

    pub fn set_fault(&self, fault: Fault) {
        self.proxy.set(fault);
    }

    pub async fn read(&self, key: &str) -> Option<Vec<u8>> {
        match self.client.get(&ObjectPath::from(key)).await {
            Ok(got) => Some(got.bytes().await.expect("object bytes").to_vec()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("reading {key}: {e}"),
        }
    }

    pub async fn write(&self, key: &str, bytes: Vec<u8>) {
        self.client
            .put(&ObjectPath::from(key), bytes.into())
            .await
            .unwrap_or_else(|e| panic!("writing {key}: {e}"));
    }

    /// Whether the server still holds the multipart upload `upload_id` of `key`: a
    /// part sent to it is accepted (S3 answers NoSuchUpload once it was aborted or
    /// completed). Sends a small part, so only for uploads being thrown away anyway.
    pub async fn upload_is_open(&self, key: &str, upload_id: &str) -> bool {
        use object_store::multipart::MultipartStore;
        self.client
            .put_part(
                &ObjectPath::from(key),
                &upload_id.to_string(),
                9_999,
                bytes::Bytes::from_static(b"probe").into(),
            )
            .await
            .is_ok()
    }

    pub async fn exists(&self, key: &str) -> bool {
        self.read(key).await.is_some()
    }

    /// Flips the lowest bit of the byte at `offset` (from the end when negative).
    pub async fn flip_byte(&self, key: &str, offset: i64) {
        let mut bytes = self.read(key).await.unwrap_or_else(|| panic!("no {key}"));
        let at = if offset < 0 {
            bytes.len() - offset.unsigned_abs() as usize
        } else {
            offset as usize
        };
        bytes[at] ^= 0x01;
        self.write(key, bytes).await;
    }

    pub async fn remove(&self, key: &str) {
        self.client
            .delete(&ObjectPath::from(key))
            .await
            .unwrap_or_else(|e| panic!("deleting {key}: {e}"));
    }

    /// Every object under `prefix`, with its last-modified time.
    pub async fn list(&self, prefix: &str) -> Vec<object_store::ObjectMeta> {
        self.client
            .list(Some(&ObjectPath::from(prefix)))
            .try_collect()
            .await
            .expect("list")
    }

    /// Deletes everything under `prefix`, as someone emptying the bucket would.
    pub async fn remove_all(&self, prefix: &str) {
        for meta in self.list(prefix).await {
            self.remove(meta.location.as_ref()).await;
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(backend) = self.backend.take() {
            backend.abort();
        }
    }
}

/// s3s over s3s-fs on a loopback port.
async fn serve_in_process(root: &Path) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let fs = s3s_fs::FileSystem::new(root).expect("s3s-fs root");
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = builder.build();
    let task = tokio::spawn(async move {
        // Connections die with the accept task.
        let mut connections = JoinSet::new();
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let service = service.clone();
            connections.spawn(async move {
                let _ = ConnBuilder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    (addr, task)
}

/// Creates `bucket` on an external server (moto takes unsigned requests).
async fn create_bucket(endpoint: &str, bucket: &str) {
    let url = format!("{}/{bucket}", endpoint.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .put(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("creating {url}: {e}"));
    assert!(
        response.status().is_success(),
        "creating {url}: {}",
        response.status()
    );
}

//! A TCP proxy in front of an S3 server that injects the faults a real network and a
//! real provider produce: refused connections (the server is down), HTTP errors (500,
//! 503, 403) answered instead of the server, and slow answers. Changing the fault cuts
//! every open connection, so pooled keep-alive connections see the new one at once.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Every byte passes.
    None,
    /// Connections are closed as soon as they are accepted.
    Refuse,
    /// Every request is answered with this status (and an S3 error body).
    Status(u16),
    /// Each connection waits this long before it is passed on.
    Delay(Duration),
    /// What clients send passes at most this many bytes per second (a slow uplink):
    /// an upload is in flight long enough to cut it in the middle.
    Throttle(u64),
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    fault: watch::Sender<Fault>,
    /// Requests answered with a fault status, and connections refused.
    pub faulted: Arc<AtomicUsize>,
    /// Connections passed on to the server.
    pub passed: Arc<AtomicUsize>,
    /// Bytes passed from the client to the server (requests and uploads).
    pub sent_bytes: Arc<AtomicU64>,
    /// The request line (`PUT /bucket/key`) of every request passed on, in order: what
    /// a test that expects silence can show when it is not.
    requests: Arc<Mutex<Vec<String>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(backend: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (fault, faults) = watch::channel(Fault::None);
        let faulted = Arc::new(AtomicUsize::new(0));
        let passed = Arc::new(AtomicUsize::new(0));
        let sent_bytes = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let counters = Counters {
            faulted: faulted.clone(),
            passed: passed.clone(),
            sent_bytes: sent_bytes.clone(),
            requests: requests.clone(),
        };
        let accept = tokio::spawn(accept_loop(listener, backend, faults, counters));
        FaultProxy {
            addr,
            fault,
            faulted,
            passed,
            sent_bytes,
            requests,
            accept,
        }
    }

    /// Request lines passed on so far (see [`FaultProxy::requests`]'s field).
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// From now on, `fault`; open connections are cut.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[derive(Clone)]
struct Counters {
    faulted: Arc<AtomicUsize>,
    passed: Arc<AtomicUsize>,
    sent_bytes: Arc<AtomicU64>,
    requests: Arc<Mutex<Vec<String>>>,
}

async fn accept_loop(
    listener: TcpListener,
    backend: SocketAddr,
    faults: watch::Receiver<Fault>,
    counters: Counters,
) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            continue;
        };
        let mut faults = faults.clone();
        let fault = *faults.borrow_and_update();
        let counters = counters.clone();
        tokio::spawn(async move {
            let serve = async {
                match fault {
                    Fault::Refuse => {
                        counters.faulted.fetch_add(1, Ordering::Relaxed);
                        drop(socket);
                    }
                    Fault::Status(status) => answer_with(socket, status, &counters.faulted).await,
                    Fault::Delay(delay) => {
                        tokio::time::sleep(delay).await;
                        pass(socket, backend, &counters, None).await;
                    }
                    Fault::Throttle(rate) => pass(socket, backend, &counters, Some(rate)).await,
                    Fault::None => pass(socket, backend, &counters, None).await,
                }
            };
            tokio::select! {
                () = serve => {}
                _ = faults.changed() => {}
            }
        });
    }
}

async fn pass(socket: TcpStream, backend: SocketAddr, counters: &Counters, rate: Option<u64>) {
    let Ok(server) = TcpStream::connect(backend).await else {
        return;
    };
    counters.passed.fetch_add(1, Ordering::Relaxed);
    let (mut from_client, mut to_client) = socket.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let upstream = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut requests = RequestReader::default();
        loop {
            match from_client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_server.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    counters.sent_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    let lines = requests.feed(&buf[..n]);
                    if let Ok(mut log) = counters.requests.lock() {
                        log.extend(lines);
                    }
                    if let Some(rate) = rate {
                        tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
                    }
                }
            }
        }
        let _ = to_server.shutdown().await;
    };
    let downstream = async {
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
        let _ = to_client.shutdown().await;
    };
    tokio::join!(upstream, downstream);
}

/// Follows the requests on one connection as its bytes pass: each head, then the
/// `Content-Length` bytes of its body. A body sent in chunks (no length) ends what it
/// can follow on that connection, written as one line saying so.
#[derive(Default)]
struct RequestReader {
    head: Vec<u8>,
    body_left: usize,
    lost: bool,
}

impl RequestReader {
    /// The request lines that begin in `bytes`.
    fn feed(&mut self, mut bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        while !self.lost && !bytes.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let before = self.head.len();
            self.head.extend_from_slice(bytes);
            let Some(end) = blank_line_at(&self.head) else {
                break;
            };
            // The head ends in this read (it was not complete before it): what follows
            // is its body, then the next request.
            bytes = &bytes[end + 4 - before..];
            let head = String::from_utf8_lossy(&self.head[..end]).into_owned();
            self.head.clear();
            let request = head.lines().next().unwrap_or_default();
            // `PUT /bucket/key HTTP/1.1` without the version.
            lines.push(
                request
                    .rsplit_once(' ')
                    .map_or(request, |(r, _)| r)
                    .to_string(),
            );
            if header(&head, "transfer-encoding").is_some() {
                lines.push("(a chunked body: the rest of this connection not followed)".into());
                self.lost = true;
            }
            self.body_left = content_length(&head);
        }
        lines
    }
}

/// Where a request's head ends (its blank line), if it has arrived.
fn blank_line_at(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n")
}

/// The value of header `name` in a request's `head`.
fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// The length of the body that follows `head` (0 without `Content-Length`).
fn content_length(head: &str) -> usize {
    header(head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Reads each request (head, then a `Content-Length` body) and answers `status`.
async fn answer_with(mut socket: TcpStream, status: u16, faulted: &AtomicUsize) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let head_end = loop {
            if let Some(end) = blank_line_at(&buf) {
                break end + 4;
            }
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let length = content_length(&String::from_utf8_lossy(&buf[..head_end]));
        while buf.len() < head_end + length {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + length);
        faulted.fetch_add(1, Ordering::Relaxed);
        let code = match status {
            403 => "AccessDenied",
            503 => "SlowDown",
            _ => "InternalError",
        };
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test</Message></Error>"
        );
        let response = format!(
            "HTTP/1.1 {status} Injected\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if socket.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

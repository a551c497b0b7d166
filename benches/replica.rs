//! Shipping a verified backup of 1 GB or more off the machine, in one run, side by side:
//!
//! - dbwarden's upload (zstd + age + multipart, 8 MiB parts, 4 in flight) to an S3 server
//!   on loopback (s3s over s3s-fs, in this process) against `rclone copyto` of the same
//!   file to the same server with the same part size and concurrency;
//! - dbwarden to a `file://` replica against `cp` + fsync to the same directory;
//! - restore of that copy from the S3 server (download, decrypt, decompress, the
//!   checks of a restore: SHA-256 of the stored and of the restored bytes,
//!   `integrity_check`, event count) against `rclone copyto` back;
//! - the writer's append latency (one event per transaction on the live database,
//!   p50/p99) while dbwarden ships, against idle;
//! - dbwarden's peak RSS while shipping and while restoring (each runs in a child
//!   process of this benchmark, so the server's memory is not counted). The shipping
//!   child lowers its priority as the service's shipper thread does; the S3 server
//!   (in this process, at normal priority) shares the two cores with the writer, as a
//!   MinIO on the same box would, but keeps its files in `/dev/shm`
//!   (`DBWARDEN_BENCH_S3_DIR` to change it), as a remote replica's writes never reach
//!   this disk.
//!
//! The events carry random hex, which zstd shrinks to about half: closer to a worst
//! case than Healarr's JSON (file paths and messages), which shrinks far more.
//!
//! ```text
//! cargo bench --bench replica                            # ~1.1 GB database
//! DBWARDEN_BENCH_DB_MB=200 cargo bench --bench replica   # smaller
//! DBWARDEN_BENCH_SERVER_NICE=1 cargo bench --bench replica   # the server niced too
//! ```
//! Needs Debian's `rclone`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use dbwarden::backup::{catalog, take_backup};
use dbwarden::config::{ConfigSource, Settings};
use dbwarden::db;
use dbwarden::replica::{self, Replica};
use tokio_util::sync::CancellationToken;

mod common;
use common::{build_with, fsync, start_load, stop_load, timed};

#[path = "../tests/common/s3.rs"]
mod s3;

const ROLE: &str = "DBWARDEN_BENCH_ROLE";

/// The benchmark's settings: its database, its backups, two replicas.
fn settings(dir: &Path) -> Settings {
    Settings::load_with_env(
        &ConfigSource::Explicit(dir.join("config.toml")),
        [
            (
                "DBWARDEN__DATABASE__PATH".to_string(),
                dir.join("big.db").display().to_string(),
            ),
            (
                "DBWARDEN__BACKUP__DIR".to_string(),
                dir.join("backups").display().to_string(),
            ),
        ],
    )
    .expect("settings")
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// In a child process: ship the backup to the replica `which`, or fetch its newest
/// copy; prints "<seconds> <peak RSS MB> <bytes>".
fn child(role: &str, dir: &Path) {
    // As the service's shipper thread does, before any thread of the runtime exists.
    if role.starts_with("ship") {
        replica::lower_this_threads_priority(dbwarden::config::CpuPriority::Idle);
    }
    let settings = settings(dir);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (which, fetch) = match role {
        "ship-s3" => (1, false),
        "ship-file" => (0, false),
        "fetch-s3" => (1, true),
        other => panic!("unknown role {other}"),
    };
    let replica = Replica::open(&settings.replicas[which]).expect("open replica");
    let started = Instant::now();
    let bytes = if fetch {
        let copies = runtime
            .block_on(replica::catalog::list(&replica))
            .expect("list");
        let copy = copies.last().expect("a copy");
        let identities = replica::drill::identities(&replica).expect("identity");
        let fetched = runtime
            .block_on(replica::fetch::fetch(
                &replica,
                copy,
                &identities,
                &dir.join("restored"),
            ))
            .expect("fetch");
        fetched.facts.size_bytes
    } else {
        let local = catalog::list(&settings.backup.dir).expect("local backups");
        let manifest = local.last().expect("a backup");
        runtime
            .block_on(replica::ship::ship(
                &replica,
                &settings.backup.dir,
                manifest,
                &CancellationToken::new(),
            ))
            .expect("ship")
            .object_bytes
    };
    println!(
        "{} {} {bytes}",
        started.elapsed().as_secs_f64(),
        peak_rss_mb()
    );
}

/// Runs this benchmark as a child in `role`: (seconds, peak RSS MB, bytes).
fn run_child(role: &str, dir: &Path) -> (f64, f64, u64) {
    let out = Command::new(std::env::current_exe().expect("exe"))
        .env(ROLE, role)
        .env("DBWARDEN_BENCH_DIR", dir)
        .output()
        .expect("child");
    assert!(
        out.status.success(),
        "{role}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = text.split_whitespace().collect();
    (
        fields[0].parse().expect("secs"),
        fields[1].parse().expect("rss"),
        fields[2].parse().expect("bytes"),
    )
}

fn rclone(args: &[&str], endpoint: &str) -> Duration {
    let (status, took) = timed(|| {
        Command::new("rclone")
            // rclone's S3 backend refuses to start with a CA bundle set (as on these
            // machines); the server here is plain HTTP anyway.
            .env_remove("AWS_CA_BUNDLE")
            .args(args)
            .args(["--s3-chunk-size", "8M", "--s3-upload-concurrency", "4"])
            .env("RCLONE_CONFIG_BENCH_TYPE", "s3")
            .env("RCLONE_CONFIG_BENCH_PROVIDER", "Other")
            .env("RCLONE_CONFIG_BENCH_ENDPOINT", endpoint)
            .env("RCLONE_CONFIG_BENCH_ACCESS_KEY_ID", s3::ACCESS_KEY)
            .env("RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY", s3::SECRET_KEY)
            .env("RCLONE_CONFIG_BENCH_REGION", "us-east-1")
            .status()
            .expect("rclone (apt-get install rclone)")
    });
    assert!(status.success(), "rclone {args:?}");
    took
}

fn main() {
    if let (Ok(role), Ok(dir)) = (std::env::var(ROLE), std::env::var("DBWARDEN_BENCH_DIR")) {
        return child(&role, Path::new(&dir));
    }
    let mb: u64 = std::env::var("DBWARDEN_BENCH_DB_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1100);
    let dir = tempfile::tempdir_in(std::env::var("TMPDIR").unwrap_or_else(|_| "/var/tmp".into()))
        .expect("tempdir");
    // DBWARDEN_BENCH_SERVER_NICE=1: the server yields to the writer too, so that what
    // is left is dbwarden's own cost (a remote replica uses no CPU here at all).
    let server_nice = std::env::var("DBWARDEN_BENCH_SERVER_NICE").is_ok_and(|v| v == "1");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            if server_nice {
                replica::lower_this_threads_priority(dbwarden::config::CpuPriority::Idle);
            }
        })
        .build()
        .expect("runtime");
    // The server's files in memory (/dev/shm): a real replica is another machine, and
    // its writes must not land in this disk's journal, where every fsync of the
    // writer would wait for them.
    let server_root = tempfile::tempdir_in(
        std::env::var("DBWARDEN_BENCH_S3_DIR").unwrap_or_else(|_| "/dev/shm".into()),
    )
    .expect("server dir");
    let server = runtime.block_on(s3::S3Server::start(server_root.path(), "bench"));
    let endpoint = server.direct_endpoint();
    let identity = age::x25519::Identity::generate();
    let identity_file = dir.path().join("identity.txt");
    {
        use age::secrecy::ExposeSecret;
        std::fs::write(
            &identity_file,
            format!("{}\n", identity.to_string().expose_secret()),
        )
        .expect("identity");
    }
    let nas = dir.path().join("nas");
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            r#"
[[replicas]]
name = "nas"
url = "file://{nas}"
age_recipients = ["{recipient}"]

[[replicas]]
name = "s3"
url = "s3://{bucket}/bench"
endpoint = "{endpoint}"
allow_http = true
access_key_id = "{access}"
secret_access_key = "{secret}"
age_recipients = ["{recipient}"]
age_identity_file = "{identity}"
"#,
            nas = nas.display(),
            recipient = identity.to_public(),
            bucket = server.bucket,
            access = s3::ACCESS_KEY,
            secret = s3::SECRET_KEY,
            identity = identity_file.display(),
        ),
    )
    .expect("config");
    let settings = settings(dir.path());

    // Random hex in each event: about 2:1 for zstd.
    let pad = |n: usize| {
        let mut x = (n as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut s = String::with_capacity(912);
        while s.len() < 900 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.push_str(&format!("{x:016x}"));
        }
        s
    };
    let (size, build_time) = timed(|| build_with(&settings, mb, pad));
    dbwarden::backup::ensure_dir(&settings.backup.dir).expect("backup dir");
    let (manifest, backup_time) =
        timed(|| take_backup(&settings.database, &settings.backup, &|_| {}).expect("backup"));
    let backup = settings.backup.dir.join(&manifest.name);
    println!(
        "SQLite {}; database {:.2} GB built in {:.0} s; verified backup {:.2} GB in {:.1} s",
        rusqlite::version(),
        size as f64 / 1e9,
        build_time.as_secs_f64(),
        manifest.size_bytes as f64 / 1e9,
        backup_time.as_secs_f64()
    );

    let load = start_load(&settings);
    std::thread::sleep(Duration::from_secs(10));
    let idle = stop_load(load);

    let load = start_load(&settings);
    let (ship_secs, ship_rss, stored) = run_child("ship-s3", dir.path());
    let during = stop_load(load);
    let rclone_up = rclone(
        &[
            "copyto",
            backup.to_str().expect("utf-8"),
            &format!("bench:{}/rclone/{}", server.bucket, manifest.name),
        ],
        &endpoint,
    );
    let (file_secs, _, _) = run_child("ship-file", dir.path());
    let cp_target = nas.join("cp-copy.db");
    let (_, cp_time) = timed(|| {
        std::fs::copy(&backup, &cp_target).expect("cp");
        fsync(&cp_target);
        fsync(&nas);
    });

    let (fetch_secs, fetch_rss, restored_bytes) = run_child("fetch-s3", dir.path());
    let restored = dir.path().join("restored").join(&manifest.name);
    let (_, integrity_time) = timed(|| db::integrity::verify_file(&restored).expect("verified"));
    let rclone_down_target = dir.path().join("rclone-back.db");
    let rclone_down = rclone(
        &[
            "copyto",
            &format!("bench:{}/rclone/{}", server.bucket, manifest.name),
            rclone_down_target.to_str().expect("utf-8"),
        ],
        &endpoint,
    );
    assert_eq!(restored_bytes, manifest.size_bytes);

    let gb = manifest.size_bytes as f64 / 1e9;
    println!(
        "\nbackup {gb:.2} GB, stored {:.2} GB after zstd + age ({:.0}%)",
        stored as f64 / 1e9,
        stored as f64 * 100.0 / manifest.size_bytes as f64
    );
    println!("| step | time | ratio | peak RSS |");
    println!("|---|---:|---:|---:|");
    println!(
        "| dbwarden upload to S3 (zstd + age + multipart) | {ship_secs:.2} s | {:.2}× rclone | {ship_rss:.0} MB |",
        ship_secs / rclone_up.as_secs_f64()
    );
    println!(
        "| `rclone copyto` up, same server | {:.2} s | 1.00× | — |",
        rclone_up.as_secs_f64()
    );
    println!(
        "| dbwarden to `file://` | {file_secs:.2} s | {:.2}× cp | — |",
        file_secs / cp_time.as_secs_f64()
    );
    println!(
        "| `cp` + fsync to the same directory | {:.2} s | 1.00× | — |",
        cp_time.as_secs_f64()
    );
    println!(
        "| dbwarden restore from S3 (download, decrypt, decompress, SHA-256s, integrity_check, counts) | {fetch_secs:.2} s | {:.2}× rclone | {fetch_rss:.0} MB |",
        fetch_secs / rclone_down.as_secs_f64()
    );
    println!(
        "| of which `integrity_check` of the restored file (run again alone) | {:.2} s | — | — |",
        integrity_time.as_secs_f64()
    );
    println!(
        "| `rclone copyto` back | {:.2} s | 1.00× | — |",
        rclone_down.as_secs_f64()
    );
    println!(
        "\nwriter, one event per transaction every 2 ms: idle p50 {:.2} ms p99 {:.2} ms ({} appends); while shipping p50 {:.2} ms p99 {:.2} ms ({} appends): p99 {:.2}× idle",
        idle.p50.as_secs_f64() * 1e3,
        idle.p99.as_secs_f64() * 1e3,
        idle.appends,
        during.p50.as_secs_f64() * 1e3,
        during.p99.as_secs_f64() * 1e3,
        during.appends,
        during.p99.as_secs_f64() / idle.p99.as_secs_f64()
    );
    drop(server);
}

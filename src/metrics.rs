//! Prometheus metrics (`GET /metrics`, text format 0.0.4).
//!
//! Each service owns its own registry (no process-wide recorder), so several services
//! in one process, as in the tests, never mix their figures. Two kinds of metrics:
//! - **live** ones, counted where things happen: events appended, write batches and
//!   commit latency, refused writes, HTTP requests, checkpoints, backups, integrity
//!   checks, job runs;
//! - **scrape-time** ones, read from state that already exists when `/metrics` is asked:
//!   writes in flight, WAL size, the newest verified backup, notifications per channel,
//!   corruptions per bucket (from the count table, never the slow view).
//!
//! Names follow Prometheus conventions: a `dbwarden_` prefix, base units in the name
//! (`_seconds`, `_bytes`), `_total` on counters.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Live metrics, shared by every part of one service.
pub struct Metrics {
    registry: Registry,
    pub events_appended: IntCounterVec,
    pub write_batch_requests: Histogram,
    pub write_commit_seconds: Histogram,
    pub writes_refused: IntCounterVec,
    pub http_requests: IntCounterVec,
    pub http_request_seconds: HistogramVec,
    pub checkpoints: IntCounterVec,
    pub backups: IntCounterVec,
    pub backup_seconds: Histogram,
    pub integrity_checks: IntCounterVec,
    pub integrity_check_seconds: HistogramVec,
    pub job_runs: IntCounterVec,
    pub job_run_seconds: HistogramVec,
}

/// Latency buckets from 100 µs to 10 s.
const LATENCY: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Durations of maintenance work, from 10 ms to an hour.
const LONG: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
/// Requests per committed batch.
const BATCH: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
) -> Result<Histogram, prometheus::Error> {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> Result<HistogramVec, prometheus::Error> {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    pub fn new() -> Result<Metrics, MetricsError> {
        let r = Registry::new();
        Ok(Metrics {
            events_appended: counter_vec(&r, "dbwarden_events_appended_total", "Events committed, by aggregate type.", &["aggregate_type"])?,
            write_batch_requests: histogram(&r, "dbwarden_write_batch_requests", "Write requests committed together in one transaction.", BATCH)?,
            write_commit_seconds: histogram(&r, "dbwarden_write_commit_duration_seconds", "Time to write and commit one batch (synchronous=FULL).", LATENCY)?,
            writes_refused: counter_vec(&r, "dbwarden_writes_refused_total", "Write requests not committed, by reason (busy, invalid, disk_full, storage, unavailable).", &["reason"])?,
            http_requests: counter_vec(&r, "dbwarden_http_requests_total", "HTTP requests answered, by route, method and status.", &["route", "method", "status"])?,
            http_request_seconds: histogram_vec(&r, "dbwarden_http_request_duration_seconds", "HTTP request latency, by route and method.", &["route", "method"], LATENCY)?,
            checkpoints: counter_vec(&r, "dbwarden_checkpoints_total", "Scheduled checkpoints, by mode (passive, restart) and result (ok, busy, error).", &["mode", "result"])?,
            backups: counter_vec(&r, "dbwarden_backups_total", "Backups attempted, by outcome (ok, failed).", &["outcome"])?,
            backup_seconds: histogram(&r, "dbwarden_backup_duration_seconds", "Time to take one verified backup.", LONG)?,
            integrity_checks: counter_vec(&r, "dbwarden_integrity_checks_total", "Integrity checks, by kind (quick, full) and outcome (ok, failed, error).", &["kind", "outcome"])?,
            integrity_check_seconds: histogram_vec(&r, "dbwarden_integrity_check_duration_seconds", "Integrity check duration, by kind.", &["kind"], LONG)?,
            job_runs: counter_vec(&r, "dbwarden_job_runs_total", "Job runs, by job and outcome (ok, failed, timed_out, cancelled).", &["job", "outcome"])?,
            job_run_seconds: histogram_vec(&r, "dbwarden_job_run_duration_seconds", "Job run duration, by job.", &["job"], LONG)?,
            registry: r,
        })
    }

    /// Counts a refused write by its kind.
    pub fn refused(&self, reason: &str) {
        self.writes_refused.with_label_values(&[reason]).inc();
    }
}

/// Values read when `/metrics` is asked.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub writes_in_flight: i64,
    /// WAL content not yet checkpointed, and the frames in the WAL (see
    /// [`crate::db::wal`]); the `-wal` file's size beside them.
    pub wal_bytes: Option<i64>,
    pub wal_frames: Option<i64>,
    pub wal_file_bytes: Option<i64>,
    pub database_bytes: Option<i64>,
    /// (size in bytes, seconds since it was verified) of the newest verified backup.
    pub newest_backup: Option<(i64, i64)>,
    pub backups_stored: i64,
    /// Whether backups are being taken as health requires (`None`: unknown).
    pub backups_healthy: Option<bool>,
    /// Whether the last integrity check of some kind failed.
    pub integrity_failing: bool,
    /// Whether a reader starved the last scheduled checkpoint.
    pub checkpoint_starved: Option<bool>,
    /// (channel, sent, failed, dropped)
    pub notifications: Vec<(String, u64, u64, u64)>,
    /// (bucket, corruptions)
    pub corruptions: Vec<(String, i64)>,
    pub replicas: Vec<ReplicaFigures>,
    pub replication: Option<ReplicationFigures>,
}

/// One replica's figures, as its shipper counts them since the service started.
#[derive(Debug, Default)]
pub struct ReplicaFigures {
    pub name: String,
    /// Seconds since the backup of the newest complete copy there was taken.
    pub newest_copy_age_secs: Option<i64>,
    pub complete_copies: i64,
    pub shipped_bytes: u64,
    pub shipped_copies: u64,
    pub failures: u64,
    pub stale: bool,
    /// (passed, seconds since) of the last drill that reached a verdict.
    pub last_drill: Option<(bool, i64)>,
    /// Continuous replication to it, when it streams.
    pub stream: Option<StreamFigures>,
}

/// One streaming replica's figures.
#[derive(Debug, Default)]
pub struct StreamFigures {
    pub lag_seconds: f64,
    pub lag_bytes: u64,
    pub lagging: bool,
    pub snapshots: u64,
    pub segments: u64,
    pub bytes: u64,
    /// Object PUTs (snapshots, their manifests, segments).
    pub puts: u64,
    /// Requests taking or renewing the lease.
    pub lease_requests: u64,
    pub failures: u64,
    /// Merged segments compaction wrote, the segments they replaced, its listings and
    /// deletions, and its failures.
    pub compactions: u64,
    pub segments_compacted: u64,
    pub compaction_requests: u64,
    pub compaction_failures: u64,
}

/// The tailer's figures, when replication runs.
#[derive(Debug, Default)]
pub struct ReplicationFigures {
    pub generations: u64,
    pub gaps: u64,
    /// Unix time of the last gap found.
    pub last_gap_at: Option<i64>,
    /// Writes refused (503) because an `ack_writes` replica did not take them.
    pub ack_refused: u64,
    /// Writes answered on their local commit alone after a timeout (`ack_fallback_local`).
    pub ack_fell_back: u64,
}

fn gauge(r: &Registry, name: &str, help: &str, value: i64) -> Result<(), prometheus::Error> {
    let g = IntGauge::new(name, help)?;
    g.set(value);
    r.register(Box::new(g))
}

impl Metrics {
    /// The text exposition of the live metrics plus `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> Result<String, MetricsError> {
        // Scrape-time values go into a registry of their own, built for this scrape.
        let now = Registry::new();
        gauge(
            &now,
            "dbwarden_writer_in_flight_requests",
            "Write requests sent to the DbWriter and not answered yet (its queue).",
            snapshot.writes_in_flight,
        )?;
        if let Some(v) = snapshot.wal_bytes {
            gauge(
                &now,
                "dbwarden_wal_bytes",
                "WAL content not yet checkpointed into the database (what health reports; the measure that matters).",
                v,
            )?;
        }
        if let Some(v) = snapshot.wal_file_bytes {
            gauge(
                &now,
                "dbwarden_wal_file_bytes",
                "Size of the -wal file (it keeps its high-water size after a checkpoint).",
                v,
            )?;
        }
        if let Some(v) = snapshot.wal_frames {
            gauge(&now, "dbwarden_wal_frames", "Frames in the WAL now.", v)?;
        }
        if let Some(v) = snapshot.database_bytes {
            gauge(
                &now,
                "dbwarden_database_bytes",
                "Size of the database file.",
                v,
            )?;
        }
        gauge(
            &now,
            "dbwarden_backups_stored",
            "Verified backups under their final names.",
            snapshot.backups_stored,
        )?;
        gauge(
            &now,
            "dbwarden_integrity_failing",
            "1 while the last integrity check of some kind failed (backups are held back).",
            i64::from(snapshot.integrity_failing),
        )?;
        if let Some(starved) = snapshot.checkpoint_starved {
            gauge(
                &now,
                "dbwarden_checkpoint_starved",
                "1 when the last checkpoint could not finish because a reader held an old snapshot.",
                i64::from(starved),
            )?;
        }
        if let Some(healthy) = snapshot.backups_healthy {
            gauge(
                &now,
                "dbwarden_backups_healthy",
                "1 while backups are taken as health requires; 0 while health is degraded by them (latest attempt failed, newest verified backup too old, or newest backup bad).",
                i64::from(healthy),
            )?;
        }
        if let Some((size, age)) = snapshot.newest_backup {
            gauge(
                &now,
                "dbwarden_last_verified_backup_bytes",
                "Size of the newest verified backup.",
                size,
            )?;
            gauge(
                &now,
                "dbwarden_last_verified_backup_age_seconds",
                "Seconds since the newest backup was verified.",
                age,
            )?;
        }
        let notified = IntCounterVec::new(
            Opts::new(
                "dbwarden_notifications_total",
                "Notifications per channel, by result (sent, failed, dropped).",
            ),
            &["channel", "result"],
        )?;
        for (channel, sent, failed, dropped) in &snapshot.notifications {
            for (result, n) in [("sent", sent), ("failed", failed), ("dropped", dropped)] {
                let c: IntCounter = notified.with_label_values(&[channel, result]);
                c.inc_by(*n);
            }
        }
        now.register(Box::new(notified))?;
        let buckets = IntGaugeVec::new(
            Opts::new(
                "dbwarden_corruptions",
                "Corruptions per bucket, from the count table.",
            ),
            &["bucket"],
        )?;
        for (bucket, n) in &snapshot.corruptions {
            buckets.with_label_values(&[bucket]).set(*n);
        }
        now.register(Box::new(buckets))?;
        register_replicas(&now, &snapshot.replicas)?;
        register_streams(&now, &snapshot.replicas)?;
        if let Some(replication) = &snapshot.replication {
            let counter = |name: &str, help: &str, value: u64| {
                let c = IntCounter::new(name, help)?;
                c.inc_by(value);
                now.register(Box::new(c))
            };
            counter(
                "dbwarden_replication_generations_total",
                "Generations begun (a snapshot, then every commit after it) since the service started.",
                replication.generations,
            )?;
            counter(
                "dbwarden_replication_gaps_total",
                "Gaps found (commits the stream could not hold in order), each followed by a new generation.",
                replication.gaps,
            )?;
            counter(
                "dbwarden_replication_ack_refused_total",
                "Writes answered 503 because an ack_writes replica did not take their commit.",
                replication.ack_refused,
            )?;
            counter(
                "dbwarden_replication_ack_fallback_total",
                "Writes acknowledged on their local commit alone after ack_timeout_ms (ack_fallback_local).",
                replication.ack_fell_back,
            )?;
            if let Some(at) = replication.last_gap_at {
                gauge(
                    &now,
                    "dbwarden_replication_last_gap_timestamp_seconds",
                    "Unix time of the last gap found (absent before the first).",
                    at,
                )?;
            }
        }

        let mut families = self.registry.gather();
        families.extend(now.gather());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::new();
        TextEncoder::new().encode(&families, &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// The streaming replicas' families, labelled by the replica's name (and the request
/// kind).
fn register_streams(r: &Registry, replicas: &[ReplicaFigures]) -> Result<(), prometheus::Error> {
    let label = &["replica"];
    let lag = GaugeVec::new(
        Opts::new(
            "dbwarden_replica_stream_lag_seconds",
            "Seconds since the oldest commit the replica does not hold yet was read (0 when it holds every one).",
        ),
        label,
    )?;
    let lag_bytes = IntGaugeVec::new(
        Opts::new(
            "dbwarden_replica_stream_lag_bytes",
            "Spooled bytes (segments, a snapshot) the replica does not hold yet.",
        ),
        label,
    )?;
    let lagging = IntGaugeVec::new(
        Opts::new(
            "dbwarden_replica_stream_lagging",
            "1 while the replica lags more than its max_lag_secs (health is degraded).",
        ),
        label,
    )?;
    let counter = |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), label);
    let snapshots = counter(
        "dbwarden_replica_stream_snapshots_total",
        "Generation snapshots uploaded to the replica.",
    )?;
    let segments = counter(
        "dbwarden_replica_stream_segments_total",
        "WAL segments uploaded to the replica.",
    )?;
    let bytes = counter(
        "dbwarden_replica_stream_bytes_total",
        "Bytes of snapshots and segments uploaded to the replica (compressed, encrypted).",
    )?;
    let failures = counter(
        "dbwarden_replica_stream_failures_total",
        "Stream uploads to the replica that failed (each is retried).",
    )?;
    let compactions = counter(
        "dbwarden_replica_stream_compactions_total",
        "Merged segments compaction wrote to the replica.",
    )?;
    let compacted = counter(
        "dbwarden_replica_stream_segments_compacted_total",
        "Segments compaction deleted from the replica because a merged segment holds them.",
    )?;
    let compaction_failures = counter(
        "dbwarden_replica_stream_compaction_failures_total",
        "Compactions of the replica that failed (each is tried again at the next interval).",
    )?;
    let requests = IntCounterVec::new(
        Opts::new(
            "dbwarden_replica_stream_requests_total",
            "Requests continuous replication made to the replica, by kind: put (an object), lease (taking or renewing the lease), compaction (its listings and deletions).",
        ),
        &["replica", "kind"],
    )?;
    for figures in replicas {
        let Some(stream) = &figures.stream else {
            continue;
        };
        let name = figures.name.as_str();
        lag.with_label_values(&[name]).set(stream.lag_seconds);
        lag_bytes
            .with_label_values(&[name])
            .set(i64::try_from(stream.lag_bytes).unwrap_or(i64::MAX));
        lagging
            .with_label_values(&[name])
            .set(i64::from(stream.lagging));
        snapshots
            .with_label_values(&[name])
            .inc_by(stream.snapshots);
        segments.with_label_values(&[name]).inc_by(stream.segments);
        bytes.with_label_values(&[name]).inc_by(stream.bytes);
        failures.with_label_values(&[name]).inc_by(stream.failures);
        requests
            .with_label_values(&[name, "put"])
            .inc_by(stream.puts);
        requests
            .with_label_values(&[name, "lease"])
            .inc_by(stream.lease_requests);
        requests
            .with_label_values(&[name, "compaction"])
            .inc_by(stream.compaction_requests);
        compactions
            .with_label_values(&[name])
            .inc_by(stream.compactions);
        compacted
            .with_label_values(&[name])
            .inc_by(stream.segments_compacted);
        compaction_failures
            .with_label_values(&[name])
            .inc_by(stream.compaction_failures);
    }
    r.register(Box::new(lag))?;
    for family in [lag_bytes, lagging] {
        r.register(Box::new(family))?;
    }
    for family in [
        snapshots,
        segments,
        bytes,
        failures,
        requests,
        compactions,
        compacted,
        compaction_failures,
    ] {
        r.register(Box::new(family))?;
    }
    Ok(())
}

/// The per-replica families, labelled by the replica's name.
fn register_replicas(r: &Registry, replicas: &[ReplicaFigures]) -> Result<(), prometheus::Error> {
    let gauge_vec = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["replica"]);
    let counter_vec =
        |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), &["replica"]);
    let age = gauge_vec(
        "dbwarden_replica_newest_copy_age_seconds",
        "Seconds since the backup of the replica's newest complete copy was taken (absent while it holds none).",
    )?;
    let copies = gauge_vec(
        "dbwarden_replica_copies",
        "Complete copies on the replica (object and manifest both there).",
    )?;
    let stale = gauge_vec(
        "dbwarden_replica_stale",
        "1 while the replica's newest complete copy is older than its max_age_secs (health is degraded).",
    )?;
    let drill_ok = gauge_vec(
        "dbwarden_replica_drill_ok",
        "1 when the replica's last restore drill restored and checked every copy it took; 0 when one failed (absent before the first).",
    )?;
    let drill_age = gauge_vec(
        "dbwarden_replica_last_drill_age_seconds",
        "Seconds since the replica's last restore drill reached a verdict.",
    )?;
    let bytes = counter_vec(
        "dbwarden_replica_shipped_bytes_total",
        "Bytes uploaded to the replica (compressed, encrypted).",
    )?;
    let shipped = counter_vec(
        "dbwarden_replica_shipped_copies_total",
        "Copies shipped to the replica and completed by their manifest.",
    )?;
    let failures = counter_vec(
        "dbwarden_replica_failures_total",
        "Shipping attempts to the replica that failed (each is retried with backoff).",
    )?;
    for figures in replicas {
        let label = [figures.name.as_str()];
        if let Some(secs) = figures.newest_copy_age_secs {
            age.with_label_values(&label).set(secs);
        }
        copies
            .with_label_values(&label)
            .set(figures.complete_copies);
        stale
            .with_label_values(&label)
            .set(i64::from(figures.stale));
        if let Some((ok, secs)) = figures.last_drill {
            drill_ok.with_label_values(&label).set(i64::from(ok));
            drill_age.with_label_values(&label).set(secs);
        }
        bytes
            .with_label_values(&label)
            .inc_by(figures.shipped_bytes);
        shipped
            .with_label_values(&label)
            .inc_by(figures.shipped_copies);
        failures.with_label_values(&label).inc_by(figures.failures);
    }
    for family in [age, copies, stale, drill_ok, drill_age] {
        r.register(Box::new(family))?;
    }
    for family in [bytes, shipped, failures] {
        r.register(Box::new(family))?;
    }
    Ok(())
}

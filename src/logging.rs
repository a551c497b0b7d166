//! Logging: lines on stderr and, when `logging.dir` is set, a daily rolled file there
//! with at most `logging.keep_files` files. `logging.format = "text"` writes
//! human-readable lines; `"json"` one JSON object per line (tracing-subscriber's JSON
//! formatter, with the current span and the span list) for Loki, journald or any
//! pipeline that parses logs. `RUST_LOG` overrides `logging.level`. The returned guard
//! flushes the file writer when dropped: keep it alive until the end of `main`.

use std::io::IsTerminal;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer, Registry};

use crate::config::LoggingSettings;

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("logging.dir {dir}: {reason}")]
    Dir { dir: String, reason: String },
    #[error("logging: {0}")]
    Init(String),
}

pub fn init(settings: &LoggingSettings) -> Result<Option<WorkerGuard>, LoggingError> {
    let filter = || {
        let base = std::env::var("RUST_LOG")
            .ok()
            .and_then(|v| EnvFilter::try_new(v).ok())
            .unwrap_or_else(|| EnvFilter::new(&settings.level));
        // The scheduler logs every tick at INFO.
        match "tokio_cron_scheduler=warn".parse() {
            Ok(quiet) => base.add_directive(quiet),
            Err(_) => base,
        }
    };
    let json = settings.format == crate::config::LogFormat::Json;
    // One formatter for both outputs; boxed, since text and JSON are different types.
    fn layer<W>(json: bool, ansi: bool, writer: W) -> Box<dyn Layer<Registry> + Send + Sync>
    where
        W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
    {
        if json {
            fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .with_writer(writer)
                .boxed()
        } else {
            fmt::layer().with_ansi(ansi).with_writer(writer).boxed()
        }
    }
    let mut layers = vec![
        layer(json, std::io::stderr().is_terminal(), std::io::stderr)
            .with_filter(filter())
            .boxed(),
    ];
    let guard = match &settings.dir {
        None => None,
        Some(dir) => {
            let shown = dir.display().to_string();
            crate::db::create_private_dir(dir).map_err(|e| LoggingError::Dir {
                dir: shown.clone(),
                reason: e.to_string(),
            })?;
            let appender = RollingFileAppender::builder()
                .rotation(Rotation::DAILY)
                .filename_prefix("dbwarden")
                .filename_suffix("log")
                .max_log_files(settings.keep_files)
                .build(dir)
                .map_err(|e| LoggingError::Dir {
                    dir: shown,
                    reason: e.to_string(),
                })?;
            // lossy(false): under pressure logging slows down rather than drops lines.
            let (writer, guard) = NonBlockingBuilder::default().lossy(false).finish(appender);
            layers.push(layer(json, false, writer).with_filter(filter()).boxed());
            Some(guard)
        }
    };
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .map_err(|e| LoggingError::Init(e.to_string()))?;
    Ok(guard)
}

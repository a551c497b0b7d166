//! Running the jobs of `jobs/*.toml`: one [`Job`] per kind.
//!
//! - `sql`: the statements go to the DbWriter as one request, which runs them alone in
//!   one transaction (see `db::jobsql` for what they may not do); any failure rolls
//!   back all of them.
//! - `query`: runs on a reader connection and must answer one number; a value above
//!   `alert_above` or below `alert_below` fails the run, which alerts (with the
//!   default `notify_on = "failure"`) and resolves once the value is back in range.
//! - `command`: see [`super::command`].
//! - `http`: one request; the run fails unless the answer has `expect_status`.

use std::time::{Duration, Instant};

use super::{
    command, definition::JobDefinition, Job, JobContext, JobFuture, JobKind, JobReport, JobResult,
    JobSpec,
};
use crate::db::jobsql::{self, StopWhen};

/// The registry's view of a job file.
pub fn spec(definition: JobDefinition) -> JobSpec {
    JobSpec {
        name: definition.name.clone(),
        schedule: definition.schedule.clone(),
        kind: definition.kind.name().to_string(),
        timeout: Some(definition.timeout),
        enabled: definition.enabled,
        overlap: definition.overlap,
        notify_on: definition.notify_on,
        job: std::sync::Arc::new(CustomJob(definition)),
    }
}

pub struct CustomJob(pub JobDefinition);

impl Job for CustomJob {
    fn run<'a>(&'a self, ctx: &'a JobContext) -> JobFuture<'a> {
        Box::pin(async move {
            match &self.0.kind {
                JobKind::Sql { statements } => run_sql(ctx, statements).await,
                JobKind::Query {
                    sql,
                    alert_above,
                    alert_below,
                } => run_query(ctx, sql, *alert_above, *alert_below).await,
                JobKind::Command { argv, workdir, env } => {
                    command::run(ctx, argv, workdir.as_deref(), env).await
                }
                JobKind::Http {
                    method,
                    url,
                    headers,
                    body,
                    expect_status,
                } => run_http(ctx, method, url, headers, body.as_deref(), *expect_status).await,
            }
        })
    }
}

async fn run_sql(ctx: &JobContext, statements: &[String]) -> JobResult {
    let changed = ctx
        .execute(statements.to_vec())
        .await
        .map_err(|e| JobReport::from(e.to_string()))?;
    Ok(JobReport::from(format!(
        "{} statement(s) committed; {changed} row change(s), triggers included",
        statements.len()
    )))
}

async fn run_query(
    ctx: &JobContext,
    sql: &str,
    above: Option<f64>,
    below: Option<f64>,
) -> JobResult {
    let stop = StopWhen {
        cancel: ctx.cancellation().clone(),
        deadline: ctx.deadline(),
    };
    let sql = sql.to_string();
    let value = ctx
        .readers()
        .run(move |conn| Ok(jobsql::query_number(conn, &sql, &stop)))
        .await
        .map_err(|e| JobReport::from(e.to_string()))?
        .map_err(|e| JobReport::from(e.to_string()))?;
    if let Some(limit) = above.filter(|limit| value > *limit) {
        return Err(JobReport::from(format!("value {value} is above {limit}")));
    }
    if let Some(limit) = below.filter(|limit| value < *limit) {
        return Err(JobReport::from(format!("value {value} is below {limit}")));
    }
    Ok(JobReport::from(format!(
        "value {value} is within its threshold"
    )))
}

async fn run_http(
    ctx: &JobContext,
    method: &str,
    url: &str,
    headers: &std::collections::BTreeMap<String, String>,
    body: Option<&str>,
    expect_status: u16,
) -> JobResult {
    let fail = |m: String| JobReport::from(m);
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|e| fail(format!("method {method}: {e}")))?;
    let timeout = ctx
        .deadline()
        .map(|d| d.saturating_duration_since(Instant::now()))
        .unwrap_or(Duration::from_secs(300));
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| fail(format!("HTTP client: {e}")))?;
    let mut request = client.request(method, url);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let started = Instant::now();
    let response = tokio::select! {
        r = request.send() => r.map_err(|e| fail(format!("request to {url} failed: {e}")))?,
        _ = ctx.cancelled() => return Err(fail("cancelled before the answer came".into())),
    };
    let status = response.status().as_u16();
    let elapsed = started.elapsed().as_millis();
    let text = response.text().await.unwrap_or_default();
    let report = JobReport {
        message: format!("HTTP {status} in {elapsed} ms (expected {expect_status})"),
        output: (!text.is_empty())
            .then(|| super::registry::keep_tail(text, super::registry::OUTPUT_LIMIT)),
        unchanged: false,
    };
    if status == expect_status {
        Ok(report)
    } else {
        Err(report)
    }
}

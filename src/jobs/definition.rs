//! Job files: every `*.toml` file in `jobs.dir` defines one job.
//!
//! This module reads and validates the definitions; [`super::custom`] runs them. Files are parsed by hand over the
//! TOML tree (not a derived struct) so every mistake is reported with the file, the key
//! and the reason, and all mistakes of a directory are reported at once.
//!
//! ```toml
//! name = "prune-resolved"          # unique; letters, digits, '-' and '_'
//! schedule = "0 0 4 * * *"         # UTC, six fields with seconds (as in config.toml)
//! kind = "sql"                     # sql | query | command | http
//! timeout_secs = 300               # 1..=86400, default 300
//! enabled = true                   # default true
//! overlap = "skip"                 # skip | queue, default skip
//! notify_on = "failure"            # failure | always | never, default failure
//! # and the kind's own keys:
//! statements = ["DELETE FROM ...", "ANALYZE"]                        # sql
//! # sql = "SELECT ...", alert_above = 10, alert_below = 1            # query (one threshold or both)
//! # argv = ["df", "-h"], workdir = "/srv", env = { LANG = "C" }      # command (no shell)
//! # url = "https://...", method = "POST", headers = {..}, body = "", expect_status = 200   # http
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};

use crate::cron::Schedule;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// A run still going at the next tick: the tick is skipped.
    Skip,
    /// A run still going at the next tick: the tick runs after it.
    Queue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyOn {
    Failure,
    Always,
    Never,
}

impl Overlap {
    /// Each value with its name in job files and listings.
    pub const ALL: &[(&str, Overlap)] = &[("skip", Overlap::Skip), ("queue", Overlap::Queue)];

    pub fn as_str(self) -> &'static str {
        name_of(Overlap::ALL, self)
    }
}

impl NotifyOn {
    /// Each value with its name in job files and listings.
    pub const ALL: &[(&str, NotifyOn)] = &[
        ("failure", NotifyOn::Failure),
        ("always", NotifyOn::Always),
        ("never", NotifyOn::Never),
    ];

    pub fn as_str(self) -> &'static str {
        name_of(NotifyOn::ALL, self)
    }
}

fn name_of<T: PartialEq>(all: &[(&'static str, T)], value: T) -> &'static str {
    all.iter().find(|(_, v)| *v == value).map_or("", |(n, _)| n)
}

#[derive(Debug, Clone, PartialEq)]
pub enum JobKind {
    /// Statements run through the DbWriter in one transaction.
    Sql { statements: Vec<String> },
    /// A read-only query on a reader connection; alerts when its single value crosses
    /// a threshold.
    Query {
        sql: String,
        alert_above: Option<f64>,
        alert_below: Option<f64>,
    },
    /// A program run without a shell; its process group is killed on timeout.
    Command {
        argv: Vec<String>,
        workdir: Option<PathBuf>,
        env: BTreeMap<String, String>,
    },
    Http {
        method: String,
        url: String,
        headers: BTreeMap<String, String>,
        body: Option<String>,
        expect_status: u16,
    },
}

impl JobKind {
    pub fn name(&self) -> &'static str {
        match self {
            JobKind::Sql { .. } => "sql",
            JobKind::Query { .. } => "query",
            JobKind::Command { .. } => "command",
            JobKind::Http { .. } => "http",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobDefinition {
    pub name: String,
    pub file: PathBuf,
    pub schedule: Schedule,
    pub timeout: Duration,
    pub enabled: bool,
    pub overlap: Overlap,
    pub notify_on: NotifyOn,
    pub kind: JobKind,
}

/// One mistake in one job file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: `{key}`: {reason}")]
pub struct JobError {
    pub file: String,
    pub key: String,
    pub reason: String,
}

/// Every mistake found in a directory of job files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobErrors(pub Vec<JobError>);

impl fmt::Display for JobErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for JobErrors {}

const COMMON_KEYS: &[&str] = &[
    "name",
    "schedule",
    "kind",
    "timeout_secs",
    "enabled",
    "overlap",
    "notify_on",
];
const KINDS: &[(&str, &[&str])] = &[
    ("sql", &["statements"]),
    ("query", &["sql", "alert_above", "alert_below"]),
    ("command", &["argv", "workdir", "env"]),
    (
        "http",
        &["url", "method", "headers", "body", "expect_status"],
    ),
];
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];

/// Reads every `*.toml` in `dir` (sorted by file name). A missing directory holds no
/// jobs.
pub fn load_dir(dir: &Path) -> Result<Vec<JobDefinition>, JobErrors> {
    let shown = dir.display().to_string();
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| {
        JobErrors(vec![JobError {
            file: shown.clone(),
            key: "-".into(),
            reason: format!("cannot list the jobs directory: {e}"),
        }])
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut jobs: Vec<JobDefinition> = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        match load_file(&file) {
            Ok(job) => {
                if let Some(first) = jobs.iter().find(|j| j.name == job.name) {
                    errors.push(JobError {
                        file: file.display().to_string(),
                        key: "name".into(),
                        reason: format!(
                            "job name `{}` is already used by {}",
                            job.name,
                            first.file.display()
                        ),
                    });
                } else {
                    jobs.push(job);
                }
            }
            Err(mut e) => errors.append(&mut e.0),
        }
    }
    if errors.is_empty() {
        Ok(jobs)
    } else {
        Err(JobErrors(errors))
    }
}

/// Reads and validates one job file.
pub fn load_file(path: &Path) -> Result<JobDefinition, JobErrors> {
    let file = path.display().to_string();
    let err = |key: &str, reason: String| {
        JobErrors(vec![JobError {
            file: file.clone(),
            key: key.into(),
            reason,
        }])
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| err("-", format!("cannot be read: {e}")))?;
    let table: Table = text
        .parse()
        .map_err(|e: toml::de::Error| err("-", format!("is not valid TOML: {}", e.message())))?;
    parse(&table, path).map_err(|(key, reason)| err(&key, reason))
}

type Field<T> = Result<T, (String, String)>;

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a number",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

fn wrong(key: &str, wanted: &str, got: &Value) -> (String, String) {
    (
        key.to_string(),
        format!("must be {wanted}, not {}", type_name(got)),
    )
}

fn string(t: &Table, key: &str) -> Field<Option<String>> {
    match t.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(wrong(key, "a string", other)),
    }
}

fn required_string(t: &Table, key: &str) -> Field<String> {
    match string(t, key)? {
        Some(s) if !s.trim().is_empty() => Ok(s),
        Some(_) => Err((key.into(), "must not be empty".into())),
        None => Err((key.into(), "is required".into())),
    }
}

fn number(t: &Table, key: &str) -> Field<Option<f64>> {
    match t.get(key) {
        None => Ok(None),
        Some(Value::Integer(i)) => Ok(Some(*i as f64)),
        Some(Value::Float(f)) => Ok(Some(*f)),
        Some(other) => Err(wrong(key, "a number", other)),
    }
}

fn string_list(t: &Table, key: &str) -> Field<Option<Vec<String>>> {
    match t.get(key) {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
                Value::String(_) => Err((format!("{key}[{i}]"), "must not be empty".into())),
                other => Err(wrong(&format!("{key}[{i}]"), "a string", other)),
            })
            .collect::<Field<Vec<String>>>()
            .map(Some),
        Some(other) => Err(wrong(key, "an array of strings", other)),
    }
}

fn string_map(t: &Table, key: &str) -> Field<BTreeMap<String, String>> {
    match t.get(key) {
        None => Ok(BTreeMap::new()),
        Some(Value::Table(map)) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => Err(wrong(&format!("{key}.{k}"), "a string", other)),
            })
            .collect(),
        Some(other) => Err(wrong(key, "a table of strings", other)),
    }
}

fn choice<T: Copy>(t: &Table, key: &str, default: T, options: &[(&str, T)]) -> Field<T> {
    match string(t, key)? {
        None => Ok(default),
        Some(s) => options
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                (
                    key.into(),
                    format!("`{s}` is not one of {}", names.join(", ")),
                )
            }),
    }
}

fn parse(t: &Table, path: &Path) -> Field<JobDefinition> {
    let name = required_string(t, "name")?;
    if name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err((
            "name".into(),
            "must be 1 to 64 letters, digits, '-' or '_'".into(),
        ));
    }
    let schedule = Schedule::parse(&required_string(t, "schedule")?)
        .map_err(|reason| ("schedule".to_string(), reason))?;
    let kind_name = required_string(t, "kind")?;
    let Some((_, kind_keys)) = KINDS.iter().find(|(k, _)| *k == kind_name) else {
        let names: Vec<&str> = KINDS.iter().map(|(k, _)| *k).collect();
        return Err((
            "kind".into(),
            format!("`{kind_name}` is not one of {}", names.join(", ")),
        ));
    };
    if let Some(unknown) = t
        .keys()
        .find(|k| !COMMON_KEYS.contains(&k.as_str()) && !kind_keys.contains(&k.as_str()))
    {
        return Err((
            unknown.clone(),
            format!(
                "is not a key of a `{kind_name}` job (its keys: {}, {})",
                COMMON_KEYS.join(", "),
                kind_keys.join(", ")
            ),
        ));
    }
    let timeout_secs = match t.get("timeout_secs") {
        None => 300,
        Some(Value::Integer(n)) if (1..=86_400).contains(n) => *n as u64,
        Some(Value::Integer(n)) => {
            return Err((
                "timeout_secs".into(),
                format!("{n} is out of range 1..=86400"),
            ))
        }
        Some(other) => return Err(wrong("timeout_secs", "an integer", other)),
    };
    let enabled = match t.get("enabled") {
        None => true,
        Some(Value::Boolean(b)) => *b,
        Some(other) => return Err(wrong("enabled", "a boolean", other)),
    };
    let overlap = choice(t, "overlap", Overlap::Skip, Overlap::ALL)?;
    let notify_on = choice(t, "notify_on", NotifyOn::Failure, NotifyOn::ALL)?;
    let kind = match kind_name.as_str() {
        "sql" => {
            let statements = string_list(t, "statements")?
                .ok_or_else(|| ("statements".to_string(), "is required".to_string()))?;
            if statements.is_empty() {
                return Err((
                    "statements".into(),
                    "must hold at least one statement".into(),
                ));
            }
            JobKind::Sql { statements }
        }
        "query" => {
            let sql = required_string(t, "sql")?;
            let (alert_above, alert_below) = (number(t, "alert_above")?, number(t, "alert_below")?);
            if alert_above.is_none() && alert_below.is_none() {
                return Err((
                    "alert_above".into(),
                    "a query job needs a threshold: alert_above, alert_below or both".into(),
                ));
            }
            JobKind::Query {
                sql,
                alert_above,
                alert_below,
            }
        }
        "command" => {
            let argv = string_list(t, "argv")?
                .ok_or_else(|| ("argv".to_string(), "is required".to_string()))?;
            if argv.is_empty() {
                return Err(("argv".into(), "must name the program to run".into()));
            }
            JobKind::Command {
                argv,
                workdir: string(t, "workdir")?.map(PathBuf::from),
                env: string_map(t, "env")?,
            }
        }
        _ => {
            let url = required_string(t, "url")?;
            crate::config::http_url(&url).map_err(|reason| ("url".to_string(), reason))?;
            let method = string(t, "method")?
                .unwrap_or_else(|| "GET".into())
                .to_ascii_uppercase();
            if !METHODS.contains(&method.as_str()) {
                return Err((
                    "method".into(),
                    format!("`{method}` is not one of {}", METHODS.join(", ")),
                ));
            }
            let expect_status = match t.get("expect_status") {
                None => 200,
                Some(Value::Integer(n)) if (100..=599).contains(n) => *n as u16,
                Some(Value::Integer(n)) => {
                    return Err(("expect_status".into(), format!("{n} is not an HTTP status")))
                }
                Some(other) => return Err(wrong("expect_status", "an integer", other)),
            };
            JobKind::Http {
                method,
                url,
                headers: string_map(t, "headers")?,
                body: string(t, "body")?,
                expect_status,
            }
        }
    };
    Ok(JobDefinition {
        name,
        file: path.to_path_buf(),
        schedule,
        timeout: Duration::from_secs(timeout_secs),
        enabled,
        overlap,
        notify_on,
        kind,
    })
}

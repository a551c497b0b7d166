//! The `dbwarden` command: argument parsing and error reporting only.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use dbwarden::config::{ConfigSource, Settings};
use dbwarden::db::{self, queries, snapshot};
use dbwarden::exit;

#[derive(Parser)]
#[command(
    name = "dbwarden",
    version = dbwarden::VERSION,
    about = "Keeps a SQLite event store alive and correct",
    after_help = EXIT_CODES
)]
struct Cli {
    /// Settings file (default ./config.toml; the built-in defaults when it is missing).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

const EXIT_CODES: &str = "Exit codes:
  0   done, or healthy
  1   what the command looked at is not ok (a check found problems, a job failed,
      the service is not healthy, a backup or restore could not be done)
  64  usage: unknown command, argument or job name
  69  unavailable: the service does not answer, or cannot listen
  70  the service stopped after a panic
  75  the database is held by another dbwarden process
  78  bad configuration (settings, a job file, PUID/PGID)";

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Run,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Check the database: quick_check, the summary against a recomputation, and
    /// triggers or Healarr migrations that changed how the summary is maintained.
    Check {
        /// Only compare the summary and counts with a recomputation from the events.
        #[arg(long, conflicts_with = "full")]
        summary: bool,
        /// Run integrity_check and foreign_key_check instead of quick_check.
        #[arg(long)]
        full: bool,
        /// Remove foreign summary triggers and rebuild the summary and counts (through
        /// the running service when there is one).
        #[arg(long)]
        repair: bool,
    },
    /// Take one verified backup now (through the running service when there is one).
    Backup,
    /// Check a backup file (or any SQLite file): integrity_check, SHA-256, manifest.
    Verify {
        /// The file to check.
        file: PathBuf,
    },
    /// Replace the database with a verified backup (the service must be stopped).
    #[command(group(clap::ArgGroup::new("which").required(true).args(["file", "latest"])))]
    Restore {
        /// The backup file to restore.
        file: Option<PathBuf>,
        /// Restore the newest good backup in `backup.dir`.
        #[arg(long)]
        latest: bool,
        /// Verify and say what would happen, changing nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Custom jobs defined in `jobs.dir`.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Settings commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Ask the running service whether it is healthy, for container health checks:
    /// exit 0 healthy, 1 anything else (degraded, failing, or no answer). One line out.
    Healthcheck {
        /// Give up when the service has not answered within this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = 10)]
        timeout: u64,
    },
    /// Print the health summary of the running service (exit 0 healthy, 1 degraded or
    /// failing, 69 unreachable).
    Status {
        /// Give up when the service has not answered within this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = 10)]
        timeout: u64,
    },
    /// Print a shell completion script, e.g. `dbwarden completions bash > /etc/bash_completion.d/dbwarden`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `dbwarden manpage > /usr/local/share/man/man1/dbwarden.1`.
    Manpage,
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Check every job file; report every mistake with its file and key.
    Validate,
    /// Print each job (built-in and custom) with its kind, schedule and next run.
    List,
    /// Run one job now, once, and exit with its result (0 ok, 1 not ok). Goes through
    /// the running service when there is one.
    Run {
        /// The job's name, as `jobs list` shows it.
        name: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the settings and print the effective values (secrets masked).
    Check,
}

fn load(cli_config: &Option<PathBuf>) -> anyhow::Result<Settings> {
    let source = match cli_config {
        Some(p) => ConfigSource::Explicit(p.clone()),
        None => ConfigSource::Default,
    };
    Settings::load(&source).context("invalid settings")
}

fn main() -> ExitCode {
    // Everything dbwarden creates (database, WAL, backups, manifests, logs, lock) is
    // for its own user only, whatever umask it was started with.
    // SAFETY: umask only sets this process's file mode creation mask.
    unsafe {
        libc::umask(0o077);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    // As root with PUID/PGID, become that user before anything is opened.
    match dbwarden::privileges::wanted_ids(|k| std::env::var(k).ok()) {
        Ok(Some((uid, gid))) => {
            if let Err(e) = dbwarden::privileges::switch_to(uid, gid) {
                eprintln!("dbwarden: cannot switch to PUID/PGID {uid}:{gid}: {e}");
                return ExitCode::from(exit::CONFIG);
            }
        }
        Ok(None) => {}
        Err(e) => {
            eprintln!("dbwarden: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    }
    match dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("dbwarden: {}", each_cause_once(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The exit code an error means (see [`dbwarden::exit`]).
fn exit_code(e: &anyhow::Error) -> u8 {
    use dbwarden::client::ClientError;
    use dbwarden::db::lock::LockError;
    use dbwarden::jobs::registry::TriggerError;
    use dbwarden::jobs::run_now::RunNowError;
    use dbwarden::supervisor::StartError;
    fn of_start(e: &StartError) -> Option<u8> {
        match e {
            // A path from the settings that cannot be used fails the same way each time.
            StartError::Jobs(_)
            | StartError::Registry(_)
            | StartError::Backup(dbwarden::backup::BackupError::Io { .. })
            | StartError::Db(dbwarden::db::DbError::Io { .. }) => Some(exit::CONFIG),
            StartError::Lock(LockError::Held { .. }) => Some(exit::TEMPFAIL),
            StartError::Listen { .. } => Some(exit::UNAVAILABLE),
            _ => None,
        }
    }
    for cause in e.chain() {
        let code = if cause.is::<dbwarden::config::ConfigError>()
            || cause.is::<dbwarden::jobs::JobErrors>()
            || cause.is::<dbwarden::logging::LoggingError>()
        {
            Some(exit::CONFIG)
        } else if let Some(LockError::Held { .. }) = cause.downcast_ref::<LockError>() {
            Some(exit::TEMPFAIL)
        } else if let Some(ClientError::Unreachable { .. } | ClientError::TimedOut { .. }) =
            cause.downcast_ref::<ClientError>()
        {
            Some(exit::UNAVAILABLE)
        } else if let Some(start) = cause.downcast_ref::<StartError>() {
            of_start(start)
        } else if let Some(run) = cause.downcast_ref::<RunNowError>() {
            match run {
                RunNowError::Start(start) => of_start(start),
                RunNowError::Lock(LockError::Held { .. }) => Some(exit::TEMPFAIL),
                RunNowError::Service(
                    ClientError::Unreachable { .. } | ClientError::TimedOut { .. },
                ) => Some(exit::UNAVAILABLE),
                RunNowError::Trigger(TriggerError::Unknown(_))
                | RunNowError::Service(ClientError::Refused { status: 404, .. }) => {
                    Some(exit::USAGE)
                }
                _ => None,
            }
        } else {
            None
        };
        if let Some(code) = code {
            return code;
        }
    }
    exit::NOT_OK
}

/// The error and its causes joined with ": ", each said once. Our error messages
/// include what they wrap (so a log line or an HTTP answer is complete on its own),
/// which would repeat it in a plain chain; a cause already in the text is left out.
fn each_cause_once(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let message = cause.to_string();
        if text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(if text.ends_with('\n') { "" } else { ": " });
        }
        text.push_str(&message);
    }
    text
}

fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    // These two need no settings.
    match &cli.command {
        Some(Command::Completions { shell }) => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "dbwarden", &mut std::io::stdout());
            return Ok(0);
        }
        Some(Command::Manpage) => {
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut std::io::stdout())
                .context("writing the manual page")?;
            return Ok(0);
        }
        _ => {}
    }
    let settings = load(&cli.config)?;
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let _guard = dbwarden::logging::init(&settings.logging)?;
            let code = actix_rt::System::new()
                .block_on(dbwarden::supervisor::run(settings))
                .context("dbwarden could not start")?;
            Ok(u8::try_from(code).unwrap_or(1))
        }
        Command::Migrate => {
            let _guard = dbwarden::logging::init(&settings.logging)?;
            let (_conn, report) = db::open_and_migrate(&settings.database)
                .with_context(|| format!("migrating {}", settings.database.path.display()))?;
            println!(
                "{}: {} migration(s) applied ({}), {} already applied",
                settings.database.path.display(),
                report.applied.len(),
                report.applied.join(", "),
                report.already_applied
            );
            Ok(0)
        }
        Command::Check {
            summary,
            full,
            repair,
        } => {
            if repair {
                repair_summary(&settings)
            } else {
                check(&settings, summary, full)
            }
        }
        Command::Backup => {
            let working = spinner(format!(
                "backing up {} (check, copy, verify, hash)",
                settings.database.path.display()
            ));
            let manifest = backup_now(&settings);
            working.finish_and_clear();
            let manifest = manifest.context("backup failed")?;
            println!("{}", serde_json::to_string_pretty(&manifest)?);
            Ok(0)
        }
        Command::Verify { file } => {
            let working = spinner(format!(
                "verifying {} (hash, integrity_check)",
                file.display()
            ));
            let report = dbwarden::backup::verify_file(&file);
            working.finish_and_clear();
            let report = report.with_context(|| format!("verifying {}", file.display()))?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if report.is_ok() {
                eprintln!("{}: ok", file.display());
                Ok(0)
            } else {
                eprintln!("{}: FAILED", file.display());
                Ok(1)
            }
        }
        Command::Restore {
            file,
            latest,
            dry_run,
        } => {
            let _guard = dbwarden::logging::init(&settings.logging)?;
            let backup = match (file, latest) {
                (Some(f), _) => f,
                (None, _) => dbwarden::restore::latest(&settings)?,
            };
            let working = spinner(format!("verifying {} and restoring it", backup.display()));
            let plan = if dry_run {
                // A dry run is refused too while the service holds the database.
                dbwarden::db::lock::acquire(&settings.database.path)
                    .map_err(anyhow::Error::from)
                    .and_then(|_lock| Ok(dbwarden::restore::plan(&settings, &backup)?))
            } else {
                dbwarden::restore::restore(&settings, &backup).map_err(anyhow::Error::from)
            };
            working.finish_and_clear();
            let plan = plan?;
            let verb = if dry_run { "would restore" } else { "restored" };
            println!(
                "{verb} {} into {}",
                plan.backup.display(),
                plan.database.display()
            );
            match &plan.keep_current_as {
                Some(p) => println!("current database kept as {} (verified copy)", p.display()),
                None => println!("no readable current database to keep"),
            }
            Ok(0)
        }
        Command::Jobs { command } => jobs(settings, command),
        Command::Status { timeout } => status(&settings, Duration::from_secs(timeout)),
        Command::Healthcheck { timeout } => {
            Ok(healthcheck(&settings, Duration::from_secs(timeout)))
        }
        Command::Completions { .. } | Command::Manpage => Ok(0),
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            print!("{}", settings.to_masked_toml());
            eprintln!("settings are valid");
            Ok(0)
        }
    }
}

fn jobs(settings: Settings, command: JobsCommand) -> anyhow::Result<u8> {
    let custom = match dbwarden::jobs::load_dir(&settings.jobs.dir) {
        Ok(jobs) => jobs,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{} problem(s) in {}",
                errors.0.len(),
                settings.jobs.dir.display()
            );
            return Ok(1);
        }
    };
    match command {
        JobsCommand::Validate => {
            println!(
                "{} job(s) valid in {}",
                custom.len(),
                settings.jobs.dir.display()
            );
        }
        JobsCommand::List => {
            for job in dbwarden::jobs::listing(&settings, &custom) {
                let (name, kind, schedule) = (&job.name, job.kind, job.schedule.as_str());
                let next = match (job.enabled, job.schedule.next_run()) {
                    (false, _) => "disabled".to_string(),
                    (true, Some(t)) => format!(
                        "{} UTC ({} local)",
                        t.format("%Y-%m-%d %H:%M:%S"),
                        t.with_timezone(&chrono::Local)
                            .format("%Y-%m-%d %H:%M:%S %:z")
                    ),
                    (true, None) => "never".to_string(),
                };
                println!("{name:<24} {kind:<8} {schedule:<18} next: {next}");
            }
        }
        JobsCommand::Run { name } => {
            let _guard = dbwarden::logging::init(&settings.logging)?;
            let run = actix_rt::System::new()
                .block_on(dbwarden::jobs::run_now::run_now(settings, &name))
                .with_context(|| format!("job {name}"))?;
            println!("{}", serde_json::to_string_pretty(&run)?);
            return Ok(u8::from(run.outcome != dbwarden::jobs::Outcome::Ok));
        }
    }
    Ok(0)
}

/// `dbwarden backup`: through the running service when it holds the database (so its
/// BackupActor, health and metrics know of it), else in this process. The database
/// lock is only looked at, not kept: a service may start meanwhile, and the backup
/// directory's own lock keeps its backups and ours apart.
fn backup_now(settings: &Settings) -> anyhow::Result<serde_json::Value> {
    match db::lock::acquire(&settings.database.path) {
        Ok(lock) => {
            drop(lock);
            dbwarden::backup::ensure_dir(&settings.backup.dir)
                .context("creating the backup directory")?;
            let manifest =
                dbwarden::backup::take_backup(&settings.database, &settings.backup, &|_| {})?;
            Ok(serde_json::to_value(manifest)?)
        }
        Err(db::lock::LockError::Held { .. }) => {
            let client = dbwarden::client::ServiceClient::new(settings)
                .with_timeout(Duration::from_secs(6 * 3600));
            Ok(actix_rt::System::new()
                .block_on(client.post(&["api", "backups"], None))
                .context("asking the running service for a backup")?)
        }
        Err(e) => Err(e.into()),
    }
}

/// A spinner with the elapsed time on a terminal; nothing at all when stderr is not one
/// (pipes, logs, cron).
fn spinner(message: String) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    bar.set_message(message);
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// 0 when the service answers `healthy`, 1 otherwise; one line on stdout.
fn healthcheck(settings: &Settings, timeout: Duration) -> u8 {
    let client = dbwarden::client::ServiceClient::new(settings).with_timeout(timeout);
    match actix_rt::System::new().block_on(client.get(&["api", "health"])) {
        Ok((_, health)) if health["status"] == "healthy" => {
            println!("healthy");
            exit::OK
        }
        Ok((code, health)) => {
            println!(
                "{} (HTTP {code}): {}",
                health["status"].as_str().unwrap_or("no status"),
                health["reasons"]
            );
            exit::NOT_OK
        }
        Err(e) => {
            println!("unhealthy: {e}");
            exit::NOT_OK
        }
    }
}

fn status(settings: &Settings, timeout: Duration) -> anyhow::Result<u8> {
    let client = dbwarden::client::ServiceClient::new(settings).with_timeout(timeout);
    let (_, health) = actix_rt::System::new().block_on(client.get(&["api", "health"]))?;
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    let state = text(&health["status"]);
    println!(
        "dbwarden {} at {}: {state}",
        text(&health["version"]),
        client.addr()
    );
    println!("  uptime               {}", text(&health["uptime"]));
    println!(
        "  database             {} ({} bytes, WAL {} bytes)",
        text(&health["database"]["status"]),
        text(&health["database"]["size_bytes"]),
        text(&health["database"]["wal_bytes"])
    );
    println!(
        "  pending corruptions  {}",
        text(&health["pending_corruptions"])
    );
    println!(
        "  integrity            {} (last check {})",
        text(&health["integrity"]["result"]),
        text(&health["integrity"]["at"])
    );
    if let Some(reasons) = health["reasons"].as_array().filter(|r| !r.is_empty()) {
        println!("  why:");
        for reason in reasons {
            println!("    - {}", text(reason));
        }
    }
    Ok(u8::from(state != "healthy"))
}

fn check(settings: &Settings, summary_only: bool, full: bool) -> anyhow::Result<u8> {
    let path = &settings.database.path;
    if !path.exists() {
        bail!("database {} does not exist", path.display());
    }
    let conn = db::open_reader(&settings.database)
        .with_context(|| format!("opening {}", path.display()))?;
    if !db::migrations::is_current(&conn)? {
        bail!(
            "{} is not migrated to this version; run `dbwarden migrate` first",
            path.display()
        );
    }
    let mut failed = false;
    if !summary_only {
        let (kind, name) = if full {
            (
                snapshot::CheckKind::Full,
                "integrity_check + foreign_key_check",
            )
        } else {
            (snapshot::CheckKind::Quick, "quick_check")
        };
        let working = spinner(format!("{name} of {}", path.display()));
        let checked = dbwarden::auditor::check_database(&settings.database, kind, &|_| {});
        working.finish_and_clear();
        let (record, _) = checked?;
        if record.ok {
            println!("{name}: ok ({} ms)", record.duration_ms);
        } else {
            failed = true;
            println!("{name}: {} problem(s)", record.problems.len());
            for p in &record.problems {
                println!("  {p}");
            }
        }
    }
    let findings = db::guard::inspect(&conn, true)?;
    for t in &findings.foreign_triggers {
        failed = true;
        println!(
            "summary: trigger {} on {} (not dbwarden's) writes {}",
            t.name,
            t.on_table,
            t.writes.join(" and ")
        );
    }
    if let Some((Some(was), now)) = findings.healarr_version_change {
        failed = true;
        println!("summary: Healarr's schema version changed from {was} to {now} since dbwarden last looked");
    }
    if findings.drift.is_empty() {
        println!(
            "summary: exact ({} corruptions)",
            queries::bucket_counts(&conn)?.values().sum::<i64>()
        );
    } else {
        failed = true;
        println!(
            "summary: {} difference(s) from a recomputation",
            findings.drift.len()
        );
        for d in &findings.drift {
            println!("  {d}");
        }
    }
    if failed && findings.needs_repair() {
        println!(
            "run `dbwarden check --repair` to remove foreign triggers and rebuild the summary"
        );
    }
    Ok(u8::from(failed))
}

/// `check --repair`: through the running service's DbWriter when it holds the
/// database, else on a read-write connection of our own under the database lock.
fn repair_summary(settings: &Settings) -> anyhow::Result<u8> {
    let path = &settings.database.path;
    if !path.exists() {
        bail!("database {} does not exist", path.display());
    }
    let report: db::guard::RepairReport = match db::lock::acquire(path) {
        Ok(_lock) => {
            let mut conn = db::open_writer(&settings.database)
                .with_context(|| format!("opening {}", path.display()))?;
            if !db::migrations::is_current(&conn)? {
                bail!(
                    "{} is not migrated to this version; run `dbwarden migrate` first",
                    path.display()
                );
            }
            db::guard::repair(&mut conn).context("repairing the summary")?
        }
        Err(db::lock::LockError::Held { .. }) => {
            // A rebuild of a large summary takes a while: bound it generously.
            let client = dbwarden::client::ServiceClient::new(settings)
                .with_timeout(Duration::from_secs(3600));
            let body = actix_rt::System::new()
                .block_on(client.post(&["api", "summary", "repair"], None))
                .context("asking the running service to repair the summary")?;
            serde_json::from_value(body).context("the service's answer")?
        }
        Err(e) => return Err(e.into()),
    };
    let found = report.found.describe();
    println!(
        "found: {}",
        if found.is_empty() {
            "nothing wrong"
        } else {
            &found
        }
    );
    for t in &report.triggers_removed {
        println!("removed trigger {t}");
    }
    println!(
        "rebuilt the summary: {} corruption row(s) changed, {} row(s) in all ({} ms)",
        report.rows_changed, report.rows, report.duration_ms
    );
    Ok(0)
}

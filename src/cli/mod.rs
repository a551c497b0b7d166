//! The `dbwarden` command line: parsing, dispatch to one file per command, and the
//! edge where errors become messages and exit codes ([`dbwarden::exit`]). Everything
//! the commands do is in the library; `anyhow` is used here only.

mod backup;
mod check;
mod client;
mod config;
mod jobs;
mod migrate;
mod replicas;
mod restore;
mod run;
mod status;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use dbwarden::config::{ConfigSource, Settings};
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
    /// Replace the database with a verified backup (the service must be stopped), or
    /// restore one beside it with --output. With --from, the database comes from a
    /// replica (a backup copy, or its streamed commits up to a point): downloaded,
    /// decrypted, proven, then restored by the same rules.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["file", "latest", "backup", "at", "event_id"])))]
    Restore {
        /// The backup file to restore.
        #[arg(conflicts_with = "from")]
        file: Option<PathBuf>,
        /// Restore the newest good backup in `backup.dir`; with --from, the replica's
        /// last streamed commit (its newest backup copy if it holds no stream).
        #[arg(long)]
        latest: bool,
        /// The replica (its `name`) to restore from.
        #[arg(long, value_name = "NAME")]
        from: Option<String>,
        /// With --from: the copy of this backup (`dbwarden-<UTC time>.db`, as
        /// `replicas list` shows it).
        #[arg(long, value_name = "ID", requires = "from")]
        backup: Option<String>,
        /// With --from: the last commit streamed at or before this time (RFC 3339,
        /// e.g. 2026-12-03T07:30:00Z).
        #[arg(long, value_name = "RFC3339", requires = "from", value_parser = parse_time)]
        at: Option<chrono::DateTime<chrono::Utc>>,
        /// With --from: the commit that wrote this event id (and nothing after it).
        #[arg(long, value_name = "N", requires = "from")]
        event_id: Option<i64>,
        /// The age identity file that decrypts the replica's copies (default: the
        /// replica's `age_identity_file`).
        #[arg(long, value_name = "FILE", requires = "from")]
        identity: Option<PathBuf>,
        /// Restore into this file instead of the configured database (never in place).
        #[arg(long, value_name = "PATH")]
        output: Option<PathBuf>,
        /// Verify and say what would happen, changing nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Replicas: off-machine copies of the verified backups.
    Replicas {
        #[command(subcommand)]
        command: replicas::ReplicasCommand,
    },
    /// Custom jobs defined in `jobs.dir`.
    Jobs {
        #[command(subcommand)]
        command: jobs::JobsCommand,
    },
    /// Settings commands.
    Config {
        #[command(subcommand)]
        command: config::ConfigCommand,
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

fn load(cli_config: &Option<PathBuf>) -> anyhow::Result<Settings> {
    let source = match cli_config {
        Some(p) => ConfigSource::Explicit(p.clone()),
        None => ConfigSource::Default,
    };
    Settings::load(&source).context("invalid settings")
}

pub fn main() -> ExitCode {
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
    use client::ClientError;
    use dbwarden::db::lock::LockError;
    use dbwarden::jobs::registry::TriggerError;
    use dbwarden::supervisor::StartError;
    use jobs::RunNowError;
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
            return Ok(exit::OK);
        }
        Some(Command::Manpage) => {
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut std::io::stdout())
                .context("writing the manual page")?;
            return Ok(exit::OK);
        }
        _ => {}
    }
    let settings = load(&cli.config)?;
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run::run(settings),
        Command::Migrate => migrate::migrate(&settings),
        Command::Check {
            summary,
            full,
            repair,
        } => {
            if repair {
                check::repair(&settings)
            } else {
                check::check(&settings, summary, full)
            }
        }
        Command::Backup => backup::backup(&settings),
        Command::Verify { file } => verify::verify(&file),
        Command::Restore {
            file,
            latest: _,
            from,
            backup,
            at,
            event_id,
            identity,
            output,
            dry_run,
        } => restore::restore(
            &settings,
            restore::Source {
                file,
                from,
                backup,
                at,
                event_id,
                identity,
            },
            output,
            dry_run,
        ),
        Command::Replicas { command } => replicas::replicas(&settings, command),
        Command::Jobs { command } => jobs::jobs(settings, command),
        Command::Status { timeout } => status::status(&settings, Duration::from_secs(timeout)),
        Command::Healthcheck { timeout } => {
            Ok(status::healthcheck(&settings, Duration::from_secs(timeout)))
        }
        Command::Completions { .. } | Command::Manpage => Ok(exit::OK),
        Command::Config {
            command: config::ConfigCommand::Check,
        } => config::check(&settings),
    }
}

/// A spinner with the elapsed time on a terminal; nothing at all when stderr is not one
/// (pipes, logs, cron).
pub fn spinner(message: String) -> indicatif::ProgressBar {
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

/// An RFC 3339 time for `--at`.
fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("`{text}` is not an RFC 3339 time (2026-12-03T07:30:00Z): {e}"))
}

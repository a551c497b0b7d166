//! `dbwarden jobs validate | list | run NAME`.

use anyhow::Context;
use clap::Subcommand;

use dbwarden::config::Settings;

mod run_now;

pub use run_now::RunNowError;

#[derive(Subcommand)]
pub enum JobsCommand {
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

pub fn jobs(settings: Settings, command: JobsCommand) -> anyhow::Result<u8> {
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
                .block_on(run_now::run_now(settings, &name))
                .with_context(|| format!("job {name}"))?;
            println!("{}", serde_json::to_string_pretty(&run)?);
            return Ok(u8::from(run.outcome != dbwarden::jobs::Outcome::Ok));
        }
    }
    Ok(0)
}

//! `dbwarden config check`: validate the settings and print the effective values.

use clap::Subcommand;

use dbwarden::config::Settings;

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Validate the settings and print the effective values (secrets masked).
    Check,
}

pub fn check(settings: &Settings) -> anyhow::Result<u8> {
    print!("{}", settings.to_masked_toml());
    eprintln!("settings are valid");
    Ok(dbwarden::exit::OK)
}

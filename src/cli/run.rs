//! `dbwarden [run]`: the service until SIGTERM, SIGINT or a panic.

use anyhow::Context;

use dbwarden::config::Settings;

pub fn run(settings: Settings) -> anyhow::Result<u8> {
    let _guard = dbwarden::logging::init(&settings.logging)?;
    let code = actix_rt::System::new()
        .block_on(dbwarden::supervisor::run(settings))
        .context("dbwarden could not start")?;
    Ok(u8::try_from(code).unwrap_or(dbwarden::exit::NOT_OK))
}

//! `dbwarden verify FILE`: integrity_check and SHA-256 of any backup file, checked
//! against its manifest.

use std::path::Path;

use anyhow::Context;

use super::spinner;
use dbwarden::exit;

pub fn verify(file: &Path) -> anyhow::Result<u8> {
    let working = spinner(format!(
        "verifying {} (hash, integrity_check)",
        file.display()
    ));
    let report = dbwarden::backup::verify_file(file);
    working.finish_and_clear();
    let report = report.with_context(|| format!("verifying {}", file.display()))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if report.is_ok() {
        eprintln!("{}: ok", file.display());
        Ok(exit::OK)
    } else {
        eprintln!("{}: FAILED", file.display());
        Ok(exit::NOT_OK)
    }
}

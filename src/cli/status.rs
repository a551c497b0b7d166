//! `dbwarden status` and `dbwarden healthcheck`: the running service's health.

use std::time::Duration;

use super::client::ServiceClient;
use dbwarden::config::Settings;
use dbwarden::exit;

/// 0 when the service answers `healthy`, 1 otherwise; one line on stdout.
pub fn healthcheck(settings: &Settings, timeout: Duration) -> u8 {
    let client = ServiceClient::new(settings).with_timeout(timeout);
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

pub fn status(settings: &Settings, timeout: Duration) -> anyhow::Result<u8> {
    let client = ServiceClient::new(settings).with_timeout(timeout);
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

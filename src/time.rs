//! Timestamps as the event store keeps them.
//!
//! dbwarden writes `YYYY-MM-DD HH:MM:SS.ffffff` in UTC: it sorts as text together with
//! SQLite's `CURRENT_TIMESTAMP` (`YYYY-MM-DD HH:MM:SS`) and Go's default format that
//! Healarr writes (`2026-01-06 01:18:00.123456789 +0000 UTC`), and Go's SQLite driver
//! parses it back.

use chrono::{DateTime, Utc};

pub const STORE_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.6f";

pub fn to_store_text(t: DateTime<Utc>) -> String {
    t.format(STORE_FORMAT).to_string()
}

pub fn now_text() -> String {
    to_store_text(Utc::now())
}

/// `YYYY-MM-DD` of today in UTC: every stored format starts with it.
pub fn today_prefix() -> String {
    Utc::now().format("%Y-%m-%d").to_string()
}

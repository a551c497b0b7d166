//! Cron schedules, parsed once where they are read (settings, job files, Rust jobs)
//! and passed around as a [`Schedule`], never as text to parse again.
//!
//! The dialect is tokio-cron-scheduler's: UTC, six fields with seconds first
//! (`sec min hour dom month dow`), a seventh (year) accepted; day-of-month and
//! day-of-week combine with AND. Parsing uses croner, the parser tokio-cron-scheduler
//! itself runs, with its readable error messages.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use croner::parser::{CronParser, Seconds};
use croner::Cron;

/// A valid cron schedule and the text it was written as.
#[derive(Clone)]
pub struct Schedule {
    text: String,
    cron: Cron,
}

fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Required)
        .dom_and_dow(true)
        .build()
}

impl Schedule {
    /// Parses `text`; the error says why, with the text.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        parser()
            .parse(text)
            .map(|cron| Schedule {
                text: text.to_string(),
                cron,
            })
            .map_err(|e| {
                format!("`{text}` is not a 6-field cron expression with seconds (UTC): {e}")
            })
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first run strictly after `after`, to the second.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&after, false)
            .ok()
            // Runs are whole seconds; croner keeps the fraction of `after`.
            .and_then(|t| t.with_nanosecond(0))
    }

    /// The next run from now.
    pub fn next_run(&self) -> Option<DateTime<Utc>> {
        self.next_after(Utc::now())
    }

    /// The longest gap between two runs among the next `fires` runs after `from`;
    /// `None` when it fires fewer than twice.
    pub fn longest_interval(&self, from: DateTime<Utc>, fires: usize) -> Option<Duration> {
        let times: Vec<_> = self.cron.iter_after(from).take(fires).collect();
        times
            .windows(2)
            .filter_map(|w| (w[1] - w[0]).to_std().ok())
            .max()
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?})", self.text)
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Schedule) -> bool {
        self.text == other.text
    }
}

impl serde::Serialize for Schedule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Schedule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Schedule, D::Error> {
        let text = String::deserialize(d)?;
        Schedule::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::Schedule;

    #[test]
    fn six_fields_with_seconds() {
        assert!(Schedule::parse("0 */5 * * * *").is_ok());
        assert!(Schedule::parse("0 0 3 * * *").is_ok());
        assert!(
            Schedule::parse("0 0 3 * * * 2030").is_ok(),
            "a year field is accepted"
        );
        let five = Schedule::parse("*/5 * * * *").expect_err("five fields refused");
        assert!(five.contains("*/5 * * * *"), "{five}");
        assert!(Schedule::parse("0 61 * * * *").is_err());
        assert!(Schedule::parse("every day").is_err());
    }

    #[test]
    fn longest_interval_of_regular_and_irregular_schedules() {
        let from = chrono::DateTime::parse_from_rfc3339("2026-12-01T00:30:00Z")
            .expect("time")
            .with_timezone(&chrono::Utc);
        let hours = |h: u64| Some(std::time::Duration::from_secs(h * 3600));
        let gap = |s: &str, n| Schedule::parse(s).expect("valid").longest_interval(from, n);
        assert_eq!(gap("0 0 */6 * * *", 16), hours(6));
        assert_eq!(gap("0 0 2,8 * * *", 16), hours(18));
        assert_eq!(gap("0 0 3 * * Sun", 8), hours(7 * 24));
    }

    #[test]
    fn next_runs_are_whole_seconds_after_the_given_time() {
        let s = Schedule::parse("30 * * * * *").expect("valid");
        let after = chrono::DateTime::parse_from_rfc3339("2026-12-01T00:00:30.5Z")
            .expect("time")
            .with_timezone(&chrono::Utc);
        let next = s.next_after(after).expect("next");
        assert_eq!(next.to_rfc3339(), "2026-12-01T00:01:30+00:00");
    }
}

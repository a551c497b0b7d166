//! Replication lag over the last 24 hours, which the status page charts: per streaming
//! replica, the worst lag of each minute. The replication tailer samples it every
//! [`SAMPLE_EVERY`] from the spool (where lag is measured, see
//! [`super::spool::Spool::lag`]), so a spike shorter than that may be missed; `/metrics`
//! is the place for finer history.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use serde::Serialize;

use super::spool::Lag;

pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const KEPT: chrono::Duration = chrono::Duration::hours(24);

/// The worst lag seen in one minute.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LagPoint {
    /// The minute's start.
    pub at: DateTime<Utc>,
    pub seconds: f64,
    pub bytes: u64,
}

/// One replica's lag points, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LagSeries {
    pub replica: String,
    pub points: Vec<LagPoint>,
}

#[derive(Debug, Default)]
pub struct LagHistory {
    replicas: BTreeMap<String, VecDeque<LagPoint>>,
}

impl LagHistory {
    /// Adds a sample of `replica`'s lag taken at `now`.
    pub fn record(&mut self, replica: &str, now: DateTime<Utc>, lag: Lag) {
        let minute = now
            .duration_trunc(chrono::Duration::minutes(1))
            .unwrap_or(now);
        let points = self.replicas.entry(replica.to_string()).or_default();
        match points.back_mut() {
            Some(last) if last.at == minute => {
                last.seconds = last.seconds.max(lag.seconds);
                last.bytes = last.bytes.max(lag.bytes);
            }
            _ => points.push_back(LagPoint {
                at: minute,
                seconds: lag.seconds,
                bytes: lag.bytes,
            }),
        }
        while points.front().is_some_and(|p| p.at < now - KEPT) {
            points.pop_front();
        }
    }

    pub fn view(&self) -> Vec<LagSeries> {
        self.replicas
            .iter()
            .map(|(replica, points)| LagSeries {
                replica: replica.clone(),
                points: points.iter().cloned().collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lag(seconds: f64, bytes: u64) -> Lag {
        Lag { seconds, bytes }
    }

    #[test]
    fn each_minute_keeps_its_worst_sample_and_a_day_is_kept() {
        let start: DateTime<Utc> = "2026-12-03T10:00:10Z".parse().expect("time");
        let mut history = LagHistory::default();
        history.record("s3", start, lag(0.5, 100));
        history.record("s3", start + chrono::Duration::seconds(20), lag(3.0, 50));
        history.record("s3", start + chrono::Duration::seconds(60), lag(1.0, 900));
        history.record("nas", start, lag(0.0, 0));
        let view = history.view();
        assert_eq!(view.len(), 2);
        assert_eq!(view[1].replica, "s3");
        assert_eq!(
            view[1].points,
            [
                LagPoint {
                    at: "2026-12-03T10:00:00Z".parse().expect("time"),
                    seconds: 3.0,
                    bytes: 100
                },
                LagPoint {
                    at: "2026-12-03T10:01:00Z".parse().expect("time"),
                    seconds: 1.0,
                    bytes: 900
                }
            ]
        );
        history.record("s3", start + chrono::Duration::hours(24), lag(2.0, 1));
        let points = &history.view()[1].points;
        assert_eq!(points.len(), 2, "the first minute fell out: {points:?}");
        assert_eq!(
            points[0].at,
            "2026-12-03T10:01:00Z"
                .parse::<DateTime<Utc>>()
                .expect("time")
        );
        assert_eq!(points[1].seconds, 2.0);
    }
}

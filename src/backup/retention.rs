//! Which backups to delete: keep-last N, keep-daily D, keep-weekly W.
//!
//! Only good (verified) backups count toward any rule, and the newest good backup is
//! always kept, so a run of failed or rotten backups can never push the last good one
//! out. Bad backups (failed re-verification) are never deleted here: they may still hold
//! data `sqlite3 .recover` can salvage, and they stay visible until an operator acts.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub keep_last: usize,
    pub keep_daily: usize,
    pub keep_weekly: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub good: bool,
}

/// Names of the backups to delete.
pub fn to_delete(candidates: &[Candidate], policy: Policy) -> BTreeSet<String> {
    let mut good: Vec<&Candidate> = candidates.iter().filter(|c| c.good).collect();
    good.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.name.cmp(&a.name)));
    let mut keep: BTreeSet<&str> = BTreeSet::new();
    if let Some(newest) = good.first() {
        keep.insert(&newest.name);
    }
    for c in good.iter().take(policy.keep_last) {
        keep.insert(&c.name);
    }
    // Newest good backup of each of the most recent `keep_daily` days that have one.
    let mut days = BTreeSet::new();
    for c in &good {
        let day = c.created_at.date_naive();
        if days.len() < policy.keep_daily && days.insert(day) {
            keep.insert(&c.name);
        }
    }
    let mut weeks = BTreeSet::new();
    for c in &good {
        let week = c.created_at.iso_week();
        if weeks.len() < policy.keep_weekly && weeks.insert((week.year(), week.week())) {
            keep.insert(&c.name);
        }
    }
    candidates
        .iter()
        .filter(|c| c.good && !keep.contains(c.name.as_str()))
        .map(|c| c.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, day, hour, 0, 0)
            .single()
            .expect("valid time")
    }

    fn c(name: &str, day: u32, hour: u32, good: bool) -> Candidate {
        Candidate {
            name: name.into(),
            created_at: at(day, hour),
            good,
        }
    }

    fn names(set: &BTreeSet<String>) -> Vec<&str> {
        set.iter().map(String::as_str).collect()
    }

    #[test]
    fn retention_cases() {
        let p = |keep_last, keep_daily, keep_weekly| Policy {
            keep_last,
            keep_daily,
            keep_weekly,
        };
        // (case, backups, policy, expected deletions)
        let cases: Vec<(&str, Vec<Candidate>, Policy, Vec<&str>)> = vec![
            ("nothing to do", vec![], p(3, 0, 0), vec![]),
            (
                "keep last 2",
                vec![c("a", 1, 0, true), c("b", 1, 6, true), c("c", 1, 12, true)],
                p(2, 0, 0),
                vec!["a"],
            ),
            (
                "keep_last 0 still keeps the newest good",
                vec![c("a", 1, 0, true), c("b", 1, 6, true)],
                p(0, 0, 0),
                vec!["a"],
            ),
            (
                "daily keeps the newest of each day",
                vec![
                    c("a", 1, 0, true),
                    c("b", 1, 18, true),
                    c("c", 2, 6, true),
                    c("d", 3, 6, true),
                ],
                p(1, 3, 0),
                vec!["a"],
            ),
            (
                "daily window counts days with backups only",
                vec![c("a", 1, 0, true), c("b", 5, 0, true), c("c", 9, 0, true)],
                p(0, 2, 0),
                vec!["a"],
            ),
            (
                "weekly keeps the newest of each ISO week",
                // Nov 2026: 2nd is a Monday; weeks 45 (2-8), 46 (9-15), 47 (16-22)
                vec![
                    c("w45a", 2, 0, true),
                    c("w45b", 6, 0, true),
                    c("w46", 10, 0, true),
                    c("w47", 17, 0, true),
                ],
                p(1, 0, 3),
                vec!["w45a"],
            ),
            (
                // Found by mutation testing: `<=` kept one week too many unnoticed.
                "the weekly window counts weeks with backups only, and stops there",
                vec![
                    c("w45", 3, 0, true),
                    c("w46", 10, 0, true),
                    c("w47", 17, 0, true),
                ],
                p(0, 0, 2),
                vec!["w45"],
            ),
            (
                "bad backups never count and are kept",
                vec![
                    c("old", 1, 0, true),
                    c("good", 1, 6, true),
                    c("bad1", 2, 0, false),
                    c("bad2", 3, 0, false),
                ],
                p(1, 0, 0),
                vec!["old"],
            ),
            (
                "newer failures never push out the last good backup",
                vec![
                    c("good", 1, 0, true),
                    c("bad1", 2, 0, false),
                    c("bad2", 2, 6, false),
                    c("bad3", 3, 0, false),
                ],
                p(1, 1, 1),
                vec![],
            ),
            (
                "only bad backups: nothing deleted",
                vec![c("bad1", 2, 0, false)],
                p(3, 3, 3),
                vec![],
            ),
        ];
        for (case, backups, policy, expected) in cases {
            assert_eq!(names(&to_delete(&backups, policy)), expected, "{case}");
        }
    }
}

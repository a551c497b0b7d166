//! Restore drills: what turns "uploaded" into "restorable".
//!
//! A drill brings back the newest complete copy and one older one (the one whose last
//! drill is oldest, so that over the weeks every copy kept is drilled), exactly as a
//! restore would ([`super::fetch`]: the stored bytes against the manifest, decrypt,
//! decompress, the database's SHA-256 and size against the sealed facts, a full
//! `integrity_check`, the last event id and the event count), into a staging directory
//! that is emptied afterwards. Each copy's verdict is written beside it
//! (`<name>.drill.json`): a copy a drill failed is `bad` in the catalog, no longer
//! counted as good, and kept by retention.
//!
//! Only a verdict on the copy itself marks it bad. A drill that cannot run (the replica
//! unreachable, no identity to decrypt with) fails as a whole and marks nothing.

use std::path::Path;

use chrono::{DateTime, Utc};
use object_store::{ObjectStoreExt, PutPayload};
use serde::Serialize;

use super::catalog::{self, CopyStatus, DrillRecord, RemoteCopy};
use super::{fetch, stream, Replica, ReplicaError};
use crate::config::{self, Encryption};

/// One copy's verdict.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CopyVerdict {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// What one drill found.
#[derive(Debug, Clone, Serialize)]
pub struct DrillOutcome {
    pub replica: String,
    pub at: DateTime<Utc>,
    pub copies: Vec<CopyVerdict>,
}

impl DrillOutcome {
    pub fn ok(&self) -> bool {
        self.copies.iter().all(|c| c.ok)
    }

    /// One line for logs, alerts and job runs.
    pub fn summary(&self) -> String {
        self.copies
            .iter()
            .map(|c| {
                let verdict = if c.ok { "ok" } else { "FAILED" };
                format!("{}: {verdict} ({})", c.name, c.detail)
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Where drills of the replica `name` download to: beside the local backups, which
/// have room for one.
pub fn staging_dir(backup_dir: &Path, name: &str) -> std::path::PathBuf {
    backup_dir.join(format!(".replica-drill-{name}"))
}

/// The identities a drill of `replica` decrypts with (none for unencrypted copies).
pub fn identities(replica: &Replica) -> Result<Vec<age::x25519::Identity>, ReplicaError> {
    match (
        &replica.settings.age_identity_file,
        replica.settings.encryption,
    ) {
        (_, Encryption::None) => Ok(Vec::new()),
        (Some(path), Encryption::Age) => {
            config::read_identities(path).map_err(|reason| ReplicaError::Open {
                replica: replica.name().to_string(),
                reason: format!("age_identity_file: {reason}"),
            })
        }
        (None, Encryption::Age) => Err(ReplicaError::Open {
            replica: replica.name().to_string(),
            reason: "a drill decrypts its copies: set age_identity_file".into(),
        }),
    }
}

/// The copies a drill checks: the newest complete one, and the older complete one
/// drilled longest ago (never drilled first, then the oldest).
pub fn choose(copies: &[RemoteCopy]) -> Vec<&RemoteCopy> {
    let complete: Vec<&RemoteCopy> = copies
        .iter()
        .filter(|c| c.status == CopyStatus::Complete)
        .collect();
    let Some((newest, older)) = complete.split_last() else {
        return Vec::new();
    };
    let mut chosen = vec![*newest];
    if let Some(older) = older
        .iter()
        .min_by_key(|c| (c.drill.as_ref().map(|d| d.at), c.created_at))
    {
        chosen.insert(0, *older);
    }
    chosen
}

/// Runs one drill of `replica`, staging downloads under `staging` (emptied before and
/// after).
pub async fn run(
    replica: &Replica,
    identities: &[age::x25519::Identity],
    staging: &Path,
) -> Result<DrillOutcome, ReplicaError> {
    let copies = catalog::list(replica).await?;
    let chosen = choose(&copies);
    let generations: Vec<stream::Generation> = if replica.settings.stream {
        stream::list(replica)
            .await?
            .into_iter()
            .filter(|g| g.snapshot.is_some())
            .collect()
    } else {
        Vec::new()
    };
    if chosen.is_empty() && generations.is_empty() {
        return Err(ReplicaError::Empty {
            replica: replica.name().to_string(),
        });
    }
    clear(staging)?;
    let mut verdicts = Vec::with_capacity(chosen.len());
    for copy in chosen {
        let verdict = match fetch::fetch(replica, copy, identities, staging).await {
            Ok(fetched) => {
                let _ = std::fs::remove_file(&fetched.path);
                CopyVerdict {
                    name: copy.name.clone(),
                    ok: true,
                    detail: format!(
                        "restored and checked: {} bytes, SHA-256 {}, integrity_check ok, {} events up to id {}",
                        fetched.facts.size_bytes,
                        fetched.facts.sha256,
                        fetched.facts.event_count,
                        fetched.facts.last_event_id
                    ),
                }
            }
            Err(ReplicaError::BadCopy { reason, .. }) => CopyVerdict {
                name: copy.name.clone(),
                ok: false,
                detail: reason,
            },
            Err(e) => {
                remove(staging)?;
                return Err(e);
            }
        };
        record(replica, &verdict).await?;
        verdicts.push(verdict);
    }
    if !generations.is_empty() {
        match drill_stream(replica, &generations, identities, staging).await {
            Ok(stream_verdicts) => verdicts.extend(stream_verdicts),
            Err(e) => {
                remove(staging)?;
                return Err(e);
            }
        }
    }
    remove(staging)?;
    Ok(DrillOutcome {
        replica: replica.name().to_string(),
        at: Utc::now(),
        copies: verdicts,
    })
}

/// The stream's part of a drill: the newest generation restored to its last commit,
/// and the stream restored to a random time between the oldest generation's snapshot
/// and that commit, each checked as a restore checks it (every frame, every segment's
/// SHA-256, `integrity_check`) and against what its commit recorded (the time it was
/// read no later than asked, the newest event id where it was read exactly). A point
/// in the newest generation is also compared with the latest state: every event that
/// state keeps up to the point's newest id must be in the point, unchanged (the count
/// at the point is at least theirs, equal when nothing was deleted since).
/// Verdicts are named `stream <generation> latest` and `stream at <time>`. A replica
/// that does not answer fails the drill as a whole, as for copies.
async fn drill_stream(
    replica: &Replica,
    generations: &[stream::Generation],
    identities: &[age::x25519::Identity],
    staging: &Path,
) -> Result<Vec<CopyVerdict>, ReplicaError> {
    use stream::Target;
    let newest = &generations[generations.len() - 1];
    let work = staging.join("stream-work");
    let latest_out = staging.join("stream-latest.db");
    let latest = stream::restore(
        replica,
        newest,
        &Target::Latest,
        identities,
        &work,
        &latest_out,
    )
    .await;
    let end = match &latest {
        Ok(restored) => restored.commit.as_ref().map(|c| c.seen_at),
        Err(_) => None,
    };
    let latest_generation = latest.as_ref().ok().map(|r| r.generation.clone());
    let mut verdicts = vec![stream_verdict(
        format!("stream {} latest", newest.name),
        latest,
        None,
        None,
    )?];
    let start = generations[0].snapshot.as_ref().map(|s| s.taken_at);
    let end = end.or(newest.snapshot.as_ref().map(|s| s.taken_at));
    if let (Some(start), Some(end)) = (start, end) {
        let span = (end - start).num_milliseconds().max(0) as u128;
        let offset = if span == 0 {
            0
        } else {
            uuid::Uuid::new_v4().as_u128() % (span + 1)
        };
        let at = start + chrono::Duration::milliseconds(offset as i64);
        let point_out = staging.join("stream-point.db");
        let point =
            stream::restore_point(replica, &Target::At(at), identities, &work, &point_out).await;
        // Within one generation the latest state is a later state of the same
        // history: every event it kept up to the point's newest id must be there.
        let kept = match &point {
            Ok(p) if Some(&p.generation) == latest_generation.as_ref() => {
                let (earlier, later, through) =
                    (point_out.clone(), latest_out.clone(), p.last_event_id);
                let compared = tokio::task::spawn_blocking(move || {
                    crate::db::queries::events_missing_before(&earlier, &later, through)
                })
                .await;
                Some(match compared {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                })
            }
            _ => None,
        };
        let _ = std::fs::remove_file(&point_out);
        verdicts.push(stream_verdict(
            format!("stream at {}", at.to_rfc3339()),
            point,
            Some(at),
            kept,
        )?);
    }
    let _ = std::fs::remove_file(&latest_out);
    Ok(verdicts)
}

/// A stream restore's verdict; a replica that did not answer is not one. `kept`: for
/// a point, the events the latest state of its generation holds up to the point's
/// newest id, and how many of them the point lacks (see
/// [`crate::db::queries::events_missing_before`]).
fn stream_verdict(
    name: String,
    restored: Result<stream::Restored, ReplicaError>,
    asked: Option<DateTime<Utc>>,
    kept: Option<Result<(i64, i64), String>>,
) -> Result<CopyVerdict, ReplicaError> {
    let restored = match restored {
        Ok(r) => r,
        Err(e @ (ReplicaError::Store { .. } | ReplicaError::Cancelled)) => return Err(e),
        Err(e) => {
            return Ok(CopyVerdict {
                name,
                ok: false,
                detail: e.to_string(),
            })
        }
    };
    let mut problems = Vec::new();
    if let Some(commit) = &restored.commit {
        if asked.is_some_and(|at| commit.seen_at > at) {
            problems.push(format!(
                "it restored a commit read at {}, after the time asked",
                commit.seen_at.to_rfc3339()
            ));
        }
        // Commits record the highest id ever assigned; ones shipped before 2026-12-07
        // recorded `max(id)`. Either must match.
        if commit
            .last_event_id
            .is_some_and(|id| id != restored.highest_assigned && id != restored.last_event_id)
        {
            problems.push(format!(
                "its newest event id is {}, the commit recorded {:?}",
                restored.last_event_id, commit.last_event_id
            ));
        }
    }
    let mut against_latest = String::new();
    match kept {
        Some(Ok((kept, 0))) => {
            against_latest = format!(
                "; the {kept} events the latest state keeps up to id {} are all in it, unchanged",
                restored.last_event_id
            )
        }
        Some(Ok((kept, missing))) => problems.push(format!(
            "{missing} of the {kept} events the latest state keeps up to id {} are missing from it or differ",
            restored.last_event_id
        )),
        Some(Err(e)) => problems.push(format!("comparing it with the latest state failed: {e}")),
        None => {}
    }
    let at = match &restored.commit {
        Some(c) => format!("commit at {} (read {})", c.at, c.seen_at.to_rfc3339()),
        None => "its snapshot".into(),
    };
    Ok(CopyVerdict {
        name,
        ok: problems.is_empty(),
        detail: if problems.is_empty() {
            format!(
                "restored and checked to {at} of generation {}: integrity_check ok, {} events up to id {}{against_latest}",
                restored.generation, restored.event_count, restored.last_event_id
            )
        } else {
            problems.join("; ")
        },
    })
}

/// Writes the verdict beside the copy.
async fn record(replica: &Replica, verdict: &CopyVerdict) -> Result<(), ReplicaError> {
    let record = DrillRecord {
        at: Utc::now(),
        ok: verdict.ok,
        detail: verdict.detail.clone(),
        host: super::host_name(),
    };
    let body = serde_json::to_vec_pretty(&record).map_err(|e| ReplicaError::Io {
        path: verdict.name.clone().into(),
        source: std::io::Error::other(e),
    })?;
    replica
        .store
        .put(&replica.layout.drill(&verdict.name), PutPayload::from(body))
        .await
        .map_err(|e| replica.error(e))?;
    Ok(())
}

/// Empties (and creates) the staging directory: a drill that was cut short left at
/// most one download there.
fn clear(staging: &Path) -> Result<(), ReplicaError> {
    remove(staging)?;
    crate::db::create_private_dir(staging).map_err(ReplicaError::io(staging))
}

fn remove(staging: &Path) -> Result<(), ReplicaError> {
    match std::fs::remove_dir_all(staging) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ReplicaError::io(staging)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(name: &str, minute: u32, status: CopyStatus, drilled: Option<u32>) -> RemoteCopy {
        let at = |m: u32| {
            DateTime::parse_from_rfc3339(&format!("2026-12-01T10:{m:02}:00Z"))
                .map(|t| t.with_timezone(&Utc))
                .expect("time")
        };
        RemoteCopy {
            name: name.into(),
            created_at: at(minute),
            status,
            object_bytes: Some(1),
            manifest: None,
            drill: drilled.map(|m| DrillRecord {
                at: at(m),
                ok: true,
                detail: String::new(),
                host: "h".into(),
            }),
            problem: None,
        }
    }

    fn names(chosen: Vec<&RemoteCopy>) -> Vec<&str> {
        chosen.into_iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn a_drill_takes_the_newest_copy_and_the_older_one_drilled_longest_ago() {
        let copies = [
            copy("a", 1, CopyStatus::Complete, Some(30)),
            copy("b", 2, CopyStatus::Complete, Some(20)),
            copy("c", 3, CopyStatus::Bad, None),
            copy("d", 4, CopyStatus::Complete, None),
            copy("e", 5, CopyStatus::Incomplete, None),
        ];
        assert_eq!(names(choose(&copies)), ["b", "d"]);
        let never = [
            copy("a", 1, CopyStatus::Complete, Some(30)),
            copy("b", 2, CopyStatus::Complete, None),
            copy("d", 4, CopyStatus::Complete, Some(31)),
        ];
        assert_eq!(
            names(choose(&never)),
            ["b", "d"],
            "never drilled comes first"
        );
        assert_eq!(names(choose(&copies[3..4])), ["d"]);
        assert!(
            choose(&copies[2..3]).is_empty(),
            "no complete copy, nothing to drill"
        );
    }
}

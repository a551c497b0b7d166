//! Object names under a replica's prefix (see the module docs of [`super`]).

use object_store::path::Path;

use super::segment::Position;
use crate::backup::catalog;
use crate::config::Encryption;

const BACKUPS: &str = "backups";
const COPY_ZSTD: &str = ".zst";
const COPY_ZSTD_AGE: &str = ".zst.age";
const MANIFEST: &str = ".manifest.json";
const DRILL: &str = ".drill.json";
const GENERATIONS: &str = "generations";
const SNAPSHOT_MANIFEST: &str = "snapshot.json";
const SEGMENT: &str = ".seg";

/// What an object under `backups/` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Copy(Encryption),
    Manifest,
    Drill,
}

#[derive(Debug, Clone)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    /// `prefix` as in the replica's URL, without leading or trailing `/`.
    pub fn new(prefix: &str) -> Layout {
        Layout {
            prefix: prefix.trim_matches('/').to_string(),
        }
    }

    fn under(&self, rest: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(rest)
        } else {
            Path::from(format!("{}/{rest}", self.prefix))
        }
    }

    pub fn backups(&self) -> Path {
        self.under(BACKUPS)
    }

    pub fn copy(&self, name: &str, encryption: Encryption) -> Path {
        let suffix = Self::suffix(encryption);
        self.under(&format!("{BACKUPS}/{name}{suffix}"))
    }

    pub fn manifest(&self, name: &str) -> Path {
        self.under(&format!("{BACKUPS}/{name}{MANIFEST}"))
    }

    pub fn drill(&self, name: &str) -> Path {
        self.under(&format!("{BACKUPS}/{name}{DRILL}"))
    }

    fn suffix(encryption: Encryption) -> &'static str {
        match encryption {
            Encryption::Age => COPY_ZSTD_AGE,
            Encryption::None => COPY_ZSTD,
        }
    }

    /// Continuous replication: `generations/<generation>/...`.
    pub fn generations(&self) -> Path {
        self.under(GENERATIONS)
    }

    pub fn snapshot(&self, generation: &str, encryption: Encryption) -> Path {
        let suffix = Self::suffix(encryption);
        self.under(&format!("{GENERATIONS}/{generation}/snapshot.db{suffix}"))
    }

    /// Written after the snapshot is complete: a generation counts only with it.
    pub fn snapshot_manifest(&self, generation: &str) -> Path {
        self.under(&format!("{GENERATIONS}/{generation}/{SNAPSHOT_MANIFEST}"))
    }

    /// Everything of one generation.
    pub fn generation(&self, generation: &str) -> Path {
        self.under(&format!("{GENERATIONS}/{generation}"))
    }

    pub fn segments(&self, generation: &str) -> Path {
        self.under(&format!("{GENERATIONS}/{generation}/segments"))
    }

    /// A segment, named `<first>_<last>` by the positions it holds.
    pub fn segment(&self, generation: &str, name: &str, encryption: Encryption) -> Path {
        let suffix = Self::suffix(encryption);
        self.under(&format!(
            "{GENERATIONS}/{generation}/segments/{name}{SEGMENT}{suffix}"
        ))
    }

    /// The generation of an object under `generations/`, with the rest of its name.
    pub fn parse_generation<'a>(&self, location: &'a Path) -> Option<(&'a str, &'a str)> {
        let rest = location
            .as_ref()
            .strip_prefix(self.generations().as_ref())?
            .strip_prefix('/')?;
        rest.split_once('/')
    }

    /// A segment object's first and last positions and encryption.
    pub fn parse_segment(
        &self,
        location: &Path,
    ) -> Option<(String, Position, Position, Encryption)> {
        let (generation, rest) = self.parse_generation(location)?;
        let file = rest.strip_prefix("segments/")?;
        let (stem, encryption) = [
            (COPY_ZSTD_AGE, Encryption::Age),
            (COPY_ZSTD, Encryption::None),
        ]
        .into_iter()
        .find_map(|(suffix, e)| {
            file.strip_suffix(suffix)
                .and_then(|f| f.strip_suffix(SEGMENT))
                .map(|stem| (stem, e))
        })?;
        let (first, last) = stem.split_once('_')?;
        Some((
            generation.to_string(),
            first.parse().ok()?,
            last.parse().ok()?,
            encryption,
        ))
    }

    pub fn lease(&self) -> Path {
        self.under("lease.json")
    }

    /// The backup name and kind of an object dbwarden writes under `backups/`; `None`
    /// for anything else (which dbwarden never touches).
    pub fn parse(&self, location: &Path) -> Option<(String, ObjectKind)> {
        let file = location.as_ref().strip_prefix(self.backups().as_ref())?;
        let file = file.strip_prefix('/')?;
        let kinds = [
            (COPY_ZSTD_AGE, ObjectKind::Copy(Encryption::Age)),
            (COPY_ZSTD, ObjectKind::Copy(Encryption::None)),
            (MANIFEST, ObjectKind::Manifest),
            (DRILL, ObjectKind::Drill),
        ];
        kinds.into_iter().find_map(|(suffix, kind)| {
            file.strip_suffix(suffix)
                .filter(|name| {
                    catalog::is_backup_name(name) && catalog::time_of_name(name).is_some()
                })
                .map(|name| (name.to_string(), kind))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_it_gives_is_read_back_and_nothing_else_is_ours() {
        for prefix in ["", "a", "a/b/c/"] {
            let layout = Layout::new(prefix);
            let name = "dbwarden-20261202T101500Z.db";
            for (path, kind) in [
                (
                    layout.copy(name, Encryption::Age),
                    ObjectKind::Copy(Encryption::Age),
                ),
                (
                    layout.copy(name, Encryption::None),
                    ObjectKind::Copy(Encryption::None),
                ),
                (layout.manifest(name), ObjectKind::Manifest),
                (layout.drill(name), ObjectKind::Drill),
            ] {
                assert_eq!(
                    layout.parse(&path),
                    Some((name.to_string(), kind)),
                    "{path}"
                );
            }
            let first = Position { wal: 0, frame: 7 };
            let last = Position {
                wal: 2,
                frame: 0x1f,
            };
            for encryption in [Encryption::Age, Encryption::None] {
                let segment = layout.segment(
                    "20261203T054000.000000Z",
                    &format!("{first}_{last}"),
                    encryption,
                );
                assert_eq!(
                    layout.parse_segment(&segment),
                    Some((
                        "20261203T054000.000000Z".to_string(),
                        first,
                        last,
                        encryption
                    )),
                    "{segment}"
                );
                assert_eq!(layout.parse(&segment), None, "a segment is not a backup");
            }
            let snapshot = layout.snapshot_manifest("g");
            assert_eq!(
                layout.parse_generation(&snapshot),
                Some(("g", "snapshot.json"))
            );
            assert_eq!(layout.parse_segment(&snapshot), None);
            for foreign in [
                "backups/notes.txt",
                "backups/dbwarden-20261202T101500Z.db",
                "backups/dbwarden-garbage.db.zst",
                "backups/sub/dbwarden-20261202T101500Z.db.zst",
                "other/dbwarden-20261202T101500Z.db.zst",
            ] {
                let path = if layout.prefix.is_empty() {
                    Path::from(foreign)
                } else {
                    Path::from(format!("{}/{foreign}", layout.prefix))
                };
                assert_eq!(layout.parse(&path), None, "{path}");
            }
        }
    }
}

//! What a disk keeps of a file at a power cut: the content it had at its last sync,
//! plus some of the writes made since, as the cut's mode decides.
//!
//! The model replays writes onto the last synced content rather than undoing them
//! from the current one, so a write that is lost never takes a kept later write with
//! it (undoing an append by truncating would), and a write into a region the file did
//! not have yet (an append: most WAL writes) can be torn like any other: the sectors
//! that did not reach the disk read back as zeros or as garbage.

/// A change to a file since its last sync, in the order it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Write {
        offset: u64,
        data: Vec<u8>,
    },
    /// A truncation, or a size hint that grew the file.
    SetLen(u64),
}

/// One file's content at its last sync and what was done to it since.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileHistory {
    pub synced: Vec<u8>,
    pub changes: Vec<Change>,
}

/// Which of a file's unsynced changes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// None of them.
    LoseAll,
    /// Each one, or not, at random.
    Subset,
    /// The changes before this index whole, this one torn (some of its sectors), none
    /// after it: the power went out in the middle of a write.
    TornAt(usize),
}

/// The sector size writes are torn at.
pub const SECTOR: u64 = 512;

impl FileHistory {
    pub fn new(synced: Vec<u8>) -> FileHistory {
        FileHistory {
            synced,
            changes: Vec::new(),
        }
    }

    /// The file's content after the cut. `random` gives the coin flips and garbage.
    pub fn after_cut(&self, fate: Fate, random: &mut impl FnMut() -> u64) -> Vec<u8> {
        let mut image = self.synced.clone();
        for (i, change) in self.changes.iter().enumerate() {
            let reaches_disk = match fate {
                Fate::LoseAll => false,
                Fate::Subset => random() >> 63 == 0,
                Fate::TornAt(k) => i <= k,
            };
            if !reaches_disk {
                continue;
            }
            match change {
                Change::SetLen(len) => image.resize(*len as usize, 0),
                Change::Write { offset, data } if fate == Fate::TornAt(i) => {
                    tear(&mut image, *offset, data, random)
                }
                Change::Write { offset, data } => {
                    let (start, end) = (*offset as usize, *offset as usize + data.len());
                    if image.len() < end {
                        image.resize(end, 0);
                    }
                    image[start..end].copy_from_slice(data);
                }
            }
        }
        image
    }
}

/// Writes some of `data`'s sectors. A sector that did not make it keeps what was there,
/// or, where the file had nothing yet, reads back as zeros or garbage. With two or more
/// sectors, at least one makes it and at least one does not: a tear, not a whole write.
fn tear(image: &mut Vec<u8>, offset: u64, data: &[u8], random: &mut impl FnMut() -> u64) {
    let before = image.len() as u64;
    let end = offset + data.len() as u64;
    if (image.len() as u64) < end {
        image.resize(end as usize, 0);
    }
    let mut sectors = Vec::new();
    let mut at = offset;
    while at < end {
        let next = ((at / SECTOR + 1) * SECTOR).min(end);
        sectors.push((at, next));
        at = next;
    }
    let mut kept: Vec<bool> = sectors.iter().map(|_| random() >> 63 == 0).collect();
    if kept.len() >= 2 {
        if kept.iter().all(|&k| k) {
            kept[0] = false;
        }
        if kept.iter().all(|&k| !k) {
            let last = kept.len() - 1;
            kept[last] = true;
        }
    }
    for ((from, to), kept) in sectors.into_iter().zip(kept) {
        let (a, b) = (from as usize, to as usize);
        if kept {
            image[a..b].copy_from_slice(&data[(from - offset) as usize..(to - offset) as usize]);
        } else if from >= before && random() >> 63 == 0 {
            // Never written before: the device returns garbage for it (or, left as
            // resized, zeros).
            for byte in &mut image[a..b] {
                *byte = random() as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed | 1;
        move || {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    fn appends(blocks: &[u8]) -> FileHistory {
        let mut h = FileHistory::new(vec![9; 512]);
        for (i, &b) in blocks.iter().enumerate() {
            h.changes.push(Change::Write {
                offset: 512 + 1024 * i as u64,
                data: vec![b; 1024],
            });
        }
        h
    }

    /// A tear of several sectors is never whole and never nothing, whatever the coin
    /// says: a coin that keeps every sector still loses the first, one that keeps none
    /// still keeps the last.
    #[test]
    fn a_tear_of_several_sectors_keeps_some_and_loses_some_whatever_the_coin() {
        let old = vec![7u8; 2048];
        let mut h = FileHistory::new(old.clone());
        h.changes.push(Change::Write {
            offset: 0,
            data: vec![1; 2048],
        });
        let sector = SECTOR as usize;
        // `random() >> 63 == 0` keeps a sector: 0 keeps every one, u64::MAX none.
        let all_kept = h.after_cut(Fate::TornAt(0), &mut || 0);
        assert_eq!(
            &all_kept[..sector],
            &old[..sector],
            "the first sector is lost"
        );
        assert!(
            all_kept[sector..].iter().all(|&b| b == 1),
            "the others kept"
        );
        let none_kept = h.after_cut(Fate::TornAt(0), &mut || u64::MAX);
        assert_eq!(
            &none_kept[..2048 - sector],
            &old[..2048 - sector],
            "lost, old bytes stay"
        );
        assert!(
            none_kept[2048 - sector..].iter().all(|&b| b == 1),
            "the last sector kept"
        );
    }

    #[test]
    fn losing_everything_gives_back_the_synced_content() {
        let h = appends(&[1, 2, 3]);
        assert_eq!(h.after_cut(Fate::LoseAll, &mut rng(1)), vec![9; 512]);
    }

    #[test]
    fn a_lost_append_never_takes_a_kept_later_write_with_it() {
        let mut h = FileHistory::new(Vec::new());
        h.changes.push(Change::Write {
            offset: 0,
            data: vec![1; 512],
        });
        h.changes.push(Change::Write {
            offset: 512,
            data: vec![2; 512],
        });
        // Find seeds where the first is lost and the second kept.
        let mut seen = false;
        for seed in 1..200 {
            let image = h.after_cut(Fate::Subset, &mut rng(seed));
            if image.len() == 1024 && image[..512] == [0; 512] {
                assert_eq!(image[512..], [2; 512], "the kept write is whole");
                seen = true;
            }
        }
        assert!(seen, "some seed loses the first write and keeps the second");
    }

    #[test]
    fn a_torn_append_keeps_some_sectors_and_not_others() {
        let mut h = FileHistory::new(Vec::new());
        h.changes.push(Change::Write {
            offset: 0,
            data: vec![7; 4096],
        });
        for seed in 1..50 {
            let image = h.after_cut(Fate::TornAt(0), &mut rng(seed));
            assert_eq!(image.len(), 4096);
            let whole: Vec<bool> = image.chunks(512).map(|s| s == [7; 512]).collect();
            assert!(
                whole.iter().any(|&w| w),
                "some sector reached the disk: {seed}"
            );
            assert!(whole.iter().any(|&w| !w), "some sector did not: {seed}");
        }
    }

    #[test]
    fn tearing_keeps_earlier_changes_and_drops_later_ones() {
        let h = appends(&[1, 2, 3]);
        let image = h.after_cut(Fate::TornAt(1), &mut rng(3));
        assert_eq!(image[..512], [9; 512], "the synced content");
        assert_eq!(image[512..1536], [1; 1024], "the first append, whole");
        // The third one (at 2560..3584) is lost: the file ends with the torn write.
        assert_eq!(image.len(), 2560);
    }

    #[test]
    fn a_kept_truncation_shortens_and_a_lost_one_does_not() {
        let mut h = FileHistory::new(vec![5; 2048]);
        h.changes.push(Change::SetLen(512));
        assert_eq!(h.after_cut(Fate::TornAt(0), &mut rng(1)).len(), 512);
        assert_eq!(h.after_cut(Fate::LoseAll, &mut rng(1)).len(), 2048);
    }
}

//! The crash VFS's own model, checked from outside: what a power cut leaves on the
//! disk is what `db::crashvfs` says a disk keeps. The power-loss sweep cannot show this
//! (with `synchronous=FULL` nothing depends on what a cut loses), so a model that kept
//! or lost the wrong things would pass it unnoticed.
//!
//! Each scenario runs in a child process (a cut ends the process), which makes files
//! durable, changes them without syncing, through `db::durable` and through SQLite
//! on the VFS, writes down what it wrote (with plain `std::fs`, which the model does not
//! see), and cuts the power. The parent then reads what is left.

use std::path::{Path, PathBuf};
use std::process::Command;

use dbwarden::db::{crashvfs, durable};

const SCENARIO: &str = "DBWARDEN_CRASH_MODEL_SCENARIO";
const DIR: &str = "DBWARDEN_CRASH_MODEL_DIR";

// ------------------------------------------------------------------ the child

#[test]
#[ignore = "the child process of the crash-model tests; they run it"]
fn crash_model_child() {
    let (Ok(scenario), Ok(dir)) = (std::env::var(SCENARIO), std::env::var(DIR)) else {
        return;
    };
    let dir = PathBuf::from(dir);
    crashvfs::register().expect("register the crash VFS");
    match scenario.as_str() {
        "durable" => durable_steps(&dir),
        "sqlite" => sqlite_files(&dir),
        "wal" => unsynced_wal(&dir),
        other => panic!("no scenario {other}"),
    }
    crashvfs::power_cut_now();
}

/// Writes `content` as a new file and makes it durable (file, then directory).
fn durable_file(path: &Path, content: &[u8]) {
    durable::write_file(path, content, 0o600).expect("write");
    durable::sync_file(path).expect("sync");
    durable::sync_dir(path.parent().expect("dir")).expect("sync dir");
}

/// dbwarden's own steps, in a directory reached through a symlink (as SQLite would
/// resolve it, the model must too): durable files stay; an unsynced new file, rename,
/// delete and overwrite are undone.
fn durable_steps(dir: &Path) {
    let real = dir.join("real");
    std::fs::create_dir(&real).expect("real dir");
    std::os::unix::fs::symlink(&real, dir.join("link")).expect("symlink");
    let d = dir.join("link");
    durable_file(&d.join("kept"), b"kept");
    durable_file(&d.join("renamed-from"), b"renamed");
    durable_file(&d.join("deleted"), b"deleted");
    durable_file(&d.join("overwritten"), b"before");
    durable_file(&d.join("moved-from"), b"moved");
    durable::rename(&d.join("moved-from"), &d.join("moved-to")).expect("rename");
    durable::sync_dir(&d).expect("sync dir");

    durable::rename(&d.join("renamed-from"), &d.join("renamed-to")).expect("rename");
    durable::remove_file(&d.join("deleted")).expect("remove");
    durable::write_file(&d.join("overwritten"), b"after", 0o600).expect("overwrite");
    durable::write_file(&d.join("new"), b"new", 0o600).expect("new file");
}

/// SQLite's own files: a WAL database open at the cut, and a rollback-journal
/// database whose last commit deleted its journal without syncing the directory (as
/// SQLite does below `synchronous=EXTRA`).
fn sqlite_files(dir: &Path) {
    let open = |name: &str| {
        rusqlite::Connection::open_with_flags_and_vfs(
            dir.join(name),
            rusqlite::OpenFlags::default(),
            crashvfs::NAME,
        )
        .expect("open on the crash VFS")
    };
    let wal = open("wal.db");
    wal.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE t(x); INSERT INTO t VALUES (1);",
    )
    .expect("a WAL database");
    let journal = open("journal.db");
    journal
        .execute_batch(
            "PRAGMA journal_mode=DELETE; PRAGMA synchronous=FULL;
             CREATE TABLE t(x); INSERT INTO t VALUES (1);",
        )
        .expect("a rollback-journal database");
    // Written down before the cut: whether the journal is gone now (it must be).
    std::fs::write(
        dir.join("journal-gone-before-cut"),
        (!dir.join("journal.db-journal").exists()).to_string(),
    )
    .expect("note");
    // Kept open: the cut happens with both connections alive.
    std::mem::forget(wal);
    std::mem::forget(journal);
}

/// A WAL whose first commit is durable, then many commits with `synchronous=OFF`:
/// appends nothing ever syncs. Writes down the WAL's durable length and its whole
/// content as SQLite wrote it.
fn unsynced_wal(dir: &Path) {
    let conn = rusqlite::Connection::open_with_flags_and_vfs(
        dir.join("w.db"),
        rusqlite::OpenFlags::default(),
        crashvfs::NAME,
    )
    .expect("open on the crash VFS");
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE t(x BLOB);",
    )
    .expect("schema");
    let wal = dir.join("w.db-wal");
    let durable_len = std::fs::metadata(&wal).expect("the WAL").len();
    conn.execute_batch("PRAGMA synchronous=OFF")
        .expect("unsynced");
    for _ in 0..40 {
        conn.execute("INSERT INTO t VALUES (randomblob(3000))", [])
            .expect("insert");
    }
    // A second file with unsynced changes, so a torn cut has two to choose from.
    durable_file(&dir.join("other"), b"other, as synced");
    durable::write_file(&dir.join("other"), b"other, overwritten", 0o600).expect("overwrite");
    std::fs::write(dir.join("wal-durable-len"), durable_len.to_string()).expect("note");
    std::fs::write(
        dir.join("wal-as-written"),
        std::fs::read(&wal).expect("WAL"),
    )
    .expect("note");
    std::mem::forget(conn);
}

// ------------------------------------------------------------------ the parent

/// Runs `scenario` in a child under `mode` and `seed`; answers its directory once the
/// child has cut the power (and fails unless it did).
fn run(scenario: &str, mode: &str, seed: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let status = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "crash_model_child",
            "--ignored",
            "--test-threads=1",
        ])
        .env(SCENARIO, scenario)
        .env(DIR, dir.path())
        .env("DBWARDEN_CRASH_MODE", mode)
        .env("DBWARDEN_CRASH_SEED", seed.to_string())
        .env_remove("DBWARDEN_CRASH_AT")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run the child");
    assert_eq!(
        status.code(),
        Some(crashvfs::EXIT_CODE),
        "{scenario} under {mode}/{seed}: the child did not cut the power"
    );
    dir
}

fn content(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

#[test]
fn a_cut_undoes_what_dbwarden_did_not_make_durable_and_keeps_what_it_did() {
    let dir = run("durable", "all", 1);
    let d = dir.path().join("real");
    let at = |name: &str| content(&d.join(name));
    assert_eq!(at("kept").as_deref(), Some(&b"kept"[..]), "a durable file");
    assert_eq!(
        at("moved-to").as_deref(),
        Some(&b"moved"[..]),
        "a rename whose directory was synced"
    );
    assert_eq!(
        at("moved-from"),
        None,
        "a rename whose directory was synced"
    );
    assert_eq!(
        at("renamed-from").as_deref(),
        Some(&b"renamed"[..]),
        "an unsynced rename is undone"
    );
    assert_eq!(at("renamed-to"), None, "an unsynced rename is undone");
    assert_eq!(
        at("deleted").as_deref(),
        Some(&b"deleted"[..]),
        "an unsynced delete is undone, the file back with its durable content"
    );
    assert_eq!(
        at("overwritten").as_deref(),
        Some(&b"before"[..]),
        "an unsynced overwrite is lost"
    );
    assert_eq!(at("new"), None, "a new file never synced is gone");
}

#[test]
fn a_cut_brings_back_a_journal_sqlite_deleted_and_drops_the_shared_memory() {
    let dir = run("sqlite", "all", 1);
    let d = dir.path();
    assert_eq!(
        std::fs::read_to_string(d.join("journal-gone-before-cut")).expect("note"),
        "true",
        "SQLite deleted its journal at the commit"
    );
    assert!(
        d.join("journal.db-journal").exists(),
        "the delete was not made durable, so the cut brings the journal back"
    );
    assert!(d.join("wal.db-wal").exists(), "the WAL was made durable");
    assert!(
        !d.join("wal.db-shm").exists(),
        "shared memory does not survive a power cut"
    );
}

/// How much of one write (a WAL frame's header or page) reached the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reached {
    Whole,
    /// Some sectors (of those that hold something), not all.
    Part,
    Nothing,
}

/// Each write SQLite made to the WAL after its durable length, in order, and how much
/// of it is on the disk after the cut.
fn wal_writes(dir: &Path) -> Vec<Reached> {
    let written = content(&dir.join("wal-as-written")).expect("note");
    let durable: usize = std::fs::read_to_string(dir.join("wal-durable-len"))
        .expect("note")
        .parse()
        .expect("a length");
    let after = content(&dir.join("w.db-wal")).unwrap_or_default();
    assert_eq!(
        &after[..durable.min(after.len())],
        &written[..durable],
        "the durable part of the WAL is kept whole"
    );
    let page = u32::from_be_bytes(written[8..12].try_into().expect("page size")) as usize;
    let mut writes = Vec::new();
    let mut at = durable;
    while at < written.len() {
        for len in [24, page] {
            let wanted = &written[at..at + len];
            let got = after.get(at..at + len);
            let sectors: Vec<bool> = wanted
                .chunks(512)
                .enumerate()
                .filter(|(_, s)| s.iter().any(|&b| b != 0))
                .map(|(i, s)| got.is_some_and(|g| &g[i * 512..i * 512 + s.len()] == s))
                .collect();
            writes.push(match (got == Some(wanted), sectors.iter().any(|&k| k)) {
                (true, _) => Reached::Whole,
                (false, true) => Reached::Part,
                (false, false) => Reached::Nothing,
            });
            at += len;
        }
    }
    writes
}

#[test]
fn a_subset_cut_keeps_some_unsynced_writes_and_loses_others_at_random() {
    for seed in [1, 2, 3] {
        let dir = run("wal", "subset", seed);
        let writes = wal_writes(dir.path());
        let whole = writes.iter().filter(|w| **w == Reached::Whole).count();
        let nothing = writes.iter().filter(|w| **w == Reached::Nothing).count();
        assert!(writes.len() >= 80, "{} writes", writes.len());
        assert_eq!(
            whole + nothing,
            writes.len(),
            "seed {seed}: nothing is torn: {writes:?}"
        );
        // A fair coin for each: far from all or none (a quarter either way is more
        // than 5 standard deviations from even for 80 writes).
        assert!(
            whole * 4 >= writes.len() && nothing * 4 >= writes.len(),
            "seed {seed}: {whole} kept, {nothing} lost of {}",
            writes.len()
        );
        // And not in long runs: kept and lost alternate often.
        let changes = writes.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(
            changes * 4 >= writes.len(),
            "seed {seed}: only {changes} changes between kept and lost: {writes:?}"
        );
    }
}

#[test]
fn a_torn_cut_keeps_one_files_writes_up_to_a_torn_one_and_loses_every_other_change() {
    let mut wal_torn = 0;
    let mut other_torn = 0;
    // Where the WAL was torn, for the seeds that tore it: anywhere among its writes.
    let mut wal_tears = Vec::new();
    let mut torn_pages = Vec::new();
    for seed in 1..=8 {
        let dir = run("wal", "torn", seed);
        let writes = wal_writes(dir.path());
        let other = content(&dir.path().join("other")).unwrap_or_default();
        let other_lost = other == b"other, as synced";
        let first_short = writes
            .iter()
            .position(|w| *w != Reached::Whole)
            .unwrap_or(writes.len());
        assert!(
            writes[first_short..]
                .iter()
                .skip(1)
                .all(|w| *w == Reached::Nothing),
            "seed {seed}: after the torn write nothing reaches the disk: {writes:?}"
        );
        let wal_reached = first_short > 0 || writes.get(first_short) == Some(&Reached::Part);
        assert!(
            !wal_reached || other_lost,
            "seed {seed}: only one file is torn, yet the WAL kept writes and `other` changed"
        );
        if wal_reached {
            wal_torn += 1;
            wal_tears.push((first_short, writes.len()));
            // Units alternate frame header (one sector) and page (eight): a torn page
            // keeps some of its sectors and loses others.
            if first_short % 2 == 1 {
                torn_pages.push((seed, writes[first_short]));
            }
        }
        if !other_lost {
            other_torn += 1;
        }
    }
    assert!(
        wal_torn > 0 && other_torn > 0,
        "over 8 seeds the torn file is sometimes the WAL ({wal_torn}) and sometimes the other ({other_torn})"
    );
    // A tear inside the WAL's writes, not past its end (which would keep them all),
    // and not always near its start: the torn write is any of its writes.
    assert!(
        wal_tears.iter().all(|(at, len)| at < len),
        "the WAL kept every write, so nothing was torn: {wal_tears:?}"
    );
    assert!(
        wal_tears.iter().any(|(at, _)| *at >= 3),
        "the WAL is torn only among its first writes: {wal_tears:?}"
    );
    assert!(
        !torn_pages.is_empty() && torn_pages.iter().all(|(_, r)| *r == Reached::Part),
        "a torn page keeps some sectors, not all: {torn_pages:?}"
    );
}

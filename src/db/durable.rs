//! The file-system steps outside SQLite whose durability matters: write a new file,
//! fsync it, rename it, remove one, fsync their directory. Backups, manifests,
//! retention and restores take them through here.
//!
//! In a release build they are the plain system calls. Test builds (the `crash-vfs`
//! feature) report them to the crash-simulating VFS of the power-loss tests
//! ([`super::crashvfs`]) when it is active: it must know which renames a power cut
//! would undo and which syncs count as sync points.

use std::fs::File;
use std::io;
use std::path::Path;

/// Creates (or truncates) `path` with permissions `mode` and writes `content`; durable
/// only once [`sync_file`] and then [`sync_dir`] ran.
pub fn write_file(path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    let write = || {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)?
            .write_all(content)
    };
    #[cfg(feature = "crash-vfs")]
    return super::crashvfs::write_file(path, content, write);
    #[cfg(not(feature = "crash-vfs"))]
    write()
}

/// Creates (or truncates) `path` with permissions `mode` for the caller to write, for
/// content too large to hold in memory; durable only once [`sync_file`] and then
/// [`sync_dir`] ran. Under the crash VFS a cut before that sync loses everything
/// written to it (its writes are not recorded one by one, so no mode keeps a part).
pub fn create_file(path: &Path, mode: u32) -> io::Result<File> {
    let create = || {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
    };
    #[cfg(feature = "crash-vfs")]
    return super::crashvfs::create_file(path, create);
    #[cfg(not(feature = "crash-vfs"))]
    create()
}

/// unlink(2); durable only once the directory is synced.
pub fn remove_file(path: &Path) -> io::Result<()> {
    #[cfg(feature = "crash-vfs")]
    return super::crashvfs::remove_file(path);
    #[cfg(not(feature = "crash-vfs"))]
    std::fs::remove_file(path)
}

/// fsync of a file's content.
pub fn sync_file(path: &Path) -> io::Result<()> {
    let sync = || File::open(path)?.sync_all();
    #[cfg(feature = "crash-vfs")]
    return super::crashvfs::sync_file(path, sync);
    #[cfg(not(feature = "crash-vfs"))]
    sync()
}

/// fsync of a directory: renames, creations and removals in it become durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    let sync = || File::open(dir)?.sync_all();
    #[cfg(feature = "crash-vfs")]
    return super::crashvfs::sync_dir(dir, sync);
    #[cfg(not(feature = "crash-vfs"))]
    sync()
}

/// rename(2); durable only once the directory is synced.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(feature = "crash-vfs")]
    return super::crashvfs::rename(from, to);
    #[cfg(not(feature = "crash-vfs"))]
    std::fs::rename(from, to)
}

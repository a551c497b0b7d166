//! The FFI side of the crash VFS: a copy of the `unix` VFS whose `xOpen` and `xDelete`
//! are wrapped, and file methods that record each write, truncation and sync with the
//! recorder (holding its lock, so a power cut never lands between the record and the
//! operation) and otherwise call the real `unix` file.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::mem::size_of;
use std::path::PathBuf;
use std::ptr;
use std::sync::OnceLock;

use rusqlite::ffi;

use super::lock;

const NAME_C: &CStr = c"dbwarden-crash";

/// The real `unix` VFS, once registered (as an address: raw pointers are not Sync).
static REAL: OnceLock<usize> = OnceLock::new();

pub(super) fn registered() -> bool {
    REAL.get().is_some()
}

fn real_vfs() -> *mut ffi::sqlite3_vfs {
    REAL.get().copied().unwrap_or(0) as *mut ffi::sqlite3_vfs
}

pub(super) fn register() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        // SAFETY: sqlite3_vfs_find initializes SQLite and returns a VFS that lives for
        // the whole process; the copy is leaked, as sqlite3_vfs_register requires.
        unsafe {
            let real = ffi::sqlite3_vfs_find(c"unix".as_ptr());
            if real.is_null() {
                return Err("SQLite has no `unix` VFS to wrap".into());
            }
            let mut vfs: ffi::sqlite3_vfs = *real;
            vfs.szOsFile = (size_of::<CrashFile>() + (*real).szOsFile as usize) as c_int;
            vfs.pNext = ptr::null_mut();
            vfs.zName = NAME_C.as_ptr();
            vfs.xOpen = Some(x_open);
            vfs.xDelete = Some(x_delete);
            let _ = REAL.set(real as usize);
            let leaked: &'static mut ffi::sqlite3_vfs = Box::leak(Box::new(vfs));
            match ffi::sqlite3_vfs_register(leaked, 0) {
                ffi::SQLITE_OK => Ok(()),
                rc => Err(format!("sqlite3_vfs_register failed with code {rc}")),
            }
        }
    })
    .clone()
}

/// Our file: the base SQLite sees, then the real unix file right behind it.
#[repr(C)]
struct CrashFile {
    base: ffi::sqlite3_file,
    real: *mut ffi::sqlite3_file,
    /// Null for files without a name (temporary files), which are not tracked.
    path: *mut PathBuf,
    /// unix fsyncs the directory at the first sync of a new journal or WAL.
    dir_sync_at_first_sync: bool,
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 2,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: Some(x_shm_map),
    xShmLock: Some(x_shm_lock),
    xShmBarrier: Some(x_shm_barrier),
    xShmUnmap: Some(x_shm_unmap),
    xFetch: None,
    xUnfetch: None,
};

unsafe fn parts(
    file: *mut ffi::sqlite3_file,
) -> (
    *mut CrashFile,
    *mut ffi::sqlite3_file,
    &'static ffi::sqlite3_io_methods,
) {
    let crash = file as *mut CrashFile;
    let real = (*crash).real;
    (crash, real, &*(*real).pMethods)
}

unsafe fn path_of(crash: *mut CrashFile) -> Option<&'static PathBuf> {
    (*crash).path.as_ref()
}

fn path_from(name: *const c_char) -> Option<PathBuf> {
    if name.is_null() {
        return None;
    }
    // SAFETY: SQLite passes a NUL-terminated file name.
    let text = unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned();
    Some(PathBuf::from(text))
}

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let real = real_vfs();
    let crash = file as *mut CrashFile;
    let real_file = (file as *mut u8).add(size_of::<CrashFile>()) as *mut ffi::sqlite3_file;
    ptr::write(
        crash,
        CrashFile {
            base: ffi::sqlite3_file {
                pMethods: ptr::null(),
            },
            real: real_file,
            path: ptr::null_mut(),
            dir_sync_at_first_sync: false,
        },
    );
    let path = path_from(name);
    let existed = path.as_ref().is_some_and(|p| p.exists());
    let mut rec = lock();
    let Some(open) = (*real).xOpen else {
        return ffi::SQLITE_ERROR;
    };
    let rc = open(real, name, real_file, flags, out_flags);
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    (*crash).base.pMethods = &METHODS;
    if let Some(path) = path {
        if flags & ffi::SQLITE_OPEN_CREATE != 0 && !existed {
            rec.created(&path);
            (*crash).dir_sync_at_first_sync = flags
                & (ffi::SQLITE_OPEN_WAL
                    | ffi::SQLITE_OPEN_MAIN_JOURNAL
                    | ffi::SQLITE_OPEN_SUPER_JOURNAL)
                != 0;
        }
        if flags & ffi::SQLITE_OPEN_MAIN_DB != 0 {
            rec.opened_database(&path);
        }
        (*crash).path = Box::into_raw(Box::new(path));
    }
    rc
}

unsafe extern "C" fn x_delete(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    sync_dir: c_int,
) -> c_int {
    let real = real_vfs();
    let Some(delete) = (*real).xDelete else {
        return ffi::SQLITE_ERROR;
    };
    let Some(path) = path_from(name) else {
        return delete(real, name, sync_dir);
    };
    let mut rec = lock();
    if sync_dir != 0 {
        rec.sync_point(path.parent().unwrap_or(&path));
    } else {
        rec.before_delete(&path);
    }
    let rc = delete(real, name, sync_dir);
    if rc == ffi::SQLITE_OK && sync_dir != 0 {
        if let Some(dir) = path.parent() {
            rec.dir_synced(dir);
        }
    }
    rc
}

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    let (crash, real, methods) = parts(file);
    let rc = match methods.xClose {
        Some(close) => close(real),
        None => ffi::SQLITE_OK,
    };
    if !(*crash).path.is_null() {
        drop(Box::from_raw((*crash).path));
        (*crash).path = ptr::null_mut();
    }
    rc
}

unsafe fn file_size(real: *mut ffi::sqlite3_file, methods: &ffi::sqlite3_io_methods) -> i64 {
    let mut size: ffi::sqlite3_int64 = 0;
    if let Some(f) = methods.xFileSize {
        if f(real, &mut size) != ffi::SQLITE_OK {
            return 0;
        }
    }
    size
}

/// The bytes in `[offset, offset + len)` that exist in the file now.
unsafe fn read_existing(
    real: *mut ffi::sqlite3_file,
    methods: &ffi::sqlite3_io_methods,
    offset: i64,
    len: i64,
    size: i64,
) -> Vec<u8> {
    let n = (size - offset).clamp(0, len);
    let mut old = vec![0u8; n as usize];
    if n > 0 {
        if let Some(read) = methods.xRead {
            read(real, old.as_mut_ptr() as *mut c_void, n as c_int, offset);
        }
    }
    old
}

unsafe extern "C" fn x_write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    let (crash, real, methods) = parts(file);
    let Some(write) = methods.xWrite else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    let Some(path) = path_of(crash) else {
        return write(real, buf, amount, offset);
    };
    let mut rec = lock();
    let size = file_size(real, methods);
    // SAFETY: SQLite hands xWrite `amount` readable bytes at `buf`.
    let data = std::slice::from_raw_parts(buf as *const u8, amount.max(0) as usize);
    rec.before_write(path, offset as u64, data, || {
        read_existing(real, methods, 0, size, size)
    });
    write(real, buf, amount, offset)
}

unsafe extern "C" fn x_truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    let (crash, real, methods) = parts(file);
    let Some(truncate) = methods.xTruncate else {
        return ffi::SQLITE_IOERR_TRUNCATE;
    };
    let Some(path) = path_of(crash) else {
        return truncate(real, size);
    };
    let mut rec = lock();
    let current = file_size(real, methods);
    rec.before_set_len(path, size.max(0) as u64, || {
        read_existing(real, methods, 0, current, current)
    });
    truncate(real, size)
}

unsafe extern "C" fn x_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    let (crash, real, methods) = parts(file);
    let Some(sync) = methods.xSync else {
        return ffi::SQLITE_IOERR_FSYNC;
    };
    let Some(path) = path_of(crash) else {
        return sync(real, flags);
    };
    let mut rec = lock();
    rec.sync_point(path);
    let rc = sync(real, flags);
    if rc == ffi::SQLITE_OK {
        rec.synced(path, (*crash).dir_sync_at_first_sync);
        (*crash).dir_sync_at_first_sync = false;
    }
    rc
}

unsafe extern "C" fn x_file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    let (crash, real, methods) = parts(file);
    let Some(control) = methods.xFileControl else {
        return ffi::SQLITE_NOTFOUND;
    };
    match path_of(crash) {
        // A size hint may grow the file outside xWrite and xTruncate.
        Some(path) if op == ffi::SQLITE_FCNTL_SIZE_HINT => {
            let mut rec = lock();
            let current = file_size(real, methods);
            let rc = control(real, op, arg);
            let after = file_size(real, methods);
            if after != current {
                rec.before_set_len(path, after.max(0) as u64, || {
                    read_existing(real, methods, 0, current, current)
                });
            }
            rc
        }
        _ => control(real, op, arg),
    }
}

unsafe extern "C" fn x_read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    let (_, real, methods) = parts(file);
    match methods.xRead {
        Some(f) => f(real, buf, amount, offset),
        None => ffi::SQLITE_IOERR_READ,
    }
}

unsafe extern "C" fn x_file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    let (_, real, methods) = parts(file);
    match methods.xFileSize {
        Some(f) => f(real, size),
        None => ffi::SQLITE_IOERR_FSTAT,
    }
}

unsafe extern "C" fn x_lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    let (_, real, methods) = parts(file);
    methods
        .xLock
        .map_or(ffi::SQLITE_IOERR_LOCK, |f| f(real, level))
}

unsafe extern "C" fn x_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    let (_, real, methods) = parts(file);
    methods
        .xUnlock
        .map_or(ffi::SQLITE_IOERR_UNLOCK, |f| f(real, level))
}

unsafe extern "C" fn x_check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    let (_, real, methods) = parts(file);
    methods
        .xCheckReservedLock
        .map_or(ffi::SQLITE_IOERR_CHECKRESERVEDLOCK, |f| f(real, out))
}

unsafe extern "C" fn x_sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    let (_, real, methods) = parts(file);
    methods.xSectorSize.map_or(512, |f| f(real))
}

unsafe extern "C" fn x_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    let (_, real, methods) = parts(file);
    methods.xDeviceCharacteristics.map_or(0, |f| f(real))
}

unsafe extern "C" fn x_shm_map(
    file: *mut ffi::sqlite3_file,
    page: c_int,
    page_size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    let (_, real, methods) = parts(file);
    methods.xShmMap.map_or(ffi::SQLITE_IOERR_SHMMAP, |f| {
        f(real, page, page_size, extend, out)
    })
}

unsafe extern "C" fn x_shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    let (_, real, methods) = parts(file);
    methods
        .xShmLock
        .map_or(ffi::SQLITE_IOERR_SHMLOCK, |f| f(real, offset, n, flags))
}

unsafe extern "C" fn x_shm_barrier(file: *mut ffi::sqlite3_file) {
    let (_, real, methods) = parts(file);
    if let Some(f) = methods.xShmBarrier {
        f(real)
    }
}

unsafe extern "C" fn x_shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    let (_, real, methods) = parts(file);
    methods
        .xShmUnmap
        .map_or(ffi::SQLITE_OK, |f| f(real, delete))
}

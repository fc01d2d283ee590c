//! A VFS over the platform's default one that writes a WAL commit with one system call
//! instead of two per page, and lets the write connection see, without a system call,
//! whether anything was committed since its own last commit (see [`head`]).
//!
//! SQLite writes each WAL frame as two writes, its 24-byte header and then its page, so a
//! settlement touching four pages made eight `pwrite`s, a microsecond or more each on a
//! virtual machine. Here the frames of a transaction are gathered in memory and written
//! together when the commit frame's page arrives, in one write. Every other file, and every
//! other call on a WAL file, goes straight to the default VFS, after writing out what was
//! gathered.
//!
//! Why this is safe: SQLite makes frames visible to readers (in this process or another)
//! only after its last frame write returned, by publishing the WAL index header. A commit
//! frame is never held back past its page: when the write of its page returns, that frame
//! and everything before it are in the file. What may be held back are frames of a
//! transaction that has not committed yet (nothing reads them), and they are written out
//! before any other use of the file (a read, a size query, a truncation, a sync, a close) or
//! a write somewhere else. A failed write returns its error to the call that triggered it,
//! which fails the transaction.

#![allow(unsafe_code)]

mod head;

pub(crate) use head::{last_commit, wal_head, Head};

use rusqlite::ffi;
use rusqlite::{Connection, OpenFlags};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::OnceLock;

const NAME: &CStr = c"tollgate-wal";
/// Bytes of a WAL frame header; bytes 4..8 hold the database size on a commit frame and
/// zero on any other.
const FRAME_HEADER: usize = 24;
/// Gathered bytes beyond which they are written at once (a large transaction).
const MAX_GATHERED: usize = 256 * 1024;

/// Opens `path` through this VFS (registering it on first use).
pub(crate) fn open(path: &Path, flags: OpenFlags) -> rusqlite::Result<Connection> {
    let name = register().map_err(|e| {
        rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_CANTOPEN), Some(e.clone()))
    })?;
    Connection::open_with_flags_and_vfs(path, flags, name)
}

/// The VFS that does the work: the process's default one when this was registered.
static INNER: AtomicPtr<ffi::sqlite3_vfs> = AtomicPtr::new(ptr::null_mut());

fn register() -> Result<&'static str, &'static String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            // SAFETY: sqlite3_vfs_find and sqlite3_vfs_register are thread-safe; the VFS is
            // leaked, so it outlives every connection that uses it.
            unsafe {
                let inner = ffi::sqlite3_vfs_find(ptr::null());
                if inner.is_null() {
                    return Err("SQLite has no default VFS".into());
                }
                INNER.store(inner, Ordering::Release);
                let vfs = Box::leak(Box::new(ffi::sqlite3_vfs {
                    iVersion: 2,
                    szOsFile: c_int::try_from(INNER_OFFSET).unwrap_or(c_int::MAX)
                        + (*inner).szOsFile,
                    mxPathname: (*inner).mxPathname,
                    pNext: ptr::null_mut(),
                    zName: NAME.as_ptr(),
                    pAppData: ptr::null_mut(),
                    xOpen: Some(open_file),
                    xDelete: Some(delete),
                    xAccess: Some(access),
                    xFullPathname: Some(full_pathname),
                    xDlOpen: Some(dl_open),
                    xDlError: Some(dl_error),
                    xDlSym: Some(dl_sym),
                    xDlClose: Some(dl_close),
                    xRandomness: Some(randomness),
                    xSleep: Some(sleep),
                    xCurrentTime: Some(current_time),
                    xGetLastError: Some(get_last_error),
                    xCurrentTimeInt64: Some(current_time_int64),
                    xSetSystemCall: None,
                    xGetSystemCall: None,
                    xNextSystemCall: None,
                }));
                match ffi::sqlite3_vfs_register(vfs, 0) {
                    ffi::SQLITE_OK => Ok(()),
                    rc => Err(format!("registering the WAL VFS failed ({rc})")),
                }
            }
        })
        .as_ref()
        .map(|()| NAME.to_str().unwrap_or_default())
}

fn inner_vfs() -> *mut ffi::sqlite3_vfs {
    INNER.load(Ordering::Acquire)
}

/// A WAL or main database file: what it gathered, then (at [`INNER_OFFSET`]) the default
/// VFS's file. A main database file gathers nothing; it only keeps where its shared memory is.
#[repr(C)]
struct WalFile {
    /// First, as SQLite sees the file: points at [`METHODS`].
    base: ffi::sqlite3_file,
    /// A WAL file (else a main database file, whose writes all go straight through).
    is_wal: bool,
    /// A main database file's first region of WAL-index shared memory, once mapped.
    shm: *const u8,
    /// A WAL file's last commit frame written: the head it leaves the WAL at.
    last_commit: Option<Head>,
    gathered: Vec<u8>,
    /// Where `gathered` starts in the file.
    start: i64,
    /// The last gathered write was a frame header: the write after it is its page.
    page_next: bool,
    /// That header is a commit frame's: its page completes the transaction.
    commit_next: bool,
}

const INNER_OFFSET: usize = (std::mem::size_of::<WalFile>() + 15) & !15;

/// SAFETY (for the helpers below): `f` is a file this VFS opened as a WAL file, so it is a
/// live `WalFile` followed by the default VFS's open file.
unsafe fn inner(f: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    f.cast::<u8>().add(INNER_OFFSET).cast()
}

unsafe fn wal<'a>(f: *mut ffi::sqlite3_file) -> &'a mut WalFile {
    &mut *f.cast::<WalFile>()
}

unsafe fn methods<'a>(f: *mut ffi::sqlite3_file) -> &'a ffi::sqlite3_io_methods {
    &*(*inner(f)).pMethods
}

/// Writes `bytes` at `offset` through the default VFS.
unsafe fn write_through(f: *mut ffi::sqlite3_file, bytes: &[u8], offset: i64) -> c_int {
    #[cfg(test)]
    if wal(f).is_wal {
        tests::WRITES.with(|w| w.set(w.get() + 1));
        if tests::FAIL_WRITES.with(|f| f.replace(f.get().saturating_sub(1)) > 0) {
            return ffi::SQLITE_IOERR_WRITE;
        }
    }
    let Ok(len) = c_int::try_from(bytes.len()) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    match methods(f).xWrite {
        Some(write) => write(inner(f), bytes.as_ptr().cast(), len, offset),
        None => ffi::SQLITE_IOERR_WRITE,
    }
}

/// Writes out what was gathered. What failed to be written is dropped: it belonged to the
/// transaction the error fails.
unsafe fn flush(f: *mut ffi::sqlite3_file) -> c_int {
    let w = wal(f);
    w.page_next = false;
    w.commit_next = false;
    if w.gathered.is_empty() {
        return ffi::SQLITE_OK;
    }
    let mut gathered = std::mem::take(&mut w.gathered);
    let rc = write_through(f, &gathered, w.start);
    // Keep the allocation for the next transaction.
    gathered.clear();
    wal(f).gathered = gathered;
    rc
}

unsafe extern "C" fn open_file(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let vfs = inner_vfs();
    let Some(open) = (*vfs).xOpen else {
        return ffi::SQLITE_CANTOPEN;
    };
    let is_wal = flags & ffi::SQLITE_OPEN_WAL != 0;
    if !is_wal && flags & ffi::SQLITE_OPEN_MAIN_DB == 0 {
        // Neither WAL nor database: the default VFS's file takes the whole slot, as if
        // opened there.
        return open(vfs, name, file, flags, out_flags);
    }
    let inner_file = inner(file);
    let rc = open(vfs, name, inner_file, flags, out_flags);
    if rc != ffi::SQLITE_OK {
        if let Some(m) = (*inner_file).pMethods.as_ref() {
            if let Some(close) = m.xClose {
                close(inner_file);
            }
        }
        (*file).pMethods = ptr::null();
        return rc;
    }
    ptr::write(
        file.cast::<WalFile>(),
        WalFile {
            base: ffi::sqlite3_file { pMethods: &METHODS },
            is_wal,
            shm: ptr::null(),
            last_commit: None,
            gathered: Vec::new(),
            start: 0,
            page_next: false,
            commit_next: false,
        },
    );
    ffi::SQLITE_OK
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: Some(shm_map),
    xShmLock: Some(shm_lock),
    xShmBarrier: Some(shm_barrier),
    xShmUnmap: Some(shm_unmap),
    xFetch: Some(fetch),
    xUnfetch: Some(unfetch),
};

unsafe extern "C" fn write(
    f: *mut ffi::sqlite3_file,
    data: *const c_void,
    amt: c_int,
    offset: i64,
) -> c_int {
    let Ok(len) = usize::try_from(amt) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    let bytes = std::slice::from_raw_parts(data.cast::<u8>(), len);
    let w = wal(f);
    if !w.is_wal {
        return write_through(f, bytes, offset);
    }
    if !w.gathered.is_empty() && offset != w.start + w.gathered.len() as i64 {
        let rc = flush(f);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    let w = wal(f);
    if len == FRAME_HEADER && !w.page_next {
        if w.gathered.is_empty() {
            w.start = offset;
        }
        w.gathered.extend_from_slice(bytes);
        w.page_next = true;
        // A commit frame's header: everything goes out with its page, the next write.
        w.commit_next = bytes[4..8] != [0; 4];
        return ffi::SQLITE_OK;
    }
    if w.page_next {
        // The page of the frame whose header was just gathered (contiguous: checked above).
        if w.commit_next {
            let header =
                (w.gathered.len().checked_sub(FRAME_HEADER)).and_then(|at| w.gathered.get(at..));
            w.last_commit = header.and_then(|h| Head::of_commit_frame(h, offset, len));
        }
        w.gathered.extend_from_slice(bytes);
        w.page_next = false;
        if w.commit_next || w.gathered.len() >= MAX_GATHERED {
            return flush(f);
        }
        return ffi::SQLITE_OK;
    }
    write_through(f, bytes, offset)
}

unsafe extern "C" fn close(f: *mut ffi::sqlite3_file) -> c_int {
    let flushed = flush(f);
    let closed = methods(f).xClose.map_or(ffi::SQLITE_OK, |c| c(inner(f)));
    ptr::drop_in_place(&mut wal(f).gathered);
    (*f).pMethods = ptr::null();
    if flushed != ffi::SQLITE_OK {
        flushed
    } else {
        closed
    }
}

/// Writes out what was gathered, then runs `call` on the default VFS's file.
unsafe fn after_flush(
    f: *mut ffi::sqlite3_file,
    call: impl FnOnce(*mut ffi::sqlite3_file) -> c_int,
) -> c_int {
    match flush(f) {
        ffi::SQLITE_OK => call(inner(f)),
        rc => rc,
    }
}

unsafe extern "C" fn read(
    f: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amt: c_int,
    off: i64,
) -> c_int {
    let Some(read) = methods(f).xRead else {
        return ffi::SQLITE_IOERR_READ;
    };
    after_flush(f, |i| read(i, buf, amt, off))
}

unsafe extern "C" fn truncate(f: *mut ffi::sqlite3_file, size: i64) -> c_int {
    let Some(truncate) = methods(f).xTruncate else {
        return ffi::SQLITE_IOERR_TRUNCATE;
    };
    after_flush(f, |i| truncate(i, size))
}

unsafe extern "C" fn sync(f: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    let Some(sync) = methods(f).xSync else {
        return ffi::SQLITE_IOERR_FSYNC;
    };
    after_flush(f, |i| sync(i, flags))
}

unsafe extern "C" fn file_size(f: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    let Some(file_size) = methods(f).xFileSize else {
        return ffi::SQLITE_IOERR_FSTAT;
    };
    after_flush(f, |i| file_size(i, size))
}

unsafe extern "C" fn file_control(f: *mut ffi::sqlite3_file, op: c_int, arg: *mut c_void) -> c_int {
    let Some(file_control) = methods(f).xFileControl else {
        return ffi::SQLITE_NOTFOUND;
    };
    after_flush(f, |i| file_control(i, op, arg))
}

unsafe extern "C" fn fetch(
    f: *mut ffi::sqlite3_file,
    off: i64,
    amt: c_int,
    pp: *mut *mut c_void,
) -> c_int {
    let Some(fetch) = methods(f).xFetch else {
        *pp = ptr::null_mut();
        return ffi::SQLITE_OK;
    };
    after_flush(f, |i| fetch(i, off, amt, pp))
}

unsafe extern "C" fn unfetch(f: *mut ffi::sqlite3_file, off: i64, p: *mut c_void) -> c_int {
    methods(f)
        .xUnfetch
        .map_or(ffi::SQLITE_OK, |u| u(inner(f), off, p))
}

unsafe extern "C" fn lock(f: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    methods(f)
        .xLock
        .map_or(ffi::SQLITE_OK, |l| l(inner(f), level))
}

unsafe extern "C" fn unlock(f: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    methods(f)
        .xUnlock
        .map_or(ffi::SQLITE_OK, |u| u(inner(f), level))
}

unsafe extern "C" fn check_reserved_lock(f: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    match methods(f).xCheckReservedLock {
        Some(c) => c(inner(f), out),
        None => {
            *out = 0;
            ffi::SQLITE_OK
        }
    }
}

unsafe extern "C" fn sector_size(f: *mut ffi::sqlite3_file) -> c_int {
    methods(f).xSectorSize.map_or(4096, |s| s(inner(f)))
}

unsafe extern "C" fn device_characteristics(f: *mut ffi::sqlite3_file) -> c_int {
    methods(f).xDeviceCharacteristics.map_or(0, |d| d(inner(f)))
}

unsafe extern "C" fn shm_map(
    f: *mut ffi::sqlite3_file,
    page: c_int,
    size: c_int,
    extend: c_int,
    pp: *mut *mut c_void,
) -> c_int {
    let rc = match methods(f).xShmMap {
        Some(m) => m(inner(f), page, size, extend, pp),
        None => ffi::SQLITE_IOERR_SHMMAP,
    };
    if page == 0 && rc == ffi::SQLITE_OK {
        wal(f).shm = (*pp).cast_const().cast();
    }
    rc
}

unsafe extern "C" fn shm_lock(
    f: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    methods(f)
        .xShmLock
        .map_or(ffi::SQLITE_IOERR_SHMLOCK, |l| l(inner(f), offset, n, flags))
}

unsafe extern "C" fn shm_barrier(f: *mut ffi::sqlite3_file) {
    if let Some(b) = methods(f).xShmBarrier {
        b(inner(f));
    }
}

unsafe extern "C" fn shm_unmap(f: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    wal(f).shm = ptr::null();
    methods(f)
        .xShmUnmap
        .map_or(ffi::SQLITE_OK, |u| u(inner(f), delete))
}

// The rest of the VFS is the default one's.

unsafe extern "C" fn delete(
    _: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    sync_dir: c_int,
) -> c_int {
    let v = inner_vfs();
    (*v).xDelete
        .map_or(ffi::SQLITE_IOERR_DELETE, |d| d(v, name, sync_dir))
}

unsafe extern "C" fn access(
    _: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    flags: c_int,
    out: *mut c_int,
) -> c_int {
    let v = inner_vfs();
    (*v).xAccess
        .map_or(ffi::SQLITE_IOERR_ACCESS, |a| a(v, name, flags, out))
}

unsafe extern "C" fn full_pathname(
    _: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    let v = inner_vfs();
    (*v).xFullPathname
        .map_or(ffi::SQLITE_CANTOPEN, |p| p(v, name, n, out))
}

unsafe extern "C" fn dl_open(_: *mut ffi::sqlite3_vfs, name: *const c_char) -> *mut c_void {
    let v = inner_vfs();
    (*v).xDlOpen.map_or(ptr::null_mut(), |o| o(v, name))
}

unsafe extern "C" fn dl_error(_: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) {
    let v = inner_vfs();
    if let Some(e) = (*v).xDlError {
        e(v, n, out);
    }
}

type DlSym = unsafe extern "C" fn(*mut ffi::sqlite3_vfs, *mut c_void, *const c_char);

unsafe extern "C" fn dl_sym(
    _: *mut ffi::sqlite3_vfs,
    handle: *mut c_void,
    symbol: *const c_char,
) -> Option<DlSym> {
    let v = inner_vfs();
    (*v).xDlSym.and_then(|s| s(v, handle, symbol))
}

unsafe extern "C" fn dl_close(_: *mut ffi::sqlite3_vfs, handle: *mut c_void) {
    let v = inner_vfs();
    if let Some(c) = (*v).xDlClose {
        c(v, handle);
    }
}

unsafe extern "C" fn randomness(_: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) -> c_int {
    let v = inner_vfs();
    (*v).xRandomness.map_or(0, |r| r(v, n, out))
}

unsafe extern "C" fn sleep(_: *mut ffi::sqlite3_vfs, micros: c_int) -> c_int {
    let v = inner_vfs();
    (*v).xSleep.map_or(0, |s| s(v, micros))
}

unsafe extern "C" fn current_time(_: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    let v = inner_vfs();
    (*v).xCurrentTime.map_or(ffi::SQLITE_ERROR, |t| t(v, out))
}

unsafe extern "C" fn get_last_error(_: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) -> c_int {
    let v = inner_vfs();
    (*v).xGetLastError.map_or(0, |e| e(v, n, out))
}

unsafe extern "C" fn current_time_int64(_: *mut ffi::sqlite3_vfs, out: *mut i64) -> c_int {
    let v = inner_vfs();
    (*v).xCurrentTimeInt64
        .map_or(ffi::SQLITE_ERROR, |t| t(v, out))
}

#[cfg(test)]
mod tests;

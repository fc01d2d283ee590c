//! Where the WAL's last commit is, read from the WAL-index header in shared memory, and
//! where the write connection's own last commit frame left it: when the two are the same,
//! no connection (in any process) has committed since, and no system call was needed to
//! know it.
//!
//! The WAL-index header is part of SQLite's documented file format (walformat.html, "the
//! WAL-index header"): two copies of 48 bytes at the start of the `-shm` file, the second
//! written first, each holding `mxFrame` (the last valid frame) at byte 16 and the two salts
//! of the WAL's current generation at byte 32, copied as they are from the WAL header. Every
//! commit appends at least one frame (`mxFrame` grows) and every restart of the WAL draws
//! new salts, so the pair (last frame, salts) names one commit for good.

use super::{wal, METHODS};
use rusqlite::{ffi, Connection};
use std::ffi::{c_int, c_void};
use std::ptr;
use std::sync::atomic::{fence, Ordering};

/// Bytes of the WAL file's own header, before the first frame.
const WAL_HEADER: i64 = 32;

/// One commit's place: the WAL generation (its salts, as stored) and its last frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    salts: [u8; 8],
    frame: u32,
}

impl Head {
    /// The head a commit frame leaves: `header` is the frame's 24-byte header, its page of
    /// `page_len` bytes written at `page_offset`. `None` when the place does not add up.
    pub(super) fn of_commit_frame(
        header: &[u8],
        page_offset: i64,
        page_len: usize,
    ) -> Option<Self> {
        let frame_len = i64::try_from(page_len).ok()? + super::FRAME_HEADER as i64;
        let from_first = page_offset - super::FRAME_HEADER as i64 - WAL_HEADER;
        if from_first < 0 || from_first % frame_len != 0 {
            return None;
        }
        Some(Self {
            salts: header.get(8..16)?.try_into().ok()?,
            frame: u32::try_from(from_first / frame_len + 1).ok()?,
        })
    }
}

/// The file of `conn`'s `main` schema that the file control `op` points at
/// (`SQLITE_FCNTL_FILE_POINTER`: the database file; `SQLITE_FCNTL_JOURNAL_POINTER`: the WAL
/// in WAL mode), if this VFS opened it.
fn our_file(conn: &Connection, op: c_int) -> Option<*mut ffi::sqlite3_file> {
    let mut file: *mut ffi::sqlite3_file = ptr::null_mut();
    // SAFETY: the handle is live for `conn`'s lifetime; these file controls only store a
    // pointer.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            op,
            ptr::addr_of_mut!(file).cast::<c_void>(),
        )
    };
    if rc != ffi::SQLITE_OK || file.is_null() {
        return None;
    }
    // SAFETY: `file` is an open file of `conn`; its methods say which VFS opened it.
    (unsafe { (*file).pMethods } == ptr::addr_of!(METHODS)).then_some(file)
}

/// Where the WAL's last commit is now, as the WAL-index header says; `None` when the shared
/// memory is not mapped, or a writer was changing the header as it was read.
pub(crate) fn wal_head(conn: &Connection) -> Option<Head> {
    let file = our_file(conn, ffi::SQLITE_FCNTL_FILE_POINTER)?;
    // SAFETY: `file` is a main database file of this VFS, so a live `WalFile`. Its `shm`,
    // when set, is the first region of the WAL-index as mapped by the default VFS, which
    // stays mapped until this file's `xShmUnmap` (which clears it). Other processes write
    // the header concurrently: it is read with volatile loads, the first copy, then a
    // fence, then the second, the order SQLite's own readers use; copies that differ are
    // a write in progress.
    unsafe {
        let shm = wal(file).shm;
        if shm.is_null() {
            return None;
        }
        let first = read_header(shm);
        fence(Ordering::Acquire);
        let second = read_header(shm.add(48));
        // Byte 12 is `isInit`: an uninitialised header says nothing.
        if first != second || first[12] == 0 {
            return None;
        }
        Some(Head {
            salts: first[32..40].try_into().ok()?,
            frame: u32::from_ne_bytes(first[16..20].try_into().ok()?),
        })
    }
}

/// SAFETY: `at` points at 48 readable bytes.
unsafe fn read_header(at: *const u8) -> [u8; 48] {
    let mut out = [0u8; 48];
    for (i, b) in out.iter_mut().enumerate() {
        *b = ptr::read_volatile(at.add(i));
    }
    out
}

/// Where `conn`'s own last commit frame left the WAL; `None` before its first commit.
pub(crate) fn last_commit(conn: &Connection) -> Option<Head> {
    let file = our_file(conn, ffi::SQLITE_FCNTL_JOURNAL_POINTER)?;
    // SAFETY: a file this VFS opened is a `WalFile`.
    let w = unsafe { wal(file) };
    w.is_wal.then_some(w.last_commit).flatten()
}

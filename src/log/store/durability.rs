//! Making a sled write durable: the `fdatasync`s sled 0.34's flush leaves
//! undone, and the rule that a failed sync is final.

use super::StoreError;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What sled's `flush` leaves undone. On Linux sled 0.34 writes its log
/// with `pwrite` + `sync_file_range`, which puts the data pages on the
/// device but neither commits the file's metadata (its growth, its newly
/// allocated blocks) nor empties the drive's write cache, and it writes
/// values too large for a log segment to `blobs/` files it never syncs.
/// After an OS crash or a power cut the acknowledged tail of the log could
/// then be gone. So every durable write ends with `fdatasync` of the new
/// blob files, of the blob directory if it gained entries, and of the log
/// file (DESIGN.md §4.1).
///
/// A failed sync is final. The kernel reports a failed write-back once and
/// may mark the pages clean, so a later `fdatasync` can succeed although
/// the earlier data never reached the disk; and sled reads its log in order
/// at open, so a write after the hole could be lost with it. So after one
/// failure every later write is refused until the store is opened again
/// (recovery then reads what the disk really holds).
pub(super) struct DataSync {
    pub(super) db_file: std::fs::File,
    pub(super) blobs: PathBuf,
    /// Blob files already synced (sled deletes them as it rewrites pages).
    pub(super) synced_blobs: Mutex<std::collections::HashSet<std::ffi::OsString>>,
    /// What the first failed sync reported.
    pub(super) failed: Mutex<Option<String>>,
    /// Test hook: the next sync fails as a failed write-back would.
    #[cfg(test)]
    pub(super) fail_next: std::sync::atomic::AtomicBool,
    /// Test hook: the next sled flush fails.
    #[cfg(test)]
    pub(super) fail_flush_next: std::sync::atomic::AtomicBool,
}

impl DataSync {
    pub(super) fn open(path: &Path) -> std::io::Result<Self> {
        Ok(DataSync {
            db_file: std::fs::File::open(path.join("db"))?,
            blobs: path.join("blobs"),
            synced_blobs: Mutex::new(std::collections::HashSet::new()),
            failed: Mutex::new(None),
            #[cfg(test)]
            fail_next: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            fail_flush_next: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// `Err` once a sync has failed: no write may be applied any more.
    pub(super) fn usable(&self) -> Result<(), StoreError> {
        match crate::sync::lock(&self.failed).as_ref() {
            None => Ok(()),
            Some(first) => Err(refused_after_failed_sync(first)),
        }
    }

    /// Makes everything sled has written so far durable. The first failure
    /// makes the store refuse every later write ([`DataSync::usable`]).
    pub(super) fn sync(&self) -> Result<(), StoreError> {
        self.usable()?;
        self.sync_files().map_err(|e| self.fail("fdatasync", e))
    }

    /// Records that written data may not have reached the disk (`what`
    /// failed): from now on every write is refused. Returns the error for
    /// the write that found out.
    pub(super) fn fail(&self, what: &str, e: std::io::Error) -> StoreError {
        record_failed_sync(&mut crate::sync::lock(&self.failed), what, e)
    }

    fn sync_files(&self) -> std::io::Result<()> {
        #[cfg(test)]
        if self
            .fail_next
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(std::io::Error::other("injected write-back failure"));
        }
        self.sync_new_blobs()?;
        self.db_file.sync_data()
    }

    fn sync_new_blobs(&self) -> std::io::Result<()> {
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut synced = crate::sync::lock(&self.synced_blobs);
        let mut present = std::collections::HashSet::new();
        let mut added = false;
        for entry in entries {
            let name = entry?.file_name();
            if !synced.contains(&name) {
                // sled deletes a blob once no page points to it, on its own
                // threads: one gone since the listing needs no sync.
                match std::fs::File::open(self.blobs.join(&name)) {
                    Ok(file) => file.sync_all()?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                added = true;
            }
            present.insert(name);
        }
        if added {
            std::fs::File::open(&self.blobs)?.sync_all()?;
        }
        *synced = present;
        Ok(())
    }
}

/// Records in `refusing` that a flush or sync (`what`) failed with `e`, so
/// that every later write is refused, and returns the error of the write
/// that found out.
pub(super) fn record_failed_sync(
    refusing: &mut Option<String>,
    what: &str,
    e: std::io::Error,
) -> StoreError {
    *refusing = Some(format!("{what}: {e}"));
    failed_sync(what, e)
}

/// The error of the write whose flush or sync (`what`) failed with `e`.
fn failed_sync(what: &str, e: std::io::Error) -> StoreError {
    StoreError::NotDurable {
        context: what.to_string(),
        source: std::sync::Arc::new(e),
    }
}

/// The error of every write after a failed flush or sync (see [`DataSync`]).
pub(super) fn refused_after_failed_sync(first: &str) -> StoreError {
    StoreError::WritesRefused {
        first: first.to_string(),
    }
}

/// A sled error outside a database's open: its I/O errors keep their
/// source; anything else is a bug sled reports.
pub(super) fn backend(e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(e) => StoreError::io("sled", e),
        other => StoreError::Backend(other.to_string()),
    }
}

/// A sled error in database `path`: damage that sled detects (its
/// checksums) is [`StoreError::Damaged`], the rest [`StoreError::Backend`].
pub(super) fn sled_error(path: &Path, e: sled::Error) -> StoreError {
    match e {
        sled::Error::Corruption { .. } => StoreError::Damaged {
            path: path.to_path_buf(),
            detail: format!("sled reports {e}"),
        },
        other => backend(other),
    }
}

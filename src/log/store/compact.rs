//! Compaction (rewriting a closed database to give back freed space) and
//! the cleanup of sled's torn snapshot files.

use super::durability::backend;
use super::sled::sled_config;
use super::{SledOptions, SledStore, StoreError};
use crate::log::witness::Witness;
use std::path::{Path, PathBuf};
use std::time::Duration;

impl SledStore {
    /// Rewrites the closed database in `path` into a fresh one holding the
    /// same keys and values, which gives back to the filesystem the space
    /// that deleted sagas left (sled 0.34 reuses freed space for new writes
    /// but never shrinks its file). Needs the database closed, like `open`,
    /// and refuses one that `open` refuses.
    ///
    /// Crash-safe: the copy is written beside the database
    /// (`<dir>.compacting`) and flushed, then takes its place by two
    /// renames; a crash at any point leaves either the original or the
    /// complete copy under `path`, and the next `open` clears the rest.
    /// Both directories' locks are held until the end, so no other open
    /// sees a half-finished compaction.
    pub fn compact(path: impl AsRef<Path>, options: SledOptions) -> Result<Compacted, StoreError> {
        let path = path.as_ref().to_path_buf();
        let io = |what: &str, e: std::io::Error| {
            StoreError::io(format!("compacting {}: {what}", path.display()), e)
        };
        let options = SledOptions {
            create: false,
            ..options
        };
        let source = SledStore::open(&path, options.clone())?;
        let bytes_before = dir_size(&path).map_err(|e| io("measuring", e))?;
        let (copy_path, original) = compaction_paths(&path);
        std::fs::create_dir(&copy_path).map_err(|e| io("creating the copy", e))?;
        // The copy is the same database: the same id and group mark.
        let mark = *crate::sync::lock(&source.kv.applied);
        let copy_witness =
            Witness::create(&copy_path, mark).map_err(|e| io("creating the copy's witness", e))?;
        let copy = sled_config(&copy_path, &options)
            .open()
            .map_err(|e| io("creating the copy", std::io::Error::other(e.to_string())))?;
        let mut keys = 0u64;
        let mut batch = sled::Batch::default();
        let mut in_batch = 0;
        for item in source.kv.db.iter() {
            let (k, v) = item.map_err(|e| source.kv.err(e))?;
            batch.insert(k, v);
            keys += 1;
            in_batch += 1;
            if in_batch == 10_000 {
                copy.apply_batch(std::mem::take(&mut batch))
                    .map_err(backend)?;
                in_batch = 0;
            }
        }
        copy.apply_batch(batch).map_err(backend)?;
        copy.flush().map_err(backend)?;
        drop(copy);
        // sled's background threads may hold the files a moment longer.
        std::thread::sleep(Duration::from_millis(100));
        // sled's flush does not make the copy durable (see `DataSync`):
        // sync every file of it before it replaces the original.
        sync_tree(&copy_path).map_err(|e| io("syncing the copy", e))?;
        std::fs::rename(&path, &original).map_err(|e| io("setting the original aside", e))?;
        std::fs::rename(&copy_path, &path).map_err(|e| io("moving the copy in place", e))?;
        if let Some(parent) = path.parent() {
            if let Ok(dir) = std::fs::File::open(parent) {
                let _ = dir.sync_all();
            }
        }
        std::fs::remove_dir_all(&original).map_err(|e| io("removing the original", e))?;
        drop(source);
        drop(copy_witness);
        let bytes_after = dir_size(&path).map_err(|e| io("measuring", e))?;
        Ok(Compacted {
            keys,
            bytes_before,
            bytes_after,
        })
    }
}

/// `fsync`s every file under directory `path`, then each directory.
fn sync_tree(path: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        } else {
            std::fs::File::open(entry.path())?.sync_all()?;
        }
    }
    std::fs::File::open(path)?.sync_all()
}

/// Deletes the snapshot files sled 0.34.7 left unfinished in database
/// directory `path`, and returns how many it deleted.
///
/// sled writes a snapshot to `snap.<lsn>.generating`, syncs it, and only
/// then renames it to `snap.<lsn>`, but when it opens a database it reads
/// the highest-named `snap.*` file *including* an unrenamed `.generating`
/// one. A process killed while writing it (sled writes one at every open
/// that finds new log entries) leaves a torn file, and every later open
/// fails with `Read corrupted data at file offset None` (sled issues #1527,
/// #1533). Until the rename the previous snapshot is still in place and the
/// log is untouched, so deleting the file gives exactly the state of a
/// crash just before sled began writing it, which sled recovers from.
///
/// [`SledStore::open`] calls this first. Call it before opening any other
/// sled 0.34 database that must survive `kill -9` (a participant's own
/// database, for example). A missing directory is not an error.
pub fn discard_torn_sled_snapshots(path: &Path) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::warn!(file = %entry.path().display(), "removing an unfinished sled snapshot left by a crash");
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// What [`SledStore::compact`] did; in JSON the sizes are
/// `bytes_on_disk_before` and `bytes_on_disk_after`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Compacted {
    /// Keys copied.
    pub keys: u64,
    /// Bytes on disk before.
    #[serde(rename = "bytes_on_disk_before")]
    pub bytes_before: u64,
    /// Bytes on disk after.
    #[serde(rename = "bytes_on_disk_after")]
    pub bytes_after: u64,
}

/// Sibling paths used while compacting `path`: the copy being written, and
/// the original while the copy takes its place.
pub(super) fn compaction_paths(path: &Path) -> (PathBuf, PathBuf) {
    (sibling(path, "compacting"), sibling(path, "before-compact"))
}

/// `<dir>.<suffix>` beside database directory `path`: where compaction
/// and repair put the directories they make.
pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "db".into());
    path.with_file_name(format!("{name}.{suffix}"))
}

/// Settles a compaction that a crash interrupted, so that `path` holds one
/// whole database: the original if the copy had not taken its place yet.
pub(super) fn finish_interrupted_compaction(path: &Path) -> std::io::Result<()> {
    let (copy, original) = compaction_paths(path);
    if !path.exists() && original.exists() {
        tracing::warn!(path = %path.display(), "restoring the database set aside by an interrupted compaction");
        std::fs::rename(&original, path)?;
    }
    if copy.exists() {
        std::fs::remove_dir_all(&copy)?;
    }
    if original.exists() {
        std::fs::remove_dir_all(&original)?;
    }
    Ok(())
}

fn dir_size(path: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

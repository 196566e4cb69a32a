//! The durable store: a sled database, its witness, and the write that
//! makes a group durable.

use super::durability::{sled_error, DataSync};
use super::keys;
use super::kv::{batch_ops, Kv, KvBacked, KvOp, Visitor};
use super::open::claim_directory;
use super::{SagaAppend, StoreError, WriteTimes};
use crate::ids::{SagaId, UnixMillis};
use crate::log::witness::{Mark, Witness};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(super) struct SledKv {
    pub(super) db: sled::Db,
    pub(super) sync: DataSync,
    pub(super) path: PathBuf,
    /// The directory lock and the last group acknowledged (`log::witness`).
    pub(super) witness: Witness,
    /// The mark of the last group applied to sled. Held while a write takes
    /// the next number and applies its batch, so that sled's order of
    /// writes is the order of their numbers.
    pub(super) applied: Mutex<Mark>,
    /// Opened for inspection: every write is refused.
    pub(super) read_only: bool,
}

impl SledKv {
    pub(super) fn err(&self, e: sled::Error) -> StoreError {
        sled_error(&self.path, e)
    }
}

impl Kv for SledKv {
    fn apply_durably(&self, ops: Vec<KvOp>) -> Result<WriteTimes, StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly {
                path: self.path.clone(),
            });
        }
        self.sync.usable()?;
        let began = Instant::now();
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                KvOp::Put(k, v) => batch.insert(k, v),
                KvOp::Delete(k) => batch.remove(k),
            }
        }
        let mark = {
            let mut applied = crate::sync::lock(&self.applied);
            let mark = Mark {
                group: applied.group + 1,
                at: UnixMillis::now(),
                ..*applied
            };
            batch.insert(keys::GROUP, &mark.encode()[..]);
            self.db.apply_batch(batch).map_err(|e| self.err(e))?;
            *applied = mark;
            mark
        };
        let applied = Instant::now();
        let flushed = self.db.flush().map(|_| ()).map_err(|e| match e {
            sled::Error::Io(e) => e,
            other => std::io::Error::other(other.to_string()),
        });
        let flushed_at = Instant::now();
        #[cfg(test)]
        let flushed = match self
            .sync
            .fail_flush_next
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            true => Err(std::io::Error::other("injected flush failure")),
            false => flushed,
        };
        if let Err(e) = flushed {
            // sled writes with `pwrite` + `sync_file_range`: a failure there
            // is a lost write-back as much as a failed `fdatasync` is.
            return Err(self.sync.fail("sled's flush", e));
        }
        self.sync.sync()?;
        // Durable: the witness may now say so. A witness that cannot be
        // written would let later damage go unnoticed: treat it as a
        // failed sync.
        self.witness
            .record(mark)
            .map_err(|e| self.sync.fail("writing the witness file", e))?;
        Ok(WriteTimes {
            apply: applied - began,
            flush: flushed_at - applied,
            sync: flushed_at.elapsed(),
        })
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .db
            .get(key)
            .map_err(|e| self.err(e))?
            .map(|v| v.to_vec()))
    }

    fn for_each_prefix_from(
        &self,
        prefix: &[u8],
        start: &[u8],
        visit: Visitor<'_>,
    ) -> Result<(), StoreError> {
        for item in self.db.range(start..) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if !k.starts_with(prefix) || !visit(&k, &v)? {
                break;
            }
        }
        Ok(())
    }
}

/// The durable store: one sled database, opened with `flush_every_ms(None)`
/// so that the only durability point is the explicit flush at the end of
/// each group commit, and a witness file beside sled's files that lets
/// opening detect acknowledged writes sled has lost (`log::witness`).
pub struct SledStore {
    pub(super) kv: SledKv,
    pub(super) path: PathBuf,
    /// Found by [`SledStore::open_for_inspection`]: what a normal open would
    /// have refused the database for.
    pub(super) finding: Option<StoreError>,
}

/// Settings for opening a [`SledStore`].
#[derive(Clone, Debug)]
pub struct SledOptions {
    /// sled's page cache size in bytes. Default 32 MiB: the log is written
    /// at the right edge of the key space and read back mostly at recovery,
    /// so a larger cache costs memory and buys little throughput.
    pub cache_capacity: u64,
    /// How long `open` keeps retrying a database that is locked before it
    /// reports [`StoreError::Locked`]. Default 1 s. sled 0.34 finishes
    /// writes on background threads that hold its lock file for a moment
    /// after the database is dropped, so a reopen in the same process can
    /// briefly see its own previous handle; another process holding the
    /// database still gets `Locked`, after this wait.
    pub lock_wait: Duration,
    /// Whether `open` creates a database in a missing or empty directory.
    /// Default true; with false, such a directory is
    /// [`StoreError::NoDatabase`] (what an operator's tool wants).
    pub create: bool,
    /// Whether `open` reads every key once, so that a page sled cannot read
    /// is [`StoreError::Damaged`] at open rather than a read error later,
    /// in recovery or in a saga. Default true. It costs a scan of the
    /// whole database per open (docs/BENCHMARKS.md, "Recovery"); with false, such damage surfaces when the page is read, and
    /// `sagalog verify` finds it.
    pub read_all_on_open: bool,
}

impl Default for SledOptions {
    fn default() -> Self {
        SledOptions {
            cache_capacity: 32 * 1024 * 1024,
            lock_wait: Duration::from_secs(1),
            create: true,
            read_all_on_open: true,
        }
    }
}

impl SledStore {
    /// Opens (creating if needed, see [`SledOptions::create`]) the database
    /// in directory `path`.
    ///
    /// Nothing in the directory is touched before its lock is held. Fails
    /// with [`StoreError::Locked`] if another process (or another store in
    /// this process) has it open; [`StoreError::NotSagalog`] if the
    /// directory holds anything but a sagalog database (then nothing is
    /// written to it); [`StoreError::FormatMismatch`] if it was written in
    /// another format; [`StoreError::LostWrites`] if sled no longer holds
    /// writes that were acknowledged; [`StoreError::Damaged`] if sled
    /// reports damage or panics while opening it.
    pub fn open(path: impl AsRef<Path>, options: SledOptions) -> Result<Self, StoreError> {
        Self::open_checked(path.as_ref(), &options, false)
    }

    /// Opens the database in `path` to read it whatever its checks say (for
    /// `verify` and `repair`): lost writes or a witness of another database
    /// are reported by [`SledStore::finding`] instead of refused. It takes
    /// the lock like [`SledStore::open`], never creates a database, and
    /// takes no writes ([`StoreError::ReadOnly`]).
    pub fn open_for_inspection(
        path: impl AsRef<Path>,
        options: SledOptions,
    ) -> Result<Self, StoreError> {
        let options = SledOptions {
            create: false,
            ..options
        };
        Self::open_checked(path.as_ref(), &options, true)
    }

    /// What [`SledStore::open_for_inspection`] found that [`SledStore::open`]
    /// refuses (lost writes, a witness of another database); `None` for a
    /// store that passed its checks.
    pub fn finding(&self) -> Option<StoreError> {
        self.finding.clone()
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes the database occupies on disk, as sled reports it.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.kv.db.size_on_disk().map_err(|e| self.kv.err(e))
    }

    #[cfg(feature = "testing")]
    /// Overwrites one raw value, bypassing the codec. For fault-injection
    /// tests and repair tools only: it can make a saga unreadable.
    pub fn overwrite_raw(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.kv
            .apply_durably(vec![KvOp::put(key, value)])
            .map(|_| ())
    }

    /// Puts raw pairs as one durable write (repair's salvage).
    pub(crate) fn put_raw(&self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), StoreError> {
        let ops = pairs.iter().map(|(k, v)| KvOp::put(k, v)).collect();
        self.kv.apply_durably(ops).map(|_| ())
    }

    /// Takes the directory lock of the database in `path` without opening
    /// sled (repair, while it moves sled's files); released on drop.
    pub(crate) fn lock_only(path: &Path) -> Result<impl Drop, StoreError> {
        let options = SledOptions {
            create: false,
            lock_wait: Duration::ZERO,
            ..SledOptions::default()
        };
        claim_directory(path, &options).map(|(witness, _)| witness)
    }
}

/// How every sagalog sled database is opened: no background flushes (the
/// only durability point is an explicit flush) and the configured cache.
pub(super) fn sled_config(path: &Path, options: &SledOptions) -> sled::Config {
    sled::Config::new()
        .path(path)
        .flush_every_ms(None)
        .cache_capacity(options.cache_capacity)
}

impl KvBacked for SledStore {
    type Kv = SledKv;

    fn kv(&self) -> &SledKv {
        &self.kv
    }

    fn finding(&self) -> Option<StoreError> {
        self.finding.clone()
    }

    fn append_batch(
        &self,
        batch: &[&SagaAppend],
        watermark: Option<SagaId>,
    ) -> Result<WriteTimes, StoreError> {
        self.kv.apply_durably(batch_ops(batch, watermark))
    }

    fn writable_now(&self) -> Result<(), StoreError> {
        if self.kv.read_only {
            return Err(StoreError::ReadOnly {
                path: self.path.clone(),
            });
        }
        self.kv.sync.usable()
    }
}

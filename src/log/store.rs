//! The log store: a small trait the engine writes through, and one generic
//! implementation over an ordered key-value map that serves both sled
//! ([`SledStore`]) and memory ([`MemStore`]).
//!
//! The trait deals in encoded bytes, never in records: decoding happens in
//! the engine, per saga, so one damaged value parks one saga instead of
//! failing a scan. It does not assume sled: a SQL store implements `append`
//! as one transaction and `read_log` as an ordered select.
//!
//! # Keyspace (one ordered map; see DESIGN.md)
//!
//! | key                                   | value                      |
//! |---------------------------------------|----------------------------|
//! | `b'L'` ++ saga id (16) ++ seq (u64 BE) | record frame               |
//! | `b'A'` ++ saga id (16)                 | index entry frame (not terminal) |
//! | `b'F'` ++ saga id (16)                 | index entry frame (finished) |
//! | `b'K'` ++ idempotency key (UTF-8)      | saga id (16)               |
//! | `b'T'` ++ due (u64 BE) ++ saga id (16) ++ seq (u64 BE) | wait purpose frame |
//! | `b"Mformat"`                           | format version (1 byte)    |
//! | `b"Mwatermark"`                        | saga id (16): the index watermark |
//! | `b"Mgroup"`                            | group mark (48, `log::witness`) |
//!
//! A saga that is not terminal has an `'A'` entry, unless its id is at or
//! above the watermark: the writer defers the entries of young sagas, and
//! most finish before they need one (see [`LogStore::append`]).

use crate::ids::{IdempotencyKey, SagaId, SagaType, UnixMillis};
use crate::log::witness::{Mark, OpenError as WitnessError, Witness};
use crate::status::SagaStatus;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Version of the keyspace layout, stored under `"Mformat"`. 2: one log
/// value per append (several frames back to back). 3: index entries carry
/// `changed_at`. 4: plans carry step dependencies, a kind (saga or TCC) and
/// a parallelism limit; TCC record kinds 11..=14. 5: the index watermark
/// (sagas at or above it may have no active-index entry). 6: the finished
/// index holds one value per group (a finished batch), not one per saga.
/// 7: every write stores its group mark under `"Mgroup"`, checked against
/// the witness file (`log::witness`).
/// Frames have their own version byte (`codec::FORMAT_VERSION`).
pub const LAYOUT_VERSION: u8 = 7;

/// A store operation failed. The message says what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the database.
    #[error("the database at {path} is locked by another process; only one process may open it at a time: stop that process, or act through its admin API")]
    Locked {
        /// Database directory.
        path: PathBuf,
    },
    /// The database was written in a format this build does not read.
    #[error("the database at {path} has layout version {found}, this build reads version {expected}; open it with the release that wrote it")]
    FormatMismatch {
        /// Database directory.
        path: PathBuf,
        /// Version found on disk.
        found: u8,
        /// Version this build reads.
        expected: u8,
    },
    /// The directory holds something that is not a sagalog database.
    /// Nothing was written to it.
    #[error("{path} is not a sagalog database: it is not empty ({}) and has no {witness} file, which every sagalog database has; nothing was written to it. Open the directory your service uses, or an empty or missing one to create a new database", found.join(", "), witness = crate::log::witness::FILE_NAME)]
    NotSagalog {
        /// The directory.
        path: PathBuf,
        /// Some of the names found in it.
        found: Vec<String>,
    },
    /// There is no database to open, and the caller asked not to create one.
    #[error("there is no sagalog database at {path} (the directory is missing or empty); pass the directory your service opens")]
    NoDatabase {
        /// The directory.
        path: PathBuf,
    },
    /// Writes that were made durable and acknowledged are missing: sled
    /// dropped them at open, which it does silently when its log is
    /// damaged. Nothing was written to the database.
    #[error("the database at {path} has lost acknowledged writes: its witness file says group commit {acknowledged} (written {acknowledged_at}) was durable, but sled now holds only up to group {found}{}; {} group commit(s) are missing, so sagas they started or moved on would run again. Nothing was written. Do not start the service on it: run `sagalog verify --db {path}` to see what is readable, then `sagalog repair --db {path}`, which copies every readable saga into a fresh database beside this one and names what it could not", found_at.map(|at| format!(" (written {at})")).unwrap_or_default(), acknowledged - found)]
    LostWrites {
        /// Database directory.
        path: PathBuf,
        /// The last group the witness says was acknowledged.
        acknowledged: u64,
        /// When that group was written.
        acknowledged_at: UnixMillis,
        /// The last group sled still holds (0: none).
        found: u64,
        /// When that group was written, if sled holds one.
        found_at: Option<UnixMillis>,
    },
    /// The database's files are damaged in a way sled or sagalog detects
    /// (sled's "Read corrupted data", a panic inside sled, a damaged
    /// witness). Restarting does not help.
    #[error("the database at {path} is damaged: {detail}. Restarting will not help: run `sagalog repair --db {path}`, which first sets sled's snapshot files aside (sled then rebuilds its state from its log) and, if that is not enough, copies every readable saga into a fresh database beside this one; it never deletes the original")]
    Damaged {
        /// Database directory.
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// A value in an index has an impossible shape.
    #[error("corrupt store value under key {key:02x?}: {reason}")]
    Corrupt {
        /// The raw key.
        key: Vec<u8>,
        /// What is wrong.
        reason: String,
    },
    /// The backend failed (I/O error, disk full, ...). Nothing after the
    /// failed operation can be assumed durable; restart to recover from the log.
    #[error("log store failed: {0}; check the disk and restart the service, recovery resumes from the last durable record")]
    Backend(String),
    /// A fault injected by a test ([`MemStore::fail_append`]).
    #[error("injected store fault: {0}")]
    Injected(String),
    /// The engine is shutting down and no longer accepts appends.
    #[error("the log writer has stopped (engine shut down); open the engine again to continue")]
    Closed,
    /// The system clock reads before 1970, so the log's times and ids
    /// would be wrong. Nothing was opened.
    #[error("the system clock reads {behind:?} before 1970-01-01, so saga times and ids would be wrong; set the clock (NTP) and open again")]
    ClockBeforeEpoch {
        /// How far before the epoch the clock reads.
        behind: Duration,
    },
    /// The store was opened for inspection ([`SledStore::open_for_inspection`])
    /// and takes no writes.
    #[error(
        "the database at {path} is open for inspection only (verify, repair) and takes no writes"
    )]
    ReadOnly {
        /// Database directory.
        path: PathBuf,
    },
}

/// The summary kept for each saga in the active or finished index, written
/// in the same atomic batch as the record that changed it. It exists only so
/// that listing does not read every log; the log stays the truth.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The saga's registered type.
    pub saga_type: SagaType,
    /// Status after the batch that wrote this entry.
    pub status: SagaStatus,
    /// Time of the start record.
    pub started_at: UnixMillis,
    /// When the saga's durable timer falls due, if it sleeps on one.
    /// Recovery leaves such sagas to the delay queue instead of loading them.
    pub next_wake: Option<UnixMillis>,
    /// Time of the last record of the batch that wrote this entry: when the
    /// status or the timer last changed. For a finished saga, when it
    /// finished; retention counts its age from here.
    pub changed_at: UnixMillis,
    /// Operator actions recorded and not yet carried out, by name
    /// (`SagaState::pending_summary`).
    pub pending: Option<String>,
}

/// Which index a saga's entry lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexSet {
    /// Not terminal (`'A'`).
    Active,
    /// Terminal (`'F'`).
    Finished,
}

/// How one append changes the saga's index entry: the new encoded entry,
/// the index it moves from (`None` for a new saga) and the one it goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexUpdate {
    /// The encoded [`IndexEntry`].
    pub entry: Vec<u8>,
    /// Where the entry was (deleted there if different from `to`).
    pub from: Option<IndexSet>,
    /// Where it goes.
    pub to: IndexSet,
}

/// Timers with their encoded purposes, and whether the scan reached the end.
pub type TimerScan = (Vec<(TimerKey, Vec<u8>)>, bool);

/// Address of one durable timer: ordered by due time, then saga, then the
/// sequence number of its `TimerSet` record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimerKey {
    /// When it falls due.
    pub due: UnixMillis,
    /// The sleeping saga.
    pub saga: SagaId,
    /// Sequence number of the `TimerSet` record.
    pub seq: u64,
}

/// One log value: record frames back to back, the first at `seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogValue {
    /// Sequence number of the value's first record (its key).
    pub seq: u64,
    /// The frames.
    pub bytes: Vec<u8>,
}

/// An idempotency key claimed by a start, with the fingerprint of what was
/// started (`input_fingerprint`): a later start with the same key and
/// another fingerprint is a conflict, not a repeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The key.
    pub key: IdempotencyKey,
    /// The start's fingerprint.
    pub fingerprint: u64,
}

/// What an idempotency key is mapped to in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyClaim {
    /// The saga the key belongs to.
    pub saga: SagaId,
    /// The fingerprint of the start that claimed it; `None` for a claim
    /// stored without one.
    pub fingerprint: Option<u64>,
}

/// The fingerprint of starting a saga of `saga_type` with the encoded
/// `input`: the CRC32 of both (the type's bytes, a zero byte, the input) in
/// the high half and the input's length in the low half. Stable across
/// releases: it is stored with each claim.
pub fn input_fingerprint(saga_type: &str, input: &[u8]) -> u64 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(saga_type.as_bytes());
    hasher.update(&[0]);
    hasher.update(input);
    (u64::from(hasher.finalize()) << 32) | (input.len() as u64 & 0xFFFF_FFFF)
}

/// Records to append to one saga's log, with the index changes that go in
/// the same atomic write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SagaAppend {
    /// The saga.
    pub saga: SagaId,
    /// Sequence number of the first record this append adds; the rest
    /// follow without gaps.
    pub first_seq: u64,
    /// The log value this append writes, whole, under `value.seq`: the
    /// record frames it adds (from byte `added_from` on), after the bytes
    /// of the saga's last value when it extends that one (DESIGN.md §4b).
    /// Empty when the append adds no record (an index change alone).
    pub value: LogValue,
    /// Where this append's own frames start in `value.bytes`. Non-zero only
    /// when the append extends the saga's last value: then the bytes before
    /// it are that value exactly as it is durable, `value.seq` is its key,
    /// and only the loop that wrote it, and saw its write acknowledged, may
    /// build such an append.
    pub added_from: usize,
    /// Index change, if the status changed.
    pub index: Option<IndexUpdate>,
    /// Idempotency key to map to this saga (only with the start record).
    pub claim: Option<Claim>,
    /// Timer to add, with its encoded purpose.
    pub timer_put: Option<(TimerKey, Vec<u8>)>,
    /// Timer to remove (the saga woke up).
    pub timer_delete: Option<TimerKey>,
}

impl SagaAppend {
    /// An append of `records` (frames), as a new value at `first_seq`, with
    /// no index, key or timer change.
    pub fn records(saga: SagaId, first_seq: u64, records: Vec<Vec<u8>>) -> Self {
        SagaAppend {
            saga,
            first_seq,
            value: LogValue {
                seq: first_seq,
                bytes: records.concat(),
            },
            added_from: 0,
            index: None,
            claim: None,
            timer_put: None,
            timer_delete: None,
        }
    }

    /// The record frames this append adds, back to back.
    pub fn added(&self) -> &[u8] {
        self.value.bytes.get(self.added_from..).unwrap_or_default()
    }

    /// Whether the append writes a log value (it adds records).
    pub fn writes_log_value(&self) -> bool {
        !self.added().is_empty()
    }

    /// How many values this append puts, leaving out its finished-index
    /// item: those of one write share one value (the finished batch).
    pub fn entry_count(&self) -> usize {
        usize::from(self.writes_log_value())
            + usize::from(
                self.index
                    .as_ref()
                    .is_some_and(|i| i.to == IndexSet::Active),
            )
            + usize::from(self.claim.is_some())
            + usize::from(self.timer_put.is_some())
            + usize::from(self.timer_delete.is_some())
    }
}

/// Where sagas' records live. Implementations must make `append` atomic
/// (all of the batch or none of it survives a crash) and durable (on `Ok`,
/// it survives `kill -9`).
pub trait LogStore: Send + Sync + 'static {
    /// Applies every append in `batch` as one atomic write and makes it
    /// durable before returning `Ok`. On `Err` the caller must assume
    /// nothing, and must not act as if any of it were written.
    ///
    /// With `watermark`, the same write also stores it as the new index
    /// watermark. The caller promises that after this write every saga
    /// below it that is not terminal has an active-index entry; sagas at
    /// or above it are found by [`LogStore::sagas_logged_from`].
    ///
    /// On `Ok`, says how long each part of the write took ([`WriteTimes`]).
    fn append(
        &self,
        batch: &[&SagaAppend],
        watermark: Option<SagaId>,
    ) -> Result<WriteTimes, StoreError>;

    /// The index watermark, or `None` if none was ever written (then every
    /// saga that is not terminal has an active-index entry).
    fn watermark(&self) -> Result<Option<SagaId>, StoreError>;

    /// Every saga that has a log value and an id at or above `from`, in id
    /// order: where recovery looks for the sagas the watermark lets go
    /// without an active-index entry.
    fn sagas_logged_from(&self, from: SagaId) -> Result<Vec<SagaId>, StoreError>;

    /// One saga's log values in sequence order, as `(seq of the first
    /// record in the value, value)`; a value holds one or more frames.
    fn read_log(&self, saga: SagaId) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;

    /// Every saga that is not terminal (runnable or asleep), with its
    /// encoded index entry.
    fn scan_active(&self) -> Result<Vec<(SagaId, Vec<u8>)>, StoreError>;

    /// Visits the active index in id order, one entry at a time, until
    /// `visit` returns false: what recovery uses, so that a million sagas
    /// asleep on timers are never all in memory at once.
    fn for_each_active(
        &self,
        visit: &mut dyn FnMut(SagaId, &[u8]) -> bool,
    ) -> Result<(), StoreError>;

    /// Every saga in the finished index that has no active-index entry,
    /// with its encoded index entry (from the latest batch that names it),
    /// in id order. A damaged batch gives the items before the damage.
    fn scan_finished(&self) -> Result<Vec<(SagaId, Vec<u8>)>, StoreError>;

    /// The finished index as it is stored: one batch per group that
    /// finished sagas, in the order they were written, from the first batch
    /// whose id is at or above `from` (batch ids are UUIDv7s taken when
    /// the batch was written). For retention, and for recovery to know which
    /// young sagas finished without reading their logs.
    fn scan_finished_batches(&self, from: SagaId) -> Result<Vec<FinishedBatch>, StoreError>;

    /// The saga an idempotency key belongs to, if any.
    fn key_owner(&self, key: &IdempotencyKey) -> Result<Option<SagaId>, StoreError> {
        Ok(self.key_claim(key)?.map(|claim| claim.saga))
    }

    /// The saga an idempotency key belongs to, with the fingerprint of the
    /// start that claimed it.
    fn key_claim(&self, key: &IdempotencyKey) -> Result<Option<KeyClaim>, StoreError>;

    /// The saga's encoded active-index entry, if any. A finished saga's
    /// entry is found by [`LogStore::scan_finished`], or from its log.
    fn read_active(&self, saga: SagaId) -> Result<Option<Vec<u8>>, StoreError>;

    /// Up to `limit` timers in due order, with their encoded purposes,
    /// leaving out those of sagas for which `skip` returns true. The flag is
    /// true when the scan reached the end (no timer was left out for the limit).
    fn scan_timers(
        &self,
        limit: usize,
        skip: &mut dyn FnMut(SagaId) -> bool,
    ) -> Result<TimerScan, StoreError>;

    /// Visits every raw key and value in the store, in key order, until
    /// `visit` returns false. For `verify`: it never decodes anything.
    fn for_each_raw(&self, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), StoreError>;

    /// Like [`LogStore::for_each_raw`], but a stretch of keys the store
    /// cannot read does not end the visit: `unreadable` gets the last key
    /// read before it (if any) and the error, and the visit goes on from
    /// the first key past it that can be read. For `verify` and `repair`.
    fn for_each_raw_salvaging(
        &self,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
        unreadable: &mut dyn FnMut(Option<&[u8]>, StoreError),
    ) -> Result<(), StoreError> {
        let _ = unreadable;
        self.for_each_raw(visit)
    }

    /// What opening found wrong with the store that it did not refuse it
    /// for (a store opened for inspection, [`SledStore::open_for_inspection`]):
    /// `verify` reports it first.
    fn open_finding(&self) -> Option<StoreError> {
        None
    }

    /// Deletes finished sagas for good, as one atomic and durable write:
    /// every log value, the saga's items in the finished batches named in
    /// its removal (a batch left empty is deleted, the others rewritten),
    /// and the idempotency key (only while it still names that saga). A
    /// saga that has an active-index entry is left untouched, whatever the
    /// caller believed; so is one named by a damaged batch. Returns how many
    /// sagas and keys were removed.
    fn remove_finished(&self, sagas: &[Removal]) -> Result<Removed, StoreError>;

    /// `Ok` while the store takes writes. Once a write could not be made
    /// durable (a failed flush or `fdatasync`), the error that every later write
    /// gets: the store takes none until it is opened again. Reads still
    /// work. A store that never stops taking writes keeps the default.
    fn writable(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A finished saga to delete, with the idempotency key its start record
/// claimed (read from the log by the caller).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removal {
    /// The saga.
    pub saga: SagaId,
    /// Its idempotency key, if it had one.
    pub idempotency_key: Option<IdempotencyKey>,
    /// Every finished batch that names it.
    pub batches: Vec<SagaId>,
}

/// One value of the finished index: the sagas one group finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinishedBatch {
    /// The batch's id (a UUIDv7 taken when it was written): its key.
    pub id: SagaId,
    /// Each saga with its encoded index entry.
    pub items: BatchItems,
    /// Why the items after the last one could not be read, if the value
    /// is damaged.
    pub damage: Option<crate::log::codec::DecodeError>,
}

/// How long the parts of one durable write took, as reported by
/// [`LogStore::append`]: where a group commit's time goes (CPU in `apply`,
/// mostly the device in `flush` and `sync`). A store whose write has no
/// such parts reports all of it as `apply`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteTimes {
    /// Building the write in the store's memory ([`SledStore`]: building
    /// sled's batch, which copies every key and value, and `apply_batch`).
    pub apply: Duration,
    /// Handing it to the operating system and waiting for the device to
    /// take the data ([`SledStore`]: sled's `flush`, a `pwrite` and a
    /// `sync_file_range` on sled's I/O thread).
    pub flush: Duration,
    /// Making it survive a power cut ([`SledStore`]: the `fdatasync` of the
    /// log file and the syncs of new blob files, DESIGN.md §4).
    pub sync: Duration,
}

/// What [`LogStore::remove_finished`] deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Sagas deleted.
    pub sagas: u64,
    /// Keys deleted (log values, index entries, idempotency keys).
    pub keys: u64,
}

pub(crate) mod keys {
    use crate::ids::{IdempotencyKey, SagaId};

    /// Bytes in a log key: prefix, saga id, sequence.
    pub const LOG_KEY_LEN: usize = 25;
    /// Bytes in an index key: prefix, saga id.
    pub const INDEX_KEY_LEN: usize = 17;
    /// Bytes in a timer key: prefix, due time, saga id, sequence.
    pub const TIMER_KEY_LEN: usize = 33;

    pub const LOG: u8 = b'L';
    pub const ACTIVE: u8 = b'A';
    pub const FINISHED: u8 = b'F';
    pub const IDEMPOTENCY: u8 = b'K';
    pub const TIMER: u8 = b'T';

    pub const FORMAT: &[u8] = b"Mformat";
    pub const WATERMARK: &[u8] = b"Mwatermark";
    pub const GROUP: &[u8] = b"Mgroup";

    /// Keys that belong to one database and are never copied into another
    /// (the format marker and the group mark).
    pub fn is_metadata(key: &[u8]) -> bool {
        key == FORMAT || key == GROUP
    }

    // The keys a write puts are arrays: sled copies a key into a value of
    // its own anyway, so a `Vec` would be one more allocation per key on
    // the writer's thread.
    pub fn log(saga: SagaId, seq: u64) -> [u8; LOG_KEY_LEN] {
        let mut key = [0; LOG_KEY_LEN];
        key[0] = LOG;
        key[1..17].copy_from_slice(&saga.to_bytes());
        key[17..].copy_from_slice(&seq.to_be_bytes());
        key
    }

    pub fn log_prefix(saga: SagaId) -> Vec<u8> {
        let mut key = Vec::with_capacity(17);
        key.push(LOG);
        key.extend_from_slice(&saga.to_bytes());
        key
    }

    pub fn index(prefix: u8, saga: SagaId) -> [u8; INDEX_KEY_LEN] {
        let mut key = [0; INDEX_KEY_LEN];
        key[0] = prefix;
        key[1..].copy_from_slice(&saga.to_bytes());
        key
    }

    pub fn timer(key: &super::TimerKey) -> [u8; TIMER_KEY_LEN] {
        let mut out = [0; TIMER_KEY_LEN];
        out[0] = TIMER;
        out[1..9].copy_from_slice(&key.due.0.to_be_bytes());
        out[9..25].copy_from_slice(&key.saga.to_bytes());
        out[25..].copy_from_slice(&key.seq.to_be_bytes());
        out
    }

    pub fn parse_timer(key: &[u8]) -> Option<super::TimerKey> {
        if key.len() != TIMER_KEY_LEN || key[0] != TIMER {
            return None;
        }
        let due = u64::from_be_bytes(key[1..9].try_into().ok()?);
        let saga = SagaId::from_bytes(key[9..25].try_into().ok()?);
        let seq = u64::from_be_bytes(key[25..33].try_into().ok()?);
        Some(super::TimerKey {
            due: crate::ids::UnixMillis(due),
            saga,
            seq,
        })
    }

    pub fn idempotency(key: &IdempotencyKey) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + key.as_str().len());
        out.push(IDEMPOTENCY);
        out.extend_from_slice(key.as_str().as_bytes());
        out
    }

    pub fn saga_id(key: &[u8], at: usize) -> Option<SagaId> {
        let bytes: [u8; 16] = key.get(at..at + 16)?.try_into().ok()?;
        Some(SagaId::from_bytes(bytes))
    }
}

/// Public names of the keyspace, for tests and tools that must address raw
/// values (fault injection, the `verify` command).
pub mod raw_keys {
    use crate::ids::SagaId;

    /// The key of the log value whose first record is `seq` of `saga`'s log.
    pub fn log_key(saga: SagaId, seq: u64) -> Vec<u8> {
        super::keys::log(saga, seq).to_vec()
    }
}

fn read_active<K: Kv>(kv: &K, saga: SagaId) -> Result<Option<Vec<u8>>, StoreError> {
    kv.get(&keys::index(keys::ACTIVE, saga))
}

fn scan_finished_batches<K: Kv>(kv: &K, from: SagaId) -> Result<Vec<FinishedBatch>, StoreError> {
    let mut batches = Vec::new();
    for_each_index_from(kv, keys::FINISHED, from, &mut |id, value| {
        let (items, damage) = batch_items(value);
        batches.push(FinishedBatch { id, items, damage });
        true
    })?;
    Ok(batches)
}

/// A finished batch's items, owned, and the damage that ended them.
fn batch_items(value: &[u8]) -> (BatchItems, Option<crate::log::codec::DecodeError>) {
    let (items, damage) = crate::log::codec::split_finished_batch(value);
    let items = items
        .into_iter()
        .map(|(saga, entry)| (saga, entry.to_vec()))
        .collect();
    (items, damage)
}

fn scan_finished<K: Kv>(kv: &K) -> Result<Vec<(SagaId, Vec<u8>)>, StoreError> {
    let mut active = std::collections::HashSet::new();
    for_each_index(kv, keys::ACTIVE, &mut |id, _| {
        active.insert(id);
        true
    })?;
    // Batches come in the order they were written: a later item of a saga
    // (finished again after an operator reopened it) replaces an earlier one.
    let mut latest = BTreeMap::new();
    for batch in scan_finished_batches(kv, SagaId::from_bytes([0; 16]))? {
        for (saga, entry) in batch.items {
            if !active.contains(&saga) {
                latest.insert(saga, entry);
            }
        }
    }
    Ok(latest.into_iter().collect())
}

fn scan_timers<K: Kv>(
    kv: &K,
    limit: usize,
    skip: &mut dyn FnMut(SagaId) -> bool,
) -> Result<TimerScan, StoreError> {
    let mut out = Vec::new();
    let mut complete = true;
    kv.for_each_prefix(&[keys::TIMER], &mut |key, value| {
        let Some(timer) = keys::parse_timer(key) else {
            return Err(StoreError::Corrupt {
                key: key.to_vec(),
                reason: "timer key is not 'T' + due + saga id + seq".into(),
            });
        };
        if skip(timer.saga) {
            return Ok(true);
        }
        if out.len() >= limit {
            complete = false;
            return Ok(false);
        }
        out.push((timer, value.to_vec()));
        Ok(true)
    })?;
    Ok((out, complete))
}

/// One write in an atomic batch, in sled's own byte type: a write's keys
/// and values are copied once, from the bytes they are built in, instead of
/// into a `Vec` first and then again by sled.
enum KvOp {
    Put(sled::IVec, sled::IVec),
    Delete(sled::IVec),
}

impl KvOp {
    fn put(key: &[u8], value: &[u8]) -> Self {
        KvOp::Put(key.into(), value.into())
    }

    fn delete(key: &[u8]) -> Self {
        KvOp::Delete(key.into())
    }
}

/// Key-value pairs in key order.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// The items of a finished batch: each saga with its encoded entry.
pub type BatchItems = Vec<(SagaId, Vec<u8>)>;

/// A visitor of key-value pairs; returning `Ok(false)` stops the visit.
type Visitor<'a> = &'a mut dyn FnMut(&[u8], &[u8]) -> Result<bool, StoreError>;

/// The ordered key-value operations the generic store needs.
trait Kv: Send + Sync + 'static {
    fn apply_durably(&self, ops: Vec<KvOp>) -> Result<WriteTimes, StoreError>;
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Visits keys with `prefix` in order until `visit` returns false.
    fn for_each_prefix(&self, prefix: &[u8], visit: Visitor<'_>) -> Result<(), StoreError> {
        self.for_each_prefix_from(prefix, prefix, visit)
    }
    /// Like `for_each_prefix`, starting at the first key `>= start`.
    fn for_each_prefix_from(
        &self,
        prefix: &[u8],
        start: &[u8],
        visit: Visitor<'_>,
    ) -> Result<(), StoreError>;
    /// Every pair with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, StoreError> {
        let mut pairs = Vec::new();
        self.for_each_prefix(prefix, &mut |k, v| {
            pairs.push((k.to_vec(), v.to_vec()));
            Ok(true)
        })?;
        Ok(pairs)
    }
}

fn batch_ops(batch: &[&SagaAppend], watermark: Option<SagaId>) -> Vec<KvOp> {
    let mut ops = Vec::with_capacity(batch.iter().map(|a| a.entry_count() + 1).sum::<usize>() + 1);
    if let Some(mark) = watermark {
        ops.push(KvOp::put(keys::WATERMARK, &mark.to_bytes()));
    }
    // One finished batch for the whole write (DESIGN.md §4c).
    let mut finished = Vec::new();
    for append in batch {
        if append.writes_log_value() {
            // One value per append: its frames back to back, keyed by the
            // sequence number of the first; or the saga's last value
            // rewritten with the frames added (DESIGN.md §4b). The saga's
            // loop built it whole; sled copies it once, into its own.
            let value = &append.value;
            ops.push(KvOp::put(&keys::log(append.saga, value.seq), &value.bytes));
        }
        if let Some(update) = &append.index {
            // A finished saga's item stays in its batch when an operator
            // reopens it: the active entry hides it, and the next finish
            // writes a newer one.
            if update.from == Some(IndexSet::Active) && update.to != IndexSet::Active {
                ops.push(KvOp::delete(&keys::index(keys::ACTIVE, append.saga)));
            }
            match update.to {
                IndexSet::Active => ops.push(KvOp::put(
                    &keys::index(keys::ACTIVE, append.saga),
                    &update.entry,
                )),
                IndexSet::Finished => {
                    crate::log::codec::push_finished_item(&mut finished, append.saga, &update.entry)
                }
            }
        }
        if let Some(key) = &append.timer_delete {
            ops.push(KvOp::delete(&keys::timer(key)));
        }
        if let Some((key, purpose)) = &append.timer_put {
            ops.push(KvOp::put(&keys::timer(key), purpose));
        }
        if let Some(claim) = &append.claim {
            let mut value = [0; 24];
            value[..16].copy_from_slice(&append.saga.to_bytes());
            value[16..].copy_from_slice(&claim.fingerprint.to_le_bytes());
            ops.push(KvOp::put(&keys::idempotency(&claim.key), &value));
        }
    }
    if !finished.is_empty() {
        // A fresh UUIDv7: batches sort in the order they were written.
        ops.push(KvOp::put(
            &keys::index(keys::FINISHED, SagaId::new()),
            &finished,
        ));
    }
    ops
}

fn scan_index<K: Kv>(kv: &K, prefix: u8) -> Result<Vec<(SagaId, Vec<u8>)>, StoreError> {
    let mut pairs = Vec::new();
    for_each_index(kv, prefix, &mut |id, value| {
        pairs.push((id, value.to_vec()));
        true
    })?;
    Ok(pairs)
}

fn for_each_index<K: Kv>(
    kv: &K,
    prefix: u8,
    visit: &mut dyn FnMut(SagaId, &[u8]) -> bool,
) -> Result<(), StoreError> {
    for_each_index_from(kv, prefix, SagaId::from_bytes([0; 16]), visit)
}

/// Like `for_each_index`, from the first key at or above `from`.
fn for_each_index_from<K: Kv>(
    kv: &K,
    prefix: u8,
    from: SagaId,
    visit: &mut dyn FnMut(SagaId, &[u8]) -> bool,
) -> Result<(), StoreError> {
    let start = keys::index(prefix, from);
    kv.for_each_prefix_from(
        &[prefix],
        &start,
        &mut |key, value| match keys::saga_id(key, 1) {
            Some(id) if key.len() == keys::INDEX_KEY_LEN => Ok(visit(id, value)),
            _ => Err(StoreError::Corrupt {
                key: key.to_vec(),
                reason: "index key is not a prefix byte followed by a 16-byte saga id".into(),
            }),
        },
    )
}

/// The saga id and sequence number of a log key; a damaged key is an error.
fn parse_log_key(key: &[u8]) -> Result<(SagaId, u64), StoreError> {
    let seq = key.get(17..25).and_then(|b| <[u8; 8]>::try_from(b).ok());
    match (keys::saga_id(key, 1), seq) {
        (Some(id), Some(seq)) if key.len() == keys::LOG_KEY_LEN => {
            Ok((id, u64::from_be_bytes(seq)))
        }
        _ => Err(StoreError::Corrupt {
            key: key.to_vec(),
            reason: "log key is not 'L' + 16-byte saga id + 8-byte sequence".into(),
        }),
    }
}

fn read_log<K: Kv>(kv: &K, saga: SagaId) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    kv.scan_prefix(&keys::log_prefix(saga))?
        .into_iter()
        .map(|(key, value)| parse_log_key(&key).map(|(_, seq)| (seq, value)))
        .collect()
}

/// The saga id stored as the value of `key`, if there is one. `what` names
/// the value in the error, `advice` ends it.
fn read_saga_id<K: Kv>(
    kv: &K,
    key: Vec<u8>,
    what: &str,
    advice: &str,
) -> Result<Option<SagaId>, StoreError> {
    match kv.get(&key)? {
        None => Ok(None),
        Some(value) => match <[u8; 16]>::try_from(value.as_slice()) {
            Ok(bytes) => Ok(Some(SagaId::from_bytes(bytes))),
            Err(_) => Err(StoreError::Corrupt {
                reason: format!(
                    "{what} is {} bytes, expected a 16-byte saga id{advice}",
                    value.len()
                ),
                key,
            }),
        },
    }
}

fn watermark<K: Kv>(kv: &K) -> Result<Option<SagaId>, StoreError> {
    read_saga_id(
        kv,
        keys::WATERMARK.to_vec(),
        "the index watermark",
        "; run `sagalog verify`",
    )
}

fn sagas_logged_from<K: Kv>(kv: &K, from: SagaId) -> Result<Vec<SagaId>, StoreError> {
    let mut sagas: Vec<SagaId> = Vec::new();
    kv.for_each_prefix_from(&[keys::LOG], &keys::log_prefix(from), &mut |key, _| {
        let (id, _) = parse_log_key(key)?;
        if sagas.last() != Some(&id) {
            sagas.push(id);
        }
        Ok(true)
    })?;
    Ok(sagas)
}

fn remove_finished<K: Kv>(kv: &K, sagas: &[Removal]) -> Result<Removed, StoreError> {
    // The batches the removals name, as stored now (`None`: damaged).
    let mut batches: BTreeMap<SagaId, Option<BatchItems>> = BTreeMap::new();
    for batch in sagas.iter().flat_map(|r| r.batches.iter()) {
        if batches.contains_key(batch) {
            continue;
        }
        let items =
            kv.get(&keys::index(keys::FINISHED, *batch))?
                .and_then(|value| match batch_items(&value) {
                    (items, None) => Some(items),
                    // Never rewrite a damaged batch: that would lose its tail.
                    (_, Some(_)) => None,
                });
        batches.insert(*batch, items);
    }
    let mut ops = Vec::new();
    let mut removed = Removed::default();
    let mut gone = std::collections::HashSet::new();
    for removal in sagas {
        let saga = removal.saga;
        if kv.get(&keys::index(keys::ACTIVE, saga))?.is_some() {
            continue;
        }
        let listed = |batch: &SagaId| {
            batches
                .get(batch)
                .and_then(|items| items.as_ref())
                .map(|items| items.iter().any(|(s, _)| *s == saga))
        };
        let named: Vec<Option<bool>> = removal.batches.iter().map(listed).collect();
        // Every batch must be readable, and at least one must name it.
        if named.iter().any(Option::is_none) || !named.contains(&Some(true)) {
            continue;
        }
        let before = ops.len();
        kv.for_each_prefix(&keys::log_prefix(saga), &mut |key, _| {
            ops.push(KvOp::delete(key));
            Ok(true)
        })?;
        if let Some(key) = &removal.idempotency_key {
            if key_owner(kv, key)? == Some(saga) {
                ops.push(KvOp::delete(&keys::idempotency(key)));
            }
        }
        gone.insert(saga);
        removed.sagas += 1;
        removed.keys += (ops.len() - before) as u64;
    }
    for (batch, items) in batches {
        let Some(items) = items else { continue };
        let kept: Vec<&(SagaId, Vec<u8>)> = items
            .iter()
            .filter(|(saga, _)| !gone.contains(saga))
            .collect();
        if kept.len() == items.len() {
            continue;
        }
        let key = keys::index(keys::FINISHED, batch);
        if kept.is_empty() {
            ops.push(KvOp::delete(&key));
            removed.keys += 1;
        } else {
            let mut value = Vec::new();
            for (saga, entry) in kept {
                crate::log::codec::push_finished_item(&mut value, *saga, entry);
            }
            ops.push(KvOp::put(&key, &value));
        }
    }
    if !ops.is_empty() {
        kv.apply_durably(ops)?;
    }
    Ok(removed)
}

/// The raw visit of [`LogStore::for_each_raw_salvaging`]. After an error
/// it restarts past the last key read (or past where the failed attempt
/// started) at ever coarser steps: past that saga's log, then past ids
/// sharing its first 8, 4 and 1 bytes, then past its keyspace. A read
/// that keeps failing ends the visit once every step is tried.
fn for_each_raw_salvaging<K: Kv>(
    kv: &K,
    visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    unreadable: &mut dyn FnMut(Option<&[u8]>, StoreError),
) {
    /// Lengths of the key prefixes to step past, finest first.
    const STEPS: [usize; 5] = [17, 9, 5, 2, 1];
    let mut start: Vec<u8> = Vec::new();
    let mut last: Option<Vec<u8>> = None;
    let mut step = 0;
    loop {
        let mut read_any = false;
        let result = kv.for_each_prefix_from(&[], &start, &mut |key, value| {
            read_any = true;
            last = Some(key.to_vec());
            Ok(visit(key, value))
        });
        let Err(e) = result else { return };
        if read_any || step == 0 {
            unreadable(last.as_deref(), e);
        }
        step = if read_any { 0 } else { step + 1 };
        let anchor = match (&last, read_any) {
            (Some(key), true) => key.clone(),
            _ => start.clone(),
        };
        let next = STEPS
            .iter()
            .skip(step)
            .filter_map(|len| past_prefix(&anchor, *len))
            .find(|candidate| *candidate > start);
        match next {
            Some(next) => start = next,
            None => return,
        }
    }
}

/// The smallest key above every key that shares `key`'s first `len` bytes
/// (`None` if there is none, or `key` is shorter).
fn past_prefix(key: &[u8], len: usize) -> Option<Vec<u8>> {
    let mut prefix = key.get(..len)?.to_vec();
    while let Some(byte) = prefix.pop() {
        if byte < u8::MAX {
            prefix.push(byte + 1);
            return Some(prefix);
        }
    }
    None
}

fn key_owner<K: Kv>(kv: &K, key: &IdempotencyKey) -> Result<Option<SagaId>, StoreError> {
    Ok(key_claim(kv, key)?.map(|claim| claim.saga))
}

/// An idempotency value: the saga id (16 bytes), then the fingerprint of
/// its start (u64 LE) unless the claim was stored without one.
fn key_claim<K: Kv>(kv: &K, key: &IdempotencyKey) -> Result<Option<KeyClaim>, StoreError> {
    let raw = keys::idempotency(key);
    let Some(value) = kv.get(&raw)? else {
        return Ok(None);
    };
    parse_key_claim(&value).map(Some).ok_or_else(|| StoreError::Corrupt {
        key: raw,
        reason: format!(
            "idempotency index value is {} bytes, expected a 16-byte saga id and an optional 8-byte fingerprint",
            value.len()
        ),
    })
}

/// Decodes an idempotency value (see `key_claim`).
pub(crate) fn parse_key_claim(value: &[u8]) -> Option<KeyClaim> {
    let saga = SagaId::from_bytes(value.get(..16)?.try_into().ok()?);
    let fingerprint = match value.len() {
        16 => None,
        24 => Some(u64::from_le_bytes(value[16..24].try_into().ok()?)),
        _ => return None,
    };
    Some(KeyClaim { saga, fingerprint })
}

macro_rules! impl_log_store {
    ($store:ty) => {
        impl LogStore for $store {
            fn append(
                &self,
                batch: &[&SagaAppend],
                watermark: Option<SagaId>,
            ) -> Result<WriteTimes, StoreError> {
                self.append_batch(batch, watermark)
            }
            fn watermark(&self) -> Result<Option<SagaId>, StoreError> {
                watermark(&self.kv)
            }
            fn sagas_logged_from(&self, from: SagaId) -> Result<Vec<SagaId>, StoreError> {
                sagas_logged_from(&self.kv, from)
            }
            fn read_log(&self, saga: SagaId) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
                read_log(&self.kv, saga)
            }
            fn scan_active(&self) -> Result<Vec<(SagaId, Vec<u8>)>, StoreError> {
                scan_index(&self.kv, keys::ACTIVE)
            }
            fn for_each_active(
                &self,
                visit: &mut dyn FnMut(SagaId, &[u8]) -> bool,
            ) -> Result<(), StoreError> {
                for_each_index(&self.kv, keys::ACTIVE, visit)
            }
            fn scan_finished(&self) -> Result<Vec<(SagaId, Vec<u8>)>, StoreError> {
                scan_finished(&self.kv)
            }
            fn scan_finished_batches(
                &self,
                from: SagaId,
            ) -> Result<Vec<FinishedBatch>, StoreError> {
                scan_finished_batches(&self.kv, from)
            }
            fn key_claim(&self, key: &IdempotencyKey) -> Result<Option<KeyClaim>, StoreError> {
                key_claim(&self.kv, key)
            }
            fn read_active(&self, saga: SagaId) -> Result<Option<Vec<u8>>, StoreError> {
                read_active(&self.kv, saga)
            }
            fn scan_timers(
                &self,
                limit: usize,
                skip: &mut dyn FnMut(SagaId) -> bool,
            ) -> Result<TimerScan, StoreError> {
                scan_timers(&self.kv, limit, skip)
            }
            fn for_each_raw(
                &self,
                visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
            ) -> Result<(), StoreError> {
                self.kv.for_each_prefix(&[], &mut |k, v| Ok(visit(k, v)))
            }
            fn for_each_raw_salvaging(
                &self,
                visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
                unreadable: &mut dyn FnMut(Option<&[u8]>, StoreError),
            ) -> Result<(), StoreError> {
                for_each_raw_salvaging(&self.kv, visit, unreadable);
                Ok(())
            }
            fn open_finding(&self) -> Option<StoreError> {
                self.finding()
            }
            fn remove_finished(&self, sagas: &[Removal]) -> Result<Removed, StoreError> {
                remove_finished(&self.kv, sagas)
            }
            fn writable(&self) -> Result<(), StoreError> {
                self.writable_now()
            }
        }
    };
}

// ---------------------------------------------------------------- sled

struct SledKv {
    db: sled::Db,
    sync: DataSync,
    path: PathBuf,
    /// The directory lock and the last group acknowledged (`log::witness`).
    witness: Witness,
    /// The mark of the last group applied to sled. Held while a write takes
    /// the next number and applies its batch, so that sled's order of
    /// writes is the order of their numbers.
    applied: Mutex<Mark>,
    /// Opened for inspection: every write is refused.
    read_only: bool,
}

/// What sled's `flush` leaves undone. On Linux sled 0.34 writes its log
/// with `pwrite` + `sync_file_range`, which puts the data pages on the
/// device but neither commits the file's metadata (its growth, its newly
/// allocated blocks) nor empties the drive's write cache, and it writes
/// values too large for a log segment to `blobs/` files it never syncs.
/// After an OS crash or a power cut the acknowledged tail of the log could
/// then be gone. So every durable write ends with `fdatasync` of the new
/// blob files, of the blob directory if it gained entries, and of the log
/// file (DESIGN.md §4).
///
/// A failed sync is final. The kernel reports a failed write-back once and
/// may mark the pages clean, so a later `fdatasync` can succeed although
/// the earlier data never reached the disk; and sled reads its log in order
/// at open, so a write after the hole could be lost with it. So after one
/// failure every later write is refused until the store is opened again
/// (recovery then reads what the disk really holds).
struct DataSync {
    db_file: std::fs::File,
    blobs: PathBuf,
    /// Blob files already synced (sled deletes them as it rewrites pages).
    synced_blobs: Mutex<std::collections::HashSet<std::ffi::OsString>>,
    /// What the first failed sync reported.
    failed: Mutex<Option<String>>,
    /// Test hook: the next sync fails as a failed write-back would.
    #[cfg(test)]
    fail_next: std::sync::atomic::AtomicBool,
    /// Test hook: the next sled flush fails.
    #[cfg(test)]
    fail_flush_next: std::sync::atomic::AtomicBool,
}

impl DataSync {
    fn open(path: &Path) -> std::io::Result<Self> {
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
    fn usable(&self) -> Result<(), StoreError> {
        match crate::sync::lock(&self.failed).as_ref() {
            None => Ok(()),
            Some(first) => Err(refused_after_failed_sync(first)),
        }
    }

    /// Makes everything sled has written so far durable. The first failure
    /// makes the store refuse every later write ([`DataSync::usable`]).
    fn sync(&self) -> Result<(), StoreError> {
        self.usable()?;
        self.sync_files()
            .map_err(|e| self.fail(&format!("fdatasync: {e}")))
    }

    /// Records that written data may not have reached the disk (`what`
    /// failed): from now on every write is refused. Returns the error for
    /// the write that found out.
    fn fail(&self, what: &str) -> StoreError {
        *crate::sync::lock(&self.failed) = Some(what.to_string());
        failed_sync(what)
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

/// The error of the write whose flush or sync failed (`what`: which, and
/// what the OS said).
fn failed_sync(what: &str) -> StoreError {
    StoreError::Backend(format!(
        "the write is applied but could not be made durable ({what})"
    ))
}

/// The error of every write after a failed flush or sync (see [`DataSync`]).
fn refused_after_failed_sync(first: &str) -> StoreError {
    StoreError::Backend(format!(
        "an earlier write could not be made durable ({first}) and the \
         OS reports that only once, so no later write can be trusted either; \
         this store takes no more writes"
    ))
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// A sled error in database `path`: damage that sled detects (its
/// checksums) is [`StoreError::Damaged`], the rest [`StoreError::Backend`].
fn sled_error(path: &Path, e: sled::Error) -> StoreError {
    match e {
        sled::Error::Corruption { .. } => StoreError::Damaged {
            path: path.to_path_buf(),
            detail: format!("sled reports {e}"),
        },
        other => backend(other),
    }
}

impl SledKv {
    fn err(&self, e: sled::Error) -> StoreError {
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
        let flushed = self.db.flush().map(|_| ()).map_err(|e| e.to_string());
        let flushed_at = Instant::now();
        #[cfg(test)]
        let flushed = match self
            .sync
            .fail_flush_next
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            true => Err("injected flush failure".to_string()),
            false => flushed,
        };
        if let Err(e) = flushed {
            // sled writes with `pwrite` + `sync_file_range`: a failure there
            // is a lost write-back as much as a failed `fdatasync` is.
            return Err(self.sync.fail(&format!("sled's flush: {e}")));
        }
        self.sync.sync()?;
        // Durable: the witness may now say so. A witness that cannot be
        // written would let later damage go unnoticed: treat it as a
        // failed sync.
        self.witness
            .record(mark)
            .map_err(|e| self.sync.fail(&format!("writing the witness file: {e}")))?;
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
    kv: SledKv,
    path: PathBuf,
    /// Found by [`SledStore::open_for_inspection`]: what a normal open would
    /// have refused the database for.
    finding: Option<StoreError>,
}

/// Settings for opening a [`SledStore`].
#[derive(Clone, Debug)]
pub struct SledOptions {
    /// sled's page cache size in bytes. Default 32 MiB: the log is written
    /// at the right edge of the key space and read back mostly at recovery,
    /// so a large cache buys little (measured: throughput is the same at 16,
    /// 32 and 64 MiB, and 1M sagas asleep on timers fit in 158 MB of RSS at
    /// 32 MiB against 212 MB at 64 MiB).
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
    /// whole database per open (measured: recovery with a million finished
    /// sagas, 730 MB, takes 2.4 s, 1.9 s of it sled's open and this read);
    /// with false, such damage surfaces when the page is read, and
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

    fn open_checked(path: &Path, options: &SledOptions, inspect: bool) -> Result<Self, StoreError> {
        UnixMillis::checked_now()?;
        let path = path.to_path_buf();
        let io = |what: &str, e: std::io::Error| {
            StoreError::Backend(format!(
                "opening {}: {what}: {e}; check the directory's permissions",
                path.display()
            ))
        };
        let (witness, created) = claim_directory(&path, options)?;
        // The lock is held: from here on the directory is ours to tidy.
        finish_interrupted_compaction(&path)
            .map_err(|e| io("could not settle an interrupted compaction", e))?;
        discard_torn_sled_snapshots(&path)
            .map_err(|e| io("could not clear an unfinished sled snapshot", e))?;
        let db = open_sled(&path, options)?;
        let sync = DataSync::open(&path)
            .map_err(|e| io("could not open sled's log file to sync it", e))?;
        let witnessed = witness.mark();
        let kv = SledKv {
            db,
            sync,
            path: path.clone(),
            witness,
            applied: Mutex::new(witnessed),
            read_only: inspect,
        };
        let finding = match check_database(&kv, &path, witnessed, created, options) {
            Ok(Some(found)) => {
                *crate::sync::lock(&kv.applied) = found;
                if !inspect {
                    kv.witness
                        .record(found)
                        .map_err(|e| io("could not write the witness file", e))?;
                }
                None
            }
            Ok(None) => {
                // A new database: its first write stores the format marker
                // and group 1.
                if !inspect {
                    kv.apply_durably(vec![KvOp::put(keys::FORMAT, &[LAYOUT_VERSION])])?;
                }
                None
            }
            Err(e @ (StoreError::LostWrites { .. } | StoreError::Damaged { .. })) if inspect => {
                Some(e)
            }
            Err(e) => return Err(e),
        };
        Ok(SledStore { kv, path, finding })
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes the database occupies on disk, as sled reports it.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.kv.db.size_on_disk().map_err(|e| self.kv.err(e))
    }

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
            StoreError::Backend(format!("compacting {}: {what}: {e}", path.display()))
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

/// Takes the lock of database directory `path` (its witness file) before
/// anything in it is touched, creating a new database's witness when the
/// directory is missing or empty and `options.create` allows. Returns the
/// witness and whether it was just created. A directory that holds
/// anything without a witness is [`StoreError::NotSagalog`], and is left
/// as it was.
fn claim_directory(path: &Path, options: &SledOptions) -> Result<(Witness, bool), StoreError> {
    let io = |what: &str, e: std::io::Error| {
        StoreError::Backend(format!(
            "opening {}: {what}: {e}; check the directory's permissions",
            path.display()
        ))
    };
    let opened = |dir: &Path| {
        match Witness::open(dir, options.lock_wait) {
        Ok(witness) => Ok(Some(witness)),
        Err(WitnessError::Missing) => Ok(None),
        Err(WitnessError::Locked) => Err(StoreError::Locked {
            path: path.to_path_buf(),
        }),
        Err(WitnessError::Damaged(why)) => Err(StoreError::Damaged {
            path: path.to_path_buf(),
            detail: format!(
                "its witness file {} is damaged ({why}), so sagalog cannot tell whether sled lost acknowledged writes",
                crate::log::witness::FILE_NAME
            ),
        }),
        Err(WitnessError::Io(e)) => Err(io("could not open the witness file", e)),
    }
    };
    // A compaction interrupted between its two renames left the original
    // aside and nothing in its place: take the original's lock, put it back.
    let (_, original) = compaction_paths(path);
    if !path.exists() && original.exists() {
        if let Some(witness) = opened(&original)? {
            tracing::warn!(path = %path.display(), "restoring the database set aside by an interrupted compaction");
            std::fs::rename(&original, path).map_err(|e| {
                io(
                    "could not restore the database an interrupted compaction set aside",
                    e,
                )
            })?;
            return Ok((witness, false));
        }
    }
    loop {
        if let Some(witness) = opened(path)? {
            return Ok((witness, false));
        }
        let found = dir_entries(path).map_err(|e| io("could not list the directory", e))?;
        if !found.is_empty() && holds_group_marks(path) {
            return Err(StoreError::Damaged {
                path: path.to_path_buf(),
                detail: format!(
                    "its witness file {} is missing, although sled's files hold sagalog's group marks, so sagalog cannot tell whether sled lost acknowledged writes",
                    crate::log::witness::FILE_NAME
                ),
            });
        }
        if !found.is_empty() {
            return Err(StoreError::NotSagalog {
                path: path.to_path_buf(),
                found,
            });
        }
        if !options.create {
            return Err(StoreError::NoDatabase {
                path: path.to_path_buf(),
            });
        }
        std::fs::create_dir_all(path).map_err(|e| io("could not create the directory", e))?;
        match Witness::create(path, Mark::new_database(UnixMillis::now())) {
            Ok(witness) => return Ok((witness, true)),
            // Another opener created it first: open theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io("could not create the witness file", e)),
        }
    }
}

/// Reads every key and value once, so that damage sled would report on a
/// later read (its "Read corrupted data" when a page's checksum fails, or
/// a panic) is found at open instead of in the middle of recovery or of a
/// saga. sled reads its pages lazily: a damaged page that the log no
/// longer replays passes every check before this one.
fn read_every_page(kv: &SledKv, path: &Path) -> Result<(), StoreError> {
    let scanned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut keys = 0u64;
        for item in kv.db.iter() {
            match item {
                Ok(_) => keys += 1,
                Err(e) => return Err((keys, e.to_string())),
            }
        }
        Ok(())
    }));
    let (keys, what) = match scanned {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(failed)) => failed,
        Err(_) => (0, "sled panicked while reading it".to_string()),
    };
    Err(StoreError::Damaged {
        path: path.to_path_buf(),
        detail: format!("sled cannot read part of it after {keys} readable keys ({what})"),
    })
}

/// Whether the first 4 MiB of sled's log file in `path` hold the key of
/// sagalog's group mark: a sagalog database whose witness is missing,
/// rather than another program's. Read only; never opens sled, which
/// writes at open.
fn holds_group_marks(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path.join("db")) else {
        return false;
    };
    let mut head = Vec::new();
    if std::io::Read::read_to_end(&mut std::io::Read::take(file, 4 << 20), &mut head).is_err() {
        return false;
    }
    head.windows(keys::GROUP.len()).any(|w| w == keys::GROUP)
}

/// Up to eight names in directory `path` (none if it is missing).
fn dir_entries(path: &Path) -> std::io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    let more = names.len().saturating_sub(8);
    names.truncate(8);
    if more > 0 {
        names.push(format!("and {more} more"));
    }
    Ok(names)
}

/// Opens sled in `path`, whose witness lock is held. sled's own lock may
/// still be held for a moment by this process's previous handle (see
/// [`SledOptions::lock_wait`]). Damage sled reports, and a panic inside
/// sled, are [`StoreError::Damaged`].
fn open_sled(path: &Path, options: &SledOptions) -> Result<sled::Db, StoreError> {
    let deadline = Instant::now() + options.lock_wait;
    loop {
        let config = sled_config(path, options);
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()));
        match opened {
            Ok(Ok(db)) => return Ok(db),
            Ok(Err(sled::Error::Io(ref io)))
                if io.to_string().contains("could not acquire lock") =>
            {
                if Instant::now() >= deadline {
                    return Err(StoreError::Locked {
                        path: path.to_path_buf(),
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(Err(e @ sled::Error::Corruption { .. })) => return Err(sled_error(path, e)),
            // sled reads its `conf` file first and calls one it cannot
            // parse a database of an old sled version.
            Ok(Err(sled::Error::Unsupported(what))) => {
                return Err(StoreError::Damaged {
                    path: path.to_path_buf(),
                    detail: format!("sled cannot read its conf file ({what})"),
                })
            }
            Ok(Err(other)) => {
                return Err(StoreError::Backend(format!(
                    "opening {}: {other}",
                    path.display()
                )))
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("no message");
                return Err(StoreError::Damaged {
                    path: path.to_path_buf(),
                    detail: format!("sled panicked while opening it ({what})"),
                });
            }
        }
    }
}

/// Checks an opened database against its witness. `Ok(Some(mark))`: a
/// database whose group mark is `mark` (at or above the witness's);
/// `Ok(None)`: a new, empty database.
fn check_database(
    kv: &SledKv,
    path: &Path,
    witnessed: Mark,
    created: bool,
    options: &SledOptions,
) -> Result<Option<Mark>, StoreError> {
    let damaged = |detail: String| StoreError::Damaged {
        path: path.to_path_buf(),
        detail,
    };
    let first = kv.db.iter().next().transpose().map_err(|e| kv.err(e))?;
    if first.is_none() && (created || witnessed.group == 0) {
        return Ok(None);
    }
    match kv.get(keys::FORMAT)? {
        Some(v) if v.as_slice() == [LAYOUT_VERSION] => {}
        Some(v) => {
            return Err(StoreError::FormatMismatch {
                path: path.to_path_buf(),
                found: v.first().copied().unwrap_or(0),
                expected: LAYOUT_VERSION,
            })
        }
        None if first.is_some() => {
            return Err(damaged(
                "sled holds keys but no sagalog format marker".into(),
            ))
        }
        None => {}
    }
    let found = match kv.get(keys::GROUP)? {
        None => None,
        Some(bytes) => Some(
            Mark::decode(&bytes)
                .map_err(|why| damaged(format!("sled's group mark is unreadable ({why})")))?,
        ),
    };
    if let Some(found) = found {
        if found.database != witnessed.database {
            return Err(damaged(format!(
                "its witness file belongs to database {}, but sled's files to database {}: files of two databases were mixed",
                witnessed.database, found.database
            )));
        }
    }
    match found {
        Some(found) if found.group >= witnessed.group => {
            if options.read_all_on_open {
                read_every_page(kv, path)?;
            }
            Ok(Some(found))
        }
        _ => Err(StoreError::LostWrites {
            path: path.to_path_buf(),
            acknowledged: witnessed.group,
            acknowledged_at: witnessed.at,
            found: found.map_or(0, |f| f.group),
            found_at: found.map(|f| f.at),
        }),
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

/// How every sagalog sled database is opened: no background flushes (the
/// only durability point is an explicit flush) and the configured cache.
fn sled_config(path: &Path, options: &SledOptions) -> sled::Config {
    sled::Config::new()
        .path(path)
        .flush_every_ms(None)
        .cache_capacity(options.cache_capacity)
}

/// What [`SledStore::compact`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compacted {
    /// Keys copied.
    pub keys: u64,
    /// Bytes on disk before.
    pub bytes_before: u64,
    /// Bytes on disk after.
    pub bytes_after: u64,
}

/// Sibling paths used while compacting `path`: the copy being written, and
/// the original while the copy takes its place.
fn compaction_paths(path: &Path) -> (PathBuf, PathBuf) {
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
fn finish_interrupted_compaction(path: &Path) -> std::io::Result<()> {
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

impl SledStore {
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

impl_log_store!(SledStore);

// ---------------------------------------------------------------- memory

/// When an injected append fault strikes relative to the write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultTiming {
    /// The append fails and nothing is written.
    BeforeApply,
    /// The batch is written, then the append reports failure (as a flush
    /// that failed after the data reached the disk).
    AfterApply,
    /// The batch is written, then its sync fails, and from then on the
    /// store refuses every write, as a [`SledStore`] does after a failed
    /// flush or `fdatasync` ([`LogStore::writable`]). [`MemStore::clear_faults`]
    /// stands for reopening it. Never drawn by [`MemStore::fail_randomly`].
    FailedSync,
}

#[derive(Default)]
struct MemKv {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemKv {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        crate::sync::lock(&self.map)
    }

    fn scan_prefix_from(&self, prefix: &[u8], start: &[u8]) -> Result<Pairs, StoreError> {
        Ok(self
            .lock()
            .range(start.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

impl Kv for MemKv {
    fn apply_durably(&self, ops: Vec<KvOp>) -> Result<WriteTimes, StoreError> {
        let began = Instant::now();
        let mut map = self.lock();
        for op in ops {
            match op {
                KvOp::Put(k, v) => {
                    map.insert(k.to_vec(), v.to_vec());
                }
                KvOp::Delete(k) => {
                    map.remove(k.as_ref());
                }
            }
        }
        // Nothing to flush or sync: memory is all there is.
        Ok(WriteTimes {
            apply: began.elapsed(),
            ..WriteTimes::default()
        })
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().get(key).cloned())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, StoreError> {
        self.scan_prefix_from(prefix, prefix)
    }

    fn for_each_prefix_from(
        &self,
        prefix: &[u8],
        start: &[u8],
        visit: Visitor<'_>,
    ) -> Result<(), StoreError> {
        // Copy out first: `visit` must not run under the map's lock.
        for (k, v) in self.scan_prefix_from(prefix, start)? {
            if !visit(&k, &v)? {
                break;
            }
        }
        Ok(())
    }
}

/// An append that an injected fault made fail: which saga, which records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedAppend {
    /// The saga the append was for.
    pub saga: SagaId,
    /// Sequence number of its first record.
    pub first_seq: u64,
    /// The record frames it held (decode with `codec::decode_record`).
    pub records: Vec<Vec<u8>>,
    /// Whether the records were written before the failure was reported.
    pub timing: FaultTiming,
}

#[derive(Default)]
struct Faults {
    /// Fail this append (counted from 1 over the store's life).
    at: Option<(u64, FaultTiming)>,
    /// Fail each append with this chance (per mille), drawn from this state.
    random: Option<(u64, u32)>,
    failed: Vec<FailedAppend>,
    /// Set by a `FailedSync` fault: what the failed sync reported.
    refusing: Option<String>,
}

/// An in-memory store with the same keyspace and atomicity as [`SledStore`],
/// for tests: share one `Arc<MemStore>` between two engines to simulate a
/// restart, and inject append failures at a chosen append
/// ([`MemStore::fail_append`]) or at random with a seed
/// ([`MemStore::fail_randomly`]). Nothing survives the process.
#[derive(Default)]
pub struct MemStore {
    kv: MemKv,
    appends: AtomicU64,
    faults: Mutex<Faults>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        crate::sync::lock(&self.faults)
    }

    /// Makes the `number`-th call to `append` from now on (counting from 1
    /// over the store's life) fail, at the given timing. Replaces any
    /// earlier fixed fault.
    pub fn fail_append(&self, number: u64, timing: FaultTiming) {
        self.faults().at = Some((number, timing));
    }

    /// Makes each append fail with a chance of `per_mille` / 1000, before or
    /// after applying (chosen at random too), from a generator seeded with
    /// `seed`: the same seed and the same appends give the same faults.
    pub fn fail_randomly(&self, seed: u64, per_mille: u32) {
        self.faults().random = Some((seed | 1, per_mille.min(1000)));
    }

    /// Stops injecting faults, and takes writes again after a
    /// [`FaultTiming::FailedSync`] (as reopening a store would).
    pub fn clear_faults(&self) {
        let mut faults = self.faults();
        faults.at = None;
        faults.random = None;
        faults.refusing = None;
    }

    fn finding(&self) -> Option<StoreError> {
        None
    }

    fn writable_now(&self) -> Result<(), StoreError> {
        match &self.faults().refusing {
            None => Ok(()),
            Some(first) => Err(refused_after_failed_sync(first)),
        }
    }

    /// Every append an injected fault made fail, in order.
    pub fn failed_appends(&self) -> Vec<FailedAppend> {
        self.faults().failed.clone()
    }

    /// How many times `append` has been called.
    pub fn append_count(&self) -> u64 {
        self.appends.load(Ordering::SeqCst)
    }

    /// Overwrites one raw value, bypassing the codec (fault injection).
    pub fn overwrite_raw(&self, key: &[u8], value: &[u8]) {
        self.kv.lock().insert(key.to_vec(), value.to_vec());
    }

    fn next_fault(&self, number: u64) -> Option<FaultTiming> {
        let mut faults = self.faults();
        if let Some((at, timing)) = faults.at {
            if at == number {
                return Some(timing);
            }
        }
        let (state, per_mille) = faults.random?;
        // xorshift64: a small, seedable, good-enough generator.
        let mut x = state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        faults.random = Some((x, per_mille));
        if (x % 1000) as u32 >= per_mille {
            return None;
        }
        Some(if (x >> 32) & 1 == 0 {
            FaultTiming::BeforeApply
        } else {
            FaultTiming::AfterApply
        })
    }

    fn append_batch(
        &self,
        batch: &[&SagaAppend],
        watermark: Option<SagaId>,
    ) -> Result<WriteTimes, StoreError> {
        self.writable_now()?;
        let number = self.appends.fetch_add(1, Ordering::SeqCst) + 1;
        let timing = self.next_fault(number);
        let record_failure = |timing: FaultTiming| {
            let mut faults = self.faults();
            for append in batch {
                faults.failed.push(FailedAppend {
                    saga: append.saga,
                    first_seq: append.first_seq,
                    records: crate::log::codec::frames_of(append.added())
                        .into_iter()
                        .map(<[u8]>::to_vec)
                        .collect(),
                    timing,
                });
            }
        };
        if timing == Some(FaultTiming::BeforeApply) {
            record_failure(FaultTiming::BeforeApply);
            return Err(StoreError::Injected(format!(
                "append #{number} failed before applying"
            )));
        }
        let times = self.kv.apply_durably(batch_ops(batch, watermark))?;
        if timing == Some(FaultTiming::AfterApply) {
            record_failure(FaultTiming::AfterApply);
            return Err(StoreError::Injected(format!(
                "append #{number} failed after applying"
            )));
        }
        if timing == Some(FaultTiming::FailedSync) {
            record_failure(FaultTiming::FailedSync);
            let reason = format!("fdatasync: injected write-back failure at append #{number}");
            self.faults().refusing = Some(reason.clone());
            return Err(failed_sync(&reason));
        }
        Ok(times)
    }
}

impl_log_store!(MemStore);

#[cfg(test)]
mod tests {
    use super::*;

    fn append_value(store: &SledStore, saga: SagaId, seq: u64) -> Result<(), StoreError> {
        let append = SagaAppend::records(saga, seq, vec![vec![7; 16]]);
        store.append(&[&append], None).map(|_| ())
    }

    /// An append that extends `last` (the saga's durable value at seq 0)
    /// with `added`, as a saga loop builds it.
    fn extending(saga: SagaId, last: &[u8], first_seq: u64, added: &[u8]) -> SagaAppend {
        let mut append = SagaAppend::records(saga, first_seq, Vec::new());
        append.value = LogValue {
            seq: 0,
            bytes: [last, added].concat(),
        };
        append.added_from = last.len();
        append
    }

    #[test]
    fn an_append_that_extends_a_value_rewrites_it_whole_under_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
        let (fresh, grown) = (SagaId::new(), SagaId::new());
        let new_value = SagaAppend::records(fresh, 4, vec![vec![1; 300], vec![4; 2]]);
        let extended = extending(grown, &[3; 7], 2, &[2; 5]);
        assert_eq!(extended.added(), [2; 5]);
        store.append(&[&new_value, &extended], None).unwrap();
        let mut expected = vec![1; 300];
        expected.extend([4; 2]);
        assert_eq!(store.kv.get(&keys::log(fresh, 4)).unwrap(), Some(expected));
        let mut expected = vec![3; 7];
        expected.extend([2; 5]);
        assert_eq!(store.kv.get(&keys::log(grown, 0)).unwrap(), Some(expected));
        assert_eq!(store.kv.get(&keys::log(grown, 2)).unwrap(), None);
    }

    #[test]
    fn an_append_without_records_writes_no_log_value() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
        let saga = SagaId::new();
        let append = SagaAppend::records(saga, 0, Vec::new());
        assert!(!append.writes_log_value());
        store.append(&[&append], None).unwrap();
        assert_eq!(store.read_log(saga).unwrap(), Vec::new());
    }

    #[test]
    fn a_failed_append_reports_only_the_frames_it_adds() {
        use crate::log::codec::encode_record;
        use crate::log::record::{CallRef, Record};
        let frame = |step| {
            encode_record(
                UnixMillis(1),
                &Record::StepStarted(CallRef { step, attempt: 1 }),
            )
            .unwrap()
        };
        let store = MemStore::new();
        store.fail_append(1, FaultTiming::BeforeApply);
        let saga = SagaId::new();
        let added = [frame(1), frame(2)].concat();
        let append = extending(saga, &frame(0), 5, &added);
        assert!(store.append(&[&append], None).is_err());
        let failed = store.failed_appends();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].first_seq, 5);
        assert_eq!(failed[0].records, [frame(1), frame(2)]);
    }

    #[test]
    fn a_failed_sync_refuses_every_later_write_until_the_store_is_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let saga = SagaId::new();
        let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
        append_value(&store, saga, 0).unwrap();

        store
            .kv
            .sync
            .fail_next
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let failed = append_value(&store, saga, 1).unwrap_err();
        assert!(
            matches!(&failed, StoreError::Backend(m) if m.contains("could not be made durable")),
            "{failed}"
        );
        // The next sync would succeed; the store must refuse the write anyway.
        let refused = append_value(&store, saga, 2).unwrap_err();
        assert!(
            matches!(&refused, StoreError::Backend(m) if m.contains("earlier write")),
            "{refused}"
        );
        let seqs: Vec<u64> = store.read_log(saga).unwrap().iter().map(|v| v.0).collect();
        assert_eq!(seqs, [0, 1], "the refused write was not applied");
        drop(store);

        let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
        append_value(&store, saga, 2).unwrap();
        let seqs: Vec<u64> = store.read_log(saga).unwrap().iter().map(|v| v.0).collect();
        assert_eq!(seqs, [0, 1, 2]);
    }

    #[test]
    fn a_failed_flush_refuses_every_later_write_as_a_failed_sync_does() {
        let dir = tempfile::tempdir().unwrap();
        let saga = SagaId::new();
        let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
        store
            .kv
            .sync
            .fail_flush_next
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let failed = append_value(&store, saga, 0).unwrap_err();
        assert!(
            matches!(&failed, StoreError::Backend(m) if m.contains("sled's flush")),
            "{failed}"
        );
        let refused = append_value(&store, saga, 1).unwrap_err();
        assert!(
            matches!(&refused, StoreError::Backend(m) if m.contains("takes no more writes")),
            "{refused}"
        );
        assert_eq!(store.writable(), Err(refused));
    }

    #[test]
    fn a_sled_append_reports_the_time_of_its_flush_and_its_sync() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
        let append = SagaAppend::records(SagaId::new(), 0, vec![vec![7; 16]]);

        let times = store.append(&[&append], None).unwrap();

        // Both are system calls on a real file: neither takes no time.
        assert!(times.flush > Duration::ZERO, "{times:?}");
        assert!(times.sync > Duration::ZERO, "{times:?}");
    }

    #[test]
    fn a_memory_append_reports_no_flush_and_no_sync() {
        let store = MemStore::new();
        let append = SagaAppend::records(SagaId::new(), 0, vec![vec![7; 16]]);

        let times = store.append(&[&append], None).unwrap();

        assert_eq!((times.flush, times.sync), (Duration::ZERO, Duration::ZERO));
    }
}

//! The log store: the asynchronous [`LogStore`] the engine calls, the
//! synchronous [`KvLogStore`] of a store in one ordered key-value map, and
//! one generic implementation of the latter that serves both sled
//! ([`SledStore`]) and memory ([`MemStore`]).
//!
//! Both traits deal in encoded bytes, never in records: decoding happens in
//! the engine, per saga, so one damaged value parks one saga instead of
//! failing a scan.
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
//! most finish before they need one (see [`KvLogStore::append`]).

mod boundary;
mod compact;
mod durability;
mod error;
pub(crate) mod keys;
mod kv;
mod lease;
mod mem;
#[cfg(feature = "testing")]
mod mem_cluster;
mod open;
#[cfg(feature = "postgres")]
mod pg;
mod sled;
#[cfg(test)]
mod tests;

pub use boundary::{
    Adopted, Committed, IndexQuery, LogStore, QueuedAction, QueuedOutcome, Refusal, StoreFuture,
};
pub(crate) use compact::sibling;
pub use compact::{discard_torn_sled_snapshots, Compacted};
pub use error::StoreError;
#[cfg(feature = "testing")]
pub use keys::raw_keys;
pub(crate) use kv::parse_key_claim;
pub use kv::BatchItems;
pub use lease::Lease;
pub use mem::MemStore;
#[cfg(feature = "testing")]
pub use mem::{FailedAppend, FaultTiming};
#[cfg(feature = "testing")]
pub use mem_cluster::{MemCluster, MemNode};
pub(crate) use open::open_sled;
#[cfg(feature = "postgres")]
pub use pg::{NodeStatus, PgOptions, PgStore};
pub use sled::{SledOptions, SledStore};

use crate::ids::{IdempotencyKey, SagaId, SagaType, UnixMillis};
use crate::status::SagaStatus;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Version of the keyspace layout (DESIGN.md §3.3), stored under
/// `"Mformat"`. A database of another version is refused with
/// [`StoreError::FormatMismatch`]; CHANGELOG.md says what each version
/// changed. Frames have their own version byte (`codec::FORMAT_VERSION`).
pub const LAYOUT_VERSION: u8 = 7;

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
#[non_exhaustive]
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
    /// of the saga's last value when it extends that one (DESIGN.md §4.3).
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
    /// Queued operator actions ([`LogStore::queue_action`]) whose records
    /// this append writes: the store marks them applied in the same atomic
    /// write, so that each is carried out once, whichever node does it.
    pub applies: Vec<u64>,
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
            applies: Vec::new(),
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

/// A log store in one ordered key-value map that one process opens at a
/// time ([`SledStore`], [`MemStore`]), called synchronously. Its layout
/// lets the engine defer young sagas' index entries (the watermark),
/// finish sagas a batch at a time, and grow a saga's last value in place;
/// the engine reaches it through [`LogStore::local`]. Implementations must
/// make `append` atomic (all of the batch or none of it survives a crash)
/// and durable (on `Ok`, it survives `kill -9`).
pub trait KvLogStore: Send + Sync + 'static {
    /// Applies every append in `batch` as one atomic write and makes it
    /// durable before returning `Ok`. On `Err` the caller must assume
    /// nothing, and must not act as if any of it were written.
    ///
    /// With `watermark`, the same write also stores it as the new index
    /// watermark. The caller promises that after this write every saga
    /// below it that is not terminal has an active-index entry; sagas at
    /// or above it are found by [`KvLogStore::sagas_logged_from`].
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

    /// Visits the active index in id order from the first id at or above
    /// `from`, one entry at a time, until `visit` returns false: what
    /// recovery uses, so that a million sagas asleep on timers are never
    /// all in memory at once.
    fn for_each_active(
        &self,
        from: SagaId,
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
    /// entry is found by [`KvLogStore::scan_finished`], or from its log.
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

    /// Like [`KvLogStore::for_each_raw`], but a stretch of keys the store
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
/// [`KvLogStore::append`]: where a group commit's time goes (CPU in `apply`,
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
    /// log file and the syncs of new blob files, DESIGN.md §4.1).
    pub sync: Duration,
}

/// What [`KvLogStore::remove_finished`] deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Sagas deleted.
    pub sagas: u64,
    /// Keys deleted (log values, index entries, idempotency keys).
    pub keys: u64,
}

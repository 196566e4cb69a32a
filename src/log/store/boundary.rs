//! The store boundary the engine calls: [`LogStore`], asynchronous and no
//! wider than what the engine needs, so that a store on a network database
//! never blocks a runtime worker. Every [`KvLogStore`] (sled, memory) is a
//! `LogStore` that answers at once, and also offers its layout's shortcuts
//! through [`LogStore::local`].

use super::{
    KeyClaim, KvLogStore, Lease, Removal, Removed, SagaAppend, StoreError, TimerKey, TimerScan,
    WriteTimes,
};
use crate::ids::{IdempotencyKey, SagaId, SagaType, UnixMillis};
use crate::log::verify::VerifyReport;
use crate::status::SagaStatus;
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// What every [`LogStore`] call returns: a boxed future, so that the trait
/// stays object-safe (the engine holds an `Arc<dyn LogStore>`).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Why a store left one append of a batch out of the write.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The append claims an idempotency key that belongs to a saga
    /// already (this one, claimed by a start with this fingerprint).
    KeyTaken(KeyClaim),
    /// The log already holds a record at one of the append's sequence
    /// numbers: another writer's, or this writer's own from an earlier
    /// write whose outcome it never learned. The saga must be read again
    /// from the log before it appends more.
    Conflict,
}

/// What a durable [`LogStore::append`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Committed {
    /// How long the parts of the write took.
    pub times: WriteTimes,
    /// The appends left out, by their position in the batch, with why:
    /// nothing of them was written. Every other append of the batch was
    /// written, all in one atomic and durable write.
    pub refused: Vec<(usize, Refusal)>,
}

/// A saga a node took over from a node that died or left
/// ([`LogStore::adopt`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Adopted {
    /// The saga.
    pub saga: SagaId,
    /// Its encoded active-index entry.
    pub entry: Vec<u8>,
    /// Its pending timer, for a saga asleep on one: it goes into this
    /// node's delay queue instead of running now.
    pub timer: Option<TimerKey>,
}

/// An operator's action queued for the node that owns its saga
/// ([`LogStore::queue_action`]), as that node reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueuedAction {
    /// The queue's id for it.
    pub id: u64,
    /// The saga it acts on.
    pub saga: SagaId,
    /// The encoded `OperatorAction`.
    pub action: Vec<u8>,
}

impl QueuedAction {
    /// Action `action` (encoded) on saga `saga`, queued as `id`.
    pub fn new(id: u64, saga: SagaId, action: Vec<u8>) -> Self {
        QueuedAction { id, saga, action }
    }
}

/// What became of a queued action ([`LogStore::queued_outcome`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueuedOutcome {
    /// Not carried out yet.
    Pending,
    /// Node `node` wrote its record (and carries it out).
    Applied {
        /// The node.
        node: String,
    },
    /// Node `node` refused it, for `reason` (it made no sense in the
    /// saga's state).
    Refused {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
}

/// A listing's filter, for a store that applies it on its side
/// ([`LogStore::scan_matching`]). Every condition that is `Some` must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IndexQuery {
    /// Only sagas with this status, where a saga in [`IndexQuery::parked`]
    /// counts as `Suspended` whatever its stored status.
    pub status: Option<SagaStatus>,
    /// The sagas the engine lists as `Suspended` (parked), whatever their
    /// entries say.
    pub parked: Vec<SagaId>,
    /// Only sagas of this type.
    pub saga_type: Option<String>,
    /// Only sagas started at or after this time.
    pub started_from: Option<UnixMillis>,
    /// Only sagas started before this time.
    pub started_before: Option<UnixMillis>,
    /// Only sagas not terminal that started at or before this time.
    pub unfinished_since: Option<UnixMillis>,
    /// Only sagas whose id comes after this one (keyset paging).
    pub after: Option<SagaId>,
    /// At most this many, the first in id order.
    pub limit: Option<usize>,
}

/// Where sagas' records live, as the engine sees it.
///
/// Every call may be a round trip to a database: the engine awaits it and
/// never holds a lock across it. A store that one process opens at a time
/// implements [`KvLogStore`] instead and gets this trait for free.
pub trait LogStore: Send + Sync + 'static {
    /// The same store as a [`KvLogStore`], if it is one: the engine then
    /// writes through the writer thread synchronously and uses the layout's
    /// shortcuts (deferred index entries, finished batches, a saga's last
    /// value grown in place). `None` (the default) for every other store:
    /// each append is then a new value, and every saga not terminal has its
    /// active entry from its start.
    fn local(&self) -> Option<&dyn KvLogStore> {
        None
    }

    /// Writes `batch` as one atomic and durable write and resolves once it
    /// survives `kill -9`. The store decides each append's idempotency-key
    /// claim inside the write: an append whose key is taken, or which
    /// overlaps records already in the log, is left out and named in
    /// [`Committed::refused`]. Two appends of one batch never claim the
    /// same key (the writer answers the second itself). On `Err` nothing
    /// may be assumed either way ([`StoreError::Ambiguous`] says so
    /// explicitly): the caller must read the log again before it appends.
    fn append<'a>(&'a self, batch: &'a [&'a SagaAppend]) -> StoreFuture<'a, Committed>;

    /// One saga's log values in sequence order, as `(seq of the value's
    /// first record, frames)`; empty for a saga the store does not hold.
    fn read_log(&self, saga: SagaId) -> StoreFuture<'_, Vec<(u64, Vec<u8>)>>;

    /// The saga's encoded active-index entry, if it is not terminal.
    fn read_active(&self, saga: SagaId) -> StoreFuture<'_, Option<Vec<u8>>>;

    /// Up to `limit` sagas that are not terminal, with their encoded index
    /// entries, in id order from the first id after `after`: recovery pages
    /// through them so that a million sagas asleep on timers are never all
    /// in memory at once.
    fn scan_active(
        &self,
        after: Option<SagaId>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<(SagaId, Vec<u8>)>>;

    /// Like [`LogStore::scan_active`], only the sagas this process owns:
    /// after [`LogStore::join`], those the log names this node the owner
    /// of (an earlier incarnation's, for a node id that is stable across
    /// restarts); every one (the default) for a store one process writes.
    fn scan_owned(
        &self,
        after: Option<SagaId>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<(SagaId, Vec<u8>)>> {
        self.scan_active(after, limit)
    }

    /// Every terminal saga with its encoded index entry, in id order.
    fn scan_finished(&self) -> StoreFuture<'_, Vec<(SagaId, Vec<u8>)>>;

    /// The saga an idempotency key belongs to, with the fingerprint of the
    /// start that claimed it.
    fn key_claim<'a>(&'a self, key: &'a IdempotencyKey) -> StoreFuture<'a, Option<KeyClaim>>;

    /// Up to `limit` timers in due order, with their encoded purposes,
    /// leaving out those of the sagas in `skip`. The flag is true when the
    /// scan reached the end (no timer was left out for the limit).
    fn scan_timers<'a>(
        &'a self,
        limit: usize,
        skip: &'a HashSet<SagaId>,
    ) -> StoreFuture<'a, TimerScan>;

    /// Deletes finished sagas for good, as one atomic and durable write:
    /// their logs, index entries and idempotency keys (a key only while it
    /// still names that saga). A saga that is not terminal in the store is
    /// left untouched, whatever the caller believed. [`Removal::batches`]
    /// matters only to a store with finished batches.
    fn remove_finished<'a>(&'a self, sagas: &'a [Removal]) -> StoreFuture<'a, Removed>;

    /// Checks everything the store holds: every value decodes, and every
    /// saga has its log and its index entry ([`crate::tools::VerifyReport`]).
    fn verify(&self) -> StoreFuture<'_, VerifyReport>;

    /// `Ok` while the store takes writes; otherwise the error every write
    /// gets now. Answers from what the store knows, without a round trip.
    fn writable(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// How many [`LogStore::append`] calls the engine's writer keeps in
    /// flight at once (at least 1; the default). With more than one, a
    /// store must keep concurrent batches atomic each, and decide a key
    /// claimed by two batches in flight for one of them. Batches in flight
    /// together never hold appends of the same saga. A
    /// [`LogStore::local`] store is written one batch at a time.
    fn groups_in_flight(&self) -> usize {
        1
    }

    /// Makes this process a node of a log that several processes share:
    /// registers it on the database's clock, with a fencing token that no
    /// earlier node had, and keeps its lease renewed until it is lost or
    /// [`LogStore::leave`] is called. From then on every write carries the
    /// token, and the store refuses it with [`StoreError::Fenced`] once
    /// another node has fenced this one. `types` are the saga types this
    /// node runs: it adopts no others while a live node runs them. The sagas it owns are those it
    /// starts and those [`LogStore::adopt`] hands it, and the store's
    /// timer scans hold only those.
    ///
    /// `None` (the default) for a store one process writes at a time:
    /// that process owns every saga.
    fn join<'a>(&'a self, types: &'a [SagaType]) -> StoreFuture<'a, Option<Arc<Lease>>> {
        let _ = types;
        Box::pin(std::future::ready(Ok(None)))
    }

    /// After [`LogStore::join`]: fences every node whose lease expired, then
    /// takes over up to `limit` unfinished sagas that no live node owns
    /// (this node's own from an earlier incarnation, those of fenced or
    /// departed nodes, and unowned ones) of the types it joined with, or
    /// of a type no live node runs (the engine parks those), runnable ones
    /// first. Any number of nodes may adopt at once; each
    /// saga goes to one of them. Empty (the default) for a store one
    /// process writes.
    fn adopt(&self, limit: usize) -> StoreFuture<'_, Vec<Adopted>> {
        let _ = limit;
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    /// After [`LogStore::join`], before an operator's action on saga
    /// `saga` that no loop of this node drives: makes this node its owner
    /// if no live node is (it is unowned, this node's, or a fenced or
    /// departed node's), and returns `None`; or returns the live node that
    /// owns it, which alone may act on it. `None` (the default) for a store
    /// one process writes.
    fn take(&self, saga: SagaId) -> StoreFuture<'_, Option<String>> {
        let _ = saga;
        Box::pin(std::future::ready(Ok(None)))
    }

    /// After [`LogStore::join`]: whether this node may run the job `name`
    /// (retention's sweeps) for the next `ttl`, holding it against every
    /// other node of the log. A node keeps the job while it asks again
    /// within `ttl`; another takes it once that has passed or the holder
    /// was fenced or left. `true` (the default) for a store one process
    /// writes, and for a store that has not joined.
    fn hold_singleton<'a>(&'a self, name: &'a str, ttl: Duration) -> StoreFuture<'a, bool> {
        let _ = (name, ttl);
        Box::pin(std::future::ready(Ok(true)))
    }

    /// After [`LogStore::join`], at a graceful shutdown once nothing more
    /// is written: hands this node's unfinished sagas over (any live node
    /// adopts them at its next scan, without waiting for the lease to
    /// expire) and ends the lease. Nothing to do (the default) for a store
    /// one process writes.
    fn leave(&self) -> StoreFuture<'_, ()> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// On a log several nodes share: queues the encoded operator action
    /// `action` on saga `saga` for the node that owns it, and returns the
    /// queue's id for it. The owner carries it out at its next scan, in
    /// the same write as its record ([`SagaAppend::applies`]), or refuses
    /// it ([`LogStore::refuse_queued`]); a node that adopts the saga does
    /// so in its place. `None` (the default) for a store without a queue.
    fn queue_action<'a>(&'a self, saga: SagaId, action: &'a [u8]) -> StoreFuture<'a, Option<u64>> {
        let _ = (saga, action);
        Box::pin(std::future::ready(Ok(None)))
    }

    /// After [`LogStore::join`]: up to `limit` queued actions not yet
    /// carried out on sagas this node owns, oldest first. Empty (the
    /// default) for a store without a queue.
    fn queued_actions(&self, limit: usize) -> StoreFuture<'_, Vec<QueuedAction>> {
        let _ = limit;
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    /// What became of queued action `id`.
    fn queued_outcome(&self, id: u64) -> StoreFuture<'_, QueuedOutcome> {
        let _ = id;
        Box::pin(std::future::ready(Ok(QueuedOutcome::Pending)))
    }

    /// After [`LogStore::join`]: marks queued action `id` refused for
    /// `reason`, unless it was carried out or refused already; refused
    /// with [`StoreError::Fenced`] once this node is fenced.
    fn refuse_queued<'a>(&'a self, id: u64, reason: &'a str) -> StoreFuture<'a, ()> {
        let _ = (id, reason);
        Box::pin(std::future::ready(Ok(())))
    }

    /// The node that owns each of `sagas`, for those that have an owner on
    /// a log several nodes share (a listing shows it). Empty (the default)
    /// for a store one process writes.
    fn owners<'a>(&'a self, sagas: &'a [SagaId]) -> StoreFuture<'a, Vec<(SagaId, String)>> {
        let _ = sagas;
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    /// The index entries (active and finished) of the sagas `query`
    /// accepts, in id order, for a store that filters on its side; `None`
    /// (the default) when it does not, and the engine filters every entry
    /// itself.
    #[allow(clippy::type_complexity)] // the same pairs as `scan_active`, maybe
    fn scan_matching<'a>(
        &'a self,
        query: &'a IndexQuery,
    ) -> Option<StoreFuture<'a, Vec<(SagaId, Vec<u8>)>>> {
        let _ = query;
        None
    }
}

/// A ready future: how a [`KvLogStore`] answers.
fn ready<'a, T: Send + 'a>(result: Result<T, StoreError>) -> StoreFuture<'a, T> {
    Box::pin(std::future::ready(result))
}

impl<S: KvLogStore> LogStore for S {
    fn local(&self) -> Option<&dyn KvLogStore> {
        Some(self)
    }

    fn append<'a>(&'a self, batch: &'a [&'a SagaAppend]) -> StoreFuture<'a, Committed> {
        ready(append_claiming(self, batch))
    }

    fn read_log(&self, saga: SagaId) -> StoreFuture<'_, Vec<(u64, Vec<u8>)>> {
        ready(KvLogStore::read_log(self, saga))
    }

    fn read_active(&self, saga: SagaId) -> StoreFuture<'_, Option<Vec<u8>>> {
        ready(KvLogStore::read_active(self, saga))
    }

    fn scan_active(
        &self,
        after: Option<SagaId>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<(SagaId, Vec<u8>)>> {
        let mut page = Vec::new();
        let from = after.unwrap_or(SagaId::from_bytes([0; 16]));
        let result = KvLogStore::for_each_active(self, from, &mut |id, bytes| {
            if Some(id) != after {
                page.push((id, bytes.to_vec()));
            }
            page.len() < limit
        });
        ready(result.map(|()| page))
    }

    fn scan_finished(&self) -> StoreFuture<'_, Vec<(SagaId, Vec<u8>)>> {
        ready(KvLogStore::scan_finished(self))
    }

    fn key_claim<'a>(&'a self, key: &'a IdempotencyKey) -> StoreFuture<'a, Option<KeyClaim>> {
        ready(KvLogStore::key_claim(self, key))
    }

    fn scan_timers<'a>(
        &'a self,
        limit: usize,
        skip: &'a HashSet<SagaId>,
    ) -> StoreFuture<'a, TimerScan> {
        ready(KvLogStore::scan_timers(self, limit, &mut |saga| {
            skip.contains(&saga)
        }))
    }

    fn remove_finished<'a>(&'a self, sagas: &'a [Removal]) -> StoreFuture<'a, Removed> {
        ready(remove_with_batches(self, sagas))
    }

    fn verify(&self) -> StoreFuture<'_, VerifyReport> {
        ready(crate::log::verify::verify(self))
    }

    fn writable(&self) -> Result<(), StoreError> {
        KvLogStore::writable(self)
    }
}

/// [`LogStore::append`] over a [`KvLogStore`]: the claims are decided
/// against the store before the write, which is exact because one process
/// writes such a store. Sequence conflicts are not looked for: one writer
/// never makes them.
fn append_claiming<S: KvLogStore>(
    store: &S,
    batch: &[&SagaAppend],
) -> Result<Committed, StoreError> {
    let mut refused = Vec::new();
    let mut accepted = Vec::with_capacity(batch.len());
    for (at, append) in batch.iter().enumerate() {
        if let Some(claim) = &append.claim {
            if let Some(owner) = store.key_claim(&claim.key)? {
                refused.push((at, Refusal::KeyTaken(owner)));
                continue;
            }
        }
        accepted.push(*append);
    }
    let times = if accepted.is_empty() {
        WriteTimes::default()
    } else {
        store.append(&accepted, None)?
    };
    Ok(Committed { times, refused })
}

/// [`LogStore::remove_finished`] over a [`KvLogStore`]: a removal that
/// names no finished batch gets every batch that names its saga, so that
/// the caller need not know the layout.
fn remove_with_batches<S: KvLogStore>(store: &S, sagas: &[Removal]) -> Result<Removed, StoreError> {
    if sagas.iter().all(|removal| !removal.batches.is_empty()) {
        return store.remove_finished(sagas);
    }
    let mut named: std::collections::HashMap<SagaId, Vec<SagaId>> = Default::default();
    for batch in store.scan_finished_batches(SagaId::from_bytes([0; 16]))? {
        for (saga, _) in &batch.items {
            named.entry(*saga).or_default().push(batch.id);
        }
    }
    let completed: Vec<Removal> = sagas
        .iter()
        .map(|removal| match removal.batches.is_empty() {
            true => Removal {
                batches: named.get(&removal.saga).cloned().unwrap_or_default(),
                ..removal.clone()
            },
            false => removal.clone(),
        })
        .collect();
    store.remove_finished(&completed)
}

//! Append faults over any store: [`Faulty`] wraps a store seen through the
//! asynchronous boundary and makes a seeded share of its appends fail,
//! either before the write (nothing written, `StoreError::Injected`) or
//! after it (written, reported as `StoreError::Ambiguous`, as when a
//! database connection drops after COMMIT was sent). It can also hold
//! back one append's acknowledgement, to stand for a caller that gives up
//! between the write and its answer.

use sagalog::store::{
    Adopted, Committed, IndexQuery, KeyClaim, LogStore, QueuedAction, QueuedOutcome, Removal,
    Removed, SagaAppend, StoreFuture, TimerScan,
};
use sagalog::tools::{frames_of, VerifyReport};
use sagalog::{IdempotencyKey, Lease, SagaId, SagaType, StoreError};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// One append a fault made fail: its saga, its record frames, and whether
/// it was written.
#[derive(Clone, Debug)]
pub struct Failed {
    pub saga: SagaId,
    pub records: Vec<Vec<u8>>,
    pub written: bool,
}

#[derive(Default)]
struct State {
    /// The generator's state and the chance of a fault, per mille; `None`
    /// once the faults are cleared.
    random: Option<(u64, u32)>,
    failed: Vec<Failed>,
    /// Every saga an append was attempted for.
    attempted: HashSet<SagaId>,
    /// Adoptions still to fail, as when the server goes away mid-scan.
    failing_adopts: usize,
    /// The next append's acknowledgement is to be held back.
    hold_next: bool,
    /// An append is written and its acknowledgement held back.
    holding: bool,
}

/// `inner` with seeded append faults.
pub struct Faulty {
    inner: Arc<dyn LogStore>,
    state: Mutex<State>,
    /// One permit per [`Faulty::release`].
    released: tokio::sync::Semaphore,
}

impl Faulty {
    /// Fails each append of `inner` with a chance of `per_mille`/1000.
    pub fn new(inner: Arc<dyn LogStore>, seed: u64, per_mille: u32) -> Faulty {
        Faulty {
            inner,
            state: Mutex::new(State {
                random: Some((seed | 1, per_mille)),
                ..State::default()
            }),
            released: tokio::sync::Semaphore::new(0),
        }
    }

    /// Holds back the acknowledgement of the next append: it is written
    /// (then [`Faulty::holding`] is true), and answered after
    /// [`Faulty::release`].
    pub fn hold_next_ack(&self) {
        self.state.lock().unwrap().hold_next = true;
    }

    /// Whether an append is written and its acknowledgement held back.
    pub fn holding(&self) -> bool {
        self.state.lock().unwrap().holding
    }

    /// Answers the append held back by [`Faulty::hold_next_ack`].
    pub fn release(&self) {
        self.released.add_permits(1);
    }

    /// Makes the next `n` adoptions fail with `StoreError::Unreachable`.
    pub fn fail_adopts(&self, n: usize) {
        self.state.lock().unwrap().failing_adopts = n;
    }

    /// The appends that failed so far.
    pub fn failed(&self) -> Vec<Failed> {
        self.state.lock().unwrap().failed.clone()
    }

    /// No more faults.
    pub fn clear(&self) {
        self.state.lock().unwrap().random = None;
    }

    /// The sagas whose log holds at least one record.
    pub async fn logged(&self) -> HashSet<SagaId> {
        let attempted = self.state.lock().unwrap().attempted.clone();
        let mut logged = HashSet::new();
        for saga in attempted {
            if !self.inner.read_log(saga).await.unwrap().is_empty() {
                logged.insert(saga);
            }
        }
        logged
    }

    /// Whether the next append fails, and if so whether after writing.
    fn next_fault(&self) -> Option<bool> {
        let mut state = self.state.lock().unwrap();
        let (mut x, per_mille) = state.random?;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.random = Some((x, per_mille));
        (((x % 1000) as u32) < per_mille).then_some((x >> 32) & 1 == 1)
    }

    fn record(&self, batch: &[&SagaAppend], written: bool) {
        let mut state = self.state.lock().unwrap();
        for append in batch {
            state.failed.push(Failed {
                saga: append.saga,
                records: frames_of(append.added())
                    .into_iter()
                    .map(<[u8]>::to_vec)
                    .collect(),
                written,
            });
        }
    }
}

impl LogStore for Faulty {
    fn append<'a>(&'a self, batch: &'a [&'a SagaAppend]) -> StoreFuture<'a, Committed> {
        Box::pin(async move {
            {
                let mut state = self.state.lock().unwrap();
                state.attempted.extend(batch.iter().map(|a| a.saga));
            }
            match self.next_fault() {
                None => {
                    let committed = self.inner.append(batch).await;
                    let hold = std::mem::take(&mut self.state.lock().unwrap().hold_next);
                    if hold {
                        self.state.lock().unwrap().holding = true;
                        let _ = self.released.acquire().await.map(|p| p.forget());
                        self.state.lock().unwrap().holding = false;
                    }
                    committed
                }
                Some(false) => {
                    self.record(batch, false);
                    Err(StoreError::Injected(
                        "an append failed before writing".into(),
                    ))
                }
                Some(true) => {
                    self.inner.append(batch).await?;
                    self.record(batch, true);
                    Err(StoreError::Ambiguous(
                        "the connection was lost after COMMIT was sent".into(),
                    ))
                }
            }
        })
    }
    fn read_log(&self, saga: SagaId) -> StoreFuture<'_, Vec<(u64, Vec<u8>)>> {
        self.inner.read_log(saga)
    }
    fn read_active(&self, saga: SagaId) -> StoreFuture<'_, Option<Vec<u8>>> {
        self.inner.read_active(saga)
    }
    fn scan_active(
        &self,
        after: Option<SagaId>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<(SagaId, Vec<u8>)>> {
        self.inner.scan_active(after, limit)
    }
    fn scan_owned(
        &self,
        after: Option<SagaId>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<(SagaId, Vec<u8>)>> {
        self.inner.scan_owned(after, limit)
    }
    fn scan_finished(&self) -> StoreFuture<'_, Vec<(SagaId, Vec<u8>)>> {
        self.inner.scan_finished()
    }
    fn join<'a>(&'a self, types: &'a [SagaType]) -> StoreFuture<'a, Option<Arc<Lease>>> {
        self.inner.join(types)
    }
    fn adopt(&self, limit: usize) -> StoreFuture<'_, Vec<Adopted>> {
        {
            let mut state = self.state.lock().unwrap();
            if state.failing_adopts > 0 {
                state.failing_adopts -= 1;
                return Box::pin(std::future::ready(Err(StoreError::Unreachable {
                    reason: "an injected loss of the server during adoption".into(),
                })));
            }
        }
        self.inner.adopt(limit)
    }
    fn leave(&self) -> StoreFuture<'_, ()> {
        self.inner.leave()
    }
    fn take(&self, saga: SagaId) -> StoreFuture<'_, Option<String>> {
        self.inner.take(saga)
    }
    fn owners<'a>(&'a self, sagas: &'a [SagaId]) -> StoreFuture<'a, Vec<(SagaId, String)>> {
        self.inner.owners(sagas)
    }
    fn queue_action<'a>(&'a self, saga: SagaId, action: &'a [u8]) -> StoreFuture<'a, Option<u64>> {
        self.inner.queue_action(saga, action)
    }
    fn queued_actions(&self, limit: usize) -> StoreFuture<'_, Vec<QueuedAction>> {
        self.inner.queued_actions(limit)
    }
    fn queued_outcome(&self, id: u64) -> StoreFuture<'_, QueuedOutcome> {
        self.inner.queued_outcome(id)
    }
    fn refuse_queued<'a>(&'a self, id: u64, reason: &'a str) -> StoreFuture<'a, ()> {
        self.inner.refuse_queued(id, reason)
    }
    fn hold_singleton<'a>(
        &'a self,
        name: &'a str,
        ttl: std::time::Duration,
    ) -> StoreFuture<'a, bool> {
        self.inner.hold_singleton(name, ttl)
    }
    fn key_claim<'a>(&'a self, key: &'a IdempotencyKey) -> StoreFuture<'a, Option<KeyClaim>> {
        self.inner.key_claim(key)
    }
    fn scan_timers<'a>(
        &'a self,
        limit: usize,
        skip: &'a HashSet<SagaId>,
    ) -> StoreFuture<'a, TimerScan> {
        self.inner.scan_timers(limit, skip)
    }
    fn remove_finished<'a>(&'a self, sagas: &'a [Removal]) -> StoreFuture<'a, Removed> {
        self.inner.remove_finished(sagas)
    }
    fn verify(&self) -> StoreFuture<'_, VerifyReport> {
        self.inner.verify()
    }
    fn writable(&self) -> Result<(), StoreError> {
        self.inner.writable()
    }
    fn groups_in_flight(&self) -> usize {
        self.inner.groups_in_flight()
    }
    #[allow(clippy::type_complexity)] // the trait's signature
    fn scan_matching<'a>(
        &'a self,
        query: &'a IndexQuery,
    ) -> Option<StoreFuture<'a, Vec<(SagaId, Vec<u8>)>>> {
        self.inner.scan_matching(query)
    }
}

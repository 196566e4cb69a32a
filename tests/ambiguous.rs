//! A commit whose outcome is unknown (the connection to the database was
//! lost after COMMIT was sent): the saga is read again from its log and
//! goes on, without a reopen and without being parked, whether the write
//! landed or not.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

mod common;

use common::{outcome_of, start_saga, trip_registry, Script};
use sagalog::store::{
    Committed, KeyClaim, LogStore, Removal, Removed, SagaAppend, StoreFuture, TimerScan,
};
use sagalog::tools::VerifyReport;
use sagalog::{
    Engine, EngineConfig, IdempotencyKey, InDoubtPolicy, MemStore, SagaId, SagaStatus, StoreError,
};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A memory store seen through the async boundary whose append number
/// `fail_at` reports `Ambiguous`: after writing the batch (`landed`) or
/// without writing it.
struct Unsure {
    inner: Arc<MemStore>,
    appends: AtomicU64,
    fail_at: u64,
    landed: bool,
}

impl LogStore for Unsure {
    fn append<'a>(&'a self, batch: &'a [&'a SagaAppend]) -> StoreFuture<'a, Committed> {
        Box::pin(async move {
            let number = self.appends.fetch_add(1, Ordering::SeqCst) + 1;
            if number != self.fail_at {
                return self.inner.append(batch).await;
            }
            if self.landed {
                self.inner.append(batch).await?;
            }
            Err(StoreError::Ambiguous(
                "injected: connection lost after COMMIT".into(),
            ))
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
    fn scan_finished(&self) -> StoreFuture<'_, Vec<(SagaId, Vec<u8>)>> {
        self.inner.scan_finished()
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
}

/// Runs the three-step trip with append `fail_at` ambiguous; its outcome,
/// the calls made, and the engine's parked sagas.
async fn trip_with_unknown_append(fail_at: u64, landed: bool) -> (SagaStatus, Vec<String>, usize) {
    let script = Script::default();
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let store = Arc::new(Unsure {
        inner: Arc::new(MemStore::new()),
        appends: AtomicU64::new(0),
        fail_at,
        landed,
    });
    let engine = Engine::open_with_store(store, registry, EngineConfig::default())
        .await
        .unwrap();
    let id = start_saga(&engine, &trip, &"ada".into()).await;
    let outcome = outcome_of(&engine, id).await;
    (outcome.status, script.calls(), engine.parked().len())
}

#[tokio::test(start_paused = true)]
async fn a_saga_whose_write_landed_unknown_to_it_reads_its_log_and_commits() {
    let (status, calls, parked) = trip_with_unknown_append(2, true).await;

    assert_eq!(status, SagaStatus::Committed);
    assert_eq!(parked, 0);
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.starts_with("flight:action"))
            .count(),
        1,
        "the result that landed is not called for again: {calls:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_saga_whose_write_was_lost_reads_its_log_reruns_the_call_in_doubt_and_commits() {
    let (status, calls, parked) = trip_with_unknown_append(2, false).await;

    assert_eq!(status, SagaStatus::Committed);
    assert_eq!(parked, 0);
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.starts_with("flight:action"))
            .count(),
        2,
        "the call whose result was lost runs again: {calls:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_start_whose_write_landed_unknown_to_its_caller_still_runs_to_its_end() {
    let script = Script::default();
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let inner = Arc::new(MemStore::new());
    let store = Arc::new(Unsure {
        inner: inner.clone(),
        appends: AtomicU64::new(0),
        fail_at: 1,
        landed: true,
    });
    let engine = Engine::open_with_store(store, registry, EngineConfig::default())
        .await
        .unwrap();

    let started = engine
        .start(&trip, &"ada".to_string(), sagalog::StartOptions::new())
        .await;

    assert!(matches!(
        started,
        Err(sagalog::Error::Store(StoreError::Ambiguous(_)))
    ));
    let id = engine.list(None).await.unwrap()[0].saga_id;
    let outcome = outcome_of(&engine, id).await;
    assert_eq!(outcome.status, SagaStatus::Committed);
    assert_eq!(engine.parked().len(), 0);
}

//! A store seen only through the asynchronous boundary: it hides
//! `LogStore::local`, so that the engine over it takes the path of a store
//! on a network database (no writer-side claims, no deferred index entries,
//! no values grown in place), with a key-value store underneath.

use sagalog::store::{
    Committed, KeyClaim, LogStore, Removal, Removed, SagaAppend, StoreFuture, TimerScan,
};
use sagalog::tools::VerifyReport;
use sagalog::{IdempotencyKey, SagaId, StoreError};
use std::collections::HashSet;
use std::sync::Arc;

/// `S` behind the asynchronous boundary alone.
pub struct AsyncOnly<S>(pub Arc<S>);

impl<S: LogStore> LogStore for AsyncOnly<S> {
    fn append<'a>(&'a self, batch: &'a [&'a SagaAppend]) -> StoreFuture<'a, Committed> {
        self.0.append(batch)
    }
    fn read_log(&self, saga: SagaId) -> StoreFuture<'_, Vec<(u64, Vec<u8>)>> {
        self.0.read_log(saga)
    }
    fn read_active(&self, saga: SagaId) -> StoreFuture<'_, Option<Vec<u8>>> {
        self.0.read_active(saga)
    }
    fn scan_active(
        &self,
        after: Option<SagaId>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<(SagaId, Vec<u8>)>> {
        self.0.scan_active(after, limit)
    }
    fn scan_finished(&self) -> StoreFuture<'_, Vec<(SagaId, Vec<u8>)>> {
        self.0.scan_finished()
    }
    fn key_claim<'a>(&'a self, key: &'a IdempotencyKey) -> StoreFuture<'a, Option<KeyClaim>> {
        self.0.key_claim(key)
    }
    fn scan_timers<'a>(
        &'a self,
        limit: usize,
        skip: &'a HashSet<SagaId>,
    ) -> StoreFuture<'a, TimerScan> {
        self.0.scan_timers(limit, skip)
    }
    fn remove_finished<'a>(&'a self, sagas: &'a [Removal]) -> StoreFuture<'a, Removed> {
        self.0.remove_finished(sagas)
    }
    fn verify(&self) -> StoreFuture<'_, VerifyReport> {
        self.0.verify()
    }
    fn writable(&self) -> Result<(), StoreError> {
        self.0.writable()
    }
    fn groups_in_flight(&self) -> usize {
        self.0.groups_in_flight()
    }
}

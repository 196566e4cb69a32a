//! Retention: deleting finished sagas after a while, so that the store
//! does not grow forever. A background sweeper calls
//! [`Engine::sweep_finished`] every [`Retention::sweep_every`]; operators
//! can call it (or `sagalog sweep`) by hand.
//!
//! Only sagas in the finished index are candidates, and the store re-checks
//! at delete time that none of them has an active entry, so a saga that is
//! not finished is never touched. While a saga is being deleted the sweeper
//! owns it like a loop does: an operator action that arrives meanwhile
//! either runs first (the saga is then skipped) or finds it gone.

use crate::engine::Engine;
use crate::error::Error;
use crate::ids::SagaId;
use crate::log::codec;
use crate::log::record::Record;
use crate::log::store::{IndexEntry, KvLogStore, Removal, Removed, StoreError};
use crate::sync::lock;
use std::collections::HashMap;
use std::time::Duration;

/// How long finished sagas are kept, and how often the sweeper looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// A finished saga is deleted once it has been finished this long
    /// (counted from its terminal record). Default 7 days.
    pub keep_finished: Duration,
    /// Time between sweeps; the first runs one interval after open.
    /// Default 1 hour.
    pub sweep_every: Duration,
    /// Most sagas deleted in one atomic write. Default 256.
    pub batch: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep_finished: Duration::from_secs(7 * 24 * 3600),
            sweep_every: Duration::from_secs(3600),
            batch: 256,
        }
    }
}

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SweepReport {
    /// Finished sagas old enough to delete.
    pub eligible: u64,
    /// Sagas deleted.
    pub removed: u64,
    /// Keys deleted (log values, index entries, idempotency keys).
    pub keys_removed: u64,
    /// Eligible sagas left in place because some task owned them (an
    /// operator action) or their start record is unreadable (deleting
    /// them could leave their idempotency key behind; `verify` shows them).
    pub skipped: u64,
}

impl Engine {
    /// Deletes every saga that has been finished for at least `older_than`
    /// (by the engine's clock): its log, its index entry and its
    /// idempotency key, `batch` sagas per atomic write. Never touches a
    /// saga that is not finished. After this, a start with a deleted
    /// saga's idempotency key starts a new saga.
    pub async fn sweep_finished(
        &self,
        older_than: Duration,
        batch: usize,
    ) -> Result<SweepReport, Error> {
        let cutoff = self.now().minus(older_than);
        let mut report = SweepReport::default();
        let named = match self.inner.store.local() {
            Some(local) => batches_naming_each_saga(local)?,
            None => HashMap::new(),
        };
        let candidates = self.finished_before(cutoff).await?;
        report.eligible = candidates.len() as u64;
        for chunk in candidates.chunks(batch.max(1)) {
            let removals = self.claim_removals(chunk, &named, &mut report).await;
            let ids: Vec<SagaId> = removals.iter().map(|r| r.saga).collect();
            let removed = self.remove(removals).await;
            for id in ids {
                let pending = lock(&self.inner.running).remove(&id).unwrap_or_default();
                for (_, reply, _) in pending {
                    let _ = reply.send(Err(Error::NotFound(id)));
                }
            }
            let removed = removed?;
            report.removed += removed.sagas;
            metrics::counter!(crate::metrics::SAGAS_SWEPT).increment(removed.sagas);
            report.keys_removed += removed.keys;
        }
        if report.removed > 0 {
            tracing::info!(
                removed = report.removed,
                keys = report.keys_removed,
                skipped = report.skipped,
                "retention sweep deleted finished sagas"
            );
        }
        Ok(report)
    }

    /// Deletes `removals` in one write: off the async workers for a local
    /// store, whose write blocks.
    async fn remove(&self, removals: Vec<Removal>) -> Result<Removed, StoreError> {
        if self.inner.store.local().is_none() {
            return self.inner.store.remove_finished(&removals).await;
        }
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || match store.local() {
            Some(local) => local.remove_finished(&removals),
            None => Ok(Removed::default()),
        })
        .await
        .map_err(|e| StoreError::Backend(format!("the sweep task failed: {e}")))?
    }

    /// The sagas that finished at or before `cutoff`.
    async fn finished_before(&self, cutoff: crate::ids::UnixMillis) -> Result<Vec<SagaId>, Error> {
        Ok(self
            .inner
            .store
            .scan_finished()
            .await?
            .into_iter()
            .filter(|(_, bytes)| {
                codec::decode_index_entry::<IndexEntry>(bytes)
                    .is_ok_and(|e| e.status.is_terminal() && e.changed_at <= cutoff)
            })
            .map(|(id, _)| id)
            .collect())
    }

    /// Claims each saga of `chunk` and returns the removals of those that
    /// may go: a saga some task owns, whose start record cannot be read, or
    /// that a command reached meanwhile is skipped (and counted in `report`).
    async fn claim_removals(
        &self,
        chunk: &[SagaId],
        named: &HashMap<SagaId, Vec<SagaId>>,
        report: &mut SweepReport,
    ) -> Vec<Removal> {
        let mut removals = Vec::with_capacity(chunk.len());
        for &id in chunk {
            if !self.claim(id) {
                report.skipped += 1;
                continue;
            }
            match self.start_record_key(id).await {
                Some(key) => removals.push(Removal {
                    saga: id,
                    idempotency_key: key,
                    batches: named.get(&id).cloned().unwrap_or_default(),
                }),
                None => {
                    report.skipped += 1;
                    self.hand_back(id).await;
                }
            }
        }
        // Commands that reached a claimed saga before the delete win.
        let mut idle = Vec::with_capacity(removals.len());
        for removal in removals {
            let waiting = lock(&self.inner.running)
                .get(&removal.saga)
                .is_some_and(|mailbox| !mailbox.is_empty());
            if waiting {
                report.skipped += 1;
                self.hand_back(removal.saga).await;
            } else {
                idle.push(removal);
            }
        }
        idle
    }

    /// The idempotency key of an owned saga's start record: `Some(None)`
    /// when it has none, `None` when the record cannot be read.
    async fn start_record_key(&self, id: SagaId) -> Option<Option<crate::ids::IdempotencyKey>> {
        let history = self.history(id).await.ok()?;
        match history.into_iter().next()?.record {
            Ok((_, Record::SagaStarted(started))) => Some(started.idempotency_key),
            _ => None,
        }
    }

    /// Gives an owned saga back: released if nothing waits for it, else its
    /// loop runs and applies the waiting commands.
    async fn hand_back(&self, id: SagaId) {
        if self.inner.release_if_idle(id) {
            return;
        }
        let prepared = self.prepare(id).await;
        self.run_or_park(id, prepared);
    }
}

/// Which finished batches name each saga: a saga's items go with it.
fn batches_naming_each_saga(store: &dyn KvLogStore) -> Result<HashMap<SagaId, Vec<SagaId>>, Error> {
    let mut named: HashMap<SagaId, Vec<SagaId>> = HashMap::new();
    for batch in store.scan_finished_batches(SagaId::from_bytes([0; 16]))? {
        for (saga, _) in &batch.items {
            named.entry(*saga).or_default().push(batch.id);
        }
    }
    Ok(named)
}

/// The background sweeper: a thread that sleeps on the real clock, not on
/// tokio's. (A tokio timer would be the only pending timer of an idle
/// engine, and tokio's paused test clock would jump to it whenever the
/// runtime waits for the writer thread.) It holds the engine weakly, so an
/// engine dropped without `shutdown` still goes away, and stops when told
/// or when the engine is gone.
/// The name of retention's job among those one node of a shared log runs
/// ([`crate::store::LogStore::hold_singleton`]).
pub(crate) const RETENTION_JOB: &str = "retention";

pub(crate) struct Sweeper {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Sweeper {
    pub(crate) fn start(engine: &Engine, retention: Retention) -> Result<Sweeper, Error> {
        let inner = std::sync::Arc::downgrade(&engine.inner);
        let runtime = tokio::runtime::Handle::current();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sagalog-retention".into())
            .spawn(move || loop {
                match stopped.recv_timeout(retention.sweep_every) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                let Some(inner) = inner.upgrade() else { return };
                let engine = Engine {
                    inner,
                    _handle: None,
                };
                // On a shared log one node sweeps: the one that holds the
                // job, for two intervals at a time, renewed at each sweep.
                let job = engine
                    .inner
                    .store
                    .hold_singleton(RETENTION_JOB, retention.sweep_every.saturating_mul(2));
                match runtime.block_on(job) {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::debug!("another node runs retention");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not learn which node sweeps; trying again at the next interval");
                        continue;
                    }
                }
                let swept = runtime
                    .block_on(engine.sweep_finished(retention.keep_finished, retention.batch));
                if let Err(e) = swept {
                    tracing::error!(error = %e, "retention sweep failed; it runs again at the next interval");
                }
            })
            .map_err(|e| {
                Error::Store(StoreError::Backend(format!(
                    "could not start the retention thread: {e}"
                )))
            })?;
        Ok(Sweeper { stop, thread })
    }

    /// Stops the thread, waiting for a sweep in progress to finish.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

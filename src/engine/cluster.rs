//! On a log several nodes share ([`LogStore::join`](crate::store::LogStore::join)):
//! watching this node's lease, adopting the sagas of nodes that died or
//! left, carrying out the operator actions other nodes queued for this
//! one, and starting no call while the lease is in doubt.
//!
//! After every renewal of the lease (a quarter of it, on the real clock,
//! so a test's paused clock does not move it) the engine asks the store to
//! fence expired nodes and hand it their sagas, runnable ones first: those
//! run at once, those asleep on a timer go into the delay queue. Once the
//! lease is lost the engine stops as at a shutdown with no grace period:
//! calls in flight are dropped and stay in doubt in the log for their new
//! owner, and no saga is parked, because none is this node's any more.

use super::{Engine, Inner};
use crate::error::Error;
use crate::ids::SagaId;
use crate::log::store::{Lease, StoreError};
use std::sync::Arc;
use tracing::Instrument;

/// How many sagas one adoption transaction takes over at most.
const ADOPT_BATCH: usize = 256;

/// What one round of adoption did.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct AdoptedCounts {
    /// Sagas whose loops were started.
    pub(super) resumed: usize,
    /// Sagas asleep on a timer, put into the delay queue.
    pub(super) sleeping: usize,
    /// Sagas that cannot run here.
    pub(super) parked: usize,
}

impl Engine {
    /// This node's lease on a log several nodes share; `None` for a store
    /// one process writes (sled, memory) and for an engine opened for
    /// administration.
    ///
    /// Watch [`Lease::lost`] to learn that another node fenced this one:
    /// the engine has then stopped, and the service should restart it.
    pub fn lease(&self) -> Option<Arc<Lease>> {
        self.inner.lease.clone()
    }

    /// Adopts sagas until the store hands over no more.
    pub(super) async fn adopt_all(&self) -> Result<AdoptedCounts, Error> {
        let mut counts = AdoptedCounts::default();
        loop {
            let adopted = self.inner.store.adopt(ADOPT_BATCH).await?;
            let last = adopted.len() < ADOPT_BATCH;
            for saga in adopted {
                match saga.timer {
                    Some(timer) => {
                        counts.sleeping += 1;
                        self.inner.delay_queue.insert(timer);
                    }
                    None => {
                        if !self.claim(saga.saga) {
                            continue;
                        }
                        match self.prepare(saga.saga).await {
                            Ok(run) => {
                                counts.resumed += 1;
                                self.spawn_owned(run);
                            }
                            Err(reason) => {
                                counts.parked += 1;
                                self.park(saga.saga, reason);
                            }
                        }
                    }
                }
            }
            if last {
                return Ok(counts);
            }
        }
    }

    /// Starts the task that adopts every scan period and stops the engine
    /// once the lease is lost; nothing for a store one process writes.
    pub(super) fn watch_lease(&self) {
        let Some(lease) = self.inner.lease.clone() else {
            return;
        };
        let engine = self.background();
        self.inner.tracker.spawn(
            async move {
                loop {
                    tokio::select! {
                        _ = lease.next_renewal() => {}
                        _ = lease.lost() => break,
                        _ = engine.inner.stopping.cancelled() => return,
                    }
                    if !lease.is_held() {
                        continue;
                    }
                    match engine.adopt_all().await {
                        Ok(_) => {}
                        Err(Error::Store(StoreError::Fenced { .. })) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "could not adopt sagas; trying again at the next scan")
                        }
                    }
                    if let Err(e) = engine.apply_queued().await {
                        tracing::warn!(error = %e, "could not read the queued operator actions; trying again at the next scan");
                    }
                }
                if !engine.inner.stopping.is_cancelled() {
                    tracing::error!(reason = ?lease.lost_reason(), "this node lost its lease; the engine stops and its sagas go to the live nodes");
                    engine.inner.stopping.cancel();
                    engine.inner.aborting.cancel();
                }
            }
            .instrument(tracing::info_span!("lease")),
        );
    }
}

impl Inner {
    /// Waits until this node may start a participant call: at once on a
    /// store one process writes, or while the lease is held; after a late
    /// renewal; never once the lease is lost (the saga is another node's).
    pub(super) async fn may_call(&self, id: SagaId) -> Result<(), Error> {
        let Some(lease) = &self.lease else {
            return Ok(());
        };
        if lease.is_held() {
            return Ok(());
        }
        tracing::warn!(saga_id = %id, "the lease is past its local deadline; the call waits for a renewal");
        tokio::select! {
            held = lease.held() => match held {
                true => Ok(()),
                false => Err(Error::Store(StoreError::Fenced {
                    node: lease.node_id().to_string(),
                    reason: lease.lost_reason().unwrap_or_default(),
                })),
            },
            _ = self.aborting.cancelled() => Err(Error::shutting_down(id)),
        }
    }
}

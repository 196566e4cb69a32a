//! Ownership: at most one task writes a saga's log at a time. Claiming a
//! saga, parking one that cannot run, and spawning its loop.

use super::read::load_state;
use super::run::LoopEnd;
use super::{Engine, SagaRun};
use crate::error::{Error, ParkReason};
use crate::ids::SagaId;
use crate::log::store::{StoreError, TimerKey};
use crate::state::SagaState;
use crate::sync::lock;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

impl Engine {
    /// Takes ownership of saga `id`; false if some task owns it already.
    pub(super) fn claim(&self, id: SagaId) -> bool {
        let mut running = lock(&self.inner.running);
        if running.contains_key(&id) {
            return false;
        }
        running.insert(id, Vec::new());
        true
    }

    /// Parks an owned saga and gives up ownership; anyone waiting for its
    /// outcome learns why.
    pub(super) fn park(&self, id: SagaId, reason: ParkReason) {
        tracing::error!(saga_id = %id, %reason, "saga parked");
        lock(&self.inner.parked).insert(id, reason.clone());
        let pending = lock(&self.inner.running).remove(&id).unwrap_or_default();
        for (_, reply, _) in pending {
            let _ = reply.send(Err(Error::Parked {
                saga: id,
                reason: reason.clone(),
            }));
        }
        self.inner
            .notify_waiters(id, Err(Error::Parked { saga: id, reason }));
    }

    /// Loads an owned saga and finds its definition. Any failure is the
    /// reason to park it.
    pub(super) async fn prepare(&self, id: SagaId) -> Result<SagaRun, ParkReason> {
        let state = self
            .load_state(id)
            .await
            .map_err(|e| ParkReason::Unreadable(Box::new(e)))?;
        self.prepare_state(id, state)
    }

    /// Runs the loop of an owned saga that `prepare` made ready, or parks it
    /// with the reason it could not.
    pub(super) fn run_or_park(&self, id: SagaId, prepared: Result<SagaRun, ParkReason>) {
        match prepared {
            Ok(run) => self.spawn_owned(run),
            Err(reason) => self.park(id, reason),
        }
    }

    pub(super) fn prepare_state(
        &self,
        id: SagaId,
        state: SagaState,
    ) -> Result<SagaRun, ParkReason> {
        let saga_type = state.saga_type().clone();
        let definition = self
            .inner
            .registry
            .get(&saga_type)
            .cloned()
            .ok_or_else(|| ParkReason::UnknownType {
                saga_type: saga_type.clone(),
            })?;
        if definition.version() != state.started.version {
            return Err(ParkReason::OtherVersion {
                saga_type,
                registered: definition.version(),
                logged: state.started.version,
            });
        }
        if definition.step_names()[..] != state.plan().step_names()[..] {
            return Err(ParkReason::OtherSteps {
                saga_type,
                version: definition.version(),
                registered: definition.step_names().to_vec(),
                logged: state.plan().step_names(),
            });
        }
        let input = definition
            .decode_input(&state.started.input)
            .map_err(ParkReason::BadInput)?;
        Ok(SagaRun {
            id,
            definition,
            input,
            state,
            pending_calls: Vec::new(),
            open: None,
        })
    }

    pub(super) async fn load_state(&self, id: SagaId) -> Result<SagaState, Error> {
        load_state(&*self.inner.store, id).await
    }

    /// Runs the loop of a saga this task owns.
    pub(super) fn spawn_owned(&self, run: SagaRun) {
        self.spawn_owned_with(run, None)
    }

    /// Runs the loop of a saga this task owns, with a concurrency permit
    /// already taken (by `start`) or to be taken by the loop.
    pub(super) fn spawn_owned_with(&self, run: SagaRun, permit: Option<OwnedSemaphorePermit>) {
        let inner = self.inner.clone();
        let engine = self.background();
        let span =
            tracing::info_span!("saga", saga_id = %run.id, saga_type = %run.state.saga_type());
        self.inner.tracker.spawn(
            async move {
                let id = run.id;
                // A sub-saga runs on its parent's slot: the parent waits for
                // it, so making it wait for a slot of its own could deadlock.
                let child = run.state.started.parent.is_some();
                let permit = match permit {
                    Some(permit) => Ok(Some(permit)),
                    None if child => Ok(None),
                    None => inner.permits.clone().acquire_owned().await.map(Some),
                };
                let result = match permit {
                    // Boxed: the loop's future is large, and held inline it
                    // would make this task's future as large, which tokio
                    // copies when it spawns, stores and replaces it; one
                    // allocation costs less than those copies.
                    Ok(_permit) => Box::pin(inner.drive(run)).await,
                    Err(_) => Err(Error::shutting_down(id)),
                };
                lock(&inner.decided).remove(&id);
                match result {
                    Ok(LoopEnd::Outcome(outcome)) => inner.notify_waiters(id, Ok(outcome)),
                    Ok(LoopEnd::Sleeping) => {}
                    Err(Error::ShuttingDown { .. }) => {
                        lock(&inner.running).remove(&id);
                        inner.notify_waiters(id, Err(Error::shutting_down(id)));
                    }
                    Err(Error::Store(StoreError::Fenced { .. })) => {
                        // Another node fenced this one: the saga is that
                        // node's now, to adopt and run; not parked here.
                        lock(&inner.running).remove(&id);
                        inner.notify_waiters(id, fenced(&inner));
                    }
                    Err(e) if reloads(&e) => {
                        // Whether the last write landed is unknown, or
                        // someone else wrote: the log says. Still owned;
                        // waiters keep waiting.
                        tracing::warn!(error = %e, "saga loop stopped on an unknown write; reading the saga again from its log");
                        engine.reload(id);
                    }
                    Err(e) => {
                        // Visible as parked until the engine is reopened,
                        // which resumes the saga from its durable log.
                        tracing::error!(error = %e, "saga loop stopped; the saga resumes from its log at the next open");
                        inner.notify_waiters(id, Err(e.clone()));
                        engine.park(id, ParkReason::LoopStopped(Box::new(e)));
                    }
                }
            }
            .instrument(span),
        );
    }

    /// Reads an owned saga again from its log and runs it, retrying with
    /// backoff while the store cannot be read: after a write whose outcome
    /// is unknown. A saga whose log holds nothing (a start that did not
    /// land) is let go; one that cannot run is parked.
    pub(super) fn reload(&self, id: SagaId) {
        let engine = self.background();
        self.inner.tracker.spawn(async move {
            let mut wait = std::time::Duration::from_millis(50);
            loop {
                if engine.inner.stopping.is_cancelled() {
                    lock(&engine.inner.running).remove(&id);
                    return engine.inner.notify_waiters(id, Err(Error::shutting_down(id)));
                }
                match engine.load_state(id).await {
                    Ok(state) => return engine.run_or_park(id, engine.prepare_state(id, state)),
                    Err(Error::NotFound(_)) => {
                        engine.inner.release_if_idle(id);
                        return engine.inner.notify_waiters(id, Err(Error::NotFound(id)));
                    }
                    Err(Error::Store(e)) => {
                        tracing::warn!(saga_id = %id, error = %e, "cannot read the saga again yet; retrying");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(std::time::Duration::from_secs(5));
                    }
                    Err(e) => return engine.park(id, ParkReason::Unreadable(Box::new(e))),
                }
            }
        });
    }

    /// A timer fell due: run the saga's loop, unless some task owns the saga
    /// or the timer is stale (the saga moved on since it was set). The saga
    /// is claimed now and read from the log in a task of its own, so that
    /// the delay queue never waits for the store.
    pub(super) fn wake(&self, key: TimerKey) {
        if !self.claim(key.saga) {
            // Some task owns the saga (a loop, an operator action). If that
            // task leaves the timer in place (a refused action), nothing else
            // would look at it again: try once more in a second. A stale
            // retry is recognised by its sequence number and ignored.
            self.inner.delay_queue.insert(TimerKey {
                due: self.inner.clock.now().plus_millis(1_000),
                ..key
            });
            return;
        }
        let engine = self.background();
        self.inner.tracker.spawn(async move {
            let state = match engine.load_state(key.saga).await {
                Ok(state) => state,
                // The store cannot answer now (a database that is down):
                // the timer comes round again in a second; a saga that
                // commands reached meanwhile is read again with backoff.
                Err(Error::Store(e)) => {
                    tracing::warn!(saga_id = %key.saga, error = %e, "a timer fell due but the saga cannot be read yet; retrying");
                    if engine.inner.release_if_idle(key.saga) {
                        engine.inner.delay_queue.insert(TimerKey {
                            due: engine.inner.clock.now().plus_millis(1_000),
                            ..key
                        });
                    } else {
                        engine.reload(key.saga);
                    }
                    return;
                }
                Err(e) => return engine.park(key.saga, ParkReason::Unreadable(Box::new(e))),
            };
            let stale = state.timer.as_ref().map(|t| t.seq) != Some(key.seq);
            if stale && engine.inner.release_if_idle(key.saga) {
                return;
            }
            engine.run_or_park(key.saga, engine.prepare_state(key.saga, state));
        });
    }
}

/// What the callers waiting for a saga learn when this node lost it.
fn fenced(inner: &super::Inner) -> Result<crate::engine::view::Outcome, Error> {
    let node = inner.lease.as_ref().map(|l| l.node_id().to_string());
    Err(Error::Store(StoreError::Fenced {
        node: node.unwrap_or_default(),
        reason: "another node fenced this one, and the saga is that node's now".into(),
    }))
}

/// Whether a loop that stopped on `e` reads its saga again instead of
/// parking it: the outcome of its last write is unknown, or another writer
/// appended to it.
fn reloads(e: &Error) -> bool {
    matches!(
        e,
        Error::Store(
            crate::log::store::StoreError::Ambiguous(_)
                | crate::log::store::StoreError::Conflict { .. }
        )
    )
}

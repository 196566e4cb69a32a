//! Ownership: at most one task writes a saga's log at a time. Claiming a
//! saga, parking one that cannot run, and spawning its loop.

use super::read::load_state;
use super::run::LoopEnd;
use super::{Engine, SagaRun};
use crate::error::Error;
use crate::ids::SagaId;
use crate::log::store::TimerKey;
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
    pub(super) fn park(&self, id: SagaId, reason: String) {
        tracing::error!(saga_id = %id, %reason, "saga parked");
        lock(&self.inner.parked).insert(id, reason.clone());
        let pending = lock(&self.inner.running).remove(&id).unwrap_or_default();
        for (_, reply) in pending {
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
    pub(super) fn prepare(&self, id: SagaId) -> Result<SagaRun, String> {
        let state = self.load_state(id).map_err(|e| e.to_string())?;
        self.prepare_state(id, state)
    }

    /// Runs the loop of an owned saga that `prepare` made ready, or parks it
    /// with the reason it could not.
    pub(super) fn run_or_park(&self, id: SagaId, prepared: Result<SagaRun, String>) {
        match prepared {
            Ok(run) => self.spawn_owned(run),
            Err(reason) => self.park(id, reason),
        }
    }

    pub(super) fn prepare_state(&self, id: SagaId, state: SagaState) -> Result<SagaRun, String> {
        let definition = self.inner.registry.get(state.saga_type()).cloned().ok_or_else(|| {
            format!(
                "saga type '{}' is not registered; register its definition before opening the engine, then restart",
                state.saga_type()
            )
        })?;
        if definition.version() != state.started.version {
            return Err(format!(
                "saga type '{}' is registered at version {}, but this saga started under version {}; register a definition of version {} (under its own name) to finish it",
                state.saga_type(),
                definition.version(),
                state.started.version,
                state.started.version
            ));
        }
        if definition.step_names()[..] != state.plan().step_names()[..] {
            return Err(format!(
                "saga type '{}' version {} now has steps {:?}, but this saga's log has {:?}; bump the version when steps change",
                state.saga_type(),
                definition.version(),
                definition.step_names(),
                state.plan().step_names()
            ));
        }
        let input = definition.decode_input(&state.started.input).map_err(|e| {
            format!("the saga's input does not decode as the registered input type: {e}")
        })?;
        Ok(SagaRun {
            id,
            definition,
            input,
            state,
            pending_calls: Vec::new(),
            open: None,
        })
    }

    pub(super) fn load_state(&self, id: SagaId) -> Result<SagaState, Error> {
        load_state(&*self.inner.store, id)
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
                    // Boxed: the loop's future is over 2 KiB, and held
                    // inline it made this task's future as large, which
                    // tokio copies when it spawns the task, stores it and
                    // replaces it with its output (`.ci/ir-per-saga`:
                    // `memcpy` on the worker fell from 8.2k to 6.4k
                    // instructions per saga, the worker's total by about
                    // 0.7k of 50k, for one more allocation per saga).
                    Ok(_permit) => Box::pin(inner.drive(run)).await,
                    Err(_) => Err(Error::ShuttingDown(id)),
                };
                match result {
                    Ok(LoopEnd::Outcome(outcome)) => inner.notify_waiters(id, Ok(outcome)),
                    Ok(LoopEnd::Sleeping) => {}
                    Err(Error::ShuttingDown(_)) => {
                        lock(&inner.running).remove(&id);
                        inner.notify_waiters(id, Err(Error::ShuttingDown(id)));
                    }
                    Err(e) => {
                        // Visible as parked until the engine is reopened,
                        // which resumes the saga from its durable log.
                        tracing::error!(error = %e, "saga loop stopped; the saga resumes from its log at the next open");
                        let reason = format!("{e}; reopen the engine to resume this saga from its log");
                        inner.notify_waiters(id, Err(e));
                        engine.park(id, reason);
                    }
                }
            }
            .instrument(span),
        );
    }

    /// A timer fell due: run the saga's loop, unless some task owns the saga
    /// or the timer is stale (the saga moved on since it was set).
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
        let state = match self.load_state(key.saga) {
            Ok(state) => state,
            Err(e) => return self.park(key.saga, e.to_string()),
        };
        let stale = state.timer.as_ref().map(|t| t.seq) != Some(key.seq);
        if stale && self.inner.release_if_idle(key.saga) {
            return;
        }
        self.run_or_park(key.saga, self.prepare_state(key.saga, state));
    }
}

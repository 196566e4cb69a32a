//! Waiting for a saga to stop.

use super::run;
use super::view::Outcome;
use super::{Engine, Inner};
use crate::error::Error;
use crate::ids::SagaId;
use crate::status::SagaStatus;
use crate::sync::lock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, Notify};

/// How often [`Engine::outcome`] reads the log of a saga that no loop of
/// this node drives, on a log several nodes share.
pub(crate) const OUTCOME_POLL: Duration = Duration::from_millis(100);

impl Engine {
    /// Waits until saga `id` is terminal or stops for an operator, and
    /// returns how it ended. Returns at once for a saga that already has.
    /// A saga asleep on a timer (a backoff, a scheduled compensation) is
    /// waited for through its sleep.
    ///
    /// Errors: [`Error::NotFound`] for an unknown id, [`Error::Parked`] for a
    /// parked saga, [`Error::ShuttingDown`] if the engine stops first, or the
    /// store error that stopped the saga's loop.
    ///
    /// On a log several nodes share, the saga may run on another node: it
    /// is then followed by reading its log every 100 ms.
    pub async fn outcome(&self, id: SagaId) -> Result<Outcome, Error> {
        // Register before looking, so that a loop ending in between is not missed.
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.waiters).entry(id).or_default().push(tx);
        match self.outcome_at_once(id).await {
            Some(result) => {
                drop(rx);
                self.inner.forget_closed_waiters(id);
                result
            }
            None if self.inner.lease.is_none() => rx.await.unwrap_or(Err(Error::shutting_down(id))),
            None => self.outcome_on_any_node(id, rx).await,
        }
    }

    /// On a log several nodes share, saga `id` may be driven by another
    /// node (it was started there, or adopted): no loop here will report
    /// it, so its log is read again every [`OUTCOME_POLL`] until it stops,
    /// unless a loop here reports first.
    async fn outcome_on_any_node(
        &self,
        id: SagaId,
        mut rx: oneshot::Receiver<Result<Outcome, Error>>,
    ) -> Result<Outcome, Error> {
        let ticks = self.inner.ticker.get_or_init(Ticker::start).notify.clone();
        loop {
            let tick = ticks.notified();
            tokio::pin!(tick);
            tick.as_mut().enable();
            tokio::select! {
                reported = &mut rx => return reported.unwrap_or(Err(Error::shutting_down(id))),
                () = tick => {
                    if let Some(result) = self.outcome_at_once(id).await {
                        drop(rx);
                        self.inner.forget_closed_waiters(id);
                        return result;
                    }
                }
            }
        }
    }

    /// The outcome of saga `id` if it is known without waiting: the saga
    /// is parked, unknown, stopped, or reports at its TCC decision, or the
    /// engine is stopping. `None` while a loop drives it (or will).
    pub(super) async fn outcome_at_once(&self, id: SagaId) -> Option<Result<Outcome, Error>> {
        if let Some(reason) = lock(&self.inner.parked).get(&id) {
            return Some(Err(Error::Parked {
                saga: id,
                reason: reason.clone(),
            }));
        }
        if let Some(outcome) = lock(&self.inner.decided).get(&id) {
            return Some(Ok(outcome.clone()));
        }
        if lock(&self.inner.running).contains_key(&id) {
            return None;
        }
        let (view, state) = match self.view_and_state(id).await {
            Ok(found) => found,
            Err(e) => return Some(Err(e)),
        };
        if view.status.is_terminal() || view.status == SagaStatus::Suspended {
            return Some(Ok(view.outcome()));
        }
        if state.as_ref().is_some_and(run::reports_at_decision) {
            return Some(Ok(view.outcome()));
        }
        if self.inner.stopping.is_cancelled() {
            return Some(Err(Error::shutting_down(id)));
        }
        None
    }
}

/// A thread that wakes its waiters every [`OUTCOME_POLL`] of the real
/// clock, until it is dropped. Not a tokio timer: under a test's paused
/// clock, a timer firing while the runtime waits on the database would move
/// the engine's clock on.
pub(crate) struct Ticker {
    notify: Arc<Notify>,
    stop: Arc<AtomicBool>,
}

impl Ticker {
    fn start() -> Ticker {
        let (notify, stop) = (Arc::new(Notify::new()), Arc::new(AtomicBool::new(false)));
        let (wake, stopped) = (notify.clone(), stop.clone());
        let spawned = std::thread::Builder::new()
            .name("sagalog-outcome".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(OUTCOME_POLL);
                    wake.notify_waiters();
                }
            });
        if let Err(e) = spawned {
            // Waiters then hear only from this node's own loops.
            tracing::error!(error = %e, "could not start the thread that follows sagas other nodes run");
        }
        Ticker { notify, stop }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Inner {
    /// Tells everyone waiting for saga `id` how it stopped.
    pub(super) fn notify_waiters(&self, id: SagaId, result: Result<Outcome, Error>) {
        let Some(mut senders) = lock(&self.waiters).remove(&id) else {
            return;
        };
        let last = senders.pop();
        for tx in senders {
            let _ = tx.send(result.clone());
        }
        if let Some(tx) = last {
            let _ = tx.send(result);
        }
    }

    /// Drops the waiters of saga `id` that stopped waiting (a caller of
    /// `outcome` that got its answer at once), and the entry once empty.
    pub(super) fn forget_closed_waiters(&self, id: SagaId) {
        let mut waiters = lock(&self.waiters);
        if let Some(senders) = waiters.get_mut(&id) {
            senders.retain(|tx| !tx.is_closed());
            if senders.is_empty() {
                waiters.remove(&id);
            }
        }
    }
}

//! The delay queue's loop.

use super::{Clock, DelayQueue, WINDOW};
use crate::ids::SagaId;
use crate::log::store::{LogStore, TimerKey};
use std::collections::HashSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs the delay queue until `stopping` is cancelled.
///
/// Refills the window from `store` whenever it runs empty and the store may
/// hold more, leaving out the sagas in `owned()` (a task that owns a saga
/// handles its timer itself); hands every timer due by `clock` to `wake`;
/// then sleeps until the next timer is due or the window changes. A failed
/// read of the store is retried every second.
pub(crate) async fn run(
    queue: &DelayQueue,
    store: &dyn LogStore,
    clock: &Clock,
    stopping: &CancellationToken,
    owned: impl Fn() -> HashSet<SagaId>,
    wake: impl Fn(TimerKey),
) {
    loop {
        if stopping.is_cancelled() {
            return;
        }
        if queue.needs_refill() {
            let owned = owned();
            match store.scan_timers(WINDOW, &owned).await {
                Ok((timers, complete)) => {
                    queue.refill(timers.into_iter().map(|(key, _)| key).collect(), complete)
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not read the delay queue; retrying in 1 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stopping.cancelled() => return,
                    }
                    continue;
                }
            }
        }
        for key in queue.pop_due(clock.now()) {
            wake(key);
        }
        if queue.needs_refill() {
            continue;
        }
        // No timer when nothing is due: an idle queue must not hold a
        // pending sleep (it would also make tokio's paused clock jump).
        let next = queue.next_due();
        let sleep = async {
            match next {
                Some(due) => {
                    let wait = due.0.saturating_sub(clock.now().0);
                    tokio::time::sleep(Duration::from_millis(wait)).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            _ = queue.changed() => {}
            _ = stopping.cancelled() => return,
        }
    }
}

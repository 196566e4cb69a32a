//! The in-memory window of the delay queue. Only the earliest
//! [`WINDOW`] timers are held in memory, so a million sleeping sagas cost
//! disk, not RAM.
//!
//! The window is *complete* when it holds every timer in the store. A new
//! timer enters the window if the window is complete or the timer is due
//! before the window's last; when that pushes the window over its size, the
//! last entry is dropped and the window becomes incomplete. When an
//! incomplete window runs empty it is refilled from the store.

use crate::ids::UnixMillis;
use crate::log::store::TimerKey;
use std::collections::BTreeSet;
use std::sync::Mutex;
use tokio::sync::Notify;

/// Most timers held in memory.
pub(crate) const WINDOW: usize = 1024;

struct Window {
    timers: BTreeSet<TimerKey>,
    complete: bool,
}

/// The in-memory front of the delay queue. The engine runs its loop.
pub(crate) struct DelayQueue {
    window: Mutex<Window>,
    changed: Notify,
}

impl DelayQueue {
    /// An empty, incomplete window: the first pass fills it from the store.
    pub(crate) fn new() -> Self {
        DelayQueue {
            window: Mutex::new(Window {
                timers: BTreeSet::new(),
                complete: false,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        crate::sync::lock(&self.window)
    }

    /// Adds a timer that was just made durable, and wakes the queue's loop.
    pub(crate) fn insert(&self, key: TimerKey) {
        {
            let mut window = self.lock();
            let below_last = window.timers.last().is_none_or(|last| key < *last);
            if window.complete || window.timers.len() < WINDOW || below_last {
                window.timers.insert(key);
                if window.timers.len() > WINDOW {
                    window.timers.pop_last();
                    window.complete = false;
                }
            }
        }
        self.changed.notify_one();
    }

    /// Merges timers read from the store (in due order) into the window.
    pub(crate) fn refill(&self, timers: Vec<TimerKey>, complete: bool) {
        let mut window = self.lock();
        window.timers.extend(timers);
        window.complete = complete;
        while window.timers.len() > WINDOW {
            window.timers.pop_last();
            window.complete = false;
        }
    }

    /// Removes and returns every timer due at `now`.
    pub(crate) fn pop_due(&self, now: UnixMillis) -> Vec<TimerKey> {
        let mut window = self.lock();
        let mut due = Vec::new();
        while window.timers.first().is_some_and(|first| first.due <= now) {
            if let Some(first) = window.timers.pop_first() {
                due.push(first);
            }
        }
        due
    }

    /// When the earliest timer in the window falls due; `None` if the
    /// window is empty.
    pub(crate) fn next_due(&self) -> Option<UnixMillis> {
        self.lock().timers.first().map(|k| k.due)
    }

    /// True when the window is empty but the store may hold more timers.
    pub(crate) fn needs_refill(&self) -> bool {
        let window = self.lock();
        window.timers.is_empty() && !window.complete
    }

    /// Resolves when a timer was inserted since the last call.
    pub(crate) async fn changed(&self) {
        self.changed.notified().await
    }

    /// Timers currently in memory.
    #[cfg(test)]
    pub(crate) fn in_memory(&self) -> usize {
        self.lock().timers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SagaId;

    fn key(due: u64) -> TimerKey {
        TimerKey {
            due: UnixMillis(due),
            saga: SagaId::new(),
            seq: 1,
        }
    }

    #[test]
    fn window_keeps_only_the_earliest_timers() {
        let queue = DelayQueue::new();
        queue.refill(Vec::new(), true);
        for due in (0..(WINDOW as u64 + 10)).rev() {
            queue.insert(key(due));
        }
        assert_eq!(queue.in_memory(), WINDOW);
        assert_eq!(queue.next_due(), Some(UnixMillis(0)));
        let due = queue.pop_due(UnixMillis(u64::MAX));
        assert_eq!(due.len(), WINDOW);
        assert!(queue.needs_refill(), "timers were dropped from the window");
    }

    #[test]
    fn only_due_timers_are_popped() {
        let queue = DelayQueue::new();
        queue.refill(vec![key(10), key(20)], true);
        assert_eq!(queue.pop_due(UnixMillis(9)).len(), 0);
        assert_eq!(queue.pop_due(UnixMillis(10)).len(), 1);
        assert_eq!(queue.next_due(), Some(UnixMillis(20)));
        assert!(!queue.needs_refill());
    }
}

//! The one way this crate takes a `std::sync::Mutex`.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, using the data even if a thread panicked while holding it.
///
/// Every critical section in this crate is a single operation on the guarded
/// value (one map or set insert/remove/take, one field assignment), so a
/// panic cannot leave it half-updated: poisoning carries no meaning here.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

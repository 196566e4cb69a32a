//! The engine's clock.

use crate::ids::UnixMillis;

/// Wall clock as seen through tokio's clock, so that tests with paused
/// time control it too.
pub(crate) struct Clock {
    base_millis: u64,
    base: tokio::time::Instant,
}

impl Clock {
    /// A clock that reads `start` now (the system clock if `None`) and
    /// advances with tokio's clock.
    pub(crate) fn new(start: Option<UnixMillis>) -> Self {
        let base_millis = start.unwrap_or_else(UnixMillis::now).0;
        Clock {
            base_millis,
            base: tokio::time::Instant::now(),
        }
    }

    /// The time now.
    pub(crate) fn now(&self) -> UnixMillis {
        UnixMillis(self.base_millis + self.base.elapsed().as_millis() as u64)
    }
}

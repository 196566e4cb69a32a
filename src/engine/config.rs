//! How an engine is configured: limits, hooks for tests and tracing, and
//! the retention policy.

use super::retention::Retention;
use crate::ids::{SagaId, UnixMillis};
use crate::log::store::SledOptions;
use crate::log::writer::DurableHook;
use std::sync::Arc;
use std::time::Duration;

/// Where a participant call stands when [`CallHook`] is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallPoint {
    /// The intent is durable; the participant has not been called.
    BeforeCall,
    /// The participant returned; its result is not yet durable.
    AfterCall,
}

/// Called around every participant call with the point and the running
/// number of calls this engine has made (1, 2, ...). A test hook: crash
/// tests abort the process here to cover the moments between a call and the
/// appends around it. Runs on the saga's task: keep it short.
pub type CallHook = Arc<dyn Fn(CallPoint, u64) + Send + Sync>;

/// Called when a saga is suspended for an operator, with its id and the
/// reason, after the suspension is durable. Runs on the saga's task: keep
/// it short (send an alert, bump a metric).
pub type SuspendHook = Arc<dyn Fn(SagaId, &str) + Send + Sync>;

/// Engine settings.
#[derive(Clone)]
pub struct EngineConfig {
    /// Most sagas whose loops run at once. `start` waits for a free slot
    /// before writing a new saga (backpressure: memory stays bounded however
    /// fast callers start sagas); recovered and woken sagas wait for one in
    /// the background. Default 1024. A participant that starts another saga
    /// and waits for it must leave slots for it.
    pub max_running_sagas: usize,
    /// Settings for the sled store opened by [`Engine::open`](crate::Engine::open).
    pub sled: SledOptions,
    /// Called after every durable append, before it is acknowledged; see
    /// [`DurableHook`]. Meant for crash tests and metrics.
    pub after_durable_append: Option<DurableHook>,
    /// Called whenever a saga is suspended for an operator; see [`SuspendHook`].
    pub on_suspend: Option<SuspendHook>,
    /// Called around every participant call; see [`CallHook`]. For crash tests.
    pub around_call: Option<CallHook>,
    /// The wall-clock time the engine assumes when it opens; `None` (the
    /// default) reads the system clock. From there the engine's clock
    /// advances with tokio's clock, so tests can pause time, and can
    /// simulate downtime by opening a second engine at a later start time.
    pub start_time: Option<UnixMillis>,
    /// Deleting finished sagas after a while; `None` keeps them forever.
    /// Default: [`Retention::default`] (7 days, swept hourly).
    pub retention: Option<Retention>,
    /// How long a new saga may run before it gets an entry in the active
    /// index. Most sagas finish sooner and never get one, which saves two
    /// writes each; the price is that recovery also reads the logs of the
    /// sagas started in the last `index_lag` before a crash. Default 500 ms;
    /// zero writes the entry with the start record. Correctness does not
    /// depend on it (DESIGN.md §4.2).
    pub index_lag: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_running_sagas: 1024,
            sled: SledOptions::default(),
            after_durable_append: None,
            on_suspend: None,
            around_call: None,
            start_time: None,
            retention: Some(Retention::default()),
            index_lag: Duration::from_millis(500),
        }
    }
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("max_running_sagas", &self.max_running_sagas)
            .field("sled", &self.sled)
            .field("after_durable_append", &self.after_durable_append.is_some())
            .field("on_suspend", &self.on_suspend.is_some())
            .field("around_call", &self.around_call.is_some())
            .field("start_time", &self.start_time)
            .field("retention", &self.retention)
            .field("index_lag", &self.index_lag)
            .finish()
    }
}

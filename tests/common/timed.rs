//! Helpers for tests that run on a fixed clock: engines opened at a given
//! time over a memory store, sagas started with a strategy.

use super::*;
use sagalog::{CompensationStrategy, RetryPolicy, SagaId, UnixMillis};

pub const T0: u64 = 1_800_000_000_000;

pub fn config_at(start: u64) -> EngineConfig {
    EngineConfig {
        start_time: Some(UnixMillis(start)),
        ..EngineConfig::default()
    }
}

pub async fn open(store: &Arc<MemStore>, registry: Registry, start: u64) -> Engine {
    Engine::open_with_store(engine_store(store).await, registry, config_at(start))
        .await
        .expect("engine opens")
}

pub async fn start(
    engine: &Engine,
    trip: &sagalog::SagaRef<String>,
    strategy: CompensationStrategy,
) -> SagaId {
    engine
        .start(
            trip,
            &"ada".to_string(),
            StartOptions::new().strategy(strategy),
        )
        .await
        .expect("saga starts")
        .saga_id
}

/// Yields (without letting paused time advance) until the saga sleeps on a timer.
pub async fn until_sleeping(engine: &Engine, id: SagaId) -> sagalog::DelayedItem {
    loop {
        if let Some(item) = engine
            .delay_queue(100)
            .await
            .unwrap()
            .into_iter()
            .find(|i| i.saga_id == id)
        {
            return item;
        }
        tokio::task::yield_now().await;
    }
}

pub const DAY: u64 = 86_400_000;

pub fn retrying(max_attempts: u32, initial_interval_ms: u64) -> CompensationStrategy {
    CompensationStrategy::RetryThenCompensate {
        policy: RetryPolicy {
            max_attempts,
            initial_interval_ms,
            max_interval_ms: 60_000,
            ..RetryPolicy::forward_default()
        },
    }
}

/// The trip saga (rerun in-doubt steps) over `store`, opened at `start`,
/// its participants following `script`.
pub async fn trip_at(
    store: &Arc<MemStore>,
    script: &Script,
    start: u64,
) -> (Engine, sagalog::SagaRef<String>) {
    let (registry, trip) = trip_registry(script, InDoubtPolicy::Rerun);
    (open(store, registry, start).await, trip)
}

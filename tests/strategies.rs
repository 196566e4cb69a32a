//! Compensation strategies end to end, across restarts: scheduled (durable
//! delay queue), manual (operator queue), retry-then-compensate, a step's
//! own strategy. Timing runs on tokio's paused clock. Operator actions are
//! in `operator_actions.rs`, retries and escalation in `retries.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

mod common;

use common::timed::{open, retrying, start, trip_at, until_sleeping, DAY, T0};

use common::{outcome_of, start_saga, status_of, Script, TRIP_UNDONE};
use sagalog::{
    CompensationStrategy, MemStore, Phase, Registry, RetryPolicy, SagaDefinition, SagaStatus,
    StepError, StepOptions, WaitPurpose,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Starts a trip whose car is sold out under a scheduled compensation of
/// `delay_ms`: the engine, the script and the saga.
async fn sold_out_then_scheduled(
    store: &Arc<MemStore>,
    delay_ms: u64,
) -> (sagalog::Engine, Script, sagalog::SagaId) {
    let script = Script::failing("car", Phase::Action, StepError::permanent("sold out"));
    let (engine, trip) = trip_at(store, &script, T0).await;
    let id = start(&engine, &trip, CompensationStrategy::Scheduled { delay_ms }).await;
    (engine, script, id)
}

#[tokio::test(start_paused = true)]
async fn scheduled_compensation_runs_at_its_due_time_and_never_before() {
    let store = Arc::new(MemStore::new());
    let (engine, script, id) = sold_out_then_scheduled(&store, 60_000).await;
    let waiting = until_sleeping(&engine, id).await;

    assert_eq!(
        waiting.purpose,
        Some(WaitPurpose::ScheduledCompensation { step: 2 })
    );
    assert_eq!(
        engine.saga(id).await.unwrap().status,
        SagaStatus::Compensating
    );
    assert!(!script.calls().iter().any(|c| c.contains("compensation")));
    let outcome = outcome_of(&engine, id).await;
    assert_eq!(outcome.status, SagaStatus::Compensated);
    let failed = script.time_of("car:action:1").unwrap();
    let compensated = script.time_of("hotel:compensation:1").unwrap();
    assert!(
        compensated - failed >= Duration::from_secs(60),
        "{:?}",
        compensated - failed
    );
}

#[tokio::test(start_paused = true)]
async fn scheduled_item_that_fell_due_during_downtime_runs_right_after_recovery() {
    let store = Arc::new(MemStore::new());
    let (engine, _, id) = sold_out_then_scheduled(&store, 60_000).await;
    let waiting = until_sleeping(&engine, id).await;
    engine.shutdown(Duration::ZERO).await;

    // The process is down for a day; the item fell due meanwhile.
    let script = Script::default();
    let (engine, _) = trip_at(&store, &script, waiting.due.0 + DAY).await;
    let reopened = tokio::time::Instant::now();
    let outcome = outcome_of(&engine, id).await;

    assert_eq!(outcome.status, SagaStatus::Compensated);
    assert_eq!(script.calls(), TRIP_UNDONE);
    let ran = script.time_of("hotel:compensation:1").unwrap();
    assert!(
        ran - reopened < Duration::from_secs(60),
        "ran without a second delay"
    );
}

#[tokio::test(start_paused = true)]
async fn saga_asleep_on_a_timer_is_not_loaded_at_recovery_until_due() {
    let store = Arc::new(MemStore::new());
    let (engine, _, id) = sold_out_then_scheduled(&store, DAY).await;
    let waiting = until_sleeping(&engine, id).await;
    engine.shutdown(Duration::ZERO).await;

    let script = Script::default();
    let (engine, _) = trip_at(&store, &script, T0 + 1_000).await;
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }

    assert!(script.calls().is_empty(), "nothing ran before the due time");
    assert_eq!(engine.delay_queue(10).await.unwrap()[0].due, waiting.due);
    assert_eq!(status_of(&engine, id).await, SagaStatus::Compensated);
}

#[tokio::test]
async fn manual_queue_survives_a_restart_and_is_resolved_after_it() {
    let store = Arc::new(MemStore::new());
    let script = Script::failing("car", Phase::Action, StepError::permanent("sold out"));
    let (engine, trip) = trip_at(&store, &script, T0).await;
    let id = start(&engine, &trip, CompensationStrategy::Manual).await;
    assert_eq!(status_of(&engine, id).await, SagaStatus::Suspended);
    assert!(
        !script.calls().iter().any(|c| c.contains("compensation")),
        "nothing compensated automatically"
    );
    engine.shutdown(Duration::ZERO).await;

    let script = Script::default();
    let (engine, _) = trip_at(&store, &script, T0 + 1_000).await;
    let queue = engine.manual_queue().await.unwrap();
    assert_eq!(queue.len(), 1);
    assert_eq!(queue[0].saga_id, id);
    let (step, failure) = queue[0].failed_step.clone().unwrap();
    assert_eq!(
        (step.as_str(), failure.message.as_str()),
        ("car", "sold out")
    );
    assert_eq!(queue[0].to_compensate, ["hotel", "flight"]);

    engine
        .compensate_now(id, "alice", "customer cancelled")
        .await
        .unwrap();
    let outcome = outcome_of(&engine, id).await;

    assert_eq!(outcome.status, SagaStatus::Compensated);
    assert_eq!(script.calls(), TRIP_UNDONE);
    assert!(engine.manual_queue().await.unwrap().is_empty());
    let actions: Vec<_> = engine
        .history(id)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.record {
            Ok((_, sagalog::Record::OperatorAction(a))) => Some(a),
            _ => None,
        })
        .collect();
    assert_eq!(actions.len(), 1);
    assert_eq!(
        (actions[0].actor.as_str(), actions[0].reason.as_str()),
        ("alice", "customer cancelled")
    );
}

#[tokio::test(start_paused = true)]
async fn retry_then_compensate_retries_the_step_then_compensates() {
    let script = Script::failing(
        "car",
        Phase::Action,
        StepError::retryable("rental api down"),
    );
    let (engine, trip) = trip_at(&Arc::new(MemStore::new()), &script, T0).await;

    let id = start(&engine, &trip, retrying(4, 1_000)).await;
    let outcome = outcome_of(&engine, id).await;

    assert_eq!(outcome.status, SagaStatus::Compensated);
    assert_eq!(
        script.calls()[2..],
        [
            "car:action:1",
            "car:action:2",
            "car:action:3",
            "car:action:4",
            "hotel:compensation:1",
            "flight:compensation:1"
        ]
    );
    let first = script.time_of("car:action:1").unwrap();
    let last = script.time_of("car:action:4").unwrap();
    assert!(
        last - first >= Duration::from_millis(1_000 + 2_000 + 4_000),
        "backoff doubles"
    );
}

#[tokio::test]
async fn a_steps_own_strategy_overrides_the_sagas() {
    let script = Script::default();
    let (s1, s2) = (script.clone(), script.clone());
    let mut registry = Registry::new();
    let saga = registry
        .register(
            SagaDefinition::<String>::builder("one")
                .strategy(CompensationStrategy::Immediate)
                .step_with(
                    "charge",
                    StepOptions::new().strategy(CompensationStrategy::Manual),
                    move |ctx| {
                        let s = s1.clone();
                        async move {
                            s.perform_public(&ctx).await?;
                            Err::<(), _>(StepError::permanent("card declined"))
                        }
                    },
                    move |ctx| {
                        let s = s2.clone();
                        async move { s.perform_public(&ctx).await }
                    },
                )
                .build()
                .unwrap(),
        )
        .unwrap();
    let engine = open(&Arc::new(MemStore::new()), registry, T0).await;

    let id = start_saga(&engine, &saga, &"x".to_string()).await;

    assert_eq!(status_of(&engine, id).await, SagaStatus::Suspended);
}

#[tokio::test(start_paused = true)]
async fn more_sleeping_sagas_than_the_in_memory_window_all_wake() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let mut registry = Registry::new();
    let saga = registry
        .register(
            SagaDefinition::<u64>::builder("sleepy")
                .step(
                    "work",
                    move |ctx| {
                        let counter = counter.clone();
                        async move {
                            counter.fetch_add(1, Ordering::SeqCst);
                            if ctx.attempt() == 1 {
                                return Err::<(), _>(StepError::retryable("not yet"));
                            }
                            Ok(())
                        }
                    },
                    |_ctx| async { Ok(()) },
                )
                .retry(RetryPolicy {
                    max_attempts: 2,
                    initial_interval_ms: 3_600_000,
                    max_interval_ms: 3_600_000,
                    ..RetryPolicy::forward_default()
                })
                .build()
                .unwrap(),
        )
        .unwrap();
    let engine = open(&Arc::new(MemStore::new()), registry, T0).await;
    let count = 3 * 1024; // three times the delay queue's in-memory window
    let mut ids = Vec::new();
    for i in 0..count as u64 {
        ids.push(start_saga(&engine, &saga, &i).await);
    }
    for id in &ids {
        assert_eq!(
            engine.outcome(*id).await.unwrap().status,
            SagaStatus::Committed
        );
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2 * count,
        "each saga failed once, slept, and ran again"
    );
    assert!(engine.delay_queue(10).await.unwrap().is_empty());
}

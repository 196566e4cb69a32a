//! Compensation strategies end to end, across restarts: scheduled (durable
//! delay queue), manual (operator queue), retry-then-compensate; retry
//! policies and timeouts; escalation, post-commit compensation, cancel.
//! Timing runs on tokio's paused clock.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

mod common;

use common::{outcome_of, start_saga, status_of, trip_registry, Behaviour, Script};
use sagalog::{
    CompensationStrategy, Engine, EngineConfig, Error, InDoubtPolicy, MemStore, Phase, Registry,
    RetryPolicy, SagaDefinition, SagaId, SagaStatus, StartOptions, StepError, StepOptions,
    UnixMillis, WaitPurpose,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T0: u64 = 1_800_000_000_000;

fn config_at(start: u64) -> EngineConfig {
    EngineConfig {
        start_time: Some(UnixMillis(start)),
        ..EngineConfig::default()
    }
}

async fn open(store: &Arc<MemStore>, registry: Registry, start: u64) -> Engine {
    Engine::open_with_store(store.clone(), registry, config_at(start))
        .await
        .expect("engine opens")
}

async fn start(
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
async fn until_sleeping(engine: &Engine, id: SagaId) -> sagalog::DelayedItem {
    loop {
        if let Some(item) = engine
            .delay_queue(100)
            .unwrap()
            .into_iter()
            .find(|i| i.saga_id == id)
        {
            return item;
        }
        tokio::task::yield_now().await;
    }
}

const DAY: u64 = 86_400_000;

#[tokio::test(start_paused = true)]
async fn scheduled_compensation_runs_at_its_due_time_and_never_before() {
    let script = Script::default();
    script.set(
        "car",
        Phase::Action,
        Behaviour::Fail(StepError::permanent("sold out")),
    );
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open(&Arc::new(MemStore::new()), registry, T0).await;

    let id = start(
        &engine,
        &trip,
        CompensationStrategy::Scheduled { delay_ms: 60_000 },
    )
    .await;
    let waiting = until_sleeping(&engine, id).await;

    assert_eq!(
        waiting.purpose,
        Some(WaitPurpose::ScheduledCompensation { step: 2 })
    );
    assert_eq!(engine.saga(id).unwrap().status, SagaStatus::Compensating);
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
    let script = Script::default();
    script.set(
        "car",
        Phase::Action,
        Behaviour::Fail(StepError::permanent("sold out")),
    );
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open(&store, registry, T0).await;
    let id = start(
        &engine,
        &trip,
        CompensationStrategy::Scheduled { delay_ms: 60_000 },
    )
    .await;
    let waiting = until_sleeping(&engine, id).await;
    engine.shutdown(Duration::ZERO).await;

    // The process is down for a day; the item fell due meanwhile.
    let script = Script::default();
    let (registry, _) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open(&store, registry, waiting.due.0 + DAY).await;
    let reopened = tokio::time::Instant::now();
    let outcome = outcome_of(&engine, id).await;

    assert_eq!(outcome.status, SagaStatus::Compensated);
    assert_eq!(
        script.calls(),
        ["hotel:compensation:1", "flight:compensation:1"]
    );
    let ran = script.time_of("hotel:compensation:1").unwrap();
    assert!(
        ran - reopened < Duration::from_secs(60),
        "ran without a second delay"
    );
}

#[tokio::test(start_paused = true)]
async fn saga_asleep_on_a_timer_is_not_loaded_at_recovery_until_due() {
    let store = Arc::new(MemStore::new());
    let script = Script::default();
    script.set(
        "car",
        Phase::Action,
        Behaviour::Fail(StepError::permanent("sold out")),
    );
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open(&store, registry, T0).await;
    let id = start(
        &engine,
        &trip,
        CompensationStrategy::Scheduled { delay_ms: DAY },
    )
    .await;
    let waiting = until_sleeping(&engine, id).await;
    engine.shutdown(Duration::ZERO).await;

    let script = Script::default();
    let (registry, _) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open(&store, registry, T0 + 1_000).await;
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }

    assert!(script.calls().is_empty(), "nothing ran before the due time");
    assert_eq!(engine.delay_queue(10).unwrap()[0].due, waiting.due);
    assert_eq!(status_of(&engine, id).await, SagaStatus::Compensated);
}

#[tokio::test]
async fn manual_queue_survives_a_restart_and_is_resolved_after_it() {
    let store = Arc::new(MemStore::new());
    let script = Script::default();
    script.set(
        "car",
        Phase::Action,
        Behaviour::Fail(StepError::permanent("sold out")),
    );
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open(&store, registry, T0).await;
    let id = start(&engine, &trip, CompensationStrategy::Manual).await;
    assert_eq!(status_of(&engine, id).await, SagaStatus::Suspended);
    assert!(
        !script.calls().iter().any(|c| c.contains("compensation")),
        "nothing compensated automatically"
    );
    engine.shutdown(Duration::ZERO).await;

    let script = Script::default();
    let (registry, _) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open(&store, registry, T0 + 1_000).await;
    let queue = engine.manual_queue().unwrap();
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
    assert_eq!(
        script.calls(),
        ["hotel:compensation:1", "flight:compensation:1"]
    );
    assert!(engine.manual_queue().unwrap().is_empty());
    let actions: Vec<_> = engine
        .history(id)
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

#[tokio::test]
async fn steps_marked_compensated_by_hand_are_not_called() {
    let script = Script::default();
    script.set(
        "car",
        Phase::Action,
        Behaviour::Fail(StepError::permanent("sold out")),
    );
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open(&Arc::new(MemStore::new()), registry, T0).await;
    let id = start(&engine, &trip, CompensationStrategy::Manual).await;
    outcome_of(&engine, id).await;

    engine
        .mark_compensated(id, "hotel", "bob", "cancelled by phone")
        .await
        .unwrap();
    let after_one = outcome_of(&engine, id).await;
    assert_eq!(
        after_one.status,
        SagaStatus::Suspended,
        "flight is still to compensate"
    );
    assert_eq!(engine.manual_queue().unwrap()[0].to_compensate, ["flight"]);
    engine
        .mark_compensated(id, "flight", "bob", "refunded by hand")
        .await
        .unwrap();
    let outcome = outcome_of(&engine, id).await;

    assert_eq!(outcome.status, SagaStatus::Compensated);
    assert!(!script.calls().iter().any(|c| c.contains("compensation")));
}

#[tokio::test]
async fn operator_retry_runs_a_permanently_failed_step_again() {
    let script = Script::default();
    script.set(
        "car",
        Phase::Action,
        Behaviour::FailTimes(1, StepError::permanent("garage closed")),
    );
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open(&Arc::new(MemStore::new()), registry, T0).await;
    let id = start(&engine, &trip, CompensationStrategy::Manual).await;
    outcome_of(&engine, id).await;

    engine
        .retry_step(id, "carol", "garage reopened")
        .await
        .unwrap();
    let outcome = outcome_of(&engine, id).await;

    assert_eq!(outcome.status, SagaStatus::Committed);
    assert_eq!(script.calls()[2..], ["car:action:1", "car:action:2"]);
}

#[tokio::test]
async fn abandoned_saga_ends_failed_without_compensating() {
    let script = Script::default();
    script.set(
        "car",
        Phase::Action,
        Behaviour::Fail(StepError::permanent("sold out")),
    );
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open(&Arc::new(MemStore::new()), registry, T0).await;
    let id = start(&engine, &trip, CompensationStrategy::Manual).await;
    outcome_of(&engine, id).await;

    engine.abandon(id, "dave", "written off").await.unwrap();
    let outcome = outcome_of(&engine, id).await;

    assert_eq!(outcome.status, SagaStatus::Failed);
    assert!(!script.calls().iter().any(|c| c.contains("compensation")));
    assert_eq!(engine.list(Some(SagaStatus::Failed)).unwrap().len(), 1);
}

#[tokio::test]
async fn operator_action_that_makes_no_sense_is_refused_and_changes_nothing() {
    let script = Script::default();
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open(&Arc::new(MemStore::new()), registry, T0).await;
    let id = start(&engine, &trip, CompensationStrategy::Immediate).await;
    outcome_of(&engine, id).await;
    let records = engine.history(id).unwrap().len();

    let result = engine.retry_step(id, "eve", "why not").await;

    assert!(matches!(result, Err(Error::Illegal { .. })), "{result:?}");
    assert_eq!(engine.history(id).unwrap().len(), records);
}

fn retrying(max_attempts: u32, initial_interval_ms: u64) -> CompensationStrategy {
    CompensationStrategy::RetryThenCompensate {
        policy: RetryPolicy {
            max_attempts,
            initial_interval_ms,
            max_interval_ms: 60_000,
            ..RetryPolicy::forward_default()
        },
    }
}

#[tokio::test(start_paused = true)]
async fn retry_then_compensate_retries_the_step_then_compensates() {
    let script = Script::default();
    script.set(
        "car",
        Phase::Action,
        Behaviour::Fail(StepError::retryable("rental api down")),
    );
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open(&Arc::new(MemStore::new()), registry, T0).await;

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

#[tokio::test(start_paused = true)]
async fn retry_count_survives_a_crash_mid_backoff() {
    let store = Arc::new(MemStore::new());
    let script = Script::default();
    script.set(
        "hotel",
        Phase::Action,
        Behaviour::Fail(StepError::retryable("busy")),
    );
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open(&store, registry, T0).await;
    let id = start(&engine, &trip, retrying(3, 10_000)).await;
    let waiting = until_sleeping(&engine, id).await;
    assert_eq!(
        waiting.purpose,
        Some(WaitPurpose::RetryBackoff {
            step: 1,
            attempt: 2
        })
    );
    engine.shutdown(Duration::ZERO).await;

    let script = Script::default();
    script.set(
        "hotel",
        Phase::Action,
        Behaviour::Fail(StepError::retryable("busy")),
    );
    let (registry, _) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open(&store, registry, T0 + 5_000).await;
    let outcome = outcome_of(&engine, id).await;

    assert_eq!(outcome.status, SagaStatus::Compensated);
    assert_eq!(
        script.calls(),
        ["hotel:action:2", "hotel:action:3", "flight:compensation:1"]
    );
}

#[tokio::test]
async fn permanent_error_skips_retries() {
    let script = Script::default();
    script.set(
        "car",
        Phase::Action,
        Behaviour::Fail(StepError::permanent("invalid licence")),
    );
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open(&Arc::new(MemStore::new()), registry, T0).await;

    let id = start(&engine, &trip, retrying(5, 10)).await;
    outcome_of(&engine, id).await;

    assert_eq!(
        script
            .calls()
            .iter()
            .filter(|c| c.starts_with("car:action"))
            .count(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn retry_deadline_ends_retries_before_the_attempt_limit() {
    let script = Script::default();
    script.set(
        "car",
        Phase::Action,
        Behaviour::Fail(StepError::retryable("busy")),
    );
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open(&Arc::new(MemStore::new()), registry, T0).await;
    let strategy = CompensationStrategy::RetryThenCompensate {
        policy: RetryPolicy {
            max_attempts: 10,
            initial_interval_ms: 1_000,
            max_interval_ms: 60_000,
            deadline_ms: Some(5_000),
            ..RetryPolicy::forward_default()
        },
    };

    let id = start(&engine, &trip, strategy).await;
    outcome_of(&engine, id).await;

    // Attempts at 0 s, 1 s and 3 s; the next would start at 7 s, past the deadline.
    assert_eq!(
        script
            .calls()
            .iter()
            .filter(|c| c.starts_with("car:action"))
            .count(),
        3
    );
}

#[tokio::test(start_paused = true)]
async fn timed_out_call_is_in_doubt_and_compensated() {
    let script = Script::default();
    script.set("b", Phase::Action, Behaviour::Hang);
    let mut registry = Registry::new();
    let (s1, s2, s3, s4) = (
        script.clone(),
        script.clone(),
        script.clone(),
        script.clone(),
    );
    let saga = registry
        .register(
            SagaDefinition::<String>::builder("two")
                .step(
                    "a",
                    move |ctx| {
                        let s = s1.clone();
                        async move { s.perform_public(&ctx).await }
                    },
                    move |ctx| {
                        let s = s2.clone();
                        async move { s.perform_public(&ctx).await }
                    },
                )
                .step_with(
                    "b",
                    StepOptions::new()
                        .timeout(Duration::from_secs(1))
                        .retry(RetryPolicy::no_retry()),
                    move |ctx| {
                        let s = s3.clone();
                        async move { s.perform_public(&ctx).await }
                    },
                    move |ctx| {
                        let s = s4.clone();
                        async move { s.perform_public(&ctx).await }
                    },
                )
                .build()
                .unwrap(),
        )
        .unwrap();
    let engine = open(&Arc::new(MemStore::new()), registry, T0).await;

    let id = start_saga(&engine, &saga, &"x".to_string()).await;
    let outcome = outcome_of(&engine, id).await;

    assert_eq!(outcome.status, SagaStatus::Compensated);
    assert_eq!(
        outcome.failure.unwrap().1.class,
        sagalog::ErrorClass::Unknown
    );
    assert_eq!(
        script.calls(),
        [
            "a:action:1",
            "b:action:1",
            "b:compensation:1",
            "a:compensation:1"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn compensation_that_keeps_failing_escalates_with_an_alert() {
    let alerts = Arc::new(Mutex::new(Vec::new()));
    let seen = alerts.clone();
    let script = Script::default();
    script.set(
        "car",
        Phase::Action,
        Behaviour::Fail(StepError::permanent("sold out")),
    );
    script.set(
        "hotel",
        Phase::Compensation,
        Behaviour::Fail(StepError::retryable("hotel api down")),
    );
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let config = EngineConfig {
        on_suspend: Some(Arc::new(move |id, reason: &str| {
            seen.lock().unwrap().push((id, reason.to_string()))
        })),
        ..config_at(T0)
    };
    let engine = Engine::open_with_store(Arc::new(MemStore::new()), registry, config)
        .await
        .unwrap();

    let id = start(&engine, &trip, CompensationStrategy::Immediate).await;
    let outcome = outcome_of(&engine, id).await;

    assert_eq!(outcome.status, SagaStatus::Suspended);
    let alerts = alerts.lock().unwrap().clone();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].0, id);
    assert!(
        alerts[0].1.contains("'hotel' failed 3 times"),
        "{}",
        alerts[0].1
    );
    assert_eq!(engine.manual_queue().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn escalated_compensation_gets_a_fresh_budget_from_compensate_now() {
    let script = Script::default();
    script.set(
        "car",
        Phase::Action,
        Behaviour::Fail(StepError::permanent("sold out")),
    );
    script.set(
        "hotel",
        Phase::Compensation,
        Behaviour::FailTimes(3, StepError::retryable("down")),
    );
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open(&Arc::new(MemStore::new()), registry, T0).await;
    let id = start(&engine, &trip, CompensationStrategy::Immediate).await;
    assert_eq!(status_of(&engine, id).await, SagaStatus::Suspended);

    engine
        .compensate_now(id, "ops", "hotel api is back")
        .await
        .unwrap();

    assert_eq!(status_of(&engine, id).await, SagaStatus::Compensated);
    assert!(script.calls().contains(&"hotel:compensation:4".to_string()));
}

#[tokio::test]
async fn committed_saga_can_be_compensated_afterwards() {
    let script = Script::default();
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open(&Arc::new(MemStore::new()), registry, T0).await;
    let id = start(&engine, &trip, CompensationStrategy::Immediate).await;
    assert_eq!(status_of(&engine, id).await, SagaStatus::Committed);

    engine
        .compensate_now(id, "ops", "order returned")
        .await
        .unwrap();
    let outcome = outcome_of(&engine, id).await;

    assert_eq!(outcome.status, SagaStatus::Compensated);
    assert_eq!(
        script.calls()[3..],
        [
            "car:compensation:1",
            "hotel:compensation:1",
            "flight:compensation:1"
        ]
    );
    assert_eq!(engine.list(Some(SagaStatus::Committed)).unwrap().len(), 0);
    assert_eq!(engine.list(Some(SagaStatus::Compensated)).unwrap().len(), 1);
}

#[tokio::test]
async fn cancel_stops_forward_progress_at_the_next_step_boundary() {
    let script = Script::default();
    script.set("hotel", Phase::Action, Behaviour::Gate);
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open(&Arc::new(MemStore::new()), registry, T0).await;
    let id = start(&engine, &trip, CompensationStrategy::Immediate).await;
    while !script.calls().contains(&"hotel:action:1".to_string()) {
        script.entered.notified().await;
    }

    let canceller = engine.clone();
    let cancel =
        tokio::spawn(async move { canceller.cancel(id, "ops", "customer changed mind").await });
    for _ in 0..10 {
        tokio::task::yield_now().await; // the command reaches the mailbox
    }
    script.open_gate();
    cancel.await.unwrap().unwrap();
    let outcome = outcome_of(&engine, id).await;

    assert_eq!(outcome.status, SagaStatus::Compensated);
    assert_eq!(
        script.calls(),
        [
            "flight:action:1",
            "hotel:action:1",
            "hotel:compensation:1",
            "flight:compensation:1"
        ]
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
    assert!(engine.delay_queue(10).unwrap().is_empty());
}

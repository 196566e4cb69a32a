//! Retries and escalation: retry counts across a crash, permanent errors,
//! deadlines, timeouts, compensations that keep failing. Timing runs on
//! tokio's paused clock.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

mod common;

use common::timed::{config_at, open, retrying, start, trip_at, until_sleeping, T0};

use common::{outcome_of, run_to_end, trip_registry, Behaviour, Script};
use sagalog::{
    CompensationStrategy, Engine, EngineConfig, InDoubtPolicy, MemStore, Phase, Registry,
    RetryPolicy, SagaDefinition, SagaStatus, StepError, StepOptions, WaitPurpose,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test(start_paused = true)]
async fn retry_count_survives_a_crash_mid_backoff() {
    let store = Arc::new(MemStore::new());
    let script = Script::failing("hotel", Phase::Action, StepError::retryable("busy"));
    let (engine, trip) = trip_at(&store, &script, T0).await;
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

    let script = Script::failing("hotel", Phase::Action, StepError::retryable("busy"));
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
    let script = Script::failing(
        "car",
        Phase::Action,
        StepError::permanent("invalid licence"),
    );
    let (engine, trip) = trip_at(&Arc::new(MemStore::new()), &script, T0).await;

    let id = start(&engine, &trip, retrying(5, 10)).await;
    outcome_of(&engine, id).await;

    assert_eq!(script.count("car:action"), 1);
}

#[tokio::test(start_paused = true)]
async fn retry_deadline_ends_retries_before_the_attempt_limit() {
    let script = Script::failing("car", Phase::Action, StepError::retryable("busy"));
    let (engine, trip) = trip_at(&Arc::new(MemStore::new()), &script, T0).await;
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
    assert_eq!(script.count("car:action"), 3);
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

    let (_, outcome) = run_to_end(&engine, &saga, &"x".to_string()).await;

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
    let script = Script::failing("car", Phase::Action, StepError::permanent("sold out"));
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
    assert_eq!(engine.manual_queue().await.unwrap().len(), 1);
}

//! Why a saga waits: the one line its view gives for each kind of wait,
//! and none once it is done.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

mod common;

use common::timed::{retrying, start, trip_at, until_sleeping, T0};
use common::{outcome_of, run_to_end, trip_on, until_calls, Behaviour, Script};
use sagalog::{CompensationStrategy, MemStore, Phase, StepError};
use std::sync::Arc;

#[tokio::test(start_paused = true)]
async fn a_saga_in_backoff_says_which_attempt_of_how_many_and_when() {
    let script = Script::failing("car", Phase::Action, StepError::retryable("busy"));
    let (engine, trip) = trip_at(&Arc::new(MemStore::new()), &script, T0).await;
    let id = start(&engine, &trip, retrying(5, 60_000)).await;

    let asleep = until_sleeping(&engine, id).await;

    let waiting = engine.saga(id).await.unwrap().waiting.unwrap();
    assert_eq!(
        waiting,
        format!("retrying car, attempt 2 of 5, next at {}", asleep.due)
    );
}

#[tokio::test(start_paused = true)]
async fn a_saga_before_its_scheduled_compensation_says_when_and_after_what() {
    let script = Script::failing("car", Phase::Action, StepError::permanent("sold out"));
    let (engine, trip) = trip_at(&Arc::new(MemStore::new()), &script, T0).await;
    let id = start(
        &engine,
        &trip,
        CompensationStrategy::Scheduled { delay_ms: 60_000 },
    )
    .await;

    let asleep = until_sleeping(&engine, id).await;

    let waiting = engine.saga(id).await.unwrap().waiting.unwrap();
    assert_eq!(
        waiting,
        format!("scheduled compensation at {}, after car failed", asleep.due)
    );
}

#[tokio::test(start_paused = true)]
async fn a_saga_in_a_call_says_which_call_and_since_when() {
    let script = Script::default();
    script.set("hotel", Phase::Action, Behaviour::Hang);
    let (engine, trip) = trip_on(&Arc::new(MemStore::new()), &script).await;
    let id = common::start_saga(&engine, &trip, &"ada".to_string()).await;

    until_calls(&script, |calls| {
        calls.contains(&"hotel:action:1".to_string())
    })
    .await;

    let waiting = engine.saga(id).await.unwrap().waiting.unwrap();
    assert!(
        waiting.starts_with("calling hotel (attempt 1) since "),
        "{waiting}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_suspended_saga_says_it_waits_for_an_operator_and_why() {
    let script = Script::failing("car", Phase::Action, StepError::permanent("sold out"));
    let (engine, trip) = trip_at(&Arc::new(MemStore::new()), &script, T0).await;
    let id = start(&engine, &trip, CompensationStrategy::Manual).await;
    outcome_of(&engine, id).await;

    let waiting = engine.saga(id).await.unwrap().waiting.unwrap();

    assert!(
        waiting.starts_with("waiting for an operator: "),
        "{waiting}"
    );
    assert!(waiting.contains("sold out"), "{waiting}");
}

#[tokio::test(start_paused = true)]
async fn a_finished_saga_waits_for_nothing() {
    let script = Script::default();
    let (engine, trip) = trip_on(&Arc::new(MemStore::new()), &script).await;

    let (id, _) = run_to_end(&engine, &trip, &"ada".to_string()).await;

    assert_eq!(engine.saga(id).await.unwrap().waiting, None);
}

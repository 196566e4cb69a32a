//! Operator actions end to end: marking steps compensated, retrying,
//! abandoning, cancelling, compensating a committed saga, refusals.
//! Timing runs on tokio's paused clock.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

mod common;

use common::timed::{open, start, trip_at, T0};

use common::{
    give_up_after_the_write, open_faultless, outcome_of, outcome_or_hang, status_of, trip_registry,
    Behaviour, Script,
};
use sagalog::{CompensationStrategy, Error, InDoubtPolicy, MemStore, Phase, SagaStatus, StepError};
use std::sync::Arc;

#[tokio::test]
async fn steps_marked_compensated_by_hand_are_not_called() {
    let script = Script::failing("car", Phase::Action, StepError::permanent("sold out"));
    let (engine, trip) = trip_at(&Arc::new(MemStore::new()), &script, T0).await;
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
    assert_eq!(
        engine.manual_queue().await.unwrap()[0].to_compensate,
        ["flight"]
    );
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
    let script = Script::failing("car", Phase::Action, StepError::permanent("sold out"));
    let (engine, trip) = trip_at(&Arc::new(MemStore::new()), &script, T0).await;
    let id = start(&engine, &trip, CompensationStrategy::Manual).await;
    outcome_of(&engine, id).await;

    engine.abandon(id, "dave", "written off").await.unwrap();
    let outcome = outcome_of(&engine, id).await;

    assert_eq!(outcome.status, SagaStatus::Failed);
    assert!(!script.calls().iter().any(|c| c.contains("compensation")));
    assert_eq!(
        engine.list(Some(SagaStatus::Failed)).await.unwrap().len(),
        1
    );
}

#[tokio::test]
async fn operator_action_that_makes_no_sense_is_refused_and_changes_nothing() {
    let script = Script::default();
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open(&Arc::new(MemStore::new()), registry, T0).await;
    let id = start(&engine, &trip, CompensationStrategy::Immediate).await;
    outcome_of(&engine, id).await;
    let records = engine.history(id).await.unwrap().len();

    let result = engine.retry_step(id, "eve", "why not").await;

    assert!(matches!(result, Err(Error::Illegal { .. })), "{result:?}");
    assert_eq!(engine.history(id).await.unwrap().len(), records);
}

#[tokio::test(start_paused = true)]
async fn escalated_compensation_gets_a_fresh_budget_from_compensate_now() {
    let script = Script::failing("car", Phase::Action, StepError::permanent("sold out"));
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
    assert_eq!(
        engine
            .list(Some(SagaStatus::Committed))
            .await
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        engine
            .list(Some(SagaStatus::Compensated))
            .await
            .unwrap()
            .len(),
        1
    );
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
async fn an_action_whose_caller_gives_up_after_it_was_written_is_still_carried_out() {
    let script = Script::failing("car", Phase::Action, StepError::permanent("sold out"));
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let (faulty, engine) = open_faultless(registry).await;
    let id = start(&engine, &trip, CompensationStrategy::Manual).await;
    assert_eq!(status_of(&engine, id).await, SagaStatus::Suspended);

    give_up_after_the_write(&faulty, engine.compensate_now(id, "alice", "refund")).await;

    let outcome = outcome_or_hang(&engine, id).await;
    assert_eq!(outcome.status, SagaStatus::Compensated);
}

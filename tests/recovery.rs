//! Recovery: calls left in doubt re-run or compensated, sagas that cannot
//! run parked while the others proceed, failed appends recovered on reopen.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

mod common;

use common::{
    open_mem, outcome_of, start_saga, status_of, trip_on, trip_registry, until_calls, Behaviour,
    Script, TRIP_UNDONE,
};
use sagalog::testing::FaultTiming;
use sagalog::{
    Engine, EngineConfig, Error, ErrorClass, InDoubtPolicy, MemStore, ParkReason, Phase, Registry,
    SagaDefinition, SagaStatus,
};
use std::sync::Arc;
use std::time::Duration;

/// Runs the trip until `hotel`'s action hangs, then stops the engine so the
/// call is left in doubt. Returns the saga id.
async fn leave_hotel_in_doubt(
    store: &Arc<MemStore>,
    in_doubt: InDoubtPolicy,
) -> (sagalog::SagaId, Script) {
    let script = Script::default();
    script.set("hotel", Phase::Action, Behaviour::Hang);
    let (registry, trip) = trip_registry(&script, in_doubt);
    let engine = open_mem(store, registry).await;
    let id = start_saga(&engine, &trip, &"ada".to_string()).await;
    while !script.calls().contains(&"hotel:action:1".to_string()) {
        script.entered.notified().await;
    }
    engine.shutdown(Duration::from_secs(5)).await;
    (id, script)
}

/// Leaves `hotel` in doubt, reopens with a script that lets every call
/// succeed, and returns the saga's outcome and the calls made after reopening.
async fn recover_hotel_in_doubt(in_doubt: InDoubtPolicy) -> (SagaStatus, Vec<String>) {
    let store = Arc::new(MemStore::new());
    let (id, _) = leave_hotel_in_doubt(&store, in_doubt).await;
    let script = Script::default();
    let (registry, _) = trip_registry(&script, in_doubt);
    let engine = open_mem(&store, registry).await;
    (status_of(&engine, id).await, script.calls())
}

#[tokio::test(start_paused = true)]
async fn in_doubt_step_is_rerun_after_restart() {
    let (status, calls) = recover_hotel_in_doubt(InDoubtPolicy::Rerun).await;

    assert_eq!(status, SagaStatus::Committed);
    assert_eq!(calls, ["hotel:action:2", "car:action:1"]);
}

#[tokio::test(start_paused = true)]
async fn in_doubt_step_is_compensated_under_the_compensate_policy() {
    let (status, calls) = recover_hotel_in_doubt(InDoubtPolicy::Compensate).await;

    assert_eq!(status, SagaStatus::Compensated);
    assert_eq!(calls, TRIP_UNDONE);
}

#[tokio::test]
async fn unknown_saga_type_is_parked_and_other_sagas_proceed() {
    let store = Arc::new(MemStore::new());
    let script = Script::default();
    script.set("flight", Phase::Action, Behaviour::Hang);
    let mut registry = Registry::new();
    let gone = registry
        .register(common::trip_definition(
            "retired",
            &script,
            InDoubtPolicy::Rerun,
        ))
        .unwrap();
    let trip = registry
        .register(common::trip_definition(
            "trip",
            &script,
            InDoubtPolicy::Rerun,
        ))
        .unwrap();
    let engine = open_mem(&store, registry).await;
    let orphan = start_saga(&engine, &gone, &"x".to_string()).await;
    let other = start_saga(&engine, &trip, &"y".to_string()).await;
    engine.shutdown(Duration::ZERO).await;

    let script = Script::default();
    let (engine, _) = trip_on(&store, &script).await; // "retired" not registered

    assert_eq!(status_of(&engine, other).await, SagaStatus::Committed);
    let Err(Error::Parked { reason, .. }) = engine.outcome(orphan).await else {
        panic!("the orphan saga must be parked");
    };
    assert!(
        matches!(&reason, ParkReason::UnknownType { saga_type } if saga_type.as_str() == "retired"),
        "{reason}"
    );
    let view = engine.saga(orphan).await.unwrap();
    assert_eq!(view.status, SagaStatus::Suspended);
    let suspended = engine.list(Some(SagaStatus::Suspended)).await.unwrap();
    assert_eq!(suspended.len(), 1);
    assert_eq!(suspended[0].saga_id, orphan);
    assert!(suspended[0].parked.is_some());
}

#[tokio::test]
async fn corrupt_record_parks_its_saga_and_other_sagas_proceed() {
    let dir = tempfile::tempdir().unwrap();
    let script = Script::default();
    script.set("flight", Phase::Action, Behaviour::Hang);
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = Engine::open(dir.path(), registry, EngineConfig::default())
        .await
        .unwrap();
    let damaged = start_saga(&engine, &trip, &"x".to_string()).await;
    let healthy = start_saga(&engine, &trip, &"y".to_string()).await;
    engine.shutdown(Duration::ZERO).await;
    drop(engine);

    let store = sagalog::SledStore::open(dir.path(), Default::default()).unwrap();
    let key = sagalog::testing::log_key(damaged, 0);
    store.overwrite_raw(&key, b"SG\x01\x01garbage").unwrap();
    drop(store);

    let script = Script::default();
    let (registry, _) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = Engine::open(dir.path(), registry, EngineConfig::default())
        .await
        .unwrap();

    assert_eq!(status_of(&engine, healthy).await, SagaStatus::Committed);
    let Err(Error::Parked { reason, .. }) = engine.outcome(damaged).await else {
        panic!("the damaged saga must be parked");
    };
    assert!(matches!(&reason, ParkReason::Unreadable(_)), "{reason}");
    assert!(reason.to_string().contains("record 0"), "{reason}");
    let history = engine.history(damaged).await.unwrap();
    assert!(
        history[0].record.is_err(),
        "the damaged record shows its decode error"
    );
    assert_eq!(
        engine.saga(damaged).await.unwrap().status,
        SagaStatus::Suspended
    );
}

/// Starts a trip on a store that fails the saga's second append (the
/// flight's result with the hotel's intent) before applying it, and waits
/// for its outcome from before that append: the flight waits at its gate
/// until the waiter is registered.
async fn start_with_second_append_failing() -> (
    Engine,
    Script,
    sagalog::SagaId,
    Result<sagalog::Outcome, Error>,
) {
    let store = Arc::new(MemStore::new());
    let script = Script::default();
    script.set("flight", Phase::Action, Behaviour::Gate);
    let (engine, trip) = trip_on(&store, &script).await;
    // Appends: 1 = start + flight intent, 2 = flight result + hotel intent.
    store.fail_append(store.append_count() + 2, FaultTiming::BeforeApply);
    let id = start_saga(&engine, &trip, &"ada".to_string()).await;
    until_calls(&script, |calls| !calls.is_empty()).await;
    use std::future::Future as _;
    let mut waiting = Box::pin(engine.outcome(id));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(
        waiting.as_mut().poll(&mut cx).is_pending(),
        "the saga is running"
    );
    script.open_gate();
    let first = waiting.await;
    (engine, script, id, first)
}

#[tokio::test]
async fn failed_intent_append_stops_the_call() {
    let (_engine, script, _id, result) = start_with_second_append_failing().await;

    assert!(matches!(result, Err(Error::Store(_))), "{result:?}");
    assert_eq!(
        script.calls(),
        ["flight:action:1"],
        "hotel was never called"
    );
}

#[tokio::test]
async fn append_that_failed_after_writing_is_recovered_on_reopen() {
    let store = Arc::new(MemStore::new());
    let script = Script::default();
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open_mem(&store, registry).await;
    store.fail_append(store.append_count() + 2, FaultTiming::AfterApply);
    let id = start_saga(&engine, &trip, &"ada".to_string()).await;
    assert!(engine.outcome(id).await.is_err());
    assert_eq!(
        script.calls(),
        ["flight:action:1"],
        "hotel was not called after the failed append"
    );
    engine.shutdown(Duration::ZERO).await;

    let script = Script::default();
    let (engine, _) = trip_on(&store, &script).await;

    assert_eq!(status_of(&engine, id).await, SagaStatus::Committed);
    assert_eq!(script.calls(), ["hotel:action:2", "car:action:1"]);
}

#[tokio::test]
async fn saga_started_under_another_definition_version_is_parked() {
    let store = Arc::new(MemStore::new());
    let script = Script::default();
    script.set("flight", Phase::Action, Behaviour::Hang);
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open_mem(&store, registry).await;
    let id = start_saga(&engine, &trip, &"x".to_string()).await;
    engine.shutdown(Duration::ZERO).await;

    let mut registry = Registry::new();
    let v2 = common::trip_definition("trip", &Script::default(), InDoubtPolicy::Rerun);
    let v2 = rebuild_as_version_2(v2);
    registry.register(v2).unwrap();
    let engine = open_mem(&store, registry).await;

    let Err(Error::Parked { reason, .. }) = engine.outcome(id).await else {
        panic!("a saga of another version must be parked");
    };
    assert!(
        matches!(
            reason,
            ParkReason::OtherVersion {
                registered: 2,
                logged: 1,
                ..
            }
        ),
        "{reason}"
    );
}

fn rebuild_as_version_2(_v1: SagaDefinition<String>) -> SagaDefinition<String> {
    SagaDefinition::<String>::builder("trip")
        .version(2)
        .step("flight", |_ctx| async { Ok(()) }, |_ctx| async { Ok(()) })
        .build()
        .unwrap()
}

#[tokio::test]
async fn saga_stopped_by_a_store_error_is_listed_as_parked() {
    let (engine, script, id, first) = start_with_second_append_failing().await;
    let later = engine.outcome(id).await;

    assert!(matches!(first, Err(Error::Store(_))), "{first:?}");
    assert!(matches!(later, Err(Error::Parked { .. })), "{later:?}");
    let parked = engine.list(Some(SagaStatus::Suspended)).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert!(parked[0]
        .parked
        .as_deref()
        .unwrap_or("")
        .contains("injected store fault"));
    assert_eq!(
        script.calls(),
        ["flight:action:1"],
        "no call after the failed intent append"
    );
}

#[tokio::test(start_paused = true)]
async fn a_step_given_up_under_the_compensate_policy_says_it_was_in_doubt() {
    let store = Arc::new(MemStore::new());
    let (id, _) = leave_hotel_in_doubt(&store, InDoubtPolicy::Compensate).await;
    let (registry, _) = trip_registry(&Script::default(), InDoubtPolicy::Compensate);
    let engine = open_mem(&store, registry).await;

    let outcome = outcome_of(&engine, id).await;

    let (step, failure) = outcome.failure.expect("a give-up says why");
    assert_eq!(step.as_str(), "hotel");
    assert_eq!(failure.class, ErrorClass::Unknown);
    assert!(failure.message.contains("in doubt"), "{}", failure.message);
    let view = engine.saga(id).await.unwrap();
    assert_eq!(view.steps[1].last_error.as_ref(), Some(&failure));
}

#[tokio::test(start_paused = true)]
async fn a_step_whose_attempts_restarts_used_up_says_so() {
    let store = Arc::new(MemStore::new());
    let (id, _) = leave_hotel_in_doubt(&store, InDoubtPolicy::Rerun).await;
    // Two more restarts, each while hotel's action runs: 3 attempts in doubt.
    for attempt in 2..=3 {
        let script = Script::default();
        script.set("hotel", Phase::Action, Behaviour::Hang);
        let (engine, _) = trip_on(&store, &script).await;
        let call = format!("hotel:action:{attempt}");
        while !script.calls().contains(&call) {
            script.entered.notified().await;
        }
        engine.shutdown(Duration::ZERO).await;
    }
    let (registry, _) = trip_registry(&Script::default(), InDoubtPolicy::Rerun);
    let engine = open_mem(&store, registry).await;

    let outcome = outcome_of(&engine, id).await;

    assert_eq!(outcome.status, SagaStatus::Compensated);
    let (step, failure) = outcome.failure.expect("a give-up says why");
    assert_eq!(step.as_str(), "hotel");
    assert!(
        failure
            .message
            .contains("attempts used up: 3 attempts, the last left in doubt by a restart"),
        "{}",
        failure.message
    );
}

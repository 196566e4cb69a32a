//! The engine end to end: success, compensation, idempotent start,
//! recovery of in-doubt steps, parking, failed appends, retries, reads.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

mod common;

use common::{open_mem, outcome_of, start_saga, status_of, trip_registry, Behaviour, Script};
use sagalog::testing::FaultTiming;
use sagalog::{
    Engine, EngineConfig, Error, ErrorClass, InDoubtPolicy, MemStore, ParkReason, Phase, Registry,
    SagaDefinition, SagaStatus, StartOptions, StepError,
};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn successful_saga_runs_every_step_once_and_commits() {
    let script = Script::default();
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;

    let started = engine
        .start(&trip, &"ada".to_string(), StartOptions::new())
        .await
        .unwrap();
    let outcome = outcome_of(&engine, started.saga_id).await;

    assert_eq!(outcome.status, SagaStatus::Committed);
    assert_eq!(
        script.calls(),
        ["flight:action:1", "hotel:action:1", "car:action:1"]
    );
}

#[tokio::test]
async fn later_step_reads_an_earlier_steps_output() {
    let script = Script::default();
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let store = Arc::new(MemStore::new());
    let engine = open_mem(&store, registry).await;

    let id = start_saga(&engine, &trip, &"ada".to_string()).await;
    outcome_of(&engine, id).await;

    let hotel_output = engine
        .history(id)
        .unwrap()
        .into_iter()
        .find_map(|e| match e.record {
            Ok((_, sagalog::Record::StepSucceeded(s))) if s.call.step == 1 => Some(s.output),
            _ => None,
        })
        .unwrap();
    let hotel: String = sagalog::tools::decode_value(&hotel_output).unwrap();
    assert_eq!(hotel, "HO-for-FL-ada");
}

#[tokio::test]
async fn permanent_failure_compensates_completed_steps_in_reverse_order() {
    let script = Script::default();
    script.set(
        "car",
        Phase::Action,
        Behaviour::Fail(StepError::permanent("no cars left")),
    );
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;

    let id = start_saga(&engine, &trip, &"ada".to_string()).await;
    let outcome = outcome_of(&engine, id).await;

    assert_eq!(outcome.status, SagaStatus::Compensated);
    let (step, failure) = outcome.failure.unwrap();
    assert_eq!(step.as_str(), "car");
    assert_eq!(failure.class, ErrorClass::Permanent);
    assert_eq!(
        script.calls(),
        [
            "flight:action:1",
            "hotel:action:1",
            "car:action:1",
            "hotel:compensation:1",
            "flight:compensation:1"
        ]
    );
}

/// An engine that ran one trip for "ada" under key "order-42" to its end:
/// the engine, the trip, the start, and the script of calls.
async fn one_keyed_trip() -> (
    sagalog::Engine,
    sagalog::SagaRef<String>,
    sagalog::Started,
    Script,
) {
    let script = Script::default();
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;
    let first = engine
        .start(&trip, &"ada".to_string(), key_42())
        .await
        .unwrap();
    outcome_of(&engine, first.saga_id).await;
    (engine, trip, first, script)
}

fn key_42() -> StartOptions {
    StartOptions::new().idempotency_key("order-42")
}

#[tokio::test]
async fn second_start_with_the_same_key_returns_the_existing_saga() {
    let (engine, trip, first, script) = one_keyed_trip().await;
    let options = key_42();

    let second = engine
        .start(&trip, &"ada".to_string(), options)
        .await
        .unwrap();

    assert!(!first.existing);
    assert!(second.existing);
    assert_eq!(second.saga_id, first.saga_id);
    assert_eq!(script.calls().len(), 3, "the second start ran nothing");
}

#[tokio::test]
async fn second_start_with_the_same_key_and_another_input_is_an_idempotency_conflict() {
    let (engine, trip, first, script) = one_keyed_trip().await;

    let second = engine.start(&trip, &"bob".to_string(), key_42()).await;

    let Err(Error::IdempotencyConflict { key, saga }) = second else {
        panic!("expected a conflict, got {second:?}");
    };
    assert_eq!((key.as_str(), saga), ("order-42", first.saga_id));
    assert_eq!(script.calls().len(), 3, "the second start ran nothing");
}

#[tokio::test]
async fn attach_on_conflict_returns_the_saga_started_with_another_input() {
    let (engine, trip, first, _) = one_keyed_trip().await;

    let second = engine
        .start(&trip, &"bob".to_string(), key_42().attach_on_conflict())
        .await
        .unwrap();

    assert!(second.existing);
    assert_eq!(second.saga_id, first.saga_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_with_one_key_and_two_inputs_give_one_saga_and_conflicts() {
    let script = Script::default();
    script.set("flight", Phase::Action, Behaviour::Hang);
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;

    let mut handles = Vec::new();
    for n in 0..16 {
        let (engine, trip) = (engine.clone(), trip.clone());
        let input = if n % 2 == 0 { "ada" } else { "bob" };
        handles.push(tokio::spawn(async move {
            let options = StartOptions::new().idempotency_key("same");
            (
                input,
                engine.start(&trip, &input.to_string(), options).await,
            )
        }));
    }
    let mut winners = Vec::new();
    let mut conflicts = 0;
    for handle in handles {
        match handle.await.unwrap() {
            (input, Ok(started)) => winners.push((input, started.saga_id)),
            (_, Err(Error::IdempotencyConflict { .. })) => conflicts += 1,
            (_, Err(e)) => panic!("{e}"),
        }
    }
    winners.sort();
    winners.dedup();
    assert_eq!(winners.len(), 1, "one input won: {winners:?}");
    assert_eq!(
        winners.len() + conflicts,
        1 + 8,
        "the other input's 8 conflict"
    );
    assert_eq!(engine.list(None).unwrap().len(), 1);
}

#[tokio::test]
async fn find_by_key_returns_the_saga_its_idempotency_key_belongs_to() {
    let script = Script::default();
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;
    let started = engine
        .start(
            &trip,
            &"ada".to_string(),
            StartOptions::new().idempotency_key("order-7"),
        )
        .await
        .unwrap();
    engine
        .start(&trip, &"bob".to_string(), StartOptions::new())
        .await
        .unwrap();

    let found = engine.find_by_key(&"order-7".into()).unwrap().unwrap();
    let listed = engine
        .find(&sagalog::SagaFilter::new().idempotency_key("order-7"))
        .unwrap();

    assert_eq!(found.saga_id, started.saga_id);
    assert_eq!(found.idempotency_key.as_deref(), Some("order-7"));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].saga_id, started.saga_id);
    assert!(engine.find_by_key(&"order-8".into()).unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_with_one_key_create_one_saga() {
    let script = Script::default();
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;

    let mut handles = Vec::new();
    for _ in 0..16 {
        let (engine, trip) = (engine.clone(), trip.clone());
        handles.push(tokio::spawn(async move {
            engine
                .start(
                    &trip,
                    &"ada".to_string(),
                    StartOptions::new().idempotency_key("same"),
                )
                .await
                .unwrap()
                .saga_id
        }));
    }
    let mut ids = Vec::new();
    for handle in handles {
        ids.push(handle.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1);
    outcome_of(&engine, ids[0]).await;
    assert_eq!(engine.list(None).unwrap().len(), 1);
}

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

#[tokio::test(start_paused = true)]
async fn in_doubt_step_is_rerun_after_restart() {
    let store = Arc::new(MemStore::new());
    let (id, _) = leave_hotel_in_doubt(&store, InDoubtPolicy::Rerun).await;

    let script = Script::default();
    let (registry, _) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open_mem(&store, registry).await;
    let outcome = outcome_of(&engine, id).await;

    assert_eq!(outcome.status, SagaStatus::Committed);
    assert_eq!(script.calls(), ["hotel:action:2", "car:action:1"]);
}

#[tokio::test(start_paused = true)]
async fn in_doubt_step_is_compensated_under_the_compensate_policy() {
    let store = Arc::new(MemStore::new());
    let (id, _) = leave_hotel_in_doubt(&store, InDoubtPolicy::Compensate).await;

    let script = Script::default();
    let (registry, _) = trip_registry(&script, InDoubtPolicy::Compensate);
    let engine = open_mem(&store, registry).await;
    let outcome = outcome_of(&engine, id).await;

    assert_eq!(outcome.status, SagaStatus::Compensated);
    assert_eq!(
        script.calls(),
        ["hotel:compensation:1", "flight:compensation:1"]
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_a_running_call_finish_and_records_its_result() {
    let script = Script::default();
    script.set("flight", Phase::Action, Behaviour::Gate);
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let store = Arc::new(MemStore::new());
    let engine = open_mem(&store, registry).await;
    let id = start_saga(&engine, &trip, &"ada".to_string()).await;
    script.entered.notified().await; // flight's action is running
    let releaser = script.clone();
    tokio::spawn(async move {
        // Runs once shutdown has begun and waits for the call (paused clock).
        tokio::time::sleep(Duration::from_millis(10)).await;
        releaser.open_gate();
    });

    engine.shutdown(Duration::from_secs(5)).await;

    let view = engine.saga(id).unwrap();
    assert_eq!(view.steps[0].summary(), "done");
    assert_eq!(
        view.steps[1].summary(),
        "pending",
        "no new step starts during shutdown"
    );
}

#[tokio::test]
async fn every_caller_waiting_for_a_saga_gets_its_outcome() {
    let script = Script::default();
    script.set("flight", Phase::Action, Behaviour::Gate);
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;
    let id = start_saga(&engine, &trip, &"ada".to_string()).await;
    script.entered.notified().await; // flight's action is running
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.outcome(id).await })
        })
        .collect();
    for _ in 0..10 {
        tokio::task::yield_now().await; // each caller starts waiting
    }

    script.open_gate();

    for caller in waiting {
        let outcome = caller.await.unwrap().unwrap();
        assert_eq!(outcome.status, SagaStatus::Committed);
    }
    assert_eq!(status_of(&engine, id).await, SagaStatus::Committed);
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
    let (registry, _) = trip_registry(&script, InDoubtPolicy::Rerun); // "retired" not registered
    let engine = open_mem(&store, registry).await;

    assert_eq!(status_of(&engine, other).await, SagaStatus::Committed);
    let Err(Error::Parked { reason, .. }) = engine.outcome(orphan).await else {
        panic!("the orphan saga must be parked");
    };
    assert!(
        matches!(&reason, ParkReason::UnknownType { saga_type } if saga_type.as_str() == "retired"),
        "{reason}"
    );
    let view = engine.saga(orphan).unwrap();
    assert_eq!(view.status, SagaStatus::Suspended);
    let suspended = engine.list(Some(SagaStatus::Suspended)).unwrap();
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
    let history = engine.history(damaged).unwrap();
    assert!(
        history[0].record.is_err(),
        "the damaged record shows its decode error"
    );
    assert_eq!(engine.saga(damaged).unwrap().status, SagaStatus::Suspended);
}

#[tokio::test]
async fn failed_intent_append_stops_the_call() {
    let store = Arc::new(MemStore::new());
    let script = Script::default();
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open_mem(&store, registry).await;
    // Appends: 1 = start + flight intent, 2 = flight result + hotel intent.
    store.fail_append(store.append_count() + 2, FaultTiming::BeforeApply);

    let id = start_saga(&engine, &trip, &"ada".to_string()).await;
    let result = engine.outcome(id).await;

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
    let (registry, _) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open_mem(&store, registry).await;

    assert_eq!(status_of(&engine, id).await, SagaStatus::Committed);
    assert_eq!(script.calls(), ["hotel:action:2", "car:action:1"]);
}

#[tokio::test(start_paused = true)]
async fn retryable_failure_is_retried_after_its_backoff() {
    let script = Script::default();
    script.set(
        "hotel",
        Phase::Action,
        Behaviour::FailTimes(2, StepError::retryable("busy")),
    );
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;
    let before = tokio::time::Instant::now();

    let id = start_saga(&engine, &trip, &"ada".to_string()).await;
    let outcome = outcome_of(&engine, id).await;

    assert_eq!(outcome.status, SagaStatus::Committed);
    assert_eq!(
        script.calls(),
        [
            "flight:action:1",
            "hotel:action:1",
            "hotel:action:2",
            "hotel:action:3",
            "car:action:1"
        ]
    );
    // Backoff 100 ms then 200 ms, on tokio's paused clock.
    assert!(before.elapsed() >= Duration::from_millis(300));
}

#[tokio::test(start_paused = true)]
async fn compensation_that_keeps_failing_suspends_the_saga() {
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
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;

    let id = start_saga(&engine, &trip, &"ada".to_string()).await;
    let outcome = outcome_of(&engine, id).await;

    assert_eq!(outcome.status, SagaStatus::Suspended);
    assert!(outcome.reason.unwrap().contains("failed 3 times"));
    assert!(
        !script
            .calls()
            .contains(&"flight:compensation:1".to_string()),
        "reverse order holds"
    );
    assert_eq!(engine.list(Some(SagaStatus::Suspended)).unwrap().len(), 1);
}

#[tokio::test]
async fn history_lists_every_record_in_order_with_timestamps() {
    let script = Script::default();
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;
    let id = start_saga(&engine, &trip, &"ada".to_string()).await;
    outcome_of(&engine, id).await;

    let kinds: Vec<&str> = engine
        .history(id)
        .unwrap()
        .iter()
        .map(|e| e.record.as_ref().unwrap().1.kind_name())
        .collect();
    assert_eq!(
        kinds,
        [
            "saga_started",
            "step_started",
            "step_succeeded",
            "step_started",
            "step_succeeded",
            "step_started",
            "step_succeeded",
            "saga_finished"
        ]
    );
    let history = engine.history(id).unwrap();
    let times: Vec<u64> = history
        .iter()
        .map(|e| e.record.as_ref().unwrap().0 .0)
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
}

#[tokio::test]
async fn list_filters_sagas_by_status() {
    let script = Script::default();
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;
    let ok = start_saga(&engine, &trip, &"ok".to_string()).await;
    outcome_of(&engine, ok).await;
    script.set(
        "car",
        Phase::Action,
        Behaviour::Fail(StepError::permanent("no")),
    );
    let bad = start_saga(&engine, &trip, &"bad".to_string()).await;
    outcome_of(&engine, bad).await;

    let committed = engine.list(Some(SagaStatus::Committed)).unwrap();
    let compensated = engine.list(Some(SagaStatus::Compensated)).unwrap();
    assert_eq!(
        committed.iter().map(|l| l.saga_id).collect::<Vec<_>>(),
        [ok]
    );
    assert_eq!(
        compensated.iter().map(|l| l.saga_id).collect::<Vec<_>>(),
        [bad]
    );
    assert_eq!(engine.list(None).unwrap().len(), 2);
}

#[tokio::test]
async fn running_sagas_never_exceed_the_concurrency_bound() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (n, p) = (now.clone(), peak.clone());
    let mut registry = Registry::new();
    let slow = registry
        .register(
            SagaDefinition::<u32>::builder("slow")
                .step(
                    "work",
                    move |_ctx| {
                        let (n, p) = (n.clone(), p.clone());
                        async move {
                            let current = n.fetch_add(1, Ordering::SeqCst) + 1;
                            p.fetch_max(current, Ordering::SeqCst);
                            tokio::task::yield_now().await;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            n.fetch_sub(1, Ordering::SeqCst);
                            Ok(())
                        }
                    },
                    |_ctx| async { Ok(()) },
                )
                .build()
                .unwrap(),
        )
        .unwrap();
    let config = EngineConfig {
        max_running_sagas: 2,
        ..EngineConfig::default()
    };
    let engine = Engine::open_with_store(Arc::new(MemStore::new()), registry, config)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(start_saga(&engine, &slow, &i).await);
    }
    for id in ids {
        assert_eq!(status_of(&engine, id).await, SagaStatus::Committed);
    }
    assert!(peak.load(Ordering::SeqCst) <= 2);
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

#[test]
fn invalid_definition_reports_every_problem_at_once() {
    let result = SagaDefinition::<u32>::builder("")
        .step("a", |_ctx| async { Ok(()) }, |_ctx| async { Ok(()) })
        .step("a", |_ctx| async { Ok(()) }, |_ctx| async { Ok(()) })
        .retry(sagalog::RetryPolicy {
            max_attempts: 0,
            ..Default::default()
        })
        .build();
    let Err(error) = result else {
        panic!("the definition is invalid");
    };
    assert_eq!(error.problems().len(), 3, "{error}");
    let message = error.to_string();
    assert!(message.contains("saga type is empty"), "{message}");
    assert!(message.contains("used twice"), "{message}");
    assert!(message.contains("max_attempts is 0"), "{message}");
}

#[test]
fn definition_without_steps_is_rejected() {
    let result = SagaDefinition::<u32>::builder("empty").build();
    assert!(result.is_err());
}

#[tokio::test]
async fn registering_one_type_twice_is_an_error() {
    let script = Script::default();
    let mut registry = Registry::new();
    registry
        .register(common::trip_definition(
            "trip",
            &script,
            InDoubtPolicy::Rerun,
        ))
        .unwrap();
    let again = registry.register(common::trip_definition(
        "trip",
        &script,
        InDoubtPolicy::Rerun,
    ));
    assert!(again.is_err());
}

#[tokio::test]
async fn second_open_of_a_database_is_a_locked_error() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Engine::open(dir.path(), Registry::new(), EngineConfig::default())
        .await
        .unwrap();

    let second = Engine::open(dir.path(), Registry::new(), EngineConfig::default()).await;

    let Err(Error::Store(error @ sagalog::StoreError::Locked { .. })) = second else {
        panic!("expected a Locked error");
    };
    assert!(error.to_string().contains("locked by another process"));
}

#[tokio::test]
async fn starting_a_type_from_another_registry_is_an_error() {
    let script = Script::default();
    let (_, foreign) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open_mem(&Arc::new(MemStore::new()), Registry::new()).await;

    let result = engine
        .start(&foreign, &"x".to_string(), StartOptions::new())
        .await;

    assert!(matches!(result, Err(Error::UnknownSagaType(_))));
}

#[tokio::test]
async fn outcome_of_an_unknown_id_is_not_found() {
    let engine = open_mem(&Arc::new(MemStore::new()), Registry::new()).await;
    let result = engine.outcome(sagalog::SagaId::new()).await;
    assert!(matches!(result, Err(Error::NotFound(_))));
}

#[tokio::test]
async fn saga_stopped_by_a_store_error_is_listed_as_parked() {
    let store = Arc::new(MemStore::new());
    let script = Script::default();
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open_mem(&store, registry).await;
    // Appends: 1 = start + flight intent, 2 = flight result + hotel intent.
    store.fail_append(store.append_count() + 2, FaultTiming::BeforeApply);

    let id = start_saga(&engine, &trip, &"ada".to_string()).await;
    let first = engine.outcome(id).await;
    let later = engine.outcome(id).await;

    assert!(matches!(first, Err(Error::Store(_))), "{first:?}");
    assert!(matches!(later, Err(Error::Parked { .. })), "{later:?}");
    let parked = engine.list(Some(SagaStatus::Suspended)).unwrap();
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

#[tokio::test]
async fn a_calls_idempotency_key_is_its_saga_id_step_and_phase() {
    let keys = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = keys.clone();
    let definition = SagaDefinition::<String>::builder("keyed")
        .step(
            "reserve",
            move |ctx| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(ctx.idempotency_key().to_string());
                    Ok(())
                }
            },
            |_ctx| async { Ok(()) },
        )
        .build()
        .unwrap();
    let mut registry = Registry::new();
    let keyed = registry.register(definition).unwrap();
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;
    let id = start_saga(&engine, &keyed, &"x".to_string()).await;
    assert_eq!(status_of(&engine, id).await, SagaStatus::Committed);
    assert_eq!(*keys.lock().unwrap(), [format!("{id}/reserve/action")]);
}

#[tokio::test]
async fn dropping_the_last_engine_handle_releases_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let script = Script::default();
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = Engine::open(dir.path(), registry, EngineConfig::default())
        .await
        .unwrap();
    let saga = start_saga(&engine, &trip, &"ada".to_string()).await;
    let second = engine.clone();
    drop(engine);
    assert_eq!(status_of(&second, saga).await, SagaStatus::Committed);
    drop(second);

    let (registry, _) = trip_registry(&Script::default(), InDoubtPolicy::Rerun);
    let reopened = Engine::open(dir.path(), registry, EngineConfig::default())
        .await
        .expect("the directory is free once every handle is dropped");
    assert_eq!(reopened.saga(saga).unwrap().status, SagaStatus::Committed);
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
    let view = engine.saga(id).unwrap();
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
        let (registry, _) = trip_registry(&script, InDoubtPolicy::Rerun);
        let engine = open_mem(&store, registry).await;
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

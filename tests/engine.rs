//! The engine end to end: success, compensation, outputs, retries, reads,
//! concurrency, definitions, shutdown. Idempotent start is in
//! `idempotency.rs`, recovery and parking in `recovery.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

mod common;

use common::{
    open_mem, outcome_of, run_to_end, start_saga, status_of, trip_on, trip_registry, Behaviour,
    Script,
};
use sagalog::{
    Engine, EngineConfig, Error, ErrorClass, InDoubtPolicy, MemStore, Phase, Registry,
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
        .await
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
    let script = Script::failing("car", Phase::Action, StepError::permanent("no cars left"));
    let (engine, trip) = trip_on(&Arc::new(MemStore::new()), &script).await;

    let (_, outcome) = run_to_end(&engine, &trip, &"ada".to_string()).await;

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

    let view = engine.saga(id).await.unwrap();
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

    let (_, outcome) = run_to_end(&engine, &trip, &"ada".to_string()).await;

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
    let script = Script::failing("car", Phase::Action, StepError::permanent("sold out"));
    script.set(
        "hotel",
        Phase::Compensation,
        Behaviour::Fail(StepError::retryable("hotel api down")),
    );
    let (engine, trip) = trip_on(&Arc::new(MemStore::new()), &script).await;

    let (_, outcome) = run_to_end(&engine, &trip, &"ada".to_string()).await;

    assert_eq!(outcome.status, SagaStatus::Suspended);
    assert!(outcome.reason.unwrap().contains("failed 3 times"));
    assert!(
        !script
            .calls()
            .contains(&"flight:compensation:1".to_string()),
        "reverse order holds"
    );
    assert_eq!(
        engine
            .list(Some(SagaStatus::Suspended))
            .await
            .unwrap()
            .len(),
        1
    );
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
        .await
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
    let history = engine.history(id).await.unwrap();
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

    let committed = engine.list(Some(SagaStatus::Committed)).await.unwrap();
    let compensated = engine.list(Some(SagaStatus::Compensated)).await.unwrap();
    assert_eq!(
        committed.iter().map(|l| l.saga_id).collect::<Vec<_>>(),
        [ok]
    );
    assert_eq!(
        compensated.iter().map(|l| l.saga_id).collect::<Vec<_>>(),
        [bad]
    );
    assert_eq!(engine.list(None).await.unwrap().len(), 2);
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
    assert_eq!(
        reopened.saga(saga).await.unwrap().status,
        SagaStatus::Committed
    );
}

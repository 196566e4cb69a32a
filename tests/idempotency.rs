//! Idempotent start: one saga per key, conflicts for another input, and
//! concurrent starts with one key.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

mod common;

use common::{
    give_up_after_the_write, open_faultless, open_mem, outcome_of, outcome_or_hang, trip_registry,
    Behaviour, Script,
};
use sagalog::{Error, InDoubtPolicy, MemStore, Phase, StartOptions};
use std::sync::Arc;

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
    assert_eq!(engine.list(None).await.unwrap().len(), 1);
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

    let found = engine
        .find_by_key(&"order-7".into())
        .await
        .unwrap()
        .unwrap();
    let listed = engine
        .find(&sagalog::SagaFilter::new().idempotency_key("order-7"))
        .await
        .unwrap();

    assert_eq!(found.saga_id, started.saga_id);
    assert_eq!(found.idempotency_key.as_deref(), Some("order-7"));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].saga_id, started.saga_id);
    assert!(engine
        .find_by_key(&"order-8".into())
        .await
        .unwrap()
        .is_none());
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
    assert_eq!(engine.list(None).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_start_whose_caller_gives_up_after_it_was_written_still_runs() {
    let script = Script::default();
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let (faulty, engine) = open_faultless(registry).await;

    give_up_after_the_write(&faulty, engine.start(&trip, &"ada".to_string(), key_42())).await;

    let key = sagalog::IdempotencyKey::from("order-42");
    let saga = engine.find_by_key(&key).await.unwrap().unwrap();
    let outcome = outcome_or_hang(&engine, saga.saga_id).await;
    assert_eq!(outcome.status, sagalog::SagaStatus::Committed);
}

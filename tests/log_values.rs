//! A saga's log values grow in place (DESIGN.md §4.3): while one loop drives
//! a saga, each append rewrites the saga's last value with its records
//! added, up to 2 KiB, so a short saga's whole log is one key.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

mod common;

use common::{open_mem, start_saga, status_of, trip_registry, until_calls, Behaviour, Script};
use sagalog::store::KvLogStore;
use sagalog::testing::FaultTiming;
use sagalog::tools::decode_records;
use sagalog::{Engine, InDoubtPolicy, MemStore, Phase, SagaId, SagaStatus};
use std::sync::Arc;
use std::time::Duration;

/// The first sequence number of each of the saga's log values.
fn value_seqs(store: &MemStore, id: SagaId) -> Vec<u64> {
    store
        .read_log(id)
        .unwrap()
        .into_iter()
        .map(|(seq, _)| seq)
        .collect()
}

/// Every record of the saga decodes, and their sequence numbers run
/// 0, 1, 2, ... across the values without a gap.
async fn assert_whole_history(engine: &Engine, id: SagaId) {
    let history = engine.history(id).await.unwrap();
    for (expected, entry) in history.iter().enumerate() {
        assert_eq!(entry.seq, expected as u64);
        assert!(entry.record.is_ok(), "record {} decodes", entry.seq);
    }
}

async fn run_trip(input: String) -> (Arc<MemStore>, Engine, SagaId) {
    let (registry, trip) = trip_registry(&Script::default(), InDoubtPolicy::Rerun);
    let store = Arc::new(MemStore::new());
    let engine = open_mem(&store, registry).await;
    let id = start_saga(&engine, &trip, &input).await;
    assert_eq!(status_of(&engine, id).await, SagaStatus::Committed);
    (store, engine, id)
}

#[tokio::test]
async fn a_short_saga_keeps_its_whole_log_in_one_value() {
    let (store, engine, id) = run_trip("ada".into()).await;
    let values = store.read_log(id).unwrap();
    assert_eq!(value_seqs(&store, id), [0]);
    // Start, three intents and results, finish: four appends' records.
    let records = decode_records(&values[0].1).unwrap();
    assert_eq!(records.len(), engine.history(id).await.unwrap().len());
    assert!(records.len() >= 8, "{} records", records.len());
    assert_whole_history(&engine, id).await;
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_value_past_the_limit_is_left_and_the_next_records_start_a_new_one() {
    // The start record alone fills the first value: it keeps the start and
    // flight's intent, and the next append (seq 2) starts a second value.
    let (store, engine, id) = run_trip("x".repeat(2100)).await;
    let seqs = value_seqs(&store, id);
    assert_eq!(seqs[..2], [0, 2]);
    let first = store.read_log(id).unwrap().remove(0).1;
    assert_eq!(decode_records(&first).unwrap().len(), 2);
    assert_whole_history(&engine, id).await;
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_saga_resumed_after_a_restart_goes_on_in_a_new_value() {
    let script = Script::default();
    script.set("hotel", Phase::Action, Behaviour::Hang);
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let store = Arc::new(MemStore::new());
    let engine = open_mem(&store, registry).await;
    let id = start_saga(&engine, &trip, &"ada".to_string()).await;
    until_calls(&script, |calls| {
        calls.contains(&"hotel:action:1".to_string())
    })
    .await;
    engine.shutdown(Duration::ZERO).await;
    // Start, flight's intent and result, hotel's intent: one value.
    assert_eq!(value_seqs(&store, id), [0]);

    // The new loop did not write the value, so it never rewrites it.
    let (registry, _) = trip_registry(&Script::default(), InDoubtPolicy::Rerun);
    let engine = open_mem(&store, registry).await;
    assert_eq!(status_of(&engine, id).await, SagaStatus::Committed);
    assert_eq!(value_seqs(&store, id), [0, 4]);
    assert_whole_history(&engine, id).await;
    engine.shutdown(Duration::from_secs(1)).await;
}

/// Fails the saga's second append (flight's result and hotel's intent)
/// with `timing`, reopens, and returns the values' first seqs once the
/// saga has committed.
async fn values_after_a_failed_second_append(timing: FaultTiming) -> Vec<u64> {
    let (registry, trip) = trip_registry(&Script::default(), InDoubtPolicy::Rerun);
    let store = Arc::new(MemStore::new());
    store.fail_append(2, timing);
    let engine = open_mem(&store, registry).await;
    let id = start_saga(&engine, &trip, &"ada".to_string()).await;
    assert!(
        engine.outcome(id).await.is_err(),
        "the failed write stops the loop"
    );
    engine.shutdown(Duration::ZERO).await;

    let (registry, _) = trip_registry(&Script::default(), InDoubtPolicy::Rerun);
    let engine = open_mem(&store, registry).await;
    assert_eq!(status_of(&engine, id).await, SagaStatus::Committed);
    assert_whole_history(&engine, id).await;
    engine.shutdown(Duration::from_secs(1)).await;
    value_seqs(&store, id)
}

#[tokio::test]
async fn a_value_whose_rewrite_failed_after_landing_is_never_extended_again() {
    // The rewrite landed (start, flight's intent and result, hotel's
    // intent at seqs 0-3) though the writer reported a failure: recovery
    // goes on at seq 4 in a value of its own.
    let seqs = values_after_a_failed_second_append(FaultTiming::AfterApply).await;
    assert_eq!(seqs, [0, 4]);
}

#[tokio::test]
async fn a_value_whose_rewrite_failed_before_landing_keeps_its_durable_records() {
    // The rewrite never landed: the value keeps the start and flight's
    // intent (seqs 0-1), and recovery goes on at seq 2 in a new value.
    let seqs = values_after_a_failed_second_append(FaultTiming::BeforeApply).await;
    assert_eq!(seqs, [0, 2]);
}

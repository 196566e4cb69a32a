//! The index watermark: young sagas get no active-index entry, yet recovery,
//! listing and `verify` still see every saga in flight (DESIGN.md §4.2).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

mod common;

use common::{
    outcome_of, start_saga, status_of, trip_definition, trip_registry, until_calls, Behaviour,
    Script,
};
use sagalog::store::KvLogStore;
use sagalog::testing::FaultTiming;
use sagalog::{
    Engine, EngineConfig, InDoubtPolicy, MemStore, Phase, SagaId, SagaRef, SagaStatus, StartOptions,
};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

fn config(lag: Duration) -> EngineConfig {
    EngineConfig {
        index_lag: lag,
        ..EngineConfig::default()
    }
}

/// The raw keys of `store` that start with `prefix`.
fn keys_with_prefix(store: &MemStore, prefix: u8) -> Vec<Vec<u8>> {
    let mut found = Vec::new();
    store
        .for_each_raw(&mut |key, _| {
            if key.first() == Some(&prefix) {
                found.push(key.to_vec());
            }
            true
        })
        .unwrap();
    found
}

/// A saga of type `trip` stopped inside its hanging hotel call, on an engine
/// with `lag`; the engine also knows `quick`, a trip whose steps all succeed.
struct InFlight {
    script: Script,
    store: Arc<MemStore>,
    engine: Engine,
    id: SagaId,
    quick: SagaRef<String>,
}

async fn saga_in_flight(lag: Duration) -> InFlight {
    saga_in_hotel_call(lag, Behaviour::Hang).await
}

/// A `trip` inside its hotel call, which behaves as `hotel`, on an engine
/// with `lag`; the engine also knows `quick`.
async fn saga_in_hotel_call(lag: Duration, hotel: Behaviour) -> InFlight {
    let script = Script::default();
    script.set("hotel", Phase::Action, hotel);
    let (mut registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let quick = registry
        .register(trip_definition(
            "quick",
            &Script::default(),
            InDoubtPolicy::Rerun,
        ))
        .unwrap();
    let store = Arc::new(MemStore::new());
    let engine = Engine::open_with_store(store.clone(), registry, config(lag))
        .await
        .unwrap();
    let id = start_saga(&engine, &trip, &"ada".to_string()).await;
    until_calls(&script, |calls| {
        calls.contains(&"hotel:action:1".to_string())
    })
    .await;
    InFlight {
        script,
        store,
        engine,
        id,
        quick,
    }
}

#[tokio::test]
async fn a_saga_that_finishes_young_writes_no_active_index_entry() {
    let script = Script::default();
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let store = Arc::new(MemStore::new());
    let engine = Engine::open_with_store(store.clone(), registry, config(Duration::from_secs(600)))
        .await
        .unwrap();

    let id = start_saga(&engine, &trip, &"ada".to_string()).await;
    outcome_of(&engine, id).await;

    assert!(keys_with_prefix(&store, b'A').is_empty());
    let finished = store.scan_finished().unwrap();
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].0, id);
    // Four log values (start + first intent, two results + intents, last
    // result + commit) and the finished batch: nothing else.
    assert_eq!(engine.log_stats().entries.load(Ordering::Relaxed), 5);
}

#[tokio::test]
async fn a_young_saga_in_flight_at_a_crash_is_found_from_its_log() {
    let InFlight {
        script,
        store,
        engine,
        id,
        ..
    } = saga_in_flight(Duration::from_secs(600)).await;
    engine.shutdown(Duration::ZERO).await;
    assert!(keys_with_prefix(&store, b'A').is_empty());

    script.set("hotel", Phase::Action, Behaviour::Succeed);
    let (registry, _) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = Engine::open_with_store(store.clone(), registry, config(Duration::from_secs(600)))
        .await
        .unwrap();

    assert_eq!(status_of(&engine, id).await, SagaStatus::Committed);
}

#[tokio::test]
async fn a_young_saga_is_listed_while_it_runs() {
    let InFlight {
        store, engine, id, ..
    } = saga_in_flight(Duration::from_secs(600)).await;

    let listed = engine.list(Some(SagaStatus::Running)).await.unwrap();

    assert_eq!(listed.iter().map(|l| l.saga_id).collect::<Vec<_>>(), [id]);
    assert!(keys_with_prefix(&store, b'A').is_empty());
    engine.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn a_saga_older_than_the_lag_gets_its_active_index_entry() {
    let InFlight {
        store,
        engine,
        id,
        quick,
        ..
    } = saga_in_flight(Duration::from_millis(1)).await;

    // The watermark moves when the writer commits a group: keep it busy
    // with quick sagas until it passes the hanging one (a millisecond of
    // real time; the bound only turns a bug into a failure, not a hang).
    let mut indexed = false;
    for _ in 0..100_000 {
        // The running saga can only have an active entry.
        indexed = store.read_active(id).unwrap().is_some();
        if indexed {
            break;
        }
        let bob = engine
            .start(&quick, &"bob".to_string(), StartOptions::new())
            .await
            .unwrap();
        outcome_of(&engine, bob.saga_id).await;
    }
    assert!(indexed, "the watermark never passed the running saga");

    engine.shutdown(Duration::ZERO).await;
    let report = sagalog::tools::verify(&*store).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

#[tokio::test]
async fn verify_accepts_a_young_saga_without_an_index_entry() {
    let InFlight { store, engine, .. } = saga_in_flight(Duration::from_secs(600)).await;
    engine.shutdown(Duration::ZERO).await;

    let report = sagalog::tools::verify(&*store).unwrap();

    assert!(report.is_clean(), "{:?}", report.problems);
    assert!(keys_with_prefix(&store, b'A').is_empty());
}

/// A `trip` waiting inside its hotel call (at the gate), on an engine with
/// a 200 ms lag, whose active-index entry was due in a group that failed
/// before anything of it was applied (the group that moved the watermark
/// past it).
async fn saga_whose_index_entry_was_in_a_failed_group() -> InFlight {
    let in_flight = saga_in_hotel_call(Duration::from_millis(200), Behaviour::Gate).await;
    let InFlight {
        store,
        engine,
        id,
        quick,
        ..
    } = &in_flight;
    assert!(
        store.read_active(*id).unwrap().is_none(),
        "the saga took over 200 ms to reach its hotel call, so it is indexed already"
    );
    // Real time, so that the saga is older than the lag: the next group
    // moves the watermark past it and writes its entry. That group fails.
    tokio::time::sleep(Duration::from_millis(250)).await;
    store.fail_append(store.append_count() + 1, FaultTiming::BeforeApply);
    let failed = engine
        .start(quick, &"bob".to_string(), StartOptions::new())
        .await;
    assert!(failed.is_err(), "the armed append did not fail");
    assert!(
        store.read_active(*id).unwrap().is_none(),
        "nothing was applied"
    );
    in_flight
}

#[tokio::test]
async fn a_saga_whose_index_entry_was_in_a_failed_group_is_still_listed() {
    let InFlight { engine, id, .. } = saga_whose_index_entry_was_in_a_failed_group().await;

    let listed = engine.list(Some(SagaStatus::Running)).await.unwrap();

    assert_eq!(listed.iter().map(|l| l.saga_id).collect::<Vec<_>>(), [id]);
    engine.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn a_saga_whose_index_entry_was_in_a_failed_group_is_listed_once_when_it_finishes() {
    let InFlight {
        script,
        store,
        engine,
        id,
        ..
    } = saga_whose_index_entry_was_in_a_failed_group().await;

    script.open_gate();
    assert_eq!(status_of(&engine, id).await, SagaStatus::Committed);

    let listed: Vec<SagaId> = engine
        .list(None)
        .await
        .unwrap()
        .iter()
        .map(|l| l.saga_id)
        .collect();
    assert_eq!(listed, [id]);
    assert!(store.read_active(id).unwrap().is_none());
    engine.shutdown(Duration::ZERO).await;
    let report = sagalog::tools::verify(&*store).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

//! Damaged bytes in the log: a flipped byte, a truncated value, and garbage
//! under a log key each park the affected saga with its decode error, let
//! every other saga proceed, and never panic.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

mod common;

use common::{start_saga, status_of, trip_registry, Behaviour, Script};
use sagalog::store::KvLogStore;
use sagalog::testing::log_key;
use sagalog::{Engine, EngineConfig, Error, InDoubtPolicy, Phase, SagaId, SagaStatus, SledStore};
use std::path::Path;
use std::time::Duration;

/// Leaves two sagas in flight (hotel's action hangs) and returns their ids.
/// Their logs are one value each, at seq 0: the start and flight's intent,
/// rewritten with flight's result and hotel's intent (records 2 and 3).
async fn two_sagas_in_flight(dir: &Path) -> (SagaId, SagaId) {
    two_sagas_with_input_in_flight(dir, "").await
}

/// The same, with `padding` added to each saga's input. An input over the
/// 2 KiB a log value grows to makes the start value full, so the later
/// records go to a second value at seq 2.
async fn two_sagas_with_input_in_flight(dir: &Path, padding: &str) -> (SagaId, SagaId) {
    let script = Script::default();
    script.set("hotel", Phase::Action, Behaviour::Hang);
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = Engine::open(dir, registry, EngineConfig::default())
        .await
        .unwrap();
    let a = start_saga(&engine, &trip, &format!("a{padding}")).await;
    let b = start_saga(&engine, &trip, &format!("b{padding}")).await;
    while script.count("hotel:action") < 2 {
        script.entered.notified().await;
    }
    engine.shutdown(Duration::ZERO).await;
    (a, b)
}

/// Rewrites the log value at `seq` of `saga` with `damage` applied.
fn damage_value(dir: &Path, saga: SagaId, seq: u64, damage: impl Fn(Vec<u8>) -> Vec<u8>) {
    let store = SledStore::open(dir, Default::default()).unwrap();
    let values = store.read_log(saga).unwrap();
    let (_, value) = values
        .into_iter()
        .find(|(s, _)| *s == seq)
        .expect("a value at that seq");
    store
        .overwrite_raw(&log_key(saga, seq), &damage(value))
        .unwrap();
}

async fn reopen_and_check(dir: &Path, damaged: SagaId, healthy: SagaId, seq: u64) {
    let script = Script::default();
    let (registry, _) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = Engine::open(dir, registry, EngineConfig::default())
        .await
        .unwrap();

    assert_eq!(status_of(&engine, healthy).await, SagaStatus::Committed);
    let Err(Error::Parked { reason, .. }) = engine.outcome(damaged).await else {
        panic!("the damaged saga must be parked");
    };
    assert!(
        reason
            .to_string()
            .contains(&format!("record {seq} of saga {damaged} is unreadable")),
        "{reason}"
    );
    assert_eq!(
        engine.saga(damaged).await.unwrap().status,
        SagaStatus::Suspended
    );
    let history = engine.history(damaged).await.unwrap();
    assert!(history.iter().any(|e| e.seq == seq && e.record.is_err()));
    assert!(
        history.iter().any(|e| e.record.is_ok()),
        "undamaged values stay readable"
    );
    let manual = engine.manual_queue().await.unwrap();
    assert!(manual.iter().any(|m| m.saga_id == damaged && m.parked));
    assert_eq!(
        script.calls(),
        ["hotel:action:2", "car:action:1"],
        "only the healthy saga ran"
    );
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn flipped_byte_in_a_log_value_parks_only_that_saga() {
    let dir = tempfile::tempdir().unwrap();
    let (damaged, healthy) = two_sagas_in_flight(dir.path()).await;
    // The value's last bytes are the checksummed payload of hotel's intent.
    damage_value(dir.path(), damaged, 0, |mut v| {
        let last = v.len() - 1;
        v[last] ^= 0x40;
        v
    });
    reopen_and_check(dir.path(), damaged, healthy, 3).await;
}

#[tokio::test]
async fn truncated_log_value_parks_only_that_saga() {
    let dir = tempfile::tempdir().unwrap();
    let (damaged, healthy) = two_sagas_in_flight(dir.path()).await;
    damage_value(dir.path(), damaged, 0, |mut v| {
        v.truncate(v.len() - 3);
        v
    });
    reopen_and_check(dir.path(), damaged, healthy, 3).await;
}

#[tokio::test]
async fn garbage_under_a_log_key_parks_only_that_saga() {
    let dir = tempfile::tempdir().unwrap();
    // Two values, so that the one at seq 2 is left undamaged.
    let (damaged, healthy) = two_sagas_with_input_in_flight(dir.path(), &"x".repeat(2100)).await;
    damage_value(dir.path(), damaged, 0, |_| {
        b"not a sagalog value at all".to_vec()
    });
    reopen_and_check(dir.path(), damaged, healthy, 0).await;
}

#[tokio::test]
async fn damaged_first_value_of_a_later_append_parks_with_its_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let (damaged, healthy) = two_sagas_with_input_in_flight(dir.path(), &"x".repeat(2100)).await;
    // An empty value: the shortest possible damage.
    damage_value(dir.path(), damaged, 2, |_| Vec::new());
    reopen_and_check(dir.path(), damaged, healthy, 2).await;
}

/// A kill while sled 0.34.7 writes its snapshot leaves a torn
/// `snap.<lsn>.generating` file that sled itself then refuses to open past;
/// `SledStore::open` discards it and recovers from the log.
#[tokio::test]
async fn torn_sled_snapshot_left_by_a_kill_is_discarded_and_every_saga_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_sagas_in_flight(dir.path()).await;
    let torn = dir.path().join("snap.7FFFFFFFFFFFFFFF.generating");
    std::fs::write(&torn, b"half a snapshot").unwrap();
    let raw = sled::Config::new().path(dir.path()).open();
    assert!(
        matches!(raw, Err(sled::Error::Corruption { .. })),
        "sled alone cannot open past a torn snapshot"
    );
    drop(raw);

    let script = Script::default();
    let (registry, _) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = Engine::open(dir.path(), registry, EngineConfig::default())
        .await
        .unwrap();
    for id in [a, b] {
        assert_eq!(status_of(&engine, id).await, SagaStatus::Committed);
    }
    assert!(!torn.exists());
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn verify_reports_damaged_values_and_a_log_without_an_index_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (damaged, healthy) = two_sagas_in_flight(dir.path()).await;
    damage_value(dir.path(), damaged, 0, |_| b"garbage".to_vec());
    // An id from long ago: below the index watermark, where every saga's
    // log must have an index entry.
    let stray = SagaId::from_bytes([1; 16]);
    {
        let store = SledStore::open(dir.path(), Default::default()).unwrap();
        let value = store.read_log(healthy).unwrap().remove(0).1;
        store.overwrite_raw(&log_key(stray, 0), &value).unwrap();
    }
    let store = SledStore::open(dir.path(), Default::default()).unwrap();

    let report = sagalog::tools::verify(&store).unwrap();

    let found: Vec<_> = report
        .problems
        .iter()
        .map(|p| (p.saga, p.key.clone()))
        .collect();
    assert_eq!(
        found,
        [
            (Some(stray), log_key(stray, 0)),
            (Some(damaged), log_key(damaged, 0)),
        ]
    );
    assert!(report.problems[0].error.contains("without an index entry"));
}

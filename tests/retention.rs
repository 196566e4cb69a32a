//! Retention: finished sagas are deleted after their age, with their
//! idempotency keys; sagas that are not finished are never touched.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

mod common;

use common::{outcome_of, trip_registry, Behaviour, Script};
use sagalog::store::{KvLogStore, Removal};
use sagalog::{
    CompensationStrategy, Engine, EngineConfig, Error, InDoubtPolicy, MemStore, Phase, Retention,
    SagaId, SagaStatus, StartOptions, StepError, UnixMillis,
};
use std::sync::Arc;
use std::time::Duration;

const T0: u64 = 1_800_000_000_000;
const DAY: u64 = 86_400_000;
const WEEK: Duration = Duration::from_secs(7 * 86_400);

fn config_at(start: u64) -> EngineConfig {
    EngineConfig {
        start_time: Some(UnixMillis(start)),
        ..EngineConfig::default()
    }
}

struct Fixture {
    committed: SagaId,
    compensated: SagaId,
    suspended: SagaId,
    sleeping: SagaId,
}

/// Four sagas at T0: committed and compensated (finished), one suspended
/// for an operator and one asleep on a ten-day scheduled compensation.
async fn four_sagas(store: &Arc<MemStore>) -> Fixture {
    let script = Script::default();
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = Engine::open_with_store(store.clone(), registry, config_at(T0))
        .await
        .unwrap();
    let run = |key: &'static str, strategy| {
        let (engine, trip) = (engine.clone(), trip.clone());
        async move {
            let options = StartOptions::new().idempotency_key(key).strategy(strategy);
            engine
                .start(&trip, &key.to_string(), options)
                .await
                .unwrap()
                .saga_id
        }
    };
    let committed = run("committed", CompensationStrategy::Immediate).await;
    outcome_of(&engine, committed).await;
    script.set(
        "car",
        Phase::Action,
        Behaviour::Fail(StepError::permanent("sold out")),
    );
    let compensated = run("compensated", CompensationStrategy::Immediate).await;
    outcome_of(&engine, compensated).await;
    let suspended = run("suspended", CompensationStrategy::Manual).await;
    outcome_of(&engine, suspended).await;
    let sleeping = run(
        "sleeping",
        CompensationStrategy::Scheduled { delay_ms: 10 * DAY },
    )
    .await;
    while !engine
        .delay_queue(10)
        .await
        .unwrap()
        .iter()
        .any(|d| d.saga_id == sleeping)
    {
        tokio::task::yield_now().await;
    }
    engine.shutdown(Duration::ZERO).await;
    Fixture {
        committed,
        compensated,
        suspended,
        sleeping,
    }
}

async fn reopen(store: &Arc<MemStore>, at: u64) -> (Engine, sagalog::SagaRef<String>) {
    let (registry, trip) = trip_registry(&Script::default(), InDoubtPolicy::Rerun);
    let config = EngineConfig {
        retention: None,
        ..config_at(at)
    };
    let engine = Engine::open_with_store(store.clone(), registry, config)
        .await
        .unwrap();
    (engine, trip)
}

#[tokio::test]
async fn sweep_deletes_sagas_finished_longer_ago_than_the_retention() {
    let store = Arc::new(MemStore::new());
    let f = four_sagas(&store).await;
    let (engine, _) = reopen(&store, T0 + 8 * DAY).await;

    let report = engine.sweep_finished(WEEK, 256).await.unwrap();

    assert_eq!((report.eligible, report.removed), (2, 2));
    for id in [f.committed, f.compensated] {
        assert!(matches!(engine.saga(id).await, Err(Error::NotFound(found)) if found == id));
        assert!(store.read_log(id).unwrap().is_empty());
    }
    assert_eq!(engine.list(None).await.unwrap().len(), 2);
}

#[tokio::test]
async fn sweep_never_touches_a_saga_that_is_not_finished() {
    let store = Arc::new(MemStore::new());
    let f = four_sagas(&store).await;
    let (engine, _) = reopen(&store, T0 + 8 * DAY).await;

    engine.sweep_finished(WEEK, 256).await.unwrap();

    assert_eq!(
        engine.saga(f.suspended).await.unwrap().status,
        SagaStatus::Suspended
    );
    assert_eq!(engine.manual_queue().await.unwrap()[0].saga_id, f.suspended);
    assert_eq!(engine.delay_queue(10).await.unwrap()[0].saga_id, f.sleeping);
    assert_eq!(
        engine.saga(f.sleeping).await.unwrap().status,
        SagaStatus::Compensating
    );
}

#[tokio::test]
async fn sweep_keeps_sagas_finished_more_recently_than_the_retention() {
    let store = Arc::new(MemStore::new());
    let f = four_sagas(&store).await;
    let (engine, _) = reopen(&store, T0 + 6 * DAY).await;

    let report = engine.sweep_finished(WEEK, 256).await.unwrap();

    assert_eq!(report.removed, 0);
    assert_eq!(
        engine.saga(f.committed).await.unwrap().status,
        SagaStatus::Committed
    );
}

#[tokio::test]
async fn a_swept_sagas_idempotency_key_starts_a_new_saga() {
    let store = Arc::new(MemStore::new());
    let f = four_sagas(&store).await;
    let (engine, trip) = reopen(&store, T0 + 8 * DAY).await;
    // Another input than the swept saga's: attach to it while it exists.
    let options = || {
        StartOptions::new()
            .idempotency_key("committed")
            .attach_on_conflict()
    };
    let before = engine
        .start(&trip, &"again".into(), options())
        .await
        .unwrap();
    assert_eq!((before.saga_id, before.existing), (f.committed, true));

    engine.sweep_finished(WEEK, 256).await.unwrap();
    let after = engine
        .start(&trip, &"again".into(), options())
        .await
        .unwrap();

    assert!(!after.existing);
    assert_ne!(after.saga_id, f.committed);
}

#[tokio::test]
async fn store_refuses_to_remove_a_saga_with_an_active_entry() {
    let store = Arc::new(MemStore::new());
    let f = four_sagas(&store).await;

    let removed = store
        .remove_finished(&[Removal {
            saga: f.suspended,
            idempotency_key: None,
            batches: Vec::new(),
        }])
        .unwrap();

    assert_eq!(removed.sagas, 0);
    assert!(!store.read_log(f.suspended).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_sweeper_deletes_old_finished_sagas_on_its_interval() {
    let store = Arc::new(MemStore::new());
    let f = four_sagas(&store).await;
    let (registry, _) = trip_registry(&Script::default(), InDoubtPolicy::Rerun);
    let config = EngineConfig {
        retention: Some(Retention {
            keep_finished: WEEK,
            sweep_every: Duration::from_millis(10),
            batch: 1,
        }),
        ..config_at(T0 + 8 * DAY)
    };
    let engine = Engine::open_with_store(store.clone(), registry, config)
        .await
        .unwrap();

    // Waits however long the sweeper takes; a hang fails by the harness's timeout.
    while engine.saga(f.committed).await.is_ok() || engine.saga(f.compensated).await.is_ok() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    assert_eq!(engine.list(None).await.unwrap().len(), 2);
    engine.shutdown(Duration::ZERO).await;
}

/// Commits `n` sagas and leaves one suspended in a sled database at `dir`.
async fn sled_history(dir: &std::path::Path, n: usize) -> SagaId {
    let script = Script::default();
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = Engine::open(dir, registry, EngineConfig::default())
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        let started = engine
            .start(&trip, &format!("order-{i}"), StartOptions::new())
            .await
            .unwrap();
        ids.push(started.saga_id);
    }
    for id in ids {
        outcome_of(&engine, id).await;
    }
    script.set(
        "car",
        Phase::Action,
        Behaviour::Fail(StepError::permanent("sold out")),
    );
    let options = StartOptions::new().strategy(CompensationStrategy::Manual);
    let suspended = engine
        .start(&trip, &"kept".into(), options)
        .await
        .unwrap()
        .saga_id;
    outcome_of(&engine, suspended).await;
    engine.sweep_finished(Duration::ZERO, 256).await.unwrap();
    engine.shutdown(Duration::from_secs(1)).await;
    suspended
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_returns_the_space_of_swept_sagas_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let kept = sled_history(&path, 1_000).await;

    let compacted = sagalog::SledStore::compact(&path, Default::default()).unwrap();

    assert!(
        compacted.bytes_after < compacted.bytes_before / 2,
        "{compacted:?}"
    );
    let (registry, _) = trip_registry(&Script::default(), InDoubtPolicy::Rerun);
    let engine = Engine::open(&path, registry, EngineConfig::default())
        .await
        .unwrap();
    assert_eq!(
        engine.saga(kept).await.unwrap().status,
        SagaStatus::Suspended
    );
    assert_eq!(engine.list(None).await.unwrap().len(), 1);
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_interrupted_between_its_renames_is_undone_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let kept = sled_history(&path, 10).await;
    // The state a crash leaves after the original was set aside and before
    // the copy moved in, with a half-written copy beside it.
    std::fs::rename(&path, dir.path().join("log.before-compact")).unwrap();
    std::fs::create_dir(dir.path().join("log.compacting")).unwrap();
    std::fs::write(dir.path().join("log.compacting/db"), b"half").unwrap();

    let (registry, _) = trip_registry(&Script::default(), InDoubtPolicy::Rerun);
    let engine = Engine::open(&path, registry, EngineConfig::default())
        .await
        .unwrap();

    assert_eq!(
        engine.saga(kept).await.unwrap().status,
        SagaStatus::Suspended
    );
    assert!(!dir.path().join("log.compacting").exists());
    assert!(!dir.path().join("log.before-compact").exists());
    engine.shutdown(Duration::from_secs(1)).await;
}

/// Two sagas finished in one write share one finished batch (DESIGN.md
/// §4.4); removing one rewrites the batch with the other, removing both
/// deletes it.
#[test]
fn removing_one_saga_of_a_shared_finished_batch_keeps_the_other_listed() {
    use sagalog::store::{IndexEntry, IndexSet, IndexUpdate, SagaAppend};
    use sagalog::tools::{encode_index_entry, encode_record};
    use sagalog::{Finished, Record};
    use sagalog::{SagaStatus, SagaType, UnixMillis};

    let store = MemStore::new();
    let finish = |saga: SagaId| {
        let entry = IndexEntry {
            saga_type: SagaType::new("trip"),
            status: SagaStatus::Committed,
            started_at: UnixMillis(1),
            next_wake: None,
            changed_at: UnixMillis(2),
            pending: None,
        };
        let record = Record::SagaFinished(Finished {
            status: SagaStatus::Committed,
        });
        let mut append = SagaAppend::records(
            saga,
            0,
            vec![encode_record(UnixMillis(2), &record).unwrap()],
        );
        append.index = Some(IndexUpdate {
            entry: encode_index_entry(&entry).unwrap(),
            from: None,
            to: IndexSet::Finished,
        });
        append
    };
    let (a, b) = (SagaId::new(), SagaId::new());
    store.append(&[&finish(a), &finish(b)], None).unwrap();
    let batches = store
        .scan_finished_batches(SagaId::from_bytes([0; 16]))
        .unwrap();
    assert_eq!(batches.len(), 1, "one write, one batch");
    let listed = |store: &MemStore| -> Vec<SagaId> {
        store
            .scan_finished()
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    };
    let mut both = vec![a, b];
    both.sort();
    assert_eq!(listed(&store), both);

    let removal = |saga| Removal {
        saga,
        idempotency_key: None,
        batches: vec![batches[0].id],
    };
    assert_eq!(store.remove_finished(&[removal(a)]).unwrap().sagas, 1);
    assert_eq!(listed(&store), [b]);
    assert!(store.read_log(a).unwrap().is_empty());
    assert!(!store.read_log(b).unwrap().is_empty());

    assert_eq!(store.remove_finished(&[removal(b)]).unwrap().sagas, 1);
    assert!(store
        .scan_finished_batches(SagaId::from_bytes([0; 16]))
        .unwrap()
        .is_empty());
}

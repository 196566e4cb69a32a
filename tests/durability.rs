//! What makes a write durable beyond sled's own flush (DESIGN.md §4.1): sled
//! 0.34 stores a value too large for its log segments in a `blobs/` file of
//! its own and never syncs it; the store syncs it with the log file before
//! it acknowledges the write. `kill -9` cannot show a missing sync (the
//! page cache survives it), so these tests check that the blob path is
//! taken and reads back whole across a reopen; power loss is not covered
//! here (DESIGN.md §12). A sync that fails is final: the engine reports
//! that its log takes no more writes until it is reopened.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

mod common;

use common::{open_mem, start_saga, status_of, trip_registry, Script};
use sagalog::testing::FaultTiming;
use sagalog::Record;
use sagalog::{
    Engine, EngineConfig, Error, InDoubtPolicy, MemStore, SagaStatus, StartOptions, StoreError,
};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// 300 KiB: more than sled 0.34 keeps in a log segment (128 KiB of its
/// 512 KiB segments), so the value holding it goes to a blob file.
const LARGE: usize = 300 * 1024;

fn blob_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("blobs")).map_or(0, |entries| entries.count())
}

#[tokio::test]
async fn a_saga_whose_input_sled_keeps_in_a_blob_file_reads_back_whole_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let input = "x".repeat(LARGE);
    let (registry, trip) = trip_registry(&Script::default(), InDoubtPolicy::Rerun);
    let engine = Engine::open(dir.path(), registry, EngineConfig::default())
        .await
        .unwrap();
    let id = start_saga(&engine, &trip, &input).await;
    assert_eq!(status_of(&engine, id).await, SagaStatus::Committed);
    assert!(
        blob_files(dir.path()) > 0,
        "sled wrote no blob file, so this test does not exercise blob syncing"
    );
    engine.shutdown(Duration::from_secs(1)).await;
    drop(engine);

    let (registry, _) = trip_registry(&Script::default(), InDoubtPolicy::Rerun);
    let engine = Engine::open(dir.path(), registry, EngineConfig::default())
        .await
        .unwrap();
    assert_eq!(engine.saga(id).await.unwrap().status, SagaStatus::Committed);
    let history = engine.history(id).await.unwrap();
    let Ok((_, Record::SagaStarted(started))) = &history[0].record else {
        panic!("the first record is not a readable start: {:?}", history[0]);
    };
    assert!(
        started.input.len() >= LARGE,
        "{} bytes",
        started.input.len()
    );
    assert!(history.iter().all(|entry| entry.record.is_ok()));
    engine.shutdown(Duration::from_secs(1)).await;
}

/// An engine over a store whose next append's sync fails, and the saga
/// type to start.
async fn engine_whose_next_sync_fails(store: &Arc<MemStore>) -> (Engine, sagalog::SagaRef<String>) {
    let (registry, trip) = trip_registry(&Script::default(), InDoubtPolicy::Rerun);
    let engine = open_mem(store, registry).await;
    store.fail_append(store.append_count() + 1, FaultTiming::FailedSync);
    (engine, trip)
}

#[tokio::test]
async fn after_a_failed_sync_the_engine_reports_its_log_unwritable_and_refuses_starts() {
    let store = Arc::new(MemStore::new());
    let (engine, trip) = engine_whose_next_sync_fails(&store).await;
    assert!(engine.writable().is_ok());

    let failed = engine.start(&trip, &"a".into(), StartOptions::new()).await;
    assert!(
        matches!(&failed, Err(Error::Store(StoreError::NotDurable { .. }))),
        "{failed:?}"
    );
    let Err(Error::Store(StoreError::WritesRefused { first })) = engine.writable() else {
        panic!("the engine must report that its log takes no writes");
    };
    assert!(first.contains("injected write-back failure"), "{first}");
    let refused = engine.start(&trip, &"b".into(), StartOptions::new()).await;
    assert!(
        matches!(
            &refused,
            Err(Error::Store(StoreError::WritesRefused { .. }))
        ),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_reopened_engine_takes_writes_again_after_a_failed_sync() {
    let store = Arc::new(MemStore::new());
    let (engine, trip) = engine_whose_next_sync_fails(&store).await;
    assert!(engine
        .start(&trip, &"a".into(), StartOptions::new())
        .await
        .is_err());
    engine.shutdown(Duration::ZERO).await;
    drop(engine);

    store.clear_faults(); // what reopening the database does
    let (registry, trip) = trip_registry(&Script::default(), InDoubtPolicy::Rerun);
    let engine = open_mem(&store, registry).await;
    assert!(engine.writable().is_ok());
    let id = start_saga(&engine, &trip, &"b".to_string()).await;
    assert_eq!(status_of(&engine, id).await, SagaStatus::Committed);
}

#[tokio::test]
async fn log_stats_add_up_the_flush_and_sync_time_of_every_durable_group() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, trip) = trip_registry(&Script::default(), InDoubtPolicy::Rerun);
    let engine = Engine::open(dir.path(), registry, EngineConfig::default())
        .await
        .unwrap();
    let id = start_saga(&engine, &trip, &"ada".into()).await;
    assert_eq!(status_of(&engine, id).await, SagaStatus::Committed);

    let stats = engine.log_stats();
    let total = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
    assert!(total(&stats.flushes) >= 4, "one group per durable step");
    // Each group's flush and sync are system calls on a real file.
    assert!(total(&stats.flush_nanos) >= total(&stats.flushes));
    assert!(total(&stats.sync_nanos) >= total(&stats.flushes));
    engine.shutdown(Duration::from_secs(1)).await;
}

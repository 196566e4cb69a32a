//! Real faults on PostgreSQL: the backends of the engine's connections are
//! killed (`pg_terminate_backend`) at seeded random moments while sagas
//! run. Every saga acknowledged as started finishes (committed, or
//! compensated if lost writes left one call in doubt past its retry
//! budget), nothing acknowledged is lost (a fresh engine on the same schema
//! finds every saga, terminal), and `verify` is clean. Skipped without a PostgreSQL (tests/common/pg.rs).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

mod common;

use common::{trip_registry, Script};
use sagalog::{Engine, EngineConfig, InDoubtPolicy, SagaId, SagaStatus, StartOptions};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SAGAS: usize = 600;

/// Kills every backend of sagalog's connections (application_name
/// `sagalog`) now and then, until `stop`; how many it killed.
async fn killer(url: String, seed: u64, stop: Arc<AtomicBool>, killed: Arc<AtomicU64>) {
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("the killer connects");
    tokio::spawn(connection);
    let mut state = seed;
    while !stop.load(Ordering::SeqCst) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        tokio::time::sleep(Duration::from_millis(5 + state % 25)).await;
        let rows = client
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name = 'sagalog' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .expect("the killer's query runs");
        killed.fetch_add(rows.len() as u64, Ordering::SeqCst);
    }
}

/// The saga's outcome, asking again while the database cannot answer.
async fn settled(engine: &Engine, id: SagaId) -> SagaStatus {
    loop {
        match engine.outcome(id).await {
            Ok(outcome) => return outcome.status,
            Err(sagalog::Error::Store(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("saga {id}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_finish_and_nothing_acknowledged_is_lost_while_backends_are_killed() {
    let schema = format!("faults_{}", SagaId::new().to_string().replace('-', ""));
    let Some(store) = common::pg::store_in(&schema).await else {
        return;
    };
    let url = common::pg::url().unwrap();
    let script = Script::default();
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = Engine::open_with_store(Arc::new(store), registry, EngineConfig::default())
        .await
        .unwrap();
    let (stop, killed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let kills = tokio::spawn(killer(url, 0x5eed_1234, stop.clone(), killed.clone()));

    let mut starts = Vec::new();
    for i in 0..SAGAS {
        let (engine, trip) = (engine.clone(), trip.clone());
        starts.push(tokio::spawn(async move {
            let key = format!("fault-{i}");
            loop {
                let options = StartOptions::new().idempotency_key(key.clone());
                match engine.start(&trip, &format!("guest-{i}"), options).await {
                    Ok(started) => return started.saga_id,
                    // Unknown or refused while the connection was down:
                    // the key makes the retry find the same saga.
                    Err(sagalog::Error::Store(_)) => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    Err(e) => panic!("start {i}: {e}"),
                }
            }
        }));
    }
    let mut acknowledged = HashSet::new();
    for start in starts {
        acknowledged.insert(start.await.unwrap());
    }
    // Terminal, committed or (when one call was left in doubt by lost
    // writes more often than its retry budget allows) compensated.
    for id in &acknowledged {
        let status = settled(&engine, *id).await;
        assert!(status.is_terminal(), "saga {id} is {status}");
    }
    stop.store(true, Ordering::SeqCst);
    kills.await.unwrap();
    engine.shutdown(Duration::from_secs(5)).await;
    drop(engine);

    let (registry, _) = trip_registry(&Script::default(), InDoubtPolicy::Rerun);
    let store = common::pg::store_in(&schema).await.unwrap();
    let reopened = Engine::open_with_store(Arc::new(store), registry, EngineConfig::default())
        .await
        .unwrap();
    let listed = reopened.list(None).await.unwrap();
    let found: HashSet<SagaId> = listed.iter().map(|l| l.saga_id).collect();
    let committed = listed
        .iter()
        .filter(|l| l.status == SagaStatus::Committed)
        .count();
    println!(
        "pg faults: {} backends killed, {} sagas acknowledged, {} in the log, {committed} committed, the rest compensated",
        killed.load(Ordering::SeqCst),
        acknowledged.len(),
        found.len()
    );
    assert_eq!(acknowledged.len(), SAGAS, "one saga per key");
    assert!(
        acknowledged.is_subset(&found),
        "every acknowledged saga is in the log"
    );
    assert!(listed
        .iter()
        .all(|l| matches!(l.status, SagaStatus::Committed | SagaStatus::Compensated)));
    assert!(killed.load(Ordering::SeqCst) > 0, "faults were injected");
    assert!(reopened.verify().await.unwrap().is_clean());
}

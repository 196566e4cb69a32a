//! Real faults on PostgreSQL while sagas run: the backends of the engine's
//! connections killed (`pg_terminate_backend`) at seeded random moments,
//! and the server crashed (`pg_ctl stop -m immediate`) and restarted. Every saga acknowledged as started finishes (committed, or
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
        tokio::time::sleep(Duration::from_millis(30 + state % 70)).await;
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

/// Starts `SAGAS` keyed sagas on `engine`, retrying a start that failed
/// on the store (the key finds the same saga), and waits until each is
/// terminal; the sagas acknowledged.
async fn run_workload(engine: &Engine, trip: &sagalog::SagaRef<String>) -> HashSet<SagaId> {
    let mut starts = Vec::new();
    for i in 0..SAGAS {
        let (engine, trip) = (engine.clone(), trip.clone());
        starts.push(tokio::spawn(async move {
            let key = format!("fault-{i}");
            loop {
                let options = StartOptions::new().idempotency_key(key.clone());
                match engine.start(&trip, &format!("guest-{i}"), options).await {
                    Ok(started) => return started.saga_id,
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
    // Settled: committed; or, where lost writes left one call in doubt
    // more often than its retry budget allows, compensated, or suspended
    // for an operator if its compensation ran out of budget too.
    for id in &acknowledged {
        let status = settled(engine, *id).await;
        assert!(
            status.is_terminal() || status == SagaStatus::Suspended,
            "saga {id} is {status}"
        );
    }
    acknowledged
}

/// A store in `schema` of the server at `url`.
async fn store_at(url: &str, schema: &str) -> sagalog::PgStore {
    let options = sagalog::PgOptions::default()
        .schema(schema)
        .node_id("faults")
        .take_over(true);
    sagalog::PgStore::connect(url, options).await.unwrap()
}

/// Opens a fresh engine on the schema and checks what the run left: one
/// saga per key, each acknowledged one there and settled, verify clean.
/// Returns how many committed.
async fn check_log(url: &str, schema: &str, acknowledged: &HashSet<SagaId>) -> usize {
    let (reopened, _) = trip_engine(store_at(url, schema).await).await;
    let listed = reopened.list(None).await.unwrap();
    let found: HashSet<SagaId> = listed.iter().map(|l| l.saga_id).collect();
    assert_eq!(acknowledged.len(), SAGAS, "one saga per key");
    assert!(
        acknowledged.is_subset(&found),
        "every acknowledged saga is in the log"
    );
    assert!(listed.iter().all(|l| matches!(
        l.status,
        SagaStatus::Committed | SagaStatus::Compensated | SagaStatus::Suspended
    )));
    assert!(reopened.verify().await.unwrap().is_clean());
    listed
        .iter()
        .filter(|l| l.status == SagaStatus::Committed)
        .count()
}

async fn trip_engine(store: sagalog::PgStore) -> (Engine, sagalog::SagaRef<String>) {
    let (registry, trip) = trip_registry(&Script::default(), InDoubtPolicy::Rerun);
    let engine = Engine::open_with_store(Arc::new(store), registry, EngineConfig::default())
        .await
        .unwrap();
    (engine, trip)
}

fn new_schema() -> String {
    format!("faults_{}", SagaId::new().to_string().replace('-', ""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_finish_and_nothing_acknowledged_is_lost_while_backends_are_killed() {
    let schema = new_schema();
    let Some(url) = common::pg::url_or_skip() else {
        return;
    };
    let (engine, trip) = trip_engine(store_at(&url, &schema).await).await;
    let (stop, killed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let kills = tokio::spawn(killer(
        url.clone(),
        0x5eed_1234,
        stop.clone(),
        killed.clone(),
    ));

    let acknowledged = run_workload(&engine, &trip).await;
    stop.store(true, Ordering::SeqCst);
    kills.await.unwrap();
    engine.shutdown(Duration::from_secs(5)).await;
    drop(engine);

    let committed = check_log(&url, &schema, &acknowledged).await;
    let killed = killed.load(Ordering::SeqCst);
    println!(
        "pg faults: {killed} backends killed; {} sagas acknowledged and in the log after a reopen, {committed} committed, the rest compensated or suspended; verify clean",
        acknowledged.len()
    );
    assert!(killed > 0, "faults were injected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_finish_and_nothing_acknowledged_is_lost_across_a_database_crash() {
    let Some(cluster) = common::pg::private_cluster(1).await else {
        return;
    };
    let schema = new_schema();
    let (engine, trip) = trip_engine(store_at(&cluster.url, &schema).await).await;
    let (crasher, stats) = (cluster.clone(), engine.log_stats());
    let crash = tokio::spawn(async move {
        // A quarter of the way: each saga makes four appends.
        while stats.appends.load(Ordering::SeqCst) < SAGAS as u64 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let before = stats.appends.load(Ordering::SeqCst);
        tokio::task::spawn_blocking(move || crasher.crash_and_restart(Duration::from_millis(500)))
            .await
            .unwrap();
        before
    });

    let acknowledged = run_workload(&engine, &trip).await;
    let before_crash = crash.await.unwrap();
    let appends = engine.log_stats().appends.load(Ordering::SeqCst);
    assert!(before_crash < appends, "the crash came mid-run");
    engine.shutdown(Duration::from_secs(5)).await;
    drop(engine);

    let committed = check_log(&cluster.url, &schema, &acknowledged).await;
    println!(
        "pg crash: server crashed (-m immediate) after {before_crash} of {appends} appends and restarted; {} sagas acknowledged and in the log after a reopen, {committed} committed, the rest compensated or suspended; verify clean",
        acknowledged.len()
    );
}

//! The PostgreSQL store's schema and reachability: stores that create a
//! new schema at once all open; an older schema with sagas is upgraded and
//! keeps them; a newer schema is refused and left as it
//! was; while the server is down, writes wait,
//! `writable()` says why, and they go through once it is back; a timer
//! that falls due meanwhile fires once the saga can be read again; and a
//! group's update finds saga rows by key however much the table grew
//! under the connection's cached plans; the URL's own session settings
//! apply.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

mod common;

use common::{trip_registry, Behaviour, Script};
use sagalog::{
    Engine, EngineConfig, Error, InDoubtPolicy, PgOptions, PgStore, Phase, SagaId, SagaStatus,
    StartOptions, StepError, StoreError,
};
use std::sync::Arc;
use std::time::Duration;

fn new_schema() -> String {
    format!("schema_{}", SagaId::new().to_string().replace('-', ""))
}

#[tokio::test]
async fn a_database_with_a_newer_schema_is_refused_and_left_as_it_was() {
    let schema = new_schema();
    let Some(store) = common::pg::store_in(&schema).await else {
        return;
    };
    drop(store);
    let url = common::pg::url().unwrap();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let meta = format!("{schema}.sagalog_meta");
    client
        .execute(
            &format!("UPDATE {meta} SET value = '99' WHERE key = 'schema'"),
            &[],
        )
        .await
        .unwrap();

    let opened = PgStore::connect(&url, PgOptions::default().schema(schema.clone())).await;

    assert!(
        matches!(
            opened,
            Err(StoreError::SchemaMismatch {
                found: 99,
                expected: PgStore::SCHEMA_VERSION
            })
        ),
        "{opened:?}"
    );
    let row = client
        .query_one(
            &format!("SELECT value FROM {meta} WHERE key = 'schema'"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "99", "left as it was");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_database_with_sagas_is_upgraded_and_keeps_them() {
    let schema = new_schema();
    let Some(store) = common::pg::store_in(&schema).await else {
        return;
    };
    let (engine, trip) = trip_engine(store).await;
    let id = trips(&engine, &trip, 1).await[0];
    engine.shutdown(Duration::ZERO).await;
    let url = common::pg::url().unwrap();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    // What version 2 had: no index of runnable sagas, no singleton jobs,
    // no queue of operator actions.
    client
        .batch_execute(&format!(
            "DROP INDEX {schema}.sagalog_saga_runnable;
             DROP TABLE {schema}.sagalog_singleton;
             DROP TABLE {schema}.sagalog_action_queue;
             UPDATE {schema}.sagalog_meta SET value = '2' WHERE key = 'schema'"
        ))
        .await
        .unwrap();

    let store = PgStore::connect(&url, PgOptions::default().schema(schema.clone()))
        .await
        .unwrap();

    let version = client
        .query_one(
            &format!("SELECT value FROM {schema}.sagalog_meta WHERE key = 'schema'"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        version.get::<_, String>(0),
        PgStore::SCHEMA_VERSION.to_string()
    );
    let index = client
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = $1 AND indexname = 'sagalog_saga_runnable'",
            &[&schema],
        )
        .await
        .unwrap();
    assert_eq!(index.get::<_, i64>(0), 1, "the upgrade made the index");
    let jobs = client
        .query_one(
            &format!("SELECT count(*) FROM {schema}.sagalog_singleton"),
            &[],
        )
        .await;
    assert!(jobs.is_ok(), "the upgrade made the jobs' table: {jobs:?}");
    let queue = client
        .query_one(
            &format!("SELECT count(*) FROM {schema}.sagalog_action_queue"),
            &[],
        )
        .await;
    assert!(
        queue.is_ok(),
        "the upgrade made the action queue: {queue:?}"
    );
    let (engine, _) = trip_engine(store).await;
    assert_eq!(engine.saga(id).await.unwrap().status, SagaStatus::Committed);
    engine.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_that_create_one_new_schema_at_once_all_open() {
    let Some(url) = common::pg::url_or_skip() else {
        return;
    };
    let schema = new_schema();

    let opening: Vec<_> = (0..4)
        .map(|_| {
            let (url, options) = (url.clone(), PgOptions::default().schema(schema.clone()));
            tokio::spawn(async move { PgStore::connect(&url, options).await })
        })
        .collect();

    for store in opening {
        let store = store.await.unwrap();
        assert!(store.is_ok(), "{:?}", store.err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_server_is_down_a_start_waits_and_writable_says_why() {
    let Some(cluster) = common::pg::private_cluster(2).await else {
        return;
    };
    let options = PgOptions::default().schema(new_schema());
    let store = PgStore::connect(&cluster.url, options).await.unwrap();
    let script = Script::default();
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = Engine::open_with_store(Arc::new(store), registry, EngineConfig::default())
        .await
        .unwrap();
    let down = cluster.clone();
    tokio::task::spawn_blocking(move || down.crash())
        .await
        .unwrap();

    let (starter, trip2) = (engine.clone(), trip.clone());
    let start = tokio::spawn(async move {
        starter
            .start(&trip2, &"ada".to_string(), StartOptions::new())
            .await
    });
    let mut refused = None;
    for _ in 0..200 {
        if let Err(e) = engine.writable() {
            refused = Some(e);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let back = cluster.clone();
    tokio::task::spawn_blocking(move || back.start_again())
        .await
        .unwrap();
    let started = start.await.unwrap().unwrap();
    let outcome = engine.outcome(started.saga_id).await.unwrap();

    assert!(
        matches!(refused, Some(Error::Store(StoreError::Unreachable { .. }))),
        "{refused:?}"
    );
    assert_eq!(outcome.status, SagaStatus::Committed);
    assert!(engine.writable().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_that_falls_due_while_the_server_is_down_fires_once_it_is_back() {
    let Some(cluster) = common::pg::private_cluster(3).await else {
        return;
    };
    let options = PgOptions::default().schema(new_schema());
    let store = PgStore::connect(&cluster.url, options).await.unwrap();
    let script = Script::default();
    // The second step fails once: its retry waits 100 ms on a timer.
    script.set(
        "hotel",
        Phase::Action,
        Behaviour::FailTimes(1, StepError::retryable("busy")),
    );
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = Engine::open_with_store(Arc::new(store), registry, EngineConfig::default())
        .await
        .unwrap();
    let id = engine
        .start(&trip, &"ada".to_string(), StartOptions::new())
        .await
        .unwrap()
        .saga_id;
    while !engine
        .delay_queue(10)
        .await
        .unwrap()
        .iter()
        .any(|item| item.saga_id == id)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let down = cluster.clone();
    tokio::task::spawn_blocking(move || down.crash_and_restart(Duration::from_millis(1_500)))
        .await
        .unwrap();
    let outcome = loop {
        match engine.outcome(id).await {
            Err(Error::Store(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            other => break other.unwrap(),
        }
    };

    assert_eq!(outcome.status, SagaStatus::Committed);
    assert!(engine.parked().is_empty(), "not parked for the outage");
    assert_eq!(script.count("hotel:action"), 2);
}

/// An engine on `store` that runs trips whose steps all succeed.
async fn trip_engine(store: PgStore) -> (Engine, sagalog::SagaRef<String>) {
    let (registry, trip) = trip_registry(&Script::default(), InDoubtPolicy::Rerun);
    let engine = Engine::open_with_store(Arc::new(store), registry, EngineConfig::default())
        .await
        .unwrap();
    (engine, trip)
}

/// Runs `n` trips one after another on `engine`, each to its end; their
/// ids.
async fn trips(engine: &Engine, trip: &sagalog::SagaRef<String>, n: usize) -> Vec<SagaId> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let id = engine
            .start(trip, &"guest".to_string(), StartOptions::new())
            .await
            .unwrap()
            .saga_id;
        engine.outcome(id).await.unwrap();
        ids.push(id);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_rows_are_updated_by_key_once_the_table_has_grown_under_open_connections() {
    let schema = new_schema();
    let Some(store) = common::pg::store_in(&schema).await else {
        return;
    };
    let (engine, trip) = trip_engine(store).await;
    // Enough updates while the table is small for a generic plan to be
    // made and cached by the writing connections.
    trips(&engine, &trip, 20).await;
    let url = common::pg::url().unwrap();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    const FILLER: i64 = 50_000;
    client
        .execute(
            &format!(
                "INSERT INTO {schema}.sagalog_saga
                     (saga_id, saga_type, status, finished, started_at, changed_at, entry)
                 SELECT gen_random_uuid(), 'filler', 3, true, 0, 0, '\\x00'
                 FROM generate_series(1, $1::bigint)"
            ),
            &[&FILLER],
        )
        .await
        .unwrap();

    trips(&engine, &trip, 20).await;
    engine.shutdown(Duration::ZERO).await;
    drop(engine);

    // A backend reports its counters when it ends: once every update is
    // counted, so are the writers' reads.
    let mut waits = 0;
    let (read, updated) = loop {
        let row = client
            .query_one(
                "SELECT seq_tup_read, n_tup_upd FROM pg_stat_user_tables
                 WHERE schemaname = $1 AND relname = 'sagalog_saga'",
                &[&schema],
            )
            .await
            .unwrap();
        let (read, updated): (i64, i64) = (row.get(0), row.get(1));
        if updated >= 40 {
            break (read, updated);
        }
        waits += 1;
        assert!(
            waits < 1000,
            "the writers' counters never came: {updated} updates"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        read < FILLER,
        "{updated} updates of saga rows read {read} rows by scanning the table of {FILLER}"
    );
}

#[tokio::test]
async fn the_session_settings_of_the_url_apply_to_the_store() {
    let Some(url) = common::pg::url_or_skip() else {
        return;
    };
    let separator = if url.contains('?') { '&' } else { '?' };
    let read_only = format!("{url}{separator}options=-c%20default_transaction_read_only%3Don");

    let opened = PgStore::connect(&read_only, PgOptions::default().schema(new_schema())).await;

    assert!(
        matches!(&opened, Err(StoreError::Database { reason, .. }) if reason.contains("read-only")),
        "a read-only session cannot create the tables: {opened:?}"
    );
}

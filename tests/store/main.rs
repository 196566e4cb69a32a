//! The store conformance suite: the same behaviours, through the
//! asynchronous `LogStore` boundary alone, against every store: memory,
//! sled, and a key-value store behind the boundary without its local
//! shortcuts, and PostgreSQL. Each behaviour is one test per store
//! (`mem::…`, `sled::…`, `async_only::…`, `pg::…`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/async_only.rs"]
mod async_only_store;
mod behaviours;
#[allow(dead_code)]
#[path = "../common/pg.rs"]
mod pg_server;

use sagalog::store::LogStore;
use std::sync::Arc;

/// A store under test, with whatever must live as long as it does.
pub struct Subject {
    /// The store.
    pub store: Arc<dyn LogStore>,
    _dir: Option<tempfile::TempDir>,
}

async fn mem() -> Option<Subject> {
    Some(Subject {
        store: Arc::new(sagalog::MemStore::new()),
        _dir: None,
    })
}

async fn sled() -> Option<Subject> {
    let dir = tempfile::tempdir().unwrap();
    let store = sagalog::SledStore::open(dir.path().join("log"), Default::default()).unwrap();
    Some(Subject {
        store: Arc::new(store),
        _dir: Some(dir),
    })
}

async fn async_only() -> Option<Subject> {
    Some(Subject {
        store: Arc::new(async_only_store::AsyncOnly(Arc::new(
            sagalog::MemStore::new(),
        ))),
        _dir: None,
    })
}

/// A schema of its own in the test PostgreSQL (`tests/common/pg.rs`);
/// `None` when there is none and none is required.
async fn pg() -> Option<Subject> {
    Some(Subject {
        store: Arc::new(pg_server::joined_store().await?),
        _dir: None,
    })
}

/// One module per store, each with one test per behaviour.
macro_rules! conformance {
    ($($store:ident),*) => {$(
        mod $store {
            use super::behaviours as b;

            async fn subject() -> Option<super::Subject> {
                super::$store().await
            }

            conformance!(@tests
                an_unknown_saga_has_an_empty_log,
                appends_read_back_in_sequence_order,
                a_batch_writes_every_saga_it_holds,
                a_taken_key_is_refused_with_its_owner_and_the_rest_is_written,
                the_active_entry_follows_the_status,
                active_sagas_page_in_id_order,
                timers_come_in_due_order_leaving_out_skipped_sagas,
                a_timer_scan_says_when_it_was_cut_short,
                a_deleted_timer_is_gone,
                retention_removes_a_finished_saga_with_its_key,
                retention_leaves_a_saga_that_is_not_terminal,
                a_store_of_readable_sagas_verifies_clean,
                a_damaged_value_is_reported_by_verify
            );
        }
    )*};
    (@tests $($name:ident),*) => {$(
        #[tokio::test]
        async fn $name() {
            let Some(subject) = subject().await else { return };
            b::$name(&*subject.store).await;
        }
    )*};
}

conformance!(mem, sled, async_only, pg);

/// PostgreSQL's own: the rows of one group are written by one transaction
/// (they share `xmin`) even while retention deletes through the same store.
#[tokio::test]
async fn pg_a_group_is_one_transaction_while_a_sweep_runs() {
    use sagalog::store::{LogStore, Removal, SagaAppend};
    let schema = format!("sl_{}", sagalog::SagaId::new().to_string().replace('-', ""));
    let Some(store) = pg_server::store_in(&schema).await else {
        return;
    };
    let store = pg_server::joined(store).await;
    let url = pg_server::url().unwrap();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let writers = format!(
        "SELECT count(DISTINCT x) FROM (
             SELECT xmin::text AS x FROM {schema}.sagalog_log WHERE saga_id = ANY($1)
             UNION ALL
             SELECT xmin::text FROM {schema}.sagalog_saga WHERE saga_id = ANY($1)) t"
    );
    for round in 0..100 {
        let old = sagalog::SagaId::new();
        let key = format!("old-{round}");
        behaviours::finished_with_key(&store, old, &key).await;
        let group: Vec<SagaAppend> = behaviours::ids(8)
            .into_iter()
            .map(|id| behaviours::start(id, 2))
            .collect();
        let batch: Vec<&SagaAppend> = group.iter().collect();
        let removal = [Removal {
            saga: old,
            idempotency_key: Some(key.as_str().into()),
            batches: Vec::new(),
        }];

        let (committed, removed) =
            tokio::join!(store.append(&batch), store.remove_finished(&removal));

        assert_eq!(committed.unwrap().refused, Vec::new());
        assert_eq!(removed.unwrap().sagas, 1);
        let ids: Vec<uuid::Uuid> = group
            .iter()
            .map(|a| uuid::Uuid::from_bytes(a.saga.to_bytes()))
            .collect();
        let row = client.query_one(&writers, &[&ids]).await.unwrap();
        assert_eq!(
            row.get::<_, i64>(0),
            1,
            "round {round}: the group's rows came from more than one transaction"
        );
    }
}

/// PostgreSQL's own: of two groups in flight at once that claim one key,
/// exactly one start gets it, and the other is told who holds it.
#[tokio::test]
async fn pg_one_key_claimed_by_two_groups_in_flight_goes_to_one() {
    use sagalog::store::{LogStore, Refusal};
    let Some(store) = pg_server::joined_store().await else {
        return;
    };
    for round in 0..50 {
        let key = format!("k-{round}");
        let [a, b] = [sagalog::SagaId::new(), sagalog::SagaId::new()];
        let first = behaviours::keyed(behaviours::start(a, 1), &key, 1);
        let second = behaviours::keyed(behaviours::start(b, 1), &key, 1);
        let (batch_a, batch_b) = ([&first], [&second]);
        let (x, y) = tokio::join!(store.append(&batch_a), store.append(&batch_b));
        let (x, y) = (x.unwrap().refused, y.unwrap().refused);
        let (winner, refusal) = match (x.as_slice(), y.as_slice()) {
            ([], [(0, refusal)]) => (a, refusal),
            ([(0, refusal)], []) => (b, refusal),
            other => panic!("round {round}: expected one start refused, got {other:?}"),
        };
        match refusal {
            Refusal::KeyTaken(owner) => assert_eq!(owner.saga, winner),
            other => panic!("round {round}: expected KeyTaken, got {other:?}"),
        }
        assert_eq!(
            store
                .key_claim(&key.as_str().into())
                .await
                .unwrap()
                .map(|c| c.saga),
            Some(winner)
        );
    }
}

/// PostgreSQL's own: two groups in flight that claim the same two keys,
/// listed in opposite orders, both commit (neither waits on the other in
/// a cycle), and each key has one owner.
#[tokio::test]
async fn pg_two_groups_claiming_keys_in_opposite_orders_both_commit() {
    use sagalog::store::LogStore;
    let Some(store) = pg_server::joined_store().await else {
        return;
    };
    for round in 0..50 {
        let (k1, k2) = (format!("a-{round}"), format!("b-{round}"));
        let ids = behaviours::ids(4);
        let one = [
            behaviours::keyed(behaviours::start(ids[0], 1), &k1, 1),
            behaviours::keyed(behaviours::start(ids[1], 1), &k2, 1),
        ];
        let two = [
            behaviours::keyed(behaviours::start(ids[2], 1), &k2, 1),
            behaviours::keyed(behaviours::start(ids[3], 1), &k1, 1),
        ];
        let (batch_one, batch_two) = ([&one[0], &one[1]], [&two[0], &two[1]]);
        let (x, y) = tokio::join!(store.append(&batch_one), store.append(&batch_two));
        let refused = x.unwrap().refused.len() + y.unwrap().refused.len();
        assert_eq!(refused, 2, "round {round}: each key goes to one start");
        for key in [&k1, &k2] {
            assert!(store
                .key_claim(&key.as_str().into())
                .await
                .unwrap()
                .is_some());
        }
    }
}

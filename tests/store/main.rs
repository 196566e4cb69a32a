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
        store: Arc::new(pg_server::store().await?),
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

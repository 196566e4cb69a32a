//! Where a crash test's runs keep their data: a directory (the saga log and
//! the participants' books in sled), or a directory and a fresh schema of
//! the test PostgreSQL (the log, and the books beside it in
//! `SCHEMA_ledger`). The checks read both through [`Log`] and [`calls`].

#[path = "../common/pg.rs"]
#[allow(dead_code)]
pub(super) mod pg;

use super::*;
use sagalog::store::LogStore;
use sagalog::PgOptions;
use std::collections::HashSet;
use std::sync::Arc;

/// The data of one run and its reruns.
pub(super) struct Place {
    dir: tempfile::TempDir,
    /// The server's URL and the log's schema.
    pg: Option<(String, String)>,
}

impl Place {
    /// A fresh directory.
    pub(super) fn sled() -> Place {
        Place {
            dir: tempfile::tempdir().unwrap(),
            pg: None,
        }
    }

    /// A fresh directory and schema on the test PostgreSQL; `None` (after
    /// saying so) when there is none.
    pub(super) fn postgres() -> Option<Place> {
        let url = pg::url_or_skip()?;
        let schema = format!("crash_{}", SagaId::new().to_string().replace('-', ""));
        Some(Place {
            dir: tempfile::tempdir().unwrap(),
            pg: Some((url, schema)),
        })
    }

    /// A fresh directory and schema on the server at `url`.
    pub(super) fn postgres_at(url: &str) -> Place {
        let schema = format!("crash_{}", SagaId::new().to_string().replace('-', ""));
        Place {
            dir: tempfile::tempdir().unwrap(),
            pg: Some((url.to_string(), schema)),
        }
    }

    /// The server's URL and the log's schema, for a place on PostgreSQL.
    pub(super) fn pg(&self) -> Option<(String, String)> {
        self.pg.clone()
    }

    pub(super) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The example's arguments that put its data here.
    pub(super) fn args(&self, command: &mut Command) {
        command.arg("--data-dir").arg(self.dir.path());
        if let Some((url, schema)) = &self.pg {
            command.args(["--store", url, "--schema", schema]);
        }
    }

    /// Keeps the directory for a person to inspect; where it is.
    pub(super) fn keep(self) -> String {
        let schema = self.pg.as_ref().map(|(_, s)| format!(", schema {s}"));
        format!(
            "{}{}",
            self.dir.keep().display(),
            schema.unwrap_or_default()
        )
    }
}

/// The saga log of a place, read through the async store boundary.
pub(super) struct Log {
    store: Arc<dyn LogStore>,
    runtime: tokio::runtime::Runtime,
}

impl Log {
    pub(super) fn open(place: &Place) -> Log {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store: Arc<dyn LogStore> = match &place.pg {
            None => Arc::new(
                SledStore::open(place.dir().join("log"), Default::default()).expect("log opens"),
            ),
            Some((url, schema)) => Arc::new(
                runtime
                    .block_on(sagalog::PgStore::connect(
                        url,
                        PgOptions::default().schema(schema.clone()),
                    ))
                    .expect("the log's database takes connections"),
            ),
        };
        Log { store, runtime }
    }

    /// How many sagas are not terminal.
    pub(super) fn active(&self) -> usize {
        self.runtime
            .block_on(self.store.scan_active(None, 1 << 20))
            .unwrap()
            .len()
    }

    /// The terminal sagas.
    pub(super) fn finished(&self) -> HashSet<SagaId> {
        self.runtime
            .block_on(self.store.scan_finished())
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    /// What `verify` finds in the log.
    pub(super) fn verify(&self) -> sagalog::tools::VerifyReport {
        self.runtime.block_on(self.store.verify()).unwrap()
    }

    /// A saga's records, in order.
    pub(super) fn records(&self, id: SagaId) -> Vec<Record> {
        self.runtime
            .block_on(self.store.read_log(id))
            .unwrap()
            .into_iter()
            .flat_map(|(_, value)| decode_records(&value).expect("log value decodes"))
            .map(|(_, record)| record)
            .collect()
    }
}

/// The participants' call log, oldest first, each call a JSON object with
/// `saga_id`, `step`, `phase` and `attempt`: in sled at `sled_path`
/// (`tree`, or the default tree; keys under `prefix`), or in the `call`
/// table beside the log.
pub(super) fn calls(
    place: &Place,
    sled_path: &str,
    tree: Option<&str>,
    prefix: &str,
) -> Vec<Value> {
    let Some((url, schema)) = &place.pg else {
        let db = sled::open(place.dir().join(sled_path)).expect("the books open");
        let tree = match tree {
            Some(name) => db.open_tree(name).expect("the call log opens"),
            None => (*db).clone(),
        };
        return tree
            .scan_prefix(prefix)
            .map(|item| {
                let (_, v) = item.expect("the call log reads");
                serde_json::from_slice(&v).expect("a call record is JSON")
            })
            .collect();
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("the test database takes connections");
        tokio::spawn(connection);
        client
            .query(
                &format!("SELECT record FROM {schema}_ledger.call ORDER BY id"),
                &[],
            )
            .await
            .expect("the call log reads")
            .iter()
            .map(|row| serde_json::from_str(row.get::<_, &str>(0)).expect("a call record is JSON"))
            .collect()
    })
}

//! The tables, created and migrated by sagalog itself.
//!
//! `sagalog_meta` holds `schema = N`. Connecting migrates under an advisory
//! lock, so services starting at once create the tables once, and refuses
//! a schema newer than [`SCHEMA_VERSION`].

use super::link::check_identifier;
use crate::log::store::StoreError;
use tokio_postgres::Client;

/// The version of the tables this build reads and writes.
pub const SCHEMA_VERSION: u32 = 4;

/// Version 1: the saga rows, the log, the idempotency keys.
const V1: &str = "
CREATE TABLE sagalog_saga (
    saga_id       uuid     PRIMARY KEY,
    saga_type     text     NOT NULL,
    status        smallint NOT NULL,
    finished      boolean  NOT NULL,
    started_at    bigint   NOT NULL,
    changed_at    bigint   NOT NULL,
    entry         bytea    NOT NULL,
    idem_key      text,
    timer_due     bigint,
    timer_seq     bigint,
    timer_purpose bytea
) WITH (fillfactor = 85);
CREATE INDEX sagalog_saga_active   ON sagalog_saga (saga_id) WHERE NOT finished;
CREATE INDEX sagalog_saga_finished ON sagalog_saga (changed_at) WHERE finished;
CREATE INDEX sagalog_saga_timers   ON sagalog_saga (timer_due, saga_id) WHERE timer_due IS NOT NULL;
CREATE TABLE sagalog_log (
    saga_id uuid   NOT NULL,
    seq     bigint NOT NULL,
    frames  bytea  NOT NULL,
    PRIMARY KEY (saga_id, seq)
);
CREATE TABLE sagalog_key (
    key         text   PRIMARY KEY,
    saga_id     uuid   NOT NULL,
    fingerprint bigint
);
";

/// Version 2: nodes sharing the log. Each node has a row with its lease on
/// the database's clock and its fencing token (from `sagalog_token`, which
/// only grows); each saga row names its owner; each log row the token of
/// the node that wrote it (NULL for rows written under version 1, and for
/// an operator's action written by an engine opened for administration on
/// a store that did not join).
const V2: &str = "
CREATE SEQUENCE sagalog_token;
CREATE TABLE sagalog_node (
    node_id    text        PRIMARY KEY,
    token      bigint      NOT NULL,
    state      text        NOT NULL,
    expires_at timestamptz NOT NULL,
    renewed_at timestamptz NOT NULL,
    started_at timestamptz NOT NULL,
    fenced_by  text,
    fenced_at  timestamptz,
    types      text[]      NOT NULL
);
ALTER TABLE sagalog_saga ADD COLUMN owner_node text;
ALTER TABLE sagalog_log ADD COLUMN writer bigint;
DROP INDEX sagalog_saga_timers;
CREATE INDEX sagalog_saga_timers ON sagalog_saga (owner_node, timer_due, saga_id)
    WHERE timer_due IS NOT NULL;
CREATE INDEX sagalog_saga_owned ON sagalog_saga (owner_node, saga_id) WHERE NOT finished;
";

/// Version 3: the runnable sagas in flight by owner, so that adopting a
/// batch of a dead node's runnable sagas is an index scan that stops at the
/// batch, however many of its sagas are asleep; and the jobs one node at a
/// time runs (retention), each with its holder and until when.
const V3: &str = "
CREATE INDEX sagalog_saga_runnable ON sagalog_saga (owner_node, saga_id)
    WHERE NOT finished AND timer_due IS NULL;
CREATE TABLE sagalog_singleton (
    name       text        PRIMARY KEY,
    node_id    text        NOT NULL,
    expires_at timestamptz NOT NULL
);
";

/// Version 4: operator actions queued for the node that owns their saga;
/// `done_at` is set in the transaction that writes the action's record
/// (applied, by `done_by`) or that refuses it (`refusal`).
const V4: &str = "
CREATE TABLE sagalog_action_queue (
    id        bigserial   PRIMARY KEY,
    saga_id   uuid        NOT NULL,
    action    bytea       NOT NULL,
    queued_at timestamptz NOT NULL DEFAULT now(),
    done_at   timestamptz,
    done_by   text,
    refusal   text
);
CREATE INDEX sagalog_action_queue_pending ON sagalog_action_queue (saga_id) WHERE done_at IS NULL;
";

/// The key of the advisory lock that migrations hold: nodes that start
/// together on a new database create its schema one after another
/// (`CREATE ... IF NOT EXISTS` is not safe against a concurrent create).
const MIGRATION_LOCK: i64 = 0x0073_6167_616c_6f67; // "sagalog"

/// Creates the schema and the tables if they are missing; refuses tables
/// of a newer version. One transaction, under [`MIGRATION_LOCK`].
pub(super) async fn migrate(client: &Client, schema: Option<&str>) -> Result<(), StoreError> {
    if let Some(schema) = schema {
        check_identifier(schema)?;
    }
    client
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"
        ))
        .await
        .map_err(|e| super::db_error("taking the migration lock", e))?;
    let result = create_and_upgrade(client, schema).await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    client
        .batch_execute(end)
        .await
        .map_err(|e| super::db_error("ending the migration", e))?;
    result
}

async fn create_and_upgrade(client: &Client, schema: Option<&str>) -> Result<(), StoreError> {
    if let Some(schema) = schema {
        client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .await
            .map_err(|e| super::db_error("creating the schema", e))?;
    }
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS sagalog_meta (key text PRIMARY KEY, value text NOT NULL)",
        )
        .await
        .map_err(|e| super::db_error("creating sagalog_meta", e))?;
    upgrade(client).await
}

async fn upgrade(client: &Client) -> Result<(), StoreError> {
    let row = client
        .query_opt("SELECT value FROM sagalog_meta WHERE key = 'schema'", &[])
        .await
        .map_err(|e| super::db_error("reading the schema version", e))?;
    let found: u32 = match row {
        None => 0,
        Some(row) => {
            let text: String = row.get(0);
            text.parse().map_err(|_| StoreError::Database {
                doing: "reading the schema version".into(),
                reason: format!("sagalog_meta says schema '{text}', which is not a number"),
            })?
        }
    };
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaMismatch {
            found,
            expected: SCHEMA_VERSION,
        });
    }
    if found < 1 {
        client
            .batch_execute(V1)
            .await
            .map_err(|e| super::db_error("creating the tables", e))?;
    }
    if found < 2 {
        client
            .batch_execute(V2)
            .await
            .map_err(|e| super::db_error("adding the node tables", e))?;
    }
    if found < 3 {
        client.batch_execute(V3).await.map_err(|e| {
            super::db_error(
                "adding the index of runnable sagas and the singleton jobs",
                e,
            )
        })?;
    }
    if found < 4 {
        client
            .batch_execute(V4)
            .await
            .map_err(|e| super::db_error("adding the queue of operator actions", e))?;
    }
    if found < SCHEMA_VERSION {
        client
            .execute(
                "INSERT INTO sagalog_meta (key, value) VALUES ('schema', $1)
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&SCHEMA_VERSION.to_string()],
            )
            .await
            .map_err(|e| super::db_error("writing the schema version", e))?;
        tracing::info!(
            from = found,
            to = SCHEMA_VERSION,
            "database schema migrated"
        );
    }
    Ok(())
}

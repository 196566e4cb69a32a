//! Writes: a group commit is one transaction in two pipelined round trips,
//! every statement a prepared multi-row statement over binary arrays.
//!
//! ```text
//! RT1: BEGIN, with rows found only by key when the group updates any
//!      (`BEGIN_KEYED`); check this
//!      node's token is live (FOR KEY SHARE: a fence waits for the group);
//!      claim the group's keys (INSERT .. ON CONFLICT DO NOTHING
//!      RETURNING key); insert the log rows of the appends that claim no key
//!      (.. ON CONFLICT DO NOTHING RETURNING saga_id, seq)
//! RT2: insert the log rows of the starts whose claim stood; insert the new
//!      saga rows; update the changed ones; clear and set timers; mark the
//!      queued operator actions the group carries out applied; COMMIT
//! ```
//!
//! A start whose key is taken, and an append whose log row is there
//! already, are left out of RT2 and refused. A connection lost before
//! COMMIT was sent aborts the transaction on the server: the write is
//! retried on a new connection, with backoff, for as long as the database
//! is unreachable. A connection lost after it is [`StoreError::Ambiguous`].

use super::link::{Conn, Link};
use super::{db_error, node, saga_id, to_i64, uuid};
use crate::ids::SagaId;
use crate::log::codec;
use crate::log::store::{
    Claim, Committed, IndexEntry, IndexSet, KeyClaim, Lease, Refusal, Removal, Removed, SagaAppend,
    StoreError, WriteTimes,
};
use crate::status::SagaStatus;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio_postgres::types::ToSql;

/// Begins a write: every row its statements touch is found by its key.
/// The cost model would choose a hash join over a full scan of
/// `sagalog_saga` for a group's updates while the table is small, and a
/// connection keeps the generic plan it made then as the table grows
/// (until autovacuum's next ANALYZE), so that every group reads the
/// whole table. The settings end with the transaction, and the
/// statements that find rows (the updates, the deletes) run under no
/// others, so their cached plans are these. A group that updates nothing
/// begins plainly: the settings cost about 40 µs a transaction.
/// (`plan_cache_mode = force_custom_plan` also keeps plans current, but
/// planning each statement costs a fifth of the rate at one in flight.)
pub(super) const BEGIN_KEYED: &str = "BEGIN; SET LOCAL enable_seqscan = off;
    SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off";
const CLAIM: &str = "INSERT INTO sagalog_key (key, saga_id, fingerprint)
    SELECT * FROM unnest($1::text[], $2::uuid[], $3::int8[])
    ON CONFLICT (key) DO NOTHING RETURNING key";
const OWNERS: &str = "SELECT key, saga_id, fingerprint FROM sagalog_key WHERE key = ANY($1)";
const LOG_NEW: &str = "INSERT INTO sagalog_log (saga_id, seq, frames, writer)
    SELECT *, $4::int8 FROM unnest($1::uuid[], $2::int8[], $3::bytea[])
    ON CONFLICT (saga_id, seq) DO NOTHING RETURNING saga_id, seq";
const LOG_STARTS: &str = "INSERT INTO sagalog_log (saga_id, seq, frames, writer)
    SELECT *, $4::int8 FROM unnest($1::uuid[], $2::int8[], $3::bytea[])";
const SAGAS_NEW: &str = "INSERT INTO sagalog_saga
    (saga_id, saga_type, status, finished, started_at, changed_at, entry, idem_key, owner_node)
    SELECT *, $9::text FROM unnest($1::uuid[], $2::text[], $3::int2[], $4::bool[], $5::int8[],
                                   $6::int8[], $7::bytea[], $8::text[])";
const SAGAS_CHANGED: &str = "UPDATE sagalog_saga t
    SET status = u.status, finished = u.finished, changed_at = u.changed_at, entry = u.entry
    FROM unnest($1::uuid[], $2::int2[], $3::bool[], $4::int8[], $5::bytea[])
         AS u(saga_id, status, finished, changed_at, entry)
    WHERE t.saga_id = u.saga_id";
const TIMERS_CLEARED: &str = "UPDATE sagalog_saga t
    SET timer_due = NULL, timer_seq = NULL, timer_purpose = NULL
    FROM unnest($1::uuid[], $2::int8[]) AS u(saga_id, seq)
    WHERE t.saga_id = u.saga_id AND t.timer_seq = u.seq";
const TIMERS_SET: &str = "UPDATE sagalog_saga t
    SET timer_due = u.due, timer_seq = u.seq, timer_purpose = u.purpose
    FROM unnest($1::uuid[], $2::int8[], $3::int8[], $4::bytea[]) AS u(saga_id, due, seq, purpose)
    WHERE t.saga_id = u.saga_id";
/// Marks the queued operator actions an append carries out as applied by
/// node `$2`, in the append's transaction.
const QUEUE_APPLIED: &str = "UPDATE sagalog_action_queue SET done_at = now(), done_by = $2
    WHERE id = ANY($1) AND done_at IS NULL";
const REMOVE_SAGAS: &str = "DELETE FROM sagalog_saga WHERE saga_id = ANY($1) AND finished
    RETURNING saga_id, idem_key";
const REMOVE_LOGS: &str = "DELETE FROM sagalog_log WHERE saga_id = ANY($1)";
const REMOVE_QUEUED: &str = "DELETE FROM sagalog_action_queue WHERE saga_id = ANY($1)";
const REMOVE_KEYS: &str = "DELETE FROM sagalog_key WHERE key = ANY($1) AND saga_id = ANY($2)";

/// The statements the writing connection prepares.
pub(super) const STATEMENTS: &[&str] = &[
    node::LIVE,
    node::NOT_LIVE,
    node::FENCE_CANDIDATES,
    node::FENCE,
    node::ADOPT_RUNNABLE,
    node::ADOPT_ASLEEP,
    node::TAKE,
    node::SINGLETON,
    node::OWNER,
    node::RELEASE,
    node::LEFT,
    CLAIM,
    OWNERS,
    LOG_NEW,
    LOG_STARTS,
    SAGAS_NEW,
    SAGAS_CHANGED,
    TIMERS_CLEARED,
    TIMERS_SET,
    QUEUE_APPLIED,
    super::queue::QUEUE,
    super::queue::REFUSE,
    REMOVE_SAGAS,
    REMOVE_LOGS,
    REMOVE_QUEUED,
    REMOVE_KEYS,
];

/// The status as stored: its place in [`SagaStatus::ALL`] (DESIGN.md §9).
pub(super) fn status_code(status: SagaStatus) -> i16 {
    SagaStatus::ALL
        .iter()
        .position(|s| *s == status)
        .map_or(-1, |i| i as i16)
}

/// Why one attempt at a transaction did not commit.
enum Failure {
    /// Nothing was committed and trying again may work (the connection was
    /// lost before COMMIT was sent, or the server asked for a retry).
    Retry(String),
    /// The connection was lost after COMMIT was sent.
    Ambiguous(String),
    /// Nothing was committed, and trying again will not help.
    Failed(StoreError),
    /// Nothing was committed: another node fenced this one.
    Fenced,
}

/// Where in a transaction an error came back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum At {
    /// The first round trip: nothing can have committed.
    First,
    /// A statement of the second round trip, before its COMMIT.
    Second,
    /// The COMMIT itself.
    Commit,
}

/// Sorts an error of a transaction by where it came back.
fn classify(doing: &str, e: tokio_postgres::Error, at: At) -> Failure {
    let why = super::link::describe(&e);
    match e.as_db_error().map(|db| db.code().code()) {
        // The server rolled the transaction back and asks for a retry.
        Some("40001" | "40P01") => Failure::Retry(why),
        // The server ended the session: at a statement before COMMIT, so
        // COMMIT never ran; during COMMIT, it may have.
        Some(code) if super::link::ends_session(code) => match at {
            At::Commit => Failure::Ambiguous(why),
            At::First | At::Second => Failure::Retry(why),
        },
        Some(_) => Failure::Failed(db_error(doing, e)),
        // The connection broke without an answer: after the second round
        // trip was sent, COMMIT may have run.
        None => match at {
            At::First => Failure::Retry(why),
            At::Second | At::Commit => Failure::Ambiguous(why),
        },
    }
}

/// Writes `batch` in one transaction (see the module docs).
pub(super) async fn append(
    link: &Link,
    lease: Option<&Lease>,
    batch: &[&SagaAppend],
) -> Result<Committed, StoreError> {
    let group = Group::of(batch, lease)?;
    let mut wait = Duration::from_millis(50);
    loop {
        let conn = link.conn_waiting().await;
        let began = Instant::now();
        match group.attempt(&conn).await {
            Ok(refused) => {
                link.reached();
                let times = WriteTimes {
                    apply: began.elapsed(),
                    ..WriteTimes::default()
                };
                return Ok(Committed { times, refused });
            }
            Err(failure) => {
                let _ = conn.client.batch_execute("ROLLBACK").await;
                match failure {
                    Failure::Failed(e) => return Err(e),
                    Failure::Fenced => {
                        let Some(lease) = lease else {
                            return Err(StoreError::Backend(
                                "a fence check ran for a store that has not joined".into(),
                            ));
                        };
                        return Err(node::lost(
                            lease,
                            "the database refused a group commit: another node fenced this one",
                        ));
                    }
                    Failure::Ambiguous(why) => {
                        link.lost(why.clone());
                        return Err(StoreError::Ambiguous(why));
                    }
                    Failure::Retry(why) => {
                        tracing::warn!(reason = %why, "group commit did not commit; retrying");
                        link.lost(why);
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    }
}

/// One append's rows, decoded once.
struct Row<'a> {
    append: &'a SagaAppend,
    /// The index entry, decoded for the saga row's columns.
    entry: Option<IndexEntry>,
}

/// A batch ready to be written.
struct Group<'a> {
    rows: Vec<Row<'a>>,
    /// The writing node's lease (none for a store that has not joined),
    /// and its id and token as stored.
    lease: Option<&'a Lease>,
    node: Option<&'a str>,
    token: Option<i64>,
}

/// Column arrays for one multi-row statement, built for one set of appends;
/// they borrow the batch's bytes.
#[derive(Default)]
struct Logs<'a> {
    ids: Vec<uuid::Uuid>,
    seqs: Vec<i64>,
    frames: Vec<&'a [u8]>,
    /// Position in the batch of each row.
    at: Vec<usize>,
}

impl<'a> Group<'a> {
    fn of(batch: &[&'a SagaAppend], lease: Option<&'a Lease>) -> Result<Self, StoreError> {
        let rows = batch
            .iter()
            .map(|append| {
                let entry = match &append.index {
                    None => None,
                    Some(index) => Some(
                        codec::decode_index_entry::<IndexEntry>(&index.entry).map_err(|e| {
                            StoreError::Corrupt {
                                key: append.saga.to_bytes().to_vec(),
                                reason: format!("the index entry to write does not decode: {e}"),
                            }
                        })?,
                    ),
                };
                Ok(Row { append, entry })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Group {
            rows,
            lease,
            node: lease.map(Lease::node_id),
            token: lease.map(|lease| to_i64(lease.token())),
        })
    }

    fn logs(&self, pick: impl Fn(usize, &Row) -> bool) -> Logs<'_> {
        let mut logs = Logs::default();
        for (at, row) in self.rows.iter().enumerate() {
            if row.append.writes_log_value() && pick(at, row) {
                logs.ids.push(uuid(row.append.saga));
                logs.seqs.push(to_i64(row.append.first_seq));
                logs.frames.push(row.append.added());
                logs.at.push(at);
            }
        }
        logs
    }

    /// One attempt: the refused appends on commit.
    async fn attempt(&self, conn: &Conn) -> Result<Vec<(usize, Refusal)>, Failure> {
        let client = &conn.client;
        let statement = |sql| conn.statement(sql).map_err(Failure::Failed);
        let fail = |doing: &'static str| move |e| classify(doing, e, At::First);

        // RT1: BEGIN, the claims, the log rows of appends without a claim.
        // The claims go in key order: two groups in flight that claim the
        // same keys then wait for each other in one order, never in a cycle.
        let mut claims: Vec<(&Claim, SagaId, usize)> = (self.rows.iter().enumerate())
            .filter_map(|(at, row)| Some((row.append.claim.as_ref()?, row.append.saga, at)))
            .collect();
        claims.sort_unstable_by(|a, b| a.0.key.as_str().cmp(b.0.key.as_str()));
        let (mut keys, mut key_ids, mut prints, mut claim_at) = (vec![], vec![], vec![], vec![]);
        for (claim, saga, at) in claims {
            keys.push(claim.key.as_str());
            key_ids.push(uuid(saga));
            prints.push(to_i64(claim.fingerprint));
            claim_at.push(at);
        }
        let plain = self.logs(|_, row| row.append.claim.is_none());
        let updates = self.rows.iter().any(|row| {
            let append = row.append;
            append.index.as_ref().is_some_and(|i| i.from.is_some())
                || append.timer_delete.is_some()
                || append.timer_put.is_some()
                || !append.applies.is_empty()
        });
        let begin = client.batch_execute(if updates { BEGIN_KEYED } else { "BEGIN" });
        let live = async {
            if self.lease.is_none() {
                return Ok(true);
            }
            let params: [&(dyn ToSql + Sync); 2] = [&self.node, &self.token];
            client
                .query(statement(node::LIVE)?, &params)
                .await
                .map(|rows| !rows.is_empty())
                .map_err(fail("checking this node's lease"))
        };
        let claim = async {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let params: [&(dyn ToSql + Sync); 3] = [&keys, &key_ids, &prints];
            client
                .query(statement(CLAIM)?, &params)
                .await
                .map_err(fail("claiming idempotency keys"))
        };
        let log = async {
            if plain.ids.is_empty() {
                return Ok(Vec::new());
            }
            let params: [&(dyn ToSql + Sync); 4] =
                [&plain.ids, &plain.seqs, &plain.frames, &self.token];
            client
                .query(statement(LOG_NEW)?, &params)
                .await
                .map_err(fail("appending to the log"))
        };
        let (began, live, claimed, logged) = tokio::join!(begin, live, claim, log);
        began.map_err(fail("beginning a transaction"))?;
        if !live? {
            return Err(Failure::Fenced);
        }
        let (claimed, logged) = (claimed?, logged?);

        let mut refused: Vec<(usize, Refusal)> = Vec::new();
        let won: HashSet<String> = claimed.iter().filter_map(|r| r.try_get(0).ok()).collect();
        let lost: Vec<&str> = keys.iter().copied().filter(|k| !won.contains(*k)).collect();
        if !lost.is_empty() {
            let owners = client
                .query(statement(OWNERS)?, &[&lost])
                .await
                .map_err(fail("reading who holds the taken keys"))?;
            let owners: HashMap<String, KeyClaim> = owners
                .iter()
                .filter_map(|row| {
                    let key: String = row.try_get(0).ok()?;
                    let id: uuid::Uuid = row.try_get(1).ok()?;
                    let print: Option<i64> = row.try_get(2).ok()?;
                    Some((
                        key,
                        KeyClaim {
                            saga: saga_id(id),
                            fingerprint: print.map(super::to_u64),
                        },
                    ))
                })
                .collect();
            for (&key, at) in keys.iter().zip(&claim_at) {
                if let (false, Some(owner)) = (won.contains(key), owners.get(key)) {
                    refused.push((*at, Refusal::KeyTaken(*owner)));
                } else if !won.contains(key) {
                    // Taken and gone again within the transaction: a
                    // retention sweep raced it. Retry the whole group.
                    return Err(Failure::Retry(format!(
                        "idempotency key '{key}' changed hands during the write"
                    )));
                }
            }
        }
        let written: HashSet<(uuid::Uuid, i64)> = logged
            .iter()
            .filter_map(|row| Some((row.try_get(0).ok()?, row.try_get(1).ok()?)))
            .collect();
        for (i, at) in plain.at.iter().enumerate() {
            if !written.contains(&(plain.ids[i], plain.seqs[i])) {
                refused.push((*at, Refusal::Conflict));
            }
        }
        refused.sort_by_key(|(at, _)| *at);
        let out: HashSet<usize> = refused.iter().map(|(at, _)| *at).collect();

        // RT2: the rest, and COMMIT.
        let starts = self.logs(|at, row| row.append.claim.is_some() && !out.contains(&at));
        let mut new = NewSagas::default();
        let mut changed = Changed::default();
        let (mut cleared_ids, mut cleared_seqs) = (vec![], vec![]);
        let mut set = TimersSet::default();
        let mut applies: Vec<i64> = Vec::new();
        for (at, row) in self.rows.iter().enumerate() {
            if out.contains(&at) {
                continue;
            }
            applies.extend(row.append.applies.iter().map(|id| to_i64(*id)));
            let id = uuid(row.append.saga);
            if let (Some(index), Some(entry)) = (&row.append.index, &row.entry) {
                let finished = index.to == IndexSet::Finished;
                if index.from.is_none() {
                    new.ids.push(id);
                    new.types.push(entry.saga_type.as_str());
                    new.statuses.push(status_code(entry.status));
                    new.finished.push(finished);
                    new.started.push(to_i64(entry.started_at.0));
                    new.changed.push(to_i64(entry.changed_at.0));
                    new.entries.push(&index.entry);
                    new.keys
                        .push(row.append.claim.as_ref().map(|c| c.key.as_str()));
                } else {
                    changed.ids.push(id);
                    changed.statuses.push(status_code(entry.status));
                    changed.finished.push(finished);
                    changed.changed.push(to_i64(entry.changed_at.0));
                    changed.entries.push(&index.entry);
                }
            }
            if let Some(timer) = &row.append.timer_delete {
                cleared_ids.push(id);
                cleared_seqs.push(to_i64(timer.seq));
            }
            if let Some((timer, purpose)) = &row.append.timer_put {
                set.ids.push(id);
                set.dues.push(to_i64(timer.due.0));
                set.seqs.push(to_i64(timer.seq));
                set.purposes.push(purpose);
            }
        }
        let fail2 = |doing: &'static str| move |e| classify(doing, e, At::Second);
        let starts_logged = async {
            if starts.ids.is_empty() {
                return Ok(0);
            }
            let params: [&(dyn ToSql + Sync); 4] =
                [&starts.ids, &starts.seqs, &starts.frames, &self.token];
            client
                .execute(statement(LOG_STARTS)?, &params)
                .await
                .map_err(fail2("appending starts to the log"))
        };
        let inserted = async {
            if new.ids.is_empty() {
                return Ok(0);
            }
            let params: [&(dyn ToSql + Sync); 9] = [
                &new.ids,
                &new.types,
                &new.statuses,
                &new.finished,
                &new.started,
                &new.changed,
                &new.entries,
                &new.keys,
                &self.node,
            ];
            client
                .execute(statement(SAGAS_NEW)?, &params)
                .await
                .map_err(fail2("inserting saga rows"))
        };
        let updated = async {
            if changed.ids.is_empty() {
                return Ok(0);
            }
            let params: [&(dyn ToSql + Sync); 5] = [
                &changed.ids,
                &changed.statuses,
                &changed.finished,
                &changed.changed,
                &changed.entries,
            ];
            client
                .execute(statement(SAGAS_CHANGED)?, &params)
                .await
                .map_err(fail2("updating saga rows"))
        };
        let timers_cleared = async {
            if cleared_ids.is_empty() {
                return Ok(0);
            }
            let params: [&(dyn ToSql + Sync); 2] = [&cleared_ids, &cleared_seqs];
            client
                .execute(statement(TIMERS_CLEARED)?, &params)
                .await
                .map_err(fail2("clearing timers"))
        };
        let timers_set = async {
            if set.ids.is_empty() {
                return Ok(0);
            }
            let params: [&(dyn ToSql + Sync); 4] = [&set.ids, &set.dues, &set.seqs, &set.purposes];
            client
                .execute(statement(TIMERS_SET)?, &params)
                .await
                .map_err(fail2("setting timers"))
        };
        let applied = async {
            if applies.is_empty() {
                return Ok(0);
            }
            let params: [&(dyn ToSql + Sync); 2] = [&applies, &self.node];
            client
                .execute(statement(QUEUE_APPLIED)?, &params)
                .await
                .map_err(fail2("marking queued operator actions applied"))
        };
        let commit = client.batch_execute("COMMIT");
        let (a, b, c, d, e, f, committed) = tokio::join!(
            starts_logged,
            inserted,
            updated,
            timers_cleared,
            timers_set,
            applied,
            commit
        );
        a?;
        b?;
        c?;
        d?;
        e?;
        f?;
        committed.map_err(|e| classify("committing", e, At::Commit))?;
        Ok(refused)
    }
}

#[derive(Default)]
struct NewSagas<'a> {
    ids: Vec<uuid::Uuid>,
    types: Vec<&'a str>,
    statuses: Vec<i16>,
    finished: Vec<bool>,
    started: Vec<i64>,
    changed: Vec<i64>,
    entries: Vec<&'a [u8]>,
    keys: Vec<Option<&'a str>>,
}

#[derive(Default)]
struct Changed<'a> {
    ids: Vec<uuid::Uuid>,
    statuses: Vec<i16>,
    finished: Vec<bool>,
    changed: Vec<i64>,
    entries: Vec<&'a [u8]>,
}

#[derive(Default)]
struct TimersSet<'a> {
    ids: Vec<uuid::Uuid>,
    dues: Vec<i64>,
    seqs: Vec<i64>,
    purposes: Vec<&'a [u8]>,
}

/// Deletes finished sagas in one transaction (two round trips): their
/// rows (re-checking `finished`), then their logs and keys.
pub(super) async fn remove_finished(
    link: &Link,
    lease: Option<&Lease>,
    sagas: &[Removal],
) -> Result<Removed, StoreError> {
    if sagas.is_empty() {
        return Ok(Removed::default());
    }
    let conn = link.conn().await?;
    let result = remove(&conn, lease, sagas).await;
    if result.is_err() {
        let _ = conn.client.batch_execute("ROLLBACK").await;
    }
    result
}

async fn remove(
    conn: &Conn,
    lease: Option<&Lease>,
    sagas: &[Removal],
) -> Result<Removed, StoreError> {
    let client = &conn.client;
    let doing = "deleting finished sagas";
    let ids: Vec<uuid::Uuid> = sagas.iter().map(|r| uuid(r.saga)).collect();
    let params: [&(dyn ToSql + Sync); 1] = [&ids];
    let live_check = conn.statement(node::LIVE)?;
    let live = async {
        let Some(lease) = lease else {
            return Ok(true);
        };
        let token = to_i64(lease.token());
        let me: [&(dyn ToSql + Sync); 2] = [&lease.node_id(), &token];
        client
            .query(live_check, &me)
            .await
            .map(|rows| !rows.is_empty())
    };
    let (began, live, deleted) = tokio::join!(
        client.batch_execute(BEGIN_KEYED),
        live,
        client.query(conn.statement(REMOVE_SAGAS)?, &params)
    );
    began.map_err(|e| db_error(doing, e))?;
    if !live.map_err(|e| db_error(doing, e))? {
        if let Some(lease) = lease {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(node::lost(
                lease,
                "the database refused a retention sweep: another node fenced this one",
            ));
        }
    }
    let deleted = deleted.map_err(|e| db_error(doing, e))?;
    let mut gone: Vec<uuid::Uuid> = Vec::with_capacity(deleted.len());
    let mut keys: Vec<String> = Vec::new();
    for row in &deleted {
        gone.push(row.try_get(0).map_err(|e| db_error(doing, e))?);
        if let Some(key) = row
            .try_get::<_, Option<String>>(1)
            .map_err(|e| db_error(doing, e))?
        {
            keys.push(key);
        }
    }
    let logs_params: [&(dyn ToSql + Sync); 1] = [&gone];
    let keys_params: [&(dyn ToSql + Sync); 2] = [&keys, &gone];
    let (logs, queued, keys_removed, committed) = tokio::join!(
        client.execute(conn.statement(REMOVE_LOGS)?, &logs_params),
        client.execute(conn.statement(REMOVE_QUEUED)?, &logs_params),
        client.execute(conn.statement(REMOVE_KEYS)?, &keys_params),
        client.batch_execute("COMMIT")
    );
    let logs = logs.map_err(|e| db_error(doing, e))?;
    queued.map_err(|e| db_error(doing, e))?;
    let keys_removed = keys_removed.map_err(|e| db_error(doing, e))?;
    committed.map_err(|e| db_error(doing, e))?;
    Ok(Removed {
        sagas: gone.len() as u64,
        keys: logs + keys_removed + gone.len() as u64,
    })
}

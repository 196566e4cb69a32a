//! Reads: one prepared statement each, on the reading connection.

use super::link::Link;
use super::{db_error, saga_id, to_u64, uuid};
use crate::ids::{IdempotencyKey, SagaId, UnixMillis};
use crate::log::store::{IndexQuery, KeyClaim, StoreError, TimerKey, TimerScan};
use std::collections::HashSet;

const LOG: &str = "SELECT seq, frames FROM sagalog_log WHERE saga_id = $1 ORDER BY seq";
const ACTIVE: &str = "SELECT entry FROM sagalog_saga WHERE saga_id = $1 AND NOT finished";
const ACTIVE_PAGE: &str = "SELECT saga_id, entry FROM sagalog_saga
    WHERE NOT finished AND ($1::uuid IS NULL OR saga_id > $1) ORDER BY saga_id LIMIT $2";
const FINISHED: &str = "SELECT saga_id, entry FROM sagalog_saga WHERE finished ORDER BY saga_id";
const KEY: &str = "SELECT saga_id, fingerprint FROM sagalog_key WHERE key = $1";
/// A listing's filter ([`IndexQuery`]) pushed down: every parameter is
/// optional; `$3` is true when the status asked for is `Suspended`, which
/// the parked sagas (`$4`) count as.
const MATCHING: &str = "SELECT saga_id, entry FROM sagalog_saga
    WHERE ($1::uuid IS NULL OR saga_id > $1)
      AND ($2::smallint IS NULL
           OR ($3 AND (status = $2 OR saga_id = ANY($4)))
           OR (NOT $3 AND status = $2 AND saga_id <> ALL($4)))
      AND ($5::text IS NULL OR saga_type = $5)
      AND ($6::bigint IS NULL OR started_at >= $6)
      AND ($7::bigint IS NULL OR started_at < $7)
      AND ($8::bigint IS NULL OR (NOT finished AND started_at <= $8))
    ORDER BY saga_id LIMIT $9";
const TIMERS: &str = "SELECT saga_id, timer_due, timer_seq, timer_purpose FROM sagalog_saga
    WHERE timer_due IS NOT NULL AND saga_id <> ALL($1)
    ORDER BY timer_due, saga_id, timer_seq LIMIT $2";
/// The timers of one node's sagas.
const TIMERS_OWNED: &str = "SELECT saga_id, timer_due, timer_seq, timer_purpose FROM sagalog_saga
    WHERE owner_node = $3 AND timer_due IS NOT NULL AND saga_id <> ALL($1)
    ORDER BY timer_due, saga_id, timer_seq LIMIT $2";
const OWNED_PAGE: &str = "SELECT saga_id, entry FROM sagalog_saga
    WHERE owner_node = $3 AND NOT finished AND ($1::uuid IS NULL OR saga_id > $1)
    ORDER BY saga_id LIMIT $2";

/// How many times a read that lost its connection is tried on a new one
/// before its error is returned.
const READ_ATTEMPTS: usize = 5;

/// The statements the reading connection prepares.
/// Every node with its lease (milliseconds left, negative once expired)
/// and the unfinished sagas it owns.
const NODES: &str = "SELECT n.node_id, n.token, n.state,
        (extract(epoch FROM (n.expires_at - now())) * 1000)::bigint,
        (extract(epoch FROM (now() - n.renewed_at)) * 1000)::bigint,
        n.fenced_by, n.types,
        (SELECT count(*) FROM sagalog_saga s WHERE s.owner_node = n.node_id AND NOT s.finished)
    FROM sagalog_node n ORDER BY n.node_id";
/// The owner node of each unfinished saga in `$1` that has one.
const OWNERS: &str = "SELECT saga_id, owner_node FROM sagalog_saga
    WHERE saga_id = ANY($1) AND owner_node IS NOT NULL AND NOT finished";
const UNOWNED: &str = "SELECT count(*) FROM sagalog_saga WHERE NOT finished AND owner_node IS NULL";

pub(super) const STATEMENTS: &[&str] = &[
    LOG,
    ACTIVE,
    ACTIVE_PAGE,
    OWNED_PAGE,
    FINISHED,
    KEY,
    TIMERS,
    TIMERS_OWNED,
    MATCHING,
    NODES,
    OWNERS,
    UNOWNED,
    super::queue::PENDING,
    super::queue::OUTCOME,
];

/// Runs prepared statement `sql` with `params` on the reading connection.
pub(super) async fn query(
    link: &Link,
    sql: &'static str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    doing: &str,
) -> Result<Vec<tokio_postgres::Row>, StoreError> {
    // A read changes nothing, so one that lost its connection is simply
    // made again on a new one, a few times.
    let mut wait = std::time::Duration::from_millis(20);
    for _ in 0..READ_ATTEMPTS {
        let conn = link.conn().await?;
        let statement = conn.statement(sql)?;
        match conn.client.query(statement, params).await {
            Ok(rows) => return Ok(rows),
            Err(e) if super::link::connection_lost(&e) => {
                link.lost(super::link::describe(&e));
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(e) => return Err(db_error(doing, e)),
        }
    }
    let conn = link.conn().await?;
    let statement = conn.statement(sql)?;
    let rows = conn.client.query(statement, params).await;
    rows.map_err(|e| db_error(doing, e))
}

/// A non-negative count as a `LIMIT`.
fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Reads column `i` of `row`, with a typed error if it does not fit.
pub(super) fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    i: usize,
    doing: &str,
) -> Result<T, StoreError> {
    row.try_get(i).map_err(|e| db_error(doing, e))
}

pub(super) async fn log(link: &Link, saga: SagaId) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let doing = "reading a saga's log";
    let rows = query(link, LOG, &[&uuid(saga)], doing).await?;
    rows.iter()
        .map(|row| {
            let seq: i64 = get(row, 0, doing)?;
            Ok((to_u64(seq), get(row, 1, doing)?))
        })
        .collect()
}

pub(super) async fn active(link: &Link, saga: SagaId) -> Result<Option<Vec<u8>>, StoreError> {
    let doing = "reading a saga's index entry";
    let rows = query(link, ACTIVE, &[&uuid(saga)], doing).await?;
    rows.first().map(|row| get(row, 0, doing)).transpose()
}

fn entries(
    rows: &[tokio_postgres::Row],
    doing: &str,
) -> Result<Vec<(SagaId, Vec<u8>)>, StoreError> {
    rows.iter()
        .map(|row| {
            let id: uuid::Uuid = get(row, 0, doing)?;
            Ok((saga_id(id), get(row, 1, doing)?))
        })
        .collect()
}

pub(super) async fn active_page(
    link: &Link,
    after: Option<SagaId>,
    n: usize,
) -> Result<Vec<(SagaId, Vec<u8>)>, StoreError> {
    let doing = "listing the sagas in flight";
    let after = after.map(uuid);
    let rows = query(link, ACTIVE_PAGE, &[&after, &limit(n)], doing).await?;
    entries(&rows, doing)
}

/// Like [`active_page`], only the sagas `owner` owns.
pub(super) async fn owned_page(
    link: &Link,
    after: Option<SagaId>,
    n: usize,
    owner: &str,
) -> Result<Vec<(SagaId, Vec<u8>)>, StoreError> {
    let doing = "listing this node's sagas in flight";
    let after = after.map(uuid);
    let rows = query(link, OWNED_PAGE, &[&after, &limit(n), &owner], doing).await?;
    entries(&rows, doing)
}

pub(super) async fn finished(link: &Link) -> Result<Vec<(SagaId, Vec<u8>)>, StoreError> {
    let doing = "listing the finished sagas";
    let rows = query(link, FINISHED, &[], doing).await?;
    entries(&rows, doing)
}

/// The entries `q` accepts, filtered by the database.
pub(super) async fn matching(
    link: &Link,
    q: &IndexQuery,
) -> Result<Vec<(SagaId, Vec<u8>)>, StoreError> {
    let doing = "listing the sagas that match a filter";
    let millis = |t: Option<UnixMillis>| t.map(|t| i64::try_from(t.0).unwrap_or(i64::MAX));
    let status = q.status.map(super::write::status_code);
    let suspended = q.status == Some(crate::status::SagaStatus::Suspended);
    let parked: Vec<uuid::Uuid> = q.parked.iter().copied().map(uuid).collect();
    let after = q.after.map(uuid);
    let (from, before, since) = (
        millis(q.started_from),
        millis(q.started_before),
        millis(q.unfinished_since),
    );
    let n = limit(q.limit.unwrap_or(usize::MAX));
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 9] = [
        &after,
        &status,
        &suspended,
        &parked,
        &q.saga_type,
        &from,
        &before,
        &since,
        &n,
    ];
    let rows = query(link, MATCHING, &params, doing).await?;
    entries(&rows, doing)
}

pub(super) async fn key_claim(
    link: &Link,
    key: &IdempotencyKey,
) -> Result<Option<KeyClaim>, StoreError> {
    let doing = "reading an idempotency key";
    let rows = query(link, KEY, &[&key.as_str()], doing).await?;
    rows.first()
        .map(|row| {
            let id: uuid::Uuid = get(row, 0, doing)?;
            let fingerprint: Option<i64> = get(row, 1, doing)?;
            Ok(KeyClaim {
                saga: saga_id(id),
                fingerprint: fingerprint.map(to_u64),
            })
        })
        .transpose()
}

/// The owner node of each of `sagas` that has one.
pub(super) async fn owners(
    link: &Link,
    sagas: &[SagaId],
) -> Result<Vec<(SagaId, String)>, StoreError> {
    let doing = "reading the owners of sagas";
    let ids: Vec<uuid::Uuid> = sagas.iter().map(|s| uuid(*s)).collect();
    query(link, OWNERS, &[&ids], doing)
        .await?
        .iter()
        .map(|row| {
            let id: uuid::Uuid = get(row, 0, doing)?;
            Ok((saga_id(id), get(row, 1, doing)?))
        })
        .collect()
}

/// The first `n` timers in due order, leaving out `skip`: those of the
/// sagas `owner` owns, or every saga's without one.
pub(super) async fn timers(
    link: &Link,
    n: usize,
    skip: &HashSet<SagaId>,
    owner: Option<&str>,
) -> Result<TimerScan, StoreError> {
    let doing = "reading the delay queue";
    let skip: Vec<uuid::Uuid> = skip.iter().copied().map(uuid).collect();
    let n1 = limit(n.saturating_add(1));
    let rows = match owner {
        Some(owner) => query(link, TIMERS_OWNED, &[&skip, &n1, &owner], doing).await?,
        None => query(link, TIMERS, &[&skip, &n1], doing).await?,
    };
    let complete = rows.len() <= n;
    let timers = rows
        .iter()
        .take(n)
        .map(|row| {
            let id: uuid::Uuid = get(row, 0, doing)?;
            let due: i64 = get(row, 1, doing)?;
            let seq: Option<i64> = get(row, 2, doing)?;
            let purpose: Option<Vec<u8>> = get(row, 3, doing)?;
            let key = TimerKey {
                due: UnixMillis(to_u64(due)),
                saga: saga_id(id),
                seq: to_u64(seq.unwrap_or_default()),
            };
            Ok((key, purpose.unwrap_or_default()))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok((timers, complete))
}

/// The nodes of the log, and the unfinished sagas no node owns.
pub(super) async fn nodes(link: &Link) -> Result<(Vec<NodeStatus>, u64), StoreError> {
    let doing = "listing the nodes";
    let rows = query(link, NODES, &[], doing).await?;
    let mut nodes = Vec::with_capacity(rows.len());
    for row in &rows {
        let token: i64 = get(row, 1, doing)?;
        let in_flight: i64 = get(row, 7, doing)?;
        nodes.push(NodeStatus {
            node_id: get(row, 0, doing)?,
            token: to_u64(token),
            state: get(row, 2, doing)?,
            expires_in_ms: get(row, 3, doing)?,
            renewed_ms_ago: get(row, 4, doing)?,
            fenced_by: get(row, 5, doing)?,
            saga_types: get(row, 6, doing)?,
            in_flight: to_u64(in_flight),
        });
    }
    let unowned: i64 = get(&query(link, UNOWNED, &[], doing).await?[0], 0, doing)?;
    Ok((nodes, to_u64(unowned)))
}

/// One node of a log several nodes share, as `sagalog_node` holds it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct NodeStatus {
    /// The node's id.
    pub node_id: String,
    /// Its fencing token: a later incarnation of an id has a larger one.
    pub token: u64,
    /// `live`, `dead` (fenced by another node) or `left` (shut down).
    pub state: String,
    /// Milliseconds until its lease expires on the database's clock;
    /// negative once it has.
    pub expires_in_ms: i64,
    /// Milliseconds since its last renewal.
    pub renewed_ms_ago: i64,
    /// The node that fenced it, for a dead node.
    pub fenced_by: Option<String>,
    /// The saga types it runs.
    pub saga_types: Vec<String>,
    /// Unfinished sagas it owns: a dead or departed node's are adopted by
    /// the live nodes.
    pub in_flight: u64,
}

//! This process as a node of a shared log: its row in `sagalog_node`, the
//! lease renewed on the database's clock, fencing nodes whose lease
//! expired, adopting their sagas, and leaving.
//!
//! ```text
//! join:   BEGIN; SELECT .. FROM sagalog_node WHERE node_id = $me FOR UPDATE
//!         (waits for the groups of an earlier incarnation); a new id is
//!         INSERTed with token = nextval('sagalog_token'), a known one whose
//!         lease has expired or ended gets a new token; one still live is
//!         waited for (or taken over, with `take_over`); COMMIT
//! renew:  every ttl/4, UPDATE .. SET expires_at = now() + ttl
//!         WHERE node_id = $me AND token = $tok AND state = 'live'
//!         (no row: fenced)
//! fence:  SELECT .. WHERE state = 'live' AND expires_at < now() FOR UPDATE
//!         (waits for their groups in flight); UPDATE .. SET state = 'dead'
//! adopt:  this node's row FOR KEY SHARE (still live), the rows of nodes not
//!         live FOR SHARE (none re-registers meanwhile), then UPDATE
//!         sagalog_saga SET owner_node = $me over a batch picked
//!         FOR UPDATE SKIP LOCKED, runnable sagas first: of this node's
//!         types, or of a type no live node runs (this node parks those,
//!         where an operator sees them)
//! leave:  owner_node = NULL on this node's unfinished sagas, state = 'left'
//! ```
//!
//! The renewals run on a thread of their own, with a runtime and a
//! connection of their own: a busy service or a test's paused clock never
//! delays them.

use super::link::{Conn, Link};
use super::{db_error, saga_id, to_i64, to_u64, uuid, PgOptions};
use crate::ids::{SagaId, SagaType, UnixMillis};
use crate::log::store::{Adopted, Lease, StoreError, TimerKey};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::Config;

const RENEW: &str = "UPDATE sagalog_node
    SET expires_at = now() + $3::bigint * interval '1 millisecond', renewed_at = now()
    WHERE node_id = $1 AND token = $2 AND state = 'live'";
pub(super) const FENCE_CANDIDATES: &str = "SELECT node_id, token FROM sagalog_node
    WHERE state = 'live' AND expires_at < now() AND node_id <> $1
    ORDER BY node_id FOR UPDATE";
pub(super) const FENCE: &str =
    "UPDATE sagalog_node SET state = 'dead', fenced_by = $1, fenced_at = now()
    WHERE node_id = ANY($2) AND state = 'live'";
/// The fence check every transaction of this node makes first: it waits
/// for a fence in progress, and finds no row once one has committed.
pub(super) const LIVE: &str =
    "SELECT 1 FROM sagalog_node WHERE node_id = $1 AND token = $2 AND state = 'live' FOR KEY SHARE";
pub(super) const NOT_LIVE: &str =
    "SELECT node_id FROM sagalog_node WHERE state <> 'live' FOR SHARE";
/// Adoption takes, in one statement, up to `$3` sagas that nobody owns
/// and up to `$3` of the nodes in `$4` (fenced or departed), of the types
/// in `$2` or of a type no live node runs. Each half is an index scan that
/// stops at its limit (no ORDER BY: a sort would read every candidate, so
/// a batch would cost as much as the whole backlog); `SKIP LOCKED` lets
/// adopters share the backlog. Runnable sagas are taken first
/// (`sagalog_saga_runnable`), then those asleep (`sagalog_saga_timers`).
macro_rules! adopt {
    ($which:literal) => {
        concat!(
            "WITH unowned AS (SELECT saga_id FROM sagalog_saga c
                 WHERE owner_node IS NULL AND NOT finished AND ",
            $which,
            "
                   AND (saga_type = ANY($2) OR NOT EXISTS (SELECT 1 FROM sagalog_node n
                        WHERE n.state = 'live' AND n.expires_at >= now()
                          AND c.saga_type = ANY(n.types)))
                 LIMIT $3 FOR UPDATE SKIP LOCKED),
             orphaned AS (SELECT saga_id FROM sagalog_saga c
                 WHERE owner_node = ANY($4::text[]) AND NOT finished AND ",
            $which,
            "
                   AND (saga_type = ANY($2) OR NOT EXISTS (SELECT 1 FROM sagalog_node n
                        WHERE n.state = 'live' AND n.expires_at >= now()
                          AND c.saga_type = ANY(n.types)))
                 LIMIT $3 FOR UPDATE SKIP LOCKED)
             UPDATE sagalog_saga s SET owner_node = $1
             FROM (SELECT saga_id FROM unowned UNION ALL SELECT saga_id FROM orphaned) p
             WHERE s.saga_id = p.saga_id
             RETURNING s.saga_id, s.entry, s.timer_due, s.timer_seq"
        )
    };
}
pub(super) const ADOPT_RUNNABLE: &str = adopt!("timer_due IS NULL");
pub(super) const ADOPT_ASLEEP: &str = adopt!("timer_due IS NOT NULL");
/// Takes or keeps job `$1` for node `$2` until `$3` ms from now: free,
/// already this node's, expired, or held by a node that is not live.
pub(super) const SINGLETON: &str = "INSERT INTO sagalog_singleton AS j (name, node_id, expires_at)
    VALUES ($1, $2, now() + $3::bigint * interval '1 millisecond')
    ON CONFLICT (name) DO UPDATE SET node_id = EXCLUDED.node_id, expires_at = EXCLUDED.expires_at
    WHERE j.node_id = EXCLUDED.node_id OR j.expires_at < now()
       OR NOT EXISTS (SELECT 1 FROM sagalog_node n WHERE n.node_id = j.node_id AND n.state = 'live')
    RETURNING node_id";

/// An operator's action makes the acting node the saga's owner, unless a
/// live node owns it (a finished saga being reopened goes to the actor).
pub(super) const TAKE: &str = "UPDATE sagalog_saga SET owner_node = $1
    WHERE saga_id = $2
      AND (finished OR owner_node IS NULL OR owner_node = $1
           OR owner_node IN (SELECT node_id FROM sagalog_node WHERE state <> 'live'))
    RETURNING saga_id";
pub(super) const OWNER: &str = "SELECT owner_node FROM sagalog_saga WHERE saga_id = $1";
pub(super) const RELEASE: &str =
    "UPDATE sagalog_saga SET owner_node = NULL WHERE owner_node = $1 AND NOT finished";
pub(super) const LEFT: &str =
    "UPDATE sagalog_node SET state = 'left' WHERE node_id = $1 AND token = $2";

/// This store's membership, once it joined.
pub(super) struct Joined {
    pub(super) lease: Arc<Lease>,
    /// The saga types this node runs, as stored.
    types: Vec<String>,
    /// Stops the renewing thread when dropped.
    _renewer: tokio_util::sync::DropGuard,
}

/// A random node id: `host-pid-random`, readable in listings.
fn random_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    let suffix = crate::ids::SagaId::new().to_string();
    let tail = &suffix[suffix.len() - 8..];
    format!("{host}-{}-{tail}", std::process::id())
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Registers this process as a node (see the module docs) and starts
/// renewing its lease.
pub(super) async fn join(
    link: &Link,
    config: &Config,
    options: &PgOptions,
    types: &[SagaType],
) -> Result<Joined, StoreError> {
    let node = options.node_id.clone().unwrap_or_else(random_id);
    let ttl = options.lease_ttl;
    let types: Vec<String> = types.iter().map(|t| t.as_str().to_string()).collect();
    let give_up = Instant::now() + ttl * 2 + options.connect_timeout;
    let (token, sent) = loop {
        let conn = link.conn().await?;
        let sent = Instant::now();
        match register(&conn, &node, ttl, &types, options.take_over).await {
            Ok(Some(token)) => break (token, sent),
            Ok(None) if Instant::now() < give_up => {
                tracing::warn!(node = %node, "the node id is held by a live lease; waiting for it to expire");
                tokio::time::sleep(ttl / 4).await;
            }
            Ok(None) => {
                return Err(StoreError::Database {
                    doing: "joining the log as a node".into(),
                    reason: format!("node id '{node}' is held by another live process, whose lease kept being renewed; give each process its own node id"),
                })
            }
            Err(e) => {
                let _ = conn.client.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        }
    };
    let lease = Arc::new(Lease::granted(node.clone(), token, ttl, sent));
    metrics::gauge!(crate::metrics::LEASE_HELD).set(1.0);
    tracing::info!(node = %node, token, ttl_ms = millis(ttl), "joined the log as a node");
    let stop = tokio_util::sync::CancellationToken::new();
    spawn_renewer(config.clone(), options.clone(), lease.clone(), stop.clone())?;
    Ok(Joined {
        lease,
        types,
        _renewer: stop.drop_guard(),
    })
}

/// One attempt at registering: the new token, or `None` while another
/// live process holds the id.
async fn register(
    conn: &Conn,
    node: &str,
    ttl: Duration,
    types: &[String],
    take_over: bool,
) -> Result<Option<u64>, StoreError> {
    let doing = "joining the log as a node";
    let fail = |e| db_error(doing, e);
    let client = &conn.client;
    client.batch_execute("BEGIN").await.map_err(fail)?;
    let row = client
        .query_opt(
            "SELECT state = 'live' AND expires_at >= now() FROM sagalog_node
             WHERE node_id = $1 FOR UPDATE",
            &[&node],
        )
        .await
        .map_err(fail)?;
    let ttl = millis(ttl);
    let token: i64 = match row {
        Some(row) if !take_over && row.try_get::<_, bool>(0).map_err(fail)? => {
            client.batch_execute("ROLLBACK").await.map_err(fail)?;
            return Ok(None);
        }
        Some(_) => client
            .query_one(
                "UPDATE sagalog_node SET token = nextval('sagalog_token'), state = 'live',
                     expires_at = now() + $2::bigint * interval '1 millisecond', renewed_at = now(),
                     started_at = now(), fenced_by = NULL, fenced_at = NULL, types = $3
                 WHERE node_id = $1 RETURNING token",
                &[&node, &ttl, &types],
            )
            .await
            .map_err(fail)?
            .try_get(0)
            .map_err(fail)?,
        None => client
            .query_one(
                "INSERT INTO sagalog_node
                     (node_id, token, state, expires_at, renewed_at, started_at, types)
                 VALUES ($1, nextval('sagalog_token'), 'live',
                         now() + $2::bigint * interval '1 millisecond', now(), now(), $3)
                 RETURNING token",
                &[&node, &ttl, &types],
            )
            .await
            .map_err(fail)?
            .try_get(0)
            .map_err(fail)?,
    };
    client.batch_execute("COMMIT").await.map_err(fail)?;
    Ok(Some(to_u64(token)))
}

/// Renews `lease` every quarter of its ttl on a thread of its own, until
/// `stop` is cancelled or the lease is lost.
fn spawn_renewer(
    config: Config,
    options: PgOptions,
    lease: Arc<Lease>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), StoreError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Backend(format!("cannot build the lease runtime: {e}")))?;
    std::thread::Builder::new()
        .name("sagalog-lease".into())
        .spawn(move || runtime.block_on(renew_until_lost(config, options, lease, stop)))
        .map_err(|e| StoreError::Backend(format!("cannot start the lease thread: {e}")))?;
    Ok(())
}

async fn renew_until_lost(
    config: Config,
    options: PgOptions,
    lease: Arc<Lease>,
    stop: tokio_util::sync::CancellationToken,
) {
    let every = lease.ttl() / 4;
    let ttl = millis(lease.ttl());
    let token = to_i64(lease.token());
    let mut link = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        if lease.is_lost() {
            return;
        }
        if link.is_none() {
            link = Link::open(config.clone(), &options, "lease", &[RENEW])
                .await
                .ok();
        }
        let Some(open) = &link else {
            lease.missed("the database cannot be reached to renew the lease");
            continue;
        };
        let sent = Instant::now();
        let renewed = match open.conn().await {
            Ok(conn) => match conn.statement(RENEW) {
                Ok(statement) => conn
                    .client
                    .execute(statement, &[&lease.node_id(), &token, &ttl])
                    .await
                    .map_err(|e| super::link::describe(&e)),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        match renewed {
            Ok(1) => lease.renewed(sent),
            Ok(_) => {
                lease.lose(
                    "another node fenced this one: its lease row has a newer token or is not live"
                        .into(),
                );
                return;
            }
            Err(why) => {
                if let Some(open) = &link {
                    open.lost(why.clone());
                }
                lease.missed(&why);
            }
        }
    }
}

/// Refuses the transaction unless this node is still live: the first
/// statement of each transaction it writes.
pub(super) fn fenced(lease: &Lease) -> StoreError {
    StoreError::Fenced {
        node: lease.node_id().to_string(),
        reason: "the database has no live lease of this token".into(),
    }
}

/// Fences the nodes whose lease expired, then adopts up to `limit` sagas
/// (see the module docs). One transaction each.
pub(super) async fn adopt(
    link: &Link,
    joined: &Joined,
    limit: usize,
) -> Result<Vec<Adopted>, StoreError> {
    let conn = link.conn().await?;
    or_roll_back(&conn, fence_expired(&conn, joined).await).await?;
    or_roll_back(&conn, adopt_batch(&conn, joined, limit).await).await
}

/// `result` of a transaction on `conn`, which is rolled back if it failed
/// midway (so that the connection is clean for the next one).
async fn or_roll_back<T>(conn: &Conn, result: Result<T, StoreError>) -> Result<T, StoreError> {
    if result.is_err() {
        let _ = conn.client.batch_execute("ROLLBACK").await;
    }
    result
}

/// Begins a transaction of this node that first checks its token is still
/// live ([`LIVE`]: it waits for a fence in progress). `false`, with the
/// transaction rolled back, once another node has fenced this one.
async fn begin_live(conn: &Conn, joined: &Joined, doing: &str) -> Result<bool, StoreError> {
    let fail = |e| db_error(doing, e);
    let (me, token) = (joined.lease.node_id(), to_i64(joined.lease.token()));
    conn.client.batch_execute("BEGIN").await.map_err(fail)?;
    let live = conn
        .client
        .query(conn.statement(LIVE)?, &[&me, &token])
        .await
        .map_err(fail)?;
    if live.is_empty() {
        conn.client.batch_execute("ROLLBACK").await.map_err(fail)?;
    }
    Ok(!live.is_empty())
}

/// Ends `lease`, whose node another node fenced (`why`: what the database
/// refused); the error to return.
pub(super) fn lost(lease: &Lease, why: &str) -> StoreError {
    lease.lose(why.into());
    fenced(lease)
}

async fn fence_expired(conn: &Conn, joined: &Joined) -> Result<(), StoreError> {
    let doing = "fencing nodes whose lease expired";
    let fail = |e| db_error(doing, e);
    let client = &conn.client;
    let me = joined.lease.node_id();
    // A node stopped inside a transaction holds its row until the server
    // ends that session (idle_in_transaction_session_timeout): give up
    // waiting for it, and try again at the next scan.
    let wait = millis(joined.lease.ttl() / 4).max(100);
    client
        .batch_execute(&format!("BEGIN; SET LOCAL lock_timeout = {wait}"))
        .await
        .map_err(fail)?;
    let rows = client
        .query(conn.statement(FENCE_CANDIDATES)?, &[&me])
        .await
        .map_err(fail)?;
    let mut dead: Vec<String> = Vec::with_capacity(rows.len());
    for row in &rows {
        dead.push(row.try_get(0).map_err(fail)?);
    }
    if !dead.is_empty() {
        client
            .execute(conn.statement(FENCE)?, &[&me, &dead])
            .await
            .map_err(fail)?;
    }
    client.batch_execute("COMMIT").await.map_err(fail)?;
    for node in &dead {
        tracing::warn!(node = %node, by = %me, "fenced a node whose lease expired");
    }
    Ok(())
}

async fn adopt_batch(
    conn: &Conn,
    joined: &Joined,
    limit: usize,
) -> Result<Vec<Adopted>, StoreError> {
    let doing = "adopting sagas";
    let fail = |e| db_error(doing, e);
    let client = &conn.client;
    let me = joined.lease.node_id();
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    if !begin_live(conn, joined, doing).await? {
        return Err(lost(&joined.lease, "another node fenced this one"));
    }
    let gone = client
        .query(conn.statement(NOT_LIVE)?, &[])
        .await
        .map_err(fail)?;
    let mut gone_ids: Vec<String> = Vec::with_capacity(gone.len());
    for row in &gone {
        gone_ids.push(row.try_get(0).map_err(fail)?);
    }
    let mut rows = client
        .query(
            conn.statement(ADOPT_RUNNABLE)?,
            &[&me, &joined.types, &limit, &gone_ids],
        )
        .await
        .map_err(fail)?;
    let room = limit - i64::try_from(rows.len()).unwrap_or(i64::MAX);
    if room > 0 {
        rows.extend(
            client
                .query(
                    conn.statement(ADOPT_ASLEEP)?,
                    &[&me, &joined.types, &room, &gone_ids],
                )
                .await
                .map_err(fail)?,
        );
    }
    client.batch_execute("COMMIT").await.map_err(fail)?;
    let mut adopted = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: uuid::Uuid = row.try_get(0).map_err(fail)?;
        let due: Option<i64> = row.try_get(2).map_err(fail)?;
        let seq: Option<i64> = row.try_get(3).map_err(fail)?;
        let saga = saga_id(id);
        adopted.push(Adopted {
            saga,
            entry: row.try_get(1).map_err(fail)?,
            timer: match (due, seq) {
                (Some(due), Some(seq)) => Some(TimerKey {
                    due: UnixMillis(to_u64(due)),
                    saga,
                    seq: to_u64(seq),
                }),
                _ => None,
            },
        });
    }
    if !adopted.is_empty() {
        metrics::counter!(crate::metrics::SAGAS_ADOPTED).increment(adopted.len() as u64);
        tracing::info!(node = %me, sagas = adopted.len(), "adopted sagas");
    }
    Ok(adopted)
}

/// Makes this node saga `saga`'s owner unless a live node owns it; that
/// node, if one does.
pub(super) async fn take(
    link: &Link,
    joined: &Joined,
    saga: SagaId,
) -> Result<Option<String>, StoreError> {
    let conn = link.conn().await?;
    or_roll_back(&conn, take_one(&conn, joined, saga).await).await
}

async fn take_one(
    conn: &Conn,
    joined: &Joined,
    saga: SagaId,
) -> Result<Option<String>, StoreError> {
    let doing = "taking a saga over for an operator's action";
    let fail = |e| db_error(doing, e);
    let client = &conn.client;
    let me = joined.lease.node_id();
    let id = uuid(saga);
    if !begin_live(conn, joined, doing).await? {
        return Err(lost(&joined.lease, "another node fenced this one"));
    }
    client
        .query(conn.statement(NOT_LIVE)?, &[])
        .await
        .map_err(fail)?;
    let taken = client
        .query(conn.statement(TAKE)?, &[&me, &id])
        .await
        .map_err(fail)?;
    let owner = match taken.is_empty() {
        false => None,
        true => client
            .query_opt(conn.statement(OWNER)?, &[&id])
            .await
            .map_err(fail)?
            .map(|row| row.try_get::<_, Option<String>>(0))
            .transpose()
            .map_err(fail)?
            .flatten(),
    };
    client.batch_execute("COMMIT").await.map_err(fail)?;
    Ok(owner)
}

/// Whether this node holds job `name` for the next `ttl` (see
/// [`SINGLETON`]).
pub(super) async fn hold_singleton(
    link: &Link,
    joined: &Joined,
    name: &str,
    ttl: Duration,
) -> Result<bool, StoreError> {
    let conn = link.conn().await?;
    let me = joined.lease.node_id();
    let held = conn
        .client
        .query(conn.statement(SINGLETON)?, &[&name, &me, &millis(ttl)])
        .await
        .map_err(|e| db_error("taking a job only one node runs", e))?;
    Ok(!held.is_empty())
}

/// Hands this node's unfinished sagas over and ends its lease.
pub(super) async fn leave(link: &Link, joined: &Joined) -> Result<(), StoreError> {
    let conn = link.conn().await?;
    or_roll_back(&conn, release(&conn, joined).await).await
}

async fn release(conn: &Conn, joined: &Joined) -> Result<(), StoreError> {
    let doing = "leaving the log";
    let fail = |e| db_error(doing, e);
    let client = &conn.client;
    let me = joined.lease.node_id();
    let token = to_i64(joined.lease.token());
    if !begin_live(conn, joined, doing).await? {
        // Fenced already: the sagas are someone else's to adopt.
        return Ok(());
    }
    let released = client
        .execute(conn.statement(RELEASE)?, &[&me])
        .await
        .map_err(fail)?;
    client
        .execute(conn.statement(LEFT)?, &[&me, &token])
        .await
        .map_err(fail)?;
    client.batch_execute("COMMIT").await.map_err(fail)?;
    joined.lease.left();
    tracing::info!(node = %me, sagas = released, "left the log; its sagas are handed over");
    Ok(())
}

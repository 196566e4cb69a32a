//! The queue of operator actions for the node that owns their saga
//! (`sagalog_action_queue`): any node (or the command line) inserts one;
//! the owner reads the pending ones of its sagas after each renewal and
//! marks each applied in the transaction that writes its record
//! (`write::QUEUE_APPLIED`), or refuses it. A node that adopts the saga
//! finds the pending ones in its place, so each is carried out once.

use super::link::Link;
use super::read::get;
use super::{db_error, saga_id, to_i64, to_u64, uuid};
use crate::ids::SagaId;
use crate::log::store::{Lease, QueuedAction, QueuedOutcome, StoreError};

/// Queues action `$2` on saga `$1` (on the writing connection).
pub(super) const QUEUE: &str =
    "INSERT INTO sagalog_action_queue (saga_id, action) VALUES ($1, $2) RETURNING id";
/// Refuses queued action `$1` as node `$2` with reason `$3`, if it is still
/// pending and the node (with token `$4`) is live.
pub(super) const REFUSE: &str = "UPDATE sagalog_action_queue
    SET done_at = now(), done_by = $2, refusal = $3
    WHERE id = $1 AND done_at IS NULL
      AND EXISTS (SELECT 1 FROM sagalog_node WHERE node_id = $2 AND token = $4 AND state = 'live')";
/// The pending actions on sagas node `$1` owns (on the reading connection).
pub(super) const PENDING: &str = "SELECT q.id, q.saga_id, q.action FROM sagalog_action_queue q
    JOIN sagalog_saga s ON s.saga_id = q.saga_id
    WHERE q.done_at IS NULL AND s.owner_node = $1 ORDER BY q.id LIMIT $2";
/// What became of queued action `$1` (on the reading connection).
pub(super) const OUTCOME: &str =
    "SELECT done_at IS NOT NULL, done_by, refusal FROM sagalog_action_queue WHERE id = $1";

pub(super) async fn queue(link: &Link, saga: SagaId, action: &[u8]) -> Result<u64, StoreError> {
    let doing = "queueing an operator action";
    let writer = link.conn().await?;
    let statement = writer.statement(QUEUE)?;
    let row = writer
        .client
        .query_one(statement, &[&uuid(saga), &action])
        .await
        .map_err(|e| db_error(doing, e))?;
    let id: i64 = get(&row, 0, doing)?;
    Ok(to_u64(id))
}

pub(super) async fn pending(
    reader: &Link,
    node: &str,
    limit: usize,
) -> Result<Vec<QueuedAction>, StoreError> {
    let doing = "reading the queued operator actions";
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    super::read::query(reader, PENDING, &[&node, &limit], doing)
        .await?
        .iter()
        .map(|row| {
            let id: i64 = get(row, 0, doing)?;
            let saga: uuid::Uuid = get(row, 1, doing)?;
            let action: Vec<u8> = get(row, 2, doing)?;
            Ok(QueuedAction::new(to_u64(id), saga_id(saga), action))
        })
        .collect()
}

pub(super) async fn outcome(reader: &Link, id: u64) -> Result<QueuedOutcome, StoreError> {
    let doing = "reading what became of a queued operator action";
    let rows = super::read::query(reader, OUTCOME, &[&to_i64(id)], doing).await?;
    let Some(row) = rows.first() else {
        return Err(StoreError::Database {
            doing: doing.into(),
            reason: format!("no queued action {id} (deleted with its saga?)"),
        });
    };
    let done: bool = get(row, 0, doing)?;
    let node: Option<String> = get(row, 1, doing)?;
    let refusal: Option<String> = get(row, 2, doing)?;
    Ok(match (done, refusal) {
        (false, _) => QueuedOutcome::Pending,
        (true, None) => QueuedOutcome::Applied {
            node: node.unwrap_or_default(),
        },
        (true, Some(reason)) => QueuedOutcome::Refused {
            node: node.unwrap_or_default(),
            reason,
        },
    })
}

pub(super) async fn refuse(
    link: &Link,
    lease: &Lease,
    id: u64,
    reason: &str,
) -> Result<(), StoreError> {
    let doing = "refusing a queued operator action";
    let writer = link.conn().await?;
    let statement = writer.statement(REFUSE)?;
    writer
        .client
        .execute(
            statement,
            &[
                &to_i64(id),
                &lease.node_id(),
                &reason,
                &to_i64(lease.token()),
            ],
        )
        .await
        .map_err(|e| db_error(doing, e))?;
    Ok(())
}

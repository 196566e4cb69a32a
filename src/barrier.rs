//! A participant barrier (like DTM's sub-transaction barrier or Seata's TCC
//! fence): it makes a participant's try/confirm/cancel — or a saga step's
//! action/compensation — safe against what a durable orchestrator does to
//! it: calling it again, calling the undo of a call that never arrived, and
//! delivering a late call after its undo.
//!
//! A [`Barrier`] keeps one record per (saga, branch, phase) in the
//! participant's own sled tree, under a reserved prefix, and writes it in the
//! **same sled transaction** as the participant's business change:
//!
//! - **Idempotency.** The first successful call stores its record and
//!   output; a repeated call runs nothing and returns that output
//!   ([`Guarded::Duplicate`]). A call whose business step fails writes
//!   nothing (the transaction aborts), so a retry runs it again.
//! - **Empty rollback.** A cancel/compensation whose try/action never ran
//!   records itself and a tombstone for the try, touches no business state,
//!   and succeeds ([`Guarded::EmptyRollback`]).
//! - **Anti-hanging.** A try/action that arrives after its cancel/compensation
//!   finds the tombstone and is rejected ([`Guarded::Rejected`]) without
//!   running: it must not reserve what nobody will release.
//!
//! sled runs a transaction closure again on a conflict, so the business
//! closure must make its changes only through the transactional tree it is
//! given. The transaction is flushed before the result is returned.
//! DESIGN.md ("Participant barrier") shows the same protocol in SQL.

use crate::ids::{SagaId, UnixMillis};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

/// Prefix of every barrier key in the participant's tree.
pub const KEY_PREFIX: &[u8] = b"\x00sagalog-barrier/";

/// Which call of a branch is guarded. Saga steps map their action to `Try`
/// and their compensation to `Cancel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BarrierPhase {
    /// Reserve (TCC try, 2PC prepare, saga action).
    Try,
    /// Use the reservation (TCC confirm, 2PC commit).
    Confirm,
    /// Release it (TCC cancel, 2PC rollback, saga compensation).
    Cancel,
}

impl BarrierPhase {
    fn byte(self) -> u8 {
        match self {
            BarrierPhase::Try => b't',
            BarrierPhase::Confirm => b'c',
            BarrierPhase::Cancel => b'x',
        }
    }
}

impl From<crate::definition::Phase> for BarrierPhase {
    fn from(phase: crate::definition::Phase) -> Self {
        use crate::definition::Phase;
        match phase {
            Phase::Action | Phase::Try => BarrierPhase::Try,
            Phase::Confirm => BarrierPhase::Confirm,
            Phase::Compensation | Phase::Cancel => BarrierPhase::Cancel,
        }
    }
}

/// What a guarded call did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Guarded<T> {
    /// The business step ran and committed with its barrier record.
    Ran(T),
    /// A repeat: nothing ran; this is the first call's output.
    Duplicate(T),
    /// A cancel whose try never ran: recorded, nothing touched.
    EmptyRollback,
    /// A try that arrived after its cancel: rejected, nothing touched.
    Rejected,
}

/// Why a guarded call failed. Nothing was written in any case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BarrierError<E> {
    /// The business step returned this error; its changes were rolled back.
    #[error("the participant's step failed: {0}")]
    Business(E),
    /// sled failed; the message says how.
    #[error("barrier store failed: {0}; the call can be retried")]
    Store(String),
    /// A stored barrier record does not decode (damaged bytes).
    #[error("barrier record under key {key:02x?} is unreadable: {reason}; inspect it before retrying this call")]
    Corrupt {
        /// The raw key.
        key: Vec<u8>,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
enum Mark {
    /// The call ran; its encoded output.
    Done { at: UnixMillis, output: Vec<u8> },
    /// A try tombstone written by an empty rollback: a late try is refused.
    Blocked { at: UnixMillis },
}

/// A barrier over one sled tree of the participant.
#[derive(Clone, Debug)]
pub struct Barrier {
    tree: sled::Tree,
}

fn key(saga: SagaId, branch: &str, phase: BarrierPhase) -> Vec<u8> {
    let mut key = Vec::with_capacity(KEY_PREFIX.len() + 17 + branch.len() + 1);
    key.extend_from_slice(KEY_PREFIX);
    key.extend_from_slice(&saga.to_bytes());
    key.extend_from_slice(branch.as_bytes());
    key.push(0);
    key.push(phase.byte());
    key
}

type Abort<E> = ConflictableTransactionError<BarrierError<E>>;

fn encode<T: Serialize, E>(value: &T) -> Result<Vec<u8>, Abort<E>> {
    crate::log::codec::encode_value(value)
        .map_err(|e| ConflictableTransactionError::Abort(BarrierError::Store(e.to_string())))
}

fn decode<T: DeserializeOwned, E>(key: &[u8], bytes: &[u8]) -> Result<T, Abort<E>> {
    crate::log::codec::decode_value(bytes).map_err(|e| {
        ConflictableTransactionError::Abort(BarrierError::Corrupt {
            key: key.to_vec(),
            reason: e.to_string(),
        })
    })
}

impl Barrier {
    /// A barrier whose records live in `tree`, the tree the participant's
    /// business state lives in.
    pub fn new(tree: sled::Tree) -> Self {
        Barrier { tree }
    }

    /// Runs `business` for (saga, branch, phase) at most once, in one sled
    /// transaction with the barrier record, and flushes it.
    ///
    /// `business` gets the transactional tree and must make every change
    /// through it; it may run more than once if sled detects a conflict, and
    /// its changes count only if it returns `Ok`. A cancel whose try never
    /// ran, and a try after its cancel, do not call it.
    pub fn call<T, E, F>(
        &self,
        saga: SagaId,
        branch: &str,
        phase: BarrierPhase,
        business: F,
    ) -> Result<Guarded<T>, BarrierError<E>>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(&TransactionalTree) -> Result<T, E>,
    {
        let own = key(saga, branch, phase);
        let try_key = key(saga, branch, BarrierPhase::Try);
        let cancel_key = key(saga, branch, BarrierPhase::Cancel);
        let result = self.tree.transaction(|tx| {
            if let Some(bytes) = tx.get(&own)? {
                return match decode::<Mark, E>(&own, &bytes)? {
                    Mark::Done { output, .. } => {
                        Ok(Guarded::Duplicate(decode::<T, E>(&own, &output)?))
                    }
                    Mark::Blocked { .. } => Ok(Guarded::Rejected),
                };
            }
            match phase {
                BarrierPhase::Try if tx.get(&cancel_key)?.is_some() => {
                    // Anti-hanging: remember the refusal so a repeat is refused too.
                    tx.insert(
                        own.as_slice(),
                        encode::<_, E>(&Mark::Blocked {
                            at: UnixMillis::now(),
                        })?,
                    )?;
                    return Ok(Guarded::Rejected);
                }
                BarrierPhase::Cancel if tx.get(&try_key)?.is_none() => {
                    // Empty rollback: record the cancel, block a late try.
                    let done = Mark::Done {
                        at: UnixMillis::now(),
                        output: encode::<_, E>(&())?,
                    };
                    tx.insert(own.as_slice(), encode::<_, E>(&done)?)?;
                    tx.insert(
                        try_key.as_slice(),
                        encode::<_, E>(&Mark::Blocked {
                            at: UnixMillis::now(),
                        })?,
                    )?;
                    return Ok(Guarded::EmptyRollback);
                }
                _ => {}
            }
            let output = business(tx)
                .map_err(|e| ConflictableTransactionError::Abort(BarrierError::Business(e)))?;
            let done = Mark::Done {
                at: UnixMillis::now(),
                output: encode::<_, E>(&output)?,
            };
            tx.insert(own.as_slice(), encode::<_, E>(&done)?)?;
            Ok(Guarded::Ran(output))
        });
        let guarded = match result {
            Ok(guarded) => guarded,
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(BarrierError::Store(e.to_string())),
        };
        self.tree
            .flush()
            .map_err(|e| BarrierError::Store(e.to_string()))?;
        Ok(guarded)
    }

    /// Deletes barrier records written more than `older_than` before now
    /// (run it with the saga retention, after the sagas they guard are
    /// finished); returns how many. Unreadable records are kept.
    pub fn sweep(&self, older_than: std::time::Duration) -> Result<u64, sled::Error> {
        let cutoff = UnixMillis::now().minus(older_than).0;
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        for item in self.tree.scan_prefix(KEY_PREFIX) {
            let (k, v) = item?;
            let at = match crate::log::codec::decode_value::<Mark>(&v) {
                Ok(Mark::Done { at, .. }) | Ok(Mark::Blocked { at }) => at,
                Err(_) => continue,
            };
            if at.0 <= cutoff {
                batch.remove(k);
                removed += 1;
            }
        }
        self.tree.apply_batch(batch)?;
        self.tree.flush()?;
        Ok(removed)
    }
}

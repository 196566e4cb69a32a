//! The engine's error type.

use crate::definition::DuplicateSagaType;
use crate::ids::{SagaId, SagaType};
use crate::log::codec::{DecodeError, EncodeError};
use crate::log::store::StoreError;
use crate::state::IllegalTransition;

/// Everything the engine's API can fail with. Messages say what happened
/// and what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The log store failed; see the inner error.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A value could not be encoded (usually: an input over the size limit).
    #[error("saga {what} could not be encoded: {reason}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// A stored record could not be decoded.
    #[error("record {seq} of saga {saga} is unreadable: {error}")]
    Decode {
        /// The saga.
        saga: SagaId,
        /// The record's sequence number.
        seq: u64,
        /// What is wrong with its bytes.
        error: DecodeError,
    },
    /// A saga's log breaks the state machine's rules.
    #[error("the log of saga {saga} is inconsistent: {error}")]
    Illegal {
        /// The saga.
        saga: SagaId,
        /// The broken rule.
        error: IllegalTransition,
    },
    /// `start` was given a saga type this engine's registry does not hold.
    #[error("saga type '{0}' is not registered with this engine; register its definition in the Registry passed to Engine::open")]
    UnknownSagaType(SagaType),
    /// An option passed to the engine is unusable.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// No saga has this id.
    #[error("no saga with id {0} exists in this store")]
    NotFound(SagaId),
    /// `start` was given an idempotency key that belongs to a saga started
    /// with another saga type or input. Nothing was started.
    #[error("idempotency key '{key}' already belongs to saga {saga}, which was started with another saga type or input; nothing was started. Use a new key for a new operation, or StartOptions::attach_on_conflict to get that saga")]
    IdempotencyConflict {
        /// The key.
        key: crate::ids::IdempotencyKey,
        /// The saga it belongs to.
        saga: SagaId,
    },
    /// The saga is parked: it cannot run until the cause is fixed.
    #[error("saga {saga} is parked: {reason}")]
    Parked {
        /// The saga.
        saga: SagaId,
        /// Why.
        reason: String,
    },
    /// The engine is shutting down; the saga stays in the log and resumes
    /// when the engine is opened again.
    #[error(
        "the engine shut down before saga {0} finished; it resumes when the engine is opened again"
    )]
    ShuttingDown(SagaId),
    /// The engine was opened with [`crate::Engine::open_admin`]: it records
    /// operator actions but runs nothing.
    #[error("this engine was opened for administration only and runs no saga; start sagas from the service's engine (Engine::open)")]
    AdminOnly,
    /// Two definitions were registered under one type.
    #[error(transparent)]
    DuplicateSagaType(#[from] DuplicateSagaType),
}

impl Error {
    pub(crate) fn encode(what: &'static str, e: EncodeError) -> Self {
        Error::Encode {
            what,
            reason: e.to_string(),
        }
    }
}

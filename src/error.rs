//! The engine's error type.

use crate::definition::DuplicateSagaType;
use crate::ids::{SagaId, SagaType, StepName};
use crate::log::codec::{DecodeError, EncodeError};
use crate::log::store::StoreError;
use crate::state::IllegalTransition;

/// Everything the engine's API can fail with. Messages say what happened
/// and what to do.
#[derive(Clone, Debug, thiserror::Error)]
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
        #[source]
        error: DecodeError,
    },
    /// A saga's log breaks the state machine's rules.
    #[error("the log of saga {saga} is inconsistent: {error}")]
    Illegal {
        /// The saga.
        saga: SagaId,
        /// The broken rule.
        #[source]
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
        reason: ParkReason,
    },
    /// The engine is shutting down, so it took no new work (`saga` is
    /// `None`: nothing was started) or stopped before `saga` finished (it
    /// stays in the log and resumes when the engine is opened again).
    #[error("the engine is shutting down{}; open the engine again to go on", saga.map(|id| format!(" before saga {id} finished (it resumes from its log)")).unwrap_or_else(|| " and took no new work".into()))]
    ShuttingDown {
        /// The saga that did not finish, if the call concerned one.
        saga: Option<SagaId>,
    },
    /// The engine was opened with [`crate::Engine::open_admin`]: it records
    /// operator actions but runs nothing.
    #[error("this engine was opened for administration only and runs no saga; start sagas from the service's engine (Engine::open)")]
    AdminOnly,
    /// On a log several nodes share, an operator's action on a saga that
    /// another live node runs: only that node may act on it.
    #[error("saga {saga} runs on node '{node}'; act on it through that node (its admin server), or wait until it hands the saga over")]
    OwnedElsewhere {
        /// The saga.
        saga: SagaId,
        /// The live node that owns it.
        node: String,
    },
    /// On a log several nodes share, the node that runs the saga refused
    /// an operator's action queued for it: it made no sense in the saga's
    /// state there.
    #[error("node '{node}', which runs saga {saga}, refused the action: {reason}")]
    ActionRefused {
        /// The saga.
        saga: SagaId,
        /// The node that refused it.
        node: String,
        /// Why.
        reason: String,
    },
    /// Two definitions were registered under one type.
    #[error(transparent)]
    DuplicateSagaType(#[from] DuplicateSagaType),
}

impl Error {
    /// The engine stopped before saga `id` finished.
    pub(crate) fn shutting_down(id: SagaId) -> Self {
        Error::ShuttingDown { saga: Some(id) }
    }

    pub(crate) fn encode(what: &'static str, e: EncodeError) -> Self {
        Error::Encode {
            what,
            reason: e.to_string(),
        }
    }
}

/// Why a saga cannot run, so that it is *parked*: it stays in the store as
/// it is, shows as `SUSPENDED` with this reason, and every other saga goes
/// on. Parking writes nothing: the reason is found again at every open, so
/// fixing the cause and opening the engine again resumes the saga.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParkReason {
    /// The saga's type is not in the registry.
    #[error("saga type '{saga_type}' is not registered; register its definition before opening the engine, then restart")]
    UnknownType {
        /// The type the log names.
        saga_type: SagaType,
    },
    /// The type is registered at another definition version.
    #[error("saga type '{saga_type}' is registered at version {registered}, but this saga started under version {logged}; register a definition of version {logged} (under its own name) to finish it")]
    OtherVersion {
        /// The saga's type.
        saga_type: SagaType,
        /// The version registered now.
        registered: u32,
        /// The version the saga started under.
        logged: u32,
    },
    /// The registered definition has other steps than the saga's plan.
    #[error("saga type '{saga_type}' version {version} now has steps {registered:?}, but this saga's log has {logged:?}; bump the version when steps change")]
    OtherSteps {
        /// The saga's type.
        saga_type: SagaType,
        /// Its version.
        version: u32,
        /// The steps registered now.
        registered: Vec<StepName>,
        /// The steps of the saga's plan.
        logged: Vec<StepName>,
    },
    /// The saga's input does not decode as the registered input type.
    #[error("the saga's input does not decode as the registered input type: {0}")]
    BadInput(#[source] DecodeError),
    /// The saga's log cannot be read or folded (a damaged record, an
    /// illegal sequence).
    #[error("{0}")]
    Unreadable(#[source] Box<Error>),
    /// The saga's loop stopped on an error (a store that failed); reopening
    /// the engine resumes the saga from its log.
    #[error("{0}; reopen the engine to resume this saga from its log")]
    LoopStopped(#[source] Box<Error>),
}

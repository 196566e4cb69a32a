//! # sagalog
//!
//! A durable saga orchestrator embedded in your service, backed by a
//! checksummed write-ahead log in sled. Define a saga of ordered steps, each
//! an async action with a compensation; start it; `kill -9` the process at
//! any moment; open the engine again and every saga in flight finishes or
//! compensates.
//!
//! The log is the saga: a saga's state is the fold of its records
//! ([`state::fold`]), the next action is a pure function of that state and
//! the clock ([`state::decide`]), and no participant is called before the
//! record announcing the call is durable.
//!
//! ```no_run
//! use sagalog::{Engine, EngineConfig, Registry, SagaDefinition, StartOptions, StepError};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let mut registry = Registry::new();
//! let transfer = registry.register(
//!     SagaDefinition::<u64>::builder("transfer")
//!         .step("debit", |ctx| async move { Ok(*ctx.input()) },
//!                        |_ctx| async move { Ok(()) })
//!         .step("credit", |_ctx| async move { Err::<(), _>(StepError::permanent("account closed")) },
//!                         |_ctx| async move { Ok(()) })
//!         .build()?,
//! )?;
//! let engine = Engine::open("./sagalog-data", registry, EngineConfig::default()).await?;
//! let started = engine.start(&transfer, &100, StartOptions::new()).await?;
//! let outcome = engine.outcome(started.saga_id).await?;
//! println!("{}", outcome.status); // COMPENSATED: debit was undone
//! # Ok(()) }
//! ```
//!
//! Modules: [`definition`] (what a saga is), [`policy`] (retries, strategy),
//! [`log`] (records, bytes, store, group commit), [`state`] (fold and
//! decide), [`engine`] (the loop, recovery, the read API).

#![warn(missing_docs)]

pub mod barrier;
pub mod definition;
pub mod engine;
mod error;
pub mod ids;
pub mod log;
pub mod metrics;
pub mod policy;
pub mod state;
mod status;
mod sync;
mod timers;

pub use definition::{
    DefinitionError, Phase, Registry, SagaBuilder, SagaDefinition, SagaRef, StepContext, StepError,
    StepOptions, TwoPhaseParticipant, DEFAULT_MAX_PARALLEL,
};
pub use engine::view::{CallStatus, HistoryEntry, Outcome, SagaListing, SagaView, StepView};
pub use engine::{
    CallHook, CallPoint, DelayedItem, Engine, EngineConfig, ManualItem, Recovery, Retention,
    SagaFilter, StartOptions, Started, Stats, SuspendHook, SweepReport,
};
pub use error::Error;
pub use ids::{IdempotencyKey, SagaId, SagaType, StepName, UnixMillis};
pub use log::codec::DecodeError;
pub use log::record::{Decision, ErrorClass, OperatorCommand, WaitPurpose};
pub use log::store::{Compacted, MemStore, SledStore, StoreError};
pub use policy::{CompensationStrategy, InDoubtPolicy, RetryPolicy};
pub use status::SagaStatus;

/// The README's quickstart, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

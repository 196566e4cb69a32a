//! # sagalog
//!
//! A durable saga orchestrator embedded in your service, backed by a
//! checksummed write-ahead log in sled. Define a saga of ordered steps, each
//! an async action with a compensation; start it; `kill -9` the process at
//! any moment; open the engine again and every saga in flight finishes or
//! compensates.
//!
//! The log is the saga: a saga's state is the fold of its records
//! (`fold`), the next action is a pure function of that state and
//! the clock (`decide`), and no participant is called before the
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
//! # Layout
//!
//! Everything a service needs is at the crate root. Three modules are
//! public on purpose: [`store`] holds what a store implementer needs (the
//! [`store::LogStore`] trait and the values it moves), [`tools`] what
//! operator tools use (verify, repair, the codec, the pure core), and
//! [`metrics`] the names of every metric; [`api`] holds the documents of the
//! admin API. Behind features: `admin-http` (the admin server,
//! `Engine::serve_admin`), `barrier` (a participant-side guard on sled) and
//! `testing` (fault injection for this crate's own tests).
//!
//! Inside, the source is organised by the question "is it a decision, a
//! side effect, bytes, or time?":
//!
//! - `definition/`: what a saga is (steps, builder, registry);
//! - `policy`: retry, in-doubt and compensation policies (pure data);
//! - `log/`: records and their bytes (`record`, `codec`), the store
//!   (`store/`), group commit (`writer`), damage (`witness`, `verify`,
//!   `repair`);
//! - `state/`: `fold` and `decide`, pure functions of the records;
//! - `timers/`: the clock and the delay queue;
//! - `engine/`: the loop, recovery, ownership, and the read and operator API;
//! - `admin_http/`: the admin server over that API (feature `admin-http`).
//!
//! DESIGN.md describes each, with the on-disk format byte by byte.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "admin-http")]
mod admin_http;
pub mod api;
#[cfg(feature = "barrier")]
pub mod barrier;
mod definition;
mod engine;
mod error;
mod ids;
mod log;
pub mod metrics;
mod policy;
mod state;
mod status;
mod sync;
mod timers;

#[cfg(feature = "admin-http")]
pub use admin_http::{AdminConfig, AdminError, AdminHandle};
pub use definition::{
    DefinitionError, DuplicateSagaType, Phase, Registry, SagaBuilder, SagaDefinition, SagaRef,
    StepContext, StepError, StepOptions, TwoPhaseParticipant, DEFAULT_MAX_PARALLEL, MAX_NAME_LEN,
    MAX_STEPS,
};
pub use engine::view::{CallStatus, HistoryEntry, Outcome, SagaListing, SagaView, StepView};
pub use engine::{
    timeline, Action, ActionRequest, BulkItem, CallHook, CallPoint, DelayedItem, Engine,
    EngineConfig, ListQuery, ManualItem, Recovery, Retention, SagaDetail, SagaFilter, StartOptions,
    Started, Stats, SuspendHook, SweepReport, TimelineEvent,
};
pub use error::{Error, ParkReason};
pub use ids::{Attempt, IdempotencyKey, SagaId, SagaType, StepIndex, StepName, UnixMillis};
pub use log::codec::{DecodeError, EncodeError};
pub use log::record::{
    CallFailed, CallRef, CallSucceeded, Decided, Decision, ErrorClass, Finished, LogEntry,
    OperatorAction, OperatorCommand, ParentLink, PlanKind, Record, SagaPlan, SagaStarted,
    StepFailure, StepPlan, Suspended, TimerSet, WaitPurpose,
};
pub use log::store::{
    discard_torn_sled_snapshots, Compacted, Lease, MemStore, SledOptions, SledStore, StoreError,
};
#[cfg(feature = "postgres")]
pub use log::store::{NodeStatus, PgOptions, PgStore};
pub use log::writer::{DurableHook, WriterStats};
pub use policy::{CompensationStrategy, InDoubtPolicy, RetryPolicy};
pub use status::SagaStatus;

pub mod store {
    //! What a log store implements: the asynchronous [`LogStore`] trait the
    //! engine calls, and the values it moves. A store in one ordered
    //! key-value map that one process opens ([`crate::SledStore`],
    //! [`crate::MemStore`]) implements the synchronous [`KvLogStore`]
    //! instead and gets `LogStore` with it; any other store (a SQL
    //! database, a test wrapper) implements `LogStore` and opens with
    //! [`crate::Engine::open_with_store`].
    pub use crate::log::store::{
        input_fingerprint, Adopted, BatchItems, Claim, Committed, FinishedBatch, IndexEntry,
        IndexQuery, IndexSet, IndexUpdate, KeyClaim, KvLogStore, LogStore, LogValue, QueuedAction,
        QueuedOutcome, Refusal, Removal, Removed, SagaAppend, StoreFuture, TimerKey, TimerScan,
        WriteTimes, LAYOUT_VERSION,
    };
}

pub mod tools {
    //! What operator tools use and a service does not need: checking and
    //! repairing a database, the record codec, the keyspace's raw keys, and
    //! the pure core (`fold` and `decide`) for model checking and fuzzing.
    //! The `sagalog` command line is built on these.
    pub use crate::log::codec::{
        decode_index_entry, decode_record, decode_records, decode_records_prefix, decode_value,
        encode_index_entry, encode_output, encode_record, encode_record_into, encode_value,
        frames_of, FORMAT_VERSION, HEADER_LEN, KIND_INDEX_ENTRY, MAGIC, MAX_OUTPUT, MAX_PAYLOAD,
    };
    pub use crate::log::repair::{repair, RepairOutcome, RepairReport, Salvage};
    pub use crate::log::verify::{verify, Problem, VerifyReport};
    pub use crate::log::witness::{Mark as WitnessMark, FILE_NAME as WITNESS_FILE};
    pub use crate::state::{
        decide, decide_live, fold, to_compensate, CallState, IllegalTransition, NextAction,
        PendingTimer, SagaState, StepState,
    };
}

/// Fault injection and raw writes, for this crate's own tests (feature
/// `testing`). Nothing here belongs in a service.
#[cfg(feature = "testing")]
pub mod testing {
    pub use crate::log::codec::frame_payload;
    pub use crate::log::store::raw_keys::log_key;
    pub use crate::log::store::{FailedAppend, FaultTiming, MemCluster, MemNode};
}

/// The README's quickstart, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

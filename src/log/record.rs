//! The record vocabulary: everything that can happen to a saga, as it is
//! written to the log.
//!
//! This is an intent log for recovery, not a debug log. A saga's state is
//! nothing but the fold of its records (see [`crate::state`]); a record that
//! is not here cannot influence what a saga does next. The set is closed:
//! adding a kind means adding a variant, a kind number in the codec, and a
//! rule in `fold`, and DESIGN.md lists the numbers reserved for later kinds.

use crate::ids::{Attempt, IdempotencyKey, SagaType, StepIndex, StepName, UnixMillis};
use crate::policy::{CompensationStrategy, InDoubtPolicy, RetryPolicy};
use crate::status::SagaStatus;
use serde::{Deserialize, Serialize};

/// One record as stored: its position in the saga's log, the time it was
/// appended, and what happened.
#[derive(Clone, Debug, PartialEq)]
pub struct LogEntry {
    /// Position in the saga's log, from 0, without gaps.
    pub seq: u64,
    /// Wall-clock time the engine appended it.
    pub at: UnixMillis,
    /// What happened.
    pub record: Record,
}

/// What happened to a saga. See DESIGN.md, "Records", for the table of kinds.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// The saga exists: always the first record, and only there.
    SagaStarted(SagaStarted),
    /// Intent: the forward action of `step` is about to be called.
    StepStarted(CallRef),
    /// The forward action returned success with this output.
    StepSucceeded(CallSucceeded),
    /// The forward action returned an error (or was found in doubt).
    StepFailed(CallFailed),
    /// Intent: the compensation of `step` is about to be called.
    CompensationStarted(CallRef),
    /// The compensation returned success.
    CompensationSucceeded(CallRef),
    /// The compensation returned an error.
    CompensationFailed(CallFailed),
    /// The saga waits for an operator, for the reason given.
    SagaSuspended(Suspended),
    /// The saga reached a terminal status. Always the last record.
    SagaFinished(Finished),
}

impl Record {
    /// Short name of the record kind, for history listings and errors.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Record::SagaStarted(_) => "saga_started",
            Record::StepStarted(_) => "step_started",
            Record::StepSucceeded(_) => "step_succeeded",
            Record::StepFailed(_) => "step_failed",
            Record::CompensationStarted(_) => "compensation_started",
            Record::CompensationSucceeded(_) => "compensation_succeeded",
            Record::CompensationFailed(_) => "compensation_failed",
            Record::SagaSuspended(_) => "saga_suspended",
            Record::SagaFinished(_) => "saga_finished",
        }
    }
}

/// The start record. It carries everything `decide` needs besides the
/// clock: the plan is copied from the definition at start, so a later
/// deployment that changes retry settings does not change a running saga.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SagaStarted {
    /// The registered definition that runs this saga.
    pub saga_type: SagaType,
    /// Definition version at start; recovery refuses to run a saga with a
    /// definition of another version.
    pub version: u32,
    /// The saga's input, encoded by the codec.
    pub input: Vec<u8>,
    /// Steps and policies, copied from the definition.
    pub plan: SagaPlan,
    /// The caller's idempotency key, if any.
    pub idempotency_key: Option<IdempotencyKey>,
}

/// The part of a definition that decisions depend on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SagaPlan {
    /// Step names, in forward order.
    pub steps: Vec<StepName>,
    /// How failures are compensated.
    pub strategy: CompensationStrategy,
    /// Retries of a forward action that failed with a retryable or unknown error.
    pub retry: RetryPolicy,
    /// Retries of a failing compensation before the saga is suspended.
    pub compensation_retry: RetryPolicy,
    /// What recovery does with a forward call left in doubt.
    pub in_doubt: InDoubtPolicy,
}

/// Names one participant call: which step, which attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRef {
    /// Index of the step in the plan.
    pub step: StepIndex,
    /// Attempt number, from 1.
    pub attempt: Attempt,
}

/// A successful call and what it returned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallSucceeded {
    /// The call.
    pub call: CallRef,
    /// The action's output, encoded by the codec (empty for compensations).
    pub output: Vec<u8>,
}

/// A failed call and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallFailed {
    /// The call.
    pub call: CallRef,
    /// The failure the participant reported.
    pub failure: StepFailure,
}

/// How a participant call failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepFailure {
    /// What the failure says about the call's effect.
    pub class: ErrorClass,
    /// The participant's message, for operators.
    pub message: String,
}

/// What a failure says about the call's effect. This decides whether the
/// step is retried and whether it needs compensating.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorClass {
    /// The call certainly had no effect and will never succeed: no retry,
    /// no compensation of this step.
    Permanent,
    /// The call had no effect but may succeed later: retried under the policy.
    Retryable,
    /// The call may have taken effect (timeout, lost reply): retried under
    /// the policy, and compensated if the saga compensates.
    Unknown,
}

/// Why a saga waits for an operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspended {
    /// The reason, for operators.
    pub reason: String,
}

/// The terminal status a saga reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    /// A terminal status.
    pub status: SagaStatus,
}

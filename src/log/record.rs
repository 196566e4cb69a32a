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
#[non_exhaustive]
pub enum Record {
    /// The saga exists: always the first record, and only there. Boxed: it
    /// is written once per saga and is much larger than the rest.
    SagaStarted(Box<SagaStarted>),
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
    /// The saga reached a terminal status. The last record, unless an
    /// operator reopens a committed saga to compensate it.
    SagaFinished(Finished),
    /// The saga sleeps until `due` (a retry backoff or a scheduled
    /// compensation). It leaves memory; the delay queue wakes it.
    TimerSet(TimerSet),
    /// An operator acted on the saga.
    OperatorAction(OperatorAction),
    /// TCC: the transaction's outcome is decided (commit after every try
    /// succeeded, rollback after a try failed for good or a cancel). From
    /// here on only confirms (commit) or cancels (rollback) run.
    Decided(Decided),
    /// TCC intent: the confirm of branch `step` is about to be called.
    ConfirmStarted(CallRef),
    /// TCC: the confirm returned success.
    ConfirmSucceeded(CallRef),
    /// TCC: the confirm returned an error; it is retried.
    ConfirmFailed(CallFailed),
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
            Record::TimerSet(_) => "timer_set",
            Record::OperatorAction(_) => "operator_action",
            Record::Decided(_) => "decided",
            Record::ConfirmStarted(_) => "confirm_started",
            Record::ConfirmSucceeded(_) => "confirm_succeeded",
            Record::ConfirmFailed(_) => "confirm_failed",
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
    /// The saga this one runs as a step of, if it is a sub-saga.
    pub parent: Option<ParentLink>,
}

/// Where a sub-saga sits in its parent: the parent's id and the step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentLink {
    /// The parent saga.
    pub saga: crate::ids::SagaId,
    /// The parent's step this saga runs as.
    pub step: StepIndex,
}

/// What kind of transaction a plan describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum PlanKind {
    /// A saga: steps with compensations, committed step by step.
    Saga,
    /// TCC: branches are tried, then all confirmed or all cancelled.
    Tcc {
        /// The outcome is reported once the commit decision is durable;
        /// confirms run in the background.
        async_confirm: bool,
        /// The outcome is reported once the rollback decision is durable;
        /// cancels run in the background.
        async_cancel: bool,
    },
}

/// A TCC decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Decision {
    /// Every try succeeded: confirm every branch.
    Commit,
    /// A try failed for good (or an operator cancelled): cancel every
    /// branch that was tried or may have been.
    Rollback,
}

/// The body of a [`Record::Decided`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decided {
    /// The decision.
    pub decision: Decision,
}

/// The part of a definition that decisions depend on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SagaPlan {
    /// Steps, in forward order.
    pub steps: Vec<StepPlan>,
    /// What happens once a step has failed for good (unless the step overrides it).
    pub strategy: CompensationStrategy,
    /// Retries of a forward action that failed with a retryable or unknown error.
    pub retry: RetryPolicy,
    /// Retries of a failing compensation before the saga is suspended.
    pub compensation_retry: RetryPolicy,
    /// What recovery does with a forward call left in doubt.
    pub in_doubt: InDoubtPolicy,
    /// Per-attempt timeout of participant calls, in milliseconds. A call
    /// that times out is in doubt: an `Unknown` failure.
    pub timeout_ms: Option<u64>,
    /// Saga or TCC.
    pub kind: PlanKind,
    /// Most participant calls of this saga in flight at once (at least 1).
    pub max_parallel: u32,
}

/// One step of a plan, with its overrides of the saga's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepPlan {
    /// The step's name.
    pub name: StepName,
    /// Strategy used when this step fails for good.
    pub strategy: Option<CompensationStrategy>,
    /// Retry policy of this step's action.
    pub retry: Option<RetryPolicy>,
    /// Per-attempt timeout of this step's calls, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// The steps whose actions must succeed before this one starts, and
    /// which are compensated only after this one is (each is earlier in the
    /// plan). A sequential saga lists the previous step.
    pub after: Vec<StepIndex>,
    /// The step runs a sub-saga of this type instead of a participant.
    pub child: Option<SagaType>,
}

impl StepPlan {
    /// A step with no overrides that runs after `after`.
    pub fn named(name: impl Into<StepName>, after: Vec<StepIndex>) -> Self {
        StepPlan {
            name: name.into(),
            strategy: None,
            retry: None,
            timeout_ms: None,
            after,
            child: None,
        }
    }
}

impl SagaPlan {
    /// A plan of sequential steps with default policies, for tests and tools.
    pub fn sequential(names: &[&str]) -> SagaPlan {
        SagaPlan {
            steps: names
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let after = if i == 0 {
                        vec![]
                    } else {
                        vec![i as StepIndex - 1]
                    };
                    StepPlan::named(*name, after)
                })
                .collect(),
            strategy: CompensationStrategy::Immediate,
            retry: RetryPolicy::forward_default(),
            compensation_retry: RetryPolicy::compensation_default(),
            in_doubt: InDoubtPolicy::Rerun,
            timeout_ms: None,
            kind: PlanKind::Saga,
            max_parallel: 1,
        }
    }

    /// True for a TCC plan.
    pub fn is_tcc(&self) -> bool {
        matches!(self.kind, PlanKind::Tcc { .. })
    }

    /// The steps that list `step` in their `after`.
    pub fn dependents(&self, step: StepIndex) -> impl Iterator<Item = StepIndex> + '_ {
        self.steps
            .iter()
            .enumerate()
            .filter(move |(_, s)| s.after.contains(&step))
            .map(|(i, _)| i as StepIndex)
    }

    /// The step names, in order.
    pub fn step_names(&self) -> Vec<StepName> {
        self.steps.iter().map(|s| s.name.clone()).collect()
    }

    /// The name of step `step`, or `"?"` if there is none.
    pub fn step_name(&self, step: StepIndex) -> &str {
        self.steps
            .get(step as usize)
            .map_or("?", |s| s.name.as_str())
    }

    /// The strategy that applies when step `step` fails for good.
    pub fn strategy_of(&self, step: StepIndex) -> CompensationStrategy {
        self.steps
            .get(step as usize)
            .and_then(|s| s.strategy)
            .unwrap_or(self.strategy)
    }

    /// The retry policy of step `step`'s action: the step's own, else the
    /// policy of a retry-then-compensate strategy, else the saga's.
    pub fn retry_of(&self, step: StepIndex) -> RetryPolicy {
        if let Some(policy) = self.steps.get(step as usize).and_then(|s| s.retry) {
            return policy;
        }
        match self.strategy_of(step) {
            CompensationStrategy::RetryThenCompensate { policy } => policy,
            CompensationStrategy::Immediate
            | CompensationStrategy::Scheduled { .. }
            | CompensationStrategy::Manual => self.retry,
        }
    }

    /// The per-attempt timeout of step `step`'s calls.
    pub fn timeout_of(&self, step: StepIndex) -> Option<u64> {
        self.steps
            .get(step as usize)
            .and_then(|s| s.timeout_ms)
            .or(self.timeout_ms)
    }
}

/// Names one participant call: which step, which attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRef {
    /// Index of the step in the plan.
    pub step: StepIndex,
    /// Attempt number, from 1.
    pub attempt: Attempt,
}

impl CallRef {
    /// Attempt `attempt` of step `step`.
    pub fn new(step: StepIndex, attempt: Attempt) -> Self {
        CallRef { step, attempt }
    }
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
#[non_exhaustive]
pub enum ErrorClass {
    /// The call certainly had no effect and will never succeed: no retry,
    /// no compensation of this step.
    Permanent,
    /// The call had no effect but may succeed later: retried under the policy.
    Retryable,
    /// The call may have taken effect (timeout, lost reply): retried under
    /// the policy, and compensated if the saga compensates.
    Unknown,
    /// The call may have taken effect and trying again cannot help (its
    /// output can never be stored): not retried; compensated.
    InDoubt,
}

impl ErrorClass {
    /// Whether the call may have taken effect, so that its step needs
    /// compensating.
    pub fn maybe_applied(self) -> bool {
        matches!(self, ErrorClass::Unknown | ErrorClass::InDoubt)
    }

    /// Whether trying the call again may help.
    pub fn retries(self) -> bool {
        matches!(self, ErrorClass::Retryable | ErrorClass::Unknown)
    }
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

/// A durable timer: the saga sleeps until `due`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerSet {
    /// When the saga should be decided again.
    pub due: UnixMillis,
    /// Why it waits, for the delay-queue listing.
    pub purpose: WaitPurpose,
}

/// Why a saga waits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum WaitPurpose {
    /// Backoff before the next attempt of a forward action.
    RetryBackoff {
        /// The step.
        step: StepIndex,
        /// The attempt that will run.
        attempt: Attempt,
    },
    /// A scheduled compensation, after `step` failed for good.
    ScheduledCompensation {
        /// The step that failed.
        step: StepIndex,
    },
    /// Backoff before the next attempt of a compensation.
    CompensationBackoff {
        /// The step being compensated.
        step: StepIndex,
        /// The attempt that will run.
        attempt: Attempt,
    },
    /// TCC: backoff before the next attempt of a confirm.
    ConfirmBackoff {
        /// The branch being confirmed.
        step: StepIndex,
        /// The attempt that will run.
        attempt: Attempt,
    },
}

impl WaitPurpose {
    /// The purpose in words, naming the step by its name in `steps` (the
    /// plan's step names, in order), e.g. "scheduled compensation after
    /// create_shipment failed".
    pub fn describe(&self, steps: &[&str]) -> String {
        let step = |i: StepIndex| {
            steps
                .get(i as usize)
                .map_or_else(|| format!("step #{i}"), |name| (*name).to_string())
        };
        match self {
            WaitPurpose::RetryBackoff { step: s, attempt } => {
                format!("retry {} (attempt {attempt})", step(*s))
            }
            WaitPurpose::ScheduledCompensation { step: s } => {
                format!("scheduled compensation after {} failed", step(*s))
            }
            WaitPurpose::CompensationBackoff { step: s, attempt } => {
                format!("retry compensation of {} (attempt {attempt})", step(*s))
            }
            WaitPurpose::ConfirmBackoff { step: s, attempt } => {
                format!("retry confirm of {} (attempt {attempt})", step(*s))
            }
        }
    }
}

/// What an operator did, who, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorAction {
    /// Who acted (a user name, a service account).
    pub actor: String,
    /// Why, in the operator's words.
    pub reason: String,
    /// The action.
    pub command: OperatorCommand,
}

/// The actions an operator can take on a saga.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum OperatorCommand {
    /// Compensate now: starts (or resumes, with a fresh retry budget) the
    /// compensation of a suspended, waiting or running saga, and reopens a
    /// committed saga to compensate every step.
    CompensateNow,
    /// The operator compensated `step` by hand; the engine will not call its
    /// compensation.
    MarkCompensated {
        /// The step.
        step: StepIndex,
    },
    /// Retry the failed forward step, with a fresh retry budget, even after
    /// a permanent error. On a TCC transaction that is committing: a fresh
    /// budget for the confirms.
    RetryStep,
    /// Give up: the saga ends `Failed` without further compensation.
    Abandon,
    /// Stop going forward at the next step boundary and compensate.
    Cancel,
}

impl OperatorCommand {
    /// The stable name used in output.
    pub fn name(&self) -> &'static str {
        match self {
            OperatorCommand::CompensateNow => "compensate_now",
            OperatorCommand::MarkCompensated { .. } => "mark_compensated",
            OperatorCommand::RetryStep => "retry_step",
            OperatorCommand::Abandon => "abandon",
            OperatorCommand::Cancel => "cancel",
        }
    }
}

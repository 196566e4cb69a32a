//! What the log says about one step: each kind of call's progress, and
//! the timer a saga sleeps on.

use crate::ids::{Attempt, UnixMillis};
use crate::log::record::{StepFailure, WaitPurpose};

/// Progress of one kind of call (forward action or compensation) of one step.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallState {
    /// Never attempted.
    NotStarted,
    /// Intent written, no result: running now, or in doubt after a crash.
    InFlight {
        /// The attempt in flight.
        attempt: Attempt,
        /// When the intent was written.
        since: UnixMillis,
    },
    /// The last attempt failed.
    Failed {
        /// The failed attempt.
        attempt: Attempt,
        /// Why.
        failure: StepFailure,
        /// When the failure was written.
        at: UnixMillis,
    },
    /// The last attempt succeeded.
    Succeeded {
        /// The successful attempt.
        attempt: Attempt,
        /// When the success was written.
        at: UnixMillis,
    },
}

impl CallState {
    /// Attempts made so far.
    pub fn attempts(&self) -> Attempt {
        match self {
            CallState::NotStarted => 0,
            CallState::InFlight { attempt, .. }
            | CallState::Failed { attempt, .. }
            | CallState::Succeeded { attempt, .. } => *attempt,
        }
    }

    pub(super) fn is_succeeded(&self) -> bool {
        matches!(self, CallState::Succeeded { .. })
    }
}

/// Everything the log says about one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepState {
    /// The forward action.
    pub forward: CallState,
    /// The compensation.
    pub compensation: CallState,
    /// The action's output, once it succeeded.
    pub output: Option<Vec<u8>>,
    /// Some earlier attempt of the action may have taken effect (it was left
    /// in doubt, or failed with [`ErrorClass::Unknown`](crate::ErrorClass::Unknown) or [`InDoubt`](crate::ErrorClass::InDoubt)).
    pub earlier_attempt_in_doubt: bool,
    /// Action attempts made before the last operator retry; the retry
    /// budget counts attempts after it.
    pub forward_base: Attempt,
    /// An operator granted one more attempt, even after a permanent error.
    pub retry_granted: bool,
    /// When the first attempt (since the last operator retry) started; the
    /// retry deadline counts from here.
    pub first_attempt_at: Option<UnixMillis>,
    /// Compensation attempts made before the last operator "compensate now".
    pub compensation_base: Attempt,
    /// An operator marked this step compensated by hand.
    pub compensated_by_operator: bool,
    /// TCC: the confirm of this branch.
    pub confirm: CallState,
    /// Confirm attempts made before the last operator retry.
    pub confirm_base: Attempt,
    /// TCC: a branch whose try started is cancelled whatever the try
    /// reported (its participant's barrier turns a needless cancel into an
    /// empty rollback).
    pub cancel_if_tried: bool,
}

impl StepState {
    pub(super) fn new(cancel_if_tried: bool) -> Self {
        StepState {
            confirm: CallState::NotStarted,
            confirm_base: 0,
            cancel_if_tried,
            forward: CallState::NotStarted,
            compensation: CallState::NotStarted,
            output: None,
            earlier_attempt_in_doubt: false,
            forward_base: 0,
            retry_granted: false,
            first_attempt_at: None,
            compensation_base: 0,
            compensated_by_operator: false,
        }
    }

    /// True when the action started and may have taken effect: it
    /// succeeded, is in flight or in doubt, or some attempt's outcome is
    /// unknown. Only such steps are compensated (invariant I4).
    pub fn maybe_applied(&self) -> bool {
        if self.cancel_if_tried {
            return self.forward != CallState::NotStarted;
        }
        self.earlier_attempt_in_doubt
            || match &self.forward {
                CallState::NotStarted => false,
                CallState::InFlight { .. } | CallState::Succeeded { .. } => true,
                CallState::Failed { failure, .. } => failure.class.maybe_applied(),
            }
    }

    /// True when this step needs no (more) compensation.
    pub fn is_compensated_or_untouched(&self) -> bool {
        !self.maybe_applied() || self.compensation.is_succeeded()
    }
}

/// A pending durable timer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingTimer {
    /// When it falls due.
    pub due: UnixMillis,
    /// Sequence number of its `TimerSet` record.
    pub seq: u64,
    /// Why the saga waits.
    pub purpose: WaitPurpose,
}

/// What the retry policy says about a failed forward action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Run the next attempt at once (an operator granted it).
    Now,
    /// Run the next attempt once this time has come.
    At(UnixMillis),
    /// No more attempts: the step failed for good.
    No,
}

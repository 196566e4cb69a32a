//! What the log says about one step: each kind of call's progress, and
//! the timer a saga sleeps on.

use crate::ids::{Attempt, UnixMillis};
use crate::log::record::{CallRef, StepFailure, WaitPurpose};

/// Progress of one kind of call (action, compensation or confirm) of one step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallState {
    /// Never attempted.
    #[default]
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

/// One kind of call of one step (its action, compensation or confirm):
/// where it stands, and how many of its attempts came before the last
/// operator action that granted a fresh budget.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallTrack {
    /// Where the call stands.
    pub state: CallState,
    /// Attempts made before the last fresh budget; the retry budget counts
    /// the attempts after it.
    pub base: Attempt,
}

impl CallTrack {
    /// Attempts made so far.
    pub fn attempts(&self) -> Attempt {
        self.state.attempts()
    }

    /// Attempts since the last fresh budget: what the retry budget counts.
    pub fn used(&self) -> Attempt {
        self.attempts().saturating_sub(self.base)
    }

    /// True once an attempt succeeded.
    pub fn is_succeeded(&self) -> bool {
        self.state.is_succeeded()
    }

    /// An operator granted a fresh budget: the attempts so far no longer
    /// count.
    pub(super) fn fresh_budget(&mut self) {
        self.base = self.attempts();
    }

    /// The intent of attempt `call.attempt` was written at `at`: any earlier
    /// attempt that did not succeed may be followed by the next; once one
    /// succeeded, the intent is refused with `refusal`.
    pub(super) fn begin(
        &mut self,
        call: CallRef,
        at: UnixMillis,
        refusal: &str,
    ) -> Result<(), String> {
        let expected = match &self.state {
            CallState::NotStarted => 1,
            CallState::InFlight { attempt, .. } | CallState::Failed { attempt, .. } => {
                attempt.saturating_add(1)
            }
            CallState::Succeeded { .. } => return Err(refusal.to_string()),
        };
        self.start(call, at, expected)
    }

    /// Sets attempt `call.attempt` in flight since `at`, if it is `expected`.
    pub(super) fn start(
        &mut self,
        call: CallRef,
        at: UnixMillis,
        expected: Attempt,
    ) -> Result<(), String> {
        if call.attempt != expected {
            return Err(format!(
                "expected attempt {expected}, found {}",
                call.attempt
            ));
        }
        self.state = CallState::InFlight {
            attempt: call.attempt,
            since: at,
        };
        Ok(())
    }

    /// Whether attempt `attempt` is the one in flight.
    pub(super) fn is_in_flight(&self, attempt: Attempt) -> bool {
        matches!(self.state, CallState::InFlight { attempt: open, .. } if open == attempt)
    }

    /// The attempt in flight ended with `result` at `at`.
    pub(super) fn end(&mut self, attempt: Attempt, at: UnixMillis, failure: Option<StepFailure>) {
        self.state = match failure {
            None => CallState::Succeeded { attempt, at },
            Some(failure) => CallState::Failed {
                attempt,
                failure,
                at,
            },
        };
    }
}

/// Everything the log says about one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepState {
    /// The forward action (a TCC try).
    pub forward: CallTrack,
    /// The compensation (a TCC cancel).
    pub compensation: CallTrack,
    /// The action's output, once it succeeded.
    pub output: Option<Vec<u8>>,
    /// Some earlier attempt of the action may have taken effect (it was left
    /// in doubt, or failed with [`ErrorClass::Unknown`](crate::ErrorClass::Unknown) or [`InDoubt`](crate::ErrorClass::InDoubt)).
    pub earlier_attempt_in_doubt: bool,
    /// An operator granted one more attempt, even after a permanent error.
    pub retry_granted: bool,
    /// When the first attempt (since the last operator retry) started; the
    /// retry deadline counts from here.
    pub first_attempt_at: Option<UnixMillis>,
    /// An operator marked this step compensated by hand.
    pub compensated_by_operator: bool,
    /// TCC: the confirm of this branch.
    pub confirm: CallTrack,
    /// TCC: a branch whose try started is cancelled whatever the try
    /// reported (its participant's barrier turns a needless cancel into an
    /// empty rollback).
    pub cancel_if_tried: bool,
}

/// The three kinds of participant call of a step, by the records they
/// write: what a record is about, and what the engine launches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallKind {
    /// A saga step's action or a TCC try.
    Forward,
    /// A compensation, a TCC cancel, or the compensation of a committed branch.
    Compensate,
    /// A TCC confirm.
    Confirm,
}

impl StepState {
    /// The track of call `kind`.
    pub(super) fn track(&self, kind: CallKind) -> &CallTrack {
        match kind {
            CallKind::Forward => &self.forward,
            CallKind::Compensate => &self.compensation,
            CallKind::Confirm => &self.confirm,
        }
    }

    /// The track of call `kind`, to change.
    pub(super) fn track_mut(&mut self, kind: CallKind) -> &mut CallTrack {
        match kind {
            CallKind::Forward => &mut self.forward,
            CallKind::Compensate => &mut self.compensation,
            CallKind::Confirm => &mut self.confirm,
        }
    }

    pub(super) fn new(cancel_if_tried: bool) -> Self {
        StepState {
            confirm: CallTrack::default(),
            cancel_if_tried,
            forward: CallTrack::default(),
            compensation: CallTrack::default(),
            output: None,
            earlier_attempt_in_doubt: false,
            retry_granted: false,
            first_attempt_at: None,
            compensated_by_operator: false,
        }
    }

    /// True when the action started and may have taken effect: it
    /// succeeded, is in flight or in doubt, or some attempt's outcome is
    /// unknown. Only such steps are compensated (invariant I4).
    pub fn maybe_applied(&self) -> bool {
        if self.cancel_if_tried {
            return self.forward.state != CallState::NotStarted;
        }
        self.earlier_attempt_in_doubt
            || match &self.forward.state {
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

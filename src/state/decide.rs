//! `decide`: the one next thing a saga should do, given its state and the
//! time. Pure and total: every state has an answer, and the same state and
//! clock value always give the same answer (invariant I6).

use crate::ids::{Attempt, StepIndex, UnixMillis};
use crate::log::record::{ErrorClass, WaitPurpose};
use crate::policy::{CompensationStrategy, InDoubtPolicy};
use crate::state::{CallState, Retry, SagaState};
use crate::status::SagaStatus;

/// What the engine does next for one saga.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NextAction {
    /// Write the intent, then call the forward action of `step`.
    RunStep {
        /// The step.
        step: StepIndex,
        /// The attempt number to use.
        attempt: Attempt,
    },
    /// Write the intent, then call the compensation of `step`.
    Compensate {
        /// The step.
        step: StepIndex,
        /// The attempt number to use.
        attempt: Attempt,
    },
    /// Nothing to do before `due`: write a timer and leave memory; the
    /// delay queue decides again then.
    WaitUntil {
        /// When to decide again.
        due: UnixMillis,
        /// Why, for the delay-queue listing.
        purpose: WaitPurpose,
    },
    /// Write a suspension record: an operator must act.
    Suspend {
        /// Why, for the operator.
        reason: String,
    },
    /// Suspended already: the saga leaves memory until an operator acts.
    AwaitOperator,
    /// Write the terminal record.
    Finish {
        /// The terminal status.
        status: SagaStatus,
    },
    /// Already terminal: nothing to do.
    Done {
        /// The terminal status.
        status: SagaStatus,
    },
}

enum Forward {
    Run(StepIndex, Attempt),
    Wait(UnixMillis, StepIndex, Attempt),
    GaveUp(StepIndex, UnixMillis),
    AllSucceeded,
}

/// Decides the next action for `state` at time `now`.
pub fn decide(state: &SagaState, now: UnixMillis) -> NextAction {
    if let Some(status) = state.finished {
        return NextAction::Done { status };
    }
    if state.abandoned.is_some() {
        return NextAction::Finish {
            status: SagaStatus::Failed,
        };
    }
    if state.suspended.is_some() {
        return NextAction::AwaitOperator;
    }
    if state.compensating || state.compensation_ordered {
        if manual_hold(state) {
            let remaining = to_compensate(state);
            if !remaining.is_empty() {
                return NextAction::Suspend {
                    reason: format!(
                        "manual strategy: steps [{}] still to compensate; an operator must compensate now or mark them compensated",
                        remaining.join(", ")
                    ),
                };
            }
        }
        return next_compensation(state, now);
    }
    match next_forward(state, now) {
        Forward::Run(step, attempt) => NextAction::RunStep { step, attempt },
        Forward::Wait(due, step, attempt) => NextAction::WaitUntil {
            due,
            purpose: WaitPurpose::RetryBackoff { step, attempt },
        },
        Forward::GaveUp(step, at) => after_giving_up(state, step, at, now),
        Forward::AllSucceeded => NextAction::Finish {
            status: SagaStatus::Committed,
        },
    }
}

fn next_forward(state: &SagaState, now: UnixMillis) -> Forward {
    for (index, step) in state.steps.iter().enumerate() {
        let index = index as StepIndex;
        match &step.forward {
            CallState::Succeeded { .. } => continue,
            CallState::NotStarted => return Forward::Run(index, 1),
            CallState::InFlight { attempt, since } => {
                // Only seen after a restart: the engine never decides while
                // its own call runs. Re-runs count toward the budget, so a
                // participant that kills the process every time cannot loop.
                let policy = state.plan().retry_of(index);
                let used = attempt.saturating_sub(step.forward_base);
                return match state.plan().in_doubt {
                    InDoubtPolicy::Rerun if used < policy.max_attempts => {
                        Forward::Run(index, attempt + 1)
                    }
                    InDoubtPolicy::Rerun | InDoubtPolicy::Compensate => {
                        Forward::GaveUp(index, *since)
                    }
                };
            }
            CallState::Failed { attempt, at, .. } => {
                return match state.forward_retry(index) {
                    Retry::Now => Forward::Run(index, attempt + 1),
                    Retry::At(due) if now < due => Forward::Wait(due, index, attempt + 1),
                    Retry::At(_) => Forward::Run(index, attempt + 1),
                    Retry::No => Forward::GaveUp(index, state.failure_at.unwrap_or(*at)),
                };
            }
        }
    }
    Forward::AllSucceeded
}

/// The step failed for good at `at`: its strategy decides what follows.
fn after_giving_up(
    state: &SagaState,
    step: StepIndex,
    at: UnixMillis,
    now: UnixMillis,
) -> NextAction {
    match state.plan().strategy_of(step) {
        CompensationStrategy::Immediate | CompensationStrategy::RetryThenCompensate { .. } => {
            next_compensation(state, now)
        }
        CompensationStrategy::Scheduled { delay_ms } => {
            let due = at.plus_millis(delay_ms);
            if now < due {
                NextAction::WaitUntil {
                    due,
                    purpose: WaitPurpose::ScheduledCompensation { step },
                }
            } else {
                next_compensation(state, now)
            }
        }
        CompensationStrategy::Manual => {
            let error = match &state.failure {
                Some((_, failure)) => failure.message.clone(),
                None => "its call was left in doubt".to_string(),
            };
            NextAction::Suspend {
                reason: format!(
                    "manual strategy: step '{}' failed ({error}); would compensate [{}]; an operator must compensate now, mark steps compensated, retry the step, or abandon",
                    state.plan().step_name(step),
                    to_compensate(state).join(", ")
                ),
            }
        }
    }
}

/// True when the manual strategy governs the saga's failure and no
/// operator has ordered compensation: nothing may be compensated
/// automatically (steps can still be marked compensated by hand).
fn manual_hold(state: &SagaState) -> bool {
    if state.compensation_ordered {
        return false;
    }
    let governing = state.failure.as_ref().map(|(step, _)| *step).or_else(|| {
        state
            .steps
            .iter()
            .position(|s| !matches!(s.forward, CallState::Succeeded { .. }))
            .map(|i| i as StepIndex)
    });
    governing.is_some_and(|step| state.plan().strategy_of(step) == CompensationStrategy::Manual)
}

/// Names of the steps that compensation would undo, in the order it would.
pub fn to_compensate(state: &SagaState) -> Vec<String> {
    state
        .steps
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, s)| !s.is_compensated_or_untouched())
        .map(|(i, _)| state.plan().step_name(i as StepIndex).to_owned())
        .collect()
}

fn next_compensation(state: &SagaState, now: UnixMillis) -> NextAction {
    let policy = &state.plan().compensation_retry;
    let Some((index, step)) = state
        .steps
        .iter()
        .enumerate()
        .rev()
        .find(|(_, s)| !s.is_compensated_or_untouched())
    else {
        return NextAction::Finish {
            status: SagaStatus::Compensated,
        };
    };
    let index = index as StepIndex;
    let name = state.plan().step_name(index);
    let used = step
        .compensation
        .attempts()
        .saturating_sub(step.compensation_base);
    match &step.compensation {
        CallState::NotStarted => NextAction::Compensate {
            step: index,
            attempt: 1,
        },
        // Unreachable through the filter above; total all the same.
        CallState::Succeeded { .. } => NextAction::Finish {
            status: SagaStatus::Compensated,
        },
        CallState::InFlight { attempt, .. } if used < policy.max_attempts => NextAction::Compensate {
            step: index,
            attempt: attempt + 1,
        },
        CallState::InFlight { attempt, .. } => NextAction::Suspend {
            reason: format!(
                "compensation of step '{name}' was left in doubt {attempt} times (the process died during the call each time); an operator must check it"
            ),
        },
        // An operator's "compensate now" grants one attempt whatever the
        // last error was.
        CallState::Failed { attempt, .. } if used == 0 => NextAction::Compensate {
            step: index,
            attempt: attempt + 1,
        },
        CallState::Failed {
            attempt,
            failure,
            at,
        } => {
            if failure.class == ErrorClass::Permanent {
                NextAction::Suspend {
                    reason: format!(
                        "compensation of step '{name}' failed permanently on attempt {attempt}: {}; an operator must compensate it by hand and mark it compensated",
                        failure.message
                    ),
                }
            } else if used >= policy.max_attempts {
                NextAction::Suspend {
                    reason: format!(
                        "compensation of step '{name}' failed {used} times, last: {}; an operator must fix the cause and order compensate-now, or compensate by hand",
                        failure.message
                    ),
                }
            } else {
                let delay = policy.jittered_delay_after(used, state.jitter_seed(index, *attempt) ^ 1);
                let due = at.plus_millis(delay);
                if now < due {
                    NextAction::WaitUntil {
                        due,
                        purpose: WaitPurpose::CompensationBackoff {
                            step: index,
                            attempt: attempt + 1,
                        },
                    }
                } else {
                    NextAction::Compensate {
                        step: index,
                        attempt: attempt + 1,
                    }
                }
            }
        }
    }
}

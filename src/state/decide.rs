//! `decide`: the one next thing a saga should do, given its state and the
//! time. Pure and total: every state has an answer, and the same state and
//! clock value always give the same answer (invariant I6).

use crate::ids::{Attempt, StepIndex, UnixMillis};
use crate::log::record::ErrorClass;
use crate::policy::InDoubtPolicy;
use crate::state::{CallState, SagaState};
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
    /// Nothing to do before `due` (a retry backoff). Decide again then.
    WaitUntil {
        /// When to decide again.
        due: UnixMillis,
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
    Wait(UnixMillis),
    Compensate,
    AllSucceeded,
}

/// Decides the next action for `state` at time `now`.
pub fn decide(state: &SagaState, now: UnixMillis) -> NextAction {
    if let Some(status) = state.finished {
        return NextAction::Done { status };
    }
    if state.suspended.is_some() {
        return NextAction::AwaitOperator;
    }
    if state.compensating {
        return next_compensation(state, now);
    }
    match next_forward(state, now) {
        Forward::Run(step, attempt) => NextAction::RunStep { step, attempt },
        Forward::Wait(due) => NextAction::WaitUntil { due },
        Forward::Compensate => next_compensation(state, now),
        Forward::AllSucceeded => NextAction::Finish {
            status: SagaStatus::Committed,
        },
    }
}

fn next_forward(state: &SagaState, now: UnixMillis) -> Forward {
    let policy = &state.plan().retry;
    for (index, step) in state.steps.iter().enumerate() {
        let index = index as StepIndex;
        match &step.forward {
            CallState::Succeeded { .. } => continue,
            CallState::NotStarted => return Forward::Run(index, 1),
            CallState::InFlight { attempt, .. } => {
                // Only reachable after a restart: the engine never decides
                // while its own call is running.
                return match state.plan().in_doubt {
                    InDoubtPolicy::Rerun if *attempt < policy.max_attempts => {
                        Forward::Run(index, attempt + 1)
                    }
                    InDoubtPolicy::Rerun | InDoubtPolicy::Compensate => Forward::Compensate,
                };
            }
            CallState::Failed {
                attempt,
                failure,
                at,
            } => {
                return match failure.class {
                    ErrorClass::Permanent => Forward::Compensate,
                    ErrorClass::Retryable | ErrorClass::Unknown
                        if *attempt < policy.max_attempts =>
                    {
                        let due = at.plus_millis(policy.delay_after(*attempt));
                        if now < due {
                            Forward::Wait(due)
                        } else {
                            Forward::Run(index, attempt + 1)
                        }
                    }
                    ErrorClass::Retryable | ErrorClass::Unknown => Forward::Compensate,
                };
            }
        }
    }
    Forward::AllSucceeded
}

fn next_compensation(state: &SagaState, now: UnixMillis) -> NextAction {
    let policy = &state.plan().compensation_retry;
    for (index, step) in state.steps.iter().enumerate().rev() {
        if step.is_compensated_or_untouched() {
            continue;
        }
        let index = index as StepIndex;
        let name = state
            .plan()
            .steps
            .get(index as usize)
            .map(|n| n.as_str())
            .unwrap_or("?");
        return match &step.compensation {
            CallState::Succeeded { .. } => continue,
            CallState::NotStarted => NextAction::Compensate {
                step: index,
                attempt: 1,
            },
            CallState::InFlight { attempt, .. } if *attempt < policy.max_attempts => {
                NextAction::Compensate {
                    step: index,
                    attempt: attempt + 1,
                }
            }
            CallState::InFlight { attempt, .. } => NextAction::Suspend {
                reason: format!(
                    "compensation of step '{name}' was left in doubt {attempt} times (the process died during the call each time); an operator must check it"
                ),
            },
            CallState::Failed {
                attempt,
                failure,
                at,
            } => {
                if failure.class == ErrorClass::Permanent {
                    NextAction::Suspend {
                        reason: format!(
                            "compensation of step '{name}' failed permanently on attempt {attempt}: {}; an operator must compensate it by hand",
                            failure.message
                        ),
                    }
                } else if *attempt >= policy.max_attempts {
                    NextAction::Suspend {
                        reason: format!(
                            "compensation of step '{name}' failed {attempt} times, last: {}; an operator must fix the cause and resolve it",
                            failure.message
                        ),
                    }
                } else {
                    let due = at.plus_millis(policy.delay_after(*attempt));
                    if now < due {
                        NextAction::WaitUntil { due }
                    } else {
                        NextAction::Compensate {
                            step: index,
                            attempt: attempt + 1,
                        }
                    }
                }
            }
        };
    }
    NextAction::Finish {
        status: SagaStatus::Compensated,
    }
}

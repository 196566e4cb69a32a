//! Why a saga waits, in one line for an operator: what the view, the
//! command line and the admin page say instead of a bare status.

use crate::ids::{Attempt, StepIndex, UnixMillis};
use crate::log::record::WaitPurpose;
use crate::state::{CallState, SagaState};
use crate::status::SagaStatus;

/// What `state` waits for, or `None` once it is terminal. Times are
/// absolute (RFC 3339, UTC) so that the line stays true however late it is
/// read; a reader that knows the time adds "in 2 s" itself.
pub(crate) fn waiting_of(state: &SagaState) -> Option<String> {
    if state.status().is_terminal() {
        return None;
    }
    let plan = state.plan();
    let tcc = plan.is_tcc();
    let name = |step: StepIndex| plan.step_name(step).to_owned();
    let of = |policy_max: u32, attempt: Attempt| format!("attempt {attempt} of {policy_max}");
    if let Some(reason) = &state.suspended {
        return Some(format!("waiting for an operator: {reason}"));
    }
    if let Some(timer) = &state.timer {
        let due = timer.due;
        let compensation_max = plan.compensation_retry.max_attempts;
        return Some(match timer.purpose {
            WaitPurpose::RetryBackoff { step, attempt } => format!(
                "retrying {}{}, {}, next at {due}",
                name(step),
                if tcc { " (try)" } else { "" },
                of(plan.retry_of(step).max_attempts, attempt)
            ),
            WaitPurpose::ScheduledCompensation { step } => {
                format!(
                    "scheduled compensation at {due}, after {} failed",
                    name(step)
                )
            }
            WaitPurpose::CompensationBackoff { step, attempt } => format!(
                "retrying the {} of {}, {}, next at {due}",
                if tcc { "cancel" } else { "compensation" },
                name(step),
                of(compensation_max, attempt)
            ),
            WaitPurpose::ConfirmBackoff { step, attempt } => format!(
                "retrying the confirm of {}, {}, next at {due}",
                name(step),
                of(compensation_max, attempt)
            ),
        });
    }
    let calls: Vec<String> = state
        .steps
        .iter()
        .enumerate()
        .flat_map(|(index, step)| {
            let index = index as StepIndex;
            let (forward, backward) = match tcc {
                true => ("try of ", "cancel of "),
                false => ("", "compensation of "),
            };
            [
                (forward, &step.forward.state),
                ("confirm of ", &step.confirm.state),
                (backward, &step.compensation.state),
            ]
            .into_iter()
            .filter_map(move |(what, call)| match call {
                CallState::InFlight { attempt, since } => {
                    Some(in_flight(what, plan.step_name(index), *attempt, *since))
                }
                _ => None,
            })
        })
        .collect();
    if !calls.is_empty() {
        return Some(calls.join("; "));
    }
    if let Some(action) = state.pending.last() {
        return Some(format!(
            "an operator's {} is recorded and is carried out next by the service that runs the saga (a stopped one when it starts, a node of a shared log when it adopts the saga)",
            action.command.name()
        ));
    }
    Some(match state.status() {
        SagaStatus::Created => "starting".to_owned(),
        _ => "ready for its next step".to_owned(),
    })
}

fn in_flight(what: &str, step: &str, attempt: Attempt, since: UnixMillis) -> String {
    format!("calling {what}{step} (attempt {attempt}) since {since}")
}

//! `decide`: the one next thing a saga should do, given its state and the
//! time. Pure and total: every state has an answer, and the same state and
//! clock value always give the same answer (invariant I6).

use crate::ids::{Attempt, StepIndex, UnixMillis};
use crate::log::record::{Decision, StepFailure, WaitPurpose};
use crate::policy::CompensationStrategy;
use crate::state::{CallState, Retry, SagaState};
use crate::status::SagaStatus;

/// What the engine does next for one saga.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NextAction {
    /// Write the intent, then call the forward action of `step`.
    RunStep {
        /// The step.
        step: StepIndex,
        /// The attempt number to use.
        attempt: Attempt,
    },
    /// TCC: write the intent, then call the confirm of branch `step`.
    Confirm {
        /// The branch.
        step: StepIndex,
        /// The attempt number to use.
        attempt: Attempt,
    },
    /// TCC: write the decision (commit or roll back).
    Decide {
        /// The decision.
        decision: Decision,
    },
    /// Calls of this saga are running and nothing else may start before
    /// one of them reports: wait for a result. Only from [`decide_live`].
    Busy,
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

/// A choice among the per-step candidates: start a call, wait, or ask an
/// operator. Calls come first, then (with calls running) waiting for them,
/// then the earliest timer, then a suspension.
#[derive(Default)]
struct Choice {
    run: Option<NextAction>,
    wait: Option<(UnixMillis, WaitPurpose)>,
    suspend: Option<String>,
}

impl Choice {
    fn run(&mut self, action: NextAction) {
        self.run.get_or_insert(action);
    }

    fn wait(&mut self, due: UnixMillis, purpose: WaitPurpose) {
        if self
            .wait
            .as_ref()
            .is_none_or(|(earliest, _)| due < *earliest)
        {
            self.wait = Some((due, purpose));
        }
    }

    /// `action` once `due` (the end of a backoff) has come, else a wait
    /// for it.
    fn after_backoff(
        &mut self,
        now: UnixMillis,
        due: UnixMillis,
        purpose: WaitPurpose,
        action: NextAction,
    ) {
        if now < due {
            self.wait(due, purpose);
        } else {
            self.run(action);
        }
    }

    fn suspend(&mut self, reason: String) {
        self.suspend.get_or_insert(reason);
    }

    /// The action, or `None` when no step has anything to do.
    fn pick(self, live: &[StepIndex]) -> Option<NextAction> {
        if let Some(run) = self.run {
            return Some(run);
        }
        if !live.is_empty() {
            return Some(NextAction::Busy);
        }
        if let Some((due, purpose)) = self.wait {
            return Some(NextAction::WaitUntil { due, purpose });
        }
        self.suspend.map(|reason| NextAction::Suspend { reason })
    }
}

enum Forward {
    /// Something to do (start a call, wait, busy).
    Act(NextAction),
    GaveUp(StepIndex, UnixMillis),
    AllSucceeded,
}

/// Decides the next action for `state` at time `now`, when no call of the
/// saga is running (after a restart, every call the log shows in flight is
/// in doubt).
pub fn decide(state: &SagaState, now: UnixMillis) -> NextAction {
    decide_live(state, now, &[])
}

/// Decides the next action for `state` at time `now` while the calls of
/// the steps in `live` run in this process (their intents are written, so
/// the log shows them in flight; they are not in doubt). Returns
/// [`NextAction::Busy`] when nothing may start before one of them reports,
/// and never a terminal, sleeping or suspending action while any runs.
pub fn decide_live(state: &SagaState, now: UnixMillis, live: &[StepIndex]) -> NextAction {
    let action = decide_inner(state, now, live);
    let starts_call = matches!(
        action,
        NextAction::RunStep { .. } | NextAction::Compensate { .. } | NextAction::Confirm { .. }
    );
    let limit = state.plan().max_parallel.max(1) as usize;
    if (starts_call && live.len() >= limit) || (!starts_call && !live.is_empty()) {
        return NextAction::Busy;
    }
    action
}

fn decide_inner(state: &SagaState, now: UnixMillis, live: &[StepIndex]) -> NextAction {
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
    if state.plan().is_tcc() {
        return decide_tcc(state, now, live);
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
        return next_compensation(state, now, live, SagaStatus::Compensated);
    }
    match next_forward(state, now, live) {
        Forward::Act(action) => action,
        Forward::GaveUp(_, _) if !live.is_empty() => NextAction::Busy,
        Forward::GaveUp(step, at) => after_giving_up(state, step, at, now),
        Forward::AllSucceeded => NextAction::Finish {
            status: SagaStatus::Committed,
        },
    }
}

fn decide_tcc(state: &SagaState, now: UnixMillis, live: &[StepIndex]) -> NextAction {
    let rollback = NextAction::Decide {
        decision: Decision::Rollback,
    };
    match state.decision {
        None if state.compensation_ordered => rollback,
        None => match next_forward(state, now, live) {
            Forward::Act(action) => action,
            Forward::GaveUp(..) => rollback,
            Forward::AllSucceeded => NextAction::Decide {
                decision: Decision::Commit,
            },
        },
        Some(Decision::Commit) if state.compensation_ordered => {
            next_compensation(state, now, live, SagaStatus::Compensated)
        }
        Some(Decision::Commit) => next_confirm(state, now, live),
        Some(Decision::Rollback) => next_compensation(state, now, live, SagaStatus::RolledBack),
    }
}

fn next_forward(state: &SagaState, now: UnixMillis, live: &[StepIndex]) -> Forward {
    let idle = |index: &StepIndex| !live.contains(index);
    // A step that failed for good stops every forward start, wherever it is.
    for (index, step) in state.steps.iter().enumerate() {
        let index = index as StepIndex;
        if !idle(&index) {
            continue;
        }
        match &step.forward.state {
            CallState::InFlight { attempt, since } => {
                // Only seen after a restart (or for a call not in `live`): the
                // engine never decides about its own running call. Re-runs
                // count toward the budget, so a participant that kills the
                // process every time cannot loop.
                let rerun = state.reruns_in_doubt(index, *attempt) && state.failure.is_none();
                if !rerun {
                    return Forward::GaveUp(index, *since);
                }
            }
            CallState::Failed { at, .. } if state.forward_retry(index) == Retry::No => {
                return Forward::GaveUp(index, state.failure_at.unwrap_or(*at));
            }
            _ => {}
        }
    }
    let mut choice = Choice::default();
    let mut all_succeeded = true;
    for (index, step) in state.steps.iter().enumerate() {
        let index = index as StepIndex;
        if !matches!(step.forward.state, CallState::Succeeded { .. }) {
            all_succeeded = false;
        }
        if !idle(&index) {
            continue;
        }
        match &step.forward.state {
            CallState::Succeeded { .. } => {}
            CallState::NotStarted => {
                let ready = state.plan().steps[index as usize].after.iter().all(|&dep| {
                    matches!(
                        state.steps[dep as usize].forward.state,
                        CallState::Succeeded { .. }
                    )
                });
                if ready {
                    choice.run(NextAction::RunStep {
                        step: index,
                        attempt: 1,
                    });
                }
            }
            CallState::InFlight { attempt, .. } => choice.run(NextAction::RunStep {
                step: index,
                attempt: attempt + 1,
            }),
            CallState::Failed { attempt, .. } => match state.forward_retry(index) {
                Retry::At(due) if now < due => choice.wait(
                    due,
                    WaitPurpose::RetryBackoff {
                        step: index,
                        attempt: attempt + 1,
                    },
                ),
                Retry::Now | Retry::At(_) | Retry::No => choice.run(NextAction::RunStep {
                    step: index,
                    attempt: attempt + 1,
                }),
            },
        }
    }
    if all_succeeded {
        return Forward::AllSucceeded;
    }
    Forward::Act(choice.pick(live).unwrap_or_else(|| stuck(state)))
}

/// Total all the same: a plan whose dependencies are checked at fold
/// cannot get here.
fn stuck(state: &SagaState) -> NextAction {
    NextAction::Suspend {
        reason: format!(
            "internal: no step of saga type '{}' can make progress; please report this with the saga's history",
            state.saga_type()
        ),
    }
}

fn next_confirm(state: &SagaState, now: UnixMillis, live: &[StepIndex]) -> NextAction {
    let mut choice = Choice::default();
    for index in 0..state.steps.len() as StepIndex {
        if !live.contains(&index) {
            settle(&mut choice, state, now, index, Settling::Confirm);
        }
    }
    choice.pick(live).unwrap_or(NextAction::Finish {
        status: SagaStatus::Committed,
    })
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
            next_compensation(state, now, &[], SagaStatus::Compensated)
        }
        CompensationStrategy::Scheduled { delay_ms } => {
            let due = at.plus_millis(delay_ms);
            if now < due {
                NextAction::WaitUntil {
                    due,
                    purpose: WaitPurpose::ScheduledCompensation { step },
                }
            } else {
                next_compensation(state, now, &[], SagaStatus::Compensated)
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
            .position(|s| !matches!(s.forward.state, CallState::Succeeded { .. }))
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

/// Compensates (cancels) what needs it, each step only after every step
/// that depends on it; finishes with `done` when nothing is left.
fn next_compensation(
    state: &SagaState,
    now: UnixMillis,
    live: &[StepIndex],
    done: SagaStatus,
) -> NextAction {
    let mut choice = Choice::default();
    for (index, step) in state.steps.iter().enumerate().rev() {
        let index = index as StepIndex;
        if step.is_compensated_or_untouched() || live.contains(&index) {
            continue;
        }
        let blocked = state
            .plan()
            .dependents(index)
            .any(|d| !state.steps[d as usize].is_compensated_or_untouched());
        if !blocked {
            settle(&mut choice, state, now, index, Settling::Compensate);
        }
    }
    if let Some(action) = choice.pick(live) {
        return action;
    }
    if state.steps.iter().all(|s| s.is_compensated_or_untouched()) {
        NextAction::Finish { status: done }
    } else {
        stuck(state)
    }
}

/// The calls that settle a saga after its forward phase: a TCC confirm or a
/// compensation. Both are retried under the saga's compensation policy until
/// it is used up, then left to an operator.
#[derive(Clone, Copy)]
enum Settling {
    Confirm,
    Compensate,
}

impl Settling {
    fn action(self, step: StepIndex, attempt: Attempt) -> NextAction {
        match self {
            Settling::Confirm => NextAction::Confirm { step, attempt },
            Settling::Compensate => NextAction::Compensate { step, attempt },
        }
    }

    fn backoff(self, step: StepIndex, attempt: Attempt) -> WaitPurpose {
        match self {
            Settling::Confirm => WaitPurpose::ConfirmBackoff { step, attempt },
            Settling::Compensate => WaitPurpose::CompensationBackoff { step, attempt },
        }
    }

    /// Keeps the jitter of a confirm and a compensation of one attempt apart.
    fn salt(self) -> u64 {
        match self {
            Settling::Confirm => 2,
            Settling::Compensate => 1,
        }
    }

    fn left_in_doubt(self, name: &str, attempt: Attempt) -> String {
        match self {
            Settling::Confirm => format!(
                "confirm of branch '{name}' was left in doubt {attempt} times; an operator must check it and order a retry"
            ),
            Settling::Compensate => format!(
                "compensation of step '{name}' was left in doubt {attempt} times (the process died during the call each time); an operator must check it"
            ),
        }
    }

    fn gave_up(self, name: &str, used: Attempt, attempt: Attempt, failure: &StepFailure) -> String {
        let last = &failure.message;
        match self {
            Settling::Confirm => format!(
                "confirm of branch '{name}' failed {used} times, last: {last}; an operator must fix the cause and order a retry"
            ),
            Settling::Compensate if !failure.class.retries() => format!(
                "compensation of step '{name}' failed permanently on attempt {attempt}: {last}; an operator must compensate it by hand and mark it compensated"
            ),
            Settling::Compensate => format!(
                "compensation of step '{name}' failed {used} times, last: {last}; an operator must fix the cause and order compensate-now, or compensate by hand"
            ),
        }
    }
}

/// Adds the next move of the `kind` call of step `index` to `choice`.
fn settle(
    choice: &mut Choice,
    state: &SagaState,
    now: UnixMillis,
    index: StepIndex,
    kind: Settling,
) {
    let step = &state.steps[index as usize];
    let track = match kind {
        Settling::Confirm => &step.confirm,
        Settling::Compensate => &step.compensation,
    };
    let policy = &state.plan().compensation_retry;
    let name = state.plan().step_name(index);
    let used = track.used();
    match &track.state {
        CallState::Succeeded { .. } => {}
        CallState::NotStarted => choice.run(kind.action(index, 1)),
        // An operator's grant (used == 0) runs one more attempt whatever
        // happened to the last one.
        CallState::InFlight { attempt, .. } if used < policy.max_attempts || used == 0 => {
            choice.run(kind.action(index, attempt + 1))
        }
        CallState::InFlight { attempt, .. } => choice.suspend(kind.left_in_doubt(name, *attempt)),
        CallState::Failed { attempt, .. } if used == 0 => {
            choice.run(kind.action(index, attempt + 1))
        }
        CallState::Failed {
            attempt,
            failure,
            at,
        } => {
            if !failure.class.retries() || used >= policy.max_attempts {
                choice.suspend(kind.gave_up(name, used, *attempt, failure));
            } else {
                let seed = state.jitter_seed(index, *attempt) ^ kind.salt();
                let due = at.plus_millis(policy.jittered_delay_after(used, seed));
                let attempt = attempt + 1;
                choice.after_backoff(
                    now,
                    due,
                    kind.backoff(index, attempt),
                    kind.action(index, attempt),
                );
            }
        }
    }
}

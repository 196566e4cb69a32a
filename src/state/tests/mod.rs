//! Tables for fold and decide: every record kind against every state, and
//! the action decided in each state.

use super::*;
use crate::log::record::CallRef;
use crate::log::record::{
    CallFailed, CallSucceeded, ErrorClass, Finished, OperatorAction, OperatorCommand, Suspended,
    TimerSet, WaitPurpose,
};
use crate::policy::{CompensationStrategy, InDoubtPolicy, RetryPolicy};

const T0: u64 = 1_000_000;

fn plan(in_doubt: InDoubtPolicy) -> SagaPlan {
    SagaPlan {
        steps: SagaPlan::sequential(&["reserve", "charge", "ship"]).steps,
        strategy: CompensationStrategy::Immediate,
        retry: RetryPolicy {
            max_attempts: 3,
            initial_interval_ms: 100,
            max_interval_ms: 1_000,
            ..RetryPolicy::forward_default()
        },
        compensation_retry: RetryPolicy {
            max_attempts: 2,
            initial_interval_ms: 50,
            max_interval_ms: 1_000,
            ..RetryPolicy::forward_default()
        },
        in_doubt,
        timeout_ms: None,
        kind: crate::log::record::PlanKind::Saga,
        max_parallel: 1,
    }
}

fn start(in_doubt: InDoubtPolicy) -> Record {
    Record::SagaStarted(Box::new(SagaStarted {
        saga_type: "order".into(),
        version: 1,
        input: vec![],
        plan: plan(in_doubt),
        idempotency_key: None,
        parent: None,
    }))
}

fn call(step: StepIndex, attempt: Attempt) -> CallRef {
    CallRef { step, attempt }
}
fn ss(step: StepIndex, attempt: Attempt) -> Record {
    Record::StepStarted(call(step, attempt))
}
fn ok(step: StepIndex, attempt: Attempt) -> Record {
    Record::StepSucceeded(CallSucceeded {
        call: call(step, attempt),
        output: vec![step as u8],
    })
}
fn failure(class: ErrorClass) -> StepFailure {
    StepFailure {
        class,
        message: format!("{class:?}"),
    }
}
fn fail(step: StepIndex, attempt: Attempt, class: ErrorClass) -> Record {
    Record::StepFailed(CallFailed {
        call: call(step, attempt),
        failure: failure(class),
    })
}
fn cs(step: StepIndex, attempt: Attempt) -> Record {
    Record::CompensationStarted(call(step, attempt))
}
fn cok(step: StepIndex, attempt: Attempt) -> Record {
    Record::CompensationSucceeded(call(step, attempt))
}
fn cfail(step: StepIndex, attempt: Attempt, class: ErrorClass) -> Record {
    Record::CompensationFailed(CallFailed {
        call: call(step, attempt),
        failure: failure(class),
    })
}
fn suspended() -> Record {
    Record::SagaSuspended(Suspended {
        reason: "operator needed".into(),
    })
}
fn finished(status: SagaStatus) -> Record {
    Record::SagaFinished(Finished { status })
}

/// Entries with seq 0.. and timestamps T0, T0+10, ...
fn entries(records: Vec<Record>) -> Vec<LogEntry> {
    records
        .into_iter()
        .enumerate()
        .map(|(i, record)| LogEntry {
            seq: i as u64,
            at: UnixMillis(T0 + 10 * i as u64),
            record,
        })
        .collect()
}

fn state_of(records: Vec<Record>) -> SagaState {
    fold(&entries(records)).expect("the table's states are legal")
}

fn with(mut base: Vec<Record>, more: &[Record]) -> Vec<Record> {
    base.extend_from_slice(more);
    base
}

/// A saga whose first `n` steps succeeded at their first attempt.
fn steps_done(n: StepIndex) -> Vec<Record> {
    let mut log = vec![start(InDoubtPolicy::Rerun)];
    for step in 0..n {
        log.extend([ss(step, 1), ok(step, 1)]);
    }
    log
}

use ErrorClass::{Permanent, Retryable, Unknown};

/// The states of the table, each as the log that produces it.
fn states() -> Vec<(&'static str, Vec<Record>)> {
    let created = vec![start(InDoubtPolicy::Rerun)];
    let step0_in_flight = with(created.clone(), &[ss(0, 1)]);
    let step0_done = steps_done(1);
    let step1_retryable = with(step0_done.clone(), &[ss(1, 1), fail(1, 1, Retryable)]);
    let step1_permanent = with(step0_done.clone(), &[ss(1, 1), fail(1, 1, Permanent)]);
    let compensating = with(step1_permanent.clone(), &[cs(0, 1)]);
    let compensated = with(compensating.clone(), &[cok(0, 1)]);
    let suspended_ = with(compensating.clone(), &[cfail(0, 1, Permanent), suspended()]);
    let committed = with(
        step0_done.clone(),
        &[
            ss(1, 1),
            ok(1, 1),
            ss(2, 1),
            ok(2, 1),
            finished(SagaStatus::Committed),
        ],
    );
    let ended_compensated = with(compensated.clone(), &[finished(SagaStatus::Compensated)]);
    vec![
        ("created", created),
        ("step0_in_flight", step0_in_flight),
        ("step0_done", step0_done),
        ("step1_failed_retryable", step1_retryable),
        ("step1_failed_permanent", step1_permanent),
        ("compensating", compensating),
        ("compensated_not_finished", compensated),
        ("suspended", suspended_),
        ("committed", committed),
        ("finished_compensated", ended_compensated),
    ]
}

/// The record of each kind that is most plausible next in `state`.
fn probes(state: &SagaState) -> Vec<(&'static str, Record)> {
    let next_forward = state
        .steps
        .iter()
        .position(|s| !matches!(s.forward.state, CallState::Succeeded { .. }))
        .unwrap_or(0) as StepIndex;
    let fwd_attempt = state.steps[next_forward as usize].forward.attempts();
    let fwd_open = state
        .steps
        .iter()
        .enumerate()
        .find_map(|(i, s)| match s.forward.state {
            CallState::InFlight { attempt, .. } => Some(call(i as StepIndex, attempt)),
            _ => None,
        })
        .unwrap_or(call(0, 1));
    let next_comp = (0..state.steps.len())
        .rev()
        .find(|&i| !state.steps[i].is_compensated_or_untouched())
        .unwrap_or(0) as StepIndex;
    let comp_attempt = state.steps[next_comp as usize].compensation.attempts();
    let comp_open = state
        .steps
        .iter()
        .enumerate()
        .find_map(|(i, s)| match s.compensation.state {
            CallState::InFlight { attempt, .. } => Some(call(i as StepIndex, attempt)),
            _ => None,
        })
        .unwrap_or(call(0, 1));
    vec![
        ("saga_started", start(InDoubtPolicy::Rerun)),
        ("step_started", ss(next_forward, fwd_attempt + 1)),
        ("step_succeeded", ok(fwd_open.step, fwd_open.attempt)),
        (
            "step_failed",
            fail(fwd_open.step, fwd_open.attempt, Retryable),
        ),
        ("compensation_started", cs(next_comp, comp_attempt + 1)),
        (
            "compensation_succeeded",
            cok(comp_open.step, comp_open.attempt),
        ),
        (
            "compensation_failed",
            cfail(comp_open.step, comp_open.attempt, Retryable),
        ),
        ("saga_suspended", suspended()),
        ("finished_committed", finished(SagaStatus::Committed)),
        ("finished_compensated", finished(SagaStatus::Compensated)),
        ("finished_failed", finished(SagaStatus::Failed)),
        (
            "timer_set",
            Record::TimerSet(TimerSet {
                due: UnixMillis(T0 + 1_000_000),
                purpose: WaitPurpose::RetryBackoff {
                    step: 0,
                    attempt: 2,
                },
            }),
        ),
        ("compensate_now", operator(OperatorCommand::CompensateNow)),
        (
            "mark_compensated",
            operator(OperatorCommand::MarkCompensated { step: next_comp }),
        ),
        ("retry_step", operator(OperatorCommand::RetryStep)),
        ("abandon", operator(OperatorCommand::Abandon)),
        ("cancel", operator(OperatorCommand::Cancel)),
    ]
}

fn operator(command: OperatorCommand) -> Record {
    Record::OperatorAction(OperatorAction {
        actor: "ops".into(),
        reason: "test".into(),
        command,
    })
}

mod decide;
mod fold;

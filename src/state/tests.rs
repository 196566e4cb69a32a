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

use ErrorClass::{Permanent, Retryable, Unknown};

/// The states of the table, each as the log that produces it.
fn states() -> Vec<(&'static str, Vec<Record>)> {
    let created = vec![start(InDoubtPolicy::Rerun)];
    let step0_in_flight = with(created.clone(), &[ss(0, 1)]);
    let step0_done = with(created.clone(), &[ss(0, 1), ok(0, 1)]);
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

#[test]
fn every_record_kind_in_every_state_is_accepted_or_rejected_as_the_table_says() {
    // Columns: start, step_started, step_succeeded, step_failed,
    // compensation_started, compensation_succeeded, compensation_failed,
    // suspended, finished(committed), finished(compensated), finished(failed),
    // timer_set, and the operator's compensate_now, mark_compensated,
    // retry_step, abandon, cancel.
    let table: [(&str, &str); 10] = [
        ("created", "-+-----+---++--++"),
        ("step0_in_flight", "-++++--+---++++++"),
        ("step0_done", "-+--+--+---+++-++"),
        ("step1_failed_retryable", "-+--+--+---++++++"),
        ("step1_failed_permanent", "----+--+---++++++"),
        ("compensating", "----++++---+++-++"),
        ("compensated_not_finished", "-------+-+-++--++"),
        ("suspended", "-------+----++-++"),
        ("committed", "------------+----"),
        ("finished_compensated", "-----------------"),
    ];
    let states = states();
    let mut mismatches = Vec::new();
    for ((name, log), (table_name, row)) in states.iter().zip(table.iter()) {
        assert_eq!(name, table_name);
        let state = state_of(log.clone());
        assert_eq!(
            probes(&state).len(),
            row.len(),
            "row {name} has one mark per probe"
        );
        for ((probe, record), expected) in probes(&state).into_iter().zip(row.chars()) {
            let entry = LogEntry {
                seq: state.next_seq,
                at: UnixMillis(T0 + 10_000),
                record,
            };
            let accepted = state.clone().apply(&entry).is_ok();
            if accepted != (expected == '+') {
                mismatches.push(format!(
                    "{name} + {probe}: accepted={accepted}, table says {expected}"
                ));
            }
        }
    }
    assert!(mismatches.is_empty(), "{mismatches:#?}");
}

#[test]
fn a_log_must_start_with_saga_started() {
    assert!(fold(&[]).is_err());
    let log = entries(vec![ss(0, 1)]);
    assert!(fold(&log).is_err());
}

#[test]
fn a_gap_in_sequence_numbers_is_rejected() {
    let mut log = entries(vec![start(InDoubtPolicy::Rerun), ss(0, 1), ok(0, 1)]);
    log.remove(1);
    let error = fold(&log).unwrap_err();
    assert!(error.reason.contains("expected seq 1"), "{error}");
}

#[test]
fn a_step_may_not_start_before_the_previous_one_succeeded() {
    let log = entries(vec![start(InDoubtPolicy::Rerun), ss(1, 1)]);
    assert!(fold(&log).is_err());
}

#[test]
fn compensation_must_go_in_reverse_order() {
    let log = entries(vec![
        start(InDoubtPolicy::Rerun),
        ss(0, 1),
        ok(0, 1),
        ss(1, 1),
        ok(1, 1),
        ss(2, 1),
        fail(2, 1, Permanent),
        cs(0, 1),
    ]);
    let error = fold(&log).unwrap_err();
    assert!(error.reason.contains("depends on it"), "{error}");
}

#[test]
fn attempt_numbers_must_increase_by_one() {
    let log = entries(vec![
        start(InDoubtPolicy::Rerun),
        ss(0, 1),
        fail(0, 1, Retryable),
        ss(0, 3),
    ]);
    assert!(fold(&log).is_err());
}

#[test]
fn statuses_follow_the_log() {
    let expected = [
        ("created", SagaStatus::Created),
        ("step0_in_flight", SagaStatus::Running),
        ("step0_done", SagaStatus::Running),
        ("step1_failed_retryable", SagaStatus::Running),
        ("step1_failed_permanent", SagaStatus::Compensating),
        ("compensating", SagaStatus::Compensating),
        ("compensated_not_finished", SagaStatus::Compensating),
        ("suspended", SagaStatus::Suspended),
        ("committed", SagaStatus::Committed),
        ("finished_compensated", SagaStatus::Compensated),
    ];
    for ((name, log), (expected_name, status)) in states().into_iter().zip(expected) {
        assert_eq!(name, expected_name);
        assert_eq!(state_of(log).status(), status, "{name}");
    }
}

fn decided(records: Vec<Record>, now: u64) -> NextAction {
    decide(&state_of(records), UnixMillis(now))
}

#[test]
fn decide_in_every_table_state() {
    let later = T0 + 1_000_000;
    let expected = [
        (
            "created",
            NextAction::RunStep {
                step: 0,
                attempt: 1,
            },
        ),
        (
            "step0_in_flight",
            NextAction::RunStep {
                step: 0,
                attempt: 2,
            },
        ),
        (
            "step0_done",
            NextAction::RunStep {
                step: 1,
                attempt: 1,
            },
        ),
        (
            "step1_failed_retryable",
            NextAction::RunStep {
                step: 1,
                attempt: 2,
            },
        ),
        (
            "step1_failed_permanent",
            NextAction::Compensate {
                step: 0,
                attempt: 1,
            },
        ),
        (
            "compensating",
            NextAction::Compensate {
                step: 0,
                attempt: 2,
            },
        ),
        (
            "compensated_not_finished",
            NextAction::Finish {
                status: SagaStatus::Compensated,
            },
        ),
        ("suspended", NextAction::AwaitOperator),
        (
            "committed",
            NextAction::Done {
                status: SagaStatus::Committed,
            },
        ),
        (
            "finished_compensated",
            NextAction::Done {
                status: SagaStatus::Compensated,
            },
        ),
    ];
    for ((name, log), (expected_name, action)) in states().into_iter().zip(expected) {
        assert_eq!(name, expected_name);
        assert_eq!(decided(log, later), action, "{name}");
    }
}

#[test]
fn retryable_failure_waits_for_its_backoff_before_the_next_attempt() {
    let log = vec![start(InDoubtPolicy::Rerun), ss(0, 1), fail(0, 1, Retryable)];
    let failed_at = T0 + 20;
    assert_eq!(
        decided(log.clone(), failed_at + 99),
        NextAction::WaitUntil {
            due: UnixMillis(failed_at + 100),
            purpose: WaitPurpose::RetryBackoff {
                step: 0,
                attempt: 2
            },
        }
    );
    assert_eq!(
        decided(log, failed_at + 100),
        NextAction::RunStep {
            step: 0,
            attempt: 2
        }
    );
}

#[test]
fn exhausted_retries_lead_to_compensation() {
    let log = vec![
        start(InDoubtPolicy::Rerun),
        ss(0, 1),
        ok(0, 1),
        ss(1, 1),
        fail(1, 1, Retryable),
        ss(1, 2),
        fail(1, 2, Retryable),
        ss(1, 3),
        fail(1, 3, Retryable),
    ];
    assert_eq!(
        decided(log, u64::MAX),
        NextAction::Compensate {
            step: 0,
            attempt: 1
        }
    );
}

#[test]
fn permanent_failure_of_the_first_step_ends_compensated_with_nothing_to_undo() {
    let log = vec![start(InDoubtPolicy::Rerun), ss(0, 1), fail(0, 1, Permanent)];
    assert_eq!(
        decided(log, T0),
        NextAction::Finish {
            status: SagaStatus::Compensated
        }
    );
}

#[test]
fn step_with_unknown_outcome_is_compensated_when_retries_run_out() {
    let log = vec![
        start(InDoubtPolicy::Rerun),
        ss(0, 1),
        fail(0, 1, Unknown),
        ss(0, 2),
        fail(0, 2, Permanent),
    ];
    assert_eq!(
        decided(log, T0),
        NextAction::Compensate {
            step: 0,
            attempt: 1
        }
    );
}

#[test]
fn in_doubt_step_is_rerun_until_attempts_run_out() {
    let log = vec![start(InDoubtPolicy::Rerun), ss(0, 1), ss(0, 2), ss(0, 3)];
    assert_eq!(
        decided(log, T0),
        NextAction::Compensate {
            step: 0,
            attempt: 1
        }
    );
}

#[test]
fn in_doubt_step_is_compensated_under_the_compensate_policy() {
    let log = vec![
        start(InDoubtPolicy::Compensate),
        ss(0, 1),
        ok(0, 1),
        ss(1, 1),
    ];
    assert_eq!(
        decided(log, T0),
        NextAction::Compensate {
            step: 1,
            attempt: 1
        }
    );
}

#[test]
fn failing_compensation_backs_off_then_suspends() {
    let base = with(states()[5].1.clone(), &[cfail(0, 1, Retryable)]);
    let failed_at = T0 + 10 * 6;
    assert_eq!(
        decided(base.clone(), failed_at),
        NextAction::WaitUntil {
            due: UnixMillis(failed_at + 50),
            purpose: WaitPurpose::CompensationBackoff {
                step: 0,
                attempt: 2
            },
        }
    );
    let exhausted = with(base, &[cs(0, 2), cfail(0, 2, Retryable)]);
    assert!(matches!(
        decided(exhausted, u64::MAX),
        NextAction::Suspend { .. }
    ));
}

#[test]
fn permanently_failing_compensation_suspends_at_once() {
    let log = with(states()[5].1.clone(), &[cfail(0, 1, Permanent)]);
    assert!(matches!(decided(log, T0), NextAction::Suspend { .. }));
}

#[test]
fn all_steps_succeeded_decides_commit() {
    let log = vec![
        start(InDoubtPolicy::Rerun),
        ss(0, 1),
        ok(0, 1),
        ss(1, 1),
        ok(1, 1),
        ss(2, 1),
        ok(2, 1),
    ];
    assert_eq!(
        decided(log, T0),
        NextAction::Finish {
            status: SagaStatus::Committed
        }
    );
}

#[test]
fn decide_is_deterministic_for_the_same_state_and_clock() {
    for (_, log) in states() {
        let state = state_of(log);
        for now in [0, T0, T0 + 55, u64::MAX] {
            assert_eq!(
                decide(&state, UnixMillis(now)),
                decide(&state.clone(), UnixMillis(now))
            );
        }
    }
}

#[test]
fn a_start_record_the_caller_owns_gives_the_same_state_as_a_borrowed_one() {
    let entry = LogEntry {
        seq: 0,
        at: UnixMillis(5),
        record: start(InDoubtPolicy::Rerun),
    };
    let borrowed = SagaState::from_start(&entry).unwrap();
    assert_eq!(SagaState::from_start_owned(entry), Ok(borrowed));
}

#[test]
fn an_owned_record_that_cannot_start_a_saga_is_refused_like_a_borrowed_one() {
    let entry = LogEntry {
        seq: 0,
        at: UnixMillis(5),
        record: Record::StepStarted(call(0, 1)),
    };
    let borrowed = SagaState::from_start(&entry).unwrap_err();
    assert_eq!(SagaState::from_start_owned(entry).unwrap_err(), borrowed);
}

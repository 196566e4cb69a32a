//! `decide`: the next action in each state.

use super::*;

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
    let log = with(
        steps_done(1),
        &[
            ss(1, 1),
            fail(1, 1, Retryable),
            ss(1, 2),
            fail(1, 2, Retryable),
            ss(1, 3),
            fail(1, 3, Retryable),
        ],
    );
    assert_eq!(decided(log, u64::MAX), compensate_first(0));
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
    assert_eq!(decided(log, T0), compensate_first(0));
}

#[test]
fn in_doubt_step_is_rerun_until_attempts_run_out() {
    let log = vec![start(InDoubtPolicy::Rerun), ss(0, 1), ss(0, 2), ss(0, 3)];
    assert_eq!(decided(log, T0), compensate_first(0));
}

#[test]
fn in_doubt_step_is_compensated_under_the_compensate_policy() {
    let log = vec![
        start(InDoubtPolicy::Compensate),
        ss(0, 1),
        ok(0, 1),
        ss(1, 1),
    ];
    assert_eq!(decided(log, T0), compensate_first(1));
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
    let log = steps_done(3);
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

/// The first attempt at compensating `step`.
fn compensate_first(step: StepIndex) -> NextAction {
    NextAction::Compensate { step, attempt: 1 }
}

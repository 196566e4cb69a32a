//! `fold`: which record may follow which.

use super::*;

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
    let log = entries(with(
        steps_done(2),
        &[ss(2, 1), fail(2, 1, Permanent), cs(0, 1)],
    ));
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

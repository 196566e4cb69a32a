//! The state machine on arbitrary record sequences: `fold` never panics and
//! agrees with applying the records one by one; on every state it accepts,
//! `decide` is total (never panics) and deterministic, and only proposes
//! calls the state allows, also while some of its calls run (`decide_live`).
//! Plans are sagas or TCC, with arbitrary step dependencies.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sagalog::tools::{decide, decide_live, fold, CallState, NextAction, SagaState};
use sagalog::{
    CallFailed, CallRef, CallSucceeded, Decided, Decision, ErrorClass, Finished, LogEntry,
    OperatorAction, OperatorCommand, PlanKind, Record, SagaPlan, SagaStarted, StepFailure,
    StepPlan, Suspended, TimerSet, WaitPurpose,
};
use sagalog::{CompensationStrategy, InDoubtPolicy, RetryPolicy, SagaStatus, UnixMillis};

#[derive(Arbitrary, Debug)]
enum Op {
    StepStarted(u8, u8),
    StepSucceeded(u8, u8),
    StepFailed(u8, u8, u8),
    CompensationStarted(u8, u8),
    CompensationSucceeded(u8, u8),
    CompensationFailed(u8, u8, u8),
    Suspended,
    Finished(u8),
    Timer(u16),
    Operator(u8, u8),
    Start,
    Decided(bool),
    ConfirmStarted(u8, u8),
    ConfirmSucceeded(u8, u8),
    ConfirmFailed(u8, u8, u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    steps: u8,
    strategy: u8,
    max_attempts: u8,
    in_doubt: bool,
    tcc: bool,
    deps: u16,
    max_parallel: u8,
    live: u8,
    ops: Vec<(Op, u16)>,
    nows: Vec<u32>,
}

fn class(c: u8) -> ErrorClass {
    match c % 3 {
        0 => ErrorClass::Permanent,
        1 => ErrorClass::Retryable,
        _ => ErrorClass::Unknown,
    }
}

fn failure(c: u8) -> StepFailure {
    StepFailure {
        class: class(c),
        message: String::new(),
    }
}

fn call(step: u8, attempt: u8) -> CallRef {
    CallRef {
        step: u32::from(step % 6),
        attempt: u32::from(attempt % 8),
    }
}

fn status(s: u8) -> SagaStatus {
    SagaStatus::ALL[usize::from(s) % SagaStatus::ALL.len()]
}

fn start(input: &Input) -> Record {
    let retry = RetryPolicy {
        max_attempts: u32::from(input.max_attempts % 5),
        initial_interval_ms: 10,
        max_interval_ms: 1_000,
        jitter: 0.5,
        deadline_ms: Some(5_000),
        ..RetryPolicy::forward_default()
    };
    let strategy = match input.strategy % 4 {
        0 => CompensationStrategy::Immediate,
        1 => CompensationStrategy::Scheduled { delay_ms: 100 },
        2 => CompensationStrategy::Manual,
        _ => CompensationStrategy::RetryThenCompensate { policy: retry },
    };
    Record::SagaStarted(Box::new(SagaStarted {
        saga_type: "fuzz".into(),
        version: 1,
        input: Vec::new(),
        plan: SagaPlan {
            steps: (0..input.steps % 5)
                .map(|i| {
                    let after = (0..i)
                        .filter(|j| input.deps & (1 << (i * 3 + j)) != 0)
                        .map(u32::from)
                        .collect();
                    StepPlan::named(format!("s{i}"), after)
                })
                .collect(),
            strategy,
            retry,
            compensation_retry: retry,
            in_doubt: if input.in_doubt {
                InDoubtPolicy::Compensate
            } else {
                InDoubtPolicy::Rerun
            },
            timeout_ms: None,
            kind: if input.tcc {
                PlanKind::Tcc {
                    async_confirm: false,
                    async_cancel: false,
                }
            } else {
                PlanKind::Saga
            },
            max_parallel: u32::from(input.max_parallel % 4),
        },
        idempotency_key: None,
        parent: None,
    }))
}

fn record(op: &Op) -> Record {
    match *op {
        Op::StepStarted(s, a) => Record::StepStarted(call(s, a)),
        Op::StepSucceeded(s, a) => Record::StepSucceeded(CallSucceeded {
            call: call(s, a),
            output: vec![s],
        }),
        Op::StepFailed(s, a, c) => Record::StepFailed(CallFailed {
            call: call(s, a),
            failure: failure(c),
        }),
        Op::CompensationStarted(s, a) => Record::CompensationStarted(call(s, a)),
        Op::CompensationSucceeded(s, a) => Record::CompensationSucceeded(call(s, a)),
        Op::CompensationFailed(s, a, c) => Record::CompensationFailed(CallFailed {
            call: call(s, a),
            failure: failure(c),
        }),
        Op::Suspended => Record::SagaSuspended(Suspended {
            reason: String::new(),
        }),
        Op::Finished(s) => Record::SagaFinished(Finished { status: status(s) }),
        Op::Timer(due) => Record::TimerSet(TimerSet {
            due: UnixMillis(u64::from(due)),
            purpose: WaitPurpose::ScheduledCompensation { step: 0 },
        }),
        Op::Operator(c, s) => Record::OperatorAction(OperatorAction {
            actor: String::new(),
            reason: String::new(),
            command: match c % 5 {
                0 => OperatorCommand::CompensateNow,
                1 => OperatorCommand::MarkCompensated {
                    step: u32::from(s % 6),
                },
                2 => OperatorCommand::RetryStep,
                3 => OperatorCommand::Abandon,
                _ => OperatorCommand::Cancel,
            },
        }),
        Op::Start => Record::SagaStarted(Box::new(SagaStarted {
            saga_type: "again".into(),
            version: 1,
            input: Vec::new(),
            plan: SagaPlan::sequential(&["x"]),
            idempotency_key: None,
            parent: None,
        })),
        Op::Decided(commit) => Record::Decided(Decided {
            decision: if commit {
                Decision::Commit
            } else {
                Decision::Rollback
            },
        }),
        Op::ConfirmStarted(s, a) => Record::ConfirmStarted(call(s, a)),
        Op::ConfirmSucceeded(s, a) => Record::ConfirmSucceeded(call(s, a)),
        Op::ConfirmFailed(s, a, c) => Record::ConfirmFailed(CallFailed {
            call: call(s, a),
            failure: failure(c),
        }),
    }
}

/// What `decide` proposes must be legal to write next.
fn check_proposal(state: &SagaState, action: &NextAction, now: UnixMillis) {
    let record = match action {
        NextAction::RunStep { step, attempt } => Record::StepStarted(CallRef {
            step: *step,
            attempt: *attempt,
        }),
        NextAction::Compensate { step, attempt } => Record::CompensationStarted(CallRef {
            step: *step,
            attempt: *attempt,
        }),
        NextAction::Confirm { step, attempt } => Record::ConfirmStarted(CallRef {
            step: *step,
            attempt: *attempt,
        }),
        NextAction::Decide { decision } => Record::Decided(Decided {
            decision: *decision,
        }),
        NextAction::Finish { status } => Record::SagaFinished(Finished { status: *status }),
        NextAction::Suspend { reason } => Record::SagaSuspended(Suspended {
            reason: reason.clone(),
        }),
        NextAction::WaitUntil { due, purpose } => {
            assert!(*due > now, "a wait must end in the future");
            Record::TimerSet(TimerSet {
                due: *due,
                purpose: purpose.clone(),
            })
        }
        NextAction::AwaitOperator | NextAction::Done { .. } | NextAction::Busy => return,
        other => panic!("an action this target does not know: {other:?}"),
    };
    let mut next = state.clone();
    let entry = LogEntry {
        seq: state.next_seq,
        at: now,
        record,
    };
    if let Err(e) = next.apply(&entry) {
        panic!("decide proposed {action:?}, which fold rejects: {e}");
    }
}

fuzz_target!(|input: Input| {
    let mut records = vec![start(&input)];
    let mut times = vec![0u64];
    for (op, dt) in input.ops.iter().take(64) {
        records.push(record(op));
        times.push(times[times.len() - 1] + u64::from(*dt));
    }
    let entries: Vec<LogEntry> = records
        .into_iter()
        .zip(times)
        .enumerate()
        .map(|(i, (record, at))| LogEntry {
            seq: i as u64,
            at: UnixMillis(at),
            record,
        })
        .collect();
    // fold agrees with applying the longest legal prefix one record at a time.
    let mut state = match SagaState::from_start(&entries[0]) {
        Ok(state) => state,
        Err(_) => return,
    };
    let mut legal = 1;
    for entry in &entries[1..] {
        let mut next = state.clone();
        if next.apply(entry).is_err() {
            break;
        }
        state = next;
        legal += 1;
    }
    assert_eq!(fold(&entries[..legal]).as_ref(), Ok(&state));
    if legal < entries.len() {
        assert!(
            fold(&entries).is_err(),
            "fold accepted a sequence apply rejected"
        );
    }
    let last = entries[legal - 1].at.0;
    for now in input.nows.iter().take(8) {
        let now = UnixMillis(last + u64::from(*now));
        let action = decide(&state, now);
        assert_eq!(action, decide(&state, now), "decide is deterministic");
        assert_ne!(action, NextAction::Busy, "busy only while calls run");
        check_proposal(&state, &action, now);
        // The same with the calls the log shows in flight running here.
        let in_flight = |c: &CallState| matches!(c, CallState::InFlight { .. });
        let live: Vec<u32> = (0..state.steps.len() as u32)
            .filter(|&i| input.live & (1 << i) != 0)
            .filter(|&i| {
                let step = &state.steps[i as usize];
                in_flight(&step.forward.state)
                    || in_flight(&step.compensation.state)
                    || in_flight(&step.confirm.state)
            })
            .collect();
        let action = decide_live(&state, now, &live);
        match &action {
            NextAction::RunStep { step, .. }
            | NextAction::Compensate { step, .. }
            | NextAction::Confirm { step, .. } => {
                assert!(!live.contains(step), "{action:?} for a running step");
                assert!(live.len() < state.plan().max_parallel.max(1) as usize);
            }
            NextAction::Busy => assert!(!live.is_empty()),
            _ => assert!(live.is_empty(), "{action:?} while calls run"),
        }
        check_proposal(&state, &action, now);
    }
});

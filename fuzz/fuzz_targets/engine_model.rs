//! Model-based target: arbitrary operations against the engine on the
//! in-memory store, on tokio's paused clock: start sagas (each with its own
//! strategy and participant behaviour), let time pass, reopen the engine
//! (abandoning calls in flight), turn random store faults on and off, and
//! act as an operator. A model records every participant call and its
//! result, independently of the log. After a final fault-free reopen:
//! - every call had a durable intent, and none followed a failed append;
//! - every saga is terminal or waiting for an operator (nothing stuck: a
//!   saga that never settles hangs the input, which libFuzzer reports);
//! - a compensated saga compensated every step whose action may have taken
//!   effect, a committed one ran every step to success.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sagalog::tools::decode_record;
use sagalog::{CallRef, OperatorCommand, Record};
use sagalog::{
    CompensationStrategy, Engine, EngineConfig, MemStore, Phase, Registry, RetryPolicy,
    SagaDefinition, SagaId, SagaRef, SagaStatus, StartOptions, StepError, UnixMillis,
};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const STEPS: u32 = 3;

#[derive(Arbitrary, Debug)]
enum Op {
    Start { behaviour: u16, strategy: u8 },
    Advance { millis: u16 },
    Reopen { faults_per_mille: u8 },
    Operator { saga: u8, command: u8, step: u8 },
}

/// What a participant did, as the model saw it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Call {
    saga: SagaId,
    step: u32,
    phase: Phase,
    attempt: u32,
    generation: u32,
    /// The call returned success.
    ok: bool,
    /// The call may have taken effect (success or unknown).
    maybe_effect: bool,
}

#[derive(Default)]
struct Model {
    calls: Vec<Call>,
    generation: u32,
}

type Shared = Arc<Mutex<Model>>;

/// The outcome of a call, from the saga's behaviour bits: 0 ok, 1 retryable,
/// 2 permanent (actions only), 3 unknown; bit 2 adds a 2 s delay.
fn outcome(behaviour: u16, step: u32, phase: Phase, attempt: u32) -> (u8, bool) {
    let shift = (step * 2 + u32::from(phase == Phase::Compensation) * 6 + attempt.min(3)) % 14;
    let bits = ((u32::from(behaviour) >> shift) & 0b111) as u8;
    let mut kind = bits & 0b11;
    if phase == Phase::Compensation && kind == 2 {
        kind = 0; // compensations fail permanently rarely; keep runs short
    }
    (kind, bits & 0b100 != 0)
}

fn registry(model: &Shared) -> (Registry, SagaRef<u16>) {
    // Three forward attempts and four compensation attempts, 100 ms
    // doubling to at most 1 s.
    let forward = RetryPolicy {
        max_interval_ms: 1_000,
        ..RetryPolicy::forward_default()
    };
    let mut builder = SagaDefinition::<u16>::builder("model")
        .retry(forward)
        .compensation_retry(RetryPolicy {
            max_attempts: 4,
            ..forward
        })
        .timeout(Duration::from_secs(60));
    for step in 0..STEPS {
        let (a, c) = (model.clone(), model.clone());
        let run = move |model: Shared,
                        ctx_saga: SagaId,
                        behaviour: u16,
                        phase: Phase,
                        attempt: u32| async move {
            let (kind, slow) = outcome(behaviour, step, phase, attempt);
            if slow {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            let mut m = model.lock().unwrap();
            let generation = m.generation;
            m.calls.push(Call {
                saga: ctx_saga,
                step,
                phase,
                attempt,
                generation,
                ok: kind == 0,
                maybe_effect: kind == 0 || kind == 3,
            });
            match kind {
                0 => Ok(()),
                1 => Err(StepError::retryable("busy")),
                2 => Err(StepError::permanent("no")),
                _ => Err(StepError::unknown("timed out")),
            }
        };
        let (run_a, run_c) = (run.clone(), run);
        builder = builder.step(
            format!("s{step}"),
            move |ctx| {
                run_a(
                    a.clone(),
                    ctx.saga_id(),
                    *ctx.input(),
                    Phase::Action,
                    ctx.attempt(),
                )
            },
            move |ctx| {
                run_c(
                    c.clone(),
                    ctx.saga_id(),
                    *ctx.input(),
                    Phase::Compensation,
                    ctx.attempt(),
                )
            },
        );
    }
    let mut registry = Registry::new();
    let saga = registry
        .register(builder.build().expect("valid"))
        .expect("once");
    (registry, saga)
}

fn strategy(s: u8) -> CompensationStrategy {
    match s % 4 {
        0 => CompensationStrategy::Immediate,
        1 => CompensationStrategy::Scheduled { delay_ms: 1_000 },
        2 => CompensationStrategy::Manual,
        _ => CompensationStrategy::RetryThenCompensate {
            policy: RetryPolicy {
                max_attempts: 2,
                initial_interval_ms: 50,
                max_interval_ms: 500,
                ..RetryPolicy::forward_default()
            },
        },
    }
}

async fn open(store: &Arc<MemStore>, model: &Shared, start: u64) -> (Engine, SagaRef<u16>) {
    let (registry, saga) = registry(model);
    let config = EngineConfig {
        start_time: Some(UnixMillis(start)),
        ..EngineConfig::default()
    };
    let engine = Engine::open_with_store(store.clone(), registry, config)
        .await
        .expect("a memory store opens");
    (engine, saga)
}

fn intent(record: &Record) -> Option<(u32, Phase, u32)> {
    match record {
        Record::StepStarted(CallRef { step, attempt }) => Some((*step, Phase::Action, *attempt)),
        Record::CompensationStarted(CallRef { step, attempt }) => {
            Some((*step, Phase::Compensation, *attempt))
        }
        _ => None,
    }
}

async fn scenario(ops: Vec<Op>) {
    let store = Arc::new(MemStore::new());
    let model: Shared = Arc::default();
    let mut clock: u64 = 1_900_000_000_000;
    let (mut engine, mut saga) = open(&store, &model, clock).await;
    let mut opened_at = tokio::time::Instant::now();
    let mut ids: Vec<SagaId> = Vec::new();
    // Failed appends seen by each engine generation: (generation, index range end).
    let mut failed_upto: Vec<(u32, usize)> = Vec::new();
    for op in ops.into_iter().take(40) {
        match op {
            Op::Start {
                behaviour,
                strategy: s,
            } => {
                let options = StartOptions::new().strategy(strategy(s));
                if let Ok(started) = engine.start(&saga, &behaviour, options).await {
                    ids.push(started.saga_id);
                }
            }
            Op::Advance { millis } => {
                tokio::time::sleep(Duration::from_millis(u64::from(millis) * 10)).await
            }
            Op::Reopen { faults_per_mille } => {
                engine.shutdown(Duration::ZERO).await;
                let generation = {
                    let mut m = model.lock().unwrap();
                    let g = m.generation;
                    m.generation += 1;
                    g
                };
                failed_upto.push((generation, store.failed_appends().len()));
                store.clear_faults();
                if faults_per_mille > 0 {
                    store.fail_randomly(
                        u64::from(faults_per_mille),
                        u32::from(faults_per_mille) * 2,
                    );
                }
                clock += (opened_at.elapsed().as_millis() as u64) + 5_000;
                (engine, saga) = open(&store, &model, clock).await;
                opened_at = tokio::time::Instant::now();
            }
            Op::Operator {
                saga: which,
                command,
                step,
            } => {
                if let Some(id) = ids.get(usize::from(which) % ids.len().max(1)) {
                    let command = match command % 5 {
                        0 => OperatorCommand::CompensateNow,
                        1 => OperatorCommand::MarkCompensated {
                            step: u32::from(step) % STEPS,
                        },
                        2 => OperatorCommand::RetryStep,
                        3 => OperatorCommand::Abandon,
                        _ => OperatorCommand::Cancel,
                    };
                    // Refusals (illegal in this state, parked, store faults) are fine.
                    let _ = engine.operate(*id, command, "fuzz", "model").await;
                }
            }
        }
    }
    // Final: no faults, reopen, let everything settle.
    engine.shutdown(Duration::ZERO).await;
    let last_generation = {
        let mut m = model.lock().unwrap();
        let g = m.generation;
        m.generation += 1;
        g
    };
    failed_upto.push((last_generation, store.failed_appends().len()));
    store.clear_faults();
    clock += (opened_at.elapsed().as_millis() as u64) + 5_000;
    let (engine, _) = open(&store, &model, clock).await;
    let sagas: Vec<SagaId> = engine
        .list(None)
        .await
        .expect("list")
        .into_iter()
        .map(|l| l.saga_id)
        .collect();
    let mut statuses = HashMap::new();
    for id in &sagas {
        // No tokio timeout here: on the paused clock, time jumps to the next
        // timer whenever the runtime idles on the log writer's thread. A
        // saga that never settles hangs this input instead, and libFuzzer
        // reports the hang (`-timeout`) as a liveness violation.
        let status = match engine.outcome(*id).await {
            Ok(outcome) => outcome.status,
            Err(e) => panic!("saga {id} did not settle: {e}"),
        };
        assert!(
            status.is_terminal() || status == SagaStatus::Suspended,
            "saga {id} ended {status}"
        );
        statuses.insert(*id, status);
    }
    let model = model.lock().unwrap();

    // Every call had its intent in the log.
    let mut logged: HashMap<SagaId, HashSet<(u32, Phase, u32)>> = HashMap::new();
    for id in &sagas {
        let history = engine.history(*id).await.expect("history");
        let set = logged.entry(*id).or_default();
        for entry in history {
            let (_, record) = entry.record.expect("no damaged record without damage");
            if let Some(i) = intent(&record) {
                set.insert(i);
            }
        }
    }
    for call in &model.calls {
        assert!(
            logged.get(&call.saga).is_some_and(|s| s.contains(&(
                call.step,
                call.phase,
                call.attempt
            ))),
            "call without a durable intent: {call:?}"
        );
    }

    // No call after a failed append, in the generation that saw the failure.
    let failed = store.failed_appends();
    let mut from = 0;
    for (generation, upto) in &failed_upto {
        for failure in &failed[from..*upto] {
            for frame in &failure.records {
                if let Ok((_, record)) = decode_record(frame) {
                    if let Some((step, phase, attempt)) = intent(&record) {
                        assert!(
                            !model.calls.iter().any(|c| c.saga == failure.saga
                                && c.step == step
                                && c.phase == phase
                                && c.attempt == attempt
                                && c.generation == *generation),
                            "{step}/{phase:?}/{attempt} of {} was called after its append failed",
                            failure.saga
                        );
                    }
                }
            }
        }
        from = *upto;
    }

    // Outcomes agree with what the participants did.
    for (id, status) in &statuses {
        let marked: HashSet<u32> = engine
            .history(*id)
            .await
            .expect("history")
            .into_iter()
            .filter_map(|e| match e.record.ok()?.1 {
                Record::OperatorAction(a) => match a.command {
                    OperatorCommand::MarkCompensated { step } => Some(step),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        for step in 0..STEPS {
            let calls = |phase: Phase| {
                model
                    .calls
                    .iter()
                    .filter(move |c| c.saga == *id && c.step == step && c.phase == phase)
            };
            let maybe_applied = calls(Phase::Action).any(|c| c.maybe_effect);
            let compensated = calls(Phase::Compensation).any(|c| c.ok) || marked.contains(&step);
            match status {
                SagaStatus::Compensated => assert!(
                    !maybe_applied || compensated,
                    "saga {id} compensated, but step {step}'s effect was never undone"
                ),
                SagaStatus::Committed => assert!(
                    calls(Phase::Action).any(|c| c.ok),
                    "saga {id} committed without step {step} succeeding"
                ),
                _ => {}
            }
        }
    }
    drop(model);
    engine.shutdown(Duration::ZERO).await;
}

fuzz_target!(|ops: Vec<Op>| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(scenario(ops));
});

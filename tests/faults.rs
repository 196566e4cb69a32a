//! Storage faults at random, with seeds: appends fail before or after the
//! write applied. The engine never calls a participant after a failed
//! append, surfaces the error, and a reopen without faults drives every
//! saga to its outcome.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

mod common;

use common::faulty::Faulty;
use sagalog::store::{KvLogStore, LogStore};
use sagalog::tools::{decode_record, decode_value};
use sagalog::{CallRef, Record};
use sagalog::{
    Engine, EngineConfig, Error, MemStore, Phase, Registry, SagaDefinition, SagaId, SagaRef,
    SagaStatus, StartOptions, StepError,
};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Call = (SagaId, String, Phase, u32);
type Calls = Arc<Mutex<Vec<Call>>>;

fn record(calls: &Calls, ctx: &sagalog::StepContext<u64>) {
    let call = (
        ctx.saga_id(),
        ctx.step().to_string(),
        ctx.phase(),
        ctx.attempt(),
    );
    calls.lock().unwrap().push(call);
}

/// Three steps; step `c` fails permanently for odd inputs.
fn registry(calls: &Calls) -> (Registry, SagaRef<u64>) {
    let mut builder = SagaDefinition::<u64>::builder("faulty");
    for name in ["a", "b", "c"] {
        let (act, comp) = (calls.clone(), calls.clone());
        builder = builder.step(
            name,
            move |ctx| {
                let calls = act.clone();
                async move {
                    record(&calls, &ctx);
                    if ctx.step().as_str() == "c" && ctx.input() % 2 == 1 {
                        return Err(StepError::permanent("odd order"));
                    }
                    Ok(())
                }
            },
            move |ctx| {
                let calls = comp.clone();
                async move {
                    record(&calls, &ctx);
                    Ok(())
                }
            },
        );
    }
    let mut registry = Registry::new();
    let saga = registry.register(builder.build().unwrap()).unwrap();
    (registry, saga)
}

fn step_name(step: u32) -> String {
    ["a", "b", "c"][step as usize].to_string()
}

/// The intents (saga, step, phase, attempt) in a list of record frames.
fn intents(saga: SagaId, frames: &[Vec<u8>]) -> Vec<Call> {
    frames
        .iter()
        .filter_map(|f| match decode_record(f).ok()?.1 {
            Record::StepStarted(CallRef { step, attempt }) => {
                Some((saga, step_name(step), Phase::Action, attempt))
            }
            Record::CompensationStarted(CallRef { step, attempt }) => {
                Some((saga, step_name(step), Phase::Compensation, attempt))
            }
            _ => None,
        })
        .collect()
}

/// Where a seed's faults come from: MemStore's own injection (which also
/// refuses every write after a failed sync, until a reopen), or [`Faulty`]
/// over a PostgreSQL store (failures before the write, and ambiguous
/// commits after it).
enum Faults {
    Mem(Arc<MemStore>),
    Wrapped(Arc<Faulty>),
}

impl Faults {
    fn store(&self) -> Arc<dyn LogStore> {
        match self {
            Faults::Mem(store) => store.clone(),
            Faults::Wrapped(store) => store.clone(),
        }
    }

    /// The failed appends: saga, record frames, and how they failed.
    fn failed(&self) -> Vec<(SagaId, Vec<Vec<u8>>, String)> {
        match self {
            Faults::Mem(store) => store
                .failed_appends()
                .into_iter()
                .map(|f| (f.saga, f.records, format!("{:?}", f.timing)))
                .collect(),
            Faults::Wrapped(store) => store
                .failed()
                .into_iter()
                .map(|f| (f.saga, f.records, format!("written: {}", f.written)))
                .collect(),
        }
    }

    fn clear(&self) {
        match self {
            Faults::Mem(store) => store.clear_faults(),
            Faults::Wrapped(store) => store.clear(),
        }
    }

    /// Every saga with a log.
    async fn logged(&self) -> HashSet<SagaId> {
        match self {
            Faults::Mem(store) => {
                let mut logged = HashSet::new();
                store
                    .for_each_raw(&mut |key, _| {
                        if key.first() == Some(&b'L') && key.len() == 25 {
                            logged.insert(SagaId::from_bytes(key[1..17].try_into().unwrap()));
                        }
                        true
                    })
                    .unwrap();
                logged
            }
            Faults::Wrapped(store) => store.logged().await,
        }
    }
}

async fn run_seed(seed: u64) -> usize {
    let store = Arc::new(MemStore::new());
    store.fail_randomly(seed, 120);
    run_seed_with(seed, Faults::Mem(store)).await
}

async fn run_seed_with(seed: u64, faults: Faults) -> usize {
    let store = faults.store();
    let first: Calls = Arc::default();
    let (reg, saga) = registry(&first);
    // Odd seeds index every saga within a millisecond, so that failed groups
    // also fall on moves of the index watermark.
    let config = EngineConfig {
        index_lag: if seed % 2 == 1 {
            Duration::from_millis(1)
        } else {
            EngineConfig::default().index_lag
        },
        ..EngineConfig::default()
    };
    let engine = Engine::open_with_store(store.clone(), reg, config)
        .await
        .unwrap();
    for i in 0..10u64 {
        match engine.start(&saga, &i, StartOptions::new()).await {
            Ok(started) => {
                // Either an outcome, or the store error that stopped the saga.
                match engine.outcome(started.saga_id).await {
                    Ok(_) | Err(Error::Store(_)) | Err(Error::Parked { .. }) => {}
                    Err(e) => panic!("seed {seed}: unexpected error {e}"),
                }
            }
            Err(Error::Store(_)) => {} // surfaced to the caller
            Err(e) => panic!("seed {seed}: unexpected start error {e}"),
        }
    }
    engine.shutdown(Duration::ZERO).await;
    let failed = faults.failed();

    // No participant call after a failed append: the intents of every failed
    // append were never called by the first engine.
    let called: HashSet<Call> = first.lock().unwrap().iter().cloned().collect();
    for (saga, records, how) in &failed {
        for intent in intents(*saga, records) {
            assert!(
                !called.contains(&intent),
                "seed {seed}: {intent:?} was called after its append failed ({how})"
            );
        }
    }

    // Reopen without faults: every saga reaches its outcome.
    faults.clear();
    let second: Calls = Arc::default();
    let (reg, _) = registry(&second);
    let engine = Engine::open_with_store(store.clone(), reg, EngineConfig::default())
        .await
        .unwrap();
    let sagas = engine.list(None).await.unwrap();
    // Every saga with a log is found, whether or not it had an index entry.
    let listed: HashSet<SagaId> = sagas.iter().map(|l| l.saga_id).collect();
    let logged = faults.logged().await;
    assert_eq!(listed, logged, "seed {seed}: every logged saga is listed");
    for listing in &sagas {
        let outcome = engine
            .outcome(listing.saga_id)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let history = engine.history(listing.saga_id).await.unwrap();
        let Ok((_, Record::SagaStarted(start))) = &history[0].record else {
            panic!("seed {seed}: a log starts with its start record");
        };
        let input: u64 = decode_value(&start.input).unwrap();
        // A call in doubt is run again as a new attempt: a step whose every
        // attempt was left in doubt (its appends ambiguous) has failed.
        let records: Vec<&Record> = history
            .iter()
            .filter_map(|e| e.record.as_ref().ok().map(|(_, r)| r))
            .collect();
        let out_of_attempts = (0..3u32).any(|step| {
            let last = start.plan.retry.max_attempts;
            records
                .iter()
                .any(|r| matches!(r, Record::StepStarted(c) if c.step == step && c.attempt == last))
                && !records
                    .iter()
                    .any(|r| matches!(r, Record::StepSucceeded(s) if s.call.step == step))
        });
        let expected = if input % 2 == 1 || out_of_attempts {
            SagaStatus::Compensated
        } else {
            SagaStatus::Committed
        };
        assert_eq!(outcome.status, expected, "seed {seed}, input {input}");
        // Every call either engine made has its intent in the log.
        let logged: HashSet<Call> = history
            .iter()
            .filter_map(|e| e.record.as_ref().ok())
            .filter_map(|(_, r)| match r {
                Record::StepStarted(c) => {
                    Some((listing.saga_id, step_name(c.step), Phase::Action, c.attempt))
                }
                Record::CompensationStarted(c) => Some((
                    listing.saga_id,
                    step_name(c.step),
                    Phase::Compensation,
                    c.attempt,
                )),
                _ => None,
            })
            .collect();
        for call in first
            .lock()
            .unwrap()
            .iter()
            .chain(second.lock().unwrap().iter())
        {
            if call.0 == listing.saga_id {
                assert!(
                    logged.contains(call),
                    "seed {seed}: {call:?} has no intent in the log"
                );
            }
        }
    }
    engine.shutdown(Duration::ZERO).await;
    failed.len()
}

#[tokio::test]
async fn random_append_faults_never_lead_to_a_call_without_a_durable_intent() {
    let mut faults = 0;
    let seeds = 200;
    for seed in 1..=seeds {
        faults += run_seed(seed).await;
    }
    println!("{seeds} seeds, {faults} injected append faults, no violation");
    assert!(faults > 100, "the seeds must inject many faults");
}

/// The same seeds' worth of faults on PostgreSQL, through [`Faulty`]: a
/// write that fails before it is made, or one whose commit is ambiguous
/// (written, then the connection lost), never leads to a call without a
/// durable intent, and a reopen without faults finishes every saga.
#[tokio::test]
async fn random_append_faults_on_postgres_never_lead_to_a_call_without_a_durable_intent() {
    let mut faults = 0;
    let seeds = 40;
    for seed in 1..=seeds {
        let Some(store) = common::pg::store().await else {
            return;
        };
        let faulty = Faulty::new(Arc::new(store), seed, 120);
        faults += run_seed_with(seed, Faults::Wrapped(Arc::new(faulty))).await;
    }
    println!("{seeds} seeds on PostgreSQL, {faults} injected append faults, no violation");
    assert!(faults > 20, "the seeds must inject many faults");
}

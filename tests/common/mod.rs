//! Shared helpers for the engine tests: a scripted three-step saga whose
//! participants record every call.

#![allow(dead_code)]

pub mod async_only;
pub mod faulty;
pub mod pg;
pub mod timed;

use sagalog::{
    Engine, EngineConfig, InDoubtPolicy, MemStore, Outcome, Phase, Registry, RetryPolicy,
    SagaDefinition, SagaId, SagaRef, SagaStatus, StartOptions, StepContext, StepError,
};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What a scripted participant does when called.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Succeed.
    Succeed,
    /// Fail with this error every time.
    Fail(StepError),
    /// Fail with this error for the first `n` attempts, then succeed.
    FailTimes(u32, StepError),
    /// Never return (to leave the call in doubt).
    Hang,
    /// Wait until `Script::open_gate` is called, then succeed.
    Gate,
}

/// Every call the participants saw, as `"step:phase:attempt"`, plus the
/// behaviour each (step, phase) should have.
#[derive(Clone, Default)]
pub struct Script {
    pub calls: Arc<Mutex<Vec<String>>>,
    behaviours: Arc<Mutex<HashMap<(String, Phase), Behaviour>>>,
    pub entered: Arc<tokio::sync::Notify>,
    times: Arc<Mutex<Vec<(String, tokio::time::Instant)>>>,
    gate: Arc<tokio::sync::Notify>,
}

impl Script {
    /// A script in which `step`'s `phase` fails with `error`, and every other
    /// call succeeds.
    pub fn failing(step: &str, phase: Phase, error: StepError) -> Script {
        let script = Script::default();
        script.set(step, phase, Behaviour::Fail(error));
        script
    }

    pub fn set(&self, step: &str, phase: Phase, behaviour: Behaviour) {
        self.behaviours
            .lock()
            .unwrap()
            .insert((step.to_string(), phase), behaviour);
    }

    /// Releases every call waiting at a `Gate`.
    pub fn open_gate(&self) {
        self.gate.notify_waiters();
    }

    /// When (on tokio's clock) call `call` (`"step:phase:attempt"`) began.
    pub fn time_of(&self, call: &str) -> Option<tokio::time::Instant> {
        self.times
            .lock()
            .unwrap()
            .iter()
            .find(|(c, _)| c == call)
            .map(|(_, t)| *t)
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    /// How many calls so far begin with `prefix`, e.g. `"car:action"`.
    pub fn count(&self, prefix: &str) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.starts_with(prefix))
            .count()
    }

    /// Records the call and behaves as scripted (for sagas built in a test).
    pub async fn perform_public<I>(&self, ctx: &StepContext<I>) -> Result<(), StepError> {
        self.perform(ctx).await
    }

    async fn perform<I>(&self, ctx: &StepContext<I>) -> Result<(), StepError> {
        let name = ctx.step().to_string();
        let call = format!("{}:{}:{}", name, ctx.phase(), ctx.attempt());
        // Waiting at the gate begins before the call is seen, so that an
        // `open_gate` by a test that saw the call is not missed.
        let gate = self.gate.notified();
        tokio::pin!(gate);
        gate.as_mut().enable();
        self.calls.lock().unwrap().push(call.clone());
        self.times
            .lock()
            .unwrap()
            .push((call, tokio::time::Instant::now()));
        self.entered.notify_one();
        let behaviour = self
            .behaviours
            .lock()
            .unwrap()
            .get(&(name, ctx.phase()))
            .cloned()
            .unwrap_or(Behaviour::Succeed);
        match behaviour {
            Behaviour::Succeed => Ok(()),
            Behaviour::Fail(e) => Err(e),
            Behaviour::FailTimes(n, e) if ctx.attempt() <= n => Err(e),
            Behaviour::FailTimes(..) => Ok(()),
            Behaviour::Hang => std::future::pending().await,
            Behaviour::Gate => {
                gate.await;
                Ok(())
            }
        }
    }
}

/// A trip: book a flight (output: a booking number), a hotel (reads the
/// flight's booking number), and a car.
pub fn trip_definition(
    saga_type: &str,
    script: &Script,
    in_doubt: InDoubtPolicy,
) -> SagaDefinition<String> {
    let s = script.clone();
    // Three attempts, 100 ms doubling to at most 1 s, forward and back.
    let quick = RetryPolicy {
        max_interval_ms: 1_000,
        ..RetryPolicy::forward_default()
    };
    let builder = SagaDefinition::<String>::builder(saga_type)
        .retry(quick)
        .compensation_retry(quick)
        .in_doubt(in_doubt);
    let (a, b, c, d, e, f) = (s.clone(), s.clone(), s.clone(), s.clone(), s.clone(), s);
    builder
        .step(
            "flight",
            move |ctx| {
                let s = a.clone();
                async move {
                    s.perform(&ctx).await?;
                    Ok(format!("FL-{}", ctx.input()))
                }
            },
            move |ctx| {
                let s = b.clone();
                async move { s.perform(&ctx).await }
            },
        )
        .step(
            "hotel",
            move |ctx| {
                let s = c.clone();
                async move {
                    let flight: String = ctx.output("flight")?;
                    s.perform(&ctx).await?;
                    Ok(format!("HO-for-{flight}"))
                }
            },
            move |ctx| {
                let s = d.clone();
                async move { s.perform(&ctx).await }
            },
        )
        .step(
            "car",
            move |ctx| {
                let s = e.clone();
                async move {
                    s.perform(&ctx).await?;
                    Ok(())
                }
            },
            move |ctx| {
                let s = f.clone();
                async move { s.perform(&ctx).await }
            },
        )
        .build()
        .expect("the trip definition is valid")
}

pub fn trip_registry(script: &Script, in_doubt: InDoubtPolicy) -> (Registry, SagaRef<String>) {
    let mut registry = Registry::new();
    let trip = registry
        .register(trip_definition("trip", script, in_doubt))
        .expect("registered once");
    (registry, trip)
}

/// A boxed participant future, as [`call`] returns.
pub type CallFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StepError>> + Send>>;

/// A participant (action, compensation, try, confirm or cancel) that
/// records its call in `script` and behaves as scripted there.
pub fn call<I: Send + Sync + 'static>(
    script: &Script,
) -> impl Fn(StepContext<I>) -> CallFuture + Send + Sync + 'static {
    let script = script.clone();
    move |ctx| {
        let script = script.clone();
        Box::pin(async move { script.perform(&ctx).await })
    }
}

/// Position of `call` in the recorded calls; panics with the list if absent.
pub fn position(calls: &[String], call: &str) -> usize {
    calls
        .iter()
        .position(|c| c == call)
        .unwrap_or_else(|| panic!("{call} was not called; calls: {calls:?}"))
}

/// Yields (paused time advances only when every task waits) until
/// `done` holds for the recorded calls. Yielding keeps tokio's paused clock
/// still, however long a round trip to a database store takes; a minute of
/// real time without the calls is taken for a hang and fails the test.
pub async fn until_calls(script: &Script, done: impl Fn(&[String]) -> bool) {
    let hang = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < hang {
        if done(&script.calls()) {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!(
        "the expected calls never happened; calls: {:?}",
        script.calls()
    );
}

/// The store an engine test opens over `store`: `store` itself; with
/// `SAGALOG_TEST_STORE=async` the same store behind the asynchronous
/// boundary alone ([`async_only::AsyncOnly`]); with `SAGALOG_TEST_STORE=pg`
/// a PostgreSQL schema of its own for each `MemStore` (the same schema
/// every time that store is opened again), see [`pg`].
pub async fn engine_store(store: &Arc<MemStore>) -> Arc<dyn sagalog::store::LogStore> {
    match std::env::var("SAGALOG_TEST_STORE").as_deref() {
        Ok("async") => Arc::new(async_only::AsyncOnly(store.clone())),
        Ok("pg") => match pg::store_in(&schema_of(store)).await {
            Some(pg) => Arc::new(pg),
            None => store.clone(),
        },
        _ => store.clone(),
    }
}

/// The PostgreSQL schema standing in for `store`. The map keeps each store
/// alive, so that no later store gets its address and its data.
fn schema_of(store: &Arc<MemStore>) -> String {
    static SCHEMAS: Mutex<Vec<(Arc<MemStore>, String)>> = Mutex::new(Vec::new());
    let mut schemas = SCHEMAS.lock().unwrap();
    if let Some((_, schema)) = schemas.iter().find(|(s, _)| Arc::ptr_eq(s, store)) {
        return schema.clone();
    }
    let schema = format!("sl_{}", SagaId::new().to_string().replace('-', ""));
    schemas.push((store.clone(), schema.clone()));
    schema
}

/// Opens an engine with the default configuration over `store`; panics if
/// it does not open.
pub async fn open_mem(store: &Arc<MemStore>, registry: Registry) -> Engine {
    Engine::open_with_store(engine_store(store).await, registry, EngineConfig::default())
        .await
        .expect("engine opens")
}

/// Starts `saga` with `input` and default options and returns its id;
/// panics with the error if the start is refused.
pub async fn start_saga<I: Serialize>(engine: &Engine, saga: &SagaRef<I>, input: &I) -> SagaId {
    engine
        .start(saga, input, StartOptions::new())
        .await
        .unwrap_or_else(|e| panic!("the saga did not start: {e}"))
        .saga_id
}

/// Waits for the saga's outcome; panics with the error if there is none.
pub async fn outcome_of(engine: &Engine, id: SagaId) -> Outcome {
    engine
        .outcome(id)
        .await
        .unwrap_or_else(|e| panic!("saga {id} has no outcome: {e}"))
}

/// The status in the saga's outcome (see [`outcome_of`]).
pub async fn status_of(engine: &Engine, id: SagaId) -> SagaStatus {
    outcome_of(engine, id).await.status
}

/// The trip saga (rerun in-doubt steps) over `store`, its participants
/// following `script`: the engine and the saga to start.
pub async fn trip_on(store: &Arc<MemStore>, script: &Script) -> (Engine, SagaRef<String>) {
    let (registry, trip) = trip_registry(script, InDoubtPolicy::Rerun);
    (open_mem(store, registry).await, trip)
}

/// The calls of a trip undone after its hotel and flight were booked: the
/// two compensations, newest first.
pub const TRIP_UNDONE: [&str; 2] = ["hotel:compensation:1", "flight:compensation:1"];

/// Starts `saga` with `input` and waits for its outcome.
pub async fn run_to_end<I: Serialize>(
    engine: &Engine,
    saga: &SagaRef<I>,
    input: &I,
) -> (SagaId, Outcome) {
    let id = start_saga(engine, saga, input).await;
    (id, outcome_of(engine, id).await)
}

/// An engine with the default configuration over a fresh store behind
/// [`faulty::Faulty`] with no faults, for [`give_up_after_the_write`]: the
/// wrapper and the engine.
pub async fn open_faultless(registry: Registry) -> (Arc<faulty::Faulty>, Engine) {
    let store = engine_store(&Arc::new(MemStore::new())).await;
    let faulty = Arc::new(faulty::Faulty::new(store, 1, 0));
    let engine = Engine::open_with_store(faulty.clone(), registry, EngineConfig::default())
        .await
        .expect("engine opens");
    (faulty, engine)
}

/// Runs `call` on an engine over `store` as a caller that gives up
/// would: polls it (with a waker that does nothing) until its append is
/// written, and drops it while the append's acknowledgement is held back;
/// then lets the store answer. Panics if `call` finishes first, or if a
/// minute of real time passes without the append.
pub async fn give_up_after_the_write<F: std::future::Future>(store: &faulty::Faulty, call: F) {
    store.hold_next_ack();
    let mut call = Box::pin(call);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let hang = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !store.holding() {
        assert!(
            std::time::Instant::now() < hang,
            "the call's append never reached the store"
        );
        assert!(
            call.as_mut().poll(&mut cx).is_pending(),
            "the call finished before its append was written"
        );
        tokio::task::yield_now().await;
    }
    drop(call);
    store.release();
}

/// Waits for the saga's outcome; panics if there is none, or if a minute of
/// real time passes first (taken for a hang, as in [`until_calls`]).
pub async fn outcome_or_hang(engine: &Engine, id: SagaId) -> Outcome {
    let hang = std::time::Duration::from_secs(60);
    tokio::time::timeout(hang, outcome_of(engine, id))
        .await
        .unwrap_or_else(|_| panic!("saga {id} did not settle within a minute"))
}

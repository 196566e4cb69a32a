//! How a participant call is run: a call that is ready at once is reported
//! without a task of its own, a call that waits gets one, and a participant
//! that panics (building its future, on the first poll, or later) fails its
//! call instead of killing its saga.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

mod common;

use common::{call, open_mem, outcome_of, run_to_end, start_saga, CallFuture, Script};
use sagalog::{
    ErrorClass, MemStore, Registry, RetryPolicy, SagaDefinition, SagaRef, SagaStatus, StepContext,
    StepError, StepOptions,
};
use std::sync::{Arc, Mutex};

/// A saga of two steps: `a`, then `b`, which runs `action` once (no retry).
/// Compensations are recorded in `script`.
fn a_then_b(
    script: &Script,
    action: impl Fn(StepContext<String>) -> CallFuture + Send + Sync + 'static,
) -> (Registry, SagaRef<String>) {
    let definition = SagaDefinition::<String>::builder("two")
        .step("a", call(script), call(script))
        .step_with(
            "b",
            StepOptions::new().retry(RetryPolicy::no_retry()),
            action,
            call(script),
        )
        .build()
        .expect("the definition is valid");
    let mut registry = Registry::new();
    let saga = registry.register(definition).expect("registered once");
    (registry, saga)
}

/// Stands for participant code that panics.
fn crash(message: &str) -> Result<(), StepError> {
    panic!("{message}")
}

/// Runs the saga and checks that `b` failed with an error of class
/// `Unknown` that names the panic, and that `a` was compensated.
async fn assert_panic_fails_b_and_compensates(
    script: &Script,
    registry: Registry,
    saga: &SagaRef<String>,
) {
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;
    let (_, outcome) = run_to_end(&engine, saga, &"x".to_string()).await;

    assert_eq!(outcome.status, SagaStatus::Compensated);
    let (step, failure) = outcome.failure.expect("b's failure is recorded");
    assert_eq!(step.as_str(), "b");
    assert_eq!(failure.class, ErrorClass::Unknown);
    assert!(failure.message.contains("panicked"), "{}", failure.message);
    assert!(failure.message.contains("the card"), "{}", failure.message);
    assert_eq!(
        script.calls(),
        ["a:action:1", "b:compensation:1", "a:compensation:1"]
    );
}

#[tokio::test]
async fn a_participant_that_panics_on_its_first_poll_fails_its_call() {
    let script = Script::default();
    let (registry, saga) = a_then_b(&script, |_ctx| {
        Box::pin(async { crash("the card reader is gone") })
    });
    assert_panic_fails_b_and_compensates(&script, registry, &saga).await;
}

#[tokio::test]
async fn a_participant_that_panics_after_waiting_fails_its_call() {
    let script = Script::default();
    let (registry, saga) = a_then_b(&script, |_ctx| {
        Box::pin(async {
            tokio::task::yield_now().await;
            crash("the card reader is gone")
        })
    });
    assert_panic_fails_b_and_compensates(&script, registry, &saga).await;
}

#[tokio::test]
async fn a_participant_that_panics_building_its_future_fails_its_call() {
    let script = Script::default();
    let (registry, saga) = a_then_b(&script, |_ctx| -> CallFuture {
        panic!("the card reader is gone before the call")
    });
    assert_panic_fails_b_and_compensates(&script, registry, &saga).await;
}

/// A step's name and the tokio task its participant's code ended in.
type TaskOfCall = (&'static str, Option<tokio::task::Id>);

#[tokio::test]
async fn a_call_ready_at_once_runs_in_its_sagas_task_and_a_waiting_call_in_its_own() {
    let seen: Arc<Mutex<Vec<TaskOfCall>>> = Arc::default();
    let at_once = |name: &'static str| {
        let seen = seen.clone();
        move |_ctx: StepContext<String>| -> CallFuture {
            let seen = seen.clone();
            Box::pin(async move {
                seen.lock().unwrap().push((name, tokio::task::try_id()));
                Ok(())
            })
        }
    };
    let waiting = {
        let seen = seen.clone();
        move |_ctx: StepContext<String>| -> CallFuture {
            let seen = seen.clone();
            Box::pin(async move {
                tokio::task::yield_now().await;
                seen.lock().unwrap().push(("c", tokio::task::try_id()));
                Ok(())
            })
        }
    };
    let script = Script::default();
    let definition = SagaDefinition::<String>::builder("three")
        .step("a", at_once("a"), call(&script))
        .step("b", at_once("b"), call(&script))
        .step("c", waiting, call(&script))
        .build()
        .expect("the definition is valid");
    let mut registry = Registry::new();
    let saga = registry.register(definition).expect("registered once");
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;

    let id = start_saga(&engine, &saga, &"x".to_string()).await;
    assert_eq!(outcome_of(&engine, id).await.status, SagaStatus::Committed);

    let seen = seen.lock().unwrap().clone();
    let names: Vec<_> = seen.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, ["a", "b", "c"]);
    let (a, b, c) = (seen[0].1, seen[1].1, seen[2].1);
    assert!(a.is_some(), "a ran inside a task");
    assert_eq!(a, b, "a and b both ran in the saga's own task");
    assert_ne!(c, a, "c, which waited, ran in a task of its own");
}

//! Steps that run in parallel: groups, dependencies, the per-saga limit,
//! compensation in dependency order, and recovery of parallel calls.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

mod common;

use common::{
    call, open_mem, outcome_of, position, run_to_end, start_saga, status_of, until_calls,
    Behaviour, Script,
};
use sagalog::{
    MemStore, Phase, Registry, SagaDefinition, SagaRef, SagaStatus, StepError, StepOptions,
};
use std::sync::Arc;
use std::time::Duration;

/// `a`, then `b` and `c` together, then `d` after both.
fn diamond(script: &Script, limit: u32) -> (Registry, SagaRef<u32>) {
    let definition = SagaDefinition::<u32>::builder("diamond")
        .max_parallel(limit)
        .step("a", call(script), call(script))
        .step("b", call(script), call(script))
        .step_with(
            "c",
            StepOptions::new().parallel_with_previous(),
            call(script),
            call(script),
        )
        .step_with(
            "d",
            StepOptions::new().after(["b", "c"]),
            call(script),
            call(script),
        )
        .build()
        .expect("the diamond is a valid definition");
    let mut registry = Registry::new();
    let saga = registry.register(definition).unwrap();
    (registry, saga)
}

#[tokio::test(start_paused = true)]
async fn steps_of_a_group_are_called_at_the_same_time() {
    let script = Script::default();
    script.set("b", Phase::Action, Behaviour::Gate);
    script.set("c", Phase::Action, Behaviour::Gate);
    let (registry, saga) = diamond(&script, 16);
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;

    let id = start_saga(&engine, &saga, &1).await;
    until_calls(&script, |calls| {
        calls.contains(&"b:action:1".into()) && calls.contains(&"c:action:1".into())
    })
    .await;
    script.open_gate();

    assert_eq!(status_of(&engine, id).await, SagaStatus::Committed);
}

#[tokio::test(start_paused = true)]
async fn a_step_starts_only_after_every_step_it_depends_on() {
    let script = Script::default();
    let (registry, saga) = diamond(&script, 16);
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;

    let id = start_saga(&engine, &saga, &1).await;
    outcome_of(&engine, id).await;

    let calls = script.calls();
    let d = position(&calls, "d:action:1");
    assert!(position(&calls, "b:action:1") < d && position(&calls, "c:action:1") < d);
    assert_eq!(position(&calls, "a:action:1"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_step_is_compensated_only_after_every_step_that_depends_on_it() {
    let script = Script::failing("d", Phase::Action, StepError::permanent("no"));
    let (registry, saga) = diamond(&script, 16);
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;

    let (_, outcome) = run_to_end(&engine, &saga, &1).await;

    assert_eq!(outcome.status, SagaStatus::Compensated);
    let calls = script.calls();
    let a = position(&calls, "a:compensation:1");
    assert!(position(&calls, "b:compensation:1") < a);
    assert!(position(&calls, "c:compensation:1") < a);
    assert!(
        !calls.contains(&"d:compensation:1".to_string()),
        "d had no effect"
    );
}

#[tokio::test(start_paused = true)]
async fn no_forward_step_starts_after_a_step_failed_for_good() {
    let script = Script::failing("b", Phase::Action, StepError::permanent("no"));
    script.set("c", Phase::Action, Behaviour::Gate);
    let (registry, saga) = diamond(&script, 16);
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;

    let id = start_saga(&engine, &saga, &1).await;
    until_calls(&script, |calls| calls.contains(&"c:action:1".into())).await;
    // b fails while c still runs; c's result must arrive before anything else.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(!script.calls().iter().any(|c| c.contains("compensation")));
    script.open_gate();
    let outcome = outcome_of(&engine, id).await;

    assert_eq!(outcome.status, SagaStatus::Compensated);
    let calls = script.calls();
    assert!(!calls.contains(&"d:action:1".to_string()));
    assert!(position(&calls, "c:compensation:1") < position(&calls, "a:compensation:1"));
    assert!(!calls.contains(&"b:compensation:1".to_string()));
}

#[tokio::test(start_paused = true)]
async fn the_per_saga_limit_caps_the_calls_in_flight() {
    let script = Script::default();
    let mut builder = SagaDefinition::<u32>::builder("wide").max_parallel(2);
    for name in ["p", "q", "r", "s"] {
        script.set(name, Phase::Action, Behaviour::Gate);
        builder = builder.step_with(
            name,
            StepOptions::new().after(Vec::<String>::new()),
            call(&script),
            call(&script),
        );
    }
    let mut registry = Registry::new();
    let saga = registry.register(builder.build().unwrap()).unwrap();
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;

    let id = start_saga(&engine, &saga, &1).await;
    until_calls(&script, |calls| calls.len() == 2).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(script.calls().len(), 2, "two calls in flight at most");
    while script.calls().len() < 4 {
        script.open_gate();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    script.open_gate();

    assert_eq!(status_of(&engine, id).await, SagaStatus::Committed);
}

#[tokio::test(start_paused = true)]
async fn recovery_reruns_every_parallel_call_left_in_doubt() {
    let store = Arc::new(MemStore::new());
    let first = Script::default();
    first.set("b", Phase::Action, Behaviour::Hang);
    first.set("c", Phase::Action, Behaviour::Hang);
    let (registry, saga) = diamond(&first, 16);
    let engine = open_mem(&store, registry).await;
    let id = start_saga(&engine, &saga, &1).await;
    until_calls(&first, |calls| calls.len() == 3).await;
    engine.shutdown(Duration::ZERO).await;

    let second = Script::default();
    let (registry, _) = diamond(&second, 16);
    let engine = open_mem(&store, registry).await;
    let outcome = outcome_of(&engine, id).await;

    assert_eq!(outcome.status, SagaStatus::Committed);
    let calls = second.calls();
    assert!(calls.contains(&"b:action:2".to_string()), "{calls:?}");
    assert!(calls.contains(&"c:action:2".to_string()), "{calls:?}");
    assert!(position(&calls, "d:action:1") > position(&calls, "b:action:2"));
}

#[test]
fn a_dependency_on_an_undeclared_step_is_a_definition_error() {
    let script = Script::default();
    let error = SagaDefinition::<u32>::builder("bad")
        .step("a", call(&script), call(&script))
        .step_with(
            "b",
            StepOptions::new().after(["z"]),
            call(&script),
            call(&script),
        )
        .max_parallel(0)
        .build()
        .err()
        .expect("refused");

    let problems = error.problems().join("; ");
    assert!(problems.contains("runs after 'z'"), "{problems}");
    assert!(problems.contains("max_parallel is 0"), "{problems}");
}

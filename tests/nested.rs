//! Sub-sagas: a step that runs a child saga. The parent waits for it,
//! compensating the parent compensates the child, the child's log links to
//! the parent, and recovery restores both.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

mod common;

use common::{
    call, open_mem, outcome_of, position, run_to_end, start_saga, until_calls, Behaviour, Script,
};
use sagalog::{
    Engine, MemStore, Phase, Registry, SagaDefinition, SagaFilter, SagaRef, SagaStatus, StepError,
};
use sagalog::{ParentLink, Record};
use std::sync::Arc;
use std::time::Duration;

/// `order`: reserve, then the `payment` sub-saga (authorize, capture), then ship.
fn order_registry(script: &Script) -> (Registry, SagaRef<u32>) {
    let mut registry = Registry::new();
    let payment = SagaDefinition::<u64>::builder("payment")
        .step("authorize", call(script), call(script))
        .step("capture", call(script), call(script))
        .build()
        .unwrap();
    let payment = registry.register(payment).unwrap();
    let order = SagaDefinition::<u32>::builder("order")
        .step("reserve", call(script), call(script))
        .sub_saga("payment", &payment, |ctx| Ok(u64::from(*ctx.input()) * 100))
        .step("ship", call(script), call(script))
        .build()
        .unwrap();
    let order = registry.register(order).unwrap();
    (registry, order)
}

async fn child(engine: &Engine) -> sagalog::SagaId {
    let children = engine
        .find(&SagaFilter::new().saga_type("payment"))
        .await
        .unwrap();
    assert_eq!(children.len(), 1, "exactly one sub-saga");
    children[0].saga_id
}

#[tokio::test(start_paused = true)]
async fn the_parent_waits_for_its_child_and_commits_after_it() {
    let script = Script::default();
    let (registry, order) = order_registry(&script);
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;

    let (id, outcome) = run_to_end(&engine, &order, &3).await;

    assert_eq!(outcome.status, SagaStatus::Committed);
    assert_eq!(
        script.calls(),
        [
            "reserve:action:1",
            "authorize:action:1",
            "capture:action:1",
            "ship:action:1"
        ]
    );
    let child = child(&engine).await;
    assert_eq!(
        engine.saga(child).await.unwrap().status,
        SagaStatus::Committed
    );
    assert_eq!(engine.saga(id).await.unwrap().children[0].1, child);
}

#[tokio::test(start_paused = true)]
async fn the_childs_log_links_to_the_parents_step() {
    let script = Script::default();
    let (registry, order) = order_registry(&script);
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;

    let id = start_saga(&engine, &order, &3).await;
    outcome_of(&engine, id).await;

    let child = child(&engine).await;
    let Ok((_, Record::SagaStarted(start))) = &engine.history(child).await.unwrap()[0].record
    else {
        panic!("a saga's log starts with its start record");
    };
    assert_eq!(start.parent, Some(ParentLink { saga: id, step: 1 }));
    assert_eq!(engine.saga(child).await.unwrap().parent, start.parent);
}

/// Runs an order whose `step` fails for good with `message`; asserts that
/// the order and its child both end compensated and returns the calls.
async fn compensated_order_failing(step: &str, message: &str) -> Vec<String> {
    let script = Script::failing(step, Phase::Action, StepError::permanent(message));
    let (registry, order) = order_registry(&script);
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;

    let (_, outcome) = run_to_end(&engine, &order, &3).await;

    assert_eq!(outcome.status, SagaStatus::Compensated);
    let child = engine.saga(child(&engine).await).await.unwrap();
    assert_eq!(child.status, SagaStatus::Compensated);
    script.calls()
}

#[tokio::test(start_paused = true)]
async fn a_child_that_compensates_fails_the_parent_step_and_the_parent_compensates() {
    let calls = compensated_order_failing("capture", "card expired").await;

    assert!(
        position(&calls, "authorize:compensation:1") < position(&calls, "reserve:compensation:1")
    );
    assert!(!calls.contains(&"ship:action:1".to_string()));
}

#[tokio::test(start_paused = true)]
async fn compensating_the_parent_compensates_its_committed_child_first() {
    let calls = compensated_order_failing("ship", "no courier").await;

    let reserve = position(&calls, "reserve:compensation:1");
    assert!(
        position(&calls, "capture:compensation:1") < position(&calls, "authorize:compensation:1")
    );
    assert!(position(&calls, "authorize:compensation:1") < reserve);
}

#[tokio::test(start_paused = true)]
async fn recovery_restores_a_parent_and_its_child_without_a_second_child() {
    let store = Arc::new(MemStore::new());
    let first = Script::default();
    first.set("capture", Phase::Action, Behaviour::Hang);
    let (registry, order) = order_registry(&first);
    let engine = open_mem(&store, registry).await;
    let id = start_saga(&engine, &order, &3).await;
    until_calls(&first, |calls| calls.contains(&"capture:action:1".into())).await;
    engine.shutdown(Duration::ZERO).await;

    let second = Script::default();
    let (registry, _) = order_registry(&second);
    let engine = open_mem(&store, registry).await;
    let outcome = outcome_of(&engine, id).await;

    assert_eq!(outcome.status, SagaStatus::Committed);
    let child = child(&engine).await;
    assert_eq!(
        engine.saga(child).await.unwrap().status,
        SagaStatus::Committed
    );
    let calls = second.calls();
    assert!(calls.contains(&"capture:action:2".to_string()), "{calls:?}");
    assert!(
        !calls.iter().any(|c| c.starts_with("authorize")),
        "{calls:?}"
    );
    assert_eq!(calls.last().map(String::as_str), Some("ship:action:1"));
}

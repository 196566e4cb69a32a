//! TCC transactions: try every branch, then confirm all or cancel every
//! branch that was tried; confirm/cancel retries, the manual queue,
//! asyncConfirm, the 2PC adapter and its post-commit compensation.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

mod common;

use common::{
    call, open_mem, outcome_of, position, run_to_end, start_saga, status_of, until_calls,
    Behaviour, Script,
};
use sagalog::{Decision, Record};
use sagalog::{
    Engine, MemStore, Phase, Registry, RetryPolicy, SagaBuilder, SagaDefinition, SagaId, SagaRef,
    SagaStatus, StepContext, StepError, TwoPhaseParticipant,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        initial_interval_ms: 100,
        max_interval_ms: 1_000,
        ..RetryPolicy::forward_default()
    }
}

/// Branches `funds`, `stock`, `order` of a TCC transaction.
fn seckill(
    script: &Script,
    shape: impl FnOnce(SagaBuilder<u32>) -> SagaBuilder<u32>,
) -> (Registry, SagaRef<u32>) {
    let mut builder = shape(SagaDefinition::<u32>::tcc("seckill"))
        .retry(retry())
        .compensation_retry(retry());
    for name in ["funds", "stock", "order"] {
        builder = builder.branch(name, call(script), call(script), call(script));
    }
    let mut registry = Registry::new();
    let saga = registry.register(builder.build().unwrap()).unwrap();
    (registry, saga)
}

/// Waits (on the paused clock) until the saga, running in the background
/// after its outcome was reported, reaches `status`; panics if it never does.
async fn until_status(engine: &Engine, id: SagaId, status: SagaStatus) {
    for _ in 0..1_000 {
        if engine.saga(id).await.unwrap().status == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("the background confirms or cancels never reached {status}");
}

async fn decisions(engine: &Engine, id: SagaId) -> Vec<Decision> {
    engine
        .history(id)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.record {
            Ok((_, Record::Decided(d))) => Some(d.decision),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn every_try_succeeds_then_every_branch_is_confirmed() {
    let script = Script::default();
    let (registry, saga) = seckill(&script, |b| b);
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;

    let (id, outcome) = run_to_end(&engine, &saga, &7).await;

    assert_eq!(outcome.status, SagaStatus::Committed);
    let calls = script.calls();
    assert_eq!(&calls[..3], ["funds:try:1", "stock:try:1", "order:try:1"]);
    let mut confirms = calls[3..].to_vec();
    confirms.sort();
    assert_eq!(
        confirms,
        ["funds:confirm:1", "order:confirm:1", "stock:confirm:1"]
    );
    assert_eq!(decisions(&engine, id).await, [Decision::Commit]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_try_cancels_every_branch_that_was_tried_and_rolls_back() {
    let script = Script::failing("stock", Phase::Try, StepError::permanent("sold out"));
    let (registry, saga) = seckill(&script, |b| b);
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;

    let (id, outcome) = run_to_end(&engine, &saga, &7).await;

    assert_eq!(outcome.status, SagaStatus::RolledBack);
    let calls = script.calls();
    // The failed try is cancelled too: its barrier makes that an empty rollback.
    assert!(position(&calls, "stock:cancel:1") < position(&calls, "funds:cancel:1"));
    assert!(
        !calls.iter().any(|c| c.starts_with("order:")),
        "order was never tried"
    );
    assert!(!calls.iter().any(|c| c.contains("confirm")));
    assert_eq!(decisions(&engine, id).await, [Decision::Rollback]);
}

#[tokio::test(start_paused = true)]
async fn parallel_tries_are_called_at_the_same_time() {
    let script = Script::default();
    for name in ["funds", "stock", "order"] {
        script.set(name, Phase::Try, Behaviour::Gate);
    }
    let (registry, saga) = seckill(&script, |b| b.parallel_tries());
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;

    let id = start_saga(&engine, &saga, &7).await;
    until_calls(&script, |calls| calls.len() == 3).await;
    script.open_gate();

    assert_eq!(status_of(&engine, id).await, SagaStatus::Committed);
}

#[tokio::test(start_paused = true)]
async fn a_failing_confirm_is_retried_with_backoff_until_it_succeeds() {
    let script = Script::default();
    script.set(
        "stock",
        Phase::Confirm,
        Behaviour::FailTimes(2, StepError::retryable("stock service busy")),
    );
    let (registry, saga) = seckill(&script, |b| b);
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;

    let (_, outcome) = run_to_end(&engine, &saga, &7).await;

    assert_eq!(outcome.status, SagaStatus::Committed);
    let first = script.time_of("stock:confirm:1").unwrap();
    let third = script.time_of("stock:confirm:3").unwrap();
    assert!(
        third - first >= Duration::from_millis(100),
        "backoff between attempts"
    );
}

#[tokio::test(start_paused = true)]
async fn a_confirm_that_keeps_failing_waits_for_an_operator_then_commits_on_retry() {
    let script = Script::failing("order", Phase::Confirm, StepError::retryable("db down"));
    let (registry, saga) = seckill(&script, |b| b);
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;

    let (id, outcome) = run_to_end(&engine, &saga, &7).await;
    assert_eq!(outcome.status, SagaStatus::Suspended);
    let queue = engine.manual_queue().await.unwrap();
    assert_eq!(queue.len(), 1);
    assert!(
        queue[0].reason.contains("confirm of branch 'order'"),
        "{}",
        queue[0].reason
    );

    script.set("order", Phase::Confirm, Behaviour::Succeed);
    engine.retry_now(id, "ops", "db is back").await.unwrap();

    assert_eq!(status_of(&engine, id).await, SagaStatus::Committed);
}

#[tokio::test(start_paused = true)]
async fn async_confirm_reports_the_outcome_once_the_commit_decision_is_durable() {
    let script = Script::default();
    script.set("funds", Phase::Confirm, Behaviour::Gate);
    let (registry, saga) = seckill(&script, |b| b.async_confirm());
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;

    let (id, outcome) = run_to_end(&engine, &saga, &7).await;
    assert_eq!(outcome.status, SagaStatus::Committing);

    until_calls(&script, |calls| calls.contains(&"funds:confirm:1".into())).await;
    script.open_gate();
    until_status(&engine, id, SagaStatus::Committed).await;
}

#[tokio::test(start_paused = true)]
async fn async_confirms_left_running_by_a_shutdown_finish_after_reopening() {
    let store = Arc::new(MemStore::new());
    let first = Script::default();
    first.set("stock", Phase::Confirm, Behaviour::Hang);
    let (registry, saga) = seckill(&first, |b| b.async_confirm());
    let engine = open_mem(&store, registry).await;
    let id = start_saga(&engine, &saga, &7).await;
    assert_eq!(status_of(&engine, id).await, SagaStatus::Committing);
    until_calls(&first, |calls| calls.contains(&"stock:confirm:1".into())).await;
    engine.shutdown(Duration::ZERO).await;

    let second = Script::default();
    let (registry, _) = seckill(&second, |b| b.async_confirm());
    let engine = open_mem(&store, registry).await;
    until_status(&engine, id, SagaStatus::Committed).await;

    assert_eq!(engine.saga(id).await.unwrap().status, SagaStatus::Committed);
    assert!(second.calls().contains(&"stock:confirm:2".to_string()));
    assert!(
        second.calls().iter().all(|c| c.contains("confirm")),
        "no try runs again"
    );
}

#[tokio::test(start_paused = true)]
async fn an_operator_cancel_during_the_tries_rolls_the_transaction_back() {
    let script = Script::default();
    script.set("stock", Phase::Try, Behaviour::Gate);
    let (registry, saga) = seckill(&script, |b| b);
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;

    let id = start_saga(&engine, &saga, &7).await;
    until_calls(&script, |calls| calls.contains(&"stock:try:1".into())).await;
    let cancel = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.cancel(id, "ops", "customer withdrew").await })
    };
    tokio::task::yield_now().await;
    script.open_gate();
    cancel.await.unwrap().unwrap();

    assert_eq!(status_of(&engine, id).await, SagaStatus::RolledBack);
    let calls = script.calls();
    assert!(calls.contains(&"funds:cancel:1".to_string()));
    assert!(!calls.iter().any(|c| c.starts_with("order:")));
}

#[tokio::test(start_paused = true)]
async fn cancel_is_refused_once_the_commit_is_decided() {
    let script = Script::failing("funds", Phase::Confirm, StepError::retryable("down"));
    let (registry, saga) = seckill(&script, |b| b);
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;
    let id = start_saga(&engine, &saga, &7).await;
    assert_eq!(status_of(&engine, id).await, SagaStatus::Suspended);

    let refused = engine.cancel(id, "ops", "too late").await.unwrap_err();

    assert!(
        refused.to_string().contains("confirms cannot be undone"),
        "{refused}"
    );
}

/// A two-phase-commit participant, recording its calls.
struct Ledger {
    name: &'static str,
    calls: Arc<Mutex<Vec<String>>>,
}

impl Ledger {
    fn note(&self, what: &str) -> Result<(), StepError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("{}:{what}", self.name));
        Ok(())
    }
}

impl TwoPhaseParticipant<u32> for Ledger {
    async fn prepare(&self, _: StepContext<u32>) -> Result<(), StepError> {
        self.note("prepare")
    }
    async fn commit(&self, _: StepContext<u32>) -> Result<(), StepError> {
        self.note("commit")
    }
    async fn rollback(&self, _: StepContext<u32>) -> Result<(), StepError> {
        self.note("rollback")
    }
    async fn compensate(&self, _: StepContext<u32>) -> Result<(), StepError> {
        self.note("compensate")
    }
}

#[tokio::test(start_paused = true)]
async fn two_phase_participants_commit_and_an_operator_compensates_them_later() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mut builder = SagaDefinition::<u32>::tcc("order-2pc");
    for name in ["inventory", "payment", "shipping"] {
        builder = builder.participant(
            name,
            Arc::new(Ledger {
                name,
                calls: calls.clone(),
            }),
        );
    }
    let mut registry = Registry::new();
    let saga = registry.register(builder.build().unwrap()).unwrap();
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;

    let id = start_saga(&engine, &saga, &1).await;
    assert_eq!(status_of(&engine, id).await, SagaStatus::Committed);
    engine
        .compensate_now(id, "ops", "order refunded")
        .await
        .unwrap();
    let outcome = outcome_of(&engine, id).await;

    assert_eq!(outcome.status, SagaStatus::Compensated);
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        &calls[6..],
        [
            "shipping:compensate",
            "payment:compensate",
            "inventory:compensate"
        ],
        "{calls:?}"
    );
    assert!(!calls.iter().any(|c| c.ends_with("rollback")));
}

#[test]
fn a_plain_step_in_a_tcc_definition_is_a_definition_error() {
    let script = Script::default();
    let error = SagaDefinition::<u32>::tcc("mixed")
        .step("oops", call(&script), call(&script))
        .build()
        .err()
        .expect("refused");

    assert!(
        error.problems()[0].contains("a TCC transaction has branches"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn async_cancel_reports_the_outcome_once_the_rollback_decision_is_durable() {
    let script = Script::failing("stock", Phase::Try, StepError::permanent("sold out"));
    script.set("funds", Phase::Cancel, Behaviour::Gate);
    let (registry, saga) = seckill(&script, |b| b.async_cancel());
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;

    let (id, outcome) = run_to_end(&engine, &saga, &7).await;
    assert_eq!(outcome.status, SagaStatus::RollingBack);

    until_calls(&script, |calls| calls.contains(&"funds:cancel:1".into())).await;
    script.open_gate();
    until_status(&engine, id, SagaStatus::RolledBack).await;
}

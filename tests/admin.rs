//! The admin side: an engine opened for administration only (what the CLI
//! uses while the service is stopped) and retry-now. Timing runs on tokio's
//! paused clock.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

mod common;

use common::timed::{config_at, start, trip_at, T0};
use common::{engine_store, outcome_of, start_saga, trip_registry, Script, TRIP_UNDONE};
use sagalog::{
    CompensationStrategy, Engine, Error, InDoubtPolicy, MemStore, Phase, RetryPolicy, SagaId,
    SagaStatus, StartOptions, StepError,
};
use std::sync::Arc;
use std::time::Duration;

/// Runs one saga whose car step fails with `error` under `strategy` until
/// it stops moving (suspended, or asleep on a timer), then shuts down.
async fn leave_one_saga(
    store: &Arc<MemStore>,
    strategy: CompensationStrategy,
    error: StepError,
) -> SagaId {
    let script = Script::failing("car", Phase::Action, error);
    let (engine, trip) = trip_at(store, &script, T0).await;
    let id = start(&engine, &trip, strategy).await;
    loop {
        let view = engine.saga(id).await.unwrap();
        let asleep = engine
            .delay_queue(10)
            .await
            .unwrap()
            .iter()
            .any(|d| d.saga_id == id);
        if asleep || view.status == SagaStatus::Suspended {
            break;
        }
        tokio::task::yield_now().await;
    }
    engine.shutdown(Duration::ZERO).await;
    id
}

/// Leaves one saga suspended for an operator: its car step failed for good
/// under the manual strategy.
async fn leave_one_suspended(store: &Arc<MemStore>) -> SagaId {
    let sold_out = StepError::permanent("sold out");
    leave_one_saga(store, CompensationStrategy::Manual, sold_out).await
}

fn slow_retries() -> CompensationStrategy {
    CompensationStrategy::RetryThenCompensate {
        policy: RetryPolicy {
            max_attempts: 5,
            initial_interval_ms: 3_600_000,
            max_interval_ms: 3_600_000,
            ..RetryPolicy::forward_default()
        },
    }
}

#[tokio::test]
async fn admin_engine_runs_nothing_and_refuses_to_start_sagas() {
    let store = Arc::new(MemStore::new());
    let id = leave_one_suspended(&store).await;
    let appends = store.append_count();

    let admin = Engine::open_admin_with_store(engine_store(&store).await)
        .await
        .unwrap();
    let (_, trip) = trip_registry(&Script::default(), InDoubtPolicy::Rerun);

    assert_eq!(admin.saga(id).await.unwrap().status, SagaStatus::Suspended);
    assert_eq!(admin.manual_queue().await.unwrap().len(), 1);
    assert!(matches!(
        admin.start(&trip, &"bob".into(), StartOptions::new()).await,
        Err(Error::AdminOnly)
    ));
    assert_eq!(store.append_count(), appends, "reading wrote nothing");
}

#[tokio::test]
async fn action_recorded_by_the_admin_engine_is_carried_out_at_the_services_next_open() {
    let store = Arc::new(MemStore::new());
    let id = leave_one_suspended(&store).await;

    let admin = Engine::open_admin_with_store(engine_store(&store).await)
        .await
        .unwrap();
    admin
        .compensate_now(id, "alice", "customer cancelled")
        .await
        .unwrap();
    assert_eq!(
        admin.saga(id).await.unwrap().status,
        SagaStatus::Compensating,
        "recorded, not carried out"
    );
    admin.shutdown(Duration::ZERO).await;

    let script = Script::default();
    let (service, _) = trip_at(&store, &script, T0 + 1_000).await;
    assert_eq!(
        service.outcome(id).await.unwrap().status,
        SagaStatus::Compensated
    );
    assert_eq!(script.calls(), TRIP_UNDONE);
}

#[tokio::test]
async fn admin_engine_refuses_an_action_that_makes_no_sense_and_writes_nothing() {
    let store = Arc::new(MemStore::new());
    let id = leave_one_suspended(&store).await;
    let appends = store.append_count();
    let admin = Engine::open_admin_with_store(engine_store(&store).await)
        .await
        .unwrap();

    let refused = admin.mark_compensated(id, "car", "alice", "typo").await;

    assert!(matches!(refused, Err(Error::Illegal { .. })), "{refused:?}");
    assert_eq!(store.append_count(), appends);
}

#[tokio::test(start_paused = true)]
async fn retry_now_wakes_a_saga_asleep_on_a_forward_backoff_at_once() {
    let store = Arc::new(MemStore::new());
    let id = leave_one_saga(&store, slow_retries(), StepError::retryable("api down")).await;

    let script = Script::default();
    let (engine, _) = trip_at(&store, &script, T0 + 1_000).await;
    let before = tokio::time::Instant::now();
    engine.retry_now(id, "alice", "api is back").await.unwrap();
    let outcome = outcome_of(&engine, id).await;

    assert_eq!(outcome.status, SagaStatus::Committed);
    assert_eq!(script.calls(), ["car:action:2"]);
    assert!(
        script.time_of("car:action:2").unwrap() - before < Duration::from_secs(60),
        "ran long before the one-hour backoff"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_now_on_a_scheduled_compensation_compensates_at_once() {
    let store = Arc::new(MemStore::new());
    let id = leave_one_saga(
        &store,
        CompensationStrategy::Scheduled {
            delay_ms: 86_400_000,
        },
        StepError::permanent("sold out"),
    )
    .await;

    let script = Script::default();
    let (engine, _) = trip_at(&store, &script, T0 + 1_000).await;
    engine.retry_now(id, "alice", "do not wait").await.unwrap();
    let outcome = outcome_of(&engine, id).await;

    assert_eq!(outcome.status, SagaStatus::Compensated);
    assert_eq!(script.calls(), TRIP_UNDONE);
}

#[tokio::test]
async fn retry_now_on_a_finished_saga_is_refused() {
    let store = Arc::new(MemStore::new());
    let script = Script::default();
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = Engine::open_with_store(engine_store(&store).await, registry, config_at(T0))
        .await
        .unwrap();
    let id = start_saga(&engine, &trip, &"ada".into()).await;
    outcome_of(&engine, id).await;

    let refused = engine.retry_now(id, "alice", "why not").await;

    assert!(
        matches!(&refused, Err(Error::InvalidOptions(m)) if m.contains("waits for nothing")),
        "{refused:?}"
    );
}

/// A suspended saga (manual strategy) and an admin engine over its store,
/// as the CLI opens it while the service is stopped.
async fn suspended_with_admin(store: &Arc<MemStore>) -> (SagaId, Engine) {
    let id = leave_one_suspended(store).await;
    let admin = Engine::open_admin_with_store(engine_store(store).await)
        .await
        .unwrap();
    (id, admin)
}

/// Stops `admin` and opens the service's engine over `store`, as a restart
/// of the service after an operator's offline action.
async fn service_after(admin: Engine, store: &Arc<MemStore>) -> Engine {
    admin.shutdown(Duration::ZERO).await;
    let (registry, _) = trip_registry(&Script::default(), InDoubtPolicy::Rerun);
    Engine::open_with_store(engine_store(store).await, registry, config_at(T0))
        .await
        .unwrap()
}

/// The same, with the saga abandoned through the admin engine.
async fn abandoned_offline(store: &Arc<MemStore>) -> (SagaId, Engine) {
    let (id, admin) = suspended_with_admin(store).await;
    admin.abandon(id, "ada", "customer left").await.unwrap();
    (id, admin)
}

#[tokio::test]
async fn an_action_after_a_pending_abandon_is_refused_naming_the_abandon() {
    let store = Arc::new(MemStore::new());
    let (id, admin) = abandoned_offline(&store).await;

    let compensate = admin.compensate_now(id, "bob", "undo it").await;
    let again = admin.abandon(id, "bob", "twice").await;

    for refused in [compensate, again] {
        let Err(Error::Illegal { error, .. }) = refused else {
            panic!("expected a refusal, got {refused:?}");
        };
        assert!(
            error
                .reason
                .contains("abandon by ada (customer left) is recorded and not yet carried out"),
            "{}",
            error.reason
        );
    }
}

#[tokio::test]
async fn a_pending_abandon_is_shown_as_pending_in_show_list_and_manual() {
    let store = Arc::new(MemStore::new());
    let (id, admin) = abandoned_offline(&store).await;

    let view = admin.saga(id).await.unwrap();
    let listed = admin.find(&sagalog::SagaFilter::new()).await.unwrap();
    let manual = admin.manual_queue().await.unwrap();

    assert_eq!(view.pending, ["abandon by ada: customer left"]);
    assert_eq!(listed[0].pending.as_deref(), Some("abandon"));
    assert_eq!(manual.len(), 1);
    assert_eq!(manual[0].pending, ["abandon by ada: customer left"]);
}

#[tokio::test]
async fn the_service_carries_out_a_pending_abandon_and_it_is_pending_no_more() {
    let store = Arc::new(MemStore::new());
    let (id, admin) = abandoned_offline(&store).await;
    let engine = service_after(admin, &store).await;

    let outcome = outcome_of(&engine, id).await;

    assert_eq!(outcome.status, SagaStatus::Failed);
    assert!(engine.saga(id).await.unwrap().pending.is_empty());
    let listed = engine.find(&sagalog::SagaFilter::new()).await.unwrap();
    assert_eq!(listed[0].pending, None);
}

#[tokio::test]
async fn marking_two_steps_compensated_offline_is_accepted() {
    let store = Arc::new(MemStore::new());
    let (id, admin) = suspended_with_admin(&store).await;

    admin
        .mark_compensated(id, "flight", "ada", "refunded")
        .await
        .unwrap();
    admin
        .mark_compensated(id, "hotel", "ada", "refunded")
        .await
        .unwrap();

    assert_eq!(admin.saga(id).await.unwrap().pending.len(), 2);
}

#[tokio::test]
async fn a_saga_compensated_by_an_operators_order_says_who_ordered_it_and_why() {
    let store = Arc::new(MemStore::new());
    let (id, admin) = suspended_with_admin(&store).await;
    admin
        .compensate_now(id, "alice", "customer cancelled")
        .await
        .unwrap();
    let engine = service_after(admin, &store).await;

    let outcome = outcome_of(&engine, id).await;

    assert_eq!(outcome.status, SagaStatus::Compensated);
    let reason = outcome.reason.expect("it says why");
    assert!(
        reason.contains("compensate_now by alice: customer cancelled"),
        "{reason}"
    );
}

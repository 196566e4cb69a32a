//! Operator queries: filters by status, type, start time and age; stats.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

mod common;

use common::{outcome_of, start_saga, status_of, trip_definition, Script};
use sagalog::{
    CompensationStrategy, Engine, EngineConfig, InDoubtPolicy, MemStore, Phase, Registry,
    SagaFilter, SagaStatus, StartOptions, StepError, UnixMillis,
};
use std::sync::Arc;
use std::time::Duration;

const T0: u64 = 1_800_000_000_000;

async fn engine_with_two_types(
    script: &Script,
) -> (Engine, sagalog::SagaRef<String>, sagalog::SagaRef<String>) {
    let mut registry = Registry::new();
    let trip = registry
        .register(trip_definition("trip", script, InDoubtPolicy::Rerun))
        .unwrap();
    let other = registry
        .register(trip_definition("other", script, InDoubtPolicy::Rerun))
        .unwrap();
    let config = EngineConfig {
        start_time: Some(UnixMillis(T0)),
        ..EngineConfig::default()
    };
    let store = common::engine_store(&Arc::new(MemStore::new())).await;
    let engine = Engine::open_with_store(store, registry, config)
        .await
        .unwrap();
    (engine, trip, other)
}

#[tokio::test(start_paused = true)]
async fn find_filters_by_saga_type() {
    let script = Script::default();
    let (engine, trip, other) = engine_with_two_types(&script).await;
    let a = start_saga(&engine, &trip, &"a".into()).await;
    let b = start_saga(&engine, &other, &"b".into()).await;
    outcome_of(&engine, a).await;
    outcome_of(&engine, b).await;

    let found = engine
        .find(&SagaFilter::new().saga_type("other"))
        .await
        .unwrap();

    assert_eq!(found.iter().map(|l| l.saga_id).collect::<Vec<_>>(), [b]);
}

#[tokio::test(start_paused = true)]
async fn find_filters_by_start_time() {
    let script = Script::default();
    let (engine, trip, _) = engine_with_two_types(&script).await;
    let early = start_saga(&engine, &trip, &"early".into()).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let late = start_saga(&engine, &trip, &"late".into()).await;
    outcome_of(&engine, early).await;
    outcome_of(&engine, late).await;

    let window = SagaFilter::new().started_between(UnixMillis(T0 + 5_000), UnixMillis(T0 + 60_000));
    let found = engine.find(&window).await.unwrap();

    assert_eq!(found.iter().map(|l| l.saga_id).collect::<Vec<_>>(), [late]);
}

#[tokio::test(start_paused = true)]
async fn unfinished_for_finds_sagas_that_are_old_and_not_finished() {
    let script = Script::failing("car", Phase::Action, StepError::permanent("sold out"));
    let (engine, trip, other) = engine_with_two_types(&script).await;
    let stuck = engine
        .start(
            &trip,
            &"stuck".into(),
            StartOptions::new().strategy(CompensationStrategy::Manual),
        )
        .await
        .unwrap()
        .saga_id;
    assert_eq!(status_of(&engine, stuck).await, SagaStatus::Suspended);
    let done = start_saga(&engine, &other, &"done".into()).await;
    outcome_of(&engine, done).await;
    tokio::time::sleep(Duration::from_secs(3_600)).await;

    let half_hour = engine
        .find(&SagaFilter::new().unfinished_for(Duration::from_secs(1_800)))
        .await
        .unwrap();
    let two_hours = engine
        .find(&SagaFilter::new().unfinished_for(Duration::from_secs(7_200)))
        .await
        .unwrap();

    assert_eq!(
        half_hour.iter().map(|l| l.saga_id).collect::<Vec<_>>(),
        [stuck]
    );
    assert!(two_hours.is_empty());
}

#[tokio::test(start_paused = true)]
async fn find_filters_by_status() {
    let script = Script::failing("car", Phase::Action, StepError::permanent("sold out"));
    let (engine, trip, _) = engine_with_two_types(&script).await;
    let manual = StartOptions::new().strategy(CompensationStrategy::Manual);
    let stuck = engine
        .start(&trip, &"stuck".into(), manual)
        .await
        .unwrap()
        .saga_id;
    let undone = start_saga(&engine, &trip, &"undone".into()).await;
    outcome_of(&engine, undone).await;
    assert_eq!(status_of(&engine, stuck).await, SagaStatus::Suspended);

    let suspended = engine
        .find(&SagaFilter::new().status(SagaStatus::Suspended))
        .await
        .unwrap();
    let compensated = engine
        .find(&SagaFilter::new().status(SagaStatus::Compensated))
        .await
        .unwrap();

    assert_eq!(
        suspended.iter().map(|l| l.saga_id).collect::<Vec<_>>(),
        [stuck]
    );
    assert_eq!(
        compensated.iter().map(|l| l.saga_id).collect::<Vec<_>>(),
        [undone]
    );
}

#[tokio::test(start_paused = true)]
async fn find_pages_through_every_saga_by_the_last_id_listed() {
    let script = Script::default();
    let (engine, trip, other) = engine_with_two_types(&script).await;
    let mut ids = Vec::new();
    for k in 0..7 {
        let saga = if k % 2 == 0 { &trip } else { &other };
        ids.push(start_saga(&engine, saga, &format!("s{k}")).await);
    }
    for id in &ids {
        outcome_of(&engine, *id).await;
    }

    let mut paged = Vec::new();
    let mut filter = SagaFilter::new().limit(3);
    loop {
        let page = engine.find(&filter).await.unwrap();
        paged.extend(page.iter().map(|l| l.saga_id));
        match page.last() {
            Some(last) if page.len() == 3 => {
                filter = SagaFilter::new().limit(3).after(last.saga_id)
            }
            _ => break,
        }
    }

    ids.sort();
    assert_eq!(paged, ids);
}

#[tokio::test(start_paused = true)]
async fn stats_count_statuses_queues_and_the_oldest_saga_in_flight() {
    let script = Script::failing("car", Phase::Action, StepError::permanent("sold out"));
    let (engine, trip, other) = engine_with_two_types(&script).await;
    let manual = engine
        .start(
            &trip,
            &"m".into(),
            StartOptions::new().strategy(CompensationStrategy::Manual),
        )
        .await
        .unwrap()
        .saga_id;
    outcome_of(&engine, manual).await;
    let immediate = start_saga(&engine, &trip, &"i".into()).await;
    outcome_of(&engine, immediate).await;
    let scheduled = engine
        .start(
            &other,
            &"s".into(),
            StartOptions::new().strategy(CompensationStrategy::Scheduled {
                delay_ms: 86_400_000,
            }),
        )
        .await
        .unwrap()
        .saga_id;
    while engine.delay_queue(10).await.unwrap().is_empty() {
        tokio::task::yield_now().await;
    }

    let stats = engine.stats().await.unwrap();

    assert_eq!(
        stats.by_status,
        [
            (SagaStatus::Compensating, 1),
            (SagaStatus::Compensated, 1),
            (SagaStatus::Suspended, 1)
        ]
    );
    assert_eq!(stats.delay_queue_depth, 1);
    assert_eq!(stats.manual_queue_depth, 1);
    assert_eq!(stats.parked, 0);
    let (oldest, _) = stats.oldest_in_flight.unwrap();
    assert_eq!(
        oldest, manual,
        "the manual saga started first and is not finished"
    );
    assert_ne!(oldest, scheduled);
}

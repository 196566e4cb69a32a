//! The metrics facade: what a Prometheus scrape sees after a known workload.
//! One test in its own binary, because the recorder is process-global.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

mod common;

use common::{open_mem, outcome_of, start_saga, trip_registry, Behaviour, Script};
use metrics_exporter_prometheus::PrometheusBuilder;
use sagalog::testing::FaultTiming;
use sagalog::{
    CompensationStrategy, InDoubtPolicy, MemStore, Phase, RetryPolicy, StartOptions, StepError,
};
use std::sync::Arc;
use std::time::Duration;

/// The value of the sample `name` (with its labels, as rendered).
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_starts_finishes_retries_compensations_the_manual_queue_and_a_failed_sync() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).unwrap();

    let script = Script::default();
    let (registry, trip) = trip_registry(&script, InDoubtPolicy::Rerun);
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;
    let ok = start_saga(&engine, &trip, &"ok".into()).await;
    outcome_of(&engine, ok).await;
    script.set(
        "car",
        Phase::Action,
        Behaviour::Fail(StepError::retryable("rental api down")),
    );
    let retrying = CompensationStrategy::RetryThenCompensate {
        policy: RetryPolicy {
            max_attempts: 2,
            initial_interval_ms: 1,
            max_interval_ms: 1,
            ..RetryPolicy::forward_default()
        },
    };
    let failed = engine
        .start(
            &trip,
            &"failed".into(),
            StartOptions::new().strategy(retrying),
        )
        .await
        .unwrap()
        .saga_id;
    outcome_of(&engine, failed).await;
    let manual = engine
        .start(
            &trip,
            &"manual".into(),
            StartOptions::new().strategy(CompensationStrategy::Manual),
        )
        .await
        .unwrap()
        .saga_id;
    outcome_of(&engine, manual).await;
    engine.shutdown(Duration::from_secs(1)).await;

    let text = handle.render();
    let get = |name: &str| sample(&text, name).unwrap_or_else(|| panic!("{name} missing:\n{text}"));
    assert_eq!(get(r#"sagalog_sagas_started_total{saga_type="trip"}"#), 3.0);
    assert_eq!(
        get(r#"sagalog_sagas_finished_total{saga_type="trip",status="COMMITTED"}"#),
        1.0
    );
    assert_eq!(
        get(r#"sagalog_sagas_finished_total{saga_type="trip",status="COMPENSATED"}"#),
        1.0
    );
    // "failed" retried car once; "manual" retried car under the default policy.
    assert!(get(r#"sagalog_retries_total{phase="action"}"#) >= 2.0);
    assert_eq!(
        get("sagalog_compensations_total"),
        2.0,
        "hotel and flight of 'failed'"
    );
    assert_eq!(get("sagalog_manual_queue_depth"), 1.0);
    assert_eq!(get("sagalog_delay_queue_depth"), 0.0);
    let groups = get("sagalog_log_append_seconds_count");
    assert!(groups > 0.0);
    for phase in ["apply", "flush", "sync"] {
        let name = format!(r#"sagalog_log_write_phase_seconds_count{{phase="{phase}"}}"#);
        assert_eq!(
            get(&name),
            groups,
            "every durable group reports its {phase}"
        );
    }
    assert!(get(r#"sagalog_participant_call_seconds_count{phase="action",outcome="ok"}"#) >= 5.0);
    assert_eq!(get("sagalog_log_writable"), 1.0);

    // A sync fails: the gauge says the log takes no more writes.
    let store = Arc::new(MemStore::new());
    let (registry, trip) = trip_registry(&Script::default(), InDoubtPolicy::Rerun);
    let engine = open_mem(&store, registry).await;
    store.fail_append(store.append_count() + 1, FaultTiming::FailedSync);
    assert!(engine
        .start(&trip, &"lost".into(), StartOptions::new())
        .await
        .is_err());
    let text = handle.render();
    assert_eq!(sample(&text, "sagalog_log_writable"), Some(0.0), "{text}");
}

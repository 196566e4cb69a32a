//! sagalog's metrics in Prometheus text format.
//!
//! `cargo run --release --example metrics` installs the
//! `metrics-exporter-prometheus` recorder (no HTTP listener: a service would
//! serve `handle.render()` on its own `/metrics` route), runs a few transfers
//! (some commit, some compensate after a retried step, one waits in the
//! manual queue), and prints what a scrape would return.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

use metrics_exporter_prometheus::PrometheusBuilder;
use sagalog::{
    CompensationStrategy, Engine, EngineConfig, Registry, RetryPolicy, SagaDefinition,
    StartOptions, StepError,
};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Serialize, Deserialize)]
struct Transfer {
    cents: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let handle = PrometheusBuilder::new().install_recorder()?;
    sagalog::metrics::describe();

    let mut registry = Registry::new();
    let transfer = registry.register(
        SagaDefinition::<Transfer>::builder("transfer")
            .step("debit", |_ctx| async { Ok(()) }, |_ctx| async { Ok(()) })
            .step(
                "credit",
                |ctx| async move {
                    match ctx.input().cents {
                        // Always refused: compensated after its retries.
                        c if c.is_multiple_of(5) => Err(StepError::retryable("bank busy")),
                        _ => Ok(()),
                    }
                },
                |_ctx| async { Ok(()) },
            )
            .build()?,
    )?;
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path(), registry, EngineConfig::default()).await?;

    let retry = CompensationStrategy::RetryThenCompensate {
        policy: RetryPolicy {
            max_attempts: 3,
            initial_interval_ms: 5,
            max_interval_ms: 20,
            ..RetryPolicy::forward_default()
        },
    };
    let mut ids = Vec::new();
    for cents in 1..=20 {
        let options = StartOptions::new().strategy(retry);
        ids.push(
            engine
                .start(&transfer, &Transfer { cents }, options)
                .await?
                .saga_id,
        );
    }
    let manual = StartOptions::new().strategy(CompensationStrategy::Manual);
    ids.push(
        engine
            .start(&transfer, &Transfer { cents: 25 }, manual)
            .await?
            .saga_id,
    );
    for id in ids {
        engine.outcome(id).await?;
    }
    engine.shutdown(Duration::from_secs(5)).await;

    print!("{}", handle.render());
    Ok(())
}

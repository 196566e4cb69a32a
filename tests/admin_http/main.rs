//! The admin server: every route of the API over its Unix socket, the
//! TCP listener's token, and that no client can stall the sagas.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

#[path = "../common/mod.rs"]
mod common;

mod actions;
mod client;
mod listeners;
mod reading;

use common::{outcome_of, trip_on, Script};
use sagalog::{
    AdminConfig, AdminHandle, CompensationStrategy, Engine, MemStore, Phase, SagaId, SagaRef,
    SagaStatus, StartOptions, StepError,
};
use std::path::PathBuf;
use std::sync::Arc;

/// An engine over a memory store with its admin server on a socket in a
/// temporary directory.
struct Served {
    /// Holds the socket's directory until the test ends.
    _dir: tempfile::TempDir,
    engine: Engine,
    admin: AdminHandle,
    trip: SagaRef<String>,
}

impl Served {
    fn socket(&self) -> PathBuf {
        self.admin.socket().to_path_buf()
    }
}

async fn served_with(script: Script, config: AdminConfig) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let (engine, trip) = trip_on(&Arc::new(MemStore::new()), &script).await;
    let config = AdminConfig {
        socket: Some(dir.path().join("admin.sock")),
        ..config
    };
    let admin = engine.serve_admin(config).await.unwrap();
    Served {
        _dir: dir,
        engine,
        admin,
        trip,
    }
}

/// A served engine whose car participant is sold out.
async fn served() -> Served {
    let script = Script::failing("car", Phase::Action, StepError::permanent("sold out"));
    served_with(script, AdminConfig::default()).await
}

/// Starts a trip under `strategy` and returns its id.
async fn start(served: &Served, input: &str, strategy: CompensationStrategy) -> SagaId {
    let options = StartOptions::new()
        .idempotency_key(input)
        .strategy(strategy);
    served
        .engine
        .start(&served.trip, &input.to_string(), options)
        .await
        .unwrap()
        .saga_id
}

/// Starts a trip under `strategy` and waits until it ends or is suspended.
async fn run(served: &Served, input: &str, strategy: CompensationStrategy) -> SagaId {
    let id = start(served, input, strategy).await;
    outcome_of(&served.engine, id).await;
    id
}

/// A trip suspended for an operator: the car failed under the manual strategy.
async fn suspended(served: &Served, input: &str) -> SagaId {
    let id = run(served, input, CompensationStrategy::Manual).await;
    assert_eq!(
        served.engine.saga(id).await.unwrap().status,
        SagaStatus::Suspended
    );
    id
}

//! sagalog benchmark: throughput, latency, recovery time and memory, each
//! against a raw-sled baseline measured in the same run on the same disk.
//!
//! ```text
//! cargo run --release --example bench -- --sagas 100000 --steps 3 --concurrency 256
//! cargo run --release --example bench -- --sagas 20000 --steps 3 --concurrency 1
//! cargo run --release --example bench -- --sagas 20000 --steps 3 --concurrency 256 --store postgres://postgres@127.0.0.1:55432/postgres
//! cargo run --release --example bench -- --sagas 20000 --steps 3 --concurrency 256 --guard-ratio 0.4
//! cargo run --release --example bench -- --mode cluster --nodes 3 --sagas 20000 --asleep 1000,10000,100000 --store postgres://…
//! cargo run --release --example bench -- --mode fixture --data-dir D --in-flight 10000 --finished 1000000
//! cargo run --release --example bench -- --mode recovery --data-dir D
//! cargo run --release --example bench -- --mode parked --sagas 1000000
//! cargo run --release --example bench -- --mode reopen --data-dir D
//! cargo run --release --example bench -- --mode long --rounds 20 --sagas 50000
//! ```
//!
//! Every mode prints one JSON object. Every saga is fully durable: each
//! record is flushed before the step that follows it runs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly
#![allow(unsafe_code)] // the counting global allocator wraps the system one

mod alloc;
mod baseline;
mod cluster;
mod long;
mod measure;
mod parked;
mod postgres;
mod recovery;
mod throughput;
mod workload;

use alloc::allocations;
use baseline::*;
use cluster::cluster;
use long::long_run;
use measure::*;
use parked::parked;
use postgres::pg_throughput;
use recovery::{fixture, recovery, reopen};
use throughput::throughput;
use workload::*;

use clap::{Parser, ValueEnum};
use sagalog::{
    CompensationStrategy, Engine, EngineConfig, Registry, RetryPolicy, SagaDefinition, SagaId,
    SagaRef, SledStore, StartOptions, StepError,
};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// N sagas of S no-op steps at concurrency C.
    Throughput,
    /// Build a recovery fixture: finished history plus sagas killed mid-step.
    Fixture,
    /// Open a fixture and drive every in-flight saga to a terminal state.
    Recovery,
    /// Park N sagas on a scheduled compensation; report memory and disk,
    /// then reopen the database in a fresh process (`reopen`).
    Parked,
    /// `--rounds` rounds of N sagas; after each, delete the sagas finished
    /// before it began (retention keeps one round): disk and memory over a
    /// long run.
    Long,
    /// Open an existing database (`--data-dir`) in this fresh process and
    /// report the open time and the resident memory after it.
    Reopen,
    /// With `--store`: `--nodes` engines on one PostgreSQL log against one
    /// node, then, for each count of `--asleep`, the time from killing a
    /// node that holds that many sagas asleep on timers until the
    /// survivors have adopted and finished them.
    Cluster,
}

#[derive(Parser)]
#[command(about = "Benchmark sagalog against raw sled on this disk")]
struct Args {
    #[arg(long, value_enum, default_value = "throughput")]
    mode: Mode,
    /// Sagas to run (throughput, parked).
    #[arg(long, default_value_t = 10_000)]
    sagas: usize,
    /// No-op steps per saga.
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Sagas in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Database directory (default: a fresh temporary directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Fixture: sagas left in flight (killed mid-step).
    #[arg(long, default_value_t = 10_000)]
    in_flight: usize,
    /// Fixture: finished sagas in history.
    #[arg(long, default_value_t = 0)]
    finished: usize,
    /// Exit with status 1 if `ratio` falls below this (a CI guard).
    #[arg(long)]
    guard_ratio: Option<f64>,
    /// tokio worker threads (the log writer has a thread of its own).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Long: rounds to run.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// sled cache size in MiB (default: the library's default).
    #[arg(long)]
    cache_mb: Option<u64>,
    /// Throughput with the log in this PostgreSQL database
    /// (postgres://USER@HOST:PORT/DB), in a fresh schema, against raw
    /// tokio-postgres writing the same rows.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// With `--store`: writing connections, so group commits in flight
    /// (`PgOptions::writers`); the baseline uses as many.
    #[arg(long, default_value_t = 2)]
    pg_writers: usize,
    /// Cluster: nodes sharing the log.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Cluster: sagas asleep on a timer in the node that is killed, one
    /// measurement per count (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    asleep: Vec<usize>,
}

static CACHE_MB: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();

fn main() {
    let args = Args::parse();
    let _ = CACHE_MB.set(args.cache_mb);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run(args));
}

async fn run(args: Args) {
    let temp = tempfile::tempdir().expect("a temporary directory");
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("error: cannot create {}: {e}", dir.display());
        std::process::exit(2);
    }
    let out = match args.mode {
        Mode::Throughput => match &args.store {
            Some(url) => pg_throughput(&args, url).await,
            None => throughput(&args, &dir).await,
        },
        Mode::Cluster => {
            match &args.store {
                Some(url) => cluster(&args, url).await,
                None => {
                    eprintln!("error: --mode cluster needs --store postgres://... (the log the nodes share)");
                    std::process::exit(2);
                }
            }
        }
        Mode::Fixture => fixture(&args, &dir).await,
        Mode::Recovery => recovery(&args, &dir).await,
        Mode::Parked => parked(&args, &dir).await,
        Mode::Long => long_run(&args, &dir).await,
        Mode::Reopen => match &args.data_dir {
            Some(dir) => reopen(dir).await,
            None => {
                eprintln!(
                    "error: --mode reopen needs --data-dir D (a database another mode built)"
                );
                std::process::exit(2);
            }
        },
    };
    println!("{out}");
    if let (Some(min), Some(ratio)) = (args.guard_ratio, out["ratio"].as_f64()) {
        if ratio < min {
            eprintln!("guard: ratio {ratio} is below {min}");
            std::process::exit(1);
        }
    }
}

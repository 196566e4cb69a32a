//! sagalog benchmark: throughput, latency, recovery time and memory, each
//! against a raw-sled baseline measured in the same run on the same disk.
//!
//! ```text
//! cargo run --release --example bench -- --sagas 100000 --steps 3 --concurrency 256
//! cargo run --release --example bench -- --sagas 20000 --steps 3 --concurrency 1
//! cargo run --release --example bench -- --sagas 20000 --steps 3 --concurrency 256 --guard-ratio 0.4
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

// With `--features bench-mimalloc`: the allocator choice a service makes
// for itself (docs/BENCHMARKS.md). The engine's tasks and sled's threads
// free each other's blocks; mimalloc's thread-local free lists take no lock
// for that, glibc's arenas do.
#[cfg(feature = "bench-mimalloc")]
#[global_allocator]
static ALLOCATOR: Counting<mimalloc::MiMalloc> = Counting(mimalloc::MiMalloc);
#[cfg(not(feature = "bench-mimalloc"))]
#[global_allocator]
static ALLOCATOR: Counting<std::alloc::System> = Counting(std::alloc::System);

/// Counts allocations and their bytes, then hands them to the allocator
/// it wraps. Allocations per saga do not depend on how fast this VM's CPU
/// is in a given hour, so they show a change in per-saga work that the
/// throughput noise would hide.
struct Counting<A>(A);

static ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static ALLOCATED_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

// SAFETY: every call is passed on unchanged to the wrapped allocator, which
// upholds `GlobalAlloc`'s contract; the counters are only side effects.
unsafe impl<A: std::alloc::GlobalAlloc> std::alloc::GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_allocation(layout.size());
        // SAFETY: the caller's layout, passed on as `alloc` requires.
        unsafe { self.0.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_allocation(layout.size());
        // SAFETY: as in `alloc`.
        unsafe { self.0.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        count_allocation(new);
        // SAFETY: `ptr` and `layout` come from this allocator, as the caller promises.
        unsafe { self.0.realloc(ptr, layout, new) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: as in `realloc`.
        unsafe { self.0.dealloc(ptr, layout) }
    }
}

fn count_allocation(bytes: usize) {
    use std::sync::atomic::Ordering::Relaxed;
    ALLOCATIONS.fetch_add(1, Relaxed);
    ALLOCATED_BYTES.fetch_add(bytes as u64, Relaxed);
}

/// Allocations (reallocations included) and bytes asked for so far.
fn allocations() -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    (ALLOCATIONS.load(Relaxed), ALLOCATED_BYTES.load(Relaxed))
}

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
}

static CACHE_MB: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();

fn rss_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU time this process has used so far (every thread, user + system), in
/// seconds: from `/proc/self/stat`, whose clock ticks are USER_HZ (100 on
/// Linux). 0 where it cannot be read.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which may hold spaces): state is
    // field 3, utime 14 and stime 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A saga of `steps` no-op steps. `hang_at`: a step index whose action never
/// returns while `hanging` is set (to leave sagas in flight for a fixture).
fn bench_saga(
    registry: &mut Registry,
    name: &str,
    steps: usize,
    hang: Option<(usize, Arc<AtomicUsize>)>,
) -> SagaRef<u64> {
    let mut builder = SagaDefinition::<u64>::builder(name);
    for i in 0..steps {
        let hang = hang.clone();
        builder = builder.step(
            format!("step{i}"),
            move |_ctx| {
                let hang = hang.clone();
                async move {
                    if let Some((at, reached)) = hang {
                        if at == i {
                            reached.fetch_add(1, Ordering::SeqCst);
                            std::future::pending::<()>().await;
                        }
                    }
                    Ok(())
                }
            },
            |_ctx| async { Ok(()) },
        );
    }
    registry
        .register(builder.build().expect("valid bench definition"))
        .expect("registered once")
}

fn config(concurrency: usize) -> EngineConfig {
    let mut config = EngineConfig {
        max_running_sagas: concurrency.max(1),
        ..EngineConfig::default()
    };
    if let Some(Some(mb)) = CACHE_MB.get() {
        config.sled.cache_capacity = mb * 1024 * 1024;
    }
    config
}

async fn open(dir: &Path, registry: Registry, concurrency: usize) -> Engine {
    match Engine::open(dir, registry, config(concurrency)).await {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}

/// Runs `n` sagas at `concurrency`; returns sorted latencies in ms and the wall time.
async fn run_sagas(
    engine: &Engine,
    saga: &SagaRef<u64>,
    n: usize,
    concurrency: usize,
) -> (Vec<f64>, Duration) {
    let next = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let began = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (engine, saga, next, latencies) = (
            engine.clone(),
            saga.clone(),
            next.clone(),
            latencies.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t0 = Instant::now();
                let started = engine.start(&saga, &(i as u64), StartOptions::new()).await;
                let Ok(started) = started else {
                    eprintln!("start failed: {started:?}");
                    std::process::exit(2);
                };
                if let Err(e) = engine.outcome(started.saga_id).await {
                    eprintln!("saga failed: {e}");
                    std::process::exit(2);
                }
                mine.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
            latencies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(mine);
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let wall = began.elapsed();
    let mut latencies = std::mem::take(&mut *latencies.lock().unwrap_or_else(|p| p.into_inner()));
    latencies.sort_by(|a, b| a.total_cmp(b));
    (latencies, wall)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// The disk's raw rate of small synced writes: 64 bytes, then `fdatasync`.
fn raw_fsync_per_sec(dir: &Path) -> f64 {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let Ok(mut file) = std::fs::File::create(&path) else {
        return 0.0;
    };
    let n = 500;
    let began = Instant::now();
    for _ in 0..n {
        if file
            .write_all(&[0u8; 64])
            .and_then(|_| file.sync_data())
            .is_err()
        {
            return 0.0;
        }
    }
    let rate = n as f64 / began.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(path);
    rate
}

/// Raw sled in `dir`, opened as sagalog opens it (no background flush)
/// with a `cache_mb` cache, and its log file, for the `fdatasync`s.
fn raw_sled(dir: &Path, cache_mb: u64) -> (sled::Db, std::fs::File) {
    let db = sled::Config::new()
        .path(dir)
        .flush_every_ms(None)
        .cache_capacity(cache_mb * 1024 * 1024)
        .open()
        .expect("baseline database opens");
    let log_file = std::fs::File::open(dir.join("db")).expect("baseline log file opens");
    (db, log_file)
}

/// Raw sled: atomic batches of `batch` values of `value_size` bytes, each
/// flushed, for about `entries` values or 3 s. Returns entries per second.
///
/// With `sync`, each flush is followed by `fdatasync` of sled's log file,
/// which is what sagalog's store does to make a write durable (sled's own
/// flush uses `sync_file_range`; DESIGN.md §4.1), so the ratio compares equal
/// durability.
fn sled_baseline(dir: &Path, value_size: usize, batch: usize, entries: u64, sync: bool) -> f64 {
    let (db, log_file) = raw_sled(dir, 64);
    let value = vec![0xA5u8; value_size.max(1)];
    let batch = batch.max(1);
    let began = Instant::now();
    let mut written: u64 = 0;
    let mut key: u64 = 0;
    while written < entries.max(1) && began.elapsed() < Duration::from_secs(3) {
        let mut b = sled::Batch::default();
        for _ in 0..batch {
            let mut k = [0u8; 25];
            k[0] = b'L';
            k[17..25].copy_from_slice(&key.to_be_bytes());
            b.insert(&k[..], &value[..]);
            key += 1;
        }
        db.apply_batch(b).expect("baseline batch");
        db.flush().expect("baseline flush");
        if sync {
            log_file.sync_data().expect("baseline fdatasync");
        }
        written += batch as u64;
    }
    written as f64 / began.elapsed().as_secs_f64()
}

/// Bytes of one saga's item in a finished batch: its 16-byte id and the
/// index entry frame of a committed saga of type `bench`, encoded as the
/// store encodes it (DESIGN.md §3.3, §4.4).
fn finished_item_bytes() -> usize {
    let now = sagalog::UnixMillis::now();
    let entry = sagalog::store::IndexEntry {
        saga_type: sagalog::SagaType::new("bench"),
        status: sagalog::SagaStatus::Committed,
        started_at: now,
        next_wake: None,
        changed_at: now,
        pending: None,
    };
    let frame = sagalog::tools::encode_index_entry(&entry).expect("an index entry encodes");
    16 + frame.len()
}

/// Raw sled writing sagalog's layout, without the engine: each saga's log
/// key is new in one group and rewritten in each of the next `steps`
/// groups (DESIGN.md §4.3), and each group adds one finished batch (§4.4).
/// Values are `value_size` bytes; a group holds `batch` values (the
/// finished batch included), as in the run being compared. Each group is
/// flushed and `fdatasync`ed. Runs for about `sagas` sagas or 3 s. Its
/// sagas per second are what any engine could get from this layout, on
/// this disk, at this group size, right now, with the machine to itself.
fn sled_layout_baseline(
    dir: &Path,
    value_size: usize,
    batch: usize,
    steps: usize,
    sagas: u64,
) -> LayoutBaseline {
    // sagalog's own cache size.
    let (db, log_file) = raw_sled(dir, 32);
    let stages = steps as u64 + 1;
    let per_group = (batch.saturating_sub(1) as u64 / stages).max(1);
    let values = stage_values(value_size, stages);
    let finished = vec![0x5Au8; per_group as usize * finished_item_bytes()];
    let key = |prefix: u8, id: u64| {
        let mut k = [0u8; 25];
        k[0] = prefix;
        k[1..9].copy_from_slice(&id.to_be_bytes());
        k
    };
    let mut out = LayoutBaseline::default();
    let began = Instant::now();
    let mut entered: u64 = 0;
    let mut group: u64 = 0;
    while entered < sagas.max(1) && began.elapsed() < Duration::from_secs(3) {
        // Timed from here, as sagalog's store times its `apply`: building
        // the batch (sled copies every key and value) is part of it.
        let t0 = Instant::now();
        let mut b = sled::Batch::default();
        // The sagas that entered `stage` groups ago write their next value.
        for stage in 0..stages.min(group + 1) {
            let first = entered - stage * per_group;
            for id in first..first + per_group {
                b.insert(&key(b'L', id)[..], &values[stage as usize][..]);
            }
        }
        b.insert(&key(b'F', group)[..], &finished[..]);
        db.apply_batch(b).expect("layout baseline batch");
        let t1 = Instant::now();
        db.flush().expect("layout baseline flush");
        let t2 = Instant::now();
        log_file.sync_data().expect("layout baseline fdatasync");
        out.group_apply_ms += (t1 - t0).as_secs_f64() * 1000.0;
        out.group_flush_ms += (t2 - t1).as_secs_f64() * 1000.0;
        out.group_sync_ms += t2.elapsed().as_secs_f64() * 1000.0;
        entered += per_group;
        group += 1;
    }
    // Sagas finished: every one that has written all its values.
    let finished = entered.saturating_sub((stages - 1) * per_group);
    out.sagas_per_sec = finished as f64 / began.elapsed().as_secs_f64();
    let groups = group.max(1) as f64;
    out.group_apply_ms /= groups;
    out.group_flush_ms /= groups;
    out.group_sync_ms /= groups;
    out
}

/// The value each stage of [`sled_layout_baseline`] writes: `value_size`
/// bytes, with different contents in each stage. sled skips a put whose
/// value equals the one stored (`Tree::insert_inner` returns early on a
/// no-op set), so rewriting a key with the same bytes would cost it
/// nothing, while sagalog's rewrite of a log value always adds records.
fn stage_values(value_size: usize, stages: u64) -> Vec<Vec<u8>> {
    (0..stages)
        .map(|stage| vec![0xA5u8.wrapping_add(stage as u8); value_size.max(1)])
        .collect()
}

/// What [`sled_layout_baseline`] measured: its throughput, and the mean
/// time of each part of its durable writes, comparable with the run's
/// `group_apply_ms`, `group_flush_ms` and `group_sync_ms`.
#[derive(Default)]
struct LayoutBaseline {
    sagas_per_sec: f64,
    group_apply_ms: f64,
    group_flush_ms: f64,
    group_sync_ms: f64,
}

async fn throughput(args: &Args, dir: &Path) -> serde_json::Value {
    let mut registry = Registry::new();
    let saga = bench_saga(&mut registry, "bench", args.steps, None);
    let engine = open(&dir.join("log"), registry, args.concurrency.max(1024)).await;
    let cpu_before = cpu_secs();
    let allocs_before = allocations();
    let (latencies, wall) = run_sagas(&engine, &saga, args.sagas, args.concurrency).await;
    let cpu = cpu_secs() - cpu_before;
    let allocs = allocations();
    let per_saga = |n: u64| (n as f64 / args.sagas.max(1) as f64).round();
    let allocs_per_saga = per_saga(allocs.0 - allocs_before.0);
    let alloc_bytes_per_saga = per_saga(allocs.1 - allocs_before.1);
    let stats = engine.log_stats();
    engine.shutdown(Duration::from_secs(10)).await;
    drop(engine);
    let disk = dir_size(&dir.join("log"));
    let secs = wall.as_secs_f64();
    let entries = stats.entries.load(Ordering::Relaxed);
    let flushes = stats.flushes.load(Ordering::Relaxed).max(1);
    let values = stats.log_values.load(Ordering::Relaxed).max(1);
    let value_bytes = stats.log_value_bytes.load(Ordering::Relaxed);
    let entries_per_sec = entries as f64 / secs;
    let entries_per_flush = entries as f64 / flushes as f64;
    let mean_value = (value_bytes / values) as usize;
    let batch = entries_per_flush.round() as usize;
    let baseline = sled_baseline(&dir.join("baseline"), mean_value, batch, entries, true);
    let flush_only = sled_baseline(&dir.join("flush-only"), mean_value, batch, entries, false);
    // Only where a group holds a value of a saga in each stage: at one
    // saga in flight a group is one value, and the floor that matters is
    // latency (`latency_floor_ms`), not a pipeline of sagas.
    let layout = (batch > args.steps + 1).then(|| {
        sled_layout_baseline(
            &dir.join("layout"),
            mean_value,
            batch,
            args.steps,
            args.sagas as u64,
        )
    });
    // Mean milliseconds per durable group in each part of the write.
    let per_group_ms = |nanos: &std::sync::atomic::AtomicU64| {
        nanos.load(Ordering::Relaxed) as f64 / flushes as f64 / 1e6
    };
    // One raw-sled durable write of this run's mean batch; a saga makes
    // steps + 1 of them one after another, so its latency cannot be lower.
    let write_ms = batch.max(1) as f64 / baseline * 1000.0;
    let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
    json!({
        "sagas": args.sagas,
        "steps": args.steps,
        "concurrency": args.concurrency,
        "allocator": if cfg!(feature = "bench-mimalloc") { "mimalloc" } else { "system" },
        "sagas_per_sec": (args.sagas as f64 / secs).round(),
        "entries_per_sec": entries_per_sec.round(),
        "flushes_per_sec": (flushes as f64 / secs).round(),
        "entries_per_flush": (entries_per_flush * 10.0).round() / 10.0,
        "mean_value_bytes": mean_value,
        "group_apply_ms": round3(per_group_ms(&stats.apply_nanos)),
        "group_flush_ms": round3(per_group_ms(&stats.flush_nanos)),
        "group_sync_ms": round3(per_group_ms(&stats.sync_nanos)),
        "p50_ms": (percentile(&latencies, 0.50) * 1000.0).round() / 1000.0,
        "p99_ms": (percentile(&latencies, 0.99) * 1000.0).round() / 1000.0,
        "p999_ms": (percentile(&latencies, 0.999) * 1000.0).round() / 1000.0,
        "peak_rss_mb": (rss_mb("VmHWM:") * 10.0).round() / 10.0,
        "cpu_us_per_saga": (cpu * 1e6 / args.sagas.max(1) as f64).round(),
        "cpu_cores_busy": (cpu / secs * 100.0).round() / 100.0,
        "allocs_per_saga": allocs_per_saga,
        "alloc_bytes_per_saga": alloc_bytes_per_saga,
        "disk_bytes_per_saga": disk / args.sagas.max(1) as u64,
        "baseline_entries_per_sec": baseline.round(),
        "baseline_flush_only_entries_per_sec": flush_only.round(),
        "baseline_write_ms": round3(write_ms),
        "latency_floor_ms": round3(write_ms * (args.steps + 1) as f64),
        "ratio": ((entries_per_sec / baseline) * 1000.0).round() / 1000.0,
        "baseline_layout_sagas_per_sec": layout.as_ref().map(|l| l.sagas_per_sec.round()),
        "baseline_layout_group_ms": layout.as_ref().map(|l| json!({
            "apply": round3(l.group_apply_ms),
            "flush": round3(l.group_flush_ms),
            "sync": round3(l.group_sync_ms),
        })),
        "layout_ratio": layout.as_ref().map(|l| ((args.sagas as f64 / secs / l.sagas_per_sec) * 1000.0).round() / 1000.0),
        "raw_fsync_per_sec": raw_fsync_per_sec(dir).round(),
    })
}

async fn fixture(args: &Args, dir: &Path) -> serde_json::Value {
    let reached = Arc::new(AtomicUsize::new(0));
    let mut registry = Registry::new();
    let done = bench_saga(&mut registry, "bench", args.steps, None);
    let hanging = bench_saga(
        &mut registry,
        "bench_in_flight",
        args.steps.max(2),
        Some((1, reached.clone())),
    );
    let engine = open(
        &dir.join("log"),
        registry,
        args.in_flight.max(args.concurrency).max(1024),
    )
    .await;
    let began = Instant::now();
    run_sagas(&engine, &done, args.finished, args.concurrency).await;
    let mut ids = Vec::with_capacity(args.in_flight);
    for i in 0..args.in_flight {
        match engine
            .start(&hanging, &(i as u64), StartOptions::new())
            .await
        {
            Ok(s) => ids.push(s.saga_id.to_string()),
            Err(e) => {
                eprintln!("start failed: {e}");
                std::process::exit(2);
            }
        }
    }
    while reached.load(Ordering::SeqCst) < args.in_flight {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    std::fs::write(dir.join("in_flight_ids.txt"), ids.join("\n")).expect("write the id list");
    let out = json!({
        "mode": "fixture",
        "finished": args.finished,
        "in_flight": args.in_flight,
        "build_secs": (began.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "disk_bytes": dir_size(&dir.join("log")),
    });
    println!("{out}");
    // Killed mid-step: every in-flight saga has a durable intent and no result.
    std::process::exit(0);
}

async fn recovery(args: &Args, dir: &Path) -> serde_json::Value {
    let list = dir.join("in_flight_ids.txt");
    let ids: Vec<SagaId> = match std::fs::read_to_string(&list) {
        Ok(text) => text.lines().filter_map(SagaId::parse).collect(),
        Err(e) => {
            eprintln!(
                "error: cannot read {}: {e}; build a fixture first with --mode fixture --data-dir {}",
                list.display(),
                dir.display()
            );
            std::process::exit(2);
        }
    };
    let mut registry = Registry::new();
    bench_saga(&mut registry, "bench", args.steps, None);
    bench_saga(&mut registry, "bench_in_flight", args.steps.max(2), None);
    let TimedOpen {
        engine,
        began,
        sled_opened,
        opened,
        ..
    } = open_timed(dir, registry, config(ids.len().max(1024))).await;
    for id in &ids {
        if let Err(e) = engine.outcome(*id).await {
            eprintln!("recovered saga {id} failed: {e}");
            std::process::exit(2);
        }
    }
    let driven = began.elapsed();
    engine.shutdown(Duration::from_secs(10)).await;
    json!({
        "mode": "recovery",
        "in_flight": ids.len(),
        "open_ms": (opened.as_secs_f64() * 1000.0).round(),
        "sled_open_ms": (sled_opened.as_secs_f64() * 1000.0).round(),
        "open_and_drive_ms": (driven.as_secs_f64() * 1000.0).round(),
        "peak_rss_mb": (rss_mb("VmHWM:") * 10.0).round() / 10.0,
    })
}

async fn parked(args: &Args, dir: &Path) -> serde_json::Value {
    let mut registry = Registry::new();
    let day = 86_400_000;
    let saga = registry
        .register(
            SagaDefinition::<u64>::builder("parked")
                .strategy(CompensationStrategy::Scheduled { delay_ms: day })
                .retry(RetryPolicy::no_retry())
                .step("reserve", |_ctx| async { Ok(()) }, |_ctx| async { Ok(()) })
                .step(
                    "charge",
                    |_ctx| async { Err::<(), _>(StepError::permanent("declined")) },
                    |_ctx| async { Ok(()) },
                )
                .build()
                .expect("valid definition"),
        )
        .expect("registered once");
    let engine = open(&dir.join("log"), registry, args.concurrency.max(1024)).await;
    let rss_before = rss_mb("VmRSS:");
    let began = Instant::now();
    // Each saga: start + reserve intent, reserve result + charge intent,
    // charge failure + timer (parked) = 3 appends.
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (engine, saga, next) = (engine.clone(), saga.clone(), next.clone());
        let n = args.sagas;
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                if let Err(e) = engine.start(&saga, &(i as u64), StartOptions::new()).await {
                    eprintln!("start failed: {e}");
                    std::process::exit(2);
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let stats = engine.log_stats();
    while stats.appends.load(Ordering::Relaxed) < 3 * args.sagas as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let park_secs = began.elapsed().as_secs_f64();
    let rss_parked = rss_mb("VmRSS:");
    let queued = engine.delay_queue(10).map(|q| q.len()).unwrap_or(0);
    engine.shutdown(Duration::from_secs(10)).await;
    drop(engine);
    let disk = dir_size(&dir.join("log"));
    // Reopen in a fresh process, so that what this one allocated (and its
    // allocator kept) does not count: sleeping sagas stay on disk until due.
    let reopened = std::env::current_exe()
        .and_then(|exe| {
            std::process::Command::new(exe)
                .args(["--mode", "reopen", "--data-dir"])
                .arg(dir)
                .output()
        })
        .ok()
        .and_then(|out| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok())
        .unwrap_or_else(|| {
            eprintln!("error: the reopen process failed");
            std::process::exit(2);
        });
    json!({
        "mode": "parked",
        "sagas": args.sagas,
        "park_secs": (park_secs * 10.0).round() / 10.0,
        "delay_queue_nonempty": queued > 0,
        "rss_before_mb": (rss_before * 10.0).round() / 10.0,
        "rss_parked_mb": (rss_parked * 10.0).round() / 10.0,
        "bytes_per_parked_saga_in_rss": (((rss_parked - rss_before) * 1024.0 * 1024.0) / args.sagas as f64).round(),
        "disk_bytes_per_parked_saga": disk / args.sagas.max(1) as u64,
        "peak_rss_mb": (rss_mb("VmHWM:") * 10.0).round() / 10.0,
        "reopen": reopened,
    })
}

async fn long_run(args: &Args, dir: &Path) -> serde_json::Value {
    let mut registry = Registry::new();
    let saga = bench_saga(&mut registry, "bench", args.steps, None);
    let engine = open(&dir.join("log"), registry, args.concurrency.max(1024)).await;
    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        let began = Instant::now();
        let (_, wall) = run_sagas(&engine, &saga, args.sagas, args.concurrency).await;
        // Everything finished before this round began goes.
        let swept = match engine.sweep_finished(began.elapsed(), 256).await {
            Ok(report) => report,
            Err(e) => {
                eprintln!("error: sweep failed: {e}");
                std::process::exit(2);
            }
        };
        let disk = dir_size(&dir.join("log"));
        rounds.push(json!({
            "round": round + 1,
            "sagas_per_sec": (args.sagas as f64 / wall.as_secs_f64()).round(),
            "removed": swept.removed,
            "disk_mb": ((disk as f64 / 1_048_576.0) * 10.0).round() / 10.0,
            "rss_mb": (rss_mb("VmRSS:") * 10.0).round() / 10.0,
        }));
        eprintln!("{}", rounds[rounds.len() - 1]);
    }
    engine.shutdown(Duration::from_secs(10)).await;
    json!({
        "mode": "long",
        "sagas_per_round": args.sagas,
        "rounds": rounds,
        "peak_rss_mb": (rss_mb("VmHWM:") * 10.0).round() / 10.0,
    })
}

/// The saga types every other mode writes, so that a reopen finds them all.
fn reopen_registry() -> Registry {
    let mut registry = Registry::new();
    bench_saga(&mut registry, "bench", 3, None);
    bench_saga(&mut registry, "bench_in_flight", 3, None);
    registry
        .register(
            SagaDefinition::<u64>::builder("parked")
                .step("reserve", |_ctx| async { Ok(()) }, |_ctx| async { Ok(()) })
                .step("charge", |_ctx| async { Ok(()) }, |_ctx| async { Ok(()) })
                .build()
                .expect("valid definition"),
        )
        .expect("registered once");
    registry
}

/// An engine opened by [`open_timed`], with the times from `began`.
struct TimedOpen {
    engine: Engine,
    began: Instant,
    /// sled's own open.
    sled_opened: Duration,
    /// Resident memory right after sled's open, in MB.
    rss_after_sled_mb: f64,
    /// sled's open and sagalog's recovery on top of it.
    opened: Duration,
}

/// Opens the database under `dir` in two timed parts: sled's own open, then
/// sagalog's recovery on top of it. Exits on an error.
async fn open_timed(dir: &Path, registry: Registry, config: EngineConfig) -> TimedOpen {
    let began = Instant::now();
    let store = match SledStore::open(dir.join("log"), config.sled.clone()) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let sled_opened = began.elapsed();
    let rss_after_sled_mb = rss_mb("VmRSS:");
    let engine = match Engine::open_with_store(Arc::new(store), registry, config).await {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    TimedOpen {
        engine,
        began,
        sled_opened,
        rss_after_sled_mb,
        opened: began.elapsed(),
    }
}

async fn reopen(dir: &Path) -> serde_json::Value {
    let rss_before = rss_mb("VmRSS:");
    let TimedOpen {
        engine,
        sled_opened,
        rss_after_sled_mb: rss_sled,
        opened,
        ..
    } = open_timed(dir, reopen_registry(), config(1024)).await;
    let rss_opened = rss_mb("VmRSS:");
    engine.shutdown(Duration::from_secs(10)).await;
    json!({
        "mode": "reopen",
        "open_ms": (opened.as_secs_f64() * 1000.0).round(),
        "sled_open_ms": (sled_opened.as_secs_f64() * 1000.0).round(),
        "rss_before_mb": (rss_before * 10.0).round() / 10.0,
        "rss_after_sled_open_mb": (rss_sled * 10.0).round() / 10.0,
        "rss_after_open_mb": (rss_opened * 10.0).round() / 10.0,
        "peak_rss_mb": (rss_mb("VmHWM:") * 10.0).round() / 10.0,
    })
}

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
        Mode::Throughput => throughput(&args, &dir).await,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stage_of_the_layout_baseline_rewrites_its_key_with_different_bytes() {
        let values = stage_values(212, 4);
        assert_eq!(values.len(), 4);
        for pair in values.windows(2) {
            assert_eq!(pair[0].len(), 212);
            assert_ne!(pair[0], pair[1], "sled would skip this rewrite as a no-op");
        }
    }
}

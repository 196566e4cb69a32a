//! `--mode throughput`: sagas per second, latency, CPU and allocations per
//! saga, against both baselines.

use crate::*;

pub(crate) async fn throughput(args: &Args, dir: &Path) -> serde_json::Value {
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

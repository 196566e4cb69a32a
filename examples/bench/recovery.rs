//! `--mode fixture`, `--mode recovery` and `--mode reopen`: building a
//! database with sagas killed mid-step, and timing its recovery and open.

use crate::*;

pub(crate) async fn fixture(args: &Args, dir: &Path) -> serde_json::Value {
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

pub(crate) async fn recovery(args: &Args, dir: &Path) -> serde_json::Value {
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

/// The saga types every other mode writes, so that a reopen finds them all.
pub(crate) fn reopen_registry() -> Registry {
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
pub(crate) struct TimedOpen {
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
pub(crate) async fn open_timed(dir: &Path, registry: Registry, config: EngineConfig) -> TimedOpen {
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

pub(crate) async fn reopen(dir: &Path) -> serde_json::Value {
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

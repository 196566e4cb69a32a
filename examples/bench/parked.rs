//! `--mode parked`: memory and disk for sagas asleep on a timer.

use crate::*;

pub(crate) async fn parked(args: &Args, dir: &Path) -> serde_json::Value {
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
    let queued = engine.delay_queue(10).await.map(|q| q.len()).unwrap_or(0);
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

//! The sagas the bench runs: no-op steps, an engine opened on a directory,
//! and a driver that keeps a number of sagas in flight.

use crate::*;

/// A saga of `steps` no-op steps. `hang_at`: a step index whose action never
/// returns while `hanging` is set (to leave sagas in flight for a fixture).
pub(crate) fn bench_saga(
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

pub(crate) fn config(concurrency: usize) -> EngineConfig {
    let mut config = EngineConfig {
        max_running_sagas: concurrency.max(1),
        ..EngineConfig::default()
    };
    if let Some(Some(mb)) = CACHE_MB.get() {
        config.sled.cache_capacity = mb * 1024 * 1024;
    }
    config
}

pub(crate) async fn open(dir: &Path, registry: Registry, concurrency: usize) -> Engine {
    match Engine::open(dir, registry, config(concurrency)).await {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}

/// Runs `n` sagas at `concurrency`; returns sorted latencies in ms and the wall time.
pub(crate) async fn run_sagas(
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

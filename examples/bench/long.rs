//! `--mode long`: rounds of sagas with retention, disk and memory over a
//! long run.

use crate::*;

pub(crate) async fn long_run(args: &Args, dir: &Path) -> serde_json::Value {
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

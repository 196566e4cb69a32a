//! `--store postgres://…` (throughput): the engine on `PgStore`, against
//! raw tokio-postgres doing the same transactions in the same run: one
//! transaction per engine group, of the engine's mean group size, with the
//! same rows (per saga its start, one log row per append, one saga row
//! inserted and one updated) in the same two pipelined round trips, on as
//! many connections at once as the engine has groups in flight.

use crate::*;
use sagalog::{PgOptions, PgStore};
use tokio_postgres::types::ToSql;

/// A schema name no earlier run used.
pub(crate) fn fresh_schema() -> String {
    format!("bench_{}", SagaId::new().to_string().replace('-', ""))
}

/// The store at `url`, or the bench ends with the reason.
pub(crate) async fn connect_store(url: &str, options: PgOptions) -> PgStore {
    match PgStore::connect(url, options).await {
        Ok(store) => store,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}

pub(crate) async fn pg_throughput(args: &Args, url: &str) -> serde_json::Value {
    let schema = fresh_schema();
    let options = PgOptions::default()
        .schema(schema.clone())
        .writers(args.pg_writers);
    let store = connect_store(url, options).await;
    let mut registry = Registry::new();
    let saga = bench_saga(&mut registry, "bench", args.steps, None);
    let engine = Engine::open_with_store(
        Arc::new(store),
        registry,
        config(args.concurrency.max(1024)),
    )
    .await
    .expect("the engine opens on PostgreSQL");
    let cpu_before = cpu_secs();
    let host_before = host_cpu_secs();
    let (latencies, wall) = run_sagas(&engine, &saga, args.sagas, args.concurrency).await;
    let host_busy = host_cores_busy(host_before, host_cpu_secs());
    let cpu = cpu_secs() - cpu_before;
    let stats = engine.log_stats();
    engine.shutdown(Duration::from_secs(10)).await;
    drop(engine);
    let secs = wall.as_secs_f64();
    let appends = stats.appends.load(Ordering::Relaxed);
    let groups = stats.flushes.load(Ordering::Relaxed).max(1);
    let value_bytes = stats.log_value_bytes.load(Ordering::Relaxed);
    let values = stats.log_values.load(Ordering::Relaxed).max(1);
    let mean_value = (value_bytes / values) as usize;
    let per_group = appends as f64 / groups as f64;
    let group_ms = stats.apply_nanos.load(Ordering::Relaxed) as f64 / groups as f64 / 1e6;
    let engine_cores = cpu / secs;
    let host_before = host_cpu_secs();
    let (baseline, baseline_group_ms, baseline_cores) =
        raw_baseline(url, &schema, args, per_group, mean_value, 0.0).await;
    let baseline_host_busy = host_cores_busy(host_before, host_cpu_secs());
    // The baseline again, with this process as busy as the engine's was:
    // what the database does with the CPU the engine leaves it.
    let burn = (engine_cores - baseline_cores).max(0.0);
    let (loaded, _, loaded_cores) =
        raw_baseline(url, &schema, args, per_group, mean_value, burn).await;
    drop_schema(url, &schema).await;
    let engine_rate = args.sagas as f64 / secs;
    let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
    json!({
        "store": "postgres",
        "sagas": args.sagas,
        "steps": args.steps,
        "concurrency": args.concurrency,
        "pg_writers": args.pg_writers,
        "sagas_per_sec": engine_rate.round(),
        "groups_per_sec": (groups as f64 / secs).round(),
        "appends_per_group": (per_group * 10.0).round() / 10.0,
        "group_ms": round3(group_ms),
        "mean_value_bytes": mean_value,
        "p50_ms": round3(percentile(&latencies, 0.50)),
        "p99_ms": round3(percentile(&latencies, 0.99)),
        "p999_ms": round3(percentile(&latencies, 0.999)),
        "cpu_us_per_saga": (cpu * 1e6 / args.sagas.max(1) as f64).round(),
        "cpu_cores_busy": (cpu / secs * 100.0).round() / 100.0,
        "host_cores_busy": host_busy,
        "pg_baseline_sagas_per_sec": baseline.round(),
        "pg_baseline_group_ms": round3(baseline_group_ms),
        "pg_baseline_host_cores_busy": baseline_host_busy,
        "pg_baseline_cpu_cores_busy": (baseline_cores * 100.0).round() / 100.0,
        "ratio": round3(engine_rate / baseline),
        "pg_baseline_loaded_sagas_per_sec": loaded.round(),
        "pg_baseline_loaded_cpu_cores_busy": (loaded_cores * 100.0).round() / 100.0,
        "ratio_loaded": round3(engine_rate / loaded),
        "pg_test_fsync_per_sec": pg_test_fsync(),
    })
}

/// Raw tokio-postgres writing the engine's rows: as many transactions as
/// it takes for `args.sagas` sagas at `per_group` appends each, on as many
/// connections at once as the writer can have groups in flight
/// (`--pg-writers`, but no more than the sagas in flight), each one
/// transaction after another, while this process burns `load` cores of
/// CPU besides (the share of the machine the engine's own work takes).
/// Returns its sagas per second, the mean time of one of its
/// transactions in ms, and the cores this process kept busy meanwhile.
async fn raw_baseline(
    url: &str,
    schema: &str,
    args: &Args,
    per_group: f64,
    value_bytes: usize,
    load: f64,
) -> (f64, f64, f64) {
    let url = format!(
        "{url}{}options=-csearch_path%3D{schema}",
        if url.contains('?') { "&" } else { "?" }
    );
    let connections = args.pg_writers.min(args.concurrency).max(1);
    let mut links = Vec::new();
    for _ in 0..connections {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("the baseline connects");
        tokio::spawn(connection);
        links.push(client);
    }
    links[0]
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS raw_log (LIKE sagalog_log INCLUDING ALL);
             CREATE TABLE IF NOT EXISTS raw_saga (LIKE sagalog_saga INCLUDING ALL);
             TRUNCATE raw_log, raw_saga;",
        )
        .await
        .expect("the baseline tables");
    let appends_per_saga = args.steps + 1;
    let work = Arc::new(Work {
        sagas: args.sagas,
        appends_per_saga,
        total: args.sagas * appends_per_saga,
        group: (per_group.round() as usize).max(1),
        ids: (0..args.sagas).map(|_| uuid::Uuid::now_v7()).collect(),
        frames: vec![7u8; value_bytes],
        entry: vec![1u8; 40],
        next: std::sync::atomic::AtomicUsize::new(0),
    });
    let burning = Burn::start(load);
    let cpu_before = cpu_secs();
    let began = Instant::now();
    let mut running = tokio::task::JoinSet::new();
    for client in links {
        running.spawn(raw_writer(client, work.clone()));
    }
    while let Some(done) = running.join_next().await {
        done.expect("a baseline connection ran");
    }
    let secs = began.elapsed().as_secs_f64();
    let cores = (cpu_secs() - cpu_before) / secs;
    burning.stop();
    let groups = work.total.div_ceil(work.group) as f64;
    (
        args.sagas as f64 / secs,
        secs * connections as f64 / groups * 1e3,
        cores,
    )
}

/// Drops the bench's schema, with the engine's tables and the baseline's.
async fn drop_schema(url: &str, schema: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("the bench connects");
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .expect("the bench's schema is dropped");
}

/// Threads that keep `cores` of CPU busy until stopped: each spins while
/// its busy time is below its share of the time since it began, and
/// sleeps briefly otherwise.
struct Burn {
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Burn {
    fn start(cores: f64) -> Burn {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let count = cores.ceil() as usize;
        let share = if count == 0 {
            0.0
        } else {
            cores / count as f64
        };
        let threads = (0..count)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let began = Instant::now();
                    let mut busy = Duration::ZERO;
                    while !stop.load(Ordering::Relaxed) {
                        if busy.as_secs_f64() < began.elapsed().as_secs_f64() * share {
                            let spin = Instant::now();
                            while spin.elapsed() < Duration::from_micros(50) {
                                std::hint::spin_loop();
                            }
                            busy += spin.elapsed();
                        } else {
                            std::thread::sleep(Duration::from_micros(100));
                        }
                    }
                })
            })
            .collect();
        Burn { stop, threads }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// The baseline's appends, handed out one group at a time.
struct Work {
    sagas: usize,
    appends_per_saga: usize,
    total: usize,
    group: usize,
    ids: Vec<uuid::Uuid>,
    frames: Vec<u8>,
    entry: Vec<u8>,
    /// The first append of the next group to write.
    next: std::sync::atomic::AtomicUsize,
}

/// One baseline connection: takes the next group and writes it as one
/// transaction, until none is left.
async fn raw_writer(client: tokio_postgres::Client, work: Arc<Work>) {
    let log = client
        .prepare("INSERT INTO raw_log SELECT * FROM unnest($1::uuid[], $2::int8[], $3::bytea[]) ON CONFLICT DO NOTHING RETURNING saga_id")
        .await
        .unwrap();
    let new = client
        .prepare("INSERT INTO raw_saga (saga_id, saga_type, status, finished, started_at, changed_at, entry, idem_key)
                  SELECT u.id, 'bench', u.s, false, u.t, u.t, u.e, NULL
                  FROM unnest($1::uuid[], $2::int2[], $3::bytea[], $4::int8[]) AS u(id, s, e, t)")
        .await
        .unwrap();
    let done = client
        .prepare(
            "UPDATE raw_saga t SET status = u.s, finished = true, changed_at = u.t, entry = u.e
                  FROM unnest($1::uuid[], $2::int2[], $3::bytea[], $4::int8[]) AS u(id, s, e, t)
                  WHERE t.saga_id = u.id",
        )
        .await
        .unwrap();
    loop {
        // Appends in saga order, spread so that each group holds sagas at
        // every stage, as the engine's do: append k of saga s is the k-th.
        let next = work.next.fetch_add(work.group, Ordering::Relaxed);
        if next >= work.total {
            return;
        }
        let end = (next + work.group).min(work.total);
        let (mut lid, mut lseq, mut lf) = (vec![], vec![], vec![]);
        let (mut nid, mut ns, mut ne) = (vec![], vec![], vec![]);
        let (mut did, mut ds, mut de) = (vec![], vec![], vec![]);
        for i in next..end {
            let (saga, seq) = (i % work.sagas, i / work.sagas);
            let id = work.ids[saga];
            lid.push(id);
            lseq.push(seq as i64);
            lf.push(work.frames.clone());
            if seq == 0 {
                nid.push(id);
                ns.push(1i16);
                ne.push(work.entry.clone());
            } else if seq + 1 == work.appends_per_saga {
                did.push(id);
                ds.push(3i16);
                de.push(work.entry.clone());
            }
        }
        let p1: [&(dyn ToSql + Sync); 3] = [&lid, &lseq, &lf];
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let (nt, dt) = (vec![now; nid.len()], vec![now; did.len()]);
        let p2: [&(dyn ToSql + Sync); 4] = [&nid, &ns, &ne, &nt];
        let p3: [&(dyn ToSql + Sync); 4] = [&did, &ds, &de, &dt];
        // Planned as the engine's writes are (`BEGIN_KEYED` in its store).
        let begin = "BEGIN; SET LOCAL enable_seqscan = off;
            SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off";
        let begin = if did.is_empty() { "BEGIN" } else { begin };
        let (b, l) = tokio::join!(client.batch_execute(begin), client.query(&log, &p1));
        b.unwrap();
        l.unwrap();
        let (n, d, c) = tokio::join!(
            client.execute(&new, &p2),
            client.execute(&done, &p3),
            client.batch_execute("COMMIT")
        );
        n.unwrap();
        d.unwrap();
        c.unwrap();
    }
}

/// `pg_test_fsync`'s `fdatasync` rate (8 kB writes, ops/s) on this
/// machine's temporary directory, if the tool is installed.
fn pg_test_fsync() -> Option<f64> {
    let tool = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin/pg_test_fsync")))
        .find(|p| p.exists())?;
    let file = std::env::temp_dir().join(format!("pg_test_fsync.{}", std::process::id()));
    let out = std::process::Command::new(tool)
        .args(["-s", "2", "-f"])
        .arg(&file)
        .output()
        .ok()?;
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.trim_start().starts_with("fdatasync"))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.replace(',', "").parse::<f64>().ok())
        })
}

//! `--mode cluster --store postgres://…`: several nodes on one PostgreSQL
//! log. Each node is an engine on a `PgStore` of its own with its own node
//! id, all in this process, so they share its cores with one another and
//! with the server: the figures say what one log serves, not what more
//! machines would add.
//!
//! - Throughput: `--sagas` no-op sagas on one node, then split over
//!   `--nodes` nodes (each with its share of `--concurrency`), in the
//!   same run.
//! - Failover: for each count of `--asleep`, a node holding that many
//!   sagas asleep on a retry timer is killed (its runtime dropped: no
//!   leave, no renewal), and the time is measured from the kill until the
//!   survivors own every one of them, and until every one has finished.
//!   The timers fall due a lease and a quarter after the kill, so the
//!   finish time is the adoption plus that wait plus running them.

use crate::postgres::{connect_store, fresh_schema};
use crate::*;
use sagalog::PgOptions;

/// The nodes' lease: short, so that a dead node's sagas move soon.
const TTL: Duration = Duration::from_millis(1000);

/// One step whose first attempt fails retryably, so the saga sleeps on its
/// retry timer. Later attempts succeed, or never return when `hang_after`
/// (the node to be killed: a timer that fires there before the kill leaves
/// its saga in flight instead of finishing it).
fn sleeper(registry: &mut Registry, hang_after: bool) -> SagaRef<u64> {
    let definition = SagaDefinition::<u64>::builder("sleeper")
        .step(
            "wake",
            move |ctx| async move {
                if ctx.attempt() == 1 {
                    return Err(StepError::retryable("asleep until the timer"));
                }
                if hang_after {
                    std::future::pending::<()>().await;
                }
                Ok(())
            },
            |_ctx| async { Ok(()) },
        )
        .build()
        .expect("valid sleeper definition");
    registry.register(definition).expect("registered once")
}

/// What every node is opened with: the writing connections and the bench
/// saga's steps.
fn shape(args: &Args) -> (usize, usize) {
    (args.pg_writers, args.steps)
}

/// Node `id` of the log in `schema`: the bench saga and the sleeper.
async fn open_node(
    (pg_writers, steps): (usize, usize),
    url: &str,
    schema: &str,
    id: &str,
    concurrency: usize,
    hang_after: bool,
) -> (Engine, SagaRef<u64>, SagaRef<u64>) {
    let options = PgOptions::default()
        .schema(schema)
        .node_id(id)
        .lease_ttl(TTL)
        .writers(pg_writers);
    let store = connect_store(url, options).await;
    let mut registry = Registry::new();
    let bench = bench_saga(&mut registry, "bench", steps, None);
    let sleeper = sleeper(&mut registry, hang_after);
    let engine = Engine::open_with_store(Arc::new(store), registry, config(concurrency))
        .await
        .expect("the node opens on PostgreSQL");
    (engine, bench, sleeper)
}

/// Sagas per second of `nodes` nodes running `--sagas` between them.
async fn throughput_of(args: &Args, url: &str, nodes: usize) -> f64 {
    let schema = fresh_schema();
    let concurrency = (args.concurrency / nodes).max(1);
    let mut opened = Vec::new();
    for i in 0..nodes {
        let id = format!("node-{i}");
        opened.push(open_node(shape(args), url, &schema, &id, concurrency.max(1024), false).await);
    }
    let share = args.sagas / nodes;
    let began = Instant::now();
    let mut running = Vec::new();
    for (engine, bench, _) in &opened {
        let (engine, bench) = (engine.clone(), bench.clone());
        running.push(tokio::spawn(async move {
            run_sagas(&engine, &bench, share, concurrency).await
        }));
    }
    for run in running {
        run.await.expect("a node's driver runs");
    }
    let rate = (share * nodes) as f64 / began.elapsed().as_secs_f64();
    for (engine, _, _) in opened {
        engine.shutdown(Duration::from_secs(10)).await;
    }
    rate
}

/// A count of rows of the log in `schema`.
async fn count(client: &tokio_postgres::Client, schema: &str, filter: &str) -> i64 {
    let sql = format!("SELECT count(*) FROM {schema}.sagalog_saga WHERE {filter}");
    match client.query_one(&sql, &[]).await {
        Ok(row) => row.get(0),
        Err(e) => {
            eprintln!("error: counting sagas: {e}");
            std::process::exit(2);
        }
    }
}

/// Polls until `filter` counts no saga; when, from `since`.
async fn until_none(
    client: &tokio_postgres::Client,
    schema: &str,
    filter: &str,
    since: Instant,
) -> Duration {
    while count(client, schema, filter).await > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    since.elapsed()
}

/// Kills a node holding `asleep` sagas asleep on timers; how long until
/// the survivors own and finish them.
async fn failover(args: &Args, url: &str, asleep: usize) -> serde_json::Value {
    let schema = fresh_schema();
    let (client, connection) = match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    tokio::spawn(connection);
    let mut survivors = Vec::new();
    for i in 1..args.nodes.max(2) {
        let id = format!("survivor-{i}");
        survivors.push(
            open_node(shape(args), url, &schema, &id, 1024, false)
                .await
                .0,
        );
    }
    // The kill is planned for when the starts should be done, at a
    // conservative 1,000 sagas/s, and the timers for a lease and a quarter
    // after it.
    let plan = Duration::from_millis(2_000 + asleep as u64);
    let wake = plan + TTL + TTL / 4;
    let began = Instant::now();
    let (ready, is_ready) = std::sync::mpsc::channel::<()>();
    let (kill, killed) = tokio::sync::oneshot::channel::<()>();
    let victim = {
        let (shape, url, schema) = (shape(args), url.to_string(), schema.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("a runtime for the victim");
            runtime.block_on(async move {
                let (engine, _, sleeper) =
                    open_node(shape, &url, &schema, "victim", asleep.max(1024), true).await;
                let next = Arc::new(AtomicUsize::new(0));
                let mut workers = Vec::new();
                for _ in 0..256 {
                    let (engine, sleeper, next) = (engine.clone(), sleeper.clone(), next.clone());
                    workers.push(tokio::spawn(async move {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= asleep {
                                return;
                            }
                            let left = wake.saturating_sub(began.elapsed());
                            let policy = RetryPolicy {
                                max_attempts: 3,
                                initial_interval_ms: left.as_millis() as u64,
                                max_interval_ms: left.as_millis() as u64,
                                ..RetryPolicy::forward_default()
                            };
                            let options = StartOptions::new()
                                .strategy(CompensationStrategy::RetryThenCompensate { policy });
                            if let Err(e) = engine.start(&sleeper, &(i as u64), options).await {
                                eprintln!("error: starting a sleeper: {e}");
                                std::process::exit(2);
                            }
                        }
                    }));
                }
                for worker in workers {
                    let _ = worker.await;
                }
                let _ = ready.send(());
                let _ = killed.await;
            });
            // Dropping the runtime is the kill: its tasks, connections and
            // renewals stop, and the node never leaves.
            drop(runtime);
        })
    };
    if is_ready.recv().is_err() {
        eprintln!("error: the victim node did not start its sagas");
        std::process::exit(2);
    }
    let victim_asleep = "NOT finished AND owner_node = 'victim' AND timer_due IS NOT NULL";
    let mut waited = 0;
    while count(&client, &schema, victim_asleep).await < asleep as i64 && waited < 10_000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 10;
    }
    let started_in = began.elapsed();
    tokio::time::sleep(plan.saturating_sub(started_in)).await;
    let held_asleep = count(&client, &schema, victim_asleep).await;
    let _ = kill.send(());
    let killed_at = Instant::now();
    let _ = victim.join();
    let adopted = until_none(
        &client,
        &schema,
        "NOT finished AND owner_node = 'victim'",
        killed_at,
    )
    .await;
    let finished = until_none(&client, &schema, "NOT finished", killed_at).await;
    let by_node = {
        let sql = format!(
            "SELECT owner_node, count(*) FROM {schema}.sagalog_saga GROUP BY owner_node ORDER BY 1"
        );
        let rows = client.query(&sql, &[]).await.unwrap_or_default();
        rows.iter()
            .map(|r| {
                let owner: Option<String> = r.get(0);
                (owner.unwrap_or_else(|| "-".into()), r.get::<_, i64>(1))
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    for engine in survivors {
        engine.shutdown(Duration::from_secs(10)).await;
    }
    json!({
        "asleep": asleep,
        "asleep_at_kill": held_asleep,
        "started_in_ms": started_in.as_millis() as u64,
        "kill_to_all_adopted_ms": adopted.as_millis() as u64,
        "timers_due_after_kill_ms": (wake.saturating_sub(plan)).as_millis() as u64,
        "kill_to_all_finished_ms": finished.as_millis() as u64,
        "finished_by": by_node,
    })
}

pub(crate) async fn cluster(args: &Args, url: &str) -> serde_json::Value {
    let nodes = args.nodes.max(2);
    let one = throughput_of(args, url, 1).await;
    let many = throughput_of(args, url, nodes).await;
    let mut failovers = Vec::new();
    for &asleep in &args.asleep {
        failovers.push(failover(args, url, asleep).await);
    }
    json!({
        "store": "postgres",
        "mode": "cluster",
        "nodes": nodes,
        "lease_ms": TTL.as_millis() as u64,
        "sagas": args.sagas,
        "steps": args.steps,
        "concurrency": args.concurrency,
        "one_node_sagas_per_sec": one.round(),
        "nodes_sagas_per_sec": many.round(),
        "nodes_over_one": ((many / one) * 1000.0).round() / 1000.0,
        "failover": failovers,
    })
}

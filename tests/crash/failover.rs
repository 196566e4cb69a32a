//! Three nodes of the orders workload on one PostgreSQL log, each starting
//! the same generated orders from its own place (so some keys are started
//! on two or three nodes at once), while one node is SIGKILLed, or
//! SIGSTOPped past its lease and then let go on, or the server crashes
//! (`pg_ctl stop -m immediate`). A last run on one node then reports every
//! saga and the books, and the checks of the crash tests hold, plus:
//! each key has one saga, no saga has log rows of two writers interleaved,
//! the command line's compensate of the manual order (sent while the nodes
//! run, to whichever node runs it) was carried out once,
//! a node stopped past its lease writes nothing once it runs again, and a
//! dead node's sagas are adopted within the lease and two scan periods.

use super::orders::{check, orders_command};
use super::place::{pg, Log, Place};
use super::*;
use std::process::Child;
use std::time::{Duration, Instant};

/// Generated orders each node starts (from its own place in them).
const BULK: usize = 600;

/// The nodes' lease in the kill and pause variants: short, so that a dead
/// node's sagas move soon.
const TTL: Duration = Duration::from_millis(1000);

/// How long a node or a condition may take before the test gives up.
const PATIENCE: Duration = Duration::from_secs(120);

/// The fault one of the three nodes (or the server) suffers mid-run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// SIGKILL node n2.
    Kill,
    /// SIGSTOP node n2 for three lease periods, then SIGCONT it.
    Pause,
    /// Crash the server and start it again.
    ServerCrash,
}

/// The log's tables, read with SQL (a connection per query, so that the
/// reads go on after a server crash).
struct Db {
    runtime: tokio::runtime::Runtime,
    url: String,
    schema: String,
}

impl Db {
    fn open(url: &str, schema: &str) -> Db {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Db {
            runtime,
            url: url.to_string(),
            schema: schema.to_string(),
        }
    }

    /// The rows of `sql`, where `{s}` stands for the log's schema; `None`
    /// while the server cannot answer (before the nodes created the tables,
    /// or while it restarts).
    fn rows(&self, sql: &str) -> Option<Vec<tokio_postgres::Row>> {
        let sql = sql.replace("{s}", &self.schema);
        self.runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
                .await
                .ok()?;
            let connection = tokio::spawn(connection);
            let rows = client.query(&sql, &[]).await.ok();
            drop(client);
            let _ = connection.await;
            rows
        })
    }

    fn count(&self, sql: &str) -> Option<i64> {
        self.rows(sql).map(|rows| rows[0].get::<_, i64>(0))
    }

    /// Unfinished sagas node `node` owns.
    fn owned_by(&self, node: &str) -> Option<i64> {
        self.count(&format!(
            "SELECT count(*) FROM {{s}}.sagalog_saga WHERE NOT finished AND owner_node = '{node}'"
        ))
    }

    fn token_of(&self, node: &str) -> i64 {
        self.count(&format!(
            "SELECT token FROM {{s}}.sagalog_node WHERE node_id = '{node}'"
        ))
        .expect("the node has a row")
    }

    fn rows_written_by(&self, token: i64) -> i64 {
        self.count(&format!(
            "SELECT count(*) FROM {{s}}.sagalog_log WHERE writer = {token}"
        ))
        .expect("the log reads")
    }

    /// Sagas whose log rows, in `seq` order, go from one writer to another
    /// and back: two nodes' appends interleaved.
    fn interleaved(&self) -> Vec<String> {
        let rows = self
            .rows("SELECT saga_id::text, writer FROM {s}.sagalog_log ORDER BY saga_id, seq")
            .expect("the log reads");
        let mut bad = Vec::new();
        let mut current: Option<(String, Vec<Option<i64>>)> = None;
        let mut flush = |saga: String, writers: Vec<Option<i64>>| {
            let mut runs: Vec<Option<i64>> = writers.clone();
            runs.dedup();
            let distinct: std::collections::HashSet<_> = runs.iter().collect();
            if distinct.len() != runs.len() {
                bad.push(format!("{saga}: {writers:?}"));
            }
        };
        for row in rows {
            let (saga, writer): (String, Option<i64>) = (row.get(0), row.get(1));
            match &mut current {
                Some((id, writers)) if *id == saga => writers.push(writer),
                _ => {
                    if let Some((id, writers)) = current.take() {
                        flush(id, writers);
                    }
                    current = Some((saga, vec![writer]));
                }
            }
        }
        if let Some((id, writers)) = current {
            flush(id, writers);
        }
        bad
    }
}

/// Polls `what` until it returns a value, or fails after [`PATIENCE`].
fn wait_for<T>(label: &str, mut what: impl FnMut() -> Option<T>) -> T {
    let give_up = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = what() {
            return value;
        }
        assert!(Instant::now() < give_up, "gave up waiting: {label}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn node(place: &Place, id: &str, ttl: Duration) -> Child {
    orders_command(place, None, BULK)
        .args(["--bulk-only", "--bulk-manual", "--node-id", id])
        .arg("--lease-ttl-ms")
        .arg(ttl.as_millis().to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the orders example starts")
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} failed");
}

/// Waits for a node to exit; its exit code and stderr.
fn finish(mut child: Child) -> (Option<i32>, String) {
    let give_up = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().expect("child status") {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            return (status.code(), stderr);
        }
        if Instant::now() > give_up {
            let _ = child.kill();
            panic!("a node did not finish its work in {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `sagalog --db URL --schema SCHEMA ARGS…`.
fn cli(url: &str, schema: &str, args: &[&str]) -> std::process::Output {
    Command::new(super::harness::cli_binary())
        .args(["--db", url, "--schema", schema])
        .args(args)
        .output()
        .expect("sagalog runs")
}

/// Waits until the order `bulk-manual` waits for an operator, then has the
/// command line compensate it, as an operator would, while the nodes run;
/// the saga's id. The tool queues the action for the node that runs the
/// saga (or takes a saga no live node owns) and waits until it is carried
/// out.
fn compensate_the_manual_order(url: &str, schema: &str) -> SagaId {
    let id = wait_for("the manual order waits for an operator", || {
        let shown = cli(url, schema, &["show", "--key", "bulk-manual", "--json"]);
        let detail: Value = serde_json::from_slice(&shown.stdout).ok()?;
        (detail["saga"]["status"] == "SUSPENDED")
            .then(|| SagaId::parse(detail["saga"]["saga_id"].as_str()?))
            .flatten()
    });
    let acted = cli(
        url,
        schema,
        &[
            "compensate",
            &id.to_string(),
            "--reason",
            "customer cancelled",
        ],
    );
    assert!(
        acted.status.success(),
        "the command line's compensate: {}{}",
        String::from_utf8_lossy(&acted.stdout),
        String::from_utf8_lossy(&acted.stderr)
    );
    id
}

/// Runs the three nodes through `fault`, then the last run and the checks.
fn three_nodes_through(fault: Fault) {
    let server = match fault {
        Fault::ServerCrash => match pg::Cluster::start(9) {
            Some(cluster) => Some(cluster),
            None => return pg::skipped("PostgreSQL server binaries to crash and restart"),
        },
        _ => None,
    };
    let place = match &server {
        Some(cluster) => Place::postgres_at(&cluster.url),
        None => match Place::postgres() {
            Some(place) => place,
            None => return,
        },
    };
    let (url, schema) = place.pg().expect("a place on PostgreSQL");
    // A server crash takes the nodes' renewals down with it: a lease
    // longer than the outage lets them ride it out.
    let ttl = match fault {
        Fault::ServerCrash => Duration::from_secs(10),
        _ => TTL,
    };
    let db = Db::open(&url, &schema);
    let mut nodes: Vec<(&str, Child)> = ["n1", "n2", "n3"]
        .into_iter()
        .map(|id| (id, node(&place, id, ttl)))
        .collect();
    let held = wait_for("n2 owns sagas in flight", || {
        db.owned_by("n2").filter(|n| *n >= 10)
    });

    let mut moved = None;
    match fault {
        Fault::Kill | Fault::Pause => {
            let victim = &nodes[1].1;
            let token = db.token_of("n2");
            signal(victim, if fault == Fault::Kill { "KILL" } else { "STOP" });
            let struck = Instant::now();
            let held = db.owned_by("n2").unwrap_or(held);
            wait_for("n2's sagas adopted", || {
                (db.owned_by("n2") == Some(0)).then_some(())
            });
            let latency = struck.elapsed();
            moved = Some((held, latency));
            if fault == Fault::Pause {
                // Three lease periods in all, then let it run on.
                std::thread::sleep((3 * ttl).saturating_sub(latency));
                let written = db.rows_written_by(token);
                signal(victim, "CONT");
                let (_, child) = nodes.remove(1);
                let (code, stderr) = finish(child);
                assert_eq!(
                    code,
                    Some(3),
                    "a node let go on after its lease finds itself fenced: {stderr}"
                );
                assert!(stderr.contains("lost its lease"), "{stderr}");
                assert_eq!(
                    db.rows_written_by(token),
                    written,
                    "a fenced node writes nothing once it runs again"
                );
            }
            // Adopted within the lease and two scan periods (a quarter of
            // it each), with a second of slack on a shared machine.
            let bound = ttl + ttl / 2 + Duration::from_secs(1);
            assert!(
                latency <= bound,
                "{held} sagas adopted in {latency:?}, more than {bound:?}"
            );
        }
        Fault::ServerCrash => {
            let cluster = server.as_ref().expect("a private server");
            cluster.crash_and_restart(Duration::from_millis(300));
        }
    }

    let manual = compensate_the_manual_order(&url, &schema);
    let queued_for = db
        .rows(&format!(
            "SELECT done_by FROM {{s}}.sagalog_action_queue WHERE saga_id = '{manual}' AND refusal IS NULL"
        ))
        .and_then(|rows| rows.first().and_then(|r| r.get::<_, Option<String>>(0)));

    let mut exits = Vec::new();
    for (id, child) in nodes {
        if fault == Fault::Kill && id == "n2" {
            let mut child = child;
            let _ = child.wait();
            continue;
        }
        let (code, stderr) = finish(child);
        // After a server crash a node may stop on a commit of unknown
        // outcome (its sagas wait for the next open); otherwise it ends
        // once every order has settled.
        let ok = code == Some(0) || (fault == Fault::ServerCrash && code == Some(1));
        assert!(ok, "node {id} exited {code:?}: {stderr}");
        match stderr.lines().find(|l| l.starts_with("error:")) {
            Some(error) if code != Some(0) => exits.push(format!("{id} exit {code:?}: {error}")),
            _ => exits.push(format!("{id} exit {code:?}")),
        }
    }

    // One node reports every saga and the books, as a rerun does.
    let last = orders_command(&place, None, BULK)
        .output()
        .expect("the last run starts");
    assert!(
        last.status.success(),
        "the last run failed: {}",
        String::from_utf8_lossy(&last.stderr)
    );
    let label = format!("three nodes through {fault:?}");
    check(&place, &String::from_utf8_lossy(&last.stdout), &label);
    let keys = db
        .count("SELECT count(*) FROM {s}.sagalog_key")
        .expect("the keys read");
    let sagas = db
        .count("SELECT count(*) FROM {s}.sagalog_saga")
        .expect("the sagas read");
    assert_eq!(keys, (BULK + 6) as i64, "{label}: one key per order");
    let records = Log::open(&place).records(manual);
    let actions = records
        .iter()
        .filter(|r| matches!(r, sagalog::Record::OperatorAction(_)))
        .count();
    assert_eq!(
        actions, 1,
        "{label}: the command line's action was carried out once"
    );
    assert!(
        matches!(records.last(), Some(sagalog::Record::SagaFinished(f)) if f.status == sagalog::SagaStatus::Compensated),
        "{label}: the manual order ended compensated"
    );
    assert_eq!(sagas, keys, "{label}: each key has one saga");
    let interleaved = db.interleaved();
    assert!(
        interleaved.is_empty(),
        "{label}: appends of two writers interleaved: {interleaved:?}"
    );
    let report = Log::open(&place).verify();
    assert!(report.is_clean(), "{label}: verify: {report:?}");
    let moved = moved.map_or(String::new(), |(held, latency)| {
        format!(", {held} sagas of n2 adopted {latency:?} after the fault (lease {ttl:?})")
    });
    let acted = match queued_for {
        Some(node) => format!("queued for and carried out by {node}"),
        None => "taken by the tool, no live node owning it".into(),
    };
    println!(
        "failover ({fault:?}): 3 nodes x {BULK} orders, {sagas} sagas, exits [{}]{moved}, the command line's compensate {acted} once: every check passed",
        exits.join(", ")
    );
}

#[test]
fn three_nodes_finish_every_saga_when_one_is_killed() {
    three_nodes_through(Fault::Kill);
}

#[test]
fn a_node_paused_past_its_lease_finds_itself_fenced_and_writes_nothing() {
    three_nodes_through(Fault::Pause);
}

#[test]
fn three_nodes_finish_every_saga_when_the_server_crashes() {
    three_nodes_through(Fault::ServerCrash);
}

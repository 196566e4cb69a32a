//! PostgreSQL for the tests: the server named by `SAGALOG_TEST_PG`
//! (`postgres://…`), or else a throwaway cluster this test process starts
//! from the PostgreSQL binaries on the machine (as the `postgres` user when
//! the tests run as root), on a private port, and that a watcher stops when
//! the process ends. Each store gets a schema of its own, so tests run in
//! parallel. Without binaries or a URL the PostgreSQL tests say so and pass
//! without running, unless `SAGALOG_REQUIRE_PG=1` (set by `.ci/run`), which
//! turns that into a failure.

use sagalog::{PgOptions, PgStore};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Says that a PostgreSQL test did not run for want of `what`, or fails it
/// under `SAGALOG_REQUIRE_PG=1`.
pub fn skipped(what: &str) {
    if std::env::var("SAGALOG_REQUIRE_PG").as_deref() == Ok("1") {
        panic!("SAGALOG_REQUIRE_PG=1 but there is no {what}: set SAGALOG_TEST_PG or install the server binaries");
    }
    eprintln!("SKIPPED: no {what} (set SAGALOG_TEST_PG=postgres://… or install postgresql); this test did not run");
}

/// The URL of the test server, or `None` after [`skipped`].
pub fn url_or_skip() -> Option<String> {
    let url = url();
    if url.is_none() {
        skipped("PostgreSQL");
    }
    url
}

/// A private cluster of this process (see [`Cluster::start`]) for a test
/// that crashes or stops its server, or `None` after [`skipped`].
pub async fn private_cluster(n: u32) -> Option<std::sync::Arc<Cluster>> {
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(n))
        .await
        .expect("the cluster's start task runs");
    if cluster.is_none() {
        skipped("PostgreSQL server binaries to crash and restart");
    }
    cluster.map(std::sync::Arc::new)
}

/// The URL of the server the tests use, if there is one.
pub fn url() -> Option<String> {
    static URL: OnceLock<Option<String>> = OnceLock::new();
    URL.get_or_init(|| match std::env::var("SAGALOG_TEST_PG") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => start_cluster(),
    })
    .clone()
}

/// A store in a new schema of the test server; `None` (after saying so)
/// when there is no server and none is required.
pub async fn store() -> Option<PgStore> {
    let schema = format!("sl_{}", uuid_simple());
    store_in(&schema).await
}

/// A store in schema `schema` of the test server (the same data each
/// time it is called with the same name). The engine opened on it joins
/// as the schema's one node, taking the place of an engine opened on the
/// schema before (a restart in place).
pub async fn store_in(schema: &str) -> Option<PgStore> {
    let url = url_or_skip()?;
    let options = PgOptions::default()
        .schema(schema)
        .node_id(format!("node-{schema}"))
        .take_over(true);
    Some(
        PgStore::connect(&url, options)
            .await
            .expect("the test database takes connections"),
    )
}

/// A store in a new schema that has joined as a node with no saga types,
/// for tests that write through the store itself.
pub async fn joined_store() -> Option<PgStore> {
    let store = store().await?;
    sagalog::store::LogStore::join(&store, &[])
        .await
        .expect("the test database lets a node join");
    Some(store)
}

/// `store` joined as a node with no saga types (see [`joined_store`]).
pub async fn joined(store: PgStore) -> PgStore {
    sagalog::store::LogStore::join(&store, &[])
        .await
        .expect("the test database lets a node join");
    store
}

fn uuid_simple() -> String {
    sagalog::SagaId::new().to_string().replace('-', "")
}

/// The directory of the newest installed PostgreSQL's binaries.
fn binaries() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort();
    found.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// `program args` as the `postgres` user when we are root.
fn as_server_user(program: PathBuf, args: &[&str]) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command
            .args(["-u", "postgres", "--"])
            .arg(program)
            .args(args);
        command
    } else {
        let mut command = Command::new(program);
        command.args(args);
        command
    }
}

/// Starts a cluster for this process; its URL.
fn start_cluster() -> Option<String> {
    Cluster::start(0).map(|cluster| cluster.url)
}

/// A throwaway cluster of this process, on a private port. A watcher stops
/// it and removes its files once the process is gone.
pub struct Cluster {
    /// Where it takes connections.
    pub url: String,
    pg_ctl: PathBuf,
    data: String,
    log: String,
    settings: String,
}

impl Cluster {
    /// Starts a cluster, the `n`-th of this process; `None` without the
    /// server binaries.
    pub fn start(n: u32) -> Option<Cluster> {
        let bin = binaries()?;
        let dir = std::env::temp_dir().join(format!("sagalog-pg-{}", uuid_simple()));
        std::fs::create_dir_all(&dir).ok()?;
        if is_root() {
            let _ = Command::new("chown").arg("postgres:").arg(&dir).status();
        }
        let (data, dir_s) = (
            dir.join("data").to_str()?.to_string(),
            dir.to_str()?.to_string(),
        );
        let init = as_server_user(
            bin.join("initdb"),
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        )
        .output()
        .ok()?;
        assert!(
            init.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        // Below the ephemeral range (32768 and up), so that no outgoing
        // connection holds the port; another port on a collision.
        let mut cluster = None;
        let mut failures = Vec::new();
        for attempt in 0..8u32 {
            let slot = std::process::id().wrapping_mul(4) + n + attempt * 4 * 1009;
            let port = 20000 + (slot % 12000) as u16;
            let candidate = Cluster {
                url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
                pg_ctl: bin.join("pg_ctl"),
                log: format!("{dir_s}/log"),
                settings: format!(
                    "-p {port} -k {dir_s} -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=on"
                ),
                data: data.clone(),
            };
            match candidate.try_start() {
                Ok(()) => {
                    cluster = Some(candidate);
                    break;
                }
                Err(why) => failures.push(format!("port {port}: {why}")),
            }
        }
        let Some(cluster) = cluster else {
            panic!(
                "pg_ctl start failed on every port tried:\n{}",
                failures.join("\n")
            );
        };
        let runuser = if is_root() {
            "runuser -u postgres -- "
        } else {
            ""
        };
        let watcher = format!(
            "while [ -d /proc/{pid} ]; do sleep 0.5; done; {runuser}{pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir_s}",
            pid = std::process::id(),
            pg_ctl = cluster.pg_ctl.display(),
            data = cluster.data,
        );
        Command::new("sh")
            .args(["-c", &format!("({watcher}) </dev/null >/dev/null 2>&1 &")])
            .status()
            .ok()?;
        Some(cluster)
    }

    fn pg_ctl_start(&self) {
        if let Err(why) = self.try_start() {
            panic!("pg_ctl start failed: {why}");
        }
    }

    /// Starts the server; on failure, what pg_ctl and the server log said.
    fn try_start(&self) -> Result<(), String> {
        let start = as_server_user(
            self.pg_ctl.clone(),
            &[
                "-D",
                &self.data,
                "-l",
                &self.log,
                "-w",
                "-o",
                &self.settings,
                "start",
            ],
        )
        .output()
        .map_err(|e| format!("pg_ctl does not run: {e}"))?;
        if start.status.success() {
            return Ok(());
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        Err(format!(
            "{} {}; server log ends: {}",
            String::from_utf8_lossy(&start.stdout).trim(),
            String::from_utf8_lossy(&start.stderr).trim(),
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ))
    }

    /// Crashes the server (`pg_ctl stop -m immediate`: no checkpoint, WAL
    /// redo at the next start) and starts it again, after `down`.
    pub fn crash_and_restart(&self, down: std::time::Duration) {
        self.crash();
        std::thread::sleep(down);
        self.start_again();
    }

    /// Crashes the server (`pg_ctl stop -m immediate`).
    pub fn crash(&self) {
        let stop = as_server_user(
            self.pg_ctl.clone(),
            &["-D", &self.data, "-m", "immediate", "-w", "stop"],
        )
        .output()
        .expect("pg_ctl runs");
        assert!(
            stop.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&stop.stderr)
        );
    }

    /// Starts the server again after [`Cluster::crash`].
    pub fn start_again(&self) {
        self.pg_ctl_start();
    }
}

//! `sagalog --db postgres://…`: reading a log in PostgreSQL that the orders
//! example wrote, and acting there: on a saga no live node owns (recorded,
//! then run by the node that adopts it), or refused for one a live node owns.

use super::harness::orders_binary;
use super::*;

#[allow(dead_code)]
#[path = "../../../tests/common/pg.rs"]
mod pg_server;

fn server() -> Option<String> {
    pg_server::url_or_skip()
}

/// Runs the orders example to its end with its log in schema `schema`.
fn orders_on(url: &str, schema: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    orders_in(dir.path(), url, schema);
    dir
}

/// Runs the orders example to its end in `dir`, its log in `schema`.
fn orders_in(dir: &Path, url: &str, schema: &str) {
    let output = Command::new(orders_binary())
        .arg("--data-dir")
        .arg(dir)
        .args(["--json", "--store", url, "--schema", schema])
        .output()
        .expect("the orders example runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn on_pg(url: &str, schema: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sagalog"))
        .args(["--db", url, "--schema", schema])
        .args(args)
        .output()
        .expect("sagalog runs")
}

#[test]
fn list_reads_the_sagas_of_a_postgresql_log() {
    let Some(url) = server() else { return };
    let schema = format!("cli_{}", SagaId::new().to_string().replace('-', ""));
    let _dir = orders_on(&url, &schema);

    let listed = on_pg(&url, &schema, &["list", "--json"]);

    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let page: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(page["sagas"].as_array().map(Vec::len), Some(5));
}

#[test]
fn list_on_a_postgresql_log_pages_by_the_last_id_listed() {
    let Some(url) = server() else { return };
    let schema = format!("cli_{}", SagaId::new().to_string().replace('-', ""));
    let _dir = orders_on(&url, &schema);

    let first = on_pg(&url, &schema, &["list", "--json", "--limit", "3"]);
    let first: Value = serde_json::from_slice(&first.stdout).unwrap();
    let next = first["next"]
        .as_str()
        .expect("a full page names the next one");
    let second = on_pg(
        &url,
        &schema,
        &["list", "--json", "--limit", "3", "--after", next],
    );
    let second: Value = serde_json::from_slice(&second.stdout).unwrap();

    assert_eq!(first["sagas"].as_array().map(Vec::len), Some(3));
    assert_eq!(second["sagas"].as_array().map(Vec::len), Some(2));
    assert!(second["next"].is_null(), "the last page names none");
}

#[test]
fn list_on_a_postgresql_log_filters_by_status() {
    let Some(url) = server() else { return };
    let schema = format!("cli_{}", SagaId::new().to_string().replace('-', ""));
    let _dir = orders_on(&url, &schema);

    let listed = on_pg(&url, &schema, &["list", "--json", "--status", "committed"]);

    let page: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(page["sagas"].as_array().map(Vec::len), Some(1));
}

#[test]
fn an_action_on_a_saga_no_live_node_owns_is_recorded_and_run_by_the_next_node() {
    let Some(url) = server() else { return };
    let schema = format!("cli_{}", SagaId::new().to_string().replace('-', ""));
    let dir = orders_on(&url, &schema);
    let listed = on_pg(&url, &schema, &["list", "--json", "--status", "committed"]);
    let page: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let id = page["sagas"][0]["saga_id"].as_str().unwrap().to_string();

    let acted = on_pg(&url, &schema, &["compensate", &id, "--reason", "test"]);

    assert!(
        acted.status.success(),
        "{}",
        String::from_utf8_lossy(&acted.stderr)
    );
    let said = String::from_utf8_lossy(&acted.stdout);
    assert!(said.contains("the one that adopts it"), "{said}");
    let nodes = on_pg(&url, &schema, &["nodes", "--json"]);
    let nodes: Value = serde_json::from_slice(&nodes.stdout).unwrap();
    assert_eq!(nodes["unowned_in_flight"], 1, "{nodes}");
    // The next node to run adopts the reopened saga and compensates it.
    orders_in(dir.path(), &url, &schema);
    let after = on_pg(&url, &schema, &["show", &id, "--json"]);
    let detail: Value = serde_json::from_slice(&after.stdout).unwrap();
    assert_eq!(detail["saga"]["status"], "COMPENSATED");
}

/// A service node `svc` on the log in `schema`, running one saga that is
/// suspended for an operator: the node's runtime, its engine and the saga.
fn suspended_on_a_live_node(
    url: &str,
    schema: &str,
) -> (tokio::runtime::Runtime, sagalog::Engine, SagaId) {
    use sagalog::{
        CompensationStrategy, Engine, EngineConfig, PgOptions, PgStore, Registry, SagaDefinition,
        SagaStatus, StartOptions, StepError,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (engine, id) = runtime.block_on(async {
        let options = PgOptions::default().schema(schema).node_id("svc");
        let store = PgStore::connect(url, options).await.unwrap();
        let mut registry = Registry::new();
        let stuck = SagaDefinition::<String>::builder("stuck")
            .step(
                "pay",
                |_ctx| async { Err::<(), _>(StepError::permanent("declined")) },
                |_ctx| async { Ok(()) },
            )
            .build()
            .unwrap();
        let stuck = registry.register(stuck).unwrap();
        let engine = Engine::open_with_store(
            std::sync::Arc::new(store),
            registry,
            EngineConfig::default(),
        )
        .await
        .unwrap();
        let options = StartOptions::new().strategy(CompensationStrategy::Manual);
        let id = engine
            .start(&stuck, &"x".to_string(), options)
            .await
            .unwrap()
            .saga_id;
        assert_eq!(
            engine.outcome(id).await.unwrap().status,
            SagaStatus::Suspended
        );
        (engine, id)
    });
    (runtime, engine, id)
}

#[test]
fn list_on_a_postgresql_log_shows_the_node_that_owns_each_saga_in_flight() {
    let Some(url) = server() else { return };
    let schema = format!("cli_{}", SagaId::new().to_string().replace('-', ""));
    let (runtime, engine, id) = suspended_on_a_live_node(&url, &schema);

    let listed = on_pg(&url, &schema, &["list"]);

    let said = String::from_utf8_lossy(&listed.stdout);
    let header = said.lines().next().unwrap_or_default();
    assert!(header.ends_with("OWNER"), "{said}");
    let row = said.lines().find(|l| l.starts_with(&id.to_string()));
    assert!(row.is_some_and(|r| r.ends_with("svc")), "{said}");
    runtime.block_on(engine.shutdown(Duration::ZERO));
}

#[test]
fn an_action_on_a_saga_a_live_node_owns_is_carried_out_by_that_node_once() {
    use sagalog::SagaStatus;
    let Some(url) = server() else { return };
    let schema = format!("cli_{}", SagaId::new().to_string().replace('-', ""));
    let (runtime, engine, id) = suspended_on_a_live_node(&url, &schema);

    let acted = on_pg(
        &url,
        &schema,
        &["compensate", &id.to_string(), "--reason", "test"],
    );

    let said = String::from_utf8_lossy(&acted.stdout);
    assert!(
        acted.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&acted.stderr)
    );
    assert!(said.contains("the live node that runs it"), "{said}");
    let (status, actions) = runtime.block_on(async {
        let status = engine.outcome(id).await.unwrap().status;
        let history = engine.history(id).await.unwrap();
        let actions = history
            .iter()
            .filter(|e| matches!(e.record, Ok((_, sagalog::Record::OperatorAction(_)))))
            .count();
        (status, actions)
    });
    assert_eq!(status, SagaStatus::Compensated);
    assert_eq!(actions, 1, "the action was carried out once");
    runtime.block_on(engine.shutdown(Duration::ZERO));
}

#[test]
fn verify_of_a_postgresql_log_the_example_wrote_is_clean() {
    let Some(url) = server() else { return };
    let schema = format!("cli_{}", SagaId::new().to_string().replace('-', ""));
    let _dir = orders_on(&url, &schema);

    let verified = on_pg(&url, &schema, &["verify", "--json"]);

    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
}

#[test]
fn nodes_lists_the_node_that_ran_the_example_as_departed_with_nothing_in_flight() {
    let Some(url) = server() else { return };
    let schema = format!("cli_{}", SagaId::new().to_string().replace('-', ""));
    let _dir = orders_on(&url, &schema);

    let listed = on_pg(&url, &schema, &["nodes", "--json"]);

    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let doc: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let nodes = doc["nodes"].as_array().expect("a list of nodes");
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["node_id"], "orders");
    assert_eq!(nodes[0]["state"], "left");
    assert_eq!(nodes[0]["in_flight"], 0);
    assert_eq!(doc["unowned_in_flight"], 0);
}

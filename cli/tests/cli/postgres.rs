//! `sagalog --db postgres://…`: reading a log in PostgreSQL that the orders
//! example wrote, and refusing actions there (the service may be running).

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
    let output = Command::new(orders_binary())
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--json", "--store", url, "--schema", schema])
        .output()
        .expect("the orders example runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    dir
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
fn an_action_on_a_postgresql_log_is_refused_as_a_race_with_the_service() {
    let Some(url) = server() else { return };
    let schema = format!("cli_{}", SagaId::new().to_string().replace('-', ""));
    let _dir = orders_on(&url, &schema);
    let listed = on_pg(&url, &schema, &["list", "--json"]);
    let page: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let id = page["sagas"][0]["saga_id"].as_str().unwrap().to_string();

    let acted = on_pg(&url, &schema, &["compensate", &id, "--reason", "test"]);

    assert!(!acted.status.success());
    let said = String::from_utf8_lossy(&acted.stderr);
    assert!(said.contains("could race"), "{said}");
    let after = on_pg(&url, &schema, &["show", &id, "--json"]);
    let detail: Value = serde_json::from_slice(&after.stdout).unwrap();
    assert_eq!(detail["saga"]["status"], "COMMITTED", "nothing was written");
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

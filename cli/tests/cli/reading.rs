//! Commands that read: `list`, `show`, `manual`, `stats`, `verify`, and
//! what the example says after a crash.

use super::harness::*;
use super::*;

#[test]
fn list_prints_every_saga_oldest_first_as_in_the_golden_file() {
    let out = stdout(&sagalog(fixture(), &["list"]));
    golden("list.txt", &normalize(&out));
}

#[test]
fn show_prints_summary_steps_and_timeline_as_in_the_golden_file() {
    let (manual, _, _) = roles(fixture());
    let out = stdout(&sagalog(fixture(), &["show", &manual]));
    golden("show.txt", &normalize(&out));
}

#[test]
fn list_filters_by_status() {
    let list = json(fixture(), &["list", "--status", "compensated"]);
    let sagas = list["sagas"].as_array().unwrap();
    assert_eq!(sagas.len(), 2);
    assert!(sagas.iter().all(|s| s["status"] == "COMPENSATED"));
}

#[test]
fn list_unfinished_for_leaves_out_finished_sagas() {
    let list = json(fixture(), &["list", "--unfinished-for", "0s"]);
    let statuses: Vec<_> = list["sagas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(statuses, ["SUSPENDED", "COMPENSATING"]);
}

#[test]
fn show_key_finds_the_saga_its_idempotency_key_belongs_to() {
    let listed = json(fixture(), &["list"]);
    let first = &listed["sagas"][0];
    let shown = json(fixture(), &["show", first["saga_id"].as_str().unwrap()]);
    let key = shown["saga"]["idempotency_key"]
        .as_str()
        .expect("orders use keys");

    let view = json(fixture(), &["show", "--key", key]);
    let only = json(fixture(), &["list", "--key", key]);

    assert_eq!(view["saga"]["saga_id"], first["saga_id"]);
    assert_eq!(only["sagas"].as_array().unwrap().len(), 1);
    assert_eq!(only["sagas"][0]["saga_id"], first["saga_id"]);
}

#[test]
fn a_tcc_transaction_is_shown_in_try_confirm_cancel_words() {
    let dir = tempfile::tempdir().unwrap();
    let ran = Command::new(example_binary("seckill"))
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let listed = json(dir.path(), &["list", "--status", "rolled_back"]);
    let id = listed["sagas"][0]["saga_id"].as_str().unwrap().to_string();

    let shown = stdout(&sagalog(dir.path(), &["show", &id]));

    assert!(
        shown.contains("strategy  try / confirm / cancel (TCC)"),
        "{shown}"
    );
    assert!(shown.contains("BRANCH"), "{shown}");
    assert!(shown.contains("cancelled"), "{shown}");
    assert!(shown.contains("try, attempt 1: intent"), "{shown}");
    assert!(shown.contains("cancel, attempt 1: succeeded"), "{shown}");
    assert!(!shown.contains("action"), "{shown}");
    assert!(!shown.contains("compensation"), "{shown}");
}

#[test]
fn the_run_after_a_crash_says_what_it_recovered_and_that_the_books_balance() {
    let dir = tempfile::tempdir().unwrap();
    let orders = |args: &[&str]| {
        Command::new(orders_binary())
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--json", "--scheduled-delay-ms", "50"])
            .args(args)
            .output()
            .unwrap()
    };
    let crashed = orders(&["--crash-after", "12"]);
    assert!(!crashed.status.success(), "it aborted");

    let rerun = orders(&[]);

    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    let summary = String::from_utf8_lossy(&rerun.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|doc| doc.get("recovered").is_some())
        .expect("a recovery line");
    let recovered = &summary["recovered"];
    let total: u64 = ["resumed", "sleeping", "parked", "suspended"]
        .iter()
        .map(|k| recovered[k].as_u64().unwrap())
        .sum();
    assert!(total >= 1, "{summary}");
    assert_eq!(summary["books_balance"], true);
}

#[test]
fn show_json_has_the_steps_and_the_timeline() {
    let (manual, _, _) = roles(fixture());
    let view = json(fixture(), &["show", &manual]);
    assert_eq!(view["saga"]["status"], "SUSPENDED");
    assert_eq!(view["saga"]["failure"]["step"], "charge_payment");
    assert_eq!(view["saga"]["steps"][0]["state"], "done");
    assert_eq!(view["timeline"][0]["kind"], "saga_started");
}

#[test]
fn manual_lists_the_suspended_order_with_what_it_would_compensate() {
    let (manual, _, _) = roles(fixture());
    let queue = json(fixture(), &["manual"]);
    let items = queue["manual_queue"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["saga_id"], manual.as_str());
    assert_eq!(items[0]["failed_step"]["step"], "charge_payment");
    assert_eq!(
        items[0]["to_compensate"],
        serde_json::json!(["reserve_stock"])
    );
}

#[test]
fn stats_counts_per_status_and_the_queue_depths() {
    let stats = json(fixture(), &["stats"]);
    assert_eq!(
        stats["by_status"],
        serde_json::json!({"COMMITTED": 1, "COMPENSATED": 2, "COMPENSATING": 1, "SUSPENDED": 1})
    );
    assert_eq!(stats["delay_queue_depth"], 1);
    assert_eq!(stats["manual_queue_depth"], 1);
}

#[test]
fn verify_reports_a_clean_database() {
    let report = json(fixture(), &["verify"]);
    assert_eq!(report["corrupt"], serde_json::json!([]));
    assert!(report["records"].as_u64().unwrap() > 20);
}

#[test]
fn verify_reports_a_damaged_value_with_its_key_and_fails() {
    let db = copy_of_fixture();
    let (manual, _, _) = roles(db.path());
    let id = SagaId::parse(&manual).unwrap();
    let key = log_key(id, 0);
    {
        let store = SledStore::open(db.path().join("log"), Default::default()).unwrap();
        store.overwrite_raw(&key, b"garbage").unwrap();
    }
    let output = sagalog(db.path(), &["verify"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    assert!(text.contains(&hex), "{text}");
    assert!(text.contains(&manual), "{text}");
}

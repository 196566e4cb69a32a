//! The command line against a running service: the orders example with
//! `--serve` holds the database, and `sagalog --db` reaches it through the
//! admin socket beside it.

use super::harness::*;
use super::*;
use std::io::{BufRead, BufReader};

/// The orders example serving its admin API until dropped.
struct Serving {
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Serving {
    fn start() -> Serving {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(orders_binary())
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--json", "--serve", "--scheduled-delay-ms", "600000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the orders example starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let serving = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|line| line.contains("\"serving\""));
        assert!(serving, "the example never said it serves");
        // Keep reading, so that the example's last lines find a reader.
        std::thread::spawn(move || lines.for_each(drop));
        Serving { dir, child }
    }

    fn sagalog_json(&self, args: &[&str]) -> Value {
        json(self.dir.path(), args)
    }

    fn manual(&self) -> String {
        let queue = self.sagalog_json(&["manual"]);
        queue["manual_queue"][0]["saga_id"]
            .as_str()
            .expect("the example leaves its manual order waiting")
            .to_string()
    }

    /// Stops the example with SIGTERM; true if it exited cleanly.
    fn stop(mut self) -> bool {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap().success()
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

#[test]
fn list_works_while_the_service_runs() {
    let serving = Serving::start();

    let listed = serving.sagalog_json(&["list"]);

    let statuses: Vec<_> = listed["sagas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(statuses.len(), 5, "{listed}");
    assert!(statuses.contains(&"SUSPENDED".to_string()));
    assert!(serving.stop(), "the example stops cleanly on SIGTERM");
}

#[test]
fn show_says_why_a_waiting_saga_waits_while_the_service_runs() {
    let serving = Serving::start();
    let manual = serving.manual();

    let shown = stdout(&sagalog(serving.dir.path(), &["show", &manual]));

    assert!(
        shown.contains("waiting   waiting for an operator: manual strategy"),
        "{shown}"
    );
    assert!(
        shown.contains("charge_payment action, attempt 1: failed"),
        "{shown}"
    );
}

#[test]
fn an_action_takes_effect_at_once_while_the_service_runs() {
    let serving = Serving::start();
    let manual = serving.manual();

    let done = serving.sagalog_json(&[
        "compensate",
        &manual,
        "--reason",
        "customer agreed",
        "--actor",
        "ops",
    ]);

    assert_eq!(done[0]["action"], "compensate_now");
    assert_eq!(done[0]["actor"], "ops");
    let mut status = String::new();
    for _ in 0..200 {
        let shown = serving.sagalog_json(&["show", &manual]);
        status = shown["saga"]["status"].as_str().unwrap().to_string();
        if status == "COMPENSATED" {
            break;
        }
    }
    assert_eq!(status, "COMPENSATED", "the running service compensated it");
}

#[test]
fn a_bulk_dry_run_lists_the_matching_sagas_and_changes_none() {
    let serving = Serving::start();
    let manual = serving.manual();

    let report = serving.sagalog_json(&[
        "bulk",
        "compensate-now",
        "--status",
        "suspended",
        "--dry-run",
        "--reason",
        "incident 7",
    ]);

    assert_eq!(report["dry_run"], true);
    assert_eq!(report["sagas"][0]["saga_id"], manual.as_str());
    assert_eq!(report["sagas"][0]["applied"], false);
    let shown = serving.sagalog_json(&["show", &manual]);
    assert_eq!(shown["saga"]["status"], "SUSPENDED");
}

#[test]
fn completions_are_printed_for_bash() {
    let output = Command::new(env!("CARGO_BIN_EXE_sagalog"))
        .args(["completions", "bash"])
        .output()
        .unwrap();

    assert!(output.status.success());
    let script = String::from_utf8_lossy(&output.stdout);
    assert!(script.contains("_sagalog()"), "{script}");
    assert!(script.contains("retry-step"), "{script}");
}

#[test]
fn watch_refreshes_the_list_the_given_number_of_times() {
    let serving = Serving::start();

    let output = sagalog(
        serving.dir.path(),
        &["watch", "--every", "10ms", "--count", "2"],
    );

    let text = stdout(&output);
    assert_eq!(text.matches("sagalog watch").count(), 2, "{text}");
    assert_eq!(text.matches("(5 sagas)").count(), 2, "{text}");
}

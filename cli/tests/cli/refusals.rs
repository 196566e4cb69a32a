//! Bad input and databases that are not ours: typed errors, nothing
//! written.

use super::harness::*;
use super::*;

#[test]
fn a_malformed_saga_id_is_refused_with_an_example_of_a_good_one() {
    let output = sagalog(fixture(), &["show", "not-an-id"]);
    assert_eq!(output.status.code(), Some(2), "a bad argument");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is not a saga id"), "{stderr}");
}

#[test]
fn with_json_an_error_is_a_json_document() {
    let bad_id = sagalog(fixture(), &["--json", "show", "not-an-id"]);
    let unknown_flag = sagalog(fixture(), &["--json", "list", "--no-such-flag"]);

    for (output, code) in [(bad_id, 2), (unknown_flag, 2)] {
        assert_eq!(output.status.code(), Some(code));
        let error: Value = serde_json::from_slice(&output.stderr).expect("stderr is JSON");
        assert!(error["error"].is_string(), "{error}");
        assert_eq!(error["exit_code"], code);
    }
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let (manual, _, _) = roles(fixture());
    let mut child = Command::new(env!("CARGO_BIN_EXE_sagalog"))
        .arg("--db")
        .arg(fixture().join("log"))
        .args(["show", &manual])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // As `sagalog show ID | head -0`: the reader is gone before the output.
    drop(child.stdout.take());

    let output = child.wait_with_output().unwrap();

    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_locked_database_is_reported_with_what_to_do_instead() {
    let db = copy_of_fixture();
    let _service = SledStore::open(db.path().join("log"), Default::default()).unwrap();

    let output = sagalog(db.path(), &["list"]);

    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is locked"), "{stderr}");
    assert!(stderr.contains("Engine::serve_admin"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_directory_without_a_database_is_refused_and_left_empty() {
    let empty = tempfile::tempdir().unwrap();
    std::fs::create_dir(empty.path().join("log")).unwrap();
    for command in ["list", "compact"] {
        let output = sagalog(empty.path(), &[command]);
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("there is no sagalog database"), "{stderr}");
    }
    assert_eq!(
        std::fs::read_dir(empty.path().join("log")).unwrap().count(),
        0
    );
}

#[test]
fn a_foreign_sled_database_is_refused_by_every_command_and_left_as_it_was() {
    // The orders example's ledger is a sled database of its own.
    let db = copy_of_fixture();
    let ledger = db.path().join("ledger");
    let before = contents(&ledger);
    assert!(!before.is_empty());
    for command in ["list", "verify", "compact", "repair", "manual", "stats"] {
        let output = Command::new(env!("CARGO_BIN_EXE_sagalog"))
            .arg("--db")
            .arg(&ledger)
            .arg(command)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{command}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("is not a sagalog database"),
            "{command}: {stderr}"
        );
    }
    assert!(contents(&ledger) == before, "not one byte changed");
}

#[test]
fn nodes_on_a_sled_directory_is_refused_with_what_it_is_for() {
    let output = sagalog(fixture(), &["nodes"]);

    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("share a PostgreSQL log"), "{stderr}");
}

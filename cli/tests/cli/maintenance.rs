//! `sweep` and `compact`, alone, during a listing, and killed at random.

use super::harness::*;
use super::*;

#[test]
fn sweep_removes_finished_sagas_keeps_unfinished_ones_and_reports_disk_size() {
    let db = copy_of_fixture();
    let (manual, sleeping, finished) = roles(db.path());

    let report = json(db.path(), &["sweep", "--older-than", "0s"]);

    assert_eq!(report["removed"], 3);
    assert!(report["bytes_on_disk_before"].as_u64().unwrap() > 0);
    assert!(report["bytes_on_disk_after"].as_u64().is_some());
    assert_eq!(listed(db.path()), [manual, sleeping]);
    let gone = sagalog(db.path(), &["show", &finished[0]]);
    assert!(!gone.status.success());
}

#[test]
fn compact_after_a_sweep_keeps_the_unfinished_sagas_and_reports_disk_size() {
    let db = copy_of_fixture();
    let (manual, sleeping, _) = roles(db.path());
    json(db.path(), &["sweep", "--older-than", "0s"]);

    let report = json(db.path(), &["compact"]);

    assert!(report["bytes_on_disk_before"].as_u64().unwrap() > 0);
    assert!(report["bytes_on_disk_after"].as_u64().unwrap() > 0);
    assert_eq!(listed(db.path()), [manual, sleeping]);
    assert_eq!(
        json(db.path(), &["verify"])["corrupt"],
        serde_json::json!([])
    );
}

#[test]
fn list_during_a_compaction_is_locked_out_and_the_compaction_completes() {
    let db = copy_of_fixture();
    let compact = Command::new(env!("CARGO_BIN_EXE_sagalog"))
        .arg("--db")
        .arg(db.path().join("log"))
        .arg("compact")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = compact.id();
    let mut lists = 0;
    while Path::new(&format!("/proc/{pid}/status")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .contains("zombie")
    {
        let _ = sagalog(db.path(), &["list"]);
        lists += 1;
    }
    let output = compact.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "compaction failed after {lists} lists: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(lists > 0);
    let (manual, sleeping, _) = roles(db.path());
    assert!(!manual.is_empty() && !sleeping.is_empty());
}

/// Crash test for retention: `sagalog sweep` is SIGKILLed at random moments
/// on a database with hundreds of finished orders and some in flight; after
/// every kill, `verify` finds no partly deleted saga and no damaged value,
/// and the sagas in flight are all still there.
#[test]
fn sweep_killed_at_random_moments_leaves_every_saga_whole() {
    let dir = tempfile::tempdir().unwrap();
    run_orders(dir.path(), &["--bulk", "1000", "--crash-after", "1500"]);
    let unfinished = || json(dir.path(), &["list", "--unfinished-for", "0s"])["sagas"].clone();
    let in_flight = unfinished();
    assert!(
        !in_flight.as_array().unwrap().is_empty(),
        "some orders in flight"
    );
    let total = || {
        json(dir.path(), &["list"])["sagas"]
            .as_array()
            .unwrap()
            .len()
    };
    let before = total();
    let mut seed = 0x5eed_u64;
    let (mut killed, mut finished) = (0, 0);
    for _ in 0..20 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sagalog"))
            .arg("--db")
            .arg(dir.path().join("log"))
            .args(["sweep", "--older-than", "0s", "--batch", "4"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Fault injection, not a speed assumption: any moment is valid.
        std::thread::sleep(Duration::from_millis(next(&mut seed) % 250));
        if child.try_wait().unwrap().is_some() {
            finished += 1;
        } else {
            child.kill().unwrap();
            killed += 1;
        }
        let _ = child.wait();
        let report = json(dir.path(), &["verify"]);
        assert_eq!(report["corrupt"], serde_json::json!([]), "after a kill");
        assert_eq!(unfinished(), in_flight, "sagas in flight untouched");
    }
    println!(
        "sweep kill loop: {killed} sweeps SIGKILLed, {finished} finished first; sagas {before} -> {}, {} in flight untouched, verify clean after each",
        total(),
        in_flight.as_array().unwrap().len()
    );
}

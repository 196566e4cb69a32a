//! Every `sagalog` command, run as a process on a database the orders
//! example produced: the example is aborted right after the durable append
//! that leaves one order suspended in the manual queue and one asleep on a
//! ten-minute scheduled compensation (three more are finished).
//!
//! Golden files: `tests/golden/*.txt`, with saga ids and times replaced by
//! placeholders. `UPDATE_GOLDEN=1 cargo test -p sagalog-cli` rewrites them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

use sagalog::testing::log_key;
use sagalog::{SagaId, SledStore};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The orders example, built by cargo first (tests do not build examples).
fn orders_binary() -> PathBuf {
    example_binary("orders")
}

/// Example `name`, built by cargo first.
fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "--quiet", "-p", "sagalog", "--example", name]);
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    assert!(build.status().expect("cargo runs").success());
    profile_dir.join("examples").join(name)
}

/// Runs the orders example on `dir` with `args`; gives up after a minute.
fn run_orders(dir: &Path, args: &[&str]) -> Output {
    let child = Command::new(orders_binary())
        .arg("--data-dir")
        .arg(dir)
        .args(["--json", "--scheduled-delay-ms", "600000"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the orders example starts");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    let watchdog = std::thread::spawn(move || {
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return;
            }
        }
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    });
    let output = child.wait_with_output().expect("the orders example runs");
    let _ = watchdog.join();
    output
}

fn sagalog(db: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sagalog"))
        .arg("--db")
        .arg(db.join("log"))
        .args(args)
        .output()
        .expect("sagalog runs")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "sagalog failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json(db: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&stdout(&sagalog(db, &all))).expect("sagalog prints JSON")
}

/// The fixture, produced once: the first crash point at which the manual
/// queue and the delay queue each hold one order.
fn fixture() -> &'static Path {
    static FIXTURE: OnceLock<PathBuf> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = tempfile::tempdir().expect("temp dir").keep();
        for n in 1..60 {
            let dir = root.join(format!("crash-after-{n}"));
            run_orders(&dir, &["--crash-after", &n.to_string()]);
            let stats = json(&dir, &["stats"]);
            if stats["manual_queue_depth"] == 1 && stats["delay_queue_depth"] == 1 {
                return dir;
            }
        }
        panic!("no crash point left one order suspended and one asleep");
    })
}

/// A private copy of the fixture, for a test that changes it.
fn copy_of_fixture() -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(fixture(), dir.path());
    dir
}

/// (manual saga, sleeping saga, finished sagas) of a fixture copy.
fn roles(db: &Path) -> (String, String, Vec<String>) {
    let list = json(db, &["list"]);
    let sagas = list["sagas"].as_array().unwrap();
    let with = |status: &str| -> Vec<String> {
        sagas
            .iter()
            .filter(|s| s["status"] == status)
            .map(|s| s["saga_id"].as_str().unwrap().to_string())
            .collect()
    };
    let finished = [with("COMMITTED"), with("COMPENSATED")].concat();
    (
        with("SUSPENDED")[0].clone(),
        with("COMPENSATING")[0].clone(),
        finished,
    )
}

/// Replaces saga ids with `<saga-N>` (in order of appearance) and RFC 3339
/// times with `<time>`, keeping the column padding.
fn normalize(text: &str) -> String {
    let mut ids: Vec<String> = Vec::new();
    let mut out = String::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let is_hex = |c: char| c.is_ascii_hexdigit() && !c.is_ascii_uppercase();
    while i < chars.len() {
        let rest: String = chars[i..chars.len().min(i + 36)].iter().collect();
        if rest.len() == 36
            && SagaId::parse(&rest).is_some()
            && rest.chars().all(|c| is_hex(c) || c == '-')
        {
            let n = match ids.iter().position(|id| *id == rest) {
                Some(n) => n,
                None => {
                    ids.push(rest.clone());
                    ids.len() - 1
                }
            };
            let placeholder = format!("<saga-{}>", n + 1);
            out.push_str(&format!("{placeholder:<36}"));
            i += 36;
            continue;
        }
        let time: String = chars[i..chars.len().min(i + 24)].iter().collect();
        let shaped = time.len() == 24
            && time.chars().enumerate().all(|(k, c)| match k {
                4 | 7 => c == '-',
                10 => c == 'T',
                13 | 16 => c == ':',
                19 => c == '.',
                23 => c == 'Z',
                _ => c.is_ascii_digit(),
            });
        if shaped {
            out.push_str(&format!("{:<24}", "<time>"));
            i += 24;
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing golden file {}", path.display()));
    assert_eq!(
        actual,
        expected.trim_end(),
        "output differs from {}; rerun with UPDATE_GOLDEN=1 if the change is intended",
        path.display()
    );
}

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
    let key = first["idempotency_key"].as_str().expect("orders use keys");

    let view = json(fixture(), &["show", "--key", key]);
    let only = json(fixture(), &["list", "--key", key]);

    assert_eq!(view["saga_id"], first["saga_id"]);
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
    assert_eq!(view["status"], "SUSPENDED");
    assert_eq!(view["failure"]["step"], "charge_payment");
    assert_eq!(view["steps"][0]["summary"], "done");
    assert_eq!(view["timeline"][0]["kind"], "saga_started");
}

#[test]
fn manual_lists_the_suspended_order_with_what_it_would_compensate() {
    let (manual, _, _) = roles(fixture());
    let queue = json(fixture(), &["manual"]);
    let items = queue["manual_queue"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["saga_id"], manual.as_str());
    assert_eq!(items[0]["failed_step"], "charge_payment");
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

#[test]
fn actions_are_recorded_and_the_service_carries_them_out_at_its_next_start() {
    let db = copy_of_fixture();
    let (manual, sleeping, _) = roles(db.path());
    let who = ["--actor", "cli-test", "--reason", "customer called"];
    stdout(&sagalog(
        db.path(),
        &[&["compensate", &manual][..], &who].concat(),
    ));
    stdout(&sagalog(
        db.path(),
        &[&["retry", &sleeping][..], &who].concat(),
    ));
    assert_eq!(
        json(db.path(), &["show", &manual])["status"],
        "COMPENSATING",
        "recorded, not yet carried out"
    );

    let rerun = run_orders(db.path(), &[]);

    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    for id in [&manual, &sleeping] {
        let view = json(db.path(), &["show", id]);
        assert_eq!(view["status"], "COMPENSATED");
        let actors: Vec<_> = view["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "operator_action")
            .map(|e| e["text"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(actors.len(), 1, "{actors:?}");
        assert!(actors[0].starts_with("operator cli-test"), "{actors:?}");
    }
}

#[test]
fn resolve_marks_a_step_compensated_by_hand() {
    let db = copy_of_fixture();
    let (manual, _, _) = roles(db.path());
    stdout(&sagalog(
        db.path(),
        &[
            "resolve",
            &manual,
            "--step",
            "reserve_stock",
            "--reason",
            "released in the warehouse UI",
        ],
    ));
    let view = json(db.path(), &["show", &manual]);
    assert_eq!(view["steps"][0]["summary"], "compensated");
}

#[test]
fn resolve_abandon_records_that_the_operator_gave_up() {
    let db = copy_of_fixture();
    let (manual, _, _) = roles(db.path());
    stdout(&sagalog(
        db.path(),
        &["resolve", &manual, "--abandon", "--reason", "written off"],
    ));
    let view = json(db.path(), &["show", &manual]);
    let last = view["timeline"].as_array().unwrap().last().unwrap().clone();
    assert!(last["text"].as_str().unwrap().contains("abandon"), "{last}");
}

#[test]
fn an_action_after_an_offline_abandon_is_refused_and_the_abandon_shows_as_pending() {
    let db = copy_of_fixture();
    let (manual, _, _) = roles(db.path());
    stdout(&sagalog(
        db.path(),
        &["resolve", &manual, "--abandon", "--reason", "written off"],
    ));

    let compensate = sagalog(db.path(), &["compensate", &manual, "--reason", "undo"]);
    let again = sagalog(
        db.path(),
        &["resolve", &manual, "--abandon", "--reason", "again"],
    );

    for refused in [compensate, again] {
        assert_eq!(refused.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains("abandon by"), "{stderr}");
        assert!(stderr.contains("not yet carried out"), "{stderr}");
    }
    let queue = json(db.path(), &["manual"]);
    let item = &queue["manual_queue"][0];
    assert_eq!(item["saga_id"].as_str(), Some(manual.as_str()));
    assert!(item["pending"][0]
        .as_str()
        .unwrap()
        .starts_with("abandon by"));
    let view = json(db.path(), &["show", &manual]);
    assert!(view["pending"][0]
        .as_str()
        .unwrap()
        .starts_with("abandon by"));
    let listed = stdout(&sagalog(db.path(), &["list"]));
    assert!(listed.contains("SUSPENDED (abandon pending)"), "{listed}");
}

#[test]
fn cancel_is_recorded_in_the_sagas_log() {
    let db = copy_of_fixture();
    let (_, sleeping, _) = roles(db.path());
    stdout(&sagalog(
        db.path(),
        &["cancel", &sleeping, "--reason", "order withdrawn"],
    ));
    let view = json(db.path(), &["show", &sleeping]);
    let last = view["timeline"].as_array().unwrap().last().unwrap().clone();
    assert!(last["text"].as_str().unwrap().contains("cancel"), "{last}");
}

#[test]
fn retry_of_a_finished_saga_is_refused_with_the_reason() {
    let (_, _, finished) = roles(fixture());
    let output = sagalog(fixture(), &["retry", &finished[0], "--reason", "why not"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("waits for nothing"), "{stderr}");
}

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
    assert!(stderr.contains("admin API"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn sweep_removes_finished_sagas_keeps_unfinished_ones_and_reports_disk_size() {
    let db = copy_of_fixture();
    let (manual, sleeping, finished) = roles(db.path());

    let report = json(db.path(), &["sweep", "--older-than", "0s"]);

    assert_eq!(report["removed"], 3);
    assert!(report["bytes_on_disk_before"].as_u64().unwrap() > 0);
    assert!(report["bytes_on_disk_after"].as_u64().is_some());
    let left: Vec<_> = json(db.path(), &["list"])["sagas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["saga_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, [manual, sleeping]);
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
    let left: Vec<_> = json(db.path(), &["list"])["sagas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["saga_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, [manual, sleeping]);
    assert_eq!(
        json(db.path(), &["verify"])["corrupt"],
        serde_json::json!([])
    );
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

/// Each file under `dir` with its bytes, in path order.
fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                files.push((entry.path(), std::fs::read(entry.path()).unwrap()));
            }
        }
    }
    files.sort();
    files
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

/// A tiny seedable generator for kill times (xorshift64).
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
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

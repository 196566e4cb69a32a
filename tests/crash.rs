//! Crash test: run the orders example (sagas, every strategy) and the
//! seckill example (TCC, parallel tries) in a child process, abort it right
//! after each durable append in turn (1, 2, 3, ... until a run completes),
//! and before and after each participant call, rerun it on the same data
//! directory, and check that
//! (a) every saga is terminal with the outcome its scenario implies,
//! (b) the ledger is conserved and nothing is left reserved or held, and
//! (c) every participant call has a durable intent record in the saga log.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

use sagalog::store::LogStore;
use sagalog::tools::decode_records;
use sagalog::Record;
use sagalog::{SagaId, SledStore};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The example binaries, (re)built by cargo first: `cargo test --test crash`
/// alone does not rebuild examples, and a stale binary would test old code.
fn orders_binary() -> PathBuf {
    example_binary("orders")
}

fn example_binary(name: &'static str) -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args([
            "build",
            "--quiet",
            "--example",
            "orders",
            "--example",
            "seckill",
        ]);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "building the examples failed");
    });
    profile_dir.join("examples").join(name)
}

/// Runs the example once, with `--<flag> N` if given.
fn run_orders(dir: &Path, crash: Option<(&str, u64)>) -> Output {
    orders_command(dir, crash, 0)
        .output()
        .expect("the orders example starts")
}

fn orders_command(dir: &Path, crash: Option<(&str, u64)>, bulk: usize) -> Command {
    let mut command = Command::new(orders_binary());
    command
        .arg("--data-dir")
        .arg(dir)
        .arg("--json")
        .args(["--scheduled-delay-ms", "200"]);
    if let Some((flag, n)) = crash {
        command.arg(format!("--{flag}")).arg(n.to_string());
    }
    if bulk > 0 {
        command.arg("--bulk").arg(bulk.to_string());
    }
    command
}

struct CallRecord {
    saga_id: String,
    step: String,
    phase: String,
    attempt: u64,
}

fn ledger_calls(dir: &Path) -> Vec<CallRecord> {
    let db = sled::open(dir.join("ledger")).expect("ledger opens");
    db.scan_prefix("call/")
        .map(|item| {
            let (_, v) = item.expect("ledger reads");
            let v: Value = serde_json::from_slice(&v).expect("call record is JSON");
            CallRecord {
                saga_id: v["saga_id"].as_str().unwrap_or_default().to_string(),
                step: v["step"].as_str().unwrap_or_default().to_string(),
                phase: v["phase"].as_str().unwrap_or_default().to_string(),
                attempt: v["attempt"].as_u64().unwrap_or(0),
            }
        })
        .collect()
}

/// Checks the three properties on a data directory after a completed run.
fn check(dir: &Path, stdout: &str, label: &str) {
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{label}: bad JSON line {l:?}: {e}"))
        })
        .collect();
    let (ledger, rest) = lines.split_last().expect("output has lines");
    let sagas: Vec<&Value> = rest
        .iter()
        .filter(|l| l.get("scenario").is_some())
        .collect();

    // (a) every saga terminal, with its scenario's outcome.
    let expected = [
        ("success", "COMMITTED"),
        ("payment-declined", "COMPENSATED"),
        ("retry-then-compensate", "COMPENSATED"),
        ("manual", "COMPENSATED"),
        ("scheduled", "COMPENSATED"),
    ];
    assert_eq!(
        sagas.len(),
        expected.len(),
        "{label}: one line per scenario"
    );
    for (line, (scenario, status)) in sagas.iter().zip(expected) {
        assert_eq!(line["scenario"], scenario, "{label}");
        assert_eq!(line["status"], status, "{label}: {scenario}");
    }
    let store = SledStore::open(dir.join("log"), Default::default()).expect("log opens");
    assert!(
        store.scan_active().unwrap().is_empty(),
        "{label}: no saga left active"
    );
    // Every terminal saga is in the finished index (one batch per write,
    // DESIGN.md §4.4), whichever write its crash point fell on.
    let finished: HashMap<SagaId, Vec<u8>> = store.scan_finished().unwrap().into_iter().collect();
    for line in &sagas {
        let id = SagaId::parse(line["saga_id"].as_str().expect("a saga id")).expect("a saga id");
        assert!(
            finished.contains_key(&id),
            "{label}: saga {id} is in the finished index"
        );
    }

    // (b) conservation, and nothing left reserved or held.
    let books = &ledger["ledger"];
    for (name, p) in books["products"].as_object().expect("products") {
        let [initial, available, reserved, sold] =
            ["initial", "available", "reserved", "sold"].map(|f| p[f].as_i64().unwrap());
        assert_eq!(
            initial,
            available + reserved + sold,
            "{label}: product {name} conserved"
        );
        assert_eq!(reserved, 0, "{label}: product {name} has nothing reserved");
    }
    for (name, a) in books["accounts"].as_object().expect("accounts") {
        let [initial, balance, held, paid] =
            ["initial", "balance", "held", "paid"].map(|f| a[f].as_i64().unwrap());
        assert_eq!(
            initial,
            balance + held + paid,
            "{label}: account {name} conserved"
        );
        assert_eq!(held, 0, "{label}: account {name} has nothing held");
    }
    assert_eq!(
        books["products"]["widget"]["sold"], 2,
        "{label}: the committed order sold once"
    );
    assert_eq!(
        books["accounts"]["ada"]["paid"], 50,
        "{label}: ada paid once"
    );
    let shipments = &books["shipments"];
    let bulk_committed = rest.iter().find_map(|l| l.get("bulk")).map_or(0, |b| {
        let (total, committed, compensated) = (
            b["total"].as_i64().unwrap(),
            b["committed"].as_i64().unwrap(),
            b["compensated"].as_i64().unwrap(),
        );
        assert_eq!(
            committed + compensated,
            total,
            "{label}: every bulk order terminal"
        );
        committed
    });
    assert_eq!(
        shipments["created"].as_i64().unwrap() - shipments["cancelled"].as_i64().unwrap(),
        1 + bulk_committed,
        "{label}: one shipment stands per committed order"
    );

    // (c) no participant call without a durable intent record.
    let mut intents: HashMap<String, Vec<(String, String, u64)>> = HashMap::new();
    for call in ledger_calls(dir) {
        let log = intents.entry(call.saga_id.clone()).or_insert_with(|| {
            let id = SagaId::parse(&call.saga_id).expect("call names a saga id");
            let records: Vec<Record> = store
                .read_log(id)
                .unwrap()
                .into_iter()
                .flat_map(|(_, value)| decode_records(&value).expect("log value decodes"))
                .map(|(_, record)| record)
                .collect();
            let Some(Record::SagaStarted(start)) = records.first() else {
                panic!("{label}: participant called for saga {id} with no start record");
            };
            let names = start.plan.step_names();
            records
                .iter()
                .filter_map(|r| match r {
                    Record::StepStarted(c) => Some((
                        names[c.step as usize].to_string(),
                        "action".to_string(),
                        c.attempt as u64,
                    )),
                    Record::CompensationStarted(c) => Some((
                        names[c.step as usize].to_string(),
                        "compensation".to_string(),
                        c.attempt as u64,
                    )),
                    _ => None,
                })
                .collect()
        });
        assert!(
            log.contains(&(call.step.clone(), call.phase.clone(), call.attempt)),
            "{label}: {}:{}:{} of saga {} was called without an intent record",
            call.step,
            call.phase,
            call.attempt,
            call.saga_id
        );
    }
}

/// Aborts the example at crash point `flag` N = 1, 2, ... until a run
/// completes; after each abort, reruns it and checks everything. Returns how
/// many crash points were covered.
fn every_crash_point(flag: &str, marker: &str) -> u64 {
    every_crash_point_of(Workload::Orders, flag, marker)
}

/// Which example a crash test runs.
#[derive(Clone, Copy)]
enum Workload {
    Orders,
    /// The orders workload with a 1 ms index lag: nearly every saga gets
    /// its active-index entry from a move of the watermark while it runs,
    /// so the crash points fall around those moves.
    OrdersIndexedEarly,
    Seckill,
}

impl Workload {
    fn run(self, dir: &Path, crash: Option<(&str, u64)>) -> Output {
        match self {
            Workload::Orders => run_orders(dir, crash),
            Workload::OrdersIndexedEarly => orders_command(dir, crash, 0)
                .args(["--index-lag-ms", "1"])
                .output()
                .expect("the orders example starts"),
            Workload::Seckill => seckill_command(dir, crash, 0)
                .output()
                .expect("the seckill example starts"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Workload::Orders => "orders",
            Workload::OrdersIndexedEarly => "orders (1 ms index lag)",
            Workload::Seckill => "seckill",
        }
    }

    fn command(self, dir: &Path, bulk: usize) -> Command {
        match self {
            Workload::Orders => orders_command(dir, None, bulk),
            Workload::OrdersIndexedEarly => {
                let mut command = orders_command(dir, None, bulk);
                command.args(["--index-lag-ms", "1"]);
                command
            }
            Workload::Seckill => seckill_command(dir, None, bulk),
        }
    }

    fn check(self, dir: &Path, stdout: &str, label: &str) {
        match self {
            Workload::Orders | Workload::OrdersIndexedEarly => check(dir, stdout, label),
            Workload::Seckill => check_seckill(dir, stdout, label),
        }
    }
}

fn every_crash_point_of(workload: Workload, flag: &str, marker: &str) -> u64 {
    for n in 1..=500u64 {
        let dir = tempfile::tempdir().unwrap();
        let crashed = workload.run(dir.path(), Some((flag, n)));
        if crashed.status.success() {
            // N is past the last such point: the run completed without a crash.
            let label = format!("--{flag} {n} (no crash)");
            let stdout = String::from_utf8_lossy(&crashed.stdout);
            workload.check(dir.path(), &stdout, &label);
            if matches!(workload, Workload::Orders | Workload::OrdersIndexedEarly) {
                assert_grown_in_place(dir.path(), &stdout);
            }
            return n - 1;
        }
        assert!(
            String::from_utf8_lossy(&crashed.stderr).contains(&format!("{marker} #{n}")),
            "--{flag} {n} failed without the planned abort: {}",
            String::from_utf8_lossy(&crashed.stderr)
        );
        let rerun = workload.run(dir.path(), None);
        assert!(
            rerun.status.success(),
            "rerun after --{flag} {n} failed: {}",
            String::from_utf8_lossy(&rerun.stderr)
        );
        let label = format!("--{flag} {n}");
        workload.check(dir.path(), &String::from_utf8_lossy(&rerun.stdout), &label);
    }
    panic!("the workload never completed within 500 {marker}s");
}

/// The crash points above fall between the rewrites of one log value: a
/// saga that runs without a pause writes its whole log as one value,
/// rewritten with each append (DESIGN.md §4.3). Checks that the run did so,
/// so that the crash tests do cover those rewrites.
fn assert_grown_in_place(dir: &Path, stdout: &str) {
    let line: Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["scenario"] == "success")
        .expect("a line for the success scenario");
    let id = SagaId::parse(line["saga_id"].as_str().expect("the line has a saga id"))
        .expect("a saga id");
    let store = SledStore::open(dir.join("log"), Default::default()).expect("log opens");
    let values = store.read_log(id).unwrap();
    assert_eq!(values.len(), 1, "the success saga's log is one value");
    let records = decode_records(&values[0].1)
        .expect("log value decodes")
        .len();
    assert!(
        records >= 6,
        "one value holds every append's records: {records}"
    );
}

#[test]
fn orders_survive_an_abort_at_every_durable_append() {
    let points = every_crash_point("crash-after", "append");
    println!("crash points covered: {points} (after each durable append)");
    assert!(points >= 10, "the workload should have many append points");
}

#[test]
fn orders_survive_an_abort_before_every_participant_call() {
    let points = every_crash_point("crash-before-call", "call");
    println!("crash points covered: {points} (before each participant call, intent durable)");
    assert!(points >= 10, "the workload should make many calls");
}

#[test]
fn orders_survive_an_abort_after_every_participant_call() {
    let points = every_crash_point("crash-after-call", "call");
    println!(
        "crash points covered: {points} (after each participant call, result not yet durable)"
    );
    assert!(points >= 10, "the workload should make many calls");
}

#[test]
fn orders_indexed_early_survive_an_abort_at_every_durable_append() {
    let points = every_crash_point_of(Workload::OrdersIndexedEarly, "crash-after", "append");
    println!("crash points covered: {points} (after each durable append, 1 ms index lag)");
    assert!(points >= 10, "the workload should have many append points");
}

fn seckill_command(dir: &Path, crash: Option<(&str, u64)>, bulk: usize) -> Command {
    let mut command = Command::new(example_binary("seckill"));
    command.arg("--data-dir").arg(dir).arg("--json");
    if let Some((flag, n)) = crash {
        command.arg(format!("--{flag}")).arg(n.to_string());
    }
    if bulk > 0 {
        command.arg("--bulk").arg(bulk.to_string());
    }
    command
}

/// The TCC checks on a seckill data directory after a completed run:
/// (a) every transaction terminal with its scenario's outcome and the
/// barrier's verdicts, (b) money and stock conserved with nothing frozen,
/// reserved or pending, one paid order per committed purchase, and (c)
/// every try, confirm and cancel made with a durable intent record.
fn check_seckill(dir: &Path, stdout: &str, label: &str) {
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{label}: bad JSON line {l:?}: {e}"))
        })
        .collect();
    let (ledger, rest) = lines.split_last().expect("output has lines");
    let scenario = |name: &str| -> &Value {
        rest.iter()
            .find(|l| l["scenario"] == name)
            .unwrap_or_else(|| panic!("{label}: no line for scenario {name}"))
    };
    assert_eq!(scenario("success")["status"], "COMMITTED", "{label}");
    assert_eq!(
        scenario("insufficient-balance")["status"],
        "ROLLED_BACK",
        "{label}"
    );
    assert_eq!(
        scenario("duplicate-confirm")["guard"],
        "duplicate",
        "{label}"
    );
    assert_eq!(
        scenario("cancel-before-try")["cancel"],
        "empty_rollback",
        "{label}"
    );
    assert_eq!(
        scenario("cancel-before-try")["late_try"],
        "rejected",
        "{label}"
    );
    assert_eq!(scenario("crash-recovery")["status"], "COMMITTED", "{label}");
    assert_eq!(scenario("bundle")["status"], "COMMITTED", "{label}");
    assert_eq!(
        scenario("bundle")["children"],
        2,
        "{label}: one sub-saga per step"
    );
    let store = SledStore::open(dir.join("log"), Default::default()).expect("log opens");
    assert!(
        store.scan_active().unwrap().is_empty(),
        "{label}: no transaction left active"
    );

    let books = &ledger["ledger"];
    let n = |path: [&str; 2]| books[path[0]][path[1]].as_i64().unwrap();
    assert_eq!(
        n(["money", "initial"]),
        n(["money", "balance"]) + n(["money", "frozen"]) + n(["money", "merchant"]),
        "{label}: money conserved"
    );
    assert_eq!(
        n(["stock", "initial"]),
        n(["stock", "available"]) + n(["stock", "reserved"]) + n(["stock", "sold"]),
        "{label}: stock conserved"
    );
    assert_eq!(n(["money", "frozen"]), 0, "{label}: nothing left frozen");
    assert_eq!(
        n(["stock", "reserved"]),
        0,
        "{label}: nothing left reserved"
    );
    assert_eq!(
        n(["orders", "pending"]),
        0,
        "{label}: no order left pending"
    );
    let bulk_committed = rest
        .iter()
        .find_map(|l| l.get("bulk"))
        .map_or(0, |b| b["committed"].as_i64().unwrap());
    // ada, carol, and the bundle's phone and case, plus the bulk.
    assert_eq!(
        n(["orders", "paid"]),
        4 + bulk_committed,
        "{label}: one paid order per commit"
    );
    assert_eq!(
        n(["stock", "sold"]),
        4 + bulk_committed,
        "{label}: sold once per commit"
    );
    assert_eq!(
        n(["money", "merchant"]),
        320 + 10 * bulk_committed,
        "{label}: charged once per commit"
    );

    let shop = sled::open(dir.join("shop")).expect("shop opens");
    let calls = shop.open_tree("calls").expect("call log");
    let mut intents: HashMap<String, Vec<(String, &'static str, u64)>> = HashMap::new();
    for item in calls.iter() {
        let (_, v) = item.expect("call log reads");
        let call: Value = serde_json::from_slice(&v).expect("call record is JSON");
        let saga = call["saga_id"].as_str().unwrap_or_default().to_string();
        let log = intents.entry(saga.clone()).or_insert_with(|| {
            let id = SagaId::parse(&saga).expect("call names a saga id");
            let records: Vec<Record> = store
                .read_log(id)
                .unwrap()
                .into_iter()
                .flat_map(|(_, value)| decode_records(&value).expect("log value decodes"))
                .map(|(_, record)| record)
                .collect();
            let Some(Record::SagaStarted(start)) = records.first() else {
                panic!("{label}: participant called for transaction {id} with no start record");
            };
            let names = start.plan.step_names();
            records
                .iter()
                .filter_map(|r| {
                    let (c, phase) = match r {
                        Record::StepStarted(c) => (c, "try"),
                        Record::ConfirmStarted(c) => (c, "confirm"),
                        Record::CompensationStarted(c) => (c, "cancel"),
                        _ => return None,
                    };
                    Some((
                        names[c.step as usize].to_string(),
                        phase,
                        u64::from(c.attempt),
                    ))
                })
                .collect()
        });
        let key = (
            call["step"].as_str().unwrap_or_default().to_string(),
            call["phase"].as_str().unwrap_or_default(),
            call["attempt"].as_u64().unwrap_or(0),
        );
        assert!(
            log.iter()
                .any(|(s, p, a)| (s.as_str(), *p, *a) == (key.0.as_str(), key.1, key.2)),
            "{label}: {key:?} of transaction {saga} was called without an intent record"
        );
    }
}

#[test]
fn seckill_survives_an_abort_at_every_durable_append() {
    let points = every_crash_point_of(Workload::Seckill, "crash-after", "append");
    println!("crash points covered: {points} (seckill TCC, after each durable append)");
    assert!(points >= 10, "the workload should have many append points");
}

#[test]
fn seckill_survives_an_abort_before_every_participant_call() {
    let points = every_crash_point_of(Workload::Seckill, "crash-before-call", "call");
    println!("crash points covered: {points} (seckill TCC, before each participant call)");
    assert!(points >= 10, "the workload should make many calls");
}

#[test]
fn seckill_survives_an_abort_after_every_participant_call() {
    let points = every_crash_point_of(Workload::Seckill, "crash-after-call", "call");
    println!("crash points covered: {points} (seckill TCC, after each participant call)");
    assert!(points >= 10, "the workload should make many calls");
}

/// A tiny seedable generator for kill times (xorshift64).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The random kill loop: a workload of thousands of mixed sagas runs in a
/// child process and is SIGKILLed at random moments, cycle after cycle,
/// then given a final clean run; the same checks as above must hold.
/// `SAGALOG_KILL_CYCLES` (default 50) and `SAGALOG_KILL_SEED` tune it.
#[test]
fn random_kill_loop_loses_nothing_and_does_nothing_twice() {
    kill_loop(Workload::Orders, 50, 2000);
}

/// The orders loop with a 1 ms index lag: the kills land while the
/// watermark moves and sagas get their active-index entries mid-flight.
#[test]
fn random_kill_loop_with_early_indexing_loses_nothing_and_does_nothing_twice() {
    kill_loop(Workload::OrdersIndexedEarly, 25, 2000);
}

/// The same loop over the seckill example: TCC transactions with parallel
/// tries, thousands at once. `SAGALOG_KILL_CYCLES` scales it too.
#[test]
fn random_kill_loop_over_tcc_transactions_loses_nothing_and_does_nothing_twice() {
    kill_loop(Workload::Seckill, 25, 1500);
}

fn kill_loop(workload: Workload, default_cycles: u64, bulk: usize) {
    let cycles: u64 = std::env::var("SAGALOG_KILL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cycles);
    let seed: u64 = std::env::var("SAGALOG_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5a6a_1061);
    let mut rng = Rng(seed | 1);
    let dir = tempfile::tempdir().unwrap();
    let (mut killed, mut finished_early) = (0, 0);
    for _ in 0..cycles {
        let mut child = workload
            .command(dir.path(), bulk)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the orders example starts");
        // Wall-clock kill times are fault injection, not a speed assumption:
        // any moment is a valid moment to die.
        std::thread::sleep(std::time::Duration::from_millis(20 + rng.below(400)));
        match child.try_wait().expect("child status") {
            Some(status) => {
                if !status.success() {
                    let mut stderr = String::new();
                    if let Some(mut pipe) = child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                    }
                    let kept = dir.keep();
                    panic!(
                        "a cycle failed on its own: {status}\n{stderr}\ndata kept in {}",
                        kept.display()
                    );
                }
                finished_early += 1;
            }
            None => {
                child.kill().expect("SIGKILL the child");
                let _ = child.wait();
                killed += 1;
            }
        }
    }
    let last = workload
        .command(dir.path(), bulk)
        .output()
        .expect("the final run starts");
    assert!(
        last.status.success(),
        "the final clean run failed: {}",
        String::from_utf8_lossy(&last.stderr)
    );
    workload.check(
        dir.path(),
        &String::from_utf8_lossy(&last.stdout),
        "after the kill loop",
    );
    println!(
        "kill loop ({}): {cycles} cycles ({killed} SIGKILLed mid-run, {finished_early} finished first), {bulk} bulk + the scenarios, seed {seed:#x}: no violation",
        workload.name()
    );
}

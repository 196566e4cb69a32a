//! The orders example (sagas, every strategy) under crashes: its checks and
//! its crash tests.

use super::harness::{example_binary, kill_loop, survives_every, CrashPoint, Store, Workload};
use super::place::{calls, Log, Place};
use super::*;

/// The example binaries, (re)built by cargo first: `cargo test --test crash`
/// alone does not rebuild examples, and a stale binary would test old code.
fn orders_binary() -> PathBuf {
    example_binary("orders")
}

pub(super) fn orders_command(place: &Place, crash: Option<(&str, u64)>, bulk: usize) -> Command {
    let mut command = Command::new(orders_binary());
    place.args(&mut command);
    command.arg("--json").args(["--scheduled-delay-ms", "200"]);
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

/// Checks the three properties on a data directory after a completed run.
pub(super) fn check(place: &Place, stdout: &str, label: &str) {
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
    let log = Log::open(place);
    assert_eq!(log.active(), 0, "{label}: no saga left active");
    // Every terminal saga is in the finished index (one batch per write,
    // DESIGN.md §4.4), whichever write its crash point fell on.
    let finished = log.finished();
    for line in &sagas {
        let id = SagaId::parse(line["saga_id"].as_str().expect("a saga id")).expect("a saga id");
        assert!(
            finished.contains(&id),
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
    for call in calls(place, "ledger", None, "call/") {
        let call = CallRecord {
            saga_id: call["saga_id"].as_str().unwrap_or_default().to_string(),
            step: call["step"].as_str().unwrap_or_default().to_string(),
            phase: call["phase"].as_str().unwrap_or_default().to_string(),
            attempt: call["attempt"].as_u64().unwrap_or(0),
        };
        let intents = intents.entry(call.saga_id.clone()).or_insert_with(|| {
            let id = SagaId::parse(&call.saga_id).expect("call names a saga id");
            let records = log.records(id);
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
            intents.contains(&(call.step.clone(), call.phase.clone(), call.attempt)),
            "{label}: {}:{}:{} of saga {} was called without an intent record",
            call.step,
            call.phase,
            call.attempt,
            call.saga_id
        );
    }
}

/// The crash points fall between the rewrites of one log value: a
/// saga that runs without a pause writes its whole log as one value,
/// rewritten with each append (DESIGN.md §4.3). Checks that the run did so,
/// so that the crash tests do cover those rewrites.
pub(super) fn assert_grown_in_place(dir: &Path, stdout: &str) {
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
    survives_every(Workload::Orders, CrashPoint::AfterAppend, Store::Sled);
}

#[test]
fn orders_survive_an_abort_before_every_participant_call() {
    survives_every(Workload::Orders, CrashPoint::BeforeCall, Store::Sled);
}

#[test]
fn orders_survive_an_abort_after_every_participant_call() {
    survives_every(Workload::Orders, CrashPoint::AfterCall, Store::Sled);
}

#[test]
fn orders_indexed_early_survive_an_abort_at_every_durable_append() {
    survives_every(
        Workload::OrdersIndexedEarly,
        CrashPoint::AfterAppend,
        Store::Sled,
    );
}

/// The random kill loop: a workload of thousands of mixed sagas runs in a
/// child process and is SIGKILLed at random moments, cycle after cycle,
/// then given a final clean run; the same checks as above must hold.
/// `SAGALOG_KILL_CYCLES` (default 50) and `SAGALOG_KILL_SEED` tune it.
#[test]
fn random_kill_loop_loses_nothing_and_does_nothing_twice() {
    kill_loop(Workload::Orders, 50, 2000, Store::Sled);
}

/// The orders loop with a 1 ms index lag: the kills land while the
/// watermark moves and sagas get their active-index entries mid-flight.
#[test]
fn random_kill_loop_with_early_indexing_loses_nothing_and_does_nothing_twice() {
    kill_loop(Workload::OrdersIndexedEarly, 25, 2000, Store::Sled);
}

/// The log in PostgreSQL, the books in tables beside it: an abort after
/// every durable append (every group commit's transaction) loses nothing
/// and does nothing twice.
#[test]
fn orders_on_postgres_survive_an_abort_at_every_durable_append() {
    survives_every(Workload::Orders, CrashPoint::AfterAppend, Store::Postgres);
}

/// On PostgreSQL, an abort right after each participant call, before its
/// result is durable: the repeat finds the effect's marker in the books.
#[test]
fn orders_on_postgres_survive_an_abort_after_every_participant_call() {
    survives_every(Workload::Orders, CrashPoint::AfterCall, Store::Postgres);
}

/// The random kill loop with the log and the books in PostgreSQL.
#[test]
fn random_kill_loop_on_postgres_loses_nothing_and_does_nothing_twice() {
    kill_loop(Workload::Orders, 25, 2000, Store::Postgres);
}

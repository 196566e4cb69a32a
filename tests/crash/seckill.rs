//! The seckill example (TCC transactions, parallel tries) under crashes: its
//! checks and its crash tests.

use super::harness::{example_binary, kill_loop, survives_every, CrashPoint, Store, Workload};
use super::place::{calls, Log, Place};
use super::*;

pub(super) fn seckill_command(place: &Place, crash: Option<(&str, u64)>, bulk: usize) -> Command {
    let mut command = Command::new(example_binary("seckill"));
    place.args(&mut command);
    command.arg("--json");
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
pub(super) fn check_seckill(place: &Place, stdout: &str, label: &str) {
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
    for (name, field, expected) in [
        ("success", "status", "COMMITTED"),
        ("insufficient-balance", "status", "ROLLED_BACK"),
        ("duplicate-confirm", "guard", "duplicate"),
        ("cancel-before-try", "cancel", "empty_rollback"),
        ("cancel-before-try", "late_try", "rejected"),
        ("crash-recovery", "status", "COMMITTED"),
    ] {
        assert_eq!(scenario(name)[field], expected, "{label}: {name}.{field}");
    }
    assert_eq!(scenario("bundle")["status"], "COMMITTED", "{label}");
    assert_eq!(
        scenario("bundle")["children"],
        2,
        "{label}: one sub-saga per step"
    );
    let log = Log::open(place);
    assert_eq!(log.active(), 0, "{label}: no transaction left active");

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

    let mut intents: HashMap<String, Vec<(String, &'static str, u64)>> = HashMap::new();
    for call in calls(place, "shop", Some("calls"), "") {
        let saga = call["saga_id"].as_str().unwrap_or_default().to_string();
        let intents = intents.entry(saga.clone()).or_insert_with(|| {
            let id = SagaId::parse(&saga).expect("call names a saga id");
            let records = log.records(id);
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
            intents
                .iter()
                .any(|(s, p, a)| (s.as_str(), *p, *a) == (key.0.as_str(), key.1, key.2)),
            "{label}: {key:?} of transaction {saga} was called without an intent record"
        );
    }
}

#[test]
fn seckill_survives_an_abort_at_every_durable_append() {
    survives_every(Workload::Seckill, CrashPoint::AfterAppend, Store::Sled);
}

#[test]
fn seckill_survives_an_abort_before_every_participant_call() {
    survives_every(Workload::Seckill, CrashPoint::BeforeCall, Store::Sled);
}

#[test]
fn seckill_survives_an_abort_after_every_participant_call() {
    survives_every(Workload::Seckill, CrashPoint::AfterCall, Store::Sled);
}

/// The same loop over the seckill example: TCC transactions with parallel
/// tries, thousands at once. `SAGALOG_KILL_CYCLES` scales it too.
#[test]
fn random_kill_loop_over_tcc_transactions_loses_nothing_and_does_nothing_twice() {
    kill_loop(Workload::Seckill, 25, 1500, Store::Sled);
}

/// TCC on PostgreSQL, the participants guarded by the barrier's SQL form in
/// tables beside the log: an abort after every durable append.
#[test]
fn seckill_on_postgres_survives_an_abort_at_every_durable_append() {
    survives_every(Workload::Seckill, CrashPoint::AfterAppend, Store::Postgres);
}

/// On PostgreSQL, an abort right before each participant call (its intent
/// durable): the rerun calls again and the barrier keeps it to one effect.
#[test]
fn seckill_on_postgres_survives_an_abort_before_every_participant_call() {
    survives_every(Workload::Seckill, CrashPoint::BeforeCall, Store::Postgres);
}

/// The TCC kill loop with the log and the barrier in PostgreSQL.
#[test]
fn random_kill_loop_over_tcc_transactions_on_postgres_loses_nothing_and_does_nothing_twice() {
    kill_loop(Workload::Seckill, 25, 1500, Store::Postgres);
}

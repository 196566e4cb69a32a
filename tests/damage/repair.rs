//! `verify` and `repair` after damage.

use super::fixture::*;
use super::*;

#[test]
fn repair_sets_a_damaged_snapshot_aside_and_every_write_is_back() {
    let written = written();
    for snap in snapshots(&written.path) {
        modify(&snap, |bytes| {
            bytes.iter_mut().skip(20).for_each(|b| *b = !*b)
        });
    }
    assert!(SledStore::open(&written.path, SledOptions::default()).is_err());

    let report = repair(&written.path, SledOptions::default()).unwrap();

    assert_eq!(report.outcome, RepairOutcome::Healthy, "{report:?}");
    assert!(!report.set_aside.is_empty());
    assert!(
        report.set_aside.iter().all(|p| p.exists()),
        "kept, not deleted"
    );
    assert!(matches!(reopen(&written), Outcome::FullRecovery));
}

#[test]
fn repair_rebuilds_a_damaged_witness_from_sleds_group_mark() {
    let written = written();
    damage_the_witness(&written);

    let report = repair(&written.path, SledOptions::default()).unwrap();

    assert!(report.witness_rebuilt);
    assert_eq!(report.outcome, RepairOutcome::Healthy);
    assert!(file(&written.path, &format!("{WITNESS}.damaged")).exists());
    assert!(matches!(reopen(&written), Outcome::FullRecovery));
}

#[test]
fn repair_of_lost_writes_salvages_the_readable_sagas_into_a_fresh_database() {
    let written = written_once();
    witness_ahead(&written, 3);
    assert!(matches!(
        reopen(&written),
        Outcome::Refused(StoreError::LostWrites { .. })
    ));

    let report = repair(&written.path, SledOptions::default()).unwrap();

    let RepairOutcome::Salvaged(salvage) = report.outcome else {
        panic!("lost writes cannot be repaired in place: {report:?}");
    };
    assert!(
        salvage.reason.contains("lost acknowledged writes"),
        "{}",
        salvage.reason
    );
    assert!(written.path.join("db").exists(), "the original is kept");
    let copy = SledStore::open(&salvage.into, SledOptions::default()).unwrap();
    let kept = present(&copy, &written);
    assert_eq!(kept, written.acknowledged.len(), "every readable saga");
    println!(
        "repair | lost writes | salvaged {kept} of {} sagas into {}",
        written.acknowledged.len(),
        salvage.into.display()
    );
}

#[test]
fn verify_of_lost_writes_reports_them_first() {
    let written = written_once();
    witness_ahead(&written, 3);
    let store = SledStore::open_for_inspection(&written.path, SledOptions::default()).unwrap();

    let report = sagalog::tools::verify(&store).unwrap();

    assert_eq!(report.problems[0].what, "witness");
    assert!(report.problems[0]
        .error
        .contains("lost acknowledged writes"));
}

#[test]
fn repair_leaves_a_database_that_opens_after_each_kind_of_damage() {
    for (kind, damage) in damage_kinds() {
        let written = written();
        damage(&written);

        let report = repair(&written.path, SledOptions::default())
            .unwrap_or_else(|e| panic!("{kind}: repair failed: {e}"));

        let usable = match &report.outcome {
            RepairOutcome::Healthy => written.path.clone(),
            RepairOutcome::Salvaged(salvage) => salvage.into.clone(),
            other => panic!("{kind}: an outcome this test does not know: {other:?}"),
        };
        let store = SledStore::open(&usable, SledOptions::default())
            .unwrap_or_else(|e| panic!("{kind}: the repaired database does not open: {e}"));
        let kept = present(&store, &written);
        println!(
            "repair | {kind} | {} | {kept} of {} sagas",
            match report.outcome {
                RepairOutcome::Healthy => "in place",
                RepairOutcome::Salvaged(_) => "salvaged",
                _ => "other",
            },
            written.acknowledged.len()
        );
    }
}

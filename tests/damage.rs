//! Damage to sled's files at rest: after each kind, opening either finds
//! every acknowledged write or refuses with a typed error; never silence
//! about lost writes, a panic or a hang.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

use sagalog::store::{LogStore, SagaAppend};
use sagalog::tools::{repair, RepairOutcome};
use sagalog::tools::{WitnessMark as Mark, WITNESS_FILE as WITNESS};
use sagalog::SledOptions;
use sagalog::{SagaId, SledStore, StoreError};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// Groups written, sagas per group, bytes per saga's value: about 3 MiB of
/// log, so sled's log spans several 512 KiB segments.
const GROUPS: usize = 48;
const PER_GROUP: usize = 64;
const VALUE: usize = 1024;

/// A database with `GROUPS` acknowledged group commits, closed, opened
/// again and closed (as any restart does, which makes sled write a
/// snapshot).
fn written() -> Written {
    let written = written_once();
    drop(SledStore::open(&written.path, SledOptions::default()).unwrap());
    written
}

/// A database with `GROUPS` acknowledged group commits, closed: the log
/// was never replayed, and there is no snapshot.
struct Written {
    _dir: tempfile::TempDir,
    path: PathBuf,
    acknowledged: Vec<(SagaId, Vec<u8>)>,
}

fn value_of(saga: SagaId) -> Vec<u8> {
    let seed = saga.to_bytes();
    (0..VALUE).map(|i| seed[i % 16] ^ (i as u8)).collect()
}

fn written_once() -> Written {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let store = SledStore::open(&path, SledOptions::default()).unwrap();
    let mut acknowledged = Vec::new();
    for _ in 0..GROUPS {
        let appends: Vec<SagaAppend> = (0..PER_GROUP)
            .map(|_| {
                let saga = SagaId::new();
                SagaAppend::records(saga, 0, vec![value_of(saga)])
            })
            .collect();
        let batch: Vec<&SagaAppend> = appends.iter().collect();
        store.append(&batch, None).unwrap();
        acknowledged.extend(appends.iter().map(|a| (a.saga, value_of(a.saga))));
    }
    drop(store);
    Written {
        _dir: dir,
        path,
        acknowledged,
    }
}

/// How an open of a damaged database ended.
#[derive(Debug)]
enum Outcome {
    /// It opened and every acknowledged write is there.
    FullRecovery,
    /// It refused with this typed error.
    Refused(StoreError),
}

/// Opens `written` on another thread (a hang fails the test), and checks
/// every acknowledged write if it opens.
fn reopen(written: &Written) -> Outcome {
    let (tx, rx) = mpsc::channel();
    let path = written.path.clone();
    let acknowledged = written.acknowledged.clone();
    std::thread::spawn(move || {
        let result = std::panic::catch_unwind(|| {
            let store = match SledStore::open(&path, SledOptions::default()) {
                Ok(store) => store,
                Err(e) => return Ok(Outcome::Refused(e)),
            };
            let mut missing = 0;
            for (saga, value) in &acknowledged {
                match store.read_log(*saga) {
                    Ok(values) if values == [(0, value.clone())] => {}
                    Ok(_) => missing += 1,
                    Err(e) => return Err(format!("a read after a clean open failed: {e}")),
                }
            }
            if missing > 0 {
                return Err(format!(
                    "opened silently with {missing} of {} acknowledged writes missing",
                    acknowledged.len()
                ));
            }
            Ok(Outcome::FullRecovery)
        });
        let _ = tx.send(result);
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(Ok(outcome))) => outcome,
        Ok(Ok(Err(silent))) => panic!("{silent}"),
        Ok(Err(_)) => panic!("opening the damaged database panicked"),
        Err(_) => panic!("opening the damaged database hung"),
    }
}

fn is_typed_refusal(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Refused(StoreError::LostWrites { .. } | StoreError::Damaged { .. })
    )
}

fn file(path: &Path, name: &str) -> PathBuf {
    path.join(name)
}

fn snapshots(path: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("snap."))
        })
        .collect()
}

fn modify(path: &Path, change: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    change(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

fn zero_a_block(w: &Written) {
    modify(&file(&w.path, "db"), |bytes| {
        let at = (bytes.len() / 2) & !4095;
        bytes[at..at + 4096].fill(0);
    })
}

fn flip_bytes(w: &Written) {
    modify(&file(&w.path, "db"), |bytes| {
        let len = bytes.len();
        for i in 0..16 {
            bytes[len / 3 + i * 7919] ^= 0xA5;
        }
    })
}

fn flip_a_bit_in_the_oldest_segment(w: &Written) {
    modify(&file(&w.path, "db"), |bytes| bytes[100_000] ^= 0x08)
}

fn damage_the_snapshots(w: &Written) {
    for snap in snapshots(&w.path) {
        modify(&snap, |bytes| {
            let at = bytes.len() / 2;
            bytes[at] ^= 0xFF;
        });
    }
}

fn damage_conf(w: &Written) {
    modify(&file(&w.path, "conf"), |bytes| {
        let at = bytes.len() / 2;
        bytes[at] ^= 0xFF;
    })
}

fn damage_the_witness(w: &Written) {
    modify(&file(&w.path, WITNESS), |bytes| bytes[35] ^= 1)
}

/// Prints the outcome as one row of the damage table.
fn report(kind: &str, outcome: &Outcome) {
    let said = match outcome {
        Outcome::FullRecovery => "full recovery".to_string(),
        Outcome::Refused(e) => format!("refused: {e}"),
    };
    println!("damage | {kind} | {said}");
}

#[test]
fn a_zeroed_block_in_the_log_ends_in_full_recovery_or_a_typed_refusal() {
    let written = written();
    zero_a_block(&written);
    let outcome = reopen(&written);
    report("zeroed 4 KiB block mid-log", &outcome);
    assert!(
        matches!(outcome, Outcome::FullRecovery) || is_typed_refusal(&outcome),
        "{outcome:?}"
    );
}

#[test]
fn flipped_bytes_in_the_log_end_in_full_recovery_or_a_typed_refusal() {
    let written = written();
    flip_bytes(&written);
    let outcome = reopen(&written);
    report("16 flipped bytes", &outcome);
    assert!(
        matches!(outcome, Outcome::FullRecovery) || is_typed_refusal(&outcome),
        "{outcome:?}"
    );
}

#[test]
fn a_flipped_bit_in_the_oldest_segment_ends_in_full_recovery_or_a_typed_refusal() {
    let written = written();
    flip_a_bit_in_the_oldest_segment(&written);
    let outcome = reopen(&written);
    report("one flipped bit in the oldest segment", &outcome);
    assert!(
        matches!(outcome, Outcome::FullRecovery) || is_typed_refusal(&outcome),
        "{outcome:?}"
    );
}

fn cut_short(written: &Written) {
    let db = file(&written.path, "db");
    let len = std::fs::metadata(&db).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(len - 64 * 1024)
        .unwrap();
}

#[test]
fn a_truncated_newest_segment_after_a_restart_ends_in_full_recovery_or_a_typed_refusal() {
    let written = written();
    cut_short(&written);
    let outcome = reopen(&written);
    report(
        "newest segment cut short by 64 KiB, after a restart",
        &outcome,
    );
    assert!(
        matches!(outcome, Outcome::FullRecovery) || is_typed_refusal(&outcome),
        "{outcome:?}"
    );
}

#[test]
fn a_truncated_newest_segment_ends_in_a_typed_refusal() {
    let written = written_once();
    cut_short(&written);
    let outcome = reopen(&written);
    report("newest segment cut short by 64 KiB", &outcome);
    // Most often LostWrites (sled drops the cut groups); sometimes sled
    // panics on the cut page instead (Damaged).
    assert!(is_typed_refusal(&outcome), "{outcome:?}");
}

/// Makes the witness claim `extra` more acknowledged groups than sled
/// holds: what the witness sees after sled silently dropped them.
fn witness_ahead(written: &Written, extra: u64) {
    modify(&file(&written.path, WITNESS), |bytes| {
        let mark = Mark::decode(bytes).unwrap();
        let ahead = Mark {
            group: mark.group + extra,
            ..mark
        };
        *bytes = ahead.encode().to_vec();
    })
}

#[test]
fn acknowledged_groups_sled_no_longer_holds_are_refused_as_lost_writes_with_their_count() {
    let written = written_once();
    witness_ahead(&written, 3);

    let outcome = reopen(&written);

    let Outcome::Refused(StoreError::LostWrites {
        acknowledged,
        found,
        ..
    }) = &outcome
    else {
        panic!("{outcome:?}");
    };
    assert_eq!(acknowledged - found, 3);
    let Outcome::Refused(error) = &outcome else {
        unreachable!()
    };
    assert!(
        error.to_string().contains("3 group commit(s) are missing"),
        "{error}"
    );
}

#[test]
fn a_damaged_snapshot_ends_in_full_recovery_or_a_typed_refusal() {
    let written = written();
    assert!(
        !snapshots(&written.path).is_empty(),
        "sled wrote a snapshot"
    );
    damage_the_snapshots(&written);
    let outcome = reopen(&written);
    report("a damaged snap.* file", &outcome);
    assert!(
        matches!(outcome, Outcome::FullRecovery) || is_typed_refusal(&outcome),
        "{outcome:?}"
    );
}

#[test]
fn a_deleted_snapshot_ends_in_full_recovery() {
    let written = written();
    for snap in snapshots(&written.path) {
        std::fs::remove_file(snap).unwrap();
    }
    let outcome = reopen(&written);
    report("every snap.* file deleted", &outcome);
    assert!(matches!(outcome, Outcome::FullRecovery), "{outcome:?}");
}

#[test]
fn a_damaged_conf_ends_in_full_recovery_or_a_typed_refusal() {
    let written = written();
    damage_conf(&written);
    let outcome = reopen(&written);
    report("a damaged conf file", &outcome);
    assert!(
        matches!(outcome, Outcome::FullRecovery) || is_typed_refusal(&outcome),
        "{outcome:?}"
    );
}

#[test]
fn a_damaged_witness_is_refused_as_damage() {
    let written = written();
    damage_the_witness(&written);
    let outcome = reopen(&written);
    report("a damaged witness file", &outcome);
    assert!(
        matches!(&outcome, Outcome::Refused(StoreError::Damaged { detail, .. }) if detail.contains("witness")),
        "{outcome:?}"
    );
}

#[test]
fn a_deleted_witness_is_refused_as_damage() {
    let written = written();
    std::fs::remove_file(file(&written.path, WITNESS)).unwrap();
    let outcome = reopen(&written);
    report("the witness file deleted", &outcome);
    assert!(
        matches!(&outcome, Outcome::Refused(StoreError::Damaged { detail, .. }) if detail.contains("witness")),
        "{outcome:?}"
    );
}

/// Every acknowledged write `store` still holds.
fn present(store: &SledStore, written: &Written) -> usize {
    written
        .acknowledged
        .iter()
        .filter(|(saga, value)| {
            store
                .read_log(*saga)
                .is_ok_and(|values| values == [(0, value.clone())])
        })
        .count()
}

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

/// A kind of damage, by name, and how to apply it.
type Damage = (&'static str, fn(&Written));

/// Each kind of damage to sled's files, applied to `written`.
fn damage_kinds() -> Vec<Damage> {
    vec![
        ("zeroed 4 KiB block mid-log", zero_a_block),
        ("16 flipped bytes", flip_bytes),
        (
            "a flipped bit in the oldest segment",
            flip_a_bit_in_the_oldest_segment,
        ),
        ("the newest segment cut short", cut_short),
        ("a damaged snapshot", damage_the_snapshots),
        ("a damaged conf", damage_conf),
        ("a damaged witness", damage_the_witness),
    ]
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

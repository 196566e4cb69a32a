//! Each kind of damage ends in full recovery or a typed refusal.

use super::fixture::*;
use super::*;

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

//! What every `LogStore` does, each behaviour one function over any store.

use sagalog::store::{
    Claim, IndexEntry, IndexSet, IndexUpdate, KeyClaim, LogStore, Refusal, Removal, SagaAppend,
    TimerKey,
};
use sagalog::tools::{encode_index_entry, encode_record};
use sagalog::{
    CallRef, IdempotencyKey, Record, SagaId, SagaStatus, SagaType, UnixMillis, WaitPurpose,
};
use std::collections::HashSet;

/// `n` record frames, as a saga loop writes them (intents of attempts
/// `first`, `first + 1`, ...).
fn frames(first: u32, n: u32) -> Vec<Vec<u8>> {
    (first..first + n)
        .map(|attempt| {
            encode_record(
                UnixMillis(1_000 + u64::from(attempt)),
                &Record::StepStarted(CallRef { step: 0, attempt }),
            )
            .unwrap()
        })
        .collect()
}

fn entry(status: SagaStatus, next_wake: Option<UnixMillis>) -> Vec<u8> {
    encode_index_entry(&IndexEntry {
        saga_type: SagaType::new("conformance"),
        status,
        started_at: UnixMillis(1_000),
        next_wake,
        changed_at: UnixMillis(2_000),
        pending: None,
    })
    .unwrap()
}

/// A new saga's first append: `n` records and its active entry.
pub fn start(saga: SagaId, n: u32) -> SagaAppend {
    let mut append = SagaAppend::records(saga, 0, frames(0, n));
    append.index = Some(IndexUpdate {
        entry: entry(SagaStatus::Running, None),
        from: None,
        to: IndexSet::Active,
    });
    append
}

/// A later append of `n` records at `seq`, moving the saga to `status`.
fn moving(saga: SagaId, seq: u64, n: u32, status: SagaStatus) -> SagaAppend {
    let mut append = SagaAppend::records(saga, seq, frames(seq as u32, n));
    append.index = Some(IndexUpdate {
        entry: entry(status, None),
        from: Some(IndexSet::Active),
        to: if status.is_terminal() {
            IndexSet::Finished
        } else {
            IndexSet::Active
        },
    });
    append
}

/// `append` claiming `key` with `fingerprint`.
pub fn keyed(mut append: SagaAppend, key: &str, fingerprint: u64) -> SagaAppend {
    append.claim = Some(Claim {
        key: IdempotencyKey::from(key),
        fingerprint,
    });
    append
}

/// Writes `appends` as one batch and checks that none was refused.
async fn write(store: &dyn LogStore, appends: &[SagaAppend]) {
    let batch: Vec<&SagaAppend> = appends.iter().collect();
    let committed = store.append(&batch).await.unwrap();
    assert_eq!(committed.refused, Vec::new(), "nothing refused");
}

/// Saga ids in creation order.
pub fn ids(n: usize) -> Vec<SagaId> {
    let mut ids: Vec<SagaId> = (0..n).map(|_| SagaId::new()).collect();
    ids.sort();
    ids
}

fn seqs(log: &[(u64, Vec<u8>)]) -> Vec<u64> {
    log.iter().map(|(seq, _)| *seq).collect()
}

pub async fn an_unknown_saga_has_an_empty_log(store: &dyn LogStore) {
    assert_eq!(store.read_log(SagaId::new()).await.unwrap(), Vec::new());
    assert_eq!(store.read_active(SagaId::new()).await.unwrap(), None);
}

pub async fn appends_read_back_in_sequence_order(store: &dyn LogStore) {
    let saga = SagaId::new();
    write(store, &[start(saga, 2)]).await;
    write(store, &[moving(saga, 2, 3, SagaStatus::Running)]).await;
    write(store, &[moving(saga, 5, 1, SagaStatus::Running)]).await;

    let log = store.read_log(saga).await.unwrap();

    assert_eq!(seqs(&log), [0, 2, 5]);
    assert_eq!(log[1].1, frames(2, 3).concat(), "the frames, byte for byte");
}

pub async fn a_batch_writes_every_saga_it_holds(store: &dyn LogStore) {
    let sagas = ids(3);
    let appends: Vec<SagaAppend> = sagas.iter().map(|s| start(*s, 1)).collect();

    write(store, &appends).await;

    for saga in sagas {
        assert_eq!(seqs(&store.read_log(saga).await.unwrap()), [0]);
        assert!(store.read_active(saga).await.unwrap().is_some());
    }
}

pub async fn a_taken_key_is_refused_with_its_owner_and_the_rest_is_written(store: &dyn LogStore) {
    let [first, second, other] = ids(3)[..] else {
        unreachable!()
    };
    write(store, &[keyed(start(first, 1), "order-7", 11)]).await;
    let (again, plain) = (keyed(start(second, 1), "order-7", 22), start(other, 1));

    let committed = store.append(&[&again, &plain]).await.unwrap();

    let owner = KeyClaim {
        saga: first,
        fingerprint: Some(11),
    };
    assert_eq!(committed.refused, [(0, Refusal::KeyTaken(owner))]);
    assert_eq!(store.read_log(second).await.unwrap(), Vec::new());
    assert_eq!(store.read_active(second).await.unwrap(), None);
    assert_eq!(seqs(&store.read_log(other).await.unwrap()), [0]);
    let key = IdempotencyKey::from("order-7");
    assert_eq!(store.key_claim(&key).await.unwrap(), Some(owner));
}

pub async fn the_active_entry_follows_the_status(store: &dyn LogStore) {
    let saga = SagaId::new();
    write(store, &[start(saga, 1)]).await;
    assert!(store.read_active(saga).await.unwrap().is_some());

    write(store, &[moving(saga, 1, 1, SagaStatus::Committed)]).await;

    assert_eq!(store.read_active(saga).await.unwrap(), None);
    let finished = store.scan_finished().await.unwrap();
    assert_eq!(
        finished,
        [(saga, entry(SagaStatus::Committed, None))],
        "listed as finished, with its last entry"
    );
    assert_eq!(store.scan_active(None, 10).await.unwrap(), Vec::new());
}

pub async fn active_sagas_page_in_id_order(store: &dyn LogStore) {
    let sagas = ids(5);
    let appends: Vec<SagaAppend> = sagas.iter().rev().map(|s| start(*s, 1)).collect();
    write(store, &appends).await;

    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = store.scan_active(after, 2).await.unwrap();
        let Some((last, _)) = page.last() else { break };
        after = Some(*last);
        pages.push(page.iter().map(|(id, _)| *id).collect::<Vec<_>>());
    }

    assert_eq!(pages, [&sagas[0..2], &sagas[2..4], &sagas[4..5]]);
}

fn sleeping(saga: SagaId, seq: u64, due: u64) -> (SagaAppend, TimerKey) {
    let mut append = SagaAppend::records(saga, seq, frames(seq as u32, 1));
    append.index = Some(IndexUpdate {
        entry: entry(SagaStatus::Running, Some(UnixMillis(due))),
        from: None,
        to: IndexSet::Active,
    });
    let key = TimerKey {
        due: UnixMillis(due),
        saga,
        seq,
    };
    let purpose = encode_index_entry(&WaitPurpose::RetryBackoff {
        step: 0,
        attempt: 2,
    })
    .unwrap();
    append.timer_put = Some((key, purpose));
    (append, key)
}

pub async fn timers_come_in_due_order_leaving_out_skipped_sagas(store: &dyn LogStore) {
    let [a, b, c] = ids(3)[..] else {
        unreachable!()
    };
    let (late, late_key) = sleeping(a, 0, 9_000);
    let (skipped, _) = sleeping(b, 0, 5_000);
    let (early, early_key) = sleeping(c, 0, 1_000);
    write(store, &[late, skipped, early]).await;

    let skip = HashSet::from([b]);
    let (timers, complete) = store.scan_timers(10, &skip).await.unwrap();

    let keys: Vec<TimerKey> = timers.iter().map(|(key, _)| *key).collect();
    assert_eq!(keys, [early_key, late_key]);
    assert!(complete);
}

pub async fn a_timer_scan_says_when_it_was_cut_short(store: &dyn LogStore) {
    let [a, b] = ids(2)[..] else { unreachable!() };
    let (first, first_key) = sleeping(a, 0, 1_000);
    let (second, _) = sleeping(b, 0, 2_000);
    write(store, &[first, second]).await;

    let (timers, complete) = store.scan_timers(1, &HashSet::new()).await.unwrap();

    assert_eq!(timers.len(), 1);
    assert_eq!(timers[0].0, first_key);
    assert!(!complete);
}

pub async fn a_deleted_timer_is_gone(store: &dyn LogStore) {
    let saga = SagaId::new();
    let (asleep, key) = sleeping(saga, 0, 1_000);
    write(store, &[asleep]).await;
    let mut woken = moving(saga, 1, 1, SagaStatus::Running);
    woken.timer_delete = Some(key);

    write(store, &[woken]).await;

    let (timers, complete) = store.scan_timers(10, &HashSet::new()).await.unwrap();
    assert_eq!(timers, Vec::new());
    assert!(complete);
}

/// Writes a keyed saga that starts and commits, in two batches.
pub async fn finished_with_key(store: &dyn LogStore, saga: SagaId, key: &str) {
    write(store, &[keyed(start(saga, 1), key, 1)]).await;
    write(store, &[moving(saga, 1, 1, SagaStatus::Committed)]).await;
}

pub async fn retention_removes_a_finished_saga_with_its_key(store: &dyn LogStore) {
    let saga = SagaId::new();
    finished_with_key(store, saga, "done-1").await;
    let key = IdempotencyKey::from("done-1");

    let removed = store
        .remove_finished(&[Removal {
            saga,
            idempotency_key: Some(key.clone()),
            batches: Vec::new(),
        }])
        .await
        .unwrap();

    assert_eq!(removed.sagas, 1);
    assert_eq!(store.read_log(saga).await.unwrap(), Vec::new());
    assert_eq!(store.key_claim(&key).await.unwrap(), None);
    assert_eq!(store.scan_finished().await.unwrap(), Vec::new());
}

pub async fn retention_leaves_a_saga_that_is_not_terminal(store: &dyn LogStore) {
    let saga = SagaId::new();
    write(store, &[keyed(start(saga, 1), "running-1", 1)]).await;
    let key = IdempotencyKey::from("running-1");

    let removed = store
        .remove_finished(&[Removal {
            saga,
            idempotency_key: Some(key.clone()),
            batches: Vec::new(),
        }])
        .await
        .unwrap();

    assert_eq!(removed.sagas, 0);
    assert_eq!(seqs(&store.read_log(saga).await.unwrap()), [0]);
    assert!(store.read_active(saga).await.unwrap().is_some());
    assert!(store.key_claim(&key).await.unwrap().is_some());
}

pub async fn a_store_of_readable_sagas_verifies_clean(store: &dyn LogStore) {
    let [running, done] = ids(2)[..] else {
        unreachable!()
    };
    write(store, &[start(running, 2)]).await;
    finished_with_key(store, done, "clean-1").await;

    let report = store.verify().await.unwrap();

    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.log_values, 3);
}

pub async fn a_damaged_value_is_reported_by_verify(store: &dyn LogStore) {
    let saga = SagaId::new();
    write(store, &[start(saga, 1)]).await;
    let mut damaged = frames(1, 1).concat();
    let last = damaged.len() - 1;
    damaged[last] ^= 0xff;
    write(store, &[SagaAppend::records(saga, 1, vec![damaged])]).await;

    let report = store.verify().await.unwrap();

    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].saga, Some(saga));
    assert_eq!(report.problems[0].what, "log");
}

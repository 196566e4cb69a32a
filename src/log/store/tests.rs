use super::kv::Kv;
use super::*;

use std::sync::Arc;

fn append_value(store: &SledStore, saga: SagaId, seq: u64) -> Result<(), StoreError> {
    let append = SagaAppend::records(saga, seq, vec![vec![7; 16]]);
    KvLogStore::append(store, &[&append], None).map(|_| ())
}

/// An append that extends `last` (the saga's durable value at seq 0)
/// with `added`, as a saga loop builds it.
fn extending(saga: SagaId, last: &[u8], first_seq: u64, added: &[u8]) -> SagaAppend {
    let mut append = SagaAppend::records(saga, first_seq, Vec::new());
    append.value = LogValue {
        seq: 0,
        bytes: [last, added].concat(),
    };
    append.added_from = last.len();
    append
}

#[test]
fn an_append_that_extends_a_value_rewrites_it_whole_under_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
    let (fresh, grown) = (SagaId::new(), SagaId::new());
    let new_value = SagaAppend::records(fresh, 4, vec![vec![1; 300], vec![4; 2]]);
    let extended = extending(grown, &[3; 7], 2, &[2; 5]);
    assert_eq!(extended.added(), [2; 5]);
    KvLogStore::append(&store, &[&new_value, &extended], None).unwrap();
    let mut expected = vec![1; 300];
    expected.extend([4; 2]);
    assert_eq!(store.kv.get(&keys::log(fresh, 4)).unwrap(), Some(expected));
    let mut expected = vec![3; 7];
    expected.extend([2; 5]);
    assert_eq!(store.kv.get(&keys::log(grown, 0)).unwrap(), Some(expected));
    assert_eq!(store.kv.get(&keys::log(grown, 2)).unwrap(), None);
}

#[test]
fn an_append_without_records_writes_no_log_value() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
    let saga = SagaId::new();
    let append = SagaAppend::records(saga, 0, Vec::new());
    assert!(!append.writes_log_value());
    KvLogStore::append(&store, &[&append], None).unwrap();
    assert_eq!(KvLogStore::read_log(&store, saga).unwrap(), Vec::new());
}

#[test]
fn a_failed_append_reports_only_the_frames_it_adds() {
    use crate::log::codec::encode_record;
    use crate::log::record::{CallRef, Record};
    let frame = |step| {
        encode_record(
            UnixMillis(1),
            &Record::StepStarted(CallRef { step, attempt: 1 }),
        )
        .unwrap()
    };
    let store = MemStore::new();
    store.fail_append(1, FaultTiming::BeforeApply);
    let saga = SagaId::new();
    let added = [frame(1), frame(2)].concat();
    let append = extending(saga, &frame(0), 5, &added);
    assert!(KvLogStore::append(&store, &[&append], None).is_err());
    let failed = store.failed_appends();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].first_seq, 5);
    assert_eq!(failed[0].records, [frame(1), frame(2)]);
}

#[test]
fn a_failed_sync_refuses_every_later_write_until_the_store_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let saga = SagaId::new();
    let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
    append_value(&store, saga, 0).unwrap();

    store
        .kv
        .sync
        .fail_next
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let failed = append_value(&store, saga, 1).unwrap_err();
    assert!(
        matches!(&failed, StoreError::NotDurable { context, source }
            if context == "fdatasync" && source.to_string().contains("injected")),
        "{failed}"
    );
    // The next sync would succeed; the store must refuse the write anyway.
    let refused = append_value(&store, saga, 2).unwrap_err();
    assert!(
        matches!(&refused, StoreError::WritesRefused { first } if first.starts_with("fdatasync")),
        "{refused}"
    );
    let seqs: Vec<u64> = KvLogStore::read_log(&store, saga)
        .unwrap()
        .iter()
        .map(|v| v.0)
        .collect();
    assert_eq!(seqs, [0, 1], "the refused write was not applied");
    drop(store);

    let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
    append_value(&store, saga, 2).unwrap();
    let seqs: Vec<u64> = KvLogStore::read_log(&store, saga)
        .unwrap()
        .iter()
        .map(|v| v.0)
        .collect();
    assert_eq!(seqs, [0, 1, 2]);
}

#[test]
fn a_failed_flush_refuses_every_later_write_as_a_failed_sync_does() {
    let dir = tempfile::tempdir().unwrap();
    let saga = SagaId::new();
    let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
    store
        .kv
        .sync
        .fail_flush_next
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let failed = append_value(&store, saga, 0).unwrap_err();
    assert!(
        matches!(&failed, StoreError::NotDurable { context, .. } if context == "sled's flush"),
        "{failed}"
    );
    let refused = append_value(&store, saga, 1).unwrap_err();
    assert!(
        matches!(&refused, StoreError::WritesRefused { first } if first.starts_with("sled's flush")),
        "{refused}"
    );
    assert!(matches!(
        KvLogStore::writable(&store),
        Err(StoreError::WritesRefused { .. })
    ));
}

#[test]
fn a_sled_append_reports_the_time_of_its_flush_and_its_sync() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
    let append = SagaAppend::records(SagaId::new(), 0, vec![vec![7; 16]]);

    let times = KvLogStore::append(&store, &[&append], None).unwrap();

    // Both are system calls on a real file: neither takes no time.
    assert!(times.flush > Duration::ZERO, "{times:?}");
    assert!(times.sync > Duration::ZERO, "{times:?}");
}

#[test]
fn a_memory_append_reports_no_flush_and_no_sync() {
    let store = MemStore::new();
    let append = SagaAppend::records(SagaId::new(), 0, vec![vec![7; 16]]);

    let times = KvLogStore::append(&store, &[&append], None).unwrap();

    assert_eq!((times.flush, times.sync), (Duration::ZERO, Duration::ZERO));
}

#[test]
fn an_io_failure_keeps_the_operating_systems_error_as_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let Err(error) = SledStore::open(file.join("db"), SledOptions::default()) else {
        panic!("a database under a regular file cannot be opened");
    };
    assert!(matches!(error, StoreError::Io { .. }), "{error}");
    let kind = error.io_error().map(std::io::Error::kind);
    assert_eq!(kind, Some(std::io::ErrorKind::NotADirectory));
    let source = std::error::Error::source(&error).expect("an I/O error has a source");
    assert!(source.downcast_ref::<Arc<std::io::Error>>().is_some());
}

//! Raw sled doing sagalog's durable write on the same disk: the baselines
//! every figure is compared with (docs/BENCHMARKS.md, "Method").

use crate::*;

/// Raw sled in `dir`, opened as sagalog opens it (no background flush)
/// with a `cache_mb` cache, and its log file, for the `fdatasync`s.
pub(crate) fn raw_sled(dir: &Path, cache_mb: u64) -> (sled::Db, std::fs::File) {
    let db = sled::Config::new()
        .path(dir)
        .flush_every_ms(None)
        .cache_capacity(cache_mb * 1024 * 1024)
        .open()
        .expect("baseline database opens");
    let log_file = std::fs::File::open(dir.join("db")).expect("baseline log file opens");
    (db, log_file)
}

/// Raw sled: atomic batches of `batch` values of `value_size` bytes, each
/// flushed, for about `entries` values or 3 s. Returns entries per second.
///
/// With `sync`, each flush is followed by `fdatasync` of sled's log file,
/// which is what sagalog's store does to make a write durable (sled's own
/// flush uses `sync_file_range`; DESIGN.md §4.1), so the ratio compares equal
/// durability.
pub(crate) fn sled_baseline(
    dir: &Path,
    value_size: usize,
    batch: usize,
    entries: u64,
    sync: bool,
) -> f64 {
    let (db, log_file) = raw_sled(dir, 64);
    let value = vec![0xA5u8; value_size.max(1)];
    let batch = batch.max(1);
    let began = Instant::now();
    let mut written: u64 = 0;
    let mut key: u64 = 0;
    while written < entries.max(1) && began.elapsed() < Duration::from_secs(3) {
        let mut b = sled::Batch::default();
        for _ in 0..batch {
            let mut k = [0u8; 25];
            k[0] = b'L';
            k[17..25].copy_from_slice(&key.to_be_bytes());
            b.insert(&k[..], &value[..]);
            key += 1;
        }
        db.apply_batch(b).expect("baseline batch");
        db.flush().expect("baseline flush");
        if sync {
            log_file.sync_data().expect("baseline fdatasync");
        }
        written += batch as u64;
    }
    written as f64 / began.elapsed().as_secs_f64()
}

/// Bytes of one saga's item in a finished batch: its 16-byte id and the
/// index entry frame of a committed saga of type `bench`, encoded as the
/// store encodes it (DESIGN.md §3.3, §4.4).
pub(crate) fn finished_item_bytes() -> usize {
    let now = sagalog::UnixMillis::now();
    let entry = sagalog::store::IndexEntry {
        saga_type: sagalog::SagaType::new("bench"),
        status: sagalog::SagaStatus::Committed,
        started_at: now,
        next_wake: None,
        changed_at: now,
        pending: None,
    };
    let frame = sagalog::tools::encode_index_entry(&entry).expect("an index entry encodes");
    16 + frame.len()
}

/// Raw sled writing sagalog's layout, without the engine: each saga's log
/// key is new in one group and rewritten in each of the next `steps`
/// groups (DESIGN.md §4.3), and each group adds one finished batch (§4.4).
/// Values are `value_size` bytes; a group holds `batch` values (the
/// finished batch included), as in the run being compared. Each group is
/// flushed and `fdatasync`ed. Runs for about `sagas` sagas or 3 s. Its
/// sagas per second are what any engine could get from this layout, on
/// this disk, at this group size, right now, with the machine to itself.
pub(crate) fn sled_layout_baseline(
    dir: &Path,
    value_size: usize,
    batch: usize,
    steps: usize,
    sagas: u64,
) -> LayoutBaseline {
    // sagalog's own cache size.
    let (db, log_file) = raw_sled(dir, 32);
    let stages = steps as u64 + 1;
    let per_group = (batch.saturating_sub(1) as u64 / stages).max(1);
    let values = stage_values(value_size, stages);
    let finished = vec![0x5Au8; per_group as usize * finished_item_bytes()];
    let key = |prefix: u8, id: u64| {
        let mut k = [0u8; 25];
        k[0] = prefix;
        k[1..9].copy_from_slice(&id.to_be_bytes());
        k
    };
    let mut out = LayoutBaseline::default();
    let began = Instant::now();
    let mut entered: u64 = 0;
    let mut group: u64 = 0;
    while entered < sagas.max(1) && began.elapsed() < Duration::from_secs(3) {
        // Timed from here, as sagalog's store times its `apply`: building
        // the batch (sled copies every key and value) is part of it.
        let t0 = Instant::now();
        let mut b = sled::Batch::default();
        // The sagas that entered `stage` groups ago write their next value.
        for stage in 0..stages.min(group + 1) {
            let first = entered - stage * per_group;
            for id in first..first + per_group {
                b.insert(&key(b'L', id)[..], &values[stage as usize][..]);
            }
        }
        b.insert(&key(b'F', group)[..], &finished[..]);
        db.apply_batch(b).expect("layout baseline batch");
        let t1 = Instant::now();
        db.flush().expect("layout baseline flush");
        let t2 = Instant::now();
        log_file.sync_data().expect("layout baseline fdatasync");
        out.group_apply_ms += (t1 - t0).as_secs_f64() * 1000.0;
        out.group_flush_ms += (t2 - t1).as_secs_f64() * 1000.0;
        out.group_sync_ms += t2.elapsed().as_secs_f64() * 1000.0;
        entered += per_group;
        group += 1;
    }
    // Sagas finished: every one that has written all its values.
    let finished = entered.saturating_sub((stages - 1) * per_group);
    out.sagas_per_sec = finished as f64 / began.elapsed().as_secs_f64();
    let groups = group.max(1) as f64;
    out.group_apply_ms /= groups;
    out.group_flush_ms /= groups;
    out.group_sync_ms /= groups;
    out
}

/// The value each stage of [`sled_layout_baseline`] writes: `value_size`
/// bytes, with different contents in each stage. sled skips a put whose
/// value equals the one stored (`Tree::insert_inner` returns early on a
/// no-op set), so rewriting a key with the same bytes would cost it
/// nothing, while sagalog's rewrite of a log value always adds records.
pub(crate) fn stage_values(value_size: usize, stages: u64) -> Vec<Vec<u8>> {
    (0..stages)
        .map(|stage| vec![0xA5u8.wrapping_add(stage as u8); value_size.max(1)])
        .collect()
}

/// What [`sled_layout_baseline`] measured: its throughput, and the mean
/// time of each part of its durable writes, comparable with the run's
/// `group_apply_ms`, `group_flush_ms` and `group_sync_ms`.
#[derive(Default)]
pub(crate) struct LayoutBaseline {
    pub(crate) sagas_per_sec: f64,
    pub(crate) group_apply_ms: f64,
    pub(crate) group_flush_ms: f64,
    pub(crate) group_sync_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stage_of_the_layout_baseline_rewrites_its_key_with_different_bytes() {
        let values = stage_values(212, 4);
        assert_eq!(values.len(), 4);
        for pair in values.windows(2) {
            assert_eq!(pair[0].len(), 212);
            assert_ne!(pair[0], pair[1], "sled would skip this rewrite as a no-op");
        }
    }
}

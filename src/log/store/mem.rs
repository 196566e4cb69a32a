//! The in-memory store, with injectable append faults for tests.

use super::durability::{record_failed_sync, refused_after_failed_sync};
use super::kv::{batch_ops, Kv, KvBacked, KvOp, Pairs, Visitor};
use super::{SagaAppend, StoreError, WriteTimes};
use crate::ids::SagaId;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

// ---------------------------------------------------------------- memory

/// When an injected append fault strikes relative to the write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultTiming {
    /// The append fails and nothing is written.
    BeforeApply,
    /// The batch is written, then the append reports failure (as a flush
    /// that failed after the data reached the disk).
    AfterApply,
    /// The batch is written, then its sync fails, and from then on the
    /// store refuses every write, as a [`SledStore`] does after a failed
    /// flush or `fdatasync` ([`LogStore::writable`]). [`MemStore::clear_faults`]
    /// stands for reopening it. Never drawn by [`MemStore::fail_randomly`].
    FailedSync,
}

#[derive(Default)]
pub(super) struct MemKv {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemKv {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        crate::sync::lock(&self.map)
    }

    fn scan_prefix_from(&self, prefix: &[u8], start: &[u8]) -> Result<Pairs, StoreError> {
        Ok(self
            .lock()
            .range(start.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

impl Kv for MemKv {
    fn apply_durably(&self, ops: Vec<KvOp>) -> Result<WriteTimes, StoreError> {
        let began = Instant::now();
        let mut map = self.lock();
        for op in ops {
            match op {
                KvOp::Put(k, v) => {
                    map.insert(k.to_vec(), v.to_vec());
                }
                KvOp::Delete(k) => {
                    map.remove(k.as_ref());
                }
            }
        }
        // Nothing to flush or sync: memory is all there is.
        Ok(WriteTimes {
            apply: began.elapsed(),
            ..WriteTimes::default()
        })
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().get(key).cloned())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, StoreError> {
        self.scan_prefix_from(prefix, prefix)
    }

    fn for_each_prefix_from(
        &self,
        prefix: &[u8],
        start: &[u8],
        visit: Visitor<'_>,
    ) -> Result<(), StoreError> {
        // Copy out first: `visit` must not run under the map's lock.
        for (k, v) in self.scan_prefix_from(prefix, start)? {
            if !visit(&k, &v)? {
                break;
            }
        }
        Ok(())
    }
}

/// An append that an injected fault made fail: which saga, which records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedAppend {
    /// The saga the append was for.
    pub saga: SagaId,
    /// Sequence number of its first record.
    pub first_seq: u64,
    /// The record frames it held (decode with `codec::decode_record`).
    pub records: Vec<Vec<u8>>,
    /// Whether the records were written before the failure was reported.
    pub timing: FaultTiming,
}

#[derive(Default)]
struct Faults {
    /// Fail this append (counted from 1 over the store's life).
    at: Option<(u64, FaultTiming)>,
    /// Fail each append with this chance (per mille), drawn from this state.
    random: Option<(u64, u32)>,
    failed: Vec<FailedAppend>,
    /// Set by a `FailedSync` fault: what the failed sync reported.
    refusing: Option<String>,
}

/// An in-memory store with the same keyspace and atomicity as
/// [`SledStore`](crate::SledStore), for tests: share one `Arc<MemStore>`
/// between two engines to simulate a restart. With the `testing` feature,
/// append failures can be injected at a chosen append or at random with a
/// seed. Nothing survives the process.
#[derive(Default)]
pub struct MemStore {
    kv: MemKv,
    appends: AtomicU64,
    faults: Mutex<Faults>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        crate::sync::lock(&self.faults)
    }

    #[cfg(feature = "testing")]
    /// Makes the `number`-th call to `append` from now on (counting from 1
    /// over the store's life) fail, at the given timing. Replaces any
    /// earlier fixed fault.
    pub fn fail_append(&self, number: u64, timing: FaultTiming) {
        self.faults().at = Some((number, timing));
    }

    #[cfg(feature = "testing")]
    /// Makes each append fail with a chance of `per_mille` / 1000, before or
    /// after applying (chosen at random too), from a generator seeded with
    /// `seed`: the same seed and the same appends give the same faults.
    pub fn fail_randomly(&self, seed: u64, per_mille: u32) {
        self.faults().random = Some((seed | 1, per_mille.min(1000)));
    }

    #[cfg(feature = "testing")]
    /// Stops injecting faults, and takes writes again after a
    /// [`FaultTiming::FailedSync`] (as reopening a store would).
    pub fn clear_faults(&self) {
        let mut faults = self.faults();
        faults.at = None;
        faults.random = None;
        faults.refusing = None;
    }

    #[cfg(feature = "testing")]
    /// Every append an injected fault made fail, in order.
    pub fn failed_appends(&self) -> Vec<FailedAppend> {
        self.faults().failed.clone()
    }

    #[cfg(feature = "testing")]
    /// How many times `append` has been called.
    pub fn append_count(&self) -> u64 {
        self.appends.load(Ordering::SeqCst)
    }

    #[cfg(feature = "testing")]
    /// Overwrites one raw value, bypassing the codec (fault injection).
    pub fn overwrite_raw(&self, key: &[u8], value: &[u8]) {
        self.kv.lock().insert(key.to_vec(), value.to_vec());
    }

    fn next_fault(&self, number: u64) -> Option<FaultTiming> {
        let mut faults = self.faults();
        if let Some((at, timing)) = faults.at {
            if at == number {
                return Some(timing);
            }
        }
        let (state, per_mille) = faults.random?;
        // xorshift64: a small, seedable, good-enough generator.
        let mut x = state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        faults.random = Some((x, per_mille));
        if (x % 1000) as u32 >= per_mille {
            return None;
        }
        Some(if (x >> 32) & 1 == 0 {
            FaultTiming::BeforeApply
        } else {
            FaultTiming::AfterApply
        })
    }
}

impl KvBacked for MemStore {
    type Kv = MemKv;

    fn kv(&self) -> &MemKv {
        &self.kv
    }

    fn finding(&self) -> Option<StoreError> {
        None
    }

    fn writable_now(&self) -> Result<(), StoreError> {
        match &self.faults().refusing {
            None => Ok(()),
            Some(first) => Err(refused_after_failed_sync(first)),
        }
    }

    fn append_batch(
        &self,
        batch: &[&SagaAppend],
        watermark: Option<SagaId>,
    ) -> Result<WriteTimes, StoreError> {
        self.writable_now()?;
        let number = self.appends.fetch_add(1, Ordering::SeqCst) + 1;
        let timing = self.next_fault(number);
        let record_failure = |timing: FaultTiming| {
            let mut faults = self.faults();
            for append in batch {
                faults.failed.push(FailedAppend {
                    saga: append.saga,
                    first_seq: append.first_seq,
                    records: crate::log::codec::frames_of(append.added())
                        .into_iter()
                        .map(<[u8]>::to_vec)
                        .collect(),
                    timing,
                });
            }
        };
        if timing == Some(FaultTiming::BeforeApply) {
            record_failure(FaultTiming::BeforeApply);
            return Err(StoreError::Injected(format!(
                "append #{number} failed before applying"
            )));
        }
        let times = self.kv.apply_durably(batch_ops(batch, watermark))?;
        if timing == Some(FaultTiming::AfterApply) {
            record_failure(FaultTiming::AfterApply);
            return Err(StoreError::Injected(format!(
                "append #{number} failed after applying"
            )));
        }
        if timing == Some(FaultTiming::FailedSync) {
            record_failure(FaultTiming::FailedSync);
            let e =
                std::io::Error::other(format!("injected write-back failure at append #{number}"));
            return Err(record_failed_sync(
                &mut self.faults().refusing,
                "fdatasync",
                e,
            ));
        }
        Ok(times)
    }
}

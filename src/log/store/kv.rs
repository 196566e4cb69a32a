//! Everything a store built on one ordered key-value map does the same way
//! whatever the map: the write batch of a group, the scans, retention, and
//! the [`LogStore`] implementation shared by sled and memory.

use super::keys;
use super::{
    FinishedBatch, IndexSet, KeyClaim, KvLogStore, Removal, Removed, SagaAppend, StoreError,
    TimerScan, WriteTimes,
};
use crate::ids::{IdempotencyKey, SagaId};
use std::collections::BTreeMap;

fn read_active<K: Kv>(kv: &K, saga: SagaId) -> Result<Option<Vec<u8>>, StoreError> {
    kv.get(&keys::index(keys::ACTIVE, saga))
}

fn scan_finished_batches<K: Kv>(kv: &K, from: SagaId) -> Result<Vec<FinishedBatch>, StoreError> {
    let mut batches = Vec::new();
    for_each_index_from(kv, keys::FINISHED, from, &mut |id, value| {
        let (items, damage) = batch_items(value);
        batches.push(FinishedBatch { id, items, damage });
        true
    })?;
    Ok(batches)
}

/// A finished batch's items, owned, and the damage that ended them.
fn batch_items(value: &[u8]) -> (BatchItems, Option<crate::log::codec::DecodeError>) {
    let (items, damage) = crate::log::codec::split_finished_batch(value);
    let items = items
        .into_iter()
        .map(|(saga, entry)| (saga, entry.to_vec()))
        .collect();
    (items, damage)
}

fn scan_finished<K: Kv>(kv: &K) -> Result<Vec<(SagaId, Vec<u8>)>, StoreError> {
    let mut active = std::collections::HashSet::new();
    for_each_index(kv, keys::ACTIVE, &mut |id, _| {
        active.insert(id);
        true
    })?;
    // Batches come in the order they were written: a later item of a saga
    // (finished again after an operator reopened it) replaces an earlier one.
    let mut latest = BTreeMap::new();
    for batch in scan_finished_batches(kv, SagaId::from_bytes([0; 16]))? {
        for (saga, entry) in batch.items {
            if !active.contains(&saga) {
                latest.insert(saga, entry);
            }
        }
    }
    Ok(latest.into_iter().collect())
}

fn scan_timers<K: Kv>(
    kv: &K,
    limit: usize,
    skip: &mut dyn FnMut(SagaId) -> bool,
) -> Result<TimerScan, StoreError> {
    let mut out = Vec::new();
    let mut complete = true;
    kv.for_each_prefix(&[keys::TIMER], &mut |key, value| {
        let Some(timer) = keys::parse_timer(key) else {
            return Err(StoreError::Corrupt {
                key: key.to_vec(),
                reason: "timer key is not 'T' + due + saga id + seq".into(),
            });
        };
        if skip(timer.saga) {
            return Ok(true);
        }
        if out.len() >= limit {
            complete = false;
            return Ok(false);
        }
        out.push((timer, value.to_vec()));
        Ok(true)
    })?;
    Ok((out, complete))
}

/// One write in an atomic batch, in sled's own byte type: a write's keys
/// and values are copied once, from the bytes they are built in, instead of
/// into a `Vec` first and then again by sled.
pub(super) enum KvOp {
    Put(sled::IVec, sled::IVec),
    Delete(sled::IVec),
}

impl KvOp {
    pub(super) fn put(key: &[u8], value: &[u8]) -> Self {
        KvOp::Put(key.into(), value.into())
    }

    pub(super) fn delete(key: &[u8]) -> Self {
        KvOp::Delete(key.into())
    }
}

/// Key-value pairs in key order.
pub(super) type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// The items of a finished batch: each saga with its encoded entry.
pub type BatchItems = Vec<(SagaId, Vec<u8>)>;

/// A visitor of key-value pairs; returning `Ok(false)` stops the visit.
pub(super) type Visitor<'a> = &'a mut dyn FnMut(&[u8], &[u8]) -> Result<bool, StoreError>;

/// The ordered key-value operations the generic store needs.
pub(super) trait Kv: Send + Sync + 'static {
    fn apply_durably(&self, ops: Vec<KvOp>) -> Result<WriteTimes, StoreError>;
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Visits keys with `prefix` in order until `visit` returns false.
    fn for_each_prefix(&self, prefix: &[u8], visit: Visitor<'_>) -> Result<(), StoreError> {
        self.for_each_prefix_from(prefix, prefix, visit)
    }
    /// Like `for_each_prefix`, starting at the first key `>= start`.
    fn for_each_prefix_from(
        &self,
        prefix: &[u8],
        start: &[u8],
        visit: Visitor<'_>,
    ) -> Result<(), StoreError>;
    /// Every pair with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, StoreError> {
        let mut pairs = Vec::new();
        self.for_each_prefix(prefix, &mut |k, v| {
            pairs.push((k.to_vec(), v.to_vec()));
            Ok(true)
        })?;
        Ok(pairs)
    }
}

pub(super) fn batch_ops(batch: &[&SagaAppend], watermark: Option<SagaId>) -> Vec<KvOp> {
    let mut ops = Vec::with_capacity(batch.iter().map(|a| a.entry_count() + 1).sum::<usize>() + 1);
    if let Some(mark) = watermark {
        ops.push(KvOp::put(keys::WATERMARK, &mark.to_bytes()));
    }
    // One finished batch for the whole write (DESIGN.md §4.4).
    let mut finished = Vec::new();
    for append in batch {
        if append.writes_log_value() {
            // One value per append: its frames back to back, keyed by the
            // sequence number of the first; or the saga's last value
            // rewritten with the frames added (DESIGN.md §4.3). The saga's
            // loop built it whole; sled copies it once, into its own.
            let value = &append.value;
            ops.push(KvOp::put(&keys::log(append.saga, value.seq), &value.bytes));
        }
        if let Some(update) = &append.index {
            // A finished saga's item stays in its batch when an operator
            // reopens it: the active entry hides it, and the next finish
            // writes a newer one.
            if update.from == Some(IndexSet::Active) && update.to != IndexSet::Active {
                ops.push(KvOp::delete(&keys::index(keys::ACTIVE, append.saga)));
            }
            match update.to {
                IndexSet::Active => ops.push(KvOp::put(
                    &keys::index(keys::ACTIVE, append.saga),
                    &update.entry,
                )),
                IndexSet::Finished => {
                    crate::log::codec::push_finished_item(&mut finished, append.saga, &update.entry)
                }
            }
        }
        if let Some(key) = &append.timer_delete {
            ops.push(KvOp::delete(&keys::timer(key)));
        }
        if let Some((key, purpose)) = &append.timer_put {
            ops.push(KvOp::put(&keys::timer(key), purpose));
        }
        if let Some(claim) = &append.claim {
            let mut value = [0; 24];
            value[..16].copy_from_slice(&append.saga.to_bytes());
            value[16..].copy_from_slice(&claim.fingerprint.to_le_bytes());
            ops.push(KvOp::put(&keys::idempotency(&claim.key), &value));
        }
    }
    if !finished.is_empty() {
        // A fresh UUIDv7: batches sort in the order they were written.
        ops.push(KvOp::put(
            &keys::index(keys::FINISHED, SagaId::new()),
            &finished,
        ));
    }
    ops
}

fn scan_index<K: Kv>(kv: &K, prefix: u8) -> Result<Vec<(SagaId, Vec<u8>)>, StoreError> {
    let mut pairs = Vec::new();
    for_each_index(kv, prefix, &mut |id, value| {
        pairs.push((id, value.to_vec()));
        true
    })?;
    Ok(pairs)
}

fn for_each_index<K: Kv>(
    kv: &K,
    prefix: u8,
    visit: &mut dyn FnMut(SagaId, &[u8]) -> bool,
) -> Result<(), StoreError> {
    for_each_index_from(kv, prefix, SagaId::from_bytes([0; 16]), visit)
}

/// Like `for_each_index`, from the first key at or above `from`.
fn for_each_index_from<K: Kv>(
    kv: &K,
    prefix: u8,
    from: SagaId,
    visit: &mut dyn FnMut(SagaId, &[u8]) -> bool,
) -> Result<(), StoreError> {
    let start = keys::index(prefix, from);
    kv.for_each_prefix_from(
        &[prefix],
        &start,
        &mut |key, value| match keys::saga_id(key, 1) {
            Some(id) if key.len() == keys::INDEX_KEY_LEN => Ok(visit(id, value)),
            _ => Err(StoreError::Corrupt {
                key: key.to_vec(),
                reason: "index key is not a prefix byte followed by a 16-byte saga id".into(),
            }),
        },
    )
}

/// The saga id and sequence number of a log key; a damaged key is an error.
fn parse_log_key(key: &[u8]) -> Result<(SagaId, u64), StoreError> {
    let seq = key.get(17..25).and_then(|b| <[u8; 8]>::try_from(b).ok());
    match (keys::saga_id(key, 1), seq) {
        (Some(id), Some(seq)) if key.len() == keys::LOG_KEY_LEN => {
            Ok((id, u64::from_be_bytes(seq)))
        }
        _ => Err(StoreError::Corrupt {
            key: key.to_vec(),
            reason: "log key is not 'L' + 16-byte saga id + 8-byte sequence".into(),
        }),
    }
}

fn read_log<K: Kv>(kv: &K, saga: SagaId) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    kv.scan_prefix(&keys::log_prefix(saga))?
        .into_iter()
        .map(|(key, value)| parse_log_key(&key).map(|(_, seq)| (seq, value)))
        .collect()
}

/// The saga id stored as the value of `key`, if there is one. `what` names
/// the value in the error, `advice` ends it.
fn read_saga_id<K: Kv>(
    kv: &K,
    key: Vec<u8>,
    what: &str,
    advice: &str,
) -> Result<Option<SagaId>, StoreError> {
    match kv.get(&key)? {
        None => Ok(None),
        Some(value) => match <[u8; 16]>::try_from(value.as_slice()) {
            Ok(bytes) => Ok(Some(SagaId::from_bytes(bytes))),
            Err(_) => Err(StoreError::Corrupt {
                reason: format!(
                    "{what} is {} bytes, expected a 16-byte saga id{advice}",
                    value.len()
                ),
                key,
            }),
        },
    }
}

fn watermark<K: Kv>(kv: &K) -> Result<Option<SagaId>, StoreError> {
    read_saga_id(
        kv,
        keys::WATERMARK.to_vec(),
        "the index watermark",
        "; run `sagalog verify`",
    )
}

fn sagas_logged_from<K: Kv>(kv: &K, from: SagaId) -> Result<Vec<SagaId>, StoreError> {
    let mut sagas: Vec<SagaId> = Vec::new();
    kv.for_each_prefix_from(&[keys::LOG], &keys::log_prefix(from), &mut |key, _| {
        let (id, _) = parse_log_key(key)?;
        if sagas.last() != Some(&id) {
            sagas.push(id);
        }
        Ok(true)
    })?;
    Ok(sagas)
}

fn remove_finished<K: Kv>(kv: &K, sagas: &[Removal]) -> Result<Removed, StoreError> {
    // The batches the removals name, as stored now (`None`: damaged).
    let mut batches: BTreeMap<SagaId, Option<BatchItems>> = BTreeMap::new();
    for batch in sagas.iter().flat_map(|r| r.batches.iter()) {
        if batches.contains_key(batch) {
            continue;
        }
        let items =
            kv.get(&keys::index(keys::FINISHED, *batch))?
                .and_then(|value| match batch_items(&value) {
                    (items, None) => Some(items),
                    // Never rewrite a damaged batch: that would lose its tail.
                    (_, Some(_)) => None,
                });
        batches.insert(*batch, items);
    }
    let mut ops = Vec::new();
    let mut removed = Removed::default();
    let mut gone = std::collections::HashSet::new();
    for removal in sagas {
        let saga = removal.saga;
        if kv.get(&keys::index(keys::ACTIVE, saga))?.is_some() {
            continue;
        }
        let listed = |batch: &SagaId| {
            batches
                .get(batch)
                .and_then(|items| items.as_ref())
                .map(|items| items.iter().any(|(s, _)| *s == saga))
        };
        let named: Vec<Option<bool>> = removal.batches.iter().map(listed).collect();
        // Every batch must be readable, and at least one must name it.
        if named.iter().any(Option::is_none) || !named.contains(&Some(true)) {
            continue;
        }
        let before = ops.len();
        kv.for_each_prefix(&keys::log_prefix(saga), &mut |key, _| {
            ops.push(KvOp::delete(key));
            Ok(true)
        })?;
        if let Some(key) = &removal.idempotency_key {
            if key_owner(kv, key)? == Some(saga) {
                ops.push(KvOp::delete(&keys::idempotency(key)));
            }
        }
        gone.insert(saga);
        removed.sagas += 1;
        removed.keys += (ops.len() - before) as u64;
    }
    for (batch, items) in batches {
        let Some(items) = items else { continue };
        let kept: Vec<&(SagaId, Vec<u8>)> = items
            .iter()
            .filter(|(saga, _)| !gone.contains(saga))
            .collect();
        if kept.len() == items.len() {
            continue;
        }
        let key = keys::index(keys::FINISHED, batch);
        if kept.is_empty() {
            ops.push(KvOp::delete(&key));
            removed.keys += 1;
        } else {
            let mut value = Vec::new();
            for (saga, entry) in kept {
                crate::log::codec::push_finished_item(&mut value, *saga, entry);
            }
            ops.push(KvOp::put(&key, &value));
        }
    }
    if !ops.is_empty() {
        kv.apply_durably(ops)?;
    }
    Ok(removed)
}

/// The raw visit of [`KvLogStore::for_each_raw_salvaging`]. After an error
/// it restarts past the last key read (or past where the failed attempt
/// started) at ever coarser steps: past that saga's log, then past ids
/// sharing its first 8, 4 and 1 bytes, then past its keyspace. A read
/// that keeps failing ends the visit once every step is tried.
fn for_each_raw_salvaging<K: Kv>(
    kv: &K,
    visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    unreadable: &mut dyn FnMut(Option<&[u8]>, StoreError),
) {
    /// Lengths of the key prefixes to step past, finest first.
    const STEPS: [usize; 5] = [17, 9, 5, 2, 1];
    let mut start: Vec<u8> = Vec::new();
    let mut last: Option<Vec<u8>> = None;
    let mut step = 0;
    loop {
        let mut read_any = false;
        let result = kv.for_each_prefix_from(&[], &start, &mut |key, value| {
            read_any = true;
            last = Some(key.to_vec());
            Ok(visit(key, value))
        });
        let Err(e) = result else { return };
        if read_any || step == 0 {
            unreadable(last.as_deref(), e);
        }
        step = if read_any { 0 } else { step + 1 };
        let anchor = match (&last, read_any) {
            (Some(key), true) => key.clone(),
            _ => start.clone(),
        };
        let next = STEPS
            .iter()
            .skip(step)
            .filter_map(|len| past_prefix(&anchor, *len))
            .find(|candidate| *candidate > start);
        match next {
            Some(next) => start = next,
            None => return,
        }
    }
}

/// The smallest key above every key that shares `key`'s first `len` bytes
/// (`None` if there is none, or `key` is shorter).
fn past_prefix(key: &[u8], len: usize) -> Option<Vec<u8>> {
    let mut prefix = key.get(..len)?.to_vec();
    while let Some(byte) = prefix.pop() {
        if byte < u8::MAX {
            prefix.push(byte + 1);
            return Some(prefix);
        }
    }
    None
}

fn key_owner<K: Kv>(kv: &K, key: &IdempotencyKey) -> Result<Option<SagaId>, StoreError> {
    Ok(key_claim(kv, key)?.map(|claim| claim.saga))
}

/// An idempotency value: the saga id (16 bytes), then the fingerprint of
/// its start (u64 LE) unless the claim was stored without one.
fn key_claim<K: Kv>(kv: &K, key: &IdempotencyKey) -> Result<Option<KeyClaim>, StoreError> {
    let raw = keys::idempotency(key);
    let Some(value) = kv.get(&raw)? else {
        return Ok(None);
    };
    parse_key_claim(&value).map(Some).ok_or_else(|| StoreError::Corrupt {
        key: raw,
        reason: format!(
            "idempotency index value is {} bytes, expected a 16-byte saga id and an optional 8-byte fingerprint",
            value.len()
        ),
    })
}

/// Decodes an idempotency value (see `key_claim`).
pub(crate) fn parse_key_claim(value: &[u8]) -> Option<KeyClaim> {
    let saga = SagaId::from_bytes(value.get(..16)?.try_into().ok()?);
    let fingerprint = match value.len() {
        16 => None,
        24 => Some(u64::from_le_bytes(value[16..24].try_into().ok()?)),
        _ => return None,
    };
    Some(KeyClaim { saga, fingerprint })
}

/// A log store made of one ordered key-value map: everything but the write
/// and the store's own state is the same generic code over [`Kv`], so sled
/// and memory stores differ only in how a batch becomes durable.
pub(super) trait KvBacked: Send + Sync + 'static {
    /// The map.
    type Kv: Kv;
    /// The map the reads go to.
    fn kv(&self) -> &Self::Kv;
    /// Writes one group durably (see [`KvLogStore::append`]).
    fn append_batch(
        &self,
        batch: &[&SagaAppend],
        watermark: Option<SagaId>,
    ) -> Result<WriteTimes, StoreError>;
    /// Whether writes are accepted now (see [`KvLogStore::writable`]).
    fn writable_now(&self) -> Result<(), StoreError>;
    /// What opening found and did not refuse (see [`KvLogStore::open_finding`]).
    fn finding(&self) -> Option<StoreError>;
}

impl<S: KvBacked> KvLogStore for S {
    fn append(
        &self,
        batch: &[&SagaAppend],
        watermark: Option<SagaId>,
    ) -> Result<WriteTimes, StoreError> {
        self.append_batch(batch, watermark)
    }
    fn watermark(&self) -> Result<Option<SagaId>, StoreError> {
        watermark(self.kv())
    }
    fn sagas_logged_from(&self, from: SagaId) -> Result<Vec<SagaId>, StoreError> {
        sagas_logged_from(self.kv(), from)
    }
    fn read_log(&self, saga: SagaId) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        read_log(self.kv(), saga)
    }
    fn scan_active(&self) -> Result<Vec<(SagaId, Vec<u8>)>, StoreError> {
        scan_index(self.kv(), keys::ACTIVE)
    }
    fn for_each_active(
        &self,
        from: SagaId,
        visit: &mut dyn FnMut(SagaId, &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        for_each_index_from(self.kv(), keys::ACTIVE, from, visit)
    }
    fn scan_finished(&self) -> Result<Vec<(SagaId, Vec<u8>)>, StoreError> {
        scan_finished(self.kv())
    }
    fn scan_finished_batches(&self, from: SagaId) -> Result<Vec<FinishedBatch>, StoreError> {
        scan_finished_batches(self.kv(), from)
    }
    fn key_claim(&self, key: &IdempotencyKey) -> Result<Option<KeyClaim>, StoreError> {
        key_claim(self.kv(), key)
    }
    fn read_active(&self, saga: SagaId) -> Result<Option<Vec<u8>>, StoreError> {
        read_active(self.kv(), saga)
    }
    fn scan_timers(
        &self,
        limit: usize,
        skip: &mut dyn FnMut(SagaId) -> bool,
    ) -> Result<TimerScan, StoreError> {
        scan_timers(self.kv(), limit, skip)
    }
    fn for_each_raw(&self, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), StoreError> {
        self.kv().for_each_prefix(&[], &mut |k, v| Ok(visit(k, v)))
    }
    fn for_each_raw_salvaging(
        &self,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
        unreadable: &mut dyn FnMut(Option<&[u8]>, StoreError),
    ) -> Result<(), StoreError> {
        for_each_raw_salvaging(self.kv(), visit, unreadable);
        Ok(())
    }
    fn open_finding(&self) -> Option<StoreError> {
        self.finding()
    }
    fn remove_finished(&self, sagas: &[Removal]) -> Result<Removed, StoreError> {
        remove_finished(self.kv(), sagas)
    }
    fn writable(&self) -> Result<(), StoreError> {
        self.writable_now()
    }
}

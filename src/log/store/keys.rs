//! The keyspace: how each kind of value is keyed in the ordered map (the
//! table is in the module docs of `log::store`).

use crate::ids::{IdempotencyKey, SagaId};

/// Bytes in a log key: prefix, saga id, sequence.
pub const LOG_KEY_LEN: usize = 25;
/// Bytes in an index key: prefix, saga id.
pub const INDEX_KEY_LEN: usize = 17;
/// Bytes in a timer key: prefix, due time, saga id, sequence.
pub const TIMER_KEY_LEN: usize = 33;

pub const LOG: u8 = b'L';
pub const ACTIVE: u8 = b'A';
pub const FINISHED: u8 = b'F';
pub const IDEMPOTENCY: u8 = b'K';
pub const TIMER: u8 = b'T';

pub const FORMAT: &[u8] = b"Mformat";
pub const WATERMARK: &[u8] = b"Mwatermark";
pub const GROUP: &[u8] = b"Mgroup";

/// Keys that belong to one database and are never copied into another
/// (the format marker and the group mark).
pub fn is_metadata(key: &[u8]) -> bool {
    key == FORMAT || key == GROUP
}

// The keys a write puts are arrays: sled copies a key into a value of
// its own anyway, so a `Vec` would be one more allocation per key on
// the writer's thread.
pub fn log(saga: SagaId, seq: u64) -> [u8; LOG_KEY_LEN] {
    let mut key = [0; LOG_KEY_LEN];
    key[0] = LOG;
    key[1..17].copy_from_slice(&saga.to_bytes());
    key[17..].copy_from_slice(&seq.to_be_bytes());
    key
}

pub fn log_prefix(saga: SagaId) -> Vec<u8> {
    let mut key = Vec::with_capacity(17);
    key.push(LOG);
    key.extend_from_slice(&saga.to_bytes());
    key
}

pub fn index(prefix: u8, saga: SagaId) -> [u8; INDEX_KEY_LEN] {
    let mut key = [0; INDEX_KEY_LEN];
    key[0] = prefix;
    key[1..].copy_from_slice(&saga.to_bytes());
    key
}

pub fn timer(key: &super::TimerKey) -> [u8; TIMER_KEY_LEN] {
    let mut out = [0; TIMER_KEY_LEN];
    out[0] = TIMER;
    out[1..9].copy_from_slice(&key.due.0.to_be_bytes());
    out[9..25].copy_from_slice(&key.saga.to_bytes());
    out[25..].copy_from_slice(&key.seq.to_be_bytes());
    out
}

pub fn parse_timer(key: &[u8]) -> Option<super::TimerKey> {
    if key.len() != TIMER_KEY_LEN || key[0] != TIMER {
        return None;
    }
    let due = u64::from_be_bytes(key[1..9].try_into().ok()?);
    let saga = SagaId::from_bytes(key[9..25].try_into().ok()?);
    let seq = u64::from_be_bytes(key[25..33].try_into().ok()?);
    Some(super::TimerKey {
        due: crate::ids::UnixMillis(due),
        saga,
        seq,
    })
}

pub fn idempotency(key: &IdempotencyKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + key.as_str().len());
    out.push(IDEMPOTENCY);
    out.extend_from_slice(key.as_str().as_bytes());
    out
}

pub fn saga_id(key: &[u8], at: usize) -> Option<SagaId> {
    let bytes: [u8; 16] = key.get(at..at + 16)?.try_into().ok()?;
    Some(SagaId::from_bytes(bytes))
}

#[cfg(feature = "testing")]
/// Public names of the keyspace, for tests and tools that must address raw
/// values (fault injection, the `verify` command).
pub mod raw_keys {
    use crate::ids::SagaId;

    /// The key of the log value whose first record is `seq` of `saga`'s log.
    pub fn log_key(saga: SagaId, seq: u64) -> Vec<u8> {
        super::log(saga, seq).to_vec()
    }
}

//! Bytes <-> records. The only module that knows about crc32 and bincode, so
//! that either can be swapped without touching the rest.
//!
//! Frame layout (all integers big-endian; see DESIGN.md, "On-disk format"):
//!
//! ```text
//! offset size field
//!      0    2 magic            b"SG"
//!      2    1 format version   1
//!      3    1 kind             record kind (1..=14, 32) or 0x80 (index entry)
//!      4    4 payload length   <= MAX_PAYLOAD
//!      8    4 crc32            IEEE, over bytes 0..8 then the payload
//!     12    n payload          bincode 2 (standard config: varint, little-endian)
//! ```
//!
//! The payload of a log record is the pair `(at_millis, body)`; the body's
//! type is chosen by the kind byte. Decoding checks each field before it
//! trusts the next, and every way bytes can be wrong is a [`DecodeError`]
//! variant. Nothing here panics on any input; the fuzz target holds it to that.

use crate::ids::{SagaId, UnixMillis};
use crate::log::record::{
    CallFailed, CallRef, CallSucceeded, Decided, Finished, OperatorAction, Record, SagaStarted,
    Suspended, TimerSet,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// First two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"SG";
/// The only frame format this build reads and writes.
pub const FORMAT_VERSION: u8 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 12;
/// Largest payload accepted, checked before anything is decoded: 1 MiB.
/// The limit counts encoded bytes, on encode and decode alike.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Largest encoded step output: the payload limit less room for the rest of
/// the record that carries it (`StepSucceeded`: the call's step and attempt
/// and the output's length), so that an output that is accepted can always
/// be written.
pub const MAX_OUTPUT: usize = MAX_PAYLOAD - 64;
/// How much memory bincode may claim while decoding one payload of at most
/// [`MAX_PAYLOAD`] bytes. Only a guard against a length prefix that claims
/// more elements than any valid payload holds: it counts in-memory size
/// (a `Vec<u64>` of 200,000 small numbers is about 200 KB encoded and
/// 1.6 MB in memory), so it is far above the encoded limit.
const DECODE_MEMORY_LIMIT: usize = 64 * MAX_PAYLOAD;
/// Kind byte of an index entry (active / finished index values).
pub const KIND_INDEX_ENTRY: u8 = 0x80;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<DECODE_MEMORY_LIMIT>,
>;

fn config() -> Config {
    bincode::config::standard().with_limit::<DECODE_MEMORY_LIMIT>()
}

/// A value could not be turned into bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded value is larger than the frame allows.
    #[error("encoded value is {len} bytes, over the {max}-byte limit; keep saga inputs and step outputs small and store large data elsewhere, passing a reference")]
    TooLarge {
        /// Encoded size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value's `Serialize` implementation failed.
    #[error("could not encode value: {0}; check the type's Serialize implementation")]
    Serialize(String),
}

/// Every way a frame or payload can be wrong. Each message says what was
/// found and what was expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than a header.
    #[error("frame truncated: {len} bytes, a header needs {HEADER_LEN}")]
    Truncated {
        /// Bytes present.
        len: usize,
    },
    /// The first two bytes are not the magic.
    #[error("bad magic {found:02x?}, expected {MAGIC:02x?}: these bytes are not a sagalog record")]
    BadMagic {
        /// The bytes found.
        found: [u8; 2],
    },
    /// A format version this build does not know.
    #[error("unknown format version {found}, this build reads version {FORMAT_VERSION}; open the store with the sagalog release that wrote it")]
    UnknownVersion {
        /// The version found.
        found: u8,
    },
    /// The declared payload length is over the limit (checked before use).
    #[error("declared payload length {len} is over the {max}-byte limit")]
    LengthOverLimit {
        /// Declared length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The declared payload length disagrees with the bytes present.
    #[error("declared payload length {declared} but {actual} payload bytes are present (truncated or extended value)")]
    LengthMismatch {
        /// Declared length.
        declared: usize,
        /// Actual length.
        actual: usize,
    },
    /// The checksum does not match: the bytes changed after they were written.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}; the record was damaged after it was written")]
    ChecksumMismatch {
        /// The crc32 in the header.
        stored: u32,
        /// The crc32 of the bytes.
        computed: u32,
    },
    /// The kind byte names no known record (with a valid checksum: written
    /// by a newer release).
    #[error("unknown record kind {found}; this build knows kinds 1..=14, 32 and {KIND_INDEX_ENTRY:#x}; open the store with the release that wrote it")]
    UnknownKind {
        /// The kind found.
        found: u8,
    },
    /// The payload is not a valid encoding of its kind's body.
    #[error("malformed payload: {reason}")]
    Malformed {
        /// What bincode reported.
        reason: String,
    },
    /// The payload decoded but left bytes unread.
    #[error("payload has {count} trailing bytes after a complete value")]
    TrailingBytes {
        /// Unread bytes.
        count: usize,
    },
}

/// Encodes a user value (saga input, step output) for storage inside a record.
pub fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, EncodeError> {
    // Encoding is unlimited so the error can report the real size; the limit
    // is enforced on the result here and again, before any allocation, when
    // decoding.
    let bytes = bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| EncodeError::Serialize(e.to_string()))?;
    if bytes.len() > MAX_PAYLOAD {
        return Err(EncodeError::TooLarge {
            len: bytes.len(),
            max: MAX_PAYLOAD,
        });
    }
    Ok(bytes)
}

/// Encodes a step output: like [`encode_value`], with the limit
/// [`MAX_OUTPUT`], so that the record that carries it always fits.
pub fn encode_output<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let bytes = encode_value(value)?;
    if bytes.len() > MAX_OUTPUT {
        return Err(EncodeError::TooLarge {
            len: bytes.len(),
            max: MAX_OUTPUT,
        });
    }
    Ok(bytes)
}

/// Decodes a value written by [`encode_value`], rejecting trailing bytes.
pub fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_PAYLOAD {
        return Err(DecodeError::LengthOverLimit {
            len: bytes.len(),
            max: MAX_PAYLOAD,
        });
    }
    let (value, used) =
        bincode::serde::decode_from_slice::<T, _>(bytes, config()).map_err(|e| {
            DecodeError::Malformed {
                reason: e.to_string(),
            }
        })?;
    if used != bytes.len() {
        return Err(DecodeError::TrailingBytes {
            count: bytes.len() - used,
        });
    }
    Ok(value)
}

#[cfg(any(test, feature = "testing"))]
/// Wraps raw payload bytes in a valid frame of `kind` (correct length and
/// checksum), without checking that they decode. For tools and fuzzing:
/// it lets a test reach the payload decoder past the checksum.
pub fn frame_payload(kind: u8, payload: &[u8]) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&[0; HEADER_LEN]);
    out.extend_from_slice(payload);
    seal_frame(kind, &mut out)?;
    Ok(out)
}

/// Fills in the header of `frame`, a reserved `HEADER_LEN` bytes followed
/// by the payload: magic, version, `kind`, the payload's length and the
/// checksum. Refuses a payload over `MAX_PAYLOAD`.
fn seal_frame(kind: u8, frame: &mut [u8]) -> Result<(), EncodeError> {
    let len = frame.len() - HEADER_LEN;
    if len > MAX_PAYLOAD {
        return Err(EncodeError::TooLarge {
            len,
            max: MAX_PAYLOAD,
        });
    }
    frame[..2].copy_from_slice(&MAGIC);
    frame[2] = FORMAT_VERSION;
    frame[3] = kind;
    // Cannot truncate: checked against MAX_PAYLOAD (1 MiB) above.
    frame[4..8].copy_from_slice(&(len as u32).to_be_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&frame[..8]);
    crc.update(&frame[HEADER_LEN..]);
    frame[8..HEADER_LEN].copy_from_slice(&crc.finalize().to_be_bytes());
    Ok(())
}

/// Checks a frame's header and checksum; returns its kind and payload.
fn unframe(bytes: &[u8]) -> Result<(u8, &[u8]), DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Truncated { len: bytes.len() });
    }
    let found = [bytes[0], bytes[1]];
    if found != MAGIC {
        return Err(DecodeError::BadMagic { found });
    }
    if bytes[2] != FORMAT_VERSION {
        return Err(DecodeError::UnknownVersion { found: bytes[2] });
    }
    let kind = bytes[3];
    let declared = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    if declared > MAX_PAYLOAD {
        return Err(DecodeError::LengthOverLimit {
            len: declared,
            max: MAX_PAYLOAD,
        });
    }
    let payload = &bytes[HEADER_LEN..];
    if payload.len() != declared {
        return Err(DecodeError::LengthMismatch {
            declared,
            actual: payload.len(),
        });
    }
    let stored = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bytes[..8]);
    crc.update(payload);
    let computed = crc.finalize();
    if stored != computed {
        return Err(DecodeError::ChecksumMismatch { stored, computed });
    }
    Ok((kind, payload))
}

fn kind_of(record: &Record) -> u8 {
    match record {
        Record::SagaStarted(_) => 1,
        Record::StepStarted(_) => 2,
        Record::StepSucceeded(_) => 3,
        Record::StepFailed(_) => 4,
        Record::CompensationStarted(_) => 5,
        Record::CompensationSucceeded(_) => 6,
        Record::CompensationFailed(_) => 7,
        Record::SagaSuspended(_) => 8,
        Record::SagaFinished(_) => 9,
        Record::TimerSet(_) => 10,
        Record::OperatorAction(_) => 32,
        Record::Decided(_) => 11,
        Record::ConfirmStarted(_) => 12,
        Record::ConfirmSucceeded(_) => 13,
        Record::ConfirmFailed(_) => 14,
    }
}

/// Encodes `value` as the payload of a frame of `kind`, straight into the
/// frame's buffer: one allocation (of about `size_hint` bytes, grown only if
/// the payload is larger), where encoding first and framing after took one
/// per growth step of the payload plus one for the frame. The bytes are the
/// same as `frame_payload(kind, &encode_value(value)?)`.
fn encode_framed<T: Serialize + ?Sized>(
    kind: u8,
    value: &T,
    size_hint: usize,
) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode_framed_into(&mut out, kind, value, size_hint)?;
    Ok(out)
}

/// Like [`encode_framed`], adding the frame at the end of `out`. On an
/// error `out` is left as it was.
fn encode_framed_into<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    kind: u8,
    value: &T,
    size_hint: usize,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.reserve(HEADER_LEN + size_hint);
    out.extend_from_slice(&[0; HEADER_LEN]);
    let sealed =
        bincode::serde::encode_into_std_write(value, &mut *out, bincode::config::standard())
            .map_err(|e| EncodeError::Serialize(e.to_string()))
            .and_then(|_| seal_frame(kind, &mut out[start..]));
    if sealed.is_err() {
        out.truncate(start);
    }
    sealed
}

/// Payload bytes to reserve for a record beyond its user bytes: enough for
/// every fixed field of the small records.
const RECORD_HINT: usize = 48;

/// Encodes one log record with its timestamp into a checksummed frame.
pub fn encode_record(at: UnixMillis, record: &Record) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode_record_into(&mut out, at, record)?;
    Ok(out)
}

/// Like [`encode_record`], adding the frame at the end of `out` (a log
/// value being built: frames lie back to back). The bytes added are the
/// ones `encode_record` returns. On an error `out` is left as it was.
pub fn encode_record_into(
    out: &mut Vec<u8>,
    at: UnixMillis,
    record: &Record,
) -> Result<(), EncodeError> {
    let kind = kind_of(record);
    match record {
        Record::SagaStarted(body) => {
            let hint = 4 * RECORD_HINT + body.input.len() + 32 * body.plan.steps.len();
            encode_framed_into(out, kind, &(at.0, body), hint)
        }
        Record::StepStarted(body)
        | Record::CompensationStarted(body)
        | Record::CompensationSucceeded(body)
        | Record::ConfirmStarted(body)
        | Record::ConfirmSucceeded(body) => {
            encode_framed_into(out, kind, &(at.0, body), RECORD_HINT)
        }
        Record::StepSucceeded(body) => {
            encode_framed_into(out, kind, &(at.0, body), RECORD_HINT + body.output.len())
        }
        Record::StepFailed(body)
        | Record::CompensationFailed(body)
        | Record::ConfirmFailed(body) => encode_framed_into(
            out,
            kind,
            &(at.0, body),
            RECORD_HINT + body.failure.message.len(),
        ),
        Record::Decided(body) => encode_framed_into(out, kind, &(at.0, body), RECORD_HINT),
        Record::SagaSuspended(body) => encode_framed_into(out, kind, &(at.0, body), RECORD_HINT),
        Record::SagaFinished(body) => encode_framed_into(out, kind, &(at.0, body), RECORD_HINT),
        Record::TimerSet(body) => encode_framed_into(out, kind, &(at.0, body), RECORD_HINT),
        Record::OperatorAction(body) => {
            encode_framed_into(out, kind, &(at.0, body), 2 * RECORD_HINT)
        }
    }
}

fn body<T: DeserializeOwned>(payload: &[u8]) -> Result<(UnixMillis, T), DecodeError> {
    let (at, body) = decode_value::<(u64, T)>(payload)?;
    Ok((UnixMillis(at), body))
}

/// Decodes a frame written by [`encode_record`].
pub fn decode_record(bytes: &[u8]) -> Result<(UnixMillis, Record), DecodeError> {
    let (kind, payload) = unframe(bytes)?;
    match kind {
        1 => body::<SagaStarted>(payload).map(|(at, b)| (at, Record::SagaStarted(Box::new(b)))),
        2 => body::<CallRef>(payload).map(|(at, b)| (at, Record::StepStarted(b))),
        3 => body::<CallSucceeded>(payload).map(|(at, b)| (at, Record::StepSucceeded(b))),
        4 => body::<CallFailed>(payload).map(|(at, b)| (at, Record::StepFailed(b))),
        5 => body::<CallRef>(payload).map(|(at, b)| (at, Record::CompensationStarted(b))),
        6 => body::<CallRef>(payload).map(|(at, b)| (at, Record::CompensationSucceeded(b))),
        7 => body::<CallFailed>(payload).map(|(at, b)| (at, Record::CompensationFailed(b))),
        8 => body::<Suspended>(payload).map(|(at, b)| (at, Record::SagaSuspended(b))),
        9 => body::<Finished>(payload).map(|(at, b)| (at, Record::SagaFinished(b))),
        10 => body::<TimerSet>(payload).map(|(at, b)| (at, Record::TimerSet(b))),
        11 => body::<Decided>(payload).map(|(at, b)| (at, Record::Decided(b))),
        12 => body::<CallRef>(payload).map(|(at, b)| (at, Record::ConfirmStarted(b))),
        13 => body::<CallRef>(payload).map(|(at, b)| (at, Record::ConfirmSucceeded(b))),
        14 => body::<CallFailed>(payload).map(|(at, b)| (at, Record::ConfirmFailed(b))),
        32 => body::<OperatorAction>(payload).map(|(at, b)| (at, Record::OperatorAction(b))),
        found => Err(DecodeError::UnknownKind { found }),
    }
}

/// Splits a log value into its frames and decodes each: a value holds the
/// records of one or more appends, frames back to back (each frame carries
/// its own length and checksum). An error anywhere fails the whole value;
/// [`decode_records_prefix`] keeps the records before it.
pub fn decode_records(value: &[u8]) -> Result<Vec<(UnixMillis, Record)>, DecodeError> {
    match decode_records_prefix(value) {
        (records, None) => Ok(records),
        (_, Some(error)) => Err(error),
    }
}

/// Like [`decode_records`], but returns the records before the first frame
/// that does not decode, with that frame's error (its sequence number is
/// the value's first plus the number of records returned). Nothing past
/// it is read: past a damaged length nothing can be trusted to be a frame
/// boundary.
pub fn decode_records_prefix(value: &[u8]) -> (Vec<(UnixMillis, Record)>, Option<DecodeError>) {
    let mut records = Vec::new();
    let mut rest = value;
    loop {
        let decoded = split_frame(rest).and_then(|(frame, after)| {
            rest = after;
            decode_record(frame)
        });
        match decoded {
            Ok(record) => records.push(record),
            Err(error) => return (records, Some(error)),
        }
        if rest.is_empty() {
            return (records, None);
        }
    }
}

/// The frames of a log value, in order, split by their declared lengths
/// without checking them further (see [`decode_records_prefix`] for that).
/// A tail that is not a whole frame is left out.
pub fn frames_of(value: &[u8]) -> Vec<&[u8]> {
    let mut frames = Vec::new();
    let mut rest = value;
    while let Ok((frame, after)) = split_frame(rest) {
        frames.push(frame);
        rest = after;
    }
    frames
}

/// The first frame of `bytes` (by its declared length, unchecked) and the
/// bytes after it.
fn split_frame(bytes: &[u8]) -> Result<(&[u8], &[u8]), DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Truncated { len: bytes.len() });
    }
    let declared = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    if declared > MAX_PAYLOAD {
        return Err(DecodeError::LengthOverLimit {
            len: declared,
            max: MAX_PAYLOAD,
        });
    }
    let end = HEADER_LEN + declared;
    if bytes.len() < end {
        return Err(DecodeError::LengthMismatch {
            declared,
            actual: bytes.len() - HEADER_LEN,
        });
    }
    Ok(bytes.split_at(end))
}

/// Appends one item to a finished batch (the value of an `F` key): the
/// saga id, then its encoded index entry (a frame, which carries its own
/// length).
pub fn push_finished_item(batch: &mut Vec<u8>, saga: SagaId, entry: &[u8]) {
    batch.extend_from_slice(&saga.to_bytes());
    batch.extend_from_slice(entry);
}

/// Splits a finished batch into its items, `(saga, encoded index entry)`:
/// the items before the first damaged one, and its error. An entry's
/// checksum is checked when it is decoded, not here.
pub fn split_finished_batch(value: &[u8]) -> (Vec<(SagaId, &[u8])>, Option<DecodeError>) {
    let mut items = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        let Some((id, after)) = rest.split_first_chunk::<16>() else {
            return (items, Some(DecodeError::Truncated { len: rest.len() }));
        };
        match split_frame(after) {
            Ok((entry, after)) => {
                items.push((SagaId::from_bytes(*id), entry));
                rest = after;
            }
            Err(error) => return (items, Some(error)),
        }
    }
    (items, None)
}

/// Encodes an index entry (the value of an active or finished index key).
pub fn encode_index_entry<T: Serialize>(entry: &T) -> Result<Vec<u8>, EncodeError> {
    encode_framed(KIND_INDEX_ENTRY, entry, 2 * RECORD_HINT)
}

/// Decodes a value written by [`encode_index_entry`].
pub fn decode_index_entry<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (kind, payload) = unframe(bytes)?;
    if kind != KIND_INDEX_ENTRY {
        return Err(DecodeError::UnknownKind { found: kind });
    }
    decode_value(payload)
}

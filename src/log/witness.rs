//! The witness: a small file in the database directory, outside sled, that
//! remembers the last group commit sled acknowledged, so that opening can
//! tell when sled has silently lost acknowledged writes.
//!
//! sled 0.34 treats a damaged spot in its log as the end of the log and
//! drops everything after it without an error. Every durable write through
//! [`super::store::SledStore`] therefore also stores a numbered *group
//! mark* under `b"Mgroup"` in the same atomic batch, and once the write is
//! durable the same mark is written to `sagalog.witness`. At open, sled's
//! mark must be at least the witness's: a lower one means acknowledged
//! groups are gone (`StoreError::LostWrites`).
//!
//! The witness is written with `pwrite` after every durable write, before
//! the write is acknowledged, and synced at most every [`SYNC_EVERY`]. A
//! process killed at any point leaves it exact (the page cache outlives the
//! process). After a power cut it may be up to one sync period behind, so
//! damage that also drops the groups of that last period goes unnoticed;
//! it is never ahead of what sled made durable, because it is written only
//! after sled's write is synced.
//!
//! The file is also the database's claim to be sagalog's (a sled directory
//! without it is not opened) and the directory lock: an exclusive lock on
//! it is held while the store is open, and taken before anything else in
//! the directory is touched.
//!
//! # Format (48 bytes, little-endian)
//!
//! | bytes  | field                                              |
//! |--------|----------------------------------------------------|
//! | 0..8   | magic `b"SAGALOGW"`                                |
//! | 8      | version (1)                                        |
//! | 9..12  | zero                                               |
//! | 12..16 | CRC32 of bytes 16..48                              |
//! | 16..32 | database id (a UUIDv7 taken when it was created)   |
//! | 32..40 | group number (0 for a new database)                |
//! | 40..48 | when the group was written (Unix milliseconds)     |
//!
//! The value under `b"Mgroup"` in sled has the same 48 bytes.

use crate::ids::{SagaId, UnixMillis};
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The witness file's name inside the database directory.
pub const FILE_NAME: &str = "sagalog.witness";

/// Longest time between two syncs of the witness file.
pub const SYNC_EVERY: Duration = Duration::from_millis(100);

const MAGIC: &[u8; 8] = b"SAGALOGW";
const VERSION: u8 = 1;
/// Bytes in an encoded [`Mark`].
pub const LEN: usize = 48;

/// One group commit as the witness and sled record it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    /// The database the mark belongs to.
    pub database: SagaId,
    /// The group's number: every durable write takes the next one.
    pub group: u64,
    /// When the group was written.
    pub at: UnixMillis,
}

impl Mark {
    /// The mark of a database just created: group 0.
    pub fn new_database(at: UnixMillis) -> Self {
        Mark {
            database: SagaId::new(),
            group: 0,
            at,
        }
    }

    /// The 48 bytes of the mark.
    pub fn encode(&self) -> [u8; LEN] {
        let mut out = [0; LEN];
        out[..8].copy_from_slice(MAGIC);
        out[8] = VERSION;
        out[16..32].copy_from_slice(&self.database.to_bytes());
        out[32..40].copy_from_slice(&self.group.to_le_bytes());
        out[40..48].copy_from_slice(&self.at.0.to_le_bytes());
        let crc = crc32fast::hash(&out[16..]);
        out[12..16].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a mark; the error says what is wrong with the bytes.
    pub fn decode(bytes: &[u8]) -> Result<Mark, String> {
        if bytes.len() != LEN {
            return Err(format!("{} bytes, expected {LEN}", bytes.len()));
        }
        if &bytes[..8] != MAGIC {
            return Err("it does not start with SAGALOGW".into());
        }
        if bytes[8] != VERSION {
            return Err(format!("version {}, this build reads {VERSION}", bytes[8]));
        }
        let stored = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        if crc32fast::hash(&bytes[16..]) != stored {
            return Err("its checksum does not match its bytes".into());
        }
        let mut id = [0; 16];
        id.copy_from_slice(&bytes[16..32]);
        let mut group = [0; 8];
        group.copy_from_slice(&bytes[32..40]);
        let mut at = [0; 8];
        at.copy_from_slice(&bytes[40..48]);
        Ok(Mark {
            database: SagaId::from_bytes(id),
            group: u64::from_le_bytes(group),
            at: UnixMillis(u64::from_le_bytes(at)),
        })
    }
}

/// The open witness file: holds the directory lock, and takes the mark of
/// every durable write.
pub struct Witness {
    file: File,
    state: Mutex<State>,
}

struct State {
    /// The highest mark written to the file.
    written: Mark,
    /// When the file was last synced, and whether it changed since.
    synced_at: Instant,
    dirty: bool,
}

/// Why the witness could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// There is no witness file in the directory.
    Missing,
    /// Another process (or store) holds the lock.
    Locked,
    /// The file's bytes are not a mark.
    Damaged(String),
    /// The file system refused.
    Io(std::io::Error),
}

impl Witness {
    /// Creates the witness of a new database in `dir` (which exists), with
    /// `mark`, syncs it and the directory, and takes its lock. Fails with
    /// `AlreadyExists` if there is one.
    pub fn create(dir: &Path, mark: Mark) -> std::io::Result<Witness> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.join(FILE_NAME))?;
        file.try_lock().map_err(|e| match e {
            std::fs::TryLockError::Error(e) => e,
            std::fs::TryLockError::WouldBlock => std::io::Error::other("locked"),
        })?;
        file.write_all_at(&mark.encode(), 0)?;
        file.sync_all()?;
        File::open(dir)?.sync_all()?;
        Ok(Witness::with(file, mark))
    }

    /// Opens the witness in `dir` and takes its lock, retrying a held lock
    /// until `lock_wait` has passed.
    pub fn open(dir: &Path, lock_wait: Duration) -> Result<Witness, OpenError> {
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(FILE_NAME))
        {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(OpenError::Missing),
            Err(e) => return Err(OpenError::Io(e)),
        };
        let deadline = Instant::now() + lock_wait;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(std::fs::TryLockError::WouldBlock) => return Err(OpenError::Locked),
                Err(std::fs::TryLockError::Error(e)) => return Err(OpenError::Io(e)),
            }
        }
        let mut bytes = Vec::with_capacity(LEN);
        std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(OpenError::Io)?;
        let mark = Mark::decode(&bytes).map_err(OpenError::Damaged)?;
        Ok(Witness::with(file, mark))
    }

    fn with(file: File, written: Mark) -> Witness {
        Witness {
            file,
            state: Mutex::new(State {
                written,
                synced_at: Instant::now(),
                dirty: false,
            }),
        }
    }

    /// The highest mark this witness holds.
    pub fn mark(&self) -> Mark {
        crate::sync::lock(&self.state).written
    }

    /// Records that `mark`'s write is durable in sled: writes it unless a
    /// higher mark is already written, and syncs the file when the last
    /// sync is [`SYNC_EVERY`] old.
    pub fn record(&self, mark: Mark) -> std::io::Result<()> {
        let mut state = crate::sync::lock(&self.state);
        if mark.group > state.written.group {
            self.file.write_all_at(&mark.encode(), 0)?;
            state.written = mark;
            state.dirty = true;
        }
        let due = state.synced_at.elapsed() >= SYNC_EVERY;
        self.sync_dirty(&mut state, due)
    }

    /// Syncs the file if it changed since its last sync.
    pub fn sync(&self) -> std::io::Result<()> {
        self.sync_dirty(&mut crate::sync::lock(&self.state), true)
    }

    /// Syncs the file when it changed since its last sync and `due`.
    fn sync_dirty(&self, state: &mut State, due: bool) -> std::io::Result<()> {
        if state.dirty && due {
            self.file.sync_data()?;
            state.synced_at = Instant::now();
            state.dirty = false;
        }
        Ok(())
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        // A clean close leaves the exact mark on disk.
        if let Err(e) = self.sync() {
            tracing::warn!(error = %e, "could not sync the witness file at close");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_decodes_back_to_itself() {
        let mark = Mark {
            database: SagaId::new(),
            group: 42,
            at: UnixMillis(1_700_000_000_000),
        };
        assert_eq!(Mark::decode(&mark.encode()), Ok(mark));
    }

    #[test]
    fn a_flipped_bit_in_a_mark_is_a_checksum_error() {
        let mut bytes = Mark::new_database(UnixMillis(1)).encode();
        bytes[33] ^= 1;
        let error = Mark::decode(&bytes).unwrap_err();
        assert!(error.contains("checksum"), "{error}");
    }

    #[test]
    fn a_lower_mark_does_not_replace_a_higher_one() {
        let dir = tempfile::tempdir().unwrap();
        let first = Mark::new_database(UnixMillis(1));
        let witness = Witness::create(dir.path(), first).unwrap();
        let high = Mark { group: 9, ..first };
        witness.record(high).unwrap();
        witness.record(Mark { group: 3, ..first }).unwrap();
        drop(witness);
        let reopened = Witness::open(dir.path(), Duration::ZERO).unwrap();
        assert_eq!(reopened.mark(), high);
    }

    #[test]
    fn a_second_open_of_a_held_witness_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _held = Witness::create(dir.path(), Mark::new_database(UnixMillis(1))).unwrap();
        assert!(matches!(
            Witness::open(dir.path(), Duration::ZERO),
            Err(OpenError::Locked)
        ));
    }
}

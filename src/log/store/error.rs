//! What can go wrong in a store, each with what to do about it.

use crate::ids::UnixMillis;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A store operation failed. The message says what to do about it.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process holds the database.
    #[error("the database at {path} is locked by another process; only one process may open it at a time: stop that process, or act through its admin API")]
    Locked {
        /// Database directory.
        path: PathBuf,
    },
    /// The database was written in a format this build does not read.
    #[error("the database at {path} has layout version {found}, this build reads version {expected}; open it with the release that wrote it")]
    FormatMismatch {
        /// Database directory.
        path: PathBuf,
        /// Version found on disk.
        found: u8,
        /// Version this build reads.
        expected: u8,
    },
    /// The directory holds something that is not a sagalog database.
    /// Nothing was written to it.
    #[error("{path} is not a sagalog database: it is not empty ({}) and has no {witness} file, which every sagalog database has; nothing was written to it. Open the directory your service uses, or an empty or missing one to create a new database", found.join(", "), witness = crate::log::witness::FILE_NAME)]
    NotSagalog {
        /// The directory.
        path: PathBuf,
        /// Some of the names found in it.
        found: Vec<String>,
    },
    /// There is no database to open, and the caller asked not to create one.
    #[error("there is no sagalog database at {path} (the directory is missing or empty); pass the directory your service opens")]
    NoDatabase {
        /// The directory.
        path: PathBuf,
    },
    /// Writes that were made durable and acknowledged are missing: sled
    /// dropped them at open, which it does silently when its log is
    /// damaged. Nothing was written to the database.
    #[error("the database at {path} has lost acknowledged writes: its witness file says group commit {acknowledged} (written {acknowledged_at}) was durable, but sled now holds only up to group {found}{}; {} group commit(s) are missing, so sagas they started or moved on would run again. Nothing was written. Do not start the service on it: run `sagalog verify --db {path}` to see what is readable, then `sagalog repair --db {path}`, which copies every readable saga into a fresh database beside this one and names what it could not", found_at.map(|at| format!(" (written {at})")).unwrap_or_default(), acknowledged - found)]
    LostWrites {
        /// Database directory.
        path: PathBuf,
        /// The last group the witness says was acknowledged.
        acknowledged: u64,
        /// When that group was written.
        acknowledged_at: UnixMillis,
        /// The last group sled still holds (0: none).
        found: u64,
        /// When that group was written, if sled holds one.
        found_at: Option<UnixMillis>,
    },
    /// The database's files are damaged in a way sled or sagalog detects
    /// (sled's "Read corrupted data", a panic inside sled, a damaged
    /// witness). Restarting does not help.
    #[error("the database at {path} is damaged: {detail}. Restarting will not help: run `sagalog repair --db {path}`, which first sets sled's snapshot files aside (sled then rebuilds its state from its log) and, if that is not enough, copies every readable saga into a fresh database beside this one; it never deletes the original")]
    Damaged {
        /// Database directory.
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// A value in an index has an impossible shape.
    #[error("corrupt store value under key {key:02x?}: {reason}")]
    Corrupt {
        /// The raw key.
        key: Vec<u8>,
        /// What is wrong.
        reason: String,
    },
    /// An I/O operation of the store failed. `source` is the operating
    /// system's error: its `kind()` tells a full disk
    /// (`ErrorKind::StorageFull`) or a permission from other failures.
    #[error("log store I/O failed: {context}: {source}; check the disk and the directory's permissions, then restart the service: recovery resumes from the last durable record")]
    Io {
        /// What the store was doing.
        context: String,
        /// The operating system's error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A write was applied but its flush or sync failed, so it may not be
    /// on the disk. The store takes no more writes ([`StoreError::WritesRefused`])
    /// until it is opened again.
    #[error("the write is applied but could not be made durable ({context}: {source}); restart the service once the disk is fixed: recovery reads what the disk really holds")]
    NotDurable {
        /// Which step of the write failed.
        context: String,
        /// The operating system's (or sled's) error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A write refused because an earlier one could not be made durable:
    /// the OS reports a lost write-back only once, so no later write can be
    /// trusted either.
    #[error("an earlier write could not be made durable ({first}) and the OS reports that only once, so no later write can be trusted either; this store takes no more writes until it is opened again")]
    WritesRefused {
        /// What the first failure reported.
        first: String,
    },
    /// The backend failed in a way that is not an I/O error (a task or
    /// thread that could not run, a bug sled reports). Nothing after the
    /// failed operation can be assumed durable; restart to recover from the log.
    #[error(
        "log store failed: {0}; restart the service, recovery resumes from the last durable record"
    )]
    Backend(String),
    /// A fault injected by a test through the `testing` feature. Hidden:
    /// only this crate's own tests make it, and a service never sees it.
    #[doc(hidden)]
    #[error("injected store fault: {0}")]
    Injected(String),
    /// The system clock reads before 1970, so the log's times and ids
    /// would be wrong. Nothing was opened.
    #[error("the system clock reads {behind:?} before 1970-01-01, so saga times and ids would be wrong; set the clock (NTP) and open again")]
    ClockBeforeEpoch {
        /// How far before the epoch the clock reads.
        behind: Duration,
    },
    /// The connection to the database was lost after the commit was sent,
    /// so the write may or may not be durable. The sagas it carried are
    /// read again from the log before they go on; nothing is retried blind.
    #[error("the database connection was lost after a commit was sent ({0}); the write may or may not be durable, so the sagas it carried are read again from the log")]
    Ambiguous(String),
    /// The database refused or failed an operation, or could not be
    /// reached (PostgreSQL).
    #[error("the database failed while {doing}: {reason}; check that the server is up and the URL, user and permissions are right")]
    Database {
        /// What sagalog was doing.
        doing: String,
        /// What the database or the connection said.
        reason: String,
    },
    /// The database cannot be reached at the moment; writes wait and are
    /// retried with backoff, nothing is lost or parked meanwhile.
    #[error("the database is unreachable ({reason}); writes wait and retry until it is back")]
    Unreachable {
        /// Why the last attempt failed.
        reason: String,
    },
    /// The database's tables are of a newer version than this build
    /// reads. Nothing was written.
    #[error("the database's sagalog tables have schema version {found}, this build reads version {expected}; run the release that created them, or a newer one")]
    SchemaMismatch {
        /// The version the database has.
        found: u32,
        /// The version this build reads and writes.
        expected: u32,
    },
    /// The log already held records where an append was to go: another
    /// writer appended to the saga. Nothing of the append was written; the
    /// saga is read again from the log.
    #[error("saga {saga}: the log already holds records where this append goes, so another writer appended to it; the saga is read again from its log")]
    Conflict {
        /// The saga.
        saga: crate::ids::SagaId,
    },
    /// On a log several nodes share: another node fenced this one (its
    /// lease expired, or it was taken over), so the database refuses its
    /// writes. Nothing of the refused write was written. The sagas it
    /// carried belong to another node now; this engine starts no more calls
    /// and must be restarted to join again.
    #[error("node {node} was fenced ({reason}); the database refuses its writes and its sagas go to the live nodes: restart the service to join again")]
    Fenced {
        /// This node's id.
        node: String,
        /// What the store knows of why.
        reason: String,
    },
    /// The store was opened for inspection ([`SledStore::open_for_inspection`](crate::SledStore::open_for_inspection))
    /// and takes no writes.
    #[error(
        "the database at {path} is open for inspection only (verify, repair) and takes no writes"
    )]
    ReadOnly {
        /// Database directory.
        path: PathBuf,
    },
}

impl StoreError {
    /// The operating system's error behind an [`StoreError::Io`] or a
    /// [`StoreError::NotDurable`], for its `kind()` (a full disk is
    /// `ErrorKind::StorageFull`). [`std::error::Error::source`] gives the
    /// same error, as the `Arc` it is shared in.
    pub fn io_error(&self) -> Option<&std::io::Error> {
        match self {
            StoreError::Io { source, .. } | StoreError::NotDurable { source, .. } => Some(source),
            _ => None,
        }
    }

    /// An I/O failure while the store was doing `context`.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source: Arc::new(source),
        }
    }
}

//! Opening a sled database safely: the directory lock first, then the
//! checks that refuse a foreign, damaged or short database before anything
//! is written to it.

use super::compact::{
    compaction_paths, discard_torn_sled_snapshots, finish_interrupted_compaction,
};
use super::durability::{sled_error, DataSync};
use super::keys;
use super::kv::{Kv, KvOp};
use super::sled::{sled_config, SledKv};
use super::{SledOptions, SledStore, StoreError, LAYOUT_VERSION};
use crate::ids::UnixMillis;
use crate::log::witness::{Mark, OpenError as WitnessError, Witness};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

impl SledStore {
    pub(super) fn open_checked(
        path: &Path,
        options: &SledOptions,
        inspect: bool,
    ) -> Result<Self, StoreError> {
        UnixMillis::checked_now()?;
        let path = path.to_path_buf();
        let io = |what: &str, e: std::io::Error| {
            StoreError::io(format!("opening {}: {what}", path.display()), e)
        };
        let (witness, created) = claim_directory(&path, options)?;
        // The lock is held: from here on the directory is ours to tidy.
        finish_interrupted_compaction(&path)
            .map_err(|e| io("could not settle an interrupted compaction", e))?;
        discard_torn_sled_snapshots(&path)
            .map_err(|e| io("could not clear an unfinished sled snapshot", e))?;
        let db = open_sled(&path, options)?;
        let sync = DataSync::open(&path)
            .map_err(|e| io("could not open sled's log file to sync it", e))?;
        let witnessed = witness.mark();
        let kv = SledKv {
            db,
            sync,
            path: path.clone(),
            witness,
            applied: Mutex::new(witnessed),
            read_only: inspect,
        };
        let finding = match check_database(&kv, &path, witnessed, created, options) {
            Ok(Some(found)) => {
                *crate::sync::lock(&kv.applied) = found;
                if !inspect {
                    kv.witness
                        .record(found)
                        .map_err(|e| io("could not write the witness file", e))?;
                }
                None
            }
            Ok(None) => {
                // A new database: its first write stores the format marker
                // and group 1.
                if !inspect {
                    kv.apply_durably(vec![KvOp::put(keys::FORMAT, &[LAYOUT_VERSION])])?;
                }
                None
            }
            Err(e @ (StoreError::LostWrites { .. } | StoreError::Damaged { .. })) if inspect => {
                Some(e)
            }
            Err(e) => return Err(e),
        };
        Ok(SledStore { kv, path, finding })
    }
}

/// Takes the lock of database directory `path` (its witness file) before
/// anything in it is touched, creating a new database's witness when the
/// directory is missing or empty and `options.create` allows. Returns the
/// witness and whether it was just created. A directory that holds
/// anything without a witness is [`StoreError::NotSagalog`], and is left
/// as it was.
pub(super) fn claim_directory(
    path: &Path,
    options: &SledOptions,
) -> Result<(Witness, bool), StoreError> {
    let io = |what: &str, e: std::io::Error| {
        StoreError::io(format!("opening {}: {what}", path.display()), e)
    };
    let opened = |dir: &Path| {
        match Witness::open(dir, options.lock_wait) {
        Ok(witness) => Ok(Some(witness)),
        Err(WitnessError::Missing) => Ok(None),
        Err(WitnessError::Locked) => Err(StoreError::Locked {
            path: path.to_path_buf(),
        }),
        Err(WitnessError::Damaged(why)) => Err(StoreError::Damaged {
            path: path.to_path_buf(),
            detail: format!(
                "its witness file {} is damaged ({why}), so sagalog cannot tell whether sled lost acknowledged writes",
                crate::log::witness::FILE_NAME
            ),
        }),
        Err(WitnessError::Io(e)) => Err(io("could not open the witness file", e)),
    }
    };
    // A compaction interrupted between its two renames left the original
    // aside and nothing in its place: take the original's lock, put it back.
    let (_, original) = compaction_paths(path);
    if !path.exists() && original.exists() {
        if let Some(witness) = opened(&original)? {
            tracing::warn!(path = %path.display(), "restoring the database set aside by an interrupted compaction");
            std::fs::rename(&original, path).map_err(|e| {
                io(
                    "could not restore the database an interrupted compaction set aside",
                    e,
                )
            })?;
            return Ok((witness, false));
        }
    }
    loop {
        if let Some(witness) = opened(path)? {
            return Ok((witness, false));
        }
        let found = dir_entries(path).map_err(|e| io("could not list the directory", e))?;
        if !found.is_empty() && holds_group_marks(path) {
            return Err(StoreError::Damaged {
                path: path.to_path_buf(),
                detail: format!(
                    "its witness file {} is missing, although sled's files hold sagalog's group marks, so sagalog cannot tell whether sled lost acknowledged writes",
                    crate::log::witness::FILE_NAME
                ),
            });
        }
        if !found.is_empty() {
            return Err(StoreError::NotSagalog {
                path: path.to_path_buf(),
                found,
            });
        }
        if !options.create {
            return Err(StoreError::NoDatabase {
                path: path.to_path_buf(),
            });
        }
        std::fs::create_dir_all(path).map_err(|e| io("could not create the directory", e))?;
        match Witness::create(path, Mark::new_database(UnixMillis::now())) {
            Ok(witness) => return Ok((witness, true)),
            // Another opener created it first: open theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io("could not create the witness file", e)),
        }
    }
}

/// Reads every key and value once, so that damage sled would report on a
/// later read (its "Read corrupted data" when a page's checksum fails, or
/// a panic) is found at open instead of in the middle of recovery or of a
/// saga. sled reads its pages lazily: a damaged page that the log no
/// longer replays passes every check before this one.
fn read_every_page(kv: &SledKv, path: &Path) -> Result<(), StoreError> {
    let scanned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut keys = 0u64;
        for item in kv.db.iter() {
            match item {
                Ok(_) => keys += 1,
                Err(e) => return Err((keys, e.to_string())),
            }
        }
        Ok(())
    }));
    let (keys, what) = match scanned {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(failed)) => failed,
        Err(_) => (0, "sled panicked while reading it".to_string()),
    };
    Err(StoreError::Damaged {
        path: path.to_path_buf(),
        detail: format!("sled cannot read part of it after {keys} readable keys ({what})"),
    })
}

/// Whether the first 4 MiB of sled's log file in `path` hold the key of
/// sagalog's group mark: a sagalog database whose witness is missing,
/// rather than another program's. Read only; never opens sled, which
/// writes at open.
fn holds_group_marks(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path.join("db")) else {
        return false;
    };
    let mut head = Vec::new();
    if std::io::Read::read_to_end(&mut std::io::Read::take(file, 4 << 20), &mut head).is_err() {
        return false;
    }
    head.windows(keys::GROUP.len()).any(|w| w == keys::GROUP)
}

/// Up to eight names in directory `path` (none if it is missing).
fn dir_entries(path: &Path) -> std::io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    let more = names.len().saturating_sub(8);
    names.truncate(8);
    if more > 0 {
        names.push(format!("and {more} more"));
    }
    Ok(names)
}

/// Opens sled in `path`, whose witness lock is held. sled's own lock may
/// still be held for a moment by this process's previous handle (see
/// [`SledOptions::lock_wait`]). Damage sled reports, and a panic inside
/// sled, are [`StoreError::Damaged`].
pub(crate) fn open_sled(path: &Path, options: &SledOptions) -> Result<sled::Db, StoreError> {
    let deadline = Instant::now() + options.lock_wait;
    loop {
        let config = sled_config(path, options);
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()));
        match opened {
            Ok(Ok(db)) => return Ok(db),
            Ok(Err(sled::Error::Io(ref io)))
                if io.to_string().contains("could not acquire lock") =>
            {
                if Instant::now() >= deadline {
                    return Err(StoreError::Locked {
                        path: path.to_path_buf(),
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(Err(e @ sled::Error::Corruption { .. })) => return Err(sled_error(path, e)),
            // sled reads its `conf` file first and calls one it cannot
            // parse a database of an old sled version.
            Ok(Err(sled::Error::Unsupported(what))) => {
                return Err(StoreError::Damaged {
                    path: path.to_path_buf(),
                    detail: format!("sled cannot read its conf file ({what})"),
                })
            }
            Ok(Err(sled::Error::Io(e))) => {
                return Err(StoreError::io(format!("opening {}", path.display()), e))
            }
            Ok(Err(other)) => {
                return Err(StoreError::Backend(format!(
                    "opening {}: {other}",
                    path.display()
                )))
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("no message");
                return Err(StoreError::Damaged {
                    path: path.to_path_buf(),
                    detail: format!("sled panicked while opening it ({what})"),
                });
            }
        }
    }
}

/// Checks an opened database against its witness. `Ok(Some(mark))`: a
/// database whose group mark is `mark` (at or above the witness's);
/// `Ok(None)`: a new, empty database.
fn check_database(
    kv: &SledKv,
    path: &Path,
    witnessed: Mark,
    created: bool,
    options: &SledOptions,
) -> Result<Option<Mark>, StoreError> {
    let damaged = |detail: String| StoreError::Damaged {
        path: path.to_path_buf(),
        detail,
    };
    let first = kv.db.iter().next().transpose().map_err(|e| kv.err(e))?;
    if first.is_none() && (created || witnessed.group == 0) {
        return Ok(None);
    }
    match kv.get(keys::FORMAT)? {
        Some(v) if v.as_slice() == [LAYOUT_VERSION] => {}
        Some(v) => {
            return Err(StoreError::FormatMismatch {
                path: path.to_path_buf(),
                found: v.first().copied().unwrap_or(0),
                expected: LAYOUT_VERSION,
            })
        }
        None if first.is_some() => {
            return Err(damaged(
                "sled holds keys but no sagalog format marker".into(),
            ))
        }
        None => {}
    }
    let found = match kv.get(keys::GROUP)? {
        None => None,
        Some(bytes) => Some(
            Mark::decode(&bytes)
                .map_err(|why| damaged(format!("sled's group mark is unreadable ({why})")))?,
        ),
    };
    if let Some(found) = found {
        if found.database != witnessed.database {
            return Err(damaged(format!(
                "its witness file belongs to database {}, but sled's files to database {}: files of two databases were mixed",
                witnessed.database, found.database
            )));
        }
    }
    match found {
        Some(found) if found.group >= witnessed.group => {
            if options.read_all_on_open {
                read_every_page(kv, path)?;
            }
            Ok(Some(found))
        }
        _ => Err(StoreError::LostWrites {
            path: path.to_path_buf(),
            acknowledged: witnessed.group,
            acknowledged_at: witnessed.at,
            found: found.map_or(0, |f| f.group),
            found_at: found.map(|f| f.at),
        }),
    }
}

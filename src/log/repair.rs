//! `repair`: bring a damaged sled database back to one that opens, in
//! steps from the safest, never deleting the original.
//!
//! 1. A witness file that is missing or damaged is rebuilt from sled's own
//!    group mark (the damaged one is kept as `sagalog.witness.damaged`).
//!    From then on the witness vouches for what sled holds now: writes lost
//!    before the repair can no longer be detected.
//! 2. If sled reports damage at open, its snapshot files (`snap.*`) and its
//!    `conf` are moved into `sagalog-set-aside-<time>/` in the directory.
//!    sled then rebuilds its state from its log and writes a new `conf`
//!    (sagalog always opens sled with the same settings).
//! 3. If the database still does not open whole (sled lost acknowledged
//!    writes, or cannot read part of its data), every key that can be read
//!    is copied into a fresh database beside it, `<dir>.salvaged`, and the
//!    sagas whose logs could not be copied are named. When sled cannot open
//!    or read the database (it panics on some damage to its log), copies
//!    of it in `<dir>.salvage-work` are tried with one 512 KiB log segment
//!    zeroed at a time (sled takes a zeroed segment for an unused one; the
//!    damaged one often holds only superseded pages), for logs of up to
//!    about 45 MiB, and the keys are read from the copy that yields most;
//!    the work copy is removed afterwards. The operator checks the report
//!    (lost writes show against the witness), then moves the copy into
//!    place.
//!
//! sled rewrites its log from a damaged spot on when it opens it, so the
//! first open after the damage (the service's, refused) can already have
//! destroyed what lay beyond it: a copy of the directory taken before any
//! open gives the salvage the most to work with.

use crate::ids::SagaId;
use crate::log::store::{sibling, SledOptions, SledStore, StoreError};
use crate::log::witness::{self, Mark, Witness};
use std::path::{Path, PathBuf};

/// What [`repair`] did. In JSON the outcome's fields sit beside the
/// others, under `"outcome": "healthy" | "salvaged"`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RepairReport {
    /// The witness file was rebuilt from sled's group mark.
    pub witness_rebuilt: bool,
    /// sled files moved aside (step 2), where they are now.
    pub set_aside: Vec<PathBuf>,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: RepairOutcome,
}

/// How [`repair`] ended.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RepairOutcome {
    /// The database opens and every value can be read: use it as it is.
    Healthy,
    /// The readable part was copied into a fresh database.
    Salvaged(Salvage),
}

/// What step 3 of [`repair`] copied, and what it could not.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Salvage {
    /// The fresh database.
    pub into: PathBuf,
    /// Keys copied.
    pub keys: u64,
    /// Why the original does not open (lost writes, unreadable data).
    pub reason: String,
    /// Sagas named by an index, key or timer whose log could not be
    /// copied, or whose log was only partly readable: they are parked when
    /// the copy is opened, and need an operator.
    pub incomplete: Vec<SagaId>,
    /// Every problem `verify` reports for what was read, as text.
    pub problems: Vec<String>,
    /// When the keys were read from a copy whose log has one 512 KiB
    /// segment zeroed (sled could not open or read the original): that
    /// segment's offset in sled's log file.
    pub zeroed_segment: Option<u64>,
}

/// Repairs the closed database in `path` (see the module docs). Fails like
/// [`SledStore::open`] for a directory that is locked, missing or not a
/// sagalog database, and with [`StoreError::Damaged`] if sled cannot open
/// it even without its snapshots, or `<dir>.salvaged` already exists.
pub fn repair(path: impl AsRef<Path>, options: SledOptions) -> Result<RepairReport, StoreError> {
    let path = path.as_ref().to_path_buf();
    let options = SledOptions {
        create: false,
        ..options
    };
    let mut report = RepairReport {
        witness_rebuilt: false,
        set_aside: Vec::new(),
        outcome: RepairOutcome::Healthy,
    };
    let mut reason = match SledStore::open(&path, options.clone()) {
        Ok(_) => return Ok(report),
        Err(e) => e,
    };
    if matches!(reason, StoreError::Damaged { .. }) && witness_is_unusable(&path) {
        rebuild_witness(&path, &options)?;
        report.witness_rebuilt = true;
        reason = match SledStore::open(&path, options.clone()) {
            Ok(_) => return Ok(report),
            Err(e) => e,
        };
    }
    if matches!(reason, StoreError::Damaged { .. }) {
        report.set_aside = set_aside_snapshots(&path)?;
        reason = match SledStore::open(&path, options.clone()) {
            Ok(_) => return Ok(report),
            Err(e) => e,
        };
    }
    match reason {
        StoreError::Damaged { .. } | StoreError::LostWrites { .. } => {}
        other => return Err(other),
    }
    report.outcome = RepairOutcome::Salvaged(salvage(&path, &options, reason.to_string())?);
    Ok(report)
}

fn damaged(path: &Path, detail: String) -> StoreError {
    StoreError::Damaged {
        path: path.to_path_buf(),
        detail,
    }
}

fn witness_is_unusable(path: &Path) -> bool {
    matches!(
        Witness::open(path, std::time::Duration::ZERO),
        Err(witness::OpenError::Missing | witness::OpenError::Damaged(_))
    )
}

/// Step 1: a new witness with sled's own group mark.
fn rebuild_witness(path: &Path, options: &SledOptions) -> Result<(), StoreError> {
    let io = |what: &str, e: std::io::Error| damaged(path, format!("{what}: {e}"));
    // sled's own lock keeps a running service out while this reads; the
    // handle this process dropped a moment ago may still hold it briefly.
    let db = crate::log::store::open_sled(path, options).map_err(|e| match e {
        StoreError::Locked { .. } => e,
        e => damaged(
            path,
            format!("sled cannot open it to rebuild the witness: {e}"),
        ),
    })?;
    let mark = db
        .get(crate::log::store::keys::GROUP)
        .map_err(|e| damaged(path, format!("sled cannot read its group mark: {e}")))?
        .ok_or_else(|| {
            damaged(
                path,
                "sled holds no group mark, so the witness cannot be rebuilt".into(),
            )
        })?;
    let mark = Mark::decode(&mark)
        .map_err(|why| damaged(path, format!("sled's group mark is unreadable ({why})")))?;
    drop(db);
    let file = path.join(witness::FILE_NAME);
    if file.exists() {
        let kept = path.join(format!("{}.damaged", witness::FILE_NAME));
        std::fs::rename(&file, &kept).map_err(|e| io("setting the damaged witness aside", e))?;
    }
    tracing::warn!(path = %path.display(), group = mark.group, "rebuilding the witness from sled's group mark");
    Witness::create(path, mark).map_err(|e| io("writing the new witness", e))?;
    Ok(())
}

/// Step 2: moves `snap.*` and `conf` into a new folder in the directory.
fn set_aside_snapshots(path: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let io = |what: &str, e: std::io::Error| damaged(path, format!("{what}: {e}"));
    // Hold the directory while files move.
    let _lock = SledStore::lock_only(path)?;
    let folder = path.join(format!(
        "sagalog-set-aside-{}",
        crate::ids::UnixMillis::now().0
    ));
    let mut moved = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| io("listing the directory", e))? {
        let entry = entry.map_err(|e| io("listing the directory", e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("snap.") || name == "conf" {
            if moved.is_empty() {
                std::fs::create_dir(&folder).map_err(|e| io("creating the set-aside folder", e))?;
            }
            let to = folder.join(&name);
            std::fs::rename(entry.path(), &to).map_err(|e| io("moving a sled file aside", e))?;
            moved.push(to);
        }
    }
    if !moved.is_empty() {
        std::fs::File::open(path)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("syncing the directory", e))?;
    }
    Ok(moved)
}

/// Step 3: copies every readable key into `<dir>.salvaged`.
fn salvage(path: &Path, options: &SledOptions, reason: String) -> Result<Salvage, StoreError> {
    let into = sibling(path, "salvaged");
    if into.exists() {
        return Err(damaged(
            path,
            format!(
                "{} already exists (an earlier salvage?); move it away and run repair again",
                into.display()
            ),
        ));
    }
    let work = sibling(path, "salvage-work");
    let (source, zeroed_segment) = salvage_source(path, &work, options)?;
    let report = crate::log::verify::verify(&source)?;
    let copy = SledStore::open(
        &into,
        SledOptions {
            create: true,
            ..options.clone()
        },
    )?;
    let mut pairs = Vec::new();
    let mut keys = 0u64;
    let mut failed = None;
    crate::log::store::KvLogStore::for_each_raw_salvaging(
        &source,
        &mut |key, value| {
            if crate::log::store::keys::is_metadata(key) {
                return true;
            }
            pairs.push((key.to_vec(), value.to_vec()));
            keys += 1;
            if pairs.len() == 10_000 {
                if let Err(e) = copy.put_raw(std::mem::take(&mut pairs)) {
                    failed = Some(e);
                    return false;
                }
            }
            true
        },
        &mut |_, _| {},
    )?;
    if let Some(e) = failed {
        return Err(e);
    }
    copy.put_raw(pairs)?;
    drop(source);
    if zeroed_segment.is_some() {
        if let Err(e) = std::fs::remove_dir_all(&work) {
            tracing::warn!(path = %work.display(), error = %e, "could not remove the salvage's work copy");
        }
    }
    let mut incomplete: Vec<SagaId> = report.problems.iter().filter_map(|p| p.saga).collect();
    incomplete.sort();
    incomplete.dedup();
    Ok(Salvage {
        into,
        keys,
        reason,
        incomplete,
        problems: report
            .problems
            .iter()
            .map(|p| {
                let saga = p.saga.map(|s| format!("saga {s}: ")).unwrap_or_default();
                format!("{}: {saga}{}", p.what, p.error)
            })
            .collect(),
        zeroed_segment,
    })
}

/// sled's log segment size (sagalog never changes sled's default).
const SEGMENT: u64 = 512 * 1024;

/// The store to salvage from: the original, opened for inspection, when
/// sled reads it whole; else whichever of the original and a copy in
/// `work` with one log segment zeroed (`zeroed_segment_copy`) yields more
/// readable keys, with that segment's offset. sled panics at open on some
/// damage, and a damaged page can hide every key from a scan, while the
/// rest of the log still holds them.
fn salvage_source(
    path: &Path,
    work: &Path,
    options: &SledOptions,
) -> Result<(SledStore, Option<u64>), StoreError> {
    let original = match SledStore::open_for_inspection(path, options.clone()) {
        Ok(store) if !matches!(store.finding(), Some(StoreError::Damaged { .. })) => {
            return Ok((store, None))
        }
        Ok(store) => Ok(store),
        Err(e @ StoreError::Damaged { .. }) => Err(e),
        Err(e) => return Err(e),
    };
    let copy = {
        // Hold the original while it is copied.
        let _lock = match &original {
            Ok(_) => None,
            Err(_) => Some(SledStore::lock_only(path)?),
        };
        zeroed_segment_copy(path, work, options)?
    };
    match (original, copy) {
        (Ok(original), Some((copy, offset))) => {
            if readable_keys(&copy) > readable_keys(&original) {
                Ok((copy, Some(offset)))
            } else {
                drop(copy);
                let _ = std::fs::remove_dir_all(work);
                Ok((original, None))
            }
        }
        (Ok(original), None) => Ok((original, None)),
        (Err(_), Some((copy, offset))) => Ok((copy, Some(offset))),
        (Err(unopenable), None) => Err(unopenable),
    }
}

/// How many keys a salvaging scan of `store` reads.
fn readable_keys(store: &SledStore) -> u64 {
    let mut keys = 0;
    let _ = crate::log::store::KvLogStore::for_each_raw_salvaging(
        store,
        &mut |_, _| {
            keys += 1;
            true
        },
        &mut |_, _| {},
    );
    keys
}

/// Most bytes [`zeroed_segment_copy`] copies in all (one copy of the log
/// per segment): it tries logs of up to about 45 MiB.
const MAX_SALVAGE_COPY: u64 = 2 << 30;

/// Tries, for each 512 KiB segment of the log of database `path`, a fresh
/// copy in `work` (witness, blobs and log; no snapshot or `conf`) with that
/// segment zeroed, which sled takes for an unused segment. Keeps the copy
/// from which the most keys can be read, with the zeroed segment's offset;
/// `None` if no copy opens, or the log is too large to try.
fn zeroed_segment_copy(
    path: &Path,
    work: &Path,
    options: &SledOptions,
) -> Result<Option<(SledStore, u64)>, StoreError> {
    let io = |what: &str, e: std::io::Error| damaged(path, format!("{what}: {e}"));
    let log_len = std::fs::metadata(path.join("db"))
        .map_err(|e| io("reading the size of sled's log", e))?
        .len();
    let segments = log_len.div_ceil(SEGMENT);
    if segments.saturating_mul(log_len) > MAX_SALVAGE_COPY {
        tracing::warn!(path = %path.display(), log_len, "the log is too large to try zeroing each segment");
        return Ok(None);
    }
    let attempt = |zeroed: Option<u64>| -> Result<Option<SledStore>, StoreError> {
        if work.exists() {
            std::fs::remove_dir_all(work).map_err(|e| io("clearing the work copy", e))?;
        }
        copy_with_zeroed(path, work, zeroed.map(|j| j * SEGMENT))
            .map_err(|e| io("copying the log", e))?;
        Ok(SledStore::open_for_inspection(work, options.clone()).ok())
    };
    let mut best: Option<(u64, u64)> = None;
    for segment in 0..segments {
        if let Some(store) = attempt(Some(segment))? {
            let keys = readable_keys(&store);
            if best.is_none_or(|(_, most)| keys > most) {
                best = Some((segment, keys));
            }
        }
    }
    let Some((segment, _)) = best else {
        let _ = std::fs::remove_dir_all(work);
        return Ok(None);
    };
    tracing::warn!(path = %path.display(), offset = segment * SEGMENT, "salvaging from a copy of the log with one segment zeroed");
    Ok(attempt(Some(segment))?.map(|store| (store, segment * SEGMENT)))
}

/// Copies database directory `from` into a new directory `to`: its
/// witness, its blob files and sled's log, with the 512 KiB segment at
/// offset `zeroed` (if any) as zeros; not its snapshots or `conf`, which
/// sled writes anew.
fn copy_with_zeroed(from: &Path, to: &Path, zeroed: Option<u64>) -> std::io::Result<()> {
    std::fs::create_dir(to)?;
    std::fs::copy(from.join(witness::FILE_NAME), to.join(witness::FILE_NAME))?;
    let blobs = from.join("blobs");
    if blobs.is_dir() {
        std::fs::create_dir(to.join("blobs"))?;
        for entry in std::fs::read_dir(&blobs)? {
            let entry = entry?;
            std::fs::copy(entry.path(), to.join("blobs").join(entry.file_name()))?;
        }
    }
    std::fs::copy(from.join("db"), to.join("db"))?;
    if let Some(offset) = zeroed {
        let log = std::fs::OpenOptions::new()
            .write(true)
            .open(to.join("db"))?;
        let len = log.metadata()?.len();
        let zeros = vec![0u8; SEGMENT.min(len.saturating_sub(offset)) as usize];
        std::os::unix::fs::FileExt::write_all_at(&log, &zeros, offset)?;
    }
    Ok(())
}

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
//!    sagas whose logs could not be copied are named. The operator checks
//!    the report, then moves the copy into place.

use crate::ids::SagaId;
use crate::log::store::{SledOptions, SledStore, StoreError};
use crate::log::witness::{self, Mark, Witness};
use std::path::{Path, PathBuf};

/// What [`repair`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairReport {
    /// The witness file was rebuilt from sled's group mark.
    pub witness_rebuilt: bool,
    /// sled files moved aside (step 2), where they are now.
    pub set_aside: Vec<PathBuf>,
    /// How it ended.
    pub outcome: RepairOutcome,
}

/// How [`repair`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RepairOutcome {
    /// The database opens and every value can be read: use it as it is.
    Healthy,
    /// The readable part was copied into a fresh database.
    Salvaged(Salvage),
}

/// What step 3 of [`repair`] copied, and what it could not.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// Every problem `verify` reports for the original, as text.
    pub problems: Vec<String>,
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
    // sled's own lock keeps a running service out while this reads.
    let db = sled::Config::new()
        .path(path)
        .flush_every_ms(None)
        .cache_capacity(options.cache_capacity)
        .open()
        .map_err(|e| {
            damaged(
                path,
                format!("sled cannot open it to rebuild the witness: {e}"),
            )
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
    let into = {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "db".into());
        path.with_file_name(format!("{name}.salvaged"))
    };
    if into.exists() {
        return Err(damaged(
            path,
            format!(
                "{} already exists (an earlier salvage?); move it away and run repair again",
                into.display()
            ),
        ));
    }
    let source = SledStore::open_for_inspection(path, options.clone())?;
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
    crate::log::store::LogStore::for_each_raw_salvaging(
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
    })
}

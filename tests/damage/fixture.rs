//! A database written with known sagas, the kinds of damage done to its
//! files, and what opening it again gives.

use super::*;

/// Groups written, sagas per group, bytes per saga's value: about 3 MiB of
/// log, so sled's log spans several 512 KiB segments.
pub(super) const GROUPS: usize = 48;

pub(super) const PER_GROUP: usize = 64;

pub(super) const VALUE: usize = 1024;

/// A database with `GROUPS` acknowledged group commits, closed, opened
/// again and closed (as any restart does, which makes sled write a
/// snapshot).
pub(super) fn written() -> Written {
    let written = written_once();
    drop(SledStore::open(&written.path, SledOptions::default()).unwrap());
    written
}

/// A database with `GROUPS` acknowledged group commits, closed: the log
/// was never replayed, and there is no snapshot.
pub(super) struct Written {
    pub(super) _dir: tempfile::TempDir,
    pub(super) path: PathBuf,
    pub(super) acknowledged: Vec<(SagaId, Vec<u8>)>,
}

pub(super) fn value_of(saga: SagaId) -> Vec<u8> {
    let seed = saga.to_bytes();
    (0..VALUE).map(|i| seed[i % 16] ^ (i as u8)).collect()
}

pub(super) fn written_once() -> Written {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let store = SledStore::open(&path, SledOptions::default()).unwrap();
    let mut acknowledged = Vec::new();
    for _ in 0..GROUPS {
        let appends: Vec<SagaAppend> = (0..PER_GROUP)
            .map(|_| {
                let saga = SagaId::new();
                SagaAppend::records(saga, 0, vec![value_of(saga)])
            })
            .collect();
        let batch: Vec<&SagaAppend> = appends.iter().collect();
        store.append(&batch, None).unwrap();
        acknowledged.extend(appends.iter().map(|a| (a.saga, value_of(a.saga))));
    }
    drop(store);
    Written {
        _dir: dir,
        path,
        acknowledged,
    }
}

/// How an open of a damaged database ended.
#[derive(Debug)]
pub(super) enum Outcome {
    /// It opened and every acknowledged write is there.
    FullRecovery,
    /// It refused with this typed error.
    Refused(StoreError),
}

/// Opens `written` on another thread (a hang fails the test), and checks
/// every acknowledged write if it opens.
pub(super) fn reopen(written: &Written) -> Outcome {
    let (tx, rx) = mpsc::channel();
    let path = written.path.clone();
    let acknowledged = written.acknowledged.clone();
    std::thread::spawn(move || {
        let result = std::panic::catch_unwind(|| {
            let store = match SledStore::open(&path, SledOptions::default()) {
                Ok(store) => store,
                Err(e) => return Ok(Outcome::Refused(e)),
            };
            let mut missing = 0;
            for (saga, value) in &acknowledged {
                match store.read_log(*saga) {
                    Ok(values) if values == [(0, value.clone())] => {}
                    Ok(_) => missing += 1,
                    Err(e) => return Err(format!("a read after a clean open failed: {e}")),
                }
            }
            if missing > 0 {
                return Err(format!(
                    "opened silently with {missing} of {} acknowledged writes missing",
                    acknowledged.len()
                ));
            }
            Ok(Outcome::FullRecovery)
        });
        let _ = tx.send(result);
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(Ok(outcome))) => outcome,
        Ok(Ok(Err(silent))) => panic!("{silent}"),
        Ok(Err(_)) => panic!("opening the damaged database panicked"),
        Err(_) => panic!("opening the damaged database hung"),
    }
}

pub(super) fn is_typed_refusal(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Refused(StoreError::LostWrites { .. } | StoreError::Damaged { .. })
    )
}

pub(super) fn file(path: &Path, name: &str) -> PathBuf {
    path.join(name)
}

pub(super) fn snapshots(path: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("snap."))
        })
        .collect()
}

pub(super) fn modify(path: &Path, change: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    change(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

pub(super) fn zero_a_block(w: &Written) {
    modify(&file(&w.path, "db"), |bytes| {
        let at = (bytes.len() / 2) & !4095;
        bytes[at..at + 4096].fill(0);
    })
}

pub(super) fn flip_bytes(w: &Written) {
    modify(&file(&w.path, "db"), |bytes| {
        let len = bytes.len();
        for i in 0..16 {
            bytes[len / 3 + i * 7919] ^= 0xA5;
        }
    })
}

pub(super) fn flip_a_bit_in_the_oldest_segment(w: &Written) {
    modify(&file(&w.path, "db"), |bytes| bytes[100_000] ^= 0x08)
}

pub(super) fn damage_the_snapshots(w: &Written) {
    for snap in snapshots(&w.path) {
        modify(&snap, |bytes| {
            let at = bytes.len() / 2;
            bytes[at] ^= 0xFF;
        });
    }
}

pub(super) fn damage_conf(w: &Written) {
    modify(&file(&w.path, "conf"), |bytes| {
        let at = bytes.len() / 2;
        bytes[at] ^= 0xFF;
    })
}

pub(super) fn damage_the_witness(w: &Written) {
    modify(&file(&w.path, WITNESS), |bytes| bytes[35] ^= 1)
}

/// Prints the outcome as one row of the damage table.
pub(super) fn report(kind: &str, outcome: &Outcome) {
    let said = match outcome {
        Outcome::FullRecovery => "full recovery".to_string(),
        Outcome::Refused(e) => format!("refused: {e}"),
    };
    println!("damage | {kind} | {said}");
}

pub(super) fn cut_short(written: &Written) {
    let db = file(&written.path, "db");
    let len = std::fs::metadata(&db).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(len - 64 * 1024)
        .unwrap();
}

/// Makes the witness claim `extra` more acknowledged groups than sled
/// holds: what the witness sees after sled silently dropped them.
pub(super) fn witness_ahead(written: &Written, extra: u64) {
    modify(&file(&written.path, WITNESS), |bytes| {
        let mark = Mark::decode(bytes).unwrap();
        let ahead = Mark {
            group: mark.group + extra,
            ..mark
        };
        *bytes = ahead.encode().to_vec();
    })
}

/// Every acknowledged write `store` still holds.
pub(super) fn present(store: &SledStore, written: &Written) -> usize {
    written
        .acknowledged
        .iter()
        .filter(|(saga, value)| {
            store
                .read_log(*saga)
                .is_ok_and(|values| values == [(0, value.clone())])
        })
        .count()
}

/// A kind of damage, by name, and how to apply it.
pub(super) type Damage = (&'static str, fn(&Written));

/// Each kind of damage to sled's files, applied to `written`.
pub(super) fn damage_kinds() -> Vec<Damage> {
    vec![
        ("zeroed 4 KiB block mid-log", zero_a_block),
        ("16 flipped bytes", flip_bytes),
        (
            "a flipped bit in the oldest segment",
            flip_a_bit_in_the_oldest_segment,
        ),
        ("the newest segment cut short", cut_short),
        ("a damaged snapshot", damage_the_snapshots),
        ("a damaged conf", damage_conf),
        ("a damaged witness", damage_the_witness),
    ]
}

//! `verify`: decode every value in a store and report the ones that do not
//! decode, with their raw keys, what the store cannot read at all, and the
//! acknowledged writes it no longer holds. It reads only; repairing is an
//! operator's decision (`log::repair`, DESIGN.md "Damage").

use crate::ids::SagaId;
use crate::log::codec;
use crate::log::record::WaitPurpose;
use crate::log::store::{keys, IndexEntry, LogStore, StoreError, LAYOUT_VERSION};
use crate::log::witness::Mark;

/// One value that does not decode, or a key that fits no keyspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The raw key.
    pub key: Vec<u8>,
    /// The saga the key belongs to, when the key itself says so.
    pub saga: Option<SagaId>,
    /// What kind of value it should have held (`log`, `active index`, ...).
    pub what: &'static str,
    /// What is wrong with it.
    pub error: String,
}

/// What [`verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Keys read.
    pub keys: u64,
    /// Log values read (one per append).
    pub log_values: u64,
    /// Records decoded from them.
    pub records: u64,
    /// Index entries (active and finished) decoded.
    pub index_entries: u64,
    /// Everything that failed to decode, in key order.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// True when every value decoded.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Reads every key of `store` and decodes every value by its keyspace: log
/// values into records (checksums included), index entries, idempotency
/// keys, timers, the format marker and the index watermark. Also reports a
/// log or an idempotency key whose saga has no index entry, unless the saga
/// is at or above the watermark (young sagas get their entry late, see
/// DESIGN.md §4.2); below it, appends and deletes write them together, so one
/// without the other means damage. An index entry, key or timer whose saga
/// has no log is reported too. First comes what opening found (lost
/// writes: [`LogStore::open_finding`]); a stretch of keys the store cannot
/// read is reported and skipped. Bad values are reported, never fatal.
pub fn verify(store: &dyn LogStore) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    if let Some(finding) = store.open_finding() {
        report.problems.push(Problem {
            key: keys::GROUP.to_vec(),
            saga: None,
            what: "witness",
            error: finding.to_string(),
        });
    }
    let mut unreadable = Vec::new();
    // Sagas named by an index entry, key or timer, and those with a log.
    let mut named: std::collections::BTreeMap<SagaId, &'static str> = Default::default();
    let mut logged = std::collections::HashSet::new();
    // An unreadable watermark is reported below, with its key; meanwhile
    // no saga is excused from having an index entry.
    let mark = store.watermark().ok().flatten();
    let unindexed_ok = |id: &SagaId| mark.is_some_and(|mark| *id >= mark);
    // Keys come in order: 'A' and 'F' before 'K' and 'L'.
    let mut indexed = std::collections::HashSet::new();
    let mut orphan_reported = None;
    store.for_each_raw_salvaging(
        &mut |key, value| {
            report.keys += 1;
            let saga = match key.first() {
                // A finished batch's key names the batch, not a saga.
                Some(&(keys::LOG | keys::ACTIVE)) => keys::saga_id(key, 1),
                Some(&keys::TIMER) => keys::parse_timer(key).map(|t| t.saga),
                _ => None,
            };
            let mut problem = |what, error: String| {
                report.problems.push(Problem {
                    key: key.to_vec(),
                    saga,
                    what,
                    error,
                })
            };
            match key.first() {
                Some(&keys::LOG) if key.len() == keys::LOG_KEY_LEN => {
                    report.log_values += 1;
                    logged.extend(saga);
                    if let Some(id) = saga.filter(|id| !indexed.contains(id) && !unindexed_ok(id)) {
                        if orphan_reported != Some(id) {
                            orphan_reported = Some(id);
                            problem(
                                "log",
                                "a log without an index entry (a partly deleted saga)".into(),
                            );
                        }
                    }
                    match codec::decode_records(value) {
                        Ok(records) => report.records += records.len() as u64,
                        Err(e) => problem("log", e.to_string()),
                    }
                }
                Some(&keys::LOG) => problem(
                    "log",
                    format!(
                        "log key of {} bytes, expected {}",
                        key.len(),
                        keys::LOG_KEY_LEN
                    ),
                ),
                Some(&prefix @ (keys::ACTIVE | keys::FINISHED)) => {
                    let finished = prefix == keys::FINISHED;
                    let what = if !finished {
                        "active index"
                    } else {
                        "finished index"
                    };
                    if key.len() != keys::INDEX_KEY_LEN {
                        problem(
                            what,
                            format!(
                                "index key of {} bytes, expected {}",
                                key.len(),
                                keys::INDEX_KEY_LEN
                            ),
                        );
                        return true;
                    }
                    let (items, damage) = if finished {
                        codec::split_finished_batch(value)
                    } else {
                        (saga.map(|id| (id, value)).into_iter().collect(), None)
                    };
                    for (id, entry) in items {
                        report.index_entries += 1;
                        indexed.insert(id);
                        named.entry(id).or_insert(what);
                        match codec::decode_index_entry::<IndexEntry>(entry) {
                            Ok(entry) if entry.status.is_terminal() != finished => problem(
                                what,
                                format!(
                                    "entry of {id} says {} but sits in the {what}",
                                    entry.status
                                ),
                            ),
                            Ok(_) => {}
                            Err(e) => problem(what, format!("entry of {id}: {e}")),
                        }
                    }
                    if let Some(e) = damage {
                        problem(what, format!("damaged finished batch: {e}"));
                    }
                }
                Some(&keys::IDEMPOTENCY) => {
                let owner = crate::log::store::parse_key_claim(value).map(|claim| claim.saga);
                if let Some(id) = owner {
                    named.entry(id).or_insert("idempotency key");
                }
                if owner.is_some_and(|id| !indexed.contains(&id) && !unindexed_ok(&id)) {
                    problem(
                        "idempotency key",
                        "names a saga that has no index entry".into(),
                    );
                }
                if owner.is_none() {
                    problem(
                        "idempotency key",
                        format!(
                            "value of {} bytes, expected a 16-byte saga id and an optional 8-byte fingerprint",
                            value.len()
                        ),
                    );
                }
            }
            Some(&keys::TIMER) => {
                    if saga.is_none() {
                        problem(
                            "timer",
                            format!(
                                "timer key of {} bytes, expected {}",
                                key.len(),
                                keys::TIMER_KEY_LEN
                            ),
                        );
                    } else if let Err(e) = codec::decode_index_entry::<WaitPurpose>(value) {
                        problem("timer", e.to_string());
                    }
                    if let Some(id) = saga {
                        named.entry(id).or_insert("timer");
                    }
                }
                _ if key == keys::WATERMARK => {
                    if value.len() != 16 {
                        problem(
                            "index watermark",
                            format!("value of {} bytes, expected a 16-byte saga id", value.len()),
                        );
                    }
                }
                _ if key == keys::GROUP => {
                    if let Err(e) = Mark::decode(value) {
                        problem("group mark", e);
                    }
                }
                _ if key == keys::FORMAT => {
                    if value != [LAYOUT_VERSION] {
                        problem(
                            "format marker",
                            format!(
                                "layout version {value:?}, this build reads [{LAYOUT_VERSION}]"
                            ),
                        );
                    }
                }
                _ => problem("unknown", "the key belongs to no sagalog keyspace".into()),
            }
            true
        },
        &mut |after, error| unreadable.push((after.map(<[u8]>::to_vec), error)),
    )?;
    for (after, error) in unreadable {
        report.problems.push(Problem {
            saga: after.as_deref().and_then(|k| keys::saga_id(k, 1)),
            key: after.unwrap_or_default(),
            what: "unreadable",
            error: format!("the keys after this one could not be read, and were skipped: {error}"),
        });
    }
    for (id, what) in named {
        if !logged.contains(&id) {
            report.problems.push(Problem {
                key: Vec::new(),
                saga: Some(id),
                what,
                error: format!("the {what} names saga {id}, whose log is missing"),
            });
        }
    }
    Ok(report)
}

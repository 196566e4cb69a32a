//! `verify`: decode every value in a store and report the ones that do not
//! decode, with their raw keys, what the store cannot read at all, and the
//! acknowledged writes it no longer holds. It reads only; repairing is an
//! operator's decision (`log::repair`, DESIGN.md "Damage").

use crate::ids::SagaId;
use crate::log::codec;
use crate::log::record::WaitPurpose;
use crate::log::store::{keys, IndexEntry, KvLogStore, StoreError, LAYOUT_VERSION};
use crate::log::witness::Mark;

/// One value that does not decode, or a key that fits no keyspace. In
/// JSON: `{"key": hex, "saga_id", "what", "error"}`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The raw key.
    #[serde(serialize_with = "hex")]
    pub key: Vec<u8>,
    /// The saga the key belongs to, when the key itself says so.
    #[serde(rename = "saga_id")]
    pub saga: Option<SagaId>,
    /// What kind of value it should have held (`log`, `active index`, ...).
    pub what: &'static str,
    /// What is wrong with it.
    pub error: String,
}

/// What [`verify`] found; in JSON the problems are `corrupt`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
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
    #[serde(rename = "corrupt")]
    pub problems: Vec<Problem>,
}

/// A key as lowercase hex.
fn hex<S: serde::Serializer>(key: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    let text: String = key.iter().map(|b| format!("{b:02x}")).collect();
    serializer.serialize_str(&text)
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
/// writes: [`KvLogStore::open_finding`]); a stretch of keys the store cannot
/// read is reported and skipped. Bad values are reported, never fatal.
pub fn verify(store: &dyn KvLogStore) -> Result<VerifyReport, StoreError> {
    let mut check = Checker {
        report: VerifyReport::default(),
        // An unreadable watermark is reported with its key; meanwhile no
        // saga is excused from having an index entry.
        mark: store.watermark().ok().flatten(),
        named: Default::default(),
        logged: Default::default(),
        indexed: Default::default(),
        orphan_reported: None,
    };
    if let Some(finding) = store.open_finding() {
        check.problem(keys::GROUP, None, "witness", finding.to_string());
    }
    let mut unreadable = Vec::new();
    store.for_each_raw_salvaging(
        &mut |key, value| {
            check.value(key, value);
            true
        },
        &mut |after, error| unreadable.push((after.map(<[u8]>::to_vec), error)),
    )?;
    for (after, error) in unreadable {
        let saga = after.as_deref().and_then(|k| keys::saga_id(k, 1));
        let key = after.unwrap_or_default();
        check.problem(
            &key,
            saga,
            "unreadable",
            format!("the keys after this one could not be read, and were skipped: {error}"),
        );
    }
    Ok(check.finish())
}

/// What [`verify`] has seen so far. Keys come in order: `'A'` and `'F'`
/// before `'K'` and `'L'`, so a log or key is checked against every index
/// entry.
struct Checker {
    report: VerifyReport,
    /// The index watermark: sagas at or above it may have no index entry.
    mark: Option<SagaId>,
    /// Sagas named by an index entry, key or timer, with what named them.
    named: std::collections::BTreeMap<SagaId, &'static str>,
    /// Sagas with a log value.
    logged: std::collections::HashSet<SagaId>,
    /// Sagas with an index entry.
    indexed: std::collections::HashSet<SagaId>,
    /// The last saga reported for a log without an index entry (a saga's
    /// log values come together: one report per saga).
    orphan_reported: Option<SagaId>,
}

impl Checker {
    fn problem(&mut self, key: &[u8], saga: Option<SagaId>, what: &'static str, error: String) {
        self.report.problems.push(Problem {
            key: key.to_vec(),
            saga,
            what,
            error,
        });
    }

    /// Whether saga `id` may lack an index entry (it is young, §4.2).
    fn unindexed_ok(&self, id: SagaId) -> bool {
        self.mark.is_some_and(|mark| id >= mark)
    }

    /// Checks one key and its value by its keyspace.
    fn value(&mut self, key: &[u8], value: &[u8]) {
        self.report.keys += 1;
        match key.first() {
            Some(&keys::LOG) => self.log(key, value),
            Some(&prefix @ (keys::ACTIVE | keys::FINISHED)) => {
                self.index(key, value, prefix == keys::FINISHED)
            }
            Some(&keys::IDEMPOTENCY) => self.idempotency(key, value),
            Some(&keys::TIMER) => self.timer(key, value),
            _ => self.metadata(key, value),
        }
    }

    fn log(&mut self, key: &[u8], value: &[u8]) {
        let saga = keys::saga_id(key, 1);
        if key.len() != keys::LOG_KEY_LEN {
            let error = format!(
                "log key of {} bytes, expected {}",
                key.len(),
                keys::LOG_KEY_LEN
            );
            return self.problem(key, saga, "log", error);
        }
        self.report.log_values += 1;
        self.logged.extend(saga);
        if let Some(id) = saga.filter(|id| !self.indexed.contains(id) && !self.unindexed_ok(*id)) {
            if self.orphan_reported != Some(id) {
                self.orphan_reported = Some(id);
                let error = "a log without an index entry (a partly deleted saga)".into();
                self.problem(key, saga, "log", error);
            }
        }
        match codec::decode_records(value) {
            Ok(records) => self.report.records += records.len() as u64,
            Err(e) => self.problem(key, saga, "log", e.to_string()),
        }
    }

    /// An active entry, or a finished batch (whose key names the batch, not
    /// a saga).
    fn index(&mut self, key: &[u8], value: &[u8], finished: bool) {
        let what = if finished {
            "finished index"
        } else {
            "active index"
        };
        let saga = (!finished).then(|| keys::saga_id(key, 1)).flatten();
        if key.len() != keys::INDEX_KEY_LEN {
            let error = format!(
                "index key of {} bytes, expected {}",
                key.len(),
                keys::INDEX_KEY_LEN
            );
            return self.problem(key, saga, what, error);
        }
        let (items, damage) = if finished {
            codec::split_finished_batch(value)
        } else {
            (saga.map(|id| (id, value)).into_iter().collect(), None)
        };
        for (id, entry) in items {
            self.report.index_entries += 1;
            self.indexed.insert(id);
            self.named.entry(id).or_insert(what);
            match codec::decode_index_entry::<IndexEntry>(entry) {
                Ok(entry) if entry.status.is_terminal() != finished => {
                    let error =
                        format!("entry of {id} says {} but sits in the {what}", entry.status);
                    self.problem(key, saga, what, error);
                }
                Ok(_) => {}
                Err(e) => self.problem(key, saga, what, format!("entry of {id}: {e}")),
            }
        }
        if let Some(e) = damage {
            self.problem(key, saga, what, format!("damaged finished batch: {e}"));
        }
    }

    fn idempotency(&mut self, key: &[u8], value: &[u8]) {
        let what = "idempotency key";
        let Some(id) = crate::log::store::parse_key_claim(value).map(|claim| claim.saga) else {
            let error = format!(
                "value of {} bytes, expected a 16-byte saga id and an optional 8-byte fingerprint",
                value.len()
            );
            return self.problem(key, None, what, error);
        };
        self.named.entry(id).or_insert(what);
        if !self.indexed.contains(&id) && !self.unindexed_ok(id) {
            let error = "names a saga that has no index entry".into();
            self.problem(key, None, what, error);
        }
    }

    fn timer(&mut self, key: &[u8], value: &[u8]) {
        let Some(saga) = keys::parse_timer(key).map(|t| t.saga) else {
            let error = format!(
                "timer key of {} bytes, expected {}",
                key.len(),
                keys::TIMER_KEY_LEN
            );
            return self.problem(key, None, "timer", error);
        };
        if let Err(e) = codec::decode_index_entry::<WaitPurpose>(value) {
            self.problem(key, Some(saga), "timer", e.to_string());
        }
        self.named.entry(saga).or_insert("timer");
    }

    /// The database's own keys: the watermark, the group mark, the format.
    fn metadata(&mut self, key: &[u8], value: &[u8]) {
        let (what, error) = if key == keys::WATERMARK {
            let error = (value.len() != 16)
                .then(|| format!("value of {} bytes, expected a 16-byte saga id", value.len()));
            ("index watermark", error)
        } else if key == keys::GROUP {
            ("group mark", Mark::decode(value).err())
        } else if key == keys::FORMAT {
            let error = (value != [LAYOUT_VERSION])
                .then(|| format!("layout version {value:?}, this build reads [{LAYOUT_VERSION}]"));
            ("format marker", error)
        } else {
            let error = "the key belongs to no sagalog keyspace".to_string();
            ("unknown", Some(error))
        };
        if let Some(error) = error {
            self.problem(key, None, what, error);
        }
    }

    /// The report, with every index entry, key or timer whose saga has no
    /// log.
    fn finish(mut self) -> VerifyReport {
        let named = std::mem::take(&mut self.named);
        for (id, what) in named {
            if !self.logged.contains(&id) {
                let error = format!("the {what} names saga {id}, whose log is missing");
                self.problem(&[], Some(id), what, error);
            }
        }
        self.report
    }
}

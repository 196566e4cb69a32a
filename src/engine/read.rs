//! Reading one saga (its view and history) and the engine's own state.

use super::view::{HistoryEntry, SagaListing, SagaView};
use super::{Engine, SagaFilter};
use crate::error::{Error, ParkReason};
use crate::ids::{SagaId, UnixMillis};
use crate::log::codec;
use crate::log::record::LogEntry;
use crate::log::store::{IndexEntry, LogStore};
use crate::log::writer::WriterStats;
use crate::state::{fold, SagaState};
use crate::status::SagaStatus;
use crate::sync::lock;
use std::sync::Arc;

impl Engine {
    /// The current state of saga `id`, read from the log.
    ///
    /// A parked saga whose log cannot be read is returned from its index
    /// entry with status `Suspended` and the park reason.
    pub async fn saga(&self, id: SagaId) -> Result<SagaView, Error> {
        self.view_and_state(id).await.map(|(view, _)| view)
    }

    /// The view of saga `id`, with the state it was made from when its log
    /// could be read: one read of the log for both.
    pub(super) async fn view_and_state(
        &self,
        id: SagaId,
    ) -> Result<(SagaView, Option<SagaState>), Error> {
        let parked = lock(&self.inner.parked).get(&id).map(ToString::to_string);
        match self.load_state(id).await {
            Ok(state) => {
                let mut view = SagaView::from_state(id, &state);
                for (step, plan) in state.plan().steps.iter().enumerate() {
                    if plan.child.is_some() {
                        if let Some(child) = self.child_of(id, step as u32).await? {
                            view.children.push((plan.name.clone(), child));
                        }
                    }
                }
                if let Some(reason) = parked {
                    view.status = SagaStatus::Suspended;
                    view.waiting = Some(parked_waiting(&reason));
                    view.reason = Some(reason);
                }
                Ok((view, Some(state)))
            }
            Err(e @ (Error::Decode { .. } | Error::Illegal { .. })) => {
                let entry = self.index_entry(id).await?;
                let reason = parked.unwrap_or_else(|| e.to_string());
                let view = SagaView {
                    saga_id: id,
                    saga_type: entry
                        .as_ref()
                        .map(|e| e.saga_type.clone())
                        .unwrap_or_else(|| "?".into()),
                    version: 0,
                    status: SagaStatus::Suspended,
                    strategy: "?".to_owned(),
                    tcc: false,
                    idempotency_key: None,
                    started_at: entry.as_ref().map_or(UnixMillis(0), |e| e.started_at),
                    updated_at: entry.as_ref().map_or(UnixMillis(0), |e| e.started_at),
                    steps: Vec::new(),
                    failure: None,
                    waiting: Some(parked_waiting(&reason)),
                    reason: Some(reason),
                    parent: None,
                    children: Vec::new(),
                    pending: Vec::new(),
                };
                Ok((view, None))
            }
            Err(e) => Err(e),
        }
    }

    pub(super) async fn index_entry(&self, id: SagaId) -> Result<Option<IndexEntry>, Error> {
        let stored = self.inner.store.read_active(id).await?;
        let deferred = lock(&self.inner.deferred).get(&id).cloned();
        let bytes = match stored.or(deferred) {
            Some(bytes) => Some(bytes),
            // Only for a saga whose log cannot be read: no need to be quick.
            None => self
                .inner
                .store
                .scan_finished()
                .await?
                .into_iter()
                .find(|(saga, _)| *saga == id)
                .map(|(_, bytes)| bytes),
        };
        Ok(bytes.and_then(|bytes| codec::decode_index_entry(&bytes).ok()))
    }

    /// Every saga's encoded index entry: the active and finished indexes,
    /// and the entries the writer has not written yet.
    pub(super) async fn index_pairs(&self) -> Result<Vec<(SagaId, Vec<u8>)>, Error> {
        // Deferred first: a saga that has just been indexed can be in both
        // for a moment, and the store's entry is the newer one then.
        let deferred = lock(&self.inner.deferred).clone();
        let active = self.inner.store.scan_active(None, usize::MAX).await?;
        let finished = self.inner.store.scan_finished().await?;
        Ok(merge_index(active, finished, deferred))
    }

    /// Every record of saga `id` in order, with timestamps. Unreadable
    /// records appear with their decode error.
    pub async fn history(&self, id: SagaId) -> Result<Vec<HistoryEntry>, Error> {
        read_history(&*self.inner.store, id).await
    }

    /// Every saga (active and finished), oldest first, optionally only
    /// those with `status`. Parked sagas count as `Suspended`. See
    /// [`Engine::find`] for more filters.
    pub async fn list(&self, status: Option<SagaStatus>) -> Result<Vec<SagaListing>, Error> {
        let filter = match status {
            Some(status) => SagaFilter::new().status(status),
            None => SagaFilter::new(),
        };
        self.find(&filter).await
    }

    /// Sagas parked because they cannot run, with the reason, in id order.
    pub fn parked(&self) -> Vec<(SagaId, ParkReason)> {
        let mut out: Vec<_> = lock(&self.inner.parked)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        out.sort_by_key(|(id, _)| *id);
        out
    }

    /// Decodes every value in the store and reports the ones that do not
    /// decode, with their keys; see [`crate::log::verify::verify`].
    pub async fn verify(&self) -> Result<crate::log::verify::VerifyReport, Error> {
        Ok(self.inner.store.verify().await?)
    }

    /// The engine's current time, as written into records.
    pub fn now(&self) -> UnixMillis {
        self.inner.clock.now()
    }

    /// `Ok` while the log takes writes. Once a write could not be made
    /// durable (a failed flush or `fdatasync` on the database's disk), every later
    /// write is refused, so no saga can move on and no saga can start, until
    /// the engine is opened again (recovery then reads what the disk really
    /// holds). The error says what failed. A service should take itself
    /// out of rotation when this fails and restart once the disk is fixed;
    /// the `sagalog_log_writable` gauge (0 or 1) says the same to a
    /// metrics scraper. Reads (views, history, listings) keep working.
    pub fn writable(&self) -> Result<(), Error> {
        Ok(self.inner.store.writable()?)
    }

    /// Counters of the log writer (appends, flushes, entries written).
    pub fn log_stats(&self) -> Arc<WriterStats> {
        self.inner.writer.stats().clone()
    }
}

/// Every record of saga `id` in order, with timestamps. In a damaged value,
/// the records before the damage are read, and the rest of the value
/// appears as one entry with its decode error.
pub(super) async fn read_history(
    store: &dyn LogStore,
    id: SagaId,
) -> Result<Vec<HistoryEntry>, Error> {
    history_of(id, store.read_log(id).await?)
}

/// The history in the log values `raw` of saga `id` (see [`read_history`]).
fn history_of(id: SagaId, raw: Vec<(u64, Vec<u8>)>) -> Result<Vec<HistoryEntry>, Error> {
    if raw.is_empty() {
        return Err(Error::NotFound(id));
    }
    let mut history = Vec::with_capacity(raw.len() * 4);
    for (first_seq, value) in raw {
        let (records, damage) = codec::decode_records_prefix(&value);
        let mut seq = first_seq;
        for record in records {
            history.push(HistoryEntry {
                seq,
                record: Ok(record),
            });
            seq += 1;
        }
        if let Some(error) = damage {
            history.push(HistoryEntry {
                seq,
                record: Err(error),
            });
        }
    }
    Ok(history)
}

/// The saga's records in `history` in order; the first unreadable value is
/// an error.
fn entries_of(id: SagaId, history: Vec<HistoryEntry>) -> Result<Vec<LogEntry>, Error> {
    history
        .into_iter()
        .map(|entry| match entry.record {
            Ok((at, record)) => Ok(LogEntry {
                seq: entry.seq,
                at,
                record,
            }),
            Err(error) => Err(Error::Decode {
                saga: id,
                seq: entry.seq,
                error,
            }),
        })
        .collect()
}

/// Saga `id`'s state, folded from its log.
pub(crate) async fn load_state(store: &dyn LogStore, id: SagaId) -> Result<SagaState, Error> {
    state_of(id, store.read_log(id).await?)
}

/// The state folded from the log values `raw` of saga `id`.
pub(crate) fn state_of(id: SagaId, raw: Vec<(u64, Vec<u8>)>) -> Result<SagaState, Error> {
    let entries = entries_of(id, history_of(id, raw)?)?;
    fold(&entries).map_err(|error| Error::Illegal { saga: id, error })
}

/// What a parked saga waits for: someone to fix the cause and reopen.
fn parked_waiting(reason: &str) -> String {
    format!("parked until the cause is fixed and the engine reopened: {reason}")
}

/// One entry per saga from the three places an index entry can be, read
/// one after another: a saga that finishes between the scan of the active
/// index and the scan of the finished one is in both, and its finished
/// entry is the newer (a finished saga never runs again); a stored entry is
/// newer than a deferred one.
fn merge_index(
    active: Vec<(SagaId, Vec<u8>)>,
    finished: Vec<(SagaId, Vec<u8>)>,
    deferred: impl IntoIterator<Item = (SagaId, Vec<u8>)>,
) -> Vec<(SagaId, Vec<u8>)> {
    let mut seen: std::collections::HashSet<SagaId> = finished.iter().map(|(id, _)| *id).collect();
    let mut pairs = finished;
    for (id, bytes) in active.into_iter().chain(deferred) {
        if seen.insert(id) {
            pairs.push((id, bytes));
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::merge_index;
    use crate::ids::SagaId;

    fn id(n: u8) -> SagaId {
        SagaId::from_bytes([n; 16])
    }

    #[test]
    fn a_saga_that_finishes_between_the_two_scans_is_listed_once_as_finished() {
        let active = vec![(id(1), b"running".to_vec())];
        let finished = vec![(id(1), b"done".to_vec())];

        let merged = merge_index(active, finished, Vec::new());

        assert_eq!(merged, vec![(id(1), b"done".to_vec())]);
    }

    #[test]
    fn a_stored_entry_wins_over_a_deferred_one() {
        let active = vec![(id(1), b"stored".to_vec())];
        let deferred = vec![(id(1), b"deferred".to_vec()), (id(2), b"young".to_vec())];

        let merged = merge_index(active, Vec::new(), deferred);

        assert_eq!(
            merged,
            vec![(id(1), b"stored".to_vec()), (id(2), b"young".to_vec())]
        );
    }
}

//! A saga's records between the state that holds them and the log: staged
//! (applied in memory, encoded into the value the next append writes),
//! then made durable, with the index and timer changes they imply.

use crate::error::Error;
use crate::ids::{SagaId, UnixMillis};
use crate::log::codec;
use crate::log::record::{Decision, LogEntry, Record};
use crate::log::store::{IndexEntry, IndexSet, IndexUpdate, LogValue, SagaAppend, TimerKey};
use crate::state::{PendingTimer, SagaState};
use crate::status::SagaStatus;

/// The largest log value a loop grows by rewriting it (DESIGN.md §4.3):
/// past it, the next append starts a new value. Small enough that the
/// rewrites cost little, large enough for a short saga's whole log.
pub(crate) const OPEN_VALUE_LIMIT: usize = 2048;

/// Records applied to the in-memory state but not yet durable, and what
/// the last durable write left in the indexes.
pub(crate) struct Staged {
    pub(super) saga: SagaId,
    first_seq: u64,
    /// The value the next append writes: the saga's last log value as this
    /// loop wrote it (its first `durable_len` bytes, while it is under
    /// [`OPEN_VALUE_LIMIT`]), followed by the frames staged since, each
    /// encoded straight into it. The append rewrites the whole value under
    /// its key, so a short saga keeps its whole log in one key (§4.3).
    value: LogValue,
    /// How many leading bytes of `value` are durable: 0 when the next
    /// append starts a new value at `first_seq`.
    durable_len: usize,
    pub(super) durable_status: Option<SagaStatus>,
    pub(super) durable_timer: Option<PendingTimer>,
    pub(super) durable_decision: Option<Decision>,
    /// Whether the durable state has operator actions not yet carried out.
    durable_pending: bool,
    /// Queued actions whose records are staged ([`SagaAppend::applies`]).
    applies: Vec<u64>,
}

impl Staged {
    /// `state` is what is durable now (`None` before the start record).
    pub(crate) fn new(saga: SagaId, state: Option<&SagaState>) -> Self {
        let first_seq = state.map_or(0, |s| s.next_seq);
        Staged {
            saga,
            first_seq,
            value: LogValue {
                seq: first_seq,
                bytes: Vec::new(),
            },
            durable_len: 0,
            durable_status: state.map(|s| s.status()),
            durable_timer: state.and_then(|s| s.timer.clone()),
            durable_decision: state.and_then(|s| s.decision),
            durable_pending: state.is_some_and(|s| !s.pending.is_empty()),
            applies: Vec::new(),
        }
    }

    /// The same, going on from the last log value another `Staged` of this
    /// saga wrote and made durable (the start, handing over to the loop).
    pub(crate) fn resume(saga: SagaId, state: &SagaState, open: Option<LogValue>) -> Self {
        let mut staged = Staged::new(saga, Some(state));
        if let Some(open) = open {
            staged.durable_len = open.bytes.len();
            staged.value = open;
        }
        staged
    }

    /// The last log value this `Staged` wrote, if it may still grow and
    /// nothing is staged after it.
    pub(crate) fn into_open(self) -> Option<LogValue> {
        (self.durable_len > 0 && self.durable_len == self.value.bytes.len()).then_some(self.value)
    }

    /// Applies `record` to `state` and stages its frame.
    pub(crate) fn push(
        &mut self,
        state: &mut SagaState,
        at: UnixMillis,
        record: Record,
    ) -> Result<(), Error> {
        let entry = LogEntry {
            seq: state.next_seq,
            at,
            record,
        };
        // Encoded first: a record that cannot be encoded leaves both the
        // value and the state as they were.
        let before = self.value.bytes.len();
        codec::encode_record_into(&mut self.value.bytes, at, &entry.record)
            .map_err(|e| Error::encode("record", e))?;
        if let Err(error) = state.apply(&entry) {
            self.value.bytes.truncate(before);
            return Err(Error::Illegal {
                saga: self.saga,
                error,
            });
        }
        Ok(())
    }

    /// Like [`Staged::push`], for a record from outside the engine (an
    /// operator action): it is applied to a copy of the state first, so a
    /// refused record ([`Error::Illegal`]) leaves `state` unchanged.
    pub(crate) fn push_checked(
        &mut self,
        state: &mut SagaState,
        at: UnixMillis,
        record: Record,
    ) -> Result<(), Error> {
        let mut trial = state.clone();
        self.push(&mut trial, at, record)?;
        *state = trial;
        Ok(())
    }

    /// Notes that the record just staged carries out queued action `id`:
    /// the next append marks it applied.
    pub(crate) fn applies(&mut self, id: u64) {
        self.applies.push(id);
    }

    /// Stages an already-encoded frame (the start record, applied by the caller).
    pub(crate) fn stage_frame(&mut self, frame: Vec<u8>) {
        if self.value.bytes.is_empty() {
            self.value.bytes = frame;
        } else {
            self.value.bytes.extend_from_slice(&frame);
        }
    }

    /// Turns the staged frames into one append, with the index and timer
    /// changes that the new state requires. The staged value goes with the
    /// append; [`Staged::written`] takes it back once it is durable.
    pub(crate) fn take(&mut self, state: &SagaState) -> Result<Option<SagaAppend>, Error> {
        if self.value.bytes.len() == self.durable_len {
            return Ok(None);
        }
        let status = state.status();
        let timer_changed = self.durable_timer != state.timer;
        let pending = !state.pending.is_empty();
        let index = if self.durable_status != Some(status)
            || timer_changed
            || pending
            || self.durable_pending
        {
            let entry = index_entry(state);
            let bytes =
                codec::encode_index_entry(&entry).map_err(|e| Error::encode("index entry", e))?;
            Some(IndexUpdate {
                entry: bytes,
                from: self.durable_status.map(index_set),
                to: index_set(status),
            })
        } else {
            None
        };
        let mut value = std::mem::replace(
            &mut self.value,
            LogValue {
                seq: state.next_seq,
                bytes: Vec::new(),
            },
        );
        let mut added_from = std::mem::take(&mut self.durable_len);
        if added_from == 0 {
            value.seq = self.first_seq;
        } else if value.bytes.len() > OPEN_VALUE_LIMIT {
            // The open value would grow past the limit: the new frames
            // start a value of their own instead.
            value.bytes.drain(..added_from);
            value.seq = self.first_seq;
            added_from = 0;
        }
        let mut append = SagaAppend::records(self.saga, self.first_seq, Vec::new());
        append.value = value;
        append.added_from = added_from;
        append.index = index;
        append.applies = std::mem::take(&mut self.applies);
        if timer_changed {
            append.timer_delete = self.durable_timer.as_ref().map(|t| self.key_of(t));
            if let Some(timer) = &state.timer {
                let purpose = codec::encode_index_entry(&timer.purpose)
                    .map_err(|e| Error::encode("timer", e))?;
                append.timer_put = Some((self.key_of(timer), purpose));
            }
        }
        self.first_seq = state.next_seq;
        self.durable_status = Some(status);
        self.durable_timer = state.timer.clone();
        self.durable_decision = state.decision;
        self.durable_pending = pending;
        Ok(Some(append))
    }

    /// `append`, taken from this `Staged`, is durable: with `grow` (a store
    /// that grows values in place, [`crate::store::LogStore::local`]), its
    /// log value, while under [`OPEN_VALUE_LIMIT`], becomes the open value
    /// the next append extends. Only an acknowledged write may be extended
    /// (§4.3), so the caller hands the append back only after the writer's
    /// `Ok`.
    pub(crate) fn written(&mut self, append: SagaAppend, grow: bool) {
        let value = append.value;
        if grow
            && self.value.bytes.is_empty()
            && !value.bytes.is_empty()
            && value.bytes.len() < OPEN_VALUE_LIMIT
        {
            self.durable_len = value.bytes.len();
            self.value = value;
        }
    }

    pub(super) fn key_of(&self, timer: &PendingTimer) -> TimerKey {
        TimerKey {
            due: timer.due,
            saga: self.saga,
            seq: timer.seq,
        }
    }
}

/// The index entry that sums up `state`.
pub(crate) fn index_entry(state: &SagaState) -> IndexEntry {
    IndexEntry {
        saga_type: state.saga_type().clone(),
        status: state.status(),
        started_at: state.started_at,
        next_wake: state.timer.as_ref().map(|t| t.due),
        changed_at: state.last_at,
        pending: state.pending_summary(),
    }
}

/// The index a saga's entry belongs in. A sleeping saga stays in the active
/// index, its entry overwritten with `next_wake`: moving it to an index of
/// its own would delete a key written moments before, and sled 0.34 holds
/// memory for every such short-lived key (DESIGN.md §12).
fn index_set(status: SagaStatus) -> IndexSet {
    if status.is_terminal() {
        IndexSet::Finished
    } else {
        IndexSet::Active
    }
}

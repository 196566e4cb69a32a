//! The index watermark (DESIGN.md §4.2): which sagas' active-index entries
//! wait in memory, and when the watermark moves up.

use super::group::Waiter;
use crate::ids::{IdMap, IdSet, SagaId, UnixMillis};
use crate::log::store::{IndexSet, IndexUpdate, SagaAppend};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Encoded index entries of the sagas that have no active-index entry yet
/// (not terminal, at or above the watermark), shared by the writer (which
/// keeps it) and the engine (which lists from it).
pub(crate) type Deferred = Arc<Mutex<IdMap<SagaId, Vec<u8>>>>;

/// Where the writer starts from with the index watermark.
pub(crate) struct IndexPlan {
    /// The durable watermark, if the store has one.
    pub mark: Option<SagaId>,
    /// How old a saga may get before it must have an active-index entry;
    /// zero turns deferral off.
    pub lag: Duration,
    /// The deferred entries, pre-filled by recovery with the sagas it found
    /// above the watermark without an entry.
    pub deferred: Deferred,
}

/// The writer's side of the watermark.
pub(super) struct Watermark {
    mark: Option<SagaId>,
    lag: Duration,
    every: Duration,
    last_advance: Option<Instant>,
    /// Set by a failed group: the watermark stays where it is until the
    /// engine is reopened, and no more entries are deferred.
    frozen: bool,
    deferred: Deferred,
    /// Sagas whose active entry a failed group was to write: it may or may
    /// not be in the store. Their deferred entry stays, so that listings
    /// still show them, but they count as indexed: their next index change
    /// goes to the store, and then the deferred entry goes.
    uncertain: IdSet<SagaId>,
}

/// Longest time between two moves of the watermark.
const ADVANCE_EVERY: Duration = Duration::from_millis(100);

impl Watermark {
    pub(super) fn new(plan: IndexPlan) -> Self {
        Watermark {
            mark: plan.mark,
            lag: plan.lag,
            every: ADVANCE_EVERY.min(plan.lag / 5),
            last_advance: None,
            frozen: plan.lag.is_zero(),
            deferred: plan.deferred,
            uncertain: IdSet::default(),
        }
    }

    /// Rewrites the index updates of `group` for deferral and, when it is
    /// time, adds the entries that a new watermark needs. Returns the
    /// changes to make to the deferred entries once the group is durable,
    /// the extra appends, and the new watermark.
    pub(super) fn plan(&mut self, group: &mut [Waiter]) -> GroupIndex {
        let mut out = GroupIndex::default();
        if self.frozen && crate::sync::lock(&self.deferred).is_empty() {
            return out;
        }
        // A new watermark is written with this group, so it already
        // counts for the group's own starts (the write is atomic).
        out.watermark = self.next_watermark();
        let mark = out.watermark.or(self.mark);
        let deferred = crate::sync::lock(&self.deferred);
        let mut after = self.defer_updates(group, mark, &deferred);
        if let Some(candidate) = out.watermark {
            out.appends = self.entries_passed(candidate, &deferred, &mut after);
        }
        out.after = after;
        out
    }

    /// The watermark to write with this group, if it is time to move it.
    fn next_watermark(&mut self) -> Option<SagaId> {
        let due = self
            .last_advance
            .is_none_or(|at| at.elapsed() >= self.every);
        if self.frozen || !due {
            return None;
        }
        self.last_advance = Some(Instant::now());
        let candidate = SagaId::first_at(UnixMillis::now().minus(self.lag));
        self.mark
            .is_none_or(|mark| candidate > mark)
            .then_some(candidate)
    }

    /// Takes out of `group` the index updates that wait in memory instead
    /// (a young saga's, under watermark `mark`), and returns the state of
    /// each touched saga after the group: `Some(entry)` deferred, `None` not.
    fn defer_updates(
        &self,
        group: &mut [Waiter],
        mark: Option<SagaId>,
        deferred: &IdMap<SagaId, Vec<u8>>,
    ) -> IdMap<SagaId, Option<Vec<u8>>> {
        let mut after: IdMap<SagaId, Option<Vec<u8>>> = IdMap::default();
        for (append, _) in group.iter_mut() {
            let id = append.saga;
            let Some(update) = append.index.as_mut() else {
                continue;
            };
            if self.uncertain.contains(&id) {
                // A failed group may have written its entry, so it counts
                // as indexed: this change goes to the store (a delete of a
                // missing entry is harmless), and its deferred entry goes
                // once the change is durable.
                after.insert(id, None);
            }
            let was_deferred = match after.get(&id) {
                Some(state) => state.is_some(),
                None => deferred.contains_key(&id),
            };
            match update.to {
                IndexSet::Active => {
                    let young = update.from.is_none()
                        && !self.frozen
                        && mark.is_some_and(|mark| id >= mark);
                    if was_deferred || young {
                        if let Some(update) = append.index.take() {
                            after.insert(id, Some(update.entry));
                        }
                    }
                }
                IndexSet::Finished => {
                    if was_deferred {
                        // It never got an active entry: nothing to delete.
                        update.from = None;
                        after.insert(id, None);
                    }
                }
            }
        }
        after
    }

    /// The appends that give every deferred saga below watermark
    /// `candidate` its active entry, marking each as no longer deferred in
    /// `after`.
    fn entries_passed(
        &self,
        candidate: SagaId,
        deferred: &IdMap<SagaId, Vec<u8>>,
        after: &mut IdMap<SagaId, Option<Vec<u8>>>,
    ) -> Vec<SagaAppend> {
        let mut passed: Vec<(SagaId, Vec<u8>)> = deferred
            .iter()
            .filter(|(id, _)| {
                **id < candidate && !after.contains_key(id) && !self.uncertain.contains(id)
            })
            .map(|(id, entry)| (*id, entry.clone()))
            .collect();
        for (id, state) in after.iter_mut() {
            if *id < candidate {
                passed.extend(state.take().map(|entry| (*id, entry)));
            }
        }
        let mut appends = Vec::with_capacity(passed.len());
        for (id, entry) in passed {
            after.insert(id, None);
            let mut append = SagaAppend::records(id, 0, Vec::new());
            append.index = Some(IndexUpdate {
                entry,
                from: None,
                to: IndexSet::Active,
            });
            appends.push(append);
        }
        appends
    }

    /// The group is durable: apply its changes.
    pub(super) fn committed(&mut self, index: GroupIndex) {
        if let Some(mark) = index.watermark {
            self.mark = Some(mark);
        }
        let mut deferred = crate::sync::lock(&self.deferred);
        for (id, state) in index.after {
            match state {
                Some(entry) => deferred.insert(id, entry),
                None => {
                    self.uncertain.remove(&id);
                    deferred.remove(&id)
                }
            };
        }
    }

    /// The group failed, and may or may not be on disk. Stop moving the
    /// watermark, so that every saga above it stays where recovery looks.
    /// The sagas the group would have indexed may have an entry now: they
    /// count as indexed from here on (a later delete of a missing entry is
    /// harmless), and keep their deferred entry until their next index
    /// change is durable, so that listings do not lose them meanwhile.
    pub(super) fn failed(&mut self, index: GroupIndex) {
        self.frozen = true;
        self.uncertain
            .extend(index.appends.iter().map(|append| append.saga));
    }
}

/// How one group changes the index watermark and the deferred entries.
#[derive(Default)]
pub(super) struct GroupIndex {
    pub(super) after: IdMap<SagaId, Option<Vec<u8>>>,
    pub(super) appends: Vec<SagaAppend>,
    pub(super) watermark: Option<SagaId>,
}

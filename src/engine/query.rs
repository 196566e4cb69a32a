//! Operator queries: finding sagas by status, type and age, and the
//! numbers an operator watches. Each reads the indexes (one entry per
//! saga), never the logs, so its cost is one scan of the index.

use crate::engine::view::SagaListing;
use crate::engine::Engine;
use crate::error::Error;
use crate::ids::{SagaId, SagaType, UnixMillis};
use crate::log::codec;
use crate::log::store::IndexEntry;
use crate::status::SagaStatus;
use crate::sync::lock;
use std::time::Duration;

/// Which sagas [`Engine::find`] returns. Every condition set must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SagaFilter {
    status: Option<SagaStatus>,
    saga_type: Option<SagaType>,
    started_from: Option<UnixMillis>,
    started_before: Option<UnixMillis>,
    unfinished_for: Option<Duration>,
    idempotency_key: Option<crate::ids::IdempotencyKey>,
}

impl SagaFilter {
    /// Every saga.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only sagas with this status (parked sagas count as `Suspended`).
    pub fn status(mut self, status: SagaStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// Only sagas of this type.
    pub fn saga_type(mut self, saga_type: impl Into<SagaType>) -> Self {
        self.saga_type = Some(saga_type.into());
        self
    }

    /// Only sagas started at or after `from` and before `before`.
    pub fn started_between(mut self, from: UnixMillis, before: UnixMillis) -> Self {
        self.started_from = Some(from);
        self.started_before = Some(before);
        self
    }

    /// Only sagas not finished although they started at least `age` ago
    /// (by the engine's clock): the ones to look at first.
    pub fn unfinished_for(mut self, age: Duration) -> Self {
        self.unfinished_for = Some(age);
        self
    }

    /// Only the saga this idempotency key belongs to.
    pub fn idempotency_key(mut self, key: impl Into<crate::ids::IdempotencyKey>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    fn accepts(&self, listing: &SagaListing, now: UnixMillis) -> bool {
        if self.status.is_some_and(|s| s != listing.status) {
            return false;
        }
        if self
            .saga_type
            .as_ref()
            .is_some_and(|t| *t != listing.saga_type)
        {
            return false;
        }
        if self
            .started_from
            .is_some_and(|from| listing.started_at < from)
        {
            return false;
        }
        if self
            .started_before
            .is_some_and(|before| listing.started_at >= before)
        {
            return false;
        }
        if let Some(age) = self.unfinished_for {
            let age = crate::ids::millis(age);
            if listing.status.is_terminal() || listing.started_at.plus_millis(age) > now {
                return false;
            }
        }
        true
    }
}

/// What an operator watches, read from the indexes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// How many sagas have each status (parked ones count as `Suspended`);
    /// statuses with none are left out.
    pub by_status: Vec<(SagaStatus, u64)>,
    /// The saga that started longest ago and is not finished, and when.
    pub oldest_in_flight: Option<(SagaId, UnixMillis)>,
    /// Sagas asleep on a durable timer.
    pub delay_queue_depth: u64,
    /// Sagas waiting for an operator (suspended or parked).
    pub manual_queue_depth: u64,
    /// Sagas that cannot run until a cause is fixed (included in the manual queue).
    pub parked: u64,
}

impl Engine {
    /// Every saga (active and finished) that `filter` accepts, oldest first.
    pub fn find(&self, filter: &SagaFilter) -> Result<Vec<SagaListing>, Error> {
        let now = self.now();
        let rows = match &filter.idempotency_key {
            Some(key) => match self.inner.store.key_owner(key)? {
                Some(id) => self
                    .index_rows()?
                    .into_iter()
                    .filter(|l| l.saga_id == id)
                    .collect(),
                None => Vec::new(),
            },
            None => self.index_rows()?,
        };
        let mut out: Vec<SagaListing> = rows
            .into_iter()
            .filter(|l| filter.accepts(l, now))
            .collect();
        out.sort_by_key(|l| l.saga_id);
        Ok(out)
    }

    /// The saga the idempotency key `key` belongs to, if any.
    pub fn find_by_key(
        &self,
        key: &crate::ids::IdempotencyKey,
    ) -> Result<Option<crate::engine::view::SagaView>, Error> {
        match self.inner.store.key_owner(key)? {
            Some(id) => self.saga(id).map(Some),
            None => Ok(None),
        }
    }

    /// Counts per status, the oldest saga in flight, and the depth of the
    /// delay queue and the manual queue.
    pub fn stats(&self) -> Result<Stats, Error> {
        let mut stats = Stats::default();
        let mut counts = [0u64; SagaStatus::ALL.len()];
        for listing in self.index_rows()? {
            if let Some(i) = SagaStatus::ALL.iter().position(|s| *s == listing.status) {
                counts[i] += 1;
            }
            if listing.status.is_terminal() {
                continue;
            }
            if listing.next_wake.is_some() {
                stats.delay_queue_depth += 1;
            }
            if listing.status == SagaStatus::Suspended {
                stats.manual_queue_depth += 1;
            }
            if listing.parked.is_some() {
                stats.parked += 1;
            }
            // Ties (same millisecond) go to the smaller id, the one made
            // first: rows come in no particular order (young sagas' entries
            // are in a hash map until they are written).
            let older = stats
                .oldest_in_flight
                .is_none_or(|(id, at)| (listing.started_at, listing.saga_id) < (at, id));
            if older {
                stats.oldest_in_flight = Some((listing.saga_id, listing.started_at));
            }
        }
        stats.by_status = SagaStatus::ALL
            .iter()
            .zip(counts)
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| (*s, n))
            .collect();
        Ok(stats)
    }

    /// One listing per saga from the active and finished indexes.
    pub(crate) fn index_rows(&self) -> Result<Vec<SagaListing>, Error> {
        let parked = lock(&self.inner.parked).clone();
        let rows = self.index_pairs()?;
        Ok(rows
            .into_iter()
            .map(|(id, bytes)| {
                let reason = parked.get(&id).map(ToString::to_string);
                match codec::decode_index_entry::<IndexEntry>(&bytes) {
                    Ok(entry) => SagaListing {
                        saga_id: id,
                        saga_type: entry.saga_type,
                        status: if reason.is_some() {
                            SagaStatus::Suspended
                        } else {
                            entry.status
                        },
                        started_at: entry.started_at,
                        changed_at: entry.changed_at,
                        next_wake: entry.next_wake,
                        parked: reason,
                        pending: entry.pending,
                    },
                    Err(e) => SagaListing {
                        saga_id: id,
                        saga_type: "?".into(),
                        status: SagaStatus::Suspended,
                        started_at: UnixMillis(0),
                        changed_at: UnixMillis(0),
                        next_wake: None,
                        pending: None,
                        parked: Some(
                            reason.unwrap_or_else(|| format!("index entry unreadable: {e}")),
                        ),
                    },
                }
            })
            .collect())
    }
}

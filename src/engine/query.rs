//! Operator queries: finding sagas by status, type and age, and the
//! numbers an operator watches. Each reads the indexes (one entry per
//! saga), never the logs, so its cost is one scan of the index.

use crate::engine::view::SagaListing;
use crate::engine::Engine;
use crate::error::{Error, ParkReason};
use crate::ids::{IdMap, SagaId, SagaType, UnixMillis};
use crate::log::codec;
use crate::log::store::{IndexEntry, IndexQuery};
use crate::status::SagaStatus;
use crate::sync::lock;
use serde::{Deserialize, Serialize};
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
    after: Option<SagaId>,
    limit: Option<usize>,
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

    /// Only sagas whose id sorts after `id`: the next page of a listing
    /// whose last saga was `id` (a keyset cursor; ids sort by creation).
    pub fn after(mut self, id: SagaId) -> Self {
        self.after = Some(id);
        self
    }

    /// At most `limit` sagas, the oldest that match.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    fn accepts(&self, listing: &SagaListing, now: UnixMillis) -> bool {
        if self.after.is_some_and(|after| listing.saga_id <= after) {
            return false;
        }
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

/// A listing's filter as text, the way the admin API's query string
/// (`GET /v1/sagas?status=suspended&limit=50`) and the command line's
/// options give it. [`ListQuery::filter`] checks it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListQuery {
    /// A status by name, any case (e.g. `suspended`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// A saga type.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub saga_type: Option<String>,
    /// Started at or after this time (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_after: Option<String>,
    /// Started before this time (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_before: Option<String>,
    /// Not finished although started this long ago (e.g. `10m`, `2h`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unfinished_for: Option<String>,
    /// The idempotency key the saga was started with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// At most this many sagas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// The keyset cursor: only sagas after this id (the `next` of the
    /// previous page).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

impl ListQuery {
    /// The filter this query names, or [`Error::InvalidOptions`] saying
    /// which value is wrong and what it should look like.
    pub fn filter(&self) -> Result<SagaFilter, Error> {
        let bad = |what: String| Err(Error::InvalidOptions(what));
        let mut filter = SagaFilter::new();
        if let Some(text) = &self.status {
            match SagaStatus::ALL
                .into_iter()
                .find(|s| s.name().eq_ignore_ascii_case(text))
            {
                Some(status) => filter = filter.status(status),
                None => {
                    let names: Vec<_> = SagaStatus::ALL.iter().map(|s| s.name()).collect();
                    return bad(format!(
                        "status '{text}' is not a status; use one of {}",
                        names.join(", ")
                    ));
                }
            }
        }
        if let Some(saga_type) = &self.saga_type {
            filter = filter.saga_type(saga_type.as_str());
        }
        let time = |text: &str| match humantime::parse_rfc3339_weak(text)
            .ok()
            .and_then(UnixMillis::from_system_time)
        {
            Some(at) => Ok(at),
            None => Err(Error::InvalidOptions(format!(
                "'{text}' is not a time; use RFC 3339, e.g. 2026-11-21T08:00:00Z"
            ))),
        };
        if self.started_after.is_some() || self.started_before.is_some() {
            let from = self.started_after.as_deref().map(time).transpose()?;
            let before = self.started_before.as_deref().map(time).transpose()?;
            filter = filter.started_between(
                from.unwrap_or(UnixMillis(0)),
                before.unwrap_or(UnixMillis(u64::MAX)),
            );
        }
        if let Some(text) = &self.unfinished_for {
            match humantime::parse_duration(text) {
                Ok(age) => filter = filter.unfinished_for(age),
                Err(e) => {
                    return bad(format!(
                        "unfinished_for '{text}' is not a duration ({e}); try 30s, 10m, 2h or 7d"
                    ))
                }
            }
        }
        if let Some(key) = &self.key {
            filter = filter.idempotency_key(key.as_str());
        }
        if let Some(limit) = self.limit {
            filter = filter.limit(limit);
        }
        if let Some(text) = &self.after {
            match SagaId::parse(text) {
                Some(id) => filter = filter.after(id),
                None => {
                    return bad(format!(
                        "after '{text}' is not a saga id; pass the `next` of the previous page"
                    ))
                }
            }
        }
        Ok(filter)
    }
}

/// What an operator watches, read from the indexes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// How many sagas have each status (parked ones count as `Suspended`);
    /// statuses with none are left out. In JSON an object by status name.
    #[serde(with = "by_status")]
    pub by_status: Vec<(SagaStatus, u64)>,
    /// The saga that started longest ago and is not finished, and when; in
    /// JSON `{"saga_id", "started_at"}`.
    #[serde(with = "oldest")]
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
    pub async fn find(&self, filter: &SagaFilter) -> Result<Vec<SagaListing>, Error> {
        let now = self.now();
        let rows = match &filter.idempotency_key {
            Some(key) => match self.key_owner(key).await? {
                Some(id) => self
                    .index_rows()
                    .await?
                    .into_iter()
                    .filter(|l| l.saga_id == id)
                    .collect(),
                None => Vec::new(),
            },
            None => match self.matching_rows(filter, now).await? {
                Some(rows) => rows,
                None => self.index_rows().await?,
            },
        };
        let mut out: Vec<SagaListing> = rows
            .into_iter()
            .filter(|l| filter.accepts(l, now))
            .collect();
        out.sort_by_key(|l| l.saga_id);
        if let Some(limit) = filter.limit {
            out.truncate(limit);
        }
        let ids: Vec<SagaId> = out
            .iter()
            .filter(|l| !l.status.is_terminal())
            .map(|l| l.saga_id)
            .collect();
        let owners: IdMap<SagaId, String> =
            self.inner.store.owners(&ids).await?.into_iter().collect();
        for listing in &mut out {
            listing.owner = owners.get(&listing.saga_id).cloned();
        }
        Ok(out)
    }

    /// The saga the idempotency key `key` belongs to, if any.
    pub async fn find_by_key(
        &self,
        key: &crate::ids::IdempotencyKey,
    ) -> Result<Option<crate::engine::view::SagaView>, Error> {
        match self.key_owner(key).await? {
            Some(id) => self.saga(id).await.map(Some),
            None => Ok(None),
        }
    }

    /// The saga an idempotency key belongs to, if any.
    pub(crate) async fn key_owner(
        &self,
        key: &crate::ids::IdempotencyKey,
    ) -> Result<Option<SagaId>, crate::log::store::StoreError> {
        Ok(self
            .inner
            .store
            .key_claim(key)
            .await?
            .map(|claim| claim.saga))
    }

    /// Counts per status, the oldest saga in flight, and the depth of the
    /// delay queue and the manual queue.
    pub async fn stats(&self) -> Result<Stats, Error> {
        let mut stats = Stats::default();
        let mut counts = [0u64; SagaStatus::ALL.len()];
        for listing in self.index_rows().await? {
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

    /// The listings `filter` accepts, filtered and paged by the store
    /// itself ([`crate::store::LogStore::scan_matching`]); `None` when the
    /// store does not filter, or entries wait in memory that it has not
    /// seen yet.
    async fn matching_rows(
        &self,
        filter: &SagaFilter,
        now: UnixMillis,
    ) -> Result<Option<Vec<SagaListing>>, Error> {
        if !lock(&self.inner.deferred).is_empty() {
            return Ok(None);
        }
        let parked = lock(&self.inner.parked).clone();
        let query = IndexQuery {
            status: filter.status,
            parked: parked.keys().copied().collect(),
            saga_type: filter.saga_type.as_ref().map(|t| t.as_str().to_owned()),
            started_from: filter.started_from,
            started_before: filter.started_before,
            unfinished_since: filter
                .unfinished_for
                .map(|age| UnixMillis(now.0.saturating_sub(crate::ids::millis(age)))),
            after: filter.after,
            limit: filter.limit,
        };
        let Some(rows) = self.inner.store.scan_matching(&query) else {
            return Ok(None);
        };
        Ok(Some(listings(rows.await?, &parked)))
    }

    /// One listing per saga from the active and finished indexes.
    pub(crate) async fn index_rows(&self) -> Result<Vec<SagaListing>, Error> {
        let rows = self.index_pairs().await?;
        let parked = lock(&self.inner.parked).clone();
        Ok(listings(rows, &parked))
    }
}

/// The listings of index entries, with the parked sagas as `Suspended`
/// and an unreadable entry as a parked saga of unknown type.
fn listings(rows: Vec<(SagaId, Vec<u8>)>, parked: &IdMap<SagaId, ParkReason>) -> Vec<SagaListing> {
    rows.into_iter()
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
                    owner: None,
                },
                Err(e) => SagaListing {
                    saga_id: id,
                    saga_type: "?".into(),
                    status: SagaStatus::Suspended,
                    started_at: UnixMillis(0),
                    changed_at: UnixMillis(0),
                    next_wake: None,
                    pending: None,
                    parked: Some(reason.unwrap_or_else(|| format!("index entry unreadable: {e}"))),
                    owner: None,
                },
            }
        })
        .collect()
}

/// `Vec<(SagaStatus, u64)>` as `{"SUSPENDED": 2, ...}`, in status order.
mod by_status {
    use super::*;
    use serde::ser::SerializeMap;
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &[(SagaStatus, u64)],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(value.len()))?;
        for (status, count) in value {
            map.serialize_entry(status, count)?;
        }
        map.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<(SagaStatus, u64)>, D::Error> {
        let map = std::collections::HashMap::<SagaStatus, u64>::deserialize(deserializer)?;
        let mut counts: Vec<_> = map.into_iter().collect();
        counts.sort_by_key(|(status, _)| SagaStatus::ALL.iter().position(|s| s == status));
        Ok(counts)
    }
}

/// `Option<(SagaId, UnixMillis)>` as `{"saga_id", "started_at"}`.
mod oldest {
    use super::*;
    use serde::{Deserializer, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Oldest {
        saga_id: SagaId,
        started_at: UnixMillis,
    }

    pub(super) fn serialize<S: Serializer>(
        value: &Option<(SagaId, UnixMillis)>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        value
            .map(|(saga_id, started_at)| Oldest {
                saga_id,
                started_at,
            })
            .serialize(serializer)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<(SagaId, UnixMillis)>, D::Error> {
        let value = Option::<Oldest>::deserialize(deserializer)?;
        Ok(value.map(|o| (o.saga_id, o.started_at)))
    }
}

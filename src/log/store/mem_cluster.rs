//! Several nodes over one in-memory log, for tests (feature `testing`):
//! the leases, fencing tokens, adoption and hand-over of a shared log,
//! decided the way [`PgStore`](super::PgStore) decides them, with tokio's
//! clock as the database's clock, so that a test on paused time drives
//! expiry and adoption deterministically and needs no database.
//!
//! A [`MemNode`] is one process's connection to the log. Cutting it off
//! ([`MemNode::cut_off`]) stands for a process that stalls or loses the
//! network: each of its calls waits until it is reconnected, while its
//! lease runs out on the cluster's clock. Killing it ([`MemNode::kill`])
//! stands for `kill -9`: its calls wait for ever.
//!
//! The cluster remembers, per saga, which token wrote each record and when
//! each token was fenced, so that a test can check that no saga's log
//! interleaves two writers and that no fenced token wrote.

use super::boundary::{Adopted, Committed, QueuedAction, QueuedOutcome, Refusal};
use super::{
    IndexEntry, KeyClaim, KvLogStore, Lease, LogStore, MemStore, Removal, Removed, SagaAppend,
    StoreError, StoreFuture, TimerKey, TimerScan,
};
use crate::ids::{IdempotencyKey, SagaId, SagaType};
use crate::log::codec;
use crate::log::verify::VerifyReport;
use crate::sync::lock;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// One log that several [`MemNode`]s share. Cheap to clone; clones share
/// the log.
#[derive(Clone, Default)]
pub struct MemCluster {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    log: MemStore,
    state: Mutex<ClusterState>,
}

#[derive(Default)]
struct ClusterState {
    last_token: u64,
    nodes: HashMap<String, NodeRow>,
    /// Each unfinished saga's owner node; none after a hand-over.
    owners: HashMap<SagaId, String>,
    /// Per saga, the token that wrote each record, in sequence order.
    writers: HashMap<SagaId, Vec<u64>>,
    /// When each fenced token was fenced.
    fenced: HashMap<u64, Instant>,
    /// Which node holds each singleton job, until when.
    singletons: HashMap<String, (String, Instant)>,
    /// The queued operator actions, by id: saga, encoded action, outcome.
    queue: std::collections::BTreeMap<u64, (SagaId, Vec<u8>, QueuedOutcome)>,
}

/// A node's row, as a database would keep it.
struct NodeRow {
    token: u64,
    state: NodeState,
    expires: Instant,
    types: Vec<SagaType>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeState {
    Live,
    Fenced,
    Left,
}

impl ClusterState {
    /// The refusal of a write by `lease`'s token unless it is live.
    fn check_live(&self, lease: &Lease) -> Result<(), StoreError> {
        match self.nodes.get(lease.node_id()) {
            Some(row) if row.token == lease.token() && row.state == NodeState::Live => Ok(()),
            _ => Err(StoreError::Fenced {
                node: lease.node_id().to_string(),
                reason: "the cluster has no live lease of this token".into(),
            }),
        }
    }

    fn is_live(&self, node: &str) -> bool {
        self.nodes
            .get(node)
            .is_some_and(|row| row.state == NodeState::Live)
    }

    /// Fences every live node other than `me` whose lease expired.
    fn fence_expired(&mut self, me: &str, now: Instant) {
        for (id, row) in &mut self.nodes {
            if id != me && row.state == NodeState::Live && row.expires < now {
                row.state = NodeState::Fenced;
                self.fenced.insert(row.token, now);
            }
        }
    }
}

impl MemCluster {
    /// An empty cluster.
    pub fn new() -> MemCluster {
        MemCluster::default()
    }

    /// A new process's connection to the log, as node `node_id` with a
    /// lease of `ttl` (renewed every quarter of it once the engine joins).
    /// A node id used before stands for a restart with a stable id: it
    /// reclaims that node's sagas, once the earlier lease has lapsed.
    pub fn node(&self, node_id: &str, ttl: Duration) -> Arc<MemNode> {
        let (cut, _) = watch::channel(Link::Up);
        Arc::new(MemNode {
            shared: self.shared.clone(),
            id: node_id.to_string(),
            ttl,
            link: cut,
            joined: Mutex::new(None),
        })
    }

    /// The log underneath, to read records and index entries directly.
    pub fn log(&self) -> &MemStore {
        &self.shared.log
    }

    /// The tokens that wrote saga `saga`'s records, one per record in
    /// sequence order.
    pub fn writers(&self, saga: SagaId) -> Vec<u64> {
        lock(&self.shared.state)
            .writers
            .get(&saga)
            .cloned()
            .unwrap_or_default()
    }

    /// Every saga any node wrote.
    pub fn sagas(&self) -> Vec<SagaId> {
        let mut sagas: Vec<_> = lock(&self.shared.state).writers.keys().copied().collect();
        sagas.sort();
        sagas
    }

    /// When token `token` was fenced, if it was.
    pub fn fenced_at(&self, token: u64) -> Option<Instant> {
        lock(&self.shared.state).fenced.get(&token).copied()
    }

    /// Whether token `token` is fenced now.
    pub fn is_fenced(&self, token: u64) -> bool {
        self.fenced_at(token).is_some()
    }

    /// The node that owns saga `saga` now, if any.
    pub fn owner(&self, saga: SagaId) -> Option<String> {
        lock(&self.shared.state).owners.get(&saga).cloned()
    }

    /// What became of each queued operator action, in queue order.
    pub fn queued(&self) -> Vec<(SagaId, QueuedOutcome)> {
        lock(&self.shared.state)
            .queue
            .values()
            .map(|(saga, _, outcome)| (*saga, outcome.clone()))
            .collect()
    }

    /// The current token of node `node_id` and whether it is live.
    pub fn token_of(&self, node_id: &str) -> Option<(u64, bool)> {
        lock(&self.shared.state)
            .nodes
            .get(node_id)
            .map(|row| (row.token, row.state == NodeState::Live))
    }
}

/// Whether a node's calls reach the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Up,
    Cut,
    Dead,
}

/// One process's connection to a [`MemCluster`]: a [`LogStore`] that joins
/// the log as a node (no [`LogStore::local`] shortcuts, as on a database).
pub struct MemNode {
    shared: Arc<Shared>,
    id: String,
    ttl: Duration,
    link: watch::Sender<Link>,
    joined: Mutex<Option<Joined>>,
}

struct Joined {
    lease: Arc<Lease>,
    types: Vec<SagaType>,
}

impl MemNode {
    /// The node id.
    pub fn node_id(&self) -> &str {
        &self.id
    }

    /// The lease this node was granted when the engine joined, if it has.
    pub fn lease(&self) -> Option<Arc<Lease>> {
        lock(&self.joined).as_ref().map(|j| j.lease.clone())
    }

    /// Cuts the node off: each of its calls (renewals included) waits
    /// until [`MemNode::reconnect`], as for a process that stalls.
    pub fn cut_off(&self) {
        self.link.send_if_modified(|link| {
            let cut = *link == Link::Up;
            if cut {
                *link = Link::Cut;
            }
            cut
        });
    }

    /// Lets a node that was cut off reach the log again; its calls go on
    /// (a fenced node's writes are then refused).
    pub fn reconnect(&self) {
        self.link.send_if_modified(|link| {
            let up = *link == Link::Cut;
            if up {
                *link = Link::Up;
            }
            up
        });
    }

    /// Kills the process: none of its calls reaches the log again, and its
    /// lease runs out.
    pub fn kill(&self) {
        self.link.send_replace(Link::Dead);
    }

    /// Whether the node is cut off or killed.
    pub fn is_cut_off(&self) -> bool {
        *self.link.borrow() != Link::Up
    }

    /// Waits until a call may reach the log: at once while connected, for
    /// ever once killed.
    async fn reach(&self) {
        let mut link = self.link.subscribe();
        if link.wait_for(|l| *l == Link::Up).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ClusterState> {
        lock(&self.shared.state)
    }

    fn joined(&self) -> Result<(Arc<Lease>, Vec<SagaType>), StoreError> {
        lock(&self.joined)
            .as_ref()
            .map(|j| (j.lease.clone(), j.types.clone()))
            .ok_or_else(|| StoreError::Backend("this node has not joined the cluster".into()))
    }

    async fn append_batch(&self, batch: &[&SagaAppend]) -> Result<Committed, StoreError> {
        self.reach().await;
        let (lease, _) = self.joined()?;
        let mut state = self.state();
        state.check_live(&lease)?;
        let log = &self.shared.log;
        let mut refused = Vec::new();
        let mut accepted = Vec::with_capacity(batch.len());
        for (at, append) in batch.iter().enumerate() {
            let logged = state.writers.get(&append.saga).map_or(0, Vec::len) as u64;
            if append.writes_log_value() && append.first_seq < logged {
                refused.push((at, Refusal::Conflict));
                continue;
            }
            if let Some(claim) = &append.claim {
                if let Some(owner) = KvLogStore::key_claim(log, &claim.key)? {
                    refused.push((at, Refusal::KeyTaken(owner)));
                    continue;
                }
            }
            accepted.push(*append);
        }
        let times = match accepted.is_empty() {
            true => Default::default(),
            false => KvLogStore::append(log, &accepted, None)?,
        };
        for append in accepted {
            for id in &append.applies {
                if let Some((_, _, outcome @ QueuedOutcome::Pending)) = state.queue.get_mut(id) {
                    *outcome = QueuedOutcome::Applied {
                        node: self.id.clone(),
                    };
                }
            }
            let records = codec::frames_of(append.added()).len();
            if append.first_seq == 0 && records > 0 {
                state.owners.insert(append.saga, self.id.clone());
            }
            let writers = state.writers.entry(append.saga).or_default();
            writers.extend(std::iter::repeat_n(lease.token(), records));
        }
        Ok(Committed { times, refused })
    }

    async fn join_as(&self, types: &[SagaType]) -> Result<Option<Arc<Lease>>, StoreError> {
        self.reach().await;
        let (token, sent) = loop {
            let now = Instant::now();
            {
                let mut state = self.state();
                let held = state
                    .nodes
                    .get(&self.id)
                    .is_some_and(|row| row.state == NodeState::Live && row.expires >= now);
                if !held {
                    state.last_token += 1;
                    let token = state.last_token;
                    if let Some(old) = state.nodes.get(&self.id) {
                        if old.state == NodeState::Live {
                            let old = old.token;
                            state.fenced.insert(old, now);
                        }
                    }
                    state.nodes.insert(
                        self.id.clone(),
                        NodeRow {
                            token,
                            state: NodeState::Live,
                            expires: now + self.ttl,
                            types: types.to_vec(),
                        },
                    );
                    break (token, now);
                }
            }
            // An earlier incarnation's lease is still live: wait it out.
            tokio::time::sleep(self.ttl / 4).await;
        };
        let lease = Arc::new(Lease::granted_on_tokio_clock(
            self.id.clone(),
            token,
            self.ttl,
            sent.into_std(),
        ));
        *lock(&self.joined) = Some(Joined {
            lease: lease.clone(),
            types: types.to_vec(),
        });
        tokio::spawn(renew(
            self.shared.clone(),
            self.link.subscribe(),
            lease.clone(),
        ));
        Ok(Some(lease))
    }

    async fn adopt_some(&self, limit: usize) -> Result<Vec<Adopted>, StoreError> {
        self.reach().await;
        let (lease, types) = self.joined()?;
        let now = Instant::now();
        let mut state = self.state();
        state.check_live(&lease)?;
        state.fence_expired(&self.id, now);
        let live_types: HashSet<SagaType> = state
            .nodes
            .values()
            .filter(|row| row.state == NodeState::Live && row.expires >= now)
            .flat_map(|row| row.types.iter().cloned())
            .collect();
        let log = &self.shared.log;
        let mut timers: HashMap<SagaId, TimerKey> = HashMap::new();
        for (key, _) in KvLogStore::scan_timers(log, usize::MAX, &mut |_| false)?.0 {
            timers.insert(key.saga, key);
        }
        let mut candidates: Vec<(bool, SagaId, Vec<u8>)> = Vec::new();
        for (saga, entry) in KvLogStore::scan_active(log)? {
            let owned = state.owners.get(&saga).is_some_and(|o| state.is_live(o));
            if owned {
                continue;
            }
            let Ok(index) = codec::decode_index_entry::<IndexEntry>(&entry) else {
                continue;
            };
            if types.contains(&index.saga_type) || !live_types.contains(&index.saga_type) {
                candidates.push((timers.contains_key(&saga), saga, entry));
            }
        }
        // Runnable sagas first, then those asleep.
        candidates.sort_by_key(|(asleep, saga, _)| (*asleep, *saga));
        candidates.truncate(limit);
        Ok(candidates
            .into_iter()
            .map(|(_, saga, entry)| {
                state.owners.insert(saga, self.id.clone());
                Adopted {
                    saga,
                    entry,
                    timer: timers.get(&saga).copied(),
                }
            })
            .collect())
    }

    async fn leave_log(&self) -> Result<(), StoreError> {
        self.reach().await;
        let (lease, _) = self.joined()?;
        {
            let mut state = self.state();
            state.check_live(&lease)?;
            state.owners.retain(|_, owner| *owner != self.id);
            if let Some(row) = state.nodes.get_mut(&self.id) {
                row.state = NodeState::Left;
            }
        }
        lease.left();
        Ok(())
    }

    async fn take_saga(&self, saga: SagaId) -> Result<Option<String>, StoreError> {
        self.reach().await;
        let (lease, _) = self.joined()?;
        // A finished saga goes to the actor whoever owned it (it is being
        // reopened, as by compensating a committed sub-saga).
        let finished = KvLogStore::read_active(&self.shared.log, saga)?.is_none();
        let mut state = self.state();
        state.check_live(&lease)?;
        match state.owners.get(&saga) {
            Some(owner) if !finished && *owner != self.id && state.is_live(owner) => {
                Ok(Some(owner.clone()))
            }
            _ => {
                state.owners.insert(saga, self.id.clone());
                Ok(None)
            }
        }
    }

    async fn singleton(&self, name: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.reach().await;
        let now = Instant::now();
        let mut state = self.state();
        let free = match state.singletons.get(name) {
            None => true,
            Some((holder, until)) => *holder == self.id || *until < now || !state.is_live(holder),
        };
        if free {
            state
                .singletons
                .insert(name.to_string(), (self.id.clone(), now + ttl));
        }
        Ok(free)
    }

    async fn queue(&self, saga: SagaId, action: &[u8]) -> Result<Option<u64>, StoreError> {
        self.reach().await;
        let mut state = self.state();
        let id = state.queue.keys().next_back().map_or(1, |last| last + 1);
        state
            .queue
            .insert(id, (saga, action.to_vec(), QueuedOutcome::Pending));
        Ok(Some(id))
    }

    async fn queued(&self, limit: usize) -> Result<Vec<QueuedAction>, StoreError> {
        self.reach().await;
        let state = self.state();
        Ok(state
            .queue
            .iter()
            .filter(|(_, (saga, _, outcome))| {
                *outcome == QueuedOutcome::Pending && state.owners.get(saga) == Some(&self.id)
            })
            .take(limit)
            .map(|(id, (saga, action, _))| QueuedAction::new(*id, *saga, action.clone()))
            .collect())
    }

    async fn refuse(&self, id: u64, reason: &str) -> Result<(), StoreError> {
        self.reach().await;
        let (lease, _) = self.joined()?;
        let mut state = self.state();
        state.check_live(&lease)?;
        if let Some((_, _, outcome @ QueuedOutcome::Pending)) = state.queue.get_mut(&id) {
            *outcome = QueuedOutcome::Refused {
                node: self.id.clone(),
                reason: reason.to_string(),
            };
        }
        Ok(())
    }

    /// Active sagas this node owns, in id order after `after`.
    async fn owned(
        &self,
        after: Option<SagaId>,
        limit: usize,
    ) -> Result<Vec<(SagaId, Vec<u8>)>, StoreError> {
        self.reach().await;
        let state = self.state();
        Ok(KvLogStore::scan_active(&self.shared.log)?
            .into_iter()
            .filter(|(saga, _)| after.is_none_or(|a| *saga > a))
            .filter(|(saga, _)| state.owners.get(saga) == Some(&self.id))
            .take(limit)
            .collect())
    }

    async fn timers(&self, limit: usize, skip: &HashSet<SagaId>) -> Result<TimerScan, StoreError> {
        self.reach().await;
        let state = self.state();
        KvLogStore::scan_timers(&self.shared.log, limit, &mut |saga| {
            skip.contains(&saga) || state.owners.get(&saga) != Some(&self.id)
        })
    }

    /// A read of the log, once this node reaches it.
    fn read<'a, T: Send + 'a>(
        &'a self,
        read: impl FnOnce(&MemStore) -> StoreFuture<'_, T> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        Box::pin(async move {
            self.reach().await;
            read(&self.shared.log).await
        })
    }
}

/// Renews `lease` every quarter of its ttl on the cluster's clock, until it
/// is lost or the node is killed.
async fn renew(shared: Arc<Shared>, mut link: watch::Receiver<Link>, lease: Arc<Lease>) {
    loop {
        tokio::time::sleep(lease.ttl() / 4).await;
        if lease.is_lost() {
            return;
        }
        if link.wait_for(|l| *l == Link::Up).await.is_err() {
            return;
        }
        let sent = Instant::now();
        let renewed = {
            let mut state = lock(&shared.state);
            match state.nodes.get_mut(lease.node_id()) {
                Some(row) if row.token == lease.token() && row.state == NodeState::Live => {
                    row.expires = sent + lease.ttl();
                    true
                }
                _ => false,
            }
        };
        match renewed {
            true => lease.renewed(sent.into_std()),
            false => {
                lease.lose("another node fenced this one: the cluster has a newer token or the node is not live".into());
                return;
            }
        }
    }
}

impl LogStore for MemNode {
    fn append<'a>(&'a self, batch: &'a [&'a SagaAppend]) -> StoreFuture<'a, Committed> {
        Box::pin(self.append_batch(batch))
    }

    fn read_log(&self, saga: SagaId) -> StoreFuture<'_, Vec<(u64, Vec<u8>)>> {
        self.read(move |log| LogStore::read_log(log, saga))
    }

    fn read_active(&self, saga: SagaId) -> StoreFuture<'_, Option<Vec<u8>>> {
        self.read(move |log| LogStore::read_active(log, saga))
    }

    fn scan_active(
        &self,
        after: Option<SagaId>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<(SagaId, Vec<u8>)>> {
        self.read(move |log| LogStore::scan_active(log, after, limit))
    }

    fn scan_owned(
        &self,
        after: Option<SagaId>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<(SagaId, Vec<u8>)>> {
        Box::pin(self.owned(after, limit))
    }

    fn scan_finished(&self) -> StoreFuture<'_, Vec<(SagaId, Vec<u8>)>> {
        self.read(|log| LogStore::scan_finished(log))
    }

    fn key_claim<'a>(&'a self, key: &'a IdempotencyKey) -> StoreFuture<'a, Option<KeyClaim>> {
        Box::pin(async move {
            self.reach().await;
            KvLogStore::key_claim(&self.shared.log, key)
        })
    }

    fn scan_timers<'a>(
        &'a self,
        limit: usize,
        skip: &'a HashSet<SagaId>,
    ) -> StoreFuture<'a, TimerScan> {
        Box::pin(self.timers(limit, skip))
    }

    fn remove_finished<'a>(&'a self, sagas: &'a [Removal]) -> StoreFuture<'a, Removed> {
        Box::pin(async move {
            self.reach().await;
            LogStore::remove_finished(&self.shared.log, sagas).await
        })
    }

    fn verify(&self) -> StoreFuture<'_, VerifyReport> {
        self.read(|log| LogStore::verify(log))
    }

    fn join<'a>(&'a self, types: &'a [SagaType]) -> StoreFuture<'a, Option<Arc<Lease>>> {
        Box::pin(self.join_as(types))
    }

    fn adopt(&self, limit: usize) -> StoreFuture<'_, Vec<Adopted>> {
        Box::pin(self.adopt_some(limit))
    }

    fn leave(&self) -> StoreFuture<'_, ()> {
        Box::pin(self.leave_log())
    }

    fn take(&self, saga: SagaId) -> StoreFuture<'_, Option<String>> {
        Box::pin(self.take_saga(saga))
    }

    fn hold_singleton<'a>(&'a self, name: &'a str, ttl: Duration) -> StoreFuture<'a, bool> {
        Box::pin(self.singleton(name, ttl))
    }

    fn queue_action<'a>(&'a self, saga: SagaId, action: &'a [u8]) -> StoreFuture<'a, Option<u64>> {
        Box::pin(self.queue(saga, action))
    }

    fn queued_actions(&self, limit: usize) -> StoreFuture<'_, Vec<QueuedAction>> {
        Box::pin(self.queued(limit))
    }

    fn queued_outcome(&self, id: u64) -> StoreFuture<'_, QueuedOutcome> {
        Box::pin(async move {
            self.reach().await;
            self.state()
                .queue
                .get(&id)
                .map(|(_, _, outcome)| outcome.clone())
                .ok_or_else(|| StoreError::Backend(format!("no queued action {id}")))
        })
    }

    fn refuse_queued<'a>(&'a self, id: u64, reason: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(self.refuse(id, reason))
    }

    fn owners<'a>(&'a self, sagas: &'a [SagaId]) -> StoreFuture<'a, Vec<(SagaId, String)>> {
        Box::pin(async move {
            self.reach().await;
            let state = self.state();
            Ok(sagas
                .iter()
                .filter_map(|saga| Some((*saga, state.owners.get(saga)?.clone())))
                .collect())
        })
    }
}

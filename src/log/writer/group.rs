//! The writer: taking every queued append into one group, deciding
//! its key claims, writing it durably, and answering each waiter.

use super::watermark::{GroupIndex, Watermark};
use super::{AppendError, DurableHook, Message, WriterStats, MAX_GROUP};
use crate::ids::IdempotencyKey;
use crate::log::store::{
    Claim, Committed, IndexSet, KeyClaim, LogStore, Refusal, SagaAppend, StoreError, WriteTimes,
};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// The writer of a local store: runs on its own thread until stopped.
pub(super) fn run_on_thread(
    store: Arc<dyn LogStore>,
    rx: mpsc::UnboundedReceiver<Message>,
    hook: Option<DurableHook>,
    stats: Arc<WriterStats>,
    watermark: Watermark,
) {
    run_local(group_commit(store, hook, stats, watermark), rx)
}

/// The writer of a store that is not local: a task on the engine's
/// runtime, so that the runtime sees its work (a test's paused clock does
/// not jump while a group is on its way).
pub(super) async fn run_as_task(
    store: Arc<dyn LogStore>,
    rx: mpsc::UnboundedReceiver<Message>,
    hook: Option<DurableHook>,
    stats: Arc<WriterStats>,
    watermark: Watermark,
) {
    run_remote(group_commit(store, hook, stats, watermark), rx).await
}

fn group_commit(
    store: Arc<dyn LogStore>,
    hook: Option<DurableHook>,
    stats: Arc<WriterStats>,
    watermark: Watermark,
) -> GroupCommit {
    // A store that stops taking writes never takes them again (until it
    // is reopened, under a new writer): asked once here, then only when a
    // group fails.
    let writable = store.writable().is_ok();
    metrics::gauge!(crate::metrics::LOG_WRITABLE).set(if writable { 1.0 } else { 0.0 });
    GroupCommit {
        store,
        hook,
        stats,
        durable: 0,
        watermark,
        writable,
    }
}

/// Takes every queued request (up to [`MAX_GROUP`]) after `first` into
/// `group`; returns the stop request if one came.
fn gather(
    first: Message,
    rx: &mut mpsc::UnboundedReceiver<Message>,
    group: &mut Vec<Waiter>,
) -> Option<oneshot::Sender<()>> {
    let mut stop = None;
    match first {
        Message::Append(a, r) => group.push((a, r)),
        Message::Stop(r) => stop = Some(r),
    }
    while stop.is_none() && group.len() < MAX_GROUP {
        match rx.try_recv() {
            Ok(Message::Append(a, r)) => group.push((a, r)),
            Ok(Message::Stop(r)) => stop = Some(r),
            Err(_) => break,
        }
    }
    stop
}

/// Releases the store, then acknowledges the stop: once `stop` returns
/// (and the engine is dropped) the database can be opened again. Requests
/// queued after the stop are answered `Closed` when the receiver and their
/// reply senders drop.
fn stopped(
    writer: GroupCommit,
    mut rx: mpsc::UnboundedReceiver<Message>,
    reply: Option<oneshot::Sender<()>>,
) {
    rx.close();
    drop(writer);
    drop(rx);
    if let Some(reply) = reply {
        let _ = reply.send(());
    }
}

/// A local store: one group at a time, written synchronously on this
/// thread with the index watermark.
fn run_local(mut writer: GroupCommit, mut rx: mpsc::UnboundedReceiver<Message>) {
    let mut group = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let stop = gather(first, &mut rx, &mut group);
        if let Some(prepared) = writer.prepare(std::mem::take(&mut group)) {
            let began = std::time::Instant::now();
            let result = writer.write_local(&prepared);
            writer.finish(Written {
                prepared,
                result,
                took: began.elapsed(),
            });
        }
        if stop.is_some() {
            return stopped(writer, rx, stop);
        }
    }
}

/// A store that is not local: up to [`LogStore::groups_in_flight`] groups
/// written at once, each by its own task, each answered as it completes.
/// The engine has at most one append of a saga outstanding, so groups in
/// flight together never share a saga; a key claimed in two of them is
/// decided by the store.
async fn run_remote(mut writer: GroupCommit, mut rx: mpsc::UnboundedReceiver<Message>) {
    let limit = writer.store.groups_in_flight().max(1);
    let mut flying: tokio::task::JoinSet<Written> = tokio::task::JoinSet::new();
    let mut stop = None;
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            done = flying.join_next(), if !flying.is_empty() => match done {
                Some(Ok(written)) => writer.finish(written),
                // The task's waiters were dropped with it: they see `Closed`.
                Some(Err(e)) => tracing::error!(error = %e, "a group commit task ended without an answer"),
                None => {}
            },
            first = rx.recv(), if open && flying.len() < limit => match first {
                None => open = false,
                Some(first) => {
                    let mut group = Vec::new();
                    stop = gather(first, &mut rx, &mut group);
                    open = stop.is_none();
                    if let Some(prepared) = writer.prepare(group) {
                        let store = writer.store.clone();
                        flying.spawn(async move {
                            let began = std::time::Instant::now();
                            let result = store.append(&prepared.batch()).await;
                            Written { prepared, result, took: began.elapsed() }
                        });
                    }
                }
            },
            else => break,
        }
    }
    stopped(writer, rx, stop);
}

/// What the writer sends back: the append itself, with its result.
///
/// The append goes back so that its buffers are freed by the task that
/// allocated them: freed on the writer's thread, each would take the lock
/// of the allocating thread's arena (glibc's `free` of another thread's
/// block) and contend with that thread's own allocations.
pub(super) type Reply = (SagaAppend, Result<(), AppendError>);

pub(super) type Waiter = (SagaAppend, oneshot::Sender<Reply>);

/// Answers one waiter, handing its append back (see [`Reply`]).
fn answer((append, reply): Waiter, result: Result<(), AppendError>) {
    let _ = reply.send((append, result));
}

/// The writer thread's state between groups.
pub(super) struct GroupCommit {
    store: Arc<dyn LogStore>,
    hook: Option<DurableHook>,
    stats: Arc<WriterStats>,
    /// Appends made durable so far (what the hook is told).
    durable: u64,
    watermark: Watermark,
    /// Whether the store took writes at the last look.
    writable: bool,
}

/// A group ready to be written: its claims decided and its index planned.
pub(super) struct Prepared {
    accepted: Vec<Waiter>,
    followers: Vec<(Waiter, usize)>,
    index: GroupIndex,
}

impl Prepared {
    /// The appends to write, in order: the accepted, then the index's.
    fn batch(&self) -> Vec<&SagaAppend> {
        self.accepted
            .iter()
            .map(|(a, _)| a)
            .chain(self.index.appends.iter())
            .collect()
    }
}

/// A group after its write, with the write's result and how long it took.
pub(super) struct Written {
    prepared: Prepared,
    result: Result<Committed, StoreError>,
    took: std::time::Duration,
}

impl GroupCommit {
    /// Decides `group`'s key claims and plans its index entries; `None`
    /// when nothing of it is left to write (every waiter is answered).
    fn prepare(&mut self, group: Vec<Waiter>) -> Option<Prepared> {
        if group.is_empty() {
            return None;
        }
        let (mut accepted, followers) = self.claim_keys(group);
        if accepted.is_empty() {
            return None;
        }
        let index = self.watermark.plan(&mut accepted);
        Some(Prepared {
            accepted,
            followers,
            index,
        })
    }

    /// Writes a group to the local store, with the index watermark.
    fn write_local(&self, prepared: &Prepared) -> Result<Committed, StoreError> {
        match self.store.local() {
            Some(local) => local
                .append(&prepared.batch(), prepared.index.watermark)
                .map(|times| Committed {
                    times,
                    refused: Vec::new(),
                }),
            None => Err(StoreError::Backend(
                "a local write to a store that is not local".into(),
            )),
        }
    }

    /// Answers each waiter of a written group.
    fn finish(&mut self, written: Written) {
        let Written {
            prepared,
            result,
            took,
        } = written;
        let counts = BatchCounts::of(&prepared.batch());
        let Prepared {
            accepted,
            followers,
            index,
        } = prepared;
        metrics::histogram!(crate::metrics::APPEND_SECONDS).record(took.as_secs_f64());
        metrics::histogram!(crate::metrics::BATCH_APPENDS).record(counts.appends as f64);
        match result {
            Ok(Committed { times, refused }) => {
                self.watermark.committed(index);
                record_write_times(&times);
                self.stats.add_times(&times);
                counts.add_to(&self.stats);
                answer_followers(followers, &accepted, &refused);
                let mut refused = refused.into_iter().peekable();
                for (at, waiter) in accepted.into_iter().enumerate() {
                    if let Some((_, refusal)) = refused.next_if(|(r, _)| *r == at) {
                        answer(
                            waiter,
                            Err(match refusal {
                                Refusal::KeyTaken(owner) => AppendError::KeyTaken(owner),
                                Refusal::Conflict => AppendError::Conflict,
                            }),
                        );
                        continue;
                    }
                    self.durable += 1;
                    self.stats.appends.fetch_add(1, Ordering::Relaxed);
                    if let Some(hook) = &self.hook {
                        hook(self.durable);
                    }
                    answer(waiter, Ok(()));
                }
            }
            Err(e) => {
                self.watermark.failed(index);
                tracing::error!(error = %e, appends = accepted.len(), "group commit failed");
                self.check_writable();
                for (waiter, _) in followers {
                    answer(waiter, Err(AppendError::Store(e.clone())));
                }
                for waiter in accepted {
                    answer(waiter, Err(AppendError::Store(e.clone())));
                }
            }
        }
    }

    /// Decides the group's idempotency-key claims: against the store for a
    /// local store (one process writes it, so that answer is exact; any
    /// other store decides claims inside its write), and against earlier
    /// claims in the group. A start whose key the store holds is answered
    /// now. A start whose key an earlier start of the group claims is a
    /// *follower* of that start, by its position among the accepted: it is
    /// answered once the write says whether the leader's claim stood.
    fn claim_keys(&self, group: Vec<Waiter>) -> (Vec<Waiter>, Vec<(Waiter, usize)>) {
        // Keyed by caller-chosen text, so std's SipHash rather than `IdMap`
        // (whose fast hash is for ids the engine makes).
        let mut claimed: std::collections::HashMap<IdempotencyKey, usize> =
            std::collections::HashMap::new();
        let mut accepted: Vec<Waiter> = Vec::with_capacity(group.len());
        let mut followers = Vec::new();
        for waiter in group {
            if let Some(Claim { key, .. }) = &waiter.0.claim {
                if let Some(&leader) = claimed.get(key) {
                    followers.push((waiter, leader));
                    continue;
                }
                let stored = match self.store.local() {
                    Some(local) => local.key_claim(key),
                    None => Ok(None),
                };
                match stored {
                    Ok(Some(owner)) => {
                        answer(waiter, Err(AppendError::KeyTaken(owner)));
                        continue;
                    }
                    Ok(None) => {
                        claimed.insert(key.clone(), accepted.len());
                    }
                    Err(e) => {
                        answer(waiter, Err(AppendError::Store(e)));
                        continue;
                    }
                }
            }
            accepted.push(waiter);
        }
        (accepted, followers)
    }

    /// After a failed group on a local store: says once, by the group
    /// whose sync failed, that the log takes no more writes. (A store that
    /// is not local keeps its own gauge: it is writable again once the
    /// database is reachable.)
    fn check_writable(&mut self) {
        if self.store.local().is_none() {
            return;
        }
        if let (true, Err(refusal)) = (self.writable, self.store.writable()) {
            self.writable = false;
            metrics::gauge!(crate::metrics::LOG_WRITABLE).set(0.0);
            tracing::error!(error = %refusal, "the log takes no more writes; restart the service once the disk is fixed");
        }
    }
}

/// Answers the starts whose key an earlier start of their group claimed
/// (see `claim_keys`): the key belongs to that leader if its append was
/// written, or to whoever the store said holds it.
fn answer_followers(
    followers: Vec<(Waiter, usize)>,
    leaders: &[Waiter],
    refused: &[(usize, Refusal)],
) {
    for (waiter, leader) in followers {
        let refusal = refused.iter().find(|(at, _)| *at == leader).map(|(_, r)| r);
        let result = match (refusal, leaders.get(leader)) {
            (Some(Refusal::KeyTaken(owner)), _) => AppendError::KeyTaken(*owner),
            (Some(Refusal::Conflict), _) | (None, None) => AppendError::Conflict,
            (None, Some((append, _))) => AppendError::KeyTaken(KeyClaim {
                saga: append.saga,
                fingerprint: append.claim.as_ref().map(|claim| claim.fingerprint),
            }),
        };
        answer(waiter, Err(result));
    }
}

/// What one batch writes, for [`WriterStats`].
struct BatchCounts {
    appends: usize,
    entries: u64,
    log_values: u64,
    log_value_bytes: u64,
}

impl BatchCounts {
    fn of(batch: &[&SagaAppend]) -> Self {
        let finishes = batch
            .iter()
            .any(|a| a.index.as_ref().is_some_and(|i| i.to == IndexSet::Finished));
        let entries = batch.iter().map(|a| a.entry_count()).sum::<usize>() + usize::from(finishes);
        let values = batch.iter().filter(|a| a.writes_log_value());
        BatchCounts {
            appends: batch.len(),
            entries: entries as u64,
            log_values: values.clone().count() as u64,
            log_value_bytes: values.map(|a| a.value.bytes.len() as u64).sum(),
        }
    }

    fn add_to(&self, stats: &WriterStats) {
        stats.flushes.fetch_add(1, Ordering::Relaxed);
        stats.entries.fetch_add(self.entries, Ordering::Relaxed);
        stats
            .log_values
            .fetch_add(self.log_values, Ordering::Relaxed);
        stats
            .log_value_bytes
            .fetch_add(self.log_value_bytes, Ordering::Relaxed);
    }
}

/// The durable group's parts, for `sagalog_log_write_phase_seconds`.
fn record_write_times(times: &WriteTimes) {
    use crate::metrics::WRITE_PHASE_SECONDS;
    metrics::histogram!(WRITE_PHASE_SECONDS, "phase" => "apply").record(times.apply.as_secs_f64());
    metrics::histogram!(WRITE_PHASE_SECONDS, "phase" => "flush").record(times.flush.as_secs_f64());
    metrics::histogram!(WRITE_PHASE_SECONDS, "phase" => "sync").record(times.sync.as_secs_f64());
}

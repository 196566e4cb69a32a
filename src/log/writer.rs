//! Group commit: one writer thread turns many concurrent appends into one
//! atomic, flushed write.
//!
//! The writer blocks for the first request, then takes every request that is
//! already queued (up to [`MAX_GROUP`]), applies them as one batch, flushes
//! once, and only then acknowledges each waiter. There is no timer in this
//! path: under light load a group is one request and latency is one flush;
//! under heavy load requests pile up during a flush and the next group is
//! large, which is where the throughput comes from.
//!
//! Idempotency-key claims are checked here, inside the single writer, so two
//! concurrent starts with one key cannot both succeed.
//!
//! The writer also keeps the *index watermark* (DESIGN.md §4.2). A saga whose
//! id is at or above the durable watermark gets no active-index entry while
//! it is young: its entry waits in memory (`Deferred`), and if it finishes
//! first only its finished-index entry is ever written. Every so often the
//! writer moves the watermark up to `now - lag`, writing in the same batch
//! an active-index entry for each deferred saga the new watermark passes.
//! Recovery finds the deferred sagas by scanning the log from the watermark.
//! That saves two writes per short saga (the active entry and its delete).

use crate::ids::{IdMap, IdSet, IdempotencyKey, SagaId, UnixMillis};
use crate::log::store::{
    Claim, IndexSet, IndexUpdate, KeyClaim, LogStore, SagaAppend, StoreError, WriteTimes,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Most appends applied in one group.
pub const MAX_GROUP: usize = 4096;

/// Called by the writer after each append is durable and before its waiter
/// is acknowledged, with the number of appends made durable so far by this
/// writer (1, 2, ...). Runs on the writer thread: keep it short.
pub type DurableHook = Arc<dyn Fn(u64) + Send + Sync>;

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
struct Watermark {
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
    fn new(plan: IndexPlan) -> Self {
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
    fn plan(&mut self, group: &mut [Waiter]) -> GroupIndex {
        let mut out = GroupIndex::default();
        if self.frozen && crate::sync::lock(&self.deferred).is_empty() {
            return out;
        }
        // A new watermark is written with this group, so it already
        // counts for the group's own starts (the write is atomic).
        let due = self
            .last_advance
            .is_none_or(|at| at.elapsed() >= self.every);
        if !self.frozen && due {
            self.last_advance = Some(Instant::now());
            let candidate = SagaId::first_at(UnixMillis::now().minus(self.lag));
            if self.mark.is_none_or(|mark| candidate > mark) {
                out.watermark = Some(candidate);
            }
        }
        let mark = out.watermark.or(self.mark);
        let deferred = crate::sync::lock(&self.deferred);
        // The state after this group: Some(entry) deferred, None not.
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
        if let Some(candidate) = out.watermark {
            // Every deferred saga the new watermark passes gets its entry now.
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
            for (id, entry) in passed {
                after.insert(id, None);
                let mut append = SagaAppend::records(id, 0, Vec::new());
                append.index = Some(IndexUpdate {
                    entry,
                    from: None,
                    to: IndexSet::Active,
                });
                out.appends.push(append);
            }
        }
        out.after = after;
        out
    }

    /// The group is durable: apply its changes.
    fn committed(&mut self, index: GroupIndex) {
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
    fn failed(&mut self, index: GroupIndex) {
        self.frozen = true;
        self.uncertain
            .extend(index.appends.iter().map(|append| append.saga));
    }
}

/// How one group changes the index watermark and the deferred entries.
#[derive(Default)]
struct GroupIndex {
    after: IdMap<SagaId, Option<Vec<u8>>>,
    appends: Vec<SagaAppend>,
    watermark: Option<SagaId>,
}

/// The durable group's parts, for `sagalog_log_write_phase_seconds`.
fn record_write_times(times: &WriteTimes) {
    use crate::metrics::WRITE_PHASE_SECONDS;
    metrics::histogram!(WRITE_PHASE_SECONDS, "phase" => "apply").record(times.apply.as_secs_f64());
    metrics::histogram!(WRITE_PHASE_SECONDS, "phase" => "flush").record(times.flush.as_secs_f64());
    metrics::histogram!(WRITE_PHASE_SECONDS, "phase" => "sync").record(times.sync.as_secs_f64());
}

/// Why an append was not made durable.
#[derive(Clone, Debug)]
pub(crate) enum AppendError {
    Store(StoreError),
    /// The claimed idempotency key already belongs to a saga: this one,
    /// claimed by a start with this fingerprint.
    KeyTaken(KeyClaim),
    /// The writer has stopped (the engine is shutting down); nothing was
    /// written.
    Closed,
}

// Nearly every message is an append; boxing it to shrink the one stop
// message would cost an allocation per append.
#[allow(clippy::large_enum_variant)]
enum Message {
    Append(SagaAppend, oneshot::Sender<Reply>),
    Stop(oneshot::Sender<()>),
}

/// Counters the writer keeps, for benchmarks and metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Appends acknowledged as durable.
    pub appends: AtomicU64,
    /// Group commits (one atomic write + one flush each).
    pub flushes: AtomicU64,
    /// Key-value entries written (records, index entries, keys, timers).
    pub entries: AtomicU64,
    /// Bytes of log values written (one value per append: its record frames).
    pub log_value_bytes: AtomicU64,
    /// Log values written.
    pub log_values: AtomicU64,
    /// Nanoseconds the durable group commits spent in the store's `apply`
    /// part ([`WriteTimes::apply`]), summed.
    pub apply_nanos: AtomicU64,
    /// Likewise for [`WriteTimes::flush`].
    pub flush_nanos: AtomicU64,
    /// Likewise for [`WriteTimes::sync`].
    pub sync_nanos: AtomicU64,
}

impl WriterStats {
    /// Adds one durable group's [`WriteTimes`].
    fn add_times(&self, times: &WriteTimes) {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.apply_nanos
            .fetch_add(nanos(times.apply), Ordering::Relaxed);
        self.flush_nanos
            .fetch_add(nanos(times.flush), Ordering::Relaxed);
        self.sync_nanos
            .fetch_add(nanos(times.sync), Ordering::Relaxed);
    }
}

/// Handle to the writer thread. Cloning is cheap; all clones feed one writer.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::UnboundedSender<Message>,
    stats: Arc<WriterStats>,
    thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl Writer {
    /// Starts the writer thread over `store`.
    pub(crate) fn start(
        store: Arc<dyn LogStore>,
        hook: Option<DurableHook>,
        index: IndexPlan,
    ) -> Result<Writer, StoreError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(WriterStats::default());
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("sagalog-writer".into())
            .spawn(move || run(store, rx, hook, thread_stats, Watermark::new(index)))
            .map_err(|e| StoreError::io("starting the writer thread", e))?;
        Ok(Writer {
            tx,
            stats,
            thread: Arc::new(std::sync::Mutex::new(Some(thread))),
        })
    }

    /// Appends durably; resolves once the append is flushed, with the
    /// append handed back, or failed.
    pub(crate) async fn append(&self, append: SagaAppend) -> Result<SagaAppend, AppendError> {
        let (reply, wait) = oneshot::channel();
        self.tx
            .send(Message::Append(append, reply))
            .map_err(|_| AppendError::Closed)?;
        match wait.await {
            // The append comes back to the task that built it, which keeps
            // its log value or drops it.
            Ok((append, result)) => result.map(|()| append),
            Err(_) => Err(AppendError::Closed),
        }
    }

    /// Finishes every append queued before this call, then stops the thread
    /// and waits for it to end: after `stop`, nothing of the writer runs.
    pub(crate) async fn stop(&self) {
        let (reply, wait) = oneshot::channel();
        if self.tx.send(Message::Stop(reply)).is_ok() {
            let _ = wait.await;
        }
        let thread = crate::sync::lock(&self.thread).take();
        if let Some(thread) = thread {
            // The thread has replied and is only returning: this join is
            // brief, so blocking the task for it is harmless.
            let _ = thread.join();
        }
    }

    pub(crate) fn stats(&self) -> &Arc<WriterStats> {
        &self.stats
    }
}

fn run(
    store: Arc<dyn LogStore>,
    mut rx: mpsc::UnboundedReceiver<Message>,
    hook: Option<DurableHook>,
    stats: Arc<WriterStats>,
    mut watermark: Watermark,
) {
    let mut durable: u64 = 0;
    let mut group = Vec::new();
    // A store that stops taking writes never takes them again (until it
    // is reopened, under a new writer): asked once here, then only when a
    // group fails.
    let mut writable = store.writable().is_ok();
    metrics::gauge!(crate::metrics::LOG_WRITABLE).set(if writable { 1.0 } else { 0.0 });
    while let Some(first) = rx.blocking_recv() {
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
        if !group.is_empty() {
            commit_group(
                &*store,
                std::mem::take(&mut group),
                &hook,
                &stats,
                &mut durable,
                &mut watermark,
                &mut writable,
            );
        }
        if let Some(reply) = stop {
            rx.close();
            // Release the store before acknowledging, so that once `stop`
            // returns (and the engine is dropped) the database can be
            // opened again. Requests queued after the stop are answered
            // `Closed` when the receiver and their reply senders drop.
            drop(store);
            drop(rx);
            let _ = reply.send(());
            return;
        }
    }
}

/// What the writer sends back: the append itself, with its result.
///
/// The append goes back so that its buffers are freed by the task that
/// allocated them. Freed on the writer's thread, each of them took the lock
/// of the allocating thread's arena (glibc's `free` of another thread's
/// block), which contended with that thread's own allocations: perf showed
/// about 8 % of the writer's and the engine worker's time in those locks.
type Reply = (SagaAppend, Result<(), AppendError>);

type Waiter = (SagaAppend, oneshot::Sender<Reply>);

/// Answers one waiter, handing its append back (see [`Reply`]).
fn answer((append, reply): Waiter, result: Result<(), AppendError>) {
    let _ = reply.send((append, result));
}

fn commit_group(
    store: &dyn LogStore,
    group: Vec<Waiter>,
    hook: &Option<DurableHook>,
    stats: &WriterStats,
    durable: &mut u64,
    watermark: &mut Watermark,
    writable: &mut bool,
) {
    // Keyed by caller-chosen text, so std's SipHash rather than `IdMap`
    // (whose fast hash is for ids the engine makes).
    let mut claimed: std::collections::HashMap<IdempotencyKey, KeyClaim> =
        std::collections::HashMap::new();
    let mut accepted: Vec<Waiter> = Vec::with_capacity(group.len());
    for waiter in group {
        let append = &waiter.0;
        if let Some(Claim { key, fingerprint }) = &append.claim {
            let owner = match claimed.get(key) {
                Some(owner) => Ok(Some(*owner)),
                None => store.key_claim(key),
            };
            match owner {
                Ok(Some(owner)) => {
                    answer(waiter, Err(AppendError::KeyTaken(owner)));
                    continue;
                }
                Ok(None) => {
                    let claim = KeyClaim {
                        saga: append.saga,
                        fingerprint: Some(*fingerprint),
                    };
                    claimed.insert(key.clone(), claim);
                }
                Err(e) => {
                    answer(waiter, Err(AppendError::Store(e)));
                    continue;
                }
            }
        }
        accepted.push(waiter);
    }
    if accepted.is_empty() {
        return;
    }
    let index = watermark.plan(&mut accepted);
    let batch: Vec<&SagaAppend> = accepted
        .iter()
        .map(|(a, _)| a)
        .chain(index.appends.iter())
        .collect();
    let finishes = batch
        .iter()
        .any(|a| a.index.as_ref().is_some_and(|i| i.to == IndexSet::Finished));
    let entries: usize =
        batch.iter().map(|a| a.entry_count()).sum::<usize>() + usize::from(finishes);
    let log_values = batch.iter().filter(|a| a.writes_log_value()).count();
    let log_value_bytes: usize = batch
        .iter()
        .filter(|a| a.writes_log_value())
        .map(|a| a.value.bytes.len())
        .sum();
    let began = std::time::Instant::now();
    let result = store.append(&batch, index.watermark);
    metrics::histogram!(crate::metrics::APPEND_SECONDS).record(began.elapsed().as_secs_f64());
    metrics::histogram!(crate::metrics::BATCH_APPENDS).record(batch.len() as f64);
    drop(batch);
    match result {
        Ok(times) => {
            watermark.committed(index);
            record_write_times(&times);
            stats.add_times(&times);
            stats.flushes.fetch_add(1, Ordering::Relaxed);
            stats.entries.fetch_add(entries as u64, Ordering::Relaxed);
            stats
                .log_values
                .fetch_add(log_values as u64, Ordering::Relaxed);
            stats
                .log_value_bytes
                .fetch_add(log_value_bytes as u64, Ordering::Relaxed);
            for waiter in accepted {
                *durable += 1;
                stats.appends.fetch_add(1, Ordering::Relaxed);
                if let Some(hook) = hook {
                    hook(*durable);
                }
                answer(waiter, Ok(()));
            }
        }
        Err(e) => {
            watermark.failed(index);
            tracing::error!(error = %e, appends = accepted.len(), "group commit failed");
            // Said once, by the group whose sync failed.
            if let (true, Err(refusal)) = (*writable, store.writable()) {
                *writable = false;
                metrics::gauge!(crate::metrics::LOG_WRITABLE).set(0.0);
                tracing::error!(error = %refusal, "the log takes no more writes; restart the service once the disk is fixed");
            }
            for waiter in accepted {
                answer(waiter, Err(AppendError::Store(e.clone())));
            }
        }
    }
}

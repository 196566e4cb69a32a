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

use crate::ids::{IdempotencyKey, SagaId};
use crate::log::store::{LogStore, SagaAppend, StoreError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most appends applied in one group.
pub const MAX_GROUP: usize = 4096;

/// Called by the writer after each append is durable and before its waiter
/// is acknowledged, with the number of appends made durable so far by this
/// writer (1, 2, ...). Runs on the writer thread: keep it short.
pub type DurableHook = Arc<dyn Fn(u64) + Send + Sync>;

/// Why an append was not made durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AppendError {
    Store(StoreError),
    /// The claimed idempotency key already belongs to this saga.
    KeyTaken(SagaId),
}

enum Message {
    Append(SagaAppend, oneshot::Sender<Result<(), AppendError>>),
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
    ) -> Result<Writer, StoreError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(WriterStats::default());
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("sagalog-writer".into())
            .spawn(move || run(store, rx, hook, thread_stats))
            .map_err(|e| StoreError::Backend(format!("could not start the writer thread: {e}")))?;
        Ok(Writer {
            tx,
            stats,
            thread: Arc::new(std::sync::Mutex::new(Some(thread))),
        })
    }

    /// Appends durably; resolves once the append is flushed, or failed.
    pub(crate) async fn append(&self, append: SagaAppend) -> Result<(), AppendError> {
        let (reply, wait) = oneshot::channel();
        self.tx
            .send(Message::Append(append, reply))
            .map_err(|_| AppendError::Store(StoreError::Closed))?;
        wait.await
            .unwrap_or(Err(AppendError::Store(StoreError::Closed)))
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
) {
    let mut durable: u64 = 0;
    let mut group = Vec::new();
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

type Waiter = (SagaAppend, oneshot::Sender<Result<(), AppendError>>);

fn commit_group(
    store: &dyn LogStore,
    group: Vec<Waiter>,
    hook: &Option<DurableHook>,
    stats: &WriterStats,
    durable: &mut u64,
) {
    let mut claimed: HashMap<IdempotencyKey, SagaId> = HashMap::new();
    let mut accepted: Vec<Waiter> = Vec::with_capacity(group.len());
    for (append, reply) in group {
        if let Some(key) = &append.claim_key {
            let owner = match claimed.get(key) {
                Some(owner) => Ok(Some(*owner)),
                None => store.key_owner(key),
            };
            match owner {
                Ok(Some(owner)) => {
                    let _ = reply.send(Err(AppendError::KeyTaken(owner)));
                    continue;
                }
                Ok(None) => {
                    claimed.insert(key.clone(), append.saga);
                }
                Err(e) => {
                    let _ = reply.send(Err(AppendError::Store(e)));
                    continue;
                }
            }
        }
        accepted.push((append, reply));
    }
    if accepted.is_empty() {
        return;
    }
    let batch: Vec<&SagaAppend> = accepted.iter().map(|(a, _)| a).collect();
    let entries: usize = batch.iter().map(|a| a.entry_count()).sum();
    let log_values = batch.iter().filter(|a| !a.records.is_empty()).count();
    let log_value_bytes: usize = batch
        .iter()
        .flat_map(|a| a.records.iter())
        .map(|r| r.len())
        .sum();
    let began = std::time::Instant::now();
    let result = store.append(&batch);
    metrics::histogram!(crate::metrics::APPEND_SECONDS).record(began.elapsed().as_secs_f64());
    metrics::histogram!(crate::metrics::BATCH_APPENDS).record(batch.len() as f64);
    drop(batch);
    match result {
        Ok(()) => {
            stats.flushes.fetch_add(1, Ordering::Relaxed);
            stats.entries.fetch_add(entries as u64, Ordering::Relaxed);
            stats
                .log_values
                .fetch_add(log_values as u64, Ordering::Relaxed);
            stats
                .log_value_bytes
                .fetch_add(log_value_bytes as u64, Ordering::Relaxed);
            for (_, reply) in accepted {
                *durable += 1;
                stats.appends.fetch_add(1, Ordering::Relaxed);
                if let Some(hook) = hook {
                    hook(*durable);
                }
                let _ = reply.send(Ok(()));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, appends = accepted.len(), "group commit failed");
            for (_, reply) in accepted {
                let _ = reply.send(Err(AppendError::Store(e.clone())));
            }
        }
    }
}

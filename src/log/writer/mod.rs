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

mod group;
mod watermark;

use group::Reply;
use watermark::Watermark;
pub(crate) use watermark::{Deferred, IndexPlan};

use crate::log::store::{KeyClaim, LogStore, SagaAppend, StoreError, WriteTimes};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Most appends applied in one group.
pub const MAX_GROUP: usize = 4096;

/// Called by the writer after each append is durable and before its waiter
/// is acknowledged, with the number of appends made durable so far by this
/// writer (1, 2, ...). Runs on the writer thread: keep it short.
pub type DurableHook = Arc<dyn Fn(u64) + Send + Sync>;

/// Why an append was not made durable.
#[derive(Clone, Debug)]
pub(crate) enum AppendError {
    Store(StoreError),
    /// The claimed idempotency key already belongs to a saga: this one,
    /// claimed by a start with this fingerprint.
    KeyTaken(KeyClaim),
    /// The log already holds records at this append's sequence numbers
    /// (another writer's, or an earlier write's whose outcome was unknown):
    /// nothing was written, and the saga must be read again.
    Conflict,
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

/// Handle to the writer. Cloning is cheap; all clones feed one writer.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::UnboundedSender<Message>,
    stats: Arc<WriterStats>,
    running: Arc<std::sync::Mutex<Option<Running>>>,
}

/// Where the writer runs.
enum Running {
    /// A local store's: an OS thread, which writes synchronously.
    Thread(std::thread::JoinHandle<()>),
    /// Any other store's: a task on the engine's runtime.
    Task(tokio::task::JoinHandle<()>),
}

impl Writer {
    /// Starts the writer over `store`: on a thread of its own for a
    /// [`LogStore::local`] store, as a task on the engine's runtime (which
    /// also drives the store's connections) for any other.
    pub(crate) fn start(
        store: Arc<dyn LogStore>,
        hook: Option<DurableHook>,
        index: IndexPlan,
    ) -> Result<Writer, StoreError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| StoreError::Backend(format!("the engine needs a tokio runtime: {e}")))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(WriterStats::default());
        let writer_stats = stats.clone();
        let watermark = Watermark::new(index);
        let running = match store.local().is_some() {
            true => Running::Thread(
                std::thread::Builder::new()
                    .name("sagalog-writer".into())
                    .spawn(move || group::run_on_thread(store, rx, hook, writer_stats, watermark))
                    .map_err(|e| StoreError::io("starting the writer thread", e))?,
            ),
            false => Running::Task(runtime.spawn(group::run_as_task(
                store,
                rx,
                hook,
                writer_stats,
                watermark,
            ))),
        };
        Ok(Writer {
            tx,
            stats,
            running: Arc::new(std::sync::Mutex::new(Some(running))),
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

    /// Finishes every append queued before this call, then stops the writer
    /// and waits for it to end: after `stop`, nothing of the writer runs.
    pub(crate) async fn stop(&self) {
        let (reply, wait) = oneshot::channel();
        if self.tx.send(Message::Stop(reply)).is_ok() {
            let _ = wait.await;
        }
        let running = crate::sync::lock(&self.running).take();
        match running {
            // The thread has replied and is only returning: this join is
            // brief, so blocking the task for it is harmless.
            Some(Running::Thread(thread)) => {
                let _ = thread.join();
            }
            Some(Running::Task(task)) => {
                let _ = task.await;
            }
            None => {}
        }
    }

    pub(crate) fn stats(&self) -> &Arc<WriterStats> {
        &self.stats
    }
}

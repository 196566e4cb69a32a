//! The engine: opens a store, recovers every saga in flight, starts new
//! ones, wakes sleeping ones, and answers questions about them.
//!
//! One file per concern: `config` (what can be set), `recovery` (opening
//! and resuming), `start` and `outcome` (a caller's view of one saga),
//! `ownership` (claim, park, spawn), `run` (the saga loop and its calls),
//! `nested` (sub-sagas), `cluster` (the lease and adoption on a log that
//! several nodes share), `admin` (operator actions and queues), `read`,
//! `query` and `view` (what a saga looks like from outside), and
//! `retention` (the sweeper).
//!
//! Recovery is not a mode: opening the engine lists the active sagas and
//! feeds each into the same loop a fresh saga runs (sagas asleep on a timer
//! are left to the delay queue). A saga that cannot run (unknown type,
//! other definition version, unreadable or inconsistent log) is *parked*:
//! it stays in the store and in the active index, its reason is visible
//! through [`Engine::saga`] and [`Engine::list`], and every other saga
//! proceeds.
//!
//! **Ownership.** At most one task writes a saga's log at a time: the
//! `running` map holds a mailbox for every saga some task owns. The loop
//! drains its mailbox at each step boundary; an operator action on a saga
//! nobody owns claims it, appends, and starts its loop.

mod admin;
mod calls;
mod cluster;
mod config;
mod nested;
mod operator;
mod outcome;
mod ownership;
mod query;
mod read;
mod recovery;
mod retention;
mod run;
mod staged;
mod start;
mod timeline;
pub mod view;
mod waiting;

pub use admin::{DelayedItem, ManualItem};
pub use config::{CallHook, CallPoint, EngineConfig, SuspendHook};
pub use operator::{Action, ActionRequest, BulkItem};
pub use query::{ListQuery, SagaFilter, Stats};
pub use recovery::Recovery;
pub use retention::{Retention, SweepReport};
pub(crate) use start::{Conflict, NewSaga};
pub use start::{StartOptions, Started};
pub use timeline::{timeline, SagaDetail, TimelineEvent};

use crate::definition::{ErasedInput, ErasedSaga, Registry};
use crate::error::{Error, ParkReason};
use crate::ids::{IdMap, SagaId};
use crate::log::record::{CallRef, OperatorAction};
use crate::log::store::{Lease, LogStore, LogValue};
use crate::log::writer::{Deferred, Writer};
use crate::state::SagaState;
use crate::sync::lock;
use crate::timers::{Clock, DelayQueue};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use view::Outcome;

/// The callers of [`Engine::outcome`] waiting for one saga, each told once.
type OutcomeWaiters = Vec<oneshot::Sender<Result<Outcome, Error>>>;

/// An operator action waiting for a saga's loop, with where to reply and,
/// for one queued by another node, its id in the queue.
pub(crate) type Command = (
    OperatorAction,
    oneshot::Sender<Result<(), Error>>,
    Option<u64>,
);

pub(crate) struct Inner {
    store: Arc<dyn LogStore>,
    /// Whether the store is local ([`LogStore::local`]): its reads answer
    /// inline, and a saga's last log value grows in place (rewriting a
    /// value there costs less than a new key).
    local_store: bool,
    writer: Writer,
    registry: Registry,
    clock: Clock,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
    /// Set at shutdown: no new intent is written.
    stopping: CancellationToken,
    /// Set when the shutdown grace period ends: calls still running are
    /// dropped and left in doubt for recovery.
    aborting: CancellationToken,
    /// Sagas some task owns, each with its mailbox of operator commands.
    running: Mutex<IdMap<SagaId, Vec<Command>>>,
    /// The outcomes reported at a TCC decision (async confirm or cancel) of
    /// sagas whose loops still run here, for callers who ask meanwhile.
    decided: Mutex<IdMap<SagaId, Outcome>>,
    /// Queued actions ([`LogStore::queue_action`](crate::store::LogStore::queue_action))
    /// this node is carrying out.
    applying: Mutex<std::collections::HashSet<u64>>,
    /// Callers of `outcome` waiting for a saga to stop.
    waiters: Mutex<IdMap<SagaId, OutcomeWaiters>>,
    parked: Mutex<IdMap<SagaId, ParkReason>>,
    delay_queue: DelayQueue,
    on_suspend: Option<SuspendHook>,
    around_call: Option<CallHook>,
    calls: std::sync::atomic::AtomicU64,
    /// Opened for administration: nothing runs (see [`Engine::open_admin`]).
    admin_only: bool,
    /// The retention sweeper's thread, if retention is on.
    sweeper: Mutex<Option<retention::Sweeper>>,
    /// Index entries of young sagas, not written yet (see `log::writer`).
    deferred: Deferred,
    /// What recovery found at open.
    recovery: Mutex<Recovery>,
    /// This node's lease, on a store several nodes share.
    lease: Option<Arc<Lease>>,
    /// Wakes [`Engine::outcome`]'s reads of sagas other nodes run; started
    /// on first use.
    ticker: std::sync::OnceLock<outcome::Ticker>,
    /// The database directory, for an engine opened on one
    /// ([`Engine::open`]): where the admin socket goes by default.
    dir: std::sync::OnceLock<std::path::PathBuf>,
}

/// Everything a loop needs to drive one saga.
pub(crate) struct SagaRun {
    id: SagaId,
    definition: Arc<dyn ErasedSaga>,
    input: ErasedInput,
    state: SagaState,
    /// Calls whose intents are already durable (a fresh saga's first
    /// steps, written with its start record): make them before deciding
    /// anything else.
    pending_calls: Vec<(CallRef, calls::CallKind)>,
    /// The last log value the start wrote, for the loop to grow.
    open: Option<LogValue>,
}

/// A running saga orchestrator over one store. Cheap to clone; all clones
/// share the engine. Must be used inside a tokio runtime.
///
/// Dropping the last clone without [`Engine::shutdown`] shuts the engine
/// down in the background with no grace period: calls still running are
/// left in doubt for recovery, and the store (and its directory lock) is
/// released once the background tasks have ended.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
    /// Shared by the clones the caller holds, never by the engine's own
    /// tasks: when the last one drops, the engine shuts down.
    _handle: Option<Arc<UserHandle>>,
}

/// Shuts the engine down when the caller's last [`Engine`] drops.
struct UserHandle {
    inner: std::sync::Weak<Inner>,
}

impl Drop for UserHandle {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        inner.stopping.cancel();
        inner.aborting.cancel();
        let engine = Engine {
            inner,
            _handle: None,
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { engine.shutdown(Duration::ZERO).await });
            }
            // No runtime: its tasks are gone with it; what is left is
            // released as this handle drops.
            Err(_) => {
                engine.inner.tracker.close();
            }
        }
    }
}

impl Engine {
    /// The database directory this engine was opened on, if it was opened
    /// with [`Engine::open`].
    pub fn database_dir(&self) -> Option<&std::path::Path> {
        self.inner.dir.get().map(|p| p.as_path())
    }

    /// Whether a read runs inline on the caller's thread: true for a local
    /// store ([`LogStore::local`]), whose reads never yield.
    #[cfg_attr(not(feature = "admin-http"), allow(dead_code))]
    pub(crate) fn reads_block(&self) -> bool {
        self.inner.local_store
    }

    /// Cancelled when the engine starts shutting down.
    #[cfg_attr(not(feature = "admin-http"), allow(dead_code))]
    pub(crate) fn stopping(&self) -> CancellationToken {
        self.inner.stopping.clone()
    }

    /// Runs `work` on a task of the engine's own and waits for it, so that
    /// a caller who stops waiting (drops this future) does not stop the
    /// work halfway. A panic in `work` is the caller's; `stopped` is the
    /// error if the runtime drops the task.
    pub(crate) async fn detached<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T, Error>> + Send + 'static,
        stopped: impl FnOnce() -> Error,
    ) -> Result<T, Error> {
        match self.inner.tracker.spawn(work).await {
            Ok(done) => done,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(stopped()),
        }
    }

    /// A clone for the engine's own tasks: it does not keep the engine
    /// running once the caller has dropped every handle.
    pub(crate) fn background(&self) -> Engine {
        Engine {
            inner: self.inner.clone(),
            _handle: None,
        }
    }

    /// Stops the engine gracefully.
    ///
    /// No new intent is written from now on. Calls already running get
    /// `grace` to finish, and their results are written; calls still running
    /// after that are abandoned and stay in doubt in the log, to be re-run
    /// (or compensated) by recovery. Every append that was acknowledged is
    /// durable; none is half-written (appends are atomic). Waiting
    /// [`Engine::outcome`] calls of unfinished sagas return
    /// [`Error::ShuttingDown`].
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.stopping.cancel();
        self.inner.tracker.close();
        if tokio::time::timeout(grace, self.inner.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over; calls still running are left in doubt");
            self.inner.aborting.cancel();
            self.inner.tracker.wait().await;
        }
        let sweeper = lock(&self.inner.sweeper).take();
        if let Some(sweeper) = sweeper {
            sweeper.stop().await;
        }
        self.inner.writer.stop().await;
        if let Some(lease) = &self.inner.lease {
            if !lease.is_lost() {
                if let Err(e) = self.inner.store.leave().await {
                    tracing::warn!(error = %e, "could not hand this node's sagas over; the live nodes adopt them once its lease expires");
                }
            }
        }
        let waiters: Vec<_> = lock(&self.inner.waiters).drain().collect();
        for (id, senders) in waiters {
            for tx in senders {
                let _ = tx.send(Err(Error::shutting_down(id)));
            }
        }
    }
}

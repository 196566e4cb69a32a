//! The engine: opens a store, recovers every saga in flight, starts new
//! ones, wakes sleeping ones, and answers questions about them. The loop
//! itself is in `run`, operator actions in `admin`.
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
mod nested;
mod query;
mod retention;
mod run;
pub mod view;

pub use admin::{DelayedItem, ManualItem};
pub use query::{SagaFilter, Stats};
pub use retention::{Retention, SweepReport};

use crate::definition::{ErasedInput, ErasedSaga, Registry, SagaRef};
use crate::error::Error;
use crate::ids::{IdMap, IdempotencyKey, SagaId, UnixMillis};
use crate::log::codec;
use crate::log::record::{CallRef, LogEntry, OperatorAction, Record, SagaStarted};
use crate::log::store::{
    input_fingerprint, Claim, IndexEntry, KeyClaim, LogStore, LogValue, SledOptions, SledStore,
    StoreError, TimerKey,
};
use crate::log::writer::{AppendError, Deferred, DurableHook, IndexPlan, Writer, WriterStats};
use crate::policy::CompensationStrategy;
use crate::state::{decide_live, fold, NextAction, SagaState};
use crate::status::SagaStatus;
use crate::sync::lock;
use crate::timers::{DelayQueue, WINDOW};
use run::{LoopEnd, Staged};
use serde::Serialize;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use view::{HistoryEntry, Outcome, SagaListing, SagaView};

/// Where a participant call stands when [`CallHook`] is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallPoint {
    /// The intent is durable; the participant has not been called.
    BeforeCall,
    /// The participant returned; its result is not yet durable.
    AfterCall,
}

/// Called around every participant call with the point and the running
/// number of calls this engine has made (1, 2, ...). A test hook: crash
/// tests abort the process here to cover the moments between a call and the
/// appends around it. Runs on the saga's task: keep it short.
pub type CallHook = Arc<dyn Fn(CallPoint, u64) + Send + Sync>;

/// Called when a saga is suspended for an operator, with its id and the
/// reason, after the suspension is durable. Runs on the saga's task: keep
/// it short (send an alert, bump a metric).
pub type SuspendHook = Arc<dyn Fn(SagaId, &str) + Send + Sync>;

/// Engine settings.
#[derive(Clone)]
pub struct EngineConfig {
    /// Most sagas whose loops run at once. `start` waits for a free slot
    /// before writing a new saga (backpressure: memory stays bounded however
    /// fast callers start sagas); recovered and woken sagas wait for one in
    /// the background. Default 1024. A participant that starts another saga
    /// and waits for it must leave slots for it.
    pub max_running_sagas: usize,
    /// Settings for the sled store opened by [`Engine::open`].
    pub sled: SledOptions,
    /// Called after every durable append, before it is acknowledged; see
    /// [`DurableHook`]. Meant for crash tests and metrics.
    pub after_durable_append: Option<DurableHook>,
    /// Called whenever a saga is suspended for an operator; see [`SuspendHook`].
    pub on_suspend: Option<SuspendHook>,
    /// Called around every participant call; see [`CallHook`]. For crash tests.
    pub around_call: Option<CallHook>,
    /// The wall-clock time the engine assumes when it opens; `None` (the
    /// default) reads the system clock. From there the engine's clock
    /// advances with tokio's clock, so tests can pause time, and can
    /// simulate downtime by opening a second engine at a later start time.
    pub start_time: Option<UnixMillis>,
    /// Deleting finished sagas after a while; `None` keeps them forever.
    /// Default: [`Retention::default`] (7 days, swept hourly).
    pub retention: Option<Retention>,
    /// How long a new saga may run before it gets an entry in the active
    /// index. Most sagas finish sooner and never get one, which saves two
    /// writes each; the price is that recovery also reads the logs of the
    /// sagas started in the last `index_lag` before a crash. Default 500 ms;
    /// zero writes the entry with the start record. Correctness does not
    /// depend on it (DESIGN.md §4a).
    pub index_lag: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_running_sagas: 1024,
            sled: SledOptions::default(),
            after_durable_append: None,
            on_suspend: None,
            around_call: None,
            start_time: None,
            retention: Some(Retention::default()),
            index_lag: Duration::from_millis(500),
        }
    }
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("max_running_sagas", &self.max_running_sagas)
            .field("sled", &self.sled)
            .field("after_durable_append", &self.after_durable_append.is_some())
            .field("on_suspend", &self.on_suspend.is_some())
            .field("around_call", &self.around_call.is_some())
            .field("start_time", &self.start_time)
            .field("retention", &self.retention)
            .field("index_lag", &self.index_lag)
            .finish()
    }
}

/// Options for [`Engine::start`].
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    idempotency_key: Option<IdempotencyKey>,
    strategy: Option<CompensationStrategy>,
    attach_on_conflict: bool,
}

impl StartOptions {
    /// No options: a new saga every time.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the start idempotent: if a saga with this key exists and was
    /// started with the same saga type and input, `start` returns it instead
    /// of creating another. With another type or input, `start` fails with
    /// [`Error::IdempotencyConflict`] (as a payment API answers a reused key
    /// with another body), unless [`StartOptions::attach_on_conflict`].
    pub fn idempotency_key(mut self, key: impl Into<IdempotencyKey>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// With an idempotency key that already belongs to a saga started with
    /// another type or input, returns that saga (`existing: true`) instead
    /// of failing with [`Error::IdempotencyConflict`].
    pub fn attach_on_conflict(mut self) -> Self {
        self.attach_on_conflict = true;
        self
    }

    /// Uses `strategy` for this saga instead of the definition's default
    /// (steps with their own strategy keep it).
    pub fn strategy(mut self, strategy: CompensationStrategy) -> Self {
        self.strategy = Some(strategy);
        self
    }
}

/// How a start treats an idempotency key that belongs to a saga already.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Conflict {
    /// This start's fingerprint (`input_fingerprint`).
    pub fingerprint: u64,
    /// Return the existing saga even if it was started with another input.
    pub attach: bool,
}

impl Conflict {
    /// The answer to a start whose `key` is claimed by `claim`.
    pub(crate) fn resolve(&self, key: &IdempotencyKey, claim: KeyClaim) -> Result<Started, Error> {
        let same = claim.fingerprint.is_none_or(|f| f == self.fingerprint);
        if same || self.attach {
            return Ok(Started {
                saga_id: claim.saga,
                existing: true,
            });
        }
        Err(Error::IdempotencyConflict {
            key: key.clone(),
            saga: claim.saga,
        })
    }
}

/// What [`Engine::start`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Started {
    /// The saga's id.
    pub saga_id: SagaId,
    /// True when the idempotency key already belonged to this saga, so
    /// nothing new was started.
    pub existing: bool,
}

/// Wall clock as seen through tokio's clock, so that tests with paused
/// time control it too.
struct Clock {
    base_millis: u64,
    base: tokio::time::Instant,
}

impl Clock {
    fn new(start: Option<UnixMillis>) -> Self {
        let base_millis = start.unwrap_or_else(UnixMillis::now).0;
        Clock {
            base_millis,
            base: tokio::time::Instant::now(),
        }
    }

    fn now(&self) -> UnixMillis {
        UnixMillis(self.base_millis + self.base.elapsed().as_millis() as u64)
    }
}

/// What recovery found in the log when the engine opened
/// ([`Engine::recovery`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Sagas in flight whose loops were started again.
    pub resumed: usize,
    /// Sagas asleep on a durable timer, left to the delay queue.
    pub sleeping: usize,
    /// Sagas that cannot run (see [`Engine::saga`] for why).
    pub parked: usize,
    /// Sagas waiting for an operator.
    pub suspended: usize,
}

/// The callers of [`Engine::outcome`] waiting for one saga, each told once.
type OutcomeWaiters = Vec<oneshot::Sender<Result<Outcome, Error>>>;

/// An operator action waiting for a saga's loop, with where to reply.
pub(crate) type Command = (OperatorAction, oneshot::Sender<Result<(), Error>>);

pub(crate) struct Inner {
    store: Arc<dyn LogStore>,
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
    /// Callers of `outcome` waiting for a saga to stop.
    waiters: Mutex<IdMap<SagaId, OutcomeWaiters>>,
    parked: Mutex<IdMap<SagaId, String>>,
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
    pending_calls: Vec<(CallRef, run::CallKind)>,
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
    /// Opens (or creates) the sled database in `path` and recovers every
    /// saga in flight. Fails with a [`crate::StoreError::Locked`] error if
    /// another process has the database open.
    pub async fn open(
        path: impl AsRef<Path>,
        registry: Registry,
        config: EngineConfig,
    ) -> Result<Engine, Error> {
        let path = path.as_ref().to_path_buf();
        let options = config.sled.clone();
        // Opening reads and may wait for the file lock: keep it off the
        // async workers.
        let store = tokio::task::spawn_blocking(move || SledStore::open(path, options))
            .await
            .map_err(|e| StoreError::Backend(format!("the open task failed: {e}")))??;
        Self::open_with_store(Arc::new(store), registry, config).await
    }

    /// Opens the engine over any [`LogStore`] and recovers every saga in
    /// flight in it.
    pub async fn open_with_store(
        store: Arc<dyn LogStore>,
        registry: Registry,
        config: EngineConfig,
    ) -> Result<Engine, Error> {
        Self::open_inner(store, registry, config, false).await
    }

    /// Opens the sled database in `path` for an operator tool, while the
    /// service that owns it is stopped. Nothing runs: no saga is recovered,
    /// no timer fires, and [`Engine::start`] is refused. Queries answer as on
    /// a running engine; operator actions are checked against the saga's
    /// state and appended (durably), and the service carries them out at its
    /// next open. Fails with [`crate::StoreError::Locked`] if another process
    /// has the database open: act through that process's engine instead.
    pub async fn open_admin(path: impl AsRef<Path>, sled: SledOptions) -> Result<Engine, Error> {
        let path = path.as_ref().to_path_buf();
        let store = tokio::task::spawn_blocking(move || SledStore::open(path, sled))
            .await
            .map_err(|e| StoreError::Backend(format!("the open task failed: {e}")))??;
        Self::open_admin_with_store(Arc::new(store)).await
    }

    /// Like [`Engine::open_admin`], over any [`LogStore`].
    pub async fn open_admin_with_store(store: Arc<dyn LogStore>) -> Result<Engine, Error> {
        Self::open_inner(store, Registry::new(), EngineConfig::default(), true).await
    }

    async fn open_inner(
        store: Arc<dyn LogStore>,
        registry: Registry,
        config: EngineConfig,
        admin_only: bool,
    ) -> Result<Engine, Error> {
        if config.start_time.is_none() {
            UnixMillis::checked_now()?;
        }
        let mark = store.watermark()?;
        let deferred: Deferred = Arc::new(Mutex::new(young_sagas(&*store, mark)?));
        let plan = IndexPlan {
            mark,
            lag: config.index_lag,
            deferred: deferred.clone(),
        };
        let writer = Writer::start(store.clone(), config.after_durable_append.clone(), plan)?;
        let inner = Arc::new(Inner {
            store,
            writer,
            deferred,
            registry,
            clock: Clock::new(config.start_time),
            permits: Arc::new(Semaphore::new(config.max_running_sagas.max(1))),
            tracker: TaskTracker::new(),
            stopping: CancellationToken::new(),
            aborting: CancellationToken::new(),
            running: Mutex::new(IdMap::default()),
            waiters: Mutex::new(IdMap::default()),
            parked: Mutex::new(IdMap::default()),
            delay_queue: DelayQueue::new(),
            on_suspend: config.on_suspend.clone(),
            around_call: config.around_call.clone(),
            calls: std::sync::atomic::AtomicU64::new(0),
            admin_only,
            sweeper: Mutex::new(None),
            recovery: Mutex::new(Recovery::default()),
        });
        let engine = Engine {
            _handle: Some(Arc::new(UserHandle {
                inner: Arc::downgrade(&inner),
            })),
            inner,
        };
        if admin_only {
            return Ok(engine);
        }
        engine.recover()?;
        let queue = engine.background();
        engine.inner.tracker.spawn(
            async move { queue.run_delay_queue().await }
                .instrument(tracing::info_span!("delay_queue")),
        );
        if let Some(retention) = config.retention {
            let sweeper = retention::Sweeper::start(&engine, retention)?;
            *lock(&engine.inner.sweeper) = Some(sweeper);
        }
        Ok(engine)
    }

    fn recover(&self) -> Result<(), Error> {
        let (mut resumed, mut sleeping, mut parked) = (0usize, 0usize, 0usize);
        let mut suspended = 0usize;
        // Streamed: only the ids of runnable sagas are kept. A saga asleep
        // on a timer is the delay queue's; loading it now would hold every
        // sleeping saga in memory.
        let mut runnable = Vec::new();
        let mut sort = |id: SagaId, bytes: &[u8]| {
            let entry = codec::decode_index_entry::<IndexEntry>(bytes).ok();
            if entry
                .as_ref()
                .is_some_and(|e| e.status == SagaStatus::Suspended)
            {
                suspended += 1;
            }
            if entry.is_some_and(|e| e.next_wake.is_some()) {
                sleeping += 1;
            } else {
                runnable.push(id);
            }
        };
        self.inner.store.for_each_active(&mut |id, bytes| {
            sort(id, bytes);
            true
        })?;
        for (id, bytes) in lock(&self.inner.deferred).iter() {
            sort(*id, bytes);
        }
        for id in runnable {
            if !self.claim(id) {
                continue;
            }
            match self.prepare(id) {
                Ok(run) => {
                    resumed += 1;
                    self.spawn_owned(run);
                }
                Err(reason) => {
                    parked += 1;
                    self.park(id, reason);
                }
            }
        }
        tracing::info!(
            resumed,
            sleeping,
            parked,
            suspended,
            "recovery scanned the active sagas"
        );
        *lock(&self.inner.recovery) = Recovery {
            resumed,
            sleeping,
            parked,
            suspended,
        };
        metrics::gauge!(crate::metrics::DELAY_QUEUE_DEPTH).set(sleeping as f64);
        metrics::gauge!(crate::metrics::MANUAL_QUEUE_DEPTH).set(suspended as f64);
        Ok(())
    }

    /// What recovery found in the log when this engine opened: how many
    /// sagas in flight it resumed, left asleep, parked or found waiting for
    /// an operator. All zero for a new store and for an admin engine.
    pub fn recovery(&self) -> Recovery {
        *lock(&self.inner.recovery)
    }

    /// A clone for the engine's own tasks: it does not keep the engine
    /// running once the caller has dropped every handle.
    pub(crate) fn background(&self) -> Engine {
        Engine {
            inner: self.inner.clone(),
            _handle: None,
        }
    }

    /// Takes ownership of saga `id`; false if some task owns it already.
    fn claim(&self, id: SagaId) -> bool {
        let mut running = lock(&self.inner.running);
        if running.contains_key(&id) {
            return false;
        }
        running.insert(id, Vec::new());
        true
    }

    /// Parks an owned saga and gives up ownership; anyone waiting for its
    /// outcome learns why.
    fn park(&self, id: SagaId, reason: String) {
        tracing::error!(saga_id = %id, %reason, "saga parked");
        lock(&self.inner.parked).insert(id, reason.clone());
        let pending = lock(&self.inner.running).remove(&id).unwrap_or_default();
        for (_, reply) in pending {
            let _ = reply.send(Err(Error::Parked {
                saga: id,
                reason: reason.clone(),
            }));
        }
        self.inner
            .notify_waiters(id, Err(Error::Parked { saga: id, reason }));
    }

    /// Loads an owned saga and finds its definition. Any failure is the
    /// reason to park it.
    fn prepare(&self, id: SagaId) -> Result<SagaRun, String> {
        let state = self.load_state(id).map_err(|e| e.to_string())?;
        self.prepare_state(id, state)
    }

    /// Runs the loop of an owned saga that `prepare` made ready, or parks it
    /// with the reason it could not.
    fn run_or_park(&self, id: SagaId, prepared: Result<SagaRun, String>) {
        match prepared {
            Ok(run) => self.spawn_owned(run),
            Err(reason) => self.park(id, reason),
        }
    }

    fn prepare_state(&self, id: SagaId, state: SagaState) -> Result<SagaRun, String> {
        let definition = self.inner.registry.get(state.saga_type()).cloned().ok_or_else(|| {
            format!(
                "saga type '{}' is not registered; register its definition before opening the engine, then restart",
                state.saga_type()
            )
        })?;
        if definition.version() != state.started.version {
            return Err(format!(
                "saga type '{}' is registered at version {}, but this saga started under version {}; register a definition of version {} (under its own name) to finish it",
                state.saga_type(),
                definition.version(),
                state.started.version,
                state.started.version
            ));
        }
        if definition.step_names()[..] != state.plan().step_names()[..] {
            return Err(format!(
                "saga type '{}' version {} now has steps {:?}, but this saga's log has {:?}; bump the version when steps change",
                state.saga_type(),
                definition.version(),
                definition.step_names(),
                state.plan().step_names()
            ));
        }
        let input = definition.decode_input(&state.started.input).map_err(|e| {
            format!("the saga's input does not decode as the registered input type: {e}")
        })?;
        Ok(SagaRun {
            id,
            definition,
            input,
            state,
            pending_calls: Vec::new(),
            open: None,
        })
    }

    fn load_state(&self, id: SagaId) -> Result<SagaState, Error> {
        load_state(&*self.inner.store, id)
    }

    /// Runs the loop of a saga this task owns.
    fn spawn_owned(&self, run: SagaRun) {
        self.spawn_owned_with(run, None)
    }

    /// Runs the loop of a saga this task owns, with a concurrency permit
    /// already taken (by `start`) or to be taken by the loop.
    fn spawn_owned_with(&self, run: SagaRun, permit: Option<OwnedSemaphorePermit>) {
        let inner = self.inner.clone();
        let engine = self.background();
        let span =
            tracing::info_span!("saga", saga_id = %run.id, saga_type = %run.state.saga_type());
        self.inner.tracker.spawn(
            async move {
                let id = run.id;
                // A sub-saga runs on its parent's slot: the parent waits for
                // it, so making it wait for a slot of its own could deadlock.
                let child = run.state.started.parent.is_some();
                let permit = match permit {
                    Some(permit) => Ok(Some(permit)),
                    None if child => Ok(None),
                    None => inner.permits.clone().acquire_owned().await.map(Some),
                };
                let result = match permit {
                    // Boxed: the loop's future is over 2 KiB, and held
                    // inline it made this task's future as large, which
                    // tokio copies when it spawns the task, stores it and
                    // replaces it with its output (`.ci/ir-per-saga`:
                    // `memcpy` on the worker fell from 8.2k to 6.4k
                    // instructions per saga, the worker's total by about
                    // 0.7k of 50k, for one more allocation per saga).
                    Ok(_permit) => Box::pin(inner.drive(run)).await,
                    Err(_) => Err(Error::ShuttingDown(id)),
                };
                match result {
                    Ok(LoopEnd::Outcome(outcome)) => inner.notify_waiters(id, Ok(outcome)),
                    Ok(LoopEnd::Sleeping) => {}
                    Err(Error::ShuttingDown(_)) => {
                        lock(&inner.running).remove(&id);
                        inner.notify_waiters(id, Err(Error::ShuttingDown(id)));
                    }
                    Err(e) => {
                        // Visible as parked until the engine is reopened,
                        // which resumes the saga from its durable log.
                        tracing::error!(error = %e, "saga loop stopped; the saga resumes from its log at the next open");
                        let reason = format!("{e}; reopen the engine to resume this saga from its log");
                        inner.notify_waiters(id, Err(e));
                        engine.park(id, reason);
                    }
                }
            }
            .instrument(span),
        );
    }

    async fn run_delay_queue(&self) {
        let inner = &self.inner;
        loop {
            if inner.stopping.is_cancelled() {
                return;
            }
            if inner.delay_queue.needs_refill() {
                let running = lock(&inner.running)
                    .keys()
                    .copied()
                    .collect::<std::collections::HashSet<_>>();
                match inner
                    .store
                    .scan_timers(WINDOW, &mut |saga| running.contains(&saga))
                {
                    Ok((timers, complete)) => inner
                        .delay_queue
                        .refill(timers.into_iter().map(|(key, _)| key).collect(), complete),
                    Err(e) => {
                        tracing::error!(error = %e, "could not read the delay queue; retrying in 1 s");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = inner.stopping.cancelled() => return,
                        }
                        continue;
                    }
                }
            }
            for key in inner.delay_queue.pop_due(inner.clock.now()) {
                self.wake(key);
            }
            if inner.delay_queue.needs_refill() {
                continue;
            }
            // No timer when nothing is due: an idle queue must not hold a
            // pending sleep (it would also make tokio's paused clock jump).
            let next = inner.delay_queue.next_due();
            let sleep = async {
                match next {
                    Some(due) => {
                        let wait = due.0.saturating_sub(inner.clock.now().0);
                        tokio::time::sleep(Duration::from_millis(wait)).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                _ = inner.delay_queue.changed() => {}
                _ = inner.stopping.cancelled() => return,
            }
        }
    }

    /// A timer fell due: run the saga's loop, unless some task owns the saga
    /// or the timer is stale (the saga moved on since it was set).
    fn wake(&self, key: TimerKey) {
        if !self.claim(key.saga) {
            // Some task owns the saga (a loop, an operator action). If that
            // task leaves the timer in place (a refused action), nothing else
            // would look at it again: try once more in a second. A stale
            // retry is recognised by its sequence number and ignored.
            self.inner.delay_queue.insert(TimerKey {
                due: self.inner.clock.now().plus_millis(1_000),
                ..key
            });
            return;
        }
        let state = match self.load_state(key.saga) {
            Ok(state) => state,
            Err(e) => return self.park(key.saga, e.to_string()),
        };
        let stale = state.timer.as_ref().map(|t| t.seq) != Some(key.seq);
        if stale && self.inner.release_if_idle(key.saga) {
            return;
        }
        self.run_or_park(key.saga, self.prepare_state(key.saga, state));
    }

    /// Starts a saga of type `saga` with `input`.
    ///
    /// Waits for a free slot among `max_running_sagas`, then returns once
    /// the start record (with the first step's intent) is durable; the steps
    /// run in the background (wait with [`Engine::outcome`]). With an idempotency key
    /// that already belongs to a saga, starts nothing and returns that saga
    /// with `existing: true` if it was started with the same type and input,
    /// and fails with [`Error::IdempotencyConflict`] otherwise (see
    /// [`StartOptions::idempotency_key`]).
    pub async fn start<I: Serialize>(
        &self,
        saga: &SagaRef<I>,
        input: &I,
        options: StartOptions,
    ) -> Result<Started, Error> {
        if self.inner.admin_only {
            return Err(Error::AdminOnly);
        }
        let definition = self
            .inner
            .registry
            .get(saga.saga_type())
            .cloned()
            .ok_or_else(|| Error::UnknownSagaType(saga.saga_type().clone()))?;
        let input_bytes = codec::encode_value(input).map_err(|e| Error::encode("input", e))?;
        let on_conflict = Conflict {
            fingerprint: input_fingerprint(saga.saga_type().as_str(), &input_bytes),
            attach: options.attach_on_conflict,
        };
        if let Some(key) = &options.idempotency_key {
            if let Some(claim) = self.inner.store.key_claim(key)? {
                return on_conflict.resolve(key, claim);
            }
        }
        // Backpressure: a new saga waits for a free slot before it is
        // written, so a caller that starts faster than sagas finish waits
        // here instead of piling up sagas in memory.
        let closed = || Error::Store(StoreError::Closed);
        let permit = tokio::select! {
            permit = self.inner.permits.clone().acquire_owned() => permit,
            _ = self.inner.stopping.cancelled() => return Err(closed()),
        }
        .map_err(|_| closed())?;
        let mut plan = definition.plan();
        if let Some(strategy) = options.strategy {
            let problems = strategy.problems("strategy");
            if !problems.is_empty() {
                return Err(Error::InvalidOptions(problems.join("; ")));
            }
            plan.strategy = strategy;
        }
        self.start_encoded(
            saga.saga_type(),
            definition,
            plan,
            input_bytes,
            options.idempotency_key.map(|key| (key, on_conflict)),
            None,
            Some(permit),
        )
        .await
    }

    /// Writes the start record of a saga whose input is encoded already
    /// and runs it; `parent` links a sub-saga to its parent's step. Without
    /// a `permit` the loop runs without one (a sub-saga: its parent holds
    /// one, and waiting for a second could deadlock).
    #[allow(clippy::too_many_arguments)]
    async fn start_encoded(
        &self,
        saga_type: &crate::ids::SagaType,
        definition: Arc<dyn ErasedSaga>,
        plan: crate::log::record::SagaPlan,
        input_bytes: Vec<u8>,
        key: Option<(IdempotencyKey, Conflict)>,
        parent: Option<crate::log::record::ParentLink>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<Started, Error> {
        let (idempotency_key, on_conflict) = key.unzip();
        let erased_input = definition
            .decode_input(&input_bytes)
            .map_err(|e| Error::Encode {
                what: "input",
                reason: format!("it does not decode back to itself: {e}"),
            })?;
        let id = SagaId::new();
        let entry = LogEntry {
            seq: 0,
            at: self.inner.clock.now(),
            record: Record::SagaStarted(Box::new(SagaStarted {
                saga_type: saga_type.clone(),
                version: definition.version(),
                input: input_bytes,
                plan,
                idempotency_key: idempotency_key.clone(),
                parent,
            })),
        };
        let frame = codec::encode_record(entry.at, &entry.record)
            .map_err(|e| Error::encode("record", e))?;
        let at = entry.at;
        let mut state = SagaState::from_start_owned(entry)
            .map_err(|error| Error::Illegal { saga: id, error })?;
        let mut staged = Staged::new(id, None);
        staged.stage_frame(frame);
        // A fresh saga's first decisions are its first steps: write those
        // intents with the start record, one flush instead of two.
        let mut pending_calls = Vec::new();
        loop {
            let live: Vec<_> = pending_calls
                .iter()
                .map(|(call, _): &(CallRef, _)| call.step)
                .collect();
            let NextAction::RunStep { step, attempt } = decide_live(&state, at, &live) else {
                break;
            };
            let call = CallRef { step, attempt };
            staged.push(&mut state, at, Record::StepStarted(call))?;
            pending_calls.push((call, run::CallKind::Forward));
        }
        let Some(mut append) = staged.take(&state)? else {
            return Err(Error::Encode {
                what: "start record",
                reason: "nothing was staged".into(),
            });
        };
        append.claim = idempotency_key
            .clone()
            .zip(on_conflict)
            .map(|(key, c)| Claim {
                key,
                fingerprint: c.fingerprint,
            });
        if self.inner.stopping.is_cancelled() {
            return Err(Error::ShuttingDown(id));
        }
        match self.inner.writer.append(append).await {
            Ok(append) => staged.written(append),
            Err(AppendError::KeyTaken(owner)) => {
                return match (idempotency_key, on_conflict) {
                    (Some(key), Some(on_conflict)) => on_conflict.resolve(&key, owner),
                    _ => Ok(Started {
                        saga_id: owner.saga,
                        existing: true,
                    }),
                }
            }
            Err(AppendError::Store(e)) => return Err(Error::Store(e)),
        }
        tracing::info!(saga_id = %id, %saga_type, "saga started");
        metrics::counter!(crate::metrics::SAGAS_STARTED, "saga_type" => saga_type.shared())
            .increment(1);
        // A fresh id: nobody else can own it.
        self.claim(id);
        self.spawn_owned_with(
            SagaRun {
                id,
                definition,
                input: erased_input,
                state,
                pending_calls,
                open: staged.into_open(),
            },
            permit,
        );
        Ok(Started {
            saga_id: id,
            existing: false,
        })
    }

    /// Waits until saga `id` is terminal or stops for an operator, and
    /// returns how it ended. Returns at once for a saga that already has.
    /// A saga asleep on a timer (a backoff, a scheduled compensation) is
    /// waited for through its sleep.
    ///
    /// Errors: [`Error::NotFound`] for an unknown id, [`Error::Parked`] for a
    /// parked saga, [`Error::ShuttingDown`] if the engine stops first, or the
    /// store error that stopped the saga's loop.
    pub async fn outcome(&self, id: SagaId) -> Result<Outcome, Error> {
        // Register before looking, so that a loop ending in between is not missed.
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.waiters).entry(id).or_default().push(tx);
        match self.outcome_at_once(id) {
            Some(result) => {
                drop(rx);
                self.inner.forget_closed_waiters(id);
                result
            }
            None => rx.await.unwrap_or(Err(Error::ShuttingDown(id))),
        }
    }

    /// The outcome of saga `id` if it is known without waiting: the saga
    /// is parked, unknown, stopped, or reports at its TCC decision, or the
    /// engine is stopping. `None` while a loop drives it (or will).
    fn outcome_at_once(&self, id: SagaId) -> Option<Result<Outcome, Error>> {
        if let Some(reason) = lock(&self.inner.parked).get(&id) {
            return Some(Err(Error::Parked {
                saga: id,
                reason: reason.clone(),
            }));
        }
        if lock(&self.inner.running).contains_key(&id) {
            return None;
        }
        let (view, state) = match self.view_and_state(id) {
            Ok(found) => found,
            Err(e) => return Some(Err(e)),
        };
        if view.status.is_terminal() || view.status == SagaStatus::Suspended {
            return Some(Ok(view.outcome()));
        }
        if state.as_ref().is_some_and(run::reports_at_decision) {
            return Some(Ok(view.outcome()));
        }
        if self.inner.stopping.is_cancelled() {
            return Some(Err(Error::ShuttingDown(id)));
        }
        None
    }

    /// The current state of saga `id`, read from the log.
    ///
    /// A parked saga whose log cannot be read is returned from its index
    /// entry with status `Suspended` and the park reason.
    pub fn saga(&self, id: SagaId) -> Result<SagaView, Error> {
        self.view_and_state(id).map(|(view, _)| view)
    }

    /// The view of saga `id`, with the state it was made from when its log
    /// could be read: one read of the log for both.
    fn view_and_state(&self, id: SagaId) -> Result<(SagaView, Option<SagaState>), Error> {
        let parked = lock(&self.inner.parked).get(&id).cloned();
        match self.load_state(id) {
            Ok(state) => {
                let mut view = SagaView::from_state(id, &state);
                for (step, plan) in state.plan().steps.iter().enumerate() {
                    if plan.child.is_some() {
                        if let Some(child) = self.child_of(id, step as u32)? {
                            view.children.push((plan.name.clone(), child));
                        }
                    }
                }
                if let Some(reason) = parked {
                    view.status = SagaStatus::Suspended;
                    view.reason = Some(reason);
                }
                Ok((view, Some(state)))
            }
            Err(e @ (Error::Decode { .. } | Error::Illegal { .. })) => {
                let entry = self.index_entry(id)?;
                let view = SagaView {
                    saga_id: id,
                    saga_type: entry
                        .as_ref()
                        .map(|e| e.saga_type.clone())
                        .unwrap_or_else(|| "?".into()),
                    version: 0,
                    status: SagaStatus::Suspended,
                    strategy: "?",
                    tcc: false,
                    idempotency_key: None,
                    started_at: entry.as_ref().map_or(UnixMillis(0), |e| e.started_at),
                    updated_at: entry.as_ref().map_or(UnixMillis(0), |e| e.started_at),
                    steps: Vec::new(),
                    failure: None,
                    reason: Some(parked.unwrap_or_else(|| e.to_string())),
                    parent: None,
                    children: Vec::new(),
                    pending: Vec::new(),
                };
                Ok((view, None))
            }
            Err(e) => Err(e),
        }
    }

    fn index_entry(&self, id: SagaId) -> Result<Option<IndexEntry>, Error> {
        let stored = self.inner.store.read_active(id)?;
        let bytes = match stored.or_else(|| lock(&self.inner.deferred).get(&id).cloned()) {
            Some(bytes) => Some(bytes),
            // Only for a saga whose log cannot be read: no need to be quick.
            None => self
                .inner
                .store
                .scan_finished()?
                .into_iter()
                .find(|(saga, _)| *saga == id)
                .map(|(_, bytes)| bytes),
        };
        Ok(bytes.and_then(|bytes| codec::decode_index_entry(&bytes).ok()))
    }

    /// Every saga's encoded index entry: the active and finished indexes,
    /// and the entries the writer has not written yet.
    fn index_pairs(&self) -> Result<Vec<(SagaId, Vec<u8>)>, Error> {
        // Deferred first: a saga that has just been indexed can be in both
        // for a moment, and the store's entry is the newer one then.
        let deferred = lock(&self.inner.deferred).clone();
        let mut pairs = self.inner.store.scan_active()?;
        pairs.extend(self.inner.store.scan_finished()?);
        let stored: std::collections::HashSet<SagaId> = pairs.iter().map(|(id, _)| *id).collect();
        pairs.extend(deferred.into_iter().filter(|(id, _)| !stored.contains(id)));
        Ok(pairs)
    }

    /// Every record of saga `id` in order, with timestamps. Unreadable
    /// records appear with their decode error.
    pub fn history(&self, id: SagaId) -> Result<Vec<HistoryEntry>, Error> {
        read_history(&*self.inner.store, id)
    }

    /// Every saga (active and finished), oldest first, optionally only
    /// those with `status`. Parked sagas count as `Suspended`. See
    /// [`Engine::find`] for more filters.
    pub fn list(&self, status: Option<SagaStatus>) -> Result<Vec<SagaListing>, Error> {
        let filter = match status {
            Some(status) => SagaFilter::new().status(status),
            None => SagaFilter::new(),
        };
        self.find(&filter)
    }

    /// Sagas parked because they cannot run, with the reason.
    pub fn parked(&self) -> Vec<(SagaId, String)> {
        let mut out: Vec<_> = lock(&self.inner.parked)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        out.sort();
        out
    }

    /// Decodes every value in the store and reports the ones that do not
    /// decode, with their keys; see [`crate::log::verify::verify`].
    pub fn verify(&self) -> Result<crate::log::verify::VerifyReport, Error> {
        Ok(crate::log::verify::verify(self.inner.store.as_ref())?)
    }

    /// The engine's current time, as written into records.
    pub fn now(&self) -> UnixMillis {
        self.inner.clock.now()
    }

    /// `Ok` while the log takes writes. Once a write could not be made
    /// durable (a failed flush or `fdatasync` on the database's disk), every later
    /// write is refused, so no saga can move on and no saga can start, until
    /// the engine is opened again (recovery then reads what the disk really
    /// holds). The error says what failed. A service should take itself
    /// out of rotation when this fails and restart once the disk is fixed;
    /// the `sagalog_log_writable` gauge (0 or 1) says the same to a
    /// metrics scraper. Reads (views, history, listings) keep working.
    pub fn writable(&self) -> Result<(), Error> {
        Ok(self.inner.store.writable()?)
    }

    /// Counters of the log writer (appends, flushes, entries written).
    pub fn log_stats(&self) -> Arc<WriterStats> {
        self.inner.writer.stats().clone()
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
        let waiters: Vec<_> = lock(&self.inner.waiters).drain().collect();
        for (id, senders) in waiters {
            for tx in senders {
                let _ = tx.send(Err(Error::ShuttingDown(id)));
            }
        }
    }
}

impl Inner {
    /// Tells everyone waiting for saga `id` how it stopped.
    fn notify_waiters(&self, id: SagaId, result: Result<Outcome, Error>) {
        let Some(mut senders) = lock(&self.waiters).remove(&id) else {
            return;
        };
        let last = senders.pop();
        for tx in senders {
            let _ = tx.send(result.clone());
        }
        if let Some(tx) = last {
            let _ = tx.send(result);
        }
    }

    /// Drops the waiters of saga `id` that stopped waiting (a caller of
    /// `outcome` that got its answer at once), and the entry once empty.
    fn forget_closed_waiters(&self, id: SagaId) {
        let mut waiters = lock(&self.waiters);
        if let Some(senders) = waiters.get_mut(&id) {
            senders.retain(|tx| !tx.is_closed());
            if senders.is_empty() {
                waiters.remove(&id);
            }
        }
    }
}

/// Every record of saga `id` in order, with timestamps. In a damaged value,
/// the records before the damage are read, and the rest of the value
/// appears as one entry with its decode error.
fn read_history(store: &dyn LogStore, id: SagaId) -> Result<Vec<HistoryEntry>, Error> {
    let raw = store.read_log(id)?;
    if raw.is_empty() {
        return Err(Error::NotFound(id));
    }
    let mut history = Vec::with_capacity(raw.len() * 4);
    for (first_seq, value) in raw {
        let (records, damage) = codec::decode_records_prefix(&value);
        let mut seq = first_seq;
        for record in records {
            history.push(HistoryEntry {
                seq,
                record: Ok(record),
            });
            seq += 1;
        }
        if let Some(error) = damage {
            history.push(HistoryEntry {
                seq,
                record: Err(error),
            });
        }
    }
    Ok(history)
}

/// The saga's records in order; the first unreadable value is an error.
fn load_entries(store: &dyn LogStore, id: SagaId) -> Result<Vec<LogEntry>, Error> {
    read_history(store, id)?
        .into_iter()
        .map(|entry| match entry.record {
            Ok((at, record)) => Ok(LogEntry {
                seq: entry.seq,
                at,
                record,
            }),
            Err(error) => Err(Error::Decode {
                saga: id,
                seq: entry.seq,
                error,
            }),
        })
        .collect()
}

fn load_state(store: &dyn LogStore, id: SagaId) -> Result<SagaState, Error> {
    let entries = load_entries(store, id)?;
    fold(&entries).map_err(|error| Error::Illegal { saga: id, error })
}

/// The sagas at or above the index watermark that are not terminal and have
/// no index entry, with the entry each should have: the writer defers the
/// entries of young sagas, so after a crash these are known only from
/// their logs. A saga whose log cannot be folded gets an entry that says
/// so (status `SUSPENDED`): recovery parks it, and operators see it.
fn young_sagas(
    store: &dyn LogStore,
    mark: Option<SagaId>,
) -> Result<IdMap<SagaId, Vec<u8>>, Error> {
    let mut found = IdMap::default();
    let Some(mark) = mark else {
        return Ok(found);
    };
    // A saga at or above the mark finished after the mark's time, so its
    // batch is at or above it too (with a clock that went back, a saga
    // missed here is read and found terminal below).
    let finished: std::collections::HashSet<SagaId> = store
        .scan_finished_batches(mark)?
        .into_iter()
        .flat_map(|batch| batch.items.into_iter().map(|(saga, _)| saga))
        .collect();
    for id in store.sagas_logged_from(mark)? {
        if finished.contains(&id) || store.read_active(id)?.is_some() {
            continue;
        }
        let entry = match load_state(store, id) {
            Ok(state) if state.status().is_terminal() => continue,
            Ok(state) => run::index_entry(&state),
            Err(e) => {
                tracing::error!(saga_id = %id, error = %e, "a young saga's log cannot be read; it will be parked");
                IndexEntry {
                    saga_type: crate::ids::SagaType::new("?"),
                    status: SagaStatus::Suspended,
                    started_at: UnixMillis(0),
                    next_wake: None,
                    changed_at: UnixMillis(0),
                    pending: None,
                }
            }
        };
        let bytes =
            codec::encode_index_entry(&entry).map_err(|e| Error::encode("index entry", e))?;
        found.insert(id, bytes);
    }
    Ok(found)
}

//! Opening an engine and recovering every saga in flight from the log.

use super::read::state_of;
use super::{retention, Engine, EngineConfig, Inner, UserHandle};
use crate::definition::Registry;
use crate::error::Error;
use crate::ids::{IdMap, SagaId, UnixMillis};
use crate::log::codec;
use crate::log::store::{IndexEntry, KvLogStore, LogStore, SledOptions, SledStore, StoreError};
use crate::log::writer::{Deferred, IndexPlan, Writer};
use crate::status::SagaStatus;
use crate::sync::lock;
use crate::timers::{Clock, DelayQueue};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// How many active sagas recovery reads at a time from a store that is not
/// local.
const RECOVERY_PAGE: usize = 1024;

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
        let dir = path.clone();
        let store = tokio::task::spawn_blocking(move || SledStore::open(path, options))
            .await
            .map_err(|e| StoreError::Backend(format!("the open task failed: {e}")))??;
        let engine = Self::open_with_store(Arc::new(store), registry, config).await?;
        let _ = engine.inner.dir.set(dir);
        Ok(engine)
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

    pub(super) async fn open_inner(
        store: Arc<dyn LogStore>,
        registry: Registry,
        config: EngineConfig,
        admin_only: bool,
    ) -> Result<Engine, Error> {
        if config.start_time.is_none() {
            UnixMillis::checked_now()?;
        }
        // Only a local store defers young sagas' index entries; with any
        // other every saga has its entry from its start.
        let (mark, young, lag) = match store.local() {
            Some(local) => {
                let mark = local.watermark()?;
                (mark, young_sagas(local, mark)?, config.index_lag)
            }
            None => (None, IdMap::default(), std::time::Duration::ZERO),
        };
        let deferred: Deferred = Arc::new(Mutex::new(young));
        let plan = IndexPlan {
            mark,
            lag,
            deferred: deferred.clone(),
        };
        let lease = match admin_only {
            true => None,
            false => store.join(&registry.types()).await?,
        };
        let writer = Writer::start(store.clone(), config.after_durable_append.clone(), plan)?;
        let inner = Arc::new(Inner {
            local_store: store.local().is_some(),
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
            applying: Mutex::default(),
            decided: Mutex::new(IdMap::default()),
            waiters: Mutex::new(IdMap::default()),
            parked: Mutex::new(IdMap::default()),
            delay_queue: DelayQueue::new(),
            on_suspend: config.on_suspend.clone(),
            around_call: config.around_call.clone(),
            calls: std::sync::atomic::AtomicU64::new(0),
            admin_only,
            sweeper: Mutex::new(None),
            recovery: Mutex::new(Recovery::default()),
            lease,
            ticker: std::sync::OnceLock::new(),
            dir: std::sync::OnceLock::new(),
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
        engine.recover().await?;
        let queue = engine.background();
        engine.inner.tracker.spawn(
            async move {
                let inner = &queue.inner;
                crate::timers::run(
                    &inner.delay_queue,
                    inner.store.as_ref(),
                    &inner.clock,
                    &inner.stopping,
                    || lock(&inner.running).keys().copied().collect(),
                    |key| queue.wake(key),
                )
                .await
            }
            .instrument(tracing::info_span!("delay_queue")),
        );
        engine.watch_lease();
        if let Some(retention) = config.retention {
            let sweeper = retention::Sweeper::start(&engine, retention)?;
            *lock(&engine.inner.sweeper) = Some(sweeper);
        }
        Ok(engine)
    }

    pub(super) async fn recover(&self) -> Result<(), Error> {
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
        match self.inner.store.local() {
            Some(local) => {
                local.for_each_active(SagaId::from_bytes([0; 16]), &mut |id, bytes| {
                    sort(id, bytes);
                    true
                })?
            }
            None => {
                let mut after = None;
                loop {
                    let page = self.inner.store.scan_owned(after, RECOVERY_PAGE).await?;
                    let Some((last, _)) = page.last() else {
                        break;
                    };
                    after = Some(*last);
                    for (id, bytes) in &page {
                        sort(*id, bytes);
                    }
                }
            }
        }
        for (id, bytes) in lock(&self.inner.deferred).iter() {
            sort(*id, bytes);
        }
        for id in runnable {
            if !self.claim(id) {
                continue;
            }
            match self.prepare(id).await {
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
        if self.inner.lease.is_some() {
            // A failed adoption is tried again after each lease renewal;
            // only a fence stops the open.
            match self.adopt_all().await {
                Ok(adopted) => {
                    resumed += adopted.resumed;
                    sleeping += adopted.sleeping;
                    parked += adopted.parked;
                }
                Err(e @ Error::Store(StoreError::Fenced { .. })) => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "could not adopt sagas at open; trying again at the next renewal")
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
}

/// The sagas at or above the index watermark that are not terminal and have
/// no index entry, with the entry each should have: the writer defers the
/// entries of young sagas, so after a crash these are known only from
/// their logs. A saga whose log cannot be folded gets an entry that says
/// so (status `SUSPENDED`): recovery parks it, and operators see it.
pub(super) fn young_sagas(
    store: &dyn KvLogStore,
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
        let entry = match store
            .read_log(id)
            .map_err(Error::from)
            .and_then(|raw| state_of(id, raw))
        {
            Ok(state) if state.status().is_terminal() => continue,
            Ok(state) => super::staged::index_entry(&state),
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

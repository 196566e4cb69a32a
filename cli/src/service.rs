//! The service the commands work on: a stopped service's database opened
//! here, or a running service through its admin server. Both answer with
//! the admin API's documents, so that every command prints the same way
//! whichever it is.

use crate::remote::Remote;
use crate::{Failed, Failure, Usage};
use sagalog::api::{ActionDone, BulkReport, BulkRequest, DelayQueue, ManualQueue, SagaPage};
use sagalog::{
    Action, ActionRequest, Engine, ListQuery, SagaDetail, SagaId, SledStore, Stats, UnixMillis,
};
use std::sync::Arc;
use std::time::Duration;

pub enum Service {
    /// Opened here: nothing runs; actions are recorded for the service's
    /// next start.
    Local {
        engine: Engine,
        store: Arc<SledStore>,
    },
    /// A running service: actions take effect at once.
    Remote(Remote),
    /// A PostgreSQL log its nodes may be running. To act, this process
    /// joins the log as a node of its own: it takes a saga no live node
    /// owns, appends the action, and hands the saga back when it leaves,
    /// for a live node to run; a saga a live node owns is refused, naming
    /// the node to act through.
    Database {
        engine: Engine,
        store: Arc<sagalog::PgStore>,
        joined: std::sync::atomic::AtomicBool,
    },
}

impl Service {
    pub async fn open_local(store: SledStore) -> Result<Service, Failed> {
        let store = Arc::new(store);
        let engine = Engine::open_admin_with_store(store.clone()).await?;
        Ok(Service::Local { engine, store })
    }

    /// Opens the PostgreSQL log at `url` for reading.
    pub async fn open_pg(url: &str, options: sagalog::PgOptions) -> Result<Service, Failed> {
        let store = Arc::new(sagalog::PgStore::connect(url, options).await?);
        let engine = Engine::open_admin_with_store(store.clone()).await?;
        Ok(Service::Database {
            engine,
            store,
            joined: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Before the first action on a PostgreSQL log: joins it as a node with
    /// no saga types (it adopts nothing), so that its writes are fenced
    /// and the sagas it takes are its own until it leaves. Nothing to do
    /// for the other services.
    async fn ready_to_act(&self) -> Result<(), Failed> {
        if let Service::Database { store, joined, .. } = self {
            if !joined.swap(true, std::sync::atomic::Ordering::SeqCst) {
                sagalog::store::LogStore::join(&**store, &[]).await?;
            }
        }
        Ok(())
    }

    /// True for a running service, where actions take effect at once.
    pub fn is_live(&self) -> bool {
        matches!(self, Service::Remote(_))
    }

    /// Who carries out an action recorded through this service.
    pub fn carried(&self) -> crate::render::Carried {
        match self {
            Service::Remote(_) => crate::render::Carried::Now,
            Service::Local { .. } => crate::render::Carried::AtNextStart,
            Service::Database { .. } => crate::render::Carried::ByALiveNode,
        }
    }

    /// The time to say "in 2 s" from.
    pub fn now(&self) -> UnixMillis {
        match self {
            Service::Local { engine, .. } | Service::Database { engine, .. } => engine.now(),
            Service::Remote(_) => {
                UnixMillis::from_system_time(std::time::SystemTime::now()).unwrap_or(UnixMillis(0))
            }
        }
    }

    pub async fn list(&self, query: &ListQuery) -> Result<SagaPage, Failed> {
        match self {
            Service::Local { engine, .. } | Service::Database { engine, .. } => {
                let filter = query.filter().map_err(|e| Usage(e.to_string()))?;
                let sagas = engine.find(&filter).await?;
                let next = match query.limit {
                    Some(limit) if limit > 0 && sagas.len() == limit => {
                        sagas.last().map(|s| s.saga_id)
                    }
                    _ => None,
                };
                Ok(SagaPage { sagas, next })
            }
            Service::Remote(remote) => {
                let query = serde_urlencoded::to_string(query)
                    .map_err(|e| Failure(format!("could not write the query: {e}")))?;
                Ok(remote.get(&format!("/v1/sagas?{query}")).await?)
            }
        }
    }

    pub async fn by_key(&self, key: &str) -> Result<SagaId, Failed> {
        let query = ListQuery {
            key: Some(key.to_owned()),
            ..ListQuery::default()
        };
        let page = self.list(&query).await?;
        page.sagas.first().map(|s| s.saga_id).ok_or_else(|| {
            Failure(format!(
                "no saga was started with idempotency key '{key}'; `sagalog show ID` shows a saga's key"
            ))
            .into()
        })
    }

    pub async fn detail(&self, id: SagaId) -> Result<SagaDetail, Failed> {
        match self {
            Service::Local { engine, .. } | Service::Database { engine, .. } => {
                Ok(engine.detail(id).await?)
            }
            Service::Remote(remote) => Ok(remote.get(&format!("/v1/sagas/{id}")).await?),
        }
    }

    pub async fn manual(&self) -> Result<ManualQueue, Failed> {
        match self {
            Service::Local { engine, .. } | Service::Database { engine, .. } => Ok(ManualQueue {
                manual_queue: engine.manual_queue().await?,
            }),
            Service::Remote(remote) => Ok(remote.get("/v1/manual").await?),
        }
    }

    pub async fn delay(&self) -> Result<DelayQueue, Failed> {
        match self {
            Service::Local { engine, .. } | Service::Database { engine, .. } => Ok(DelayQueue {
                delay_queue: engine.delay_queue(1000).await?,
            }),
            Service::Remote(remote) => Ok(remote.get("/v1/delay?limit=1000").await?),
        }
    }

    pub async fn stats(&self) -> Result<Stats, Failed> {
        match self {
            Service::Local { engine, .. } | Service::Database { engine, .. } => {
                Ok(engine.stats().await?)
            }
            Service::Remote(remote) => Ok(remote.get("/v1/stats").await?),
        }
    }

    pub async fn act(
        &self,
        id: SagaId,
        action: Action,
        request: &ActionRequest,
    ) -> Result<ActionDone, Failed> {
        self.ready_to_act().await?;
        match self {
            Service::Local { engine, .. } | Service::Database { engine, .. } => {
                engine.act(id, action, request).await?;
                Ok(ActionDone {
                    action,
                    actor: request.actor.clone(),
                    saga: engine.saga(id).await?,
                })
            }
            Service::Remote(remote) => {
                let path = format!("/v1/sagas/{id}/actions/{}", action.name());
                Ok(remote.post(&path, request).await?)
            }
        }
    }

    pub async fn bulk(&self, action: Action, bulk: &BulkRequest) -> Result<BulkReport, Failed> {
        if !bulk.dry_run {
            self.ready_to_act().await?;
        }
        match self {
            Service::Local { engine, .. } | Service::Database { engine, .. } => {
                let filter = bulk.filter.filter().map_err(|e| Usage(e.to_string()))?;
                let sagas = engine
                    .act_on_matching(&filter, action, &bulk.request, bulk.dry_run)
                    .await?;
                Ok(BulkReport {
                    action,
                    dry_run: bulk.dry_run,
                    sagas,
                })
            }
            Service::Remote(remote) => {
                let path = format!("/v1/actions/{}", action.name());
                Ok(remote.post(&path, bulk).await?)
            }
        }
    }

    pub async fn close(self) {
        match self {
            Service::Local { engine, .. } => engine.shutdown(Duration::from_secs(5)).await,
            Service::Database {
                engine,
                store,
                joined,
            } => {
                engine.shutdown(Duration::from_secs(5)).await;
                if joined.load(std::sync::atomic::Ordering::SeqCst) {
                    // Hands the sagas acted on over to the live nodes at once.
                    if let Err(e) = sagalog::store::LogStore::leave(&*store).await {
                        eprintln!("warning: could not hand the sagas acted on back ({e}); the live nodes adopt them once this tool's lease expires");
                    }
                }
            }
            Service::Remote(_) => {}
        }
    }
}

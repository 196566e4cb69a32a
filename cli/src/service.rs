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
    /// A PostgreSQL log, read here while its service may run: reads only,
    /// since an action appended from here could race the service's own.
    Database { engine: Engine },
}

/// Why an action on a PostgreSQL log is refused from the command line.
const RACES_THE_SERVICE: &str = "on a PostgreSQL log the service may be running, and an action written from here could race its own appends; act through the service's admin server instead (--admin unix:PATH or --admin http://HOST:PORT), or with Engine::act in the service";

impl Service {
    pub async fn open_local(store: SledStore) -> Result<Service, Failed> {
        let store = Arc::new(store);
        let engine = Engine::open_admin_with_store(store.clone()).await?;
        Ok(Service::Local { engine, store })
    }

    /// Opens the PostgreSQL log at `url` for reading.
    pub async fn open_pg(url: &str, options: sagalog::PgOptions) -> Result<Service, Failed> {
        let store = sagalog::PgStore::connect(url, options).await?;
        let engine = Engine::open_admin_with_store(Arc::new(store)).await?;
        Ok(Service::Database { engine })
    }

    /// True for a running service, where actions take effect at once.
    pub fn is_live(&self) -> bool {
        matches!(self, Service::Remote(_))
    }

    /// The time to say "in 2 s" from.
    pub fn now(&self) -> UnixMillis {
        match self {
            Service::Local { engine, .. } | Service::Database { engine } => engine.now(),
            Service::Remote(_) => {
                UnixMillis::from_system_time(std::time::SystemTime::now()).unwrap_or(UnixMillis(0))
            }
        }
    }

    pub async fn list(&self, query: &ListQuery) -> Result<SagaPage, Failed> {
        match self {
            Service::Local { engine, .. } | Service::Database { engine } => {
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
            Service::Local { engine, .. } | Service::Database { engine } => {
                Ok(engine.detail(id).await?)
            }
            Service::Remote(remote) => Ok(remote.get(&format!("/v1/sagas/{id}")).await?),
        }
    }

    pub async fn manual(&self) -> Result<ManualQueue, Failed> {
        match self {
            Service::Local { engine, .. } | Service::Database { engine } => Ok(ManualQueue {
                manual_queue: engine.manual_queue().await?,
            }),
            Service::Remote(remote) => Ok(remote.get("/v1/manual").await?),
        }
    }

    pub async fn delay(&self) -> Result<DelayQueue, Failed> {
        match self {
            Service::Local { engine, .. } | Service::Database { engine } => Ok(DelayQueue {
                delay_queue: engine.delay_queue(1000).await?,
            }),
            Service::Remote(remote) => Ok(remote.get("/v1/delay?limit=1000").await?),
        }
    }

    pub async fn stats(&self) -> Result<Stats, Failed> {
        match self {
            Service::Local { engine, .. } | Service::Database { engine } => {
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
        match self {
            Service::Database { .. } => Err(Failure(RACES_THE_SERVICE.into()).into()),
            Service::Local { engine, .. } => {
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
        match self {
            Service::Database { .. } => Err(Failure(RACES_THE_SERVICE.into()).into()),
            Service::Local { engine, .. } => {
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
        if let Service::Local { engine, .. } | Service::Database { engine } = self {
            engine.shutdown(Duration::from_secs(5)).await;
        }
    }
}

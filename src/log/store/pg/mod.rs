//! [`PgStore`]: the log on PostgreSQL (feature `postgres`), through
//! tokio-postgres.
//!
//! The log is append-only rows (`sagalog_log`), one per append, holding
//! the same record frames as sled. Each saga has one row in `sagalog_saga`
//! with its encoded index entry, its status and its pending timer; an
//! idempotency key is a row of `sagalog_key`, whose primary key decides a
//! claim inside the group's transaction. The schema is versioned in
//! `sagalog_meta` and created or migrated at connect (`schema`).
//!
//! Writing connections, [`PgOptions::writers`] of them, each held by one
//! transaction at a time (a group commit is one transaction in two
//! pipelined round trips, `write`; so is a retention batch), so the
//! engine's writer keeps that many groups in flight. One more connection
//! serves reads, which tokio-postgres pipelines when several are in
//! flight. A lost connection is opened again with backoff; meanwhile
//! writes wait and [`LogStore::writable`] says the database is
//! unreachable.
//!
//! Several processes may share the log: each joins as a node
//! ([`LogStore::join`], `node`), and every transaction it writes first
//! checks, inside the transaction, that its fencing token is still live.

mod link;
mod node;
mod queue;
mod read;
mod schema;
mod verify;
mod write;

pub use read::NodeStatus;

use super::{
    Adopted, Committed, IndexQuery, KeyClaim, Lease, LogStore, QueuedAction, QueuedOutcome,
    Removal, Removed, SagaAppend, StoreError, StoreFuture, TimerScan,
};
use crate::ids::{IdempotencyKey, SagaId, SagaType};
use crate::log::verify::VerifyReport;
use link::{Link, Pool};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// How [`PgStore::connect`] reaches the database.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PgOptions {
    /// The schema sagalog's tables live in, created if missing. `None`
    /// (the default) uses the connection's `search_path` (normally
    /// `public`). Several services can share one database with one
    /// schema each.
    pub schema: Option<String>,
    /// Longest wait between two attempts to reach the database again after
    /// the connection was lost. Default 5 s.
    pub max_backoff: Duration,
    /// How long `connect` keeps trying before it gives up. Default 10 s.
    pub connect_timeout: Duration,
    /// Writing connections, and so group commits in flight at once (at
    /// least 1). A retention batch takes one of them for its transaction.
    /// Default 2.
    pub writers: usize,
    /// This process's node id on a log several processes share. `None`
    /// (the default) picks a random one per process (`host-pid-random`);
    /// a stable one (a pod's or host's name) lets a restart take back its
    /// own sagas at once. Two processes running at once must never share
    /// one: the second waits for the first's lease and then gives up.
    pub node_id: Option<String>,
    /// How long a node's lease lasts after each renewal, on the database's
    /// clock; it is renewed every quarter of it. A node that stops renewing
    /// (killed, paused, cut off) loses its sagas to the live nodes about
    /// this long after its last renewal, and starts no call from a quarter
    /// of it before then. Default 10 s.
    pub lease_ttl: Duration,
    /// Whether joining with a node id whose lease is still live fences its
    /// holder at once instead of waiting for the lease to expire. Only for
    /// a stable [`PgOptions::node_id`] whose earlier process is known to be
    /// gone (a restart in place): a holder that is in fact alive is fenced.
    /// Default false.
    pub take_over: bool,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            schema: None,
            max_backoff: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            writers: 2,
            node_id: None,
            lease_ttl: Duration::from_secs(10),
            take_over: false,
        }
    }
}

impl PgOptions {
    /// The options with sagalog's tables in schema `schema`.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// The options with `writers` writing connections (see
    /// [`PgOptions::writers`]).
    pub fn writers(mut self, writers: usize) -> Self {
        self.writers = writers;
        self
    }

    /// The options with node id `id` (see [`PgOptions::node_id`]).
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node_id = Some(id.into());
        self
    }

    /// The options that take over a node id held by a live lease (see
    /// [`PgOptions::take_over`]).
    pub fn take_over(mut self, take_over: bool) -> Self {
        self.take_over = take_over;
        self
    }

    /// The options with a lease of `ttl` (see [`PgOptions::lease_ttl`]).
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }
}

/// A log store in a PostgreSQL database. Open an engine on it with
/// `Engine::open_with_store(Arc::new(PgStore::connect(url, options).await?), ..)`.
///
/// Must be created inside the tokio runtime the engine runs on: its
/// connections are tasks of that runtime.
pub struct PgStore {
    writers: Pool,
    reader: Link,
    url: String,
    config: tokio_postgres::Config,
    options: PgOptions,
    /// This process as a node, once an engine joined through this store.
    joined: std::sync::Mutex<Option<Arc<node::Joined>>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl PgStore {
    /// The version of the tables this build reads and writes (kept in
    /// `sagalog_meta`); a database with a newer one is refused.
    pub const SCHEMA_VERSION: u32 = schema::SCHEMA_VERSION;

    /// Connects to the database at `url` (`postgres://user@host:port/db`,
    /// or a key-value connection string), creates sagalog's tables on first
    /// use and migrates older ones. Session settings in the URL's `options`
    /// (`?options=-c%20statement_timeout%3D5000`) apply to every connection,
    /// except where sagalog sets its own (`search_path` for
    /// [`PgOptions::schema`], `idle_in_transaction_session_timeout`, and the
    /// planner settings of a write). Refuses a schema newer than this build
    /// reads with [`StoreError::SchemaMismatch`], and a URL it cannot parse
    /// or a database it cannot reach, and `writers` of 0, with
    /// [`StoreError::Database`].
    pub async fn connect(url: &str, options: PgOptions) -> Result<PgStore, StoreError> {
        if options.writers == 0 {
            return Err(StoreError::Database {
                doing: "reading the options".into(),
                reason: "writers is 0: the store needs at least one writing connection".into(),
            });
        }
        if options.lease_ttl < Duration::from_millis(400) {
            return Err(StoreError::Database {
                doing: "reading the options".into(),
                reason: format!(
                    "lease_ttl is {:?}: a lease shorter than 400 ms cannot be renewed reliably",
                    options.lease_ttl
                ),
            });
        }
        let config = link::config(url, &options)?;
        let setup = Link::open(config.clone(), &options, "setup", &[]).await?;
        schema::migrate(&setup.conn().await?.client, options.schema.as_deref()).await?;
        drop(setup);
        let writers = Pool::open(&config, &options, write::STATEMENTS).await?;
        let reader = Link::open(config.clone(), &options, "reader", read::STATEMENTS).await?;
        Ok(PgStore {
            writers,
            reader,
            url: redacted(url),
            config,
            options,
            joined: std::sync::Mutex::new(None),
        })
    }

    /// This process's lease, once an engine joined the log through this
    /// store.
    pub fn lease(&self) -> Option<Arc<Lease>> {
        self.joined().map(|joined| joined.lease.clone())
    }

    /// The membership of the engine that joined last, if any: its lease
    /// fences every write; without one (an engine opened for
    /// administration) writes are checked only by the log's
    /// `(saga_id, seq)` key.
    fn joined(&self) -> Option<Arc<node::Joined>> {
        crate::sync::lock(&self.joined).clone()
    }

    /// Every node that has joined the log (live, fenced or departed), by
    /// id, and how many unfinished sagas no node owns (handed over at a
    /// shutdown and not adopted yet).
    pub async fn nodes(&self) -> Result<(Vec<NodeStatus>, u64), StoreError> {
        read::nodes(&self.reader).await
    }

    /// The URL this store connected to, without its password: for messages.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// `url` with any password replaced by `***`.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user = &url[scheme + 3..at];
            match user.find(':') {
                Some(colon) => {
                    format!("{}{}:***{}", &url[..scheme + 3], &user[..colon], &url[at..])
                }
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl LogStore for PgStore {
    fn append<'a>(&'a self, batch: &'a [&'a SagaAppend]) -> StoreFuture<'a, Committed> {
        Box::pin(async move {
            let lease = self.lease();
            write::append(&*self.writers.checkout().await?, lease.as_deref(), batch).await
        })
    }

    fn read_log(&self, saga: SagaId) -> StoreFuture<'_, Vec<(u64, Vec<u8>)>> {
        Box::pin(read::log(&self.reader, saga))
    }

    fn read_active(&self, saga: SagaId) -> StoreFuture<'_, Option<Vec<u8>>> {
        Box::pin(read::active(&self.reader, saga))
    }

    fn scan_active(
        &self,
        after: Option<SagaId>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<(SagaId, Vec<u8>)>> {
        Box::pin(read::active_page(&self.reader, after, limit))
    }

    fn scan_owned(
        &self,
        after: Option<SagaId>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<(SagaId, Vec<u8>)>> {
        match self.lease() {
            Some(lease) => Box::pin(async move {
                read::owned_page(&self.reader, after, limit, lease.node_id()).await
            }),
            None => Box::pin(read::active_page(&self.reader, after, limit)),
        }
    }

    fn scan_finished(&self) -> StoreFuture<'_, Vec<(SagaId, Vec<u8>)>> {
        Box::pin(read::finished(&self.reader))
    }

    fn key_claim<'a>(&'a self, key: &'a IdempotencyKey) -> StoreFuture<'a, Option<KeyClaim>> {
        Box::pin(read::key_claim(&self.reader, key))
    }

    fn owners<'a>(&'a self, sagas: &'a [SagaId]) -> StoreFuture<'a, Vec<(SagaId, String)>> {
        Box::pin(read::owners(&self.reader, sagas))
    }

    fn queue_action<'a>(&'a self, saga: SagaId, action: &'a [u8]) -> StoreFuture<'a, Option<u64>> {
        Box::pin(async move {
            let writer = self.writers.checkout().await?;
            queue::queue(&writer, saga, action).await.map(Some)
        })
    }

    fn queued_actions(&self, limit: usize) -> StoreFuture<'_, Vec<QueuedAction>> {
        Box::pin(async move {
            match self.lease() {
                Some(lease) => queue::pending(&self.reader, lease.node_id(), limit).await,
                None => Ok(Vec::new()),
            }
        })
    }

    fn queued_outcome(&self, id: u64) -> StoreFuture<'_, QueuedOutcome> {
        Box::pin(queue::outcome(&self.reader, id))
    }

    fn refuse_queued<'a>(&'a self, id: u64, reason: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let Some(lease) = self.lease() else {
                return Ok(());
            };
            let writer = self.writers.checkout().await?;
            queue::refuse(&writer, &lease, id, reason).await
        })
    }

    fn scan_timers<'a>(
        &'a self,
        limit: usize,
        skip: &'a HashSet<SagaId>,
    ) -> StoreFuture<'a, TimerScan> {
        let lease = self.lease();
        Box::pin(async move {
            let owner = lease.as_deref().map(Lease::node_id);
            read::timers(&self.reader, limit, skip, owner).await
        })
    }

    fn remove_finished<'a>(&'a self, sagas: &'a [Removal]) -> StoreFuture<'a, Removed> {
        Box::pin(async move {
            let lease = self.lease();
            write::remove_finished(&*self.writers.checkout().await?, lease.as_deref(), sagas).await
        })
    }

    fn join<'a>(&'a self, types: &'a [SagaType]) -> StoreFuture<'a, Option<Arc<Lease>>> {
        Box::pin(async move {
            let busy = || {
                StoreError::Database {
                doing: "joining the log as a node".into(),
                reason: "an engine on this store holds its lease still: shut it down first, or open one store per engine".into(),
            }
            };
            if self.lease().is_some_and(|lease| !lease.is_lost()) {
                return Err(busy());
            }
            let link = self.writers.checkout().await?;
            let joined = Arc::new(node::join(&link, &self.config, &self.options, types).await?);
            let lease = joined.lease.clone();
            let mut slot = crate::sync::lock(&self.joined);
            if slot.as_ref().is_some_and(|j| !j.lease.is_lost()) {
                // Another engine joined through this store meanwhile.
                return Err(busy());
            }
            *slot = Some(joined);
            Ok(Some(lease))
        })
    }

    fn adopt(&self, limit: usize) -> StoreFuture<'_, Vec<Adopted>> {
        Box::pin(async move {
            let Some(joined) = self.joined() else {
                return Ok(Vec::new());
            };
            node::adopt(&*self.writers.checkout().await?, &joined, limit).await
        })
    }

    fn take(&self, saga: SagaId) -> StoreFuture<'_, Option<String>> {
        Box::pin(async move {
            match self.joined() {
                Some(joined) => node::take(&*self.writers.checkout().await?, &joined, saga).await,
                None => Ok(None),
            }
        })
    }

    fn hold_singleton<'a>(&'a self, name: &'a str, ttl: Duration) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            match self.joined() {
                Some(joined) => {
                    let conn = self.writers.checkout().await?;
                    node::hold_singleton(&conn, &joined, name, ttl).await
                }
                None => Ok(true),
            }
        })
    }

    fn leave(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            match self.joined() {
                Some(joined) => node::leave(&*self.writers.checkout().await?, &joined).await,
                None => Ok(()),
            }
        })
    }

    fn verify(&self) -> StoreFuture<'_, VerifyReport> {
        Box::pin(verify::verify(&self.reader))
    }

    fn writable(&self) -> Result<(), StoreError> {
        self.writers.reachable()
    }

    fn groups_in_flight(&self) -> usize {
        self.writers.size()
    }

    #[allow(clippy::type_complexity)] // the trait's signature
    fn scan_matching<'a>(
        &'a self,
        query: &'a IndexQuery,
    ) -> Option<StoreFuture<'a, Vec<(SagaId, Vec<u8>)>>> {
        Some(Box::pin(read::matching(&self.reader, query)))
    }
}

/// A saga id as the database's `uuid`.
fn uuid(id: SagaId) -> uuid::Uuid {
    uuid::Uuid::from_bytes(id.to_bytes())
}

/// A `uuid` from the database as a saga id.
fn saga_id(id: uuid::Uuid) -> SagaId {
    SagaId::from_bytes(*id.as_bytes())
}

/// A database error as a store error, with what was being done.
fn db_error(doing: &str, e: tokio_postgres::Error) -> StoreError {
    StoreError::Database {
        doing: doing.to_string(),
        reason: link::describe(&e),
    }
}

/// A `u64` stored in a `bigint` column (bit for bit).
fn to_i64(value: u64) -> i64 {
    value as i64
}

/// A `bigint` column holding a `u64` (bit for bit).
fn to_u64(value: i64) -> u64 {
    value as u64
}

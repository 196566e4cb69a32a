//! One connection to the database that opens itself again when it is lost,
//! with its statements prepared once per connection; and the pool of
//! writing links, each held by one transaction at a time.

use super::PgOptions;
use crate::log::store::StoreError;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, Config, NoTls, Statement};

/// A connected client with the statements of its link prepared.
pub(super) struct Conn {
    pub(super) client: Client,
    prepared: HashMap<&'static str, Statement>,
}

impl Conn {
    /// The prepared form of `sql`, one of the link's statements.
    pub(super) fn statement(&self, sql: &'static str) -> Result<&Statement, StoreError> {
        self.prepared.get(sql).ok_or_else(|| {
            StoreError::Backend(format!("statement not prepared on this connection: {sql}"))
        })
    }
}

/// One connection, opened again on demand after it is lost.
pub(super) struct Link {
    config: Config,
    name: &'static str,
    statements: &'static [&'static str],
    current: tokio::sync::Mutex<Option<Arc<Conn>>>,
    /// Why the database is unreachable, while it is.
    down: Mutex<Option<String>>,
    max_backoff: Duration,
    /// The pool's count of links that are down, for a writing link: it
    /// drives `sagalog_log_writable`.
    writers_down: Option<Arc<AtomicUsize>>,
}

/// The connection configuration of `url`, with `options` applied after
/// the URL's own `options` (session settings the user chose).
pub(super) fn config(url: &str, options: &PgOptions) -> Result<Config, StoreError> {
    let mut config: Config = url.parse().map_err(|e| StoreError::Database {
        doing: "reading the database URL".into(),
        reason: format!("{e} (expected postgres://USER@HOST:PORT/DB)"),
    })?;
    // A node stopped inside a transaction would hold its lease row, and
    // the fence that waits for it, until the server ends the session.
    let idle = (options.lease_ttl / 2).as_millis().max(100);
    // The URL's own `options` come first, so that ours win where they meet.
    let mut settings = config
        .get_options()
        .map(|own| format!("{own} "))
        .unwrap_or_default();
    settings.push_str(&format!("-c idle_in_transaction_session_timeout={idle}"));
    if let Some(schema) = &options.schema {
        check_identifier(schema)?;
        settings.push_str(&format!(" -c search_path={schema}"));
    }
    config.options(settings);
    config.application_name("sagalog");
    config.connect_timeout(options.connect_timeout);
    Ok(config)
}

/// A schema name we put in SQL text: lowercase letters, digits and `_`,
/// not starting with a digit, at most 63 bytes.
pub(super) fn check_identifier(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    match ok {
        true => Ok(()),
        false => Err(StoreError::Database {
            doing: "checking the schema name".into(),
            reason: format!("'{name}' is not a plain schema name: use lowercase letters, digits and '_', starting with a letter"),
        }),
    }
}

/// Whether SQLSTATE `code` means the server ended the session (a lost
/// connection, an administrator's termination, a shutdown or restart).
pub(super) fn ends_session(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
}

/// Whether `e` means the connection is gone, so a new one may succeed.
pub(super) fn connection_lost(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        Some(db) => ends_session(db.code().code()),
        None => e.is_closed() || std::error::Error::source(e).is_some(),
    }
}

/// What went wrong, with the server's own message when it sent one.
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

impl Link {
    /// Opens the link, retrying for `options.connect_timeout`.
    pub(super) async fn open(
        config: Config,
        options: &PgOptions,
        name: &'static str,
        statements: &'static [&'static str],
    ) -> Result<Link, StoreError> {
        Link::open_counted(config, options, name, statements, None).await
    }

    async fn open_counted(
        config: Config,
        options: &PgOptions,
        name: &'static str,
        statements: &'static [&'static str],
        writers_down: Option<Arc<AtomicUsize>>,
    ) -> Result<Link, StoreError> {
        let link = Link {
            config,
            name,
            statements,
            current: tokio::sync::Mutex::new(None),
            down: Mutex::new(None),
            max_backoff: options.max_backoff,
            writers_down,
        };
        let deadline = Instant::now() + options.connect_timeout;
        let mut wait = Duration::from_millis(50);
        loop {
            match link.conn().await {
                Ok(_) => return Ok(link),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(link.max_backoff);
                }
            }
        }
    }

    /// The connection, opened again first if it was lost.
    pub(super) async fn conn(&self) -> Result<Arc<Conn>, StoreError> {
        let mut current = self.current.lock().await;
        if let Some(conn) = current.as_ref() {
            if !conn.client.is_closed() {
                return Ok(conn.clone());
            }
        }
        *current = None;
        match self.connect().await {
            Ok(conn) => {
                let conn = Arc::new(conn);
                *current = Some(conn.clone());
                self.reached();
                Ok(conn)
            }
            Err(e) => {
                if self.set_down(e.to_string()) {
                    tracing::error!(link = self.name, error = %e, "the database is unreachable; retrying");
                }
                Err(e)
            }
        }
    }

    /// The connection, waiting with backoff (up to the configured longest
    /// wait between attempts) for as long as the database is unreachable.
    pub(super) async fn conn_waiting(&self) -> Arc<Conn> {
        let mut wait = Duration::from_millis(50);
        loop {
            if let Ok(conn) = self.conn().await {
                return conn;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(self.max_backoff);
        }
    }

    /// Marks the database unreachable after a write lost its connection.
    pub(super) fn lost(&self, why: String) {
        self.set_down(why);
    }

    /// Records why the link is down; true if it was up until now.
    fn set_down(&self, why: String) -> bool {
        let was_up = crate::sync::lock(&self.down).replace(why).is_none();
        if let (true, Some(count)) = (was_up, &self.writers_down) {
            count.fetch_add(1, Ordering::SeqCst);
            metrics::gauge!(crate::metrics::LOG_WRITABLE).set(0.0);
        }
        was_up
    }

    /// A write went through: the database is reachable.
    pub(super) fn reached(&self) {
        if crate::sync::lock(&self.down).take().is_some() {
            tracing::info!(link = self.name, "the database is reachable again");
            if let Some(count) = &self.writers_down {
                if count.fetch_sub(1, Ordering::SeqCst) == 1 {
                    metrics::gauge!(crate::metrics::LOG_WRITABLE).set(1.0);
                }
            }
        }
    }

    /// `Ok` unless the last attempt to reach the database failed.
    pub(super) fn reachable(&self) -> Result<(), StoreError> {
        match crate::sync::lock(&self.down).as_ref() {
            None => Ok(()),
            Some(reason) => Err(StoreError::Unreachable {
                reason: reason.clone(),
            }),
        }
    }

    async fn connect(&self) -> Result<Conn, StoreError> {
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| super::db_error("connecting", e))?;
        let name = self.name;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(link = name, error = %describe(&e), "database connection ended");
            }
        });
        let mut prepared = HashMap::with_capacity(self.statements.len());
        for sql in self.statements {
            let statement = client
                .prepare(sql)
                .await
                .map_err(|e| super::db_error("preparing a statement", e))?;
            prepared.insert(*sql, statement);
        }
        Ok(Conn { client, prepared })
    }
}

/// The writing links: each transaction checks one out for itself, so two
/// transactions never share a connection.
pub(super) struct Pool {
    links: Vec<Link>,
    free: Mutex<Vec<usize>>,
    permits: tokio::sync::Semaphore,
    /// How many links are down.
    down: Arc<AtomicUsize>,
}

/// A link checked out of the [`Pool`], returned when dropped.
pub(super) struct Checkout<'a> {
    pool: &'a Pool,
    at: usize,
    // Dropped after `drop` has returned the link to the free list.
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl std::ops::Deref for Checkout<'_> {
    type Target = Link;
    fn deref(&self) -> &Link {
        &self.pool.links[self.at]
    }
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        crate::sync::lock(&self.pool.free).push(self.at);
    }
}

impl Pool {
    /// Opens `options.writers` (at least one) writing links.
    pub(super) async fn open(
        config: &Config,
        options: &PgOptions,
        statements: &'static [&'static str],
    ) -> Result<Pool, StoreError> {
        let down = Arc::new(AtomicUsize::new(0));
        let mut links = Vec::with_capacity(options.writers);
        for _ in 0..options.writers.max(1) {
            let counted = Some(down.clone());
            links.push(
                Link::open_counted(config.clone(), options, "writer", statements, counted).await?,
            );
        }
        Ok(Pool {
            free: Mutex::new((0..links.len()).rev().collect()),
            permits: tokio::sync::Semaphore::new(links.len()),
            links,
            down,
        })
    }

    /// How many links the pool holds.
    pub(super) fn size(&self) -> usize {
        self.links.len()
    }

    /// A link no other transaction holds, waiting for one to come back
    /// (first come, first served).
    pub(super) async fn checkout(&self) -> Result<Checkout<'_>, StoreError> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Backend("the writer pool is closed".into()))?;
        let at = crate::sync::lock(&self.free)
            .pop()
            .ok_or_else(|| StoreError::Backend("a writer permit without a free link".into()))?;
        Ok(Checkout {
            pool: self,
            at,
            _permit: permit,
        })
    }

    /// `Ok` unless some writing link's last attempt to reach the database
    /// failed; the error is that link's.
    pub(super) fn reachable(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) == 0 {
            return Ok(());
        }
        self.links.iter().try_for_each(Link::reachable)
    }
}

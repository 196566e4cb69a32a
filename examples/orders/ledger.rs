//! The participants' own books: inventory, payment and shipping, as named
//! counters (`product/widget/available`, `account/ada/held`, ...). They are
//! kept in a sled database beside the saga log, or, when the log is in
//! PostgreSQL, in tables of the same database.
//!
//! Every call is first written to an append-only call log (so a checker can
//! prove no participant was called without a durable intent in the saga
//! log), then its [`Effect`] is applied in one transaction together with an
//! effect marker keyed by the call's idempotency key. A repeated call finds
//! the marker and changes nothing: effects happen at most once however
//! often the engine calls. On PostgreSQL the marker is claimed by a primary
//! key inside the transaction (`INSERT ... ON CONFLICT DO NOTHING`), the SQL
//! form of the barrier in docs/guide.md.

use crate::pg_pool::Pool;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub initial: i64,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub initial: i64,
    pub balance: i64,
    pub held: i64,
    pub paid: i64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipments {
    pub created: i64,
    pub cancelled: i64,
}

/// One participant call, as the participant saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    pub saga_id: String,
    pub step: String,
    pub phase: String,
    pub attempt: u32,
}

/// The books, as printed in the `{"ledger": ...}` line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Books {
    pub products: BTreeMap<String, Product>,
    pub accounts: BTreeMap<String, Account>,
    pub shipments: Shipments,
}

impl Books {
    /// The books from their counters.
    fn from_counters(counters: &BTreeMap<String, i64>) -> Books {
        let mut books = Books::default();
        for (key, &value) in counters {
            let parts: Vec<&str> = key.split('/').collect();
            match parts.as_slice() {
                ["product", name, field] => {
                    let p = books.products.entry(name.to_string()).or_default();
                    match *field {
                        "initial" => p.initial = value,
                        "available" => p.available = value,
                        "reserved" => p.reserved = value,
                        "sold" => p.sold = value,
                        _ => {}
                    }
                }
                ["account", name, field] => {
                    let a = books.accounts.entry(name.to_string()).or_default();
                    match *field {
                        "initial" => a.initial = value,
                        "balance" => a.balance = value,
                        "held" => a.held = value,
                        "paid" => a.paid = value,
                        _ => {}
                    }
                }
                ["shipments", "created"] => books.shipments.created = value,
                ["shipments", "cancelled"] => books.shipments.cancelled = value,
                _ => {}
            }
        }
        books
    }

    /// `Ok` when every account and product adds up; else the first that
    /// does not.
    pub fn balance(&self) -> Result<(), String> {
        for (name, a) in &self.accounts {
            if a.initial != a.balance + a.held + a.paid {
                return Err(format!(
                    "account {name}: initial {} != balance {} + held {} + paid {}",
                    a.initial, a.balance, a.held, a.paid
                ));
            }
        }
        for (name, p) in &self.products {
            if p.initial != p.available + p.reserved + p.sold {
                return Err(format!(
                    "product {name}: initial {} != available {} + reserved {} + sold {}",
                    p.initial, p.available, p.reserved, p.sold
                ));
            }
        }
        Ok(())
    }
}

/// Why a business operation was refused.
pub enum Refusal {
    /// A business rule says no (no stock, no funds, bad address).
    Rule(String),
    /// The database failed.
    Storage(String),
}

/// The words of a refusal, given the counter's value.
type Refuse = Box<dyn Fn(i64) -> String + Send + Sync>;

/// What one call does to the counters, applied at most once per key.
pub struct Effect {
    /// Refuse (and change nothing) unless this counter holds at least this
    /// much; the refusal's words, given the counter's value.
    need: Option<(String, i64, Refuse)>,
    /// Apply only if the effect with this key was applied, else answer
    /// with the second string: a compensation undoes only what happened.
    only_after: Option<(String, String)>,
    /// Amounts added to counters.
    adds: Vec<(String, i64)>,
    /// The call's result when it applies.
    result: String,
}

impl Effect {
    /// An effect that answers `result` and changes nothing yet.
    pub fn new(result: impl Into<String>) -> Effect {
        Effect {
            need: None,
            only_after: None,
            adds: Vec::new(),
            result: result.into(),
        }
    }

    /// Refuses unless `key` holds at least `at_least`.
    pub fn need(
        mut self,
        key: String,
        at_least: i64,
        refusal: impl Fn(i64) -> String + Send + Sync + 'static,
    ) -> Effect {
        self.need = Some((key, at_least, Box::new(refusal)));
        self
    }

    /// Applies only after the effect `key`; otherwise answers `otherwise`.
    pub fn only_after(mut self, key: String, otherwise: impl Into<String>) -> Effect {
        self.only_after = Some((key, otherwise.into()));
        self
    }

    /// Adds `delta` to counter `key`.
    pub fn add(mut self, key: String, delta: i64) -> Effect {
        self.adds.push((key, delta));
        self
    }
}

#[derive(Clone)]
pub enum Ledger {
    Sled(sled::Db),
    Pg { pool: Pool, schema: String },
}

type Tx<'a> = &'a sled::transaction::TransactionalTree;
type TxResult<T> = sled::transaction::ConflictableTransactionResult<T, String>;

fn read(tx: Tx<'_>, key: &str) -> TxResult<i64> {
    Ok(tx
        .get(format!("counter/{key}"))?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map_or(0, i64::from_be_bytes))
}

fn add(tx: Tx<'_>, key: &str, delta: i64) -> TxResult<()> {
    let value = read(tx, key)? + delta;
    tx.insert(format!("counter/{key}").as_bytes(), &value.to_be_bytes())?;
    Ok(())
}

fn storage(e: impl std::fmt::Display) -> Refusal {
    Refusal::Storage(e.to_string())
}

impl Ledger {
    /// The books in a sled database at `path`.
    pub fn open(path: &Path) -> Result<Ledger, String> {
        // sled 0.34 cannot reopen past a snapshot torn by a kill.
        sagalog::discard_torn_sled_snapshots(path)
            .map_err(|e| format!("preparing the ledger at {}: {e}", path.display()))?;
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(None)
            .cache_capacity(8 * 1024 * 1024)
            .open()
            .map_err(|e| format!("opening the ledger at {}: {e}", path.display()))?;
        Ok(Ledger::Sled(db))
    }

    /// The books in schema `schema` of the PostgreSQL at `url`, whose
    /// tables are made if missing.
    pub async fn open_pg(url: &str, schema: &str) -> Result<Ledger, String> {
        if schema.is_empty()
            || !schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(format!(
                "the ledger's schema {schema:?} should be lowercase letters, digits and _"
            ));
        }
        let pool = Pool::new(url, 8);
        let conn = pool.get().await?;
        // Nodes that start together make the tables once: CREATE ... IF
        // NOT EXISTS is not safe against a concurrent create.
        conn.batch_execute(&format!(
            "BEGIN;
             SELECT pg_advisory_xact_lock(hashtext('{schema}'));
             CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.counter (key text PRIMARY KEY, value bigint NOT NULL);
             CREATE TABLE IF NOT EXISTS {schema}.effect (key text PRIMARY KEY, result text);
             CREATE TABLE IF NOT EXISTS {schema}.call (id bigserial PRIMARY KEY, record text NOT NULL);
             COMMIT;"
        ))
        .await
        .map_err(|e| format!("making the ledger's tables in {schema}: {e}"))?;
        drop(conn);
        Ok(Ledger::Pg {
            pool,
            schema: schema.to_string(),
        })
    }

    /// Stocks the shop once; later calls change nothing.
    pub async fn initialize(
        &self,
        products: &[(&str, i64)],
        accounts: &[(&str, i64)],
    ) -> Result<(), String> {
        let mut counters = Vec::new();
        for (name, stock) in products {
            counters.push((format!("product/{name}/initial"), *stock));
            counters.push((format!("product/{name}/available"), *stock));
        }
        for (name, money) in accounts {
            counters.push((format!("account/{name}/initial"), *money));
            counters.push((format!("account/{name}/balance"), *money));
        }
        match self {
            Ledger::Sled(db) => {
                db.transaction(|tx| {
                    if tx.get("init")?.is_some() {
                        return Ok(());
                    }
                    for (key, value) in &counters {
                        add(tx, key, *value)?;
                    }
                    tx.insert("init", &b"1"[..])?;
                    Ok(())
                })
                .map_err(|e: sled::transaction::TransactionError<String>| e.to_string())?;
                db.flush().map_err(|e| e.to_string())?;
            }
            Ledger::Pg { pool, schema } => {
                let mut conn = pool.get().await?;
                let tx = conn.transaction().await.map_err(|e| e.to_string())?;
                let first = tx
                    .execute(
                        &format!("INSERT INTO {schema}.effect VALUES ('init', '1') ON CONFLICT DO NOTHING"),
                        &[],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                if first == 1 {
                    for (key, value) in &counters {
                        tx.execute(
                            &format!("INSERT INTO {schema}.counter VALUES ($1, $2)"),
                            &[key, value],
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    }
                }
                tx.commit().await.map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// Appends a call to the call log, durably, before any effect.
    pub async fn record_call(&self, call: &CallRecord) -> Result<(), Refusal> {
        let record = serde_json::to_string(call).map_err(storage)?;
        match self {
            Ledger::Sled(db) => {
                let id = db.generate_id().map_err(storage)?;
                let mut key = b"call/".to_vec();
                key.extend_from_slice(&id.to_be_bytes());
                db.insert(key, record.as_bytes()).map_err(storage)?;
                db.flush().map(|_| ()).map_err(storage)
            }
            Ledger::Pg { pool, schema } => {
                let conn = pool.get().await.map_err(Refusal::Storage)?;
                conn.execute(
                    &format!("INSERT INTO {schema}.call (record) VALUES ($1)"),
                    &[&record],
                )
                .await
                .map(|_| ())
                .map_err(storage)
            }
        }
    }

    /// Applies `effect` once per `key`: a second call with the same key
    /// returns the first call's stored result and changes nothing. A
    /// refused effect changes nothing and leaves no marker: the refusal is
    /// permanent, and a repeat is refused again by the same rule.
    pub async fn apply_once(&self, key: &str, effect: Effect) -> Result<String, Refusal> {
        match self {
            Ledger::Sled(db) => {
                let marker = format!("effect/{key}");
                let outcome = db
                    .transaction(|tx| {
                        if let Some(done) = tx.get(&marker)? {
                            return Ok(Ok(String::from_utf8_lossy(&done).into_owned()));
                        }
                        let result = match &effect.only_after {
                            Some((before, otherwise))
                                if tx.get(format!("effect/{before}"))?.is_none() =>
                            {
                                otherwise.clone()
                            }
                            _ => {
                                if let Some((need, at_least, refusal)) = &effect.need {
                                    let value = read(tx, need)?;
                                    if value < *at_least {
                                        return Ok(Err(refusal(value)));
                                    }
                                }
                                for (counter, delta) in &effect.adds {
                                    add(tx, counter, *delta)?;
                                }
                                effect.result.clone()
                            }
                        };
                        tx.insert(marker.as_bytes(), result.as_bytes())?;
                        Ok(Ok(result))
                    })
                    .map_err(|e: sled::transaction::TransactionError<String>| storage(e))?;
                db.flush().map_err(storage)?;
                outcome.map_err(Refusal::Rule)
            }
            Ledger::Pg { pool, schema } => {
                let mut conn = pool.get().await.map_err(Refusal::Storage)?;
                apply_once_pg(&mut conn, schema, key, &effect).await
            }
        }
    }

    /// Reads the books.
    pub async fn books(&self) -> Result<Books, String> {
        let mut counters = BTreeMap::new();
        match self {
            Ledger::Sled(db) => {
                for item in db.scan_prefix("counter/") {
                    let (k, v) = item.map_err(|e| e.to_string())?;
                    let name = String::from_utf8_lossy(&k["counter/".len()..]).into_owned();
                    let value = <[u8; 8]>::try_from(v.as_ref())
                        .map_err(|_| format!("counter {name} is not 8 bytes"))?;
                    counters.insert(name, i64::from_be_bytes(value));
                }
            }
            Ledger::Pg { pool, schema } => {
                let conn = pool.get().await?;
                for row in conn
                    .query(&format!("SELECT key, value FROM {schema}.counter"), &[])
                    .await
                    .map_err(|e| e.to_string())?
                {
                    counters.insert(row.get(0), row.get(1));
                }
            }
        }
        Ok(Books::from_counters(&counters))
    }
}

/// The effect in one PostgreSQL transaction: claim the marker by its
/// primary key (0 rows: a repeat, answered with the stored result), apply
/// the additions in key order (so that two transactions lock shared
/// counters in the same order), check the need on the value the row held
/// before, and store the result on the marker.
async fn apply_once_pg(
    conn: &mut tokio_postgres::Client,
    schema: &str,
    key: &str,
    effect: &Effect,
) -> Result<String, Refusal> {
    let tx = conn.transaction().await.map_err(storage)?;
    let claimed = tx
        .execute(
            &format!("INSERT INTO {schema}.effect (key) VALUES ($1) ON CONFLICT DO NOTHING"),
            &[&key],
        )
        .await
        .map_err(storage)?;
    if claimed == 0 {
        let row = tx
            .query_one(
                &format!("SELECT result FROM {schema}.effect WHERE key = $1"),
                &[&key],
            )
            .await
            .map_err(storage)?;
        let result: Option<String> = row.get(0);
        return Ok(result.unwrap_or_default());
    }
    let mut result = effect.result.clone();
    let applies = match &effect.only_after {
        Some((before, otherwise)) => {
            let found = tx
                .query_opt(
                    &format!("SELECT 1 FROM {schema}.effect WHERE key = $1"),
                    &[before],
                )
                .await
                .map_err(storage)?;
            if found.is_none() {
                result = otherwise.clone();
            }
            found.is_some()
        }
        None => true,
    };
    if applies {
        let mut adds: BTreeMap<&str, i64> = BTreeMap::new();
        for (counter, delta) in &effect.adds {
            *adds.entry(counter.as_str()).or_default() += delta;
        }
        if let Some((need, _, _)) = &effect.need {
            adds.entry(need.as_str()).or_default();
        }
        let upsert = format!(
            "INSERT INTO {schema}.counter AS c VALUES ($1, $2) ON CONFLICT (key) \
             DO UPDATE SET value = c.value + EXCLUDED.value RETURNING value"
        );
        for (counter, delta) in adds {
            let after: i64 = tx
                .query_one(&upsert, &[&counter, &delta])
                .await
                .map_err(storage)?
                .get(0);
            if let Some((need, at_least, refusal)) = &effect.need {
                if need == counter && after - delta < *at_least {
                    // Dropping the transaction rolls it back, the claim with it.
                    return Err(Refusal::Rule(refusal(after - delta)));
                }
            }
        }
    }
    tx.execute(
        &format!("UPDATE {schema}.effect SET result = $2 WHERE key = $1"),
        &[&key, &result],
    )
    .await
    .map_err(storage)?;
    tx.commit().await.map_err(storage)?;
    Ok(result)
}

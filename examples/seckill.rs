//! A flash-sale ("seckill") payment as a TCC transaction: reserve
//! funds and stock (tried in parallel), then create the order; confirm all
//! three or cancel every branch that was tried. Each participant keeps its
//! state in its own sled tree and is protected by a [`Barrier`]: repeated
//! calls are no-ops, a cancel without its try is an empty rollback, and a try
//! after its cancel is rejected. With `--store postgres://…` the log and the
//! participants' state are in PostgreSQL, guarded by the barrier's SQL form.
//!
//! ```text
//! cargo run --release --example seckill                      # readable table
//! cargo run --release --example seckill -- --json            # one JSON object per line
//! cargo run --release --example seckill -- --crash-after 7   # abort after the 7th durable append
//! cargo run --release --example seckill                      # ...then rerun: recovery finishes it
//! ```
//!
//! Scenarios: a successful purchase; a purchase with too little balance
//! (rolled back: the stock reserved in parallel is released); a duplicated
//! confirm (a redelivered message, absorbed by the barrier); a cancel that
//! arrives before its try (empty rollback) and the late try (rejected); a
//! crash between try and confirm (the engine stops with the confirm in
//! flight, reopens, and recovery confirms); a bundle (a saga whose two
//! steps are sub-sagas: a phone and a case, each its own TCC purchase).
//! The last line is the ledger:
//! money and stock are conserved, and nothing stays frozen or reserved.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

#[path = "support/bulk.rs"]
mod bulk;
#[path = "support/crash.rs"]
mod crash;
#[path = "support/pg_pool.rs"]
mod pg_pool;

use clap::Parser;
use crash::{CrashFlags, CrashPlan};
use pg_pool::Pool;
use sagalog::barrier::{Barrier, BarrierError, BarrierPhase, Guarded};
use sagalog::{
    Engine, Registry, RetryPolicy, SagaDefinition, SagaId, SagaRef, SagaStatus, StartOptions,
    StepContext, StepError, StepOptions,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Parser, Clone)]
#[command(about = "Run the sagalog flash-sale (TCC) scenarios against a durable log")]
struct Args {
    /// Directory for the saga log and the participants' store.
    #[arg(long, default_value = "./sagalog-seckill")]
    data_dir: PathBuf,
    /// Keep the saga log and the participants' store in this PostgreSQL
    /// database instead of DATA_DIR (postgres://USER@HOST:PORT/DB).
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// With --store, the schema for sagalog's tables (default: the
    /// connection's search_path); the shop's go in NAME_ledger (default:
    /// seckill_ledger).
    #[arg(long, value_name = "NAME", requires = "store")]
    schema: Option<String>,
    /// With --store, this process's node id on the shared log. A process
    /// started again with the same id takes its place at once (it must be
    /// gone: give processes that run together different ids).
    #[arg(long, value_name = "ID", default_value = "seckill", requires = "store")]
    node_id: String,
    #[command(flatten)]
    crash: CrashFlags,
    /// Print one JSON object per scenario, then the ledger, instead of a table.
    #[arg(long)]
    json: bool,
    /// Also run this many generated purchases (some short of money or stock):
    /// the crash tests' workload.
    #[arg(long, default_value_t = 0)]
    bulk: usize,
    /// How many generated purchases run at once.
    #[arg(long, default_value_t = 32)]
    bulk_concurrency: usize,
}

/// One purchase: the transaction's input.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Purchase {
    order_id: String,
    user: String,
    item: String,
    qty: i64,
    price: i64,
}

impl Purchase {
    fn amount(&self) -> i64 {
        self.qty * self.price
    }
}

/// The three participants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Branch {
    Funds,
    Stock,
    Order,
}

impl Branch {
    fn name(self) -> &'static str {
        match self {
            Branch::Funds => "funds",
            Branch::Stock => "stock",
            Branch::Order => "order",
        }
    }
}

/// Why a participant refused.
enum Refusal {
    /// A business rule says no: permanent.
    Rule(String),
    /// The store failed: the call may or may not have taken effect.
    Storage(String),
}

type Tx = sled::transaction::TransactionalTree;

fn read(tx: &Tx, key: &str) -> Result<i64, Refusal> {
    let value = tx.get(key).map_err(|e| Refusal::Storage(e.to_string()))?;
    Ok(value
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map_or(0, i64::from_be_bytes))
}

fn add(tx: &Tx, key: &str, delta: i64) -> Result<(), Refusal> {
    let value = read(tx, key)? + delta;
    tx.insert(key, &value.to_be_bytes())
        .map_err(|e| Refusal::Storage(e.to_string()))?;
    Ok(())
}

/// The words of a refusal, given the counter's value.
type Refuse = Box<dyn Fn(i64) -> String + Send + Sync>;

/// One business change of one participant: refused unless a counter holds
/// enough, then amounts added to counters.
struct Change {
    need: Option<(String, i64, Refuse)>,
    adds: Vec<(String, i64)>,
}

impl Change {
    fn new() -> Change {
        Change {
            need: None,
            adds: Vec::new(),
        }
    }

    fn need(
        mut self,
        key: String,
        at_least: i64,
        refusal: impl Fn(i64) -> String + Send + Sync + 'static,
    ) -> Change {
        self.need = Some((key, at_least, Box::new(refusal)));
        self
    }

    fn add(mut self, key: impl Into<String>, delta: i64) -> Change {
        self.adds.push((key.into(), delta));
        self
    }

    /// The change inside a sled transaction of the participant's tree.
    fn apply_sled(&self, tx: &Tx) -> Result<(), Refusal> {
        if let Some((key, at_least, refusal)) = &self.need {
            let value = read(tx, key)?;
            if value < *at_least {
                return Err(Refusal::Rule(refusal(value)));
            }
        }
        for (key, delta) in &self.adds {
            add(tx, key, *delta)?;
        }
        Ok(())
    }

    /// The change inside a PostgreSQL transaction, the participant's
    /// counters under `tree/`: additions in key order (two transactions
    /// lock shared counters in the same order), the need checked on the
    /// value the row held before.
    async fn apply_pg(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        schema: &str,
        tree: &str,
    ) -> Result<(), Refusal> {
        let mut adds: std::collections::BTreeMap<&str, i64> = Default::default();
        for (key, delta) in &self.adds {
            *adds.entry(key.as_str()).or_default() += delta;
        }
        if let Some((key, _, _)) = &self.need {
            adds.entry(key.as_str()).or_default();
        }
        let upsert = format!(
            "INSERT INTO {schema}.counter AS c VALUES ($1, $2) ON CONFLICT (key) \
             DO UPDATE SET value = c.value + EXCLUDED.value RETURNING value"
        );
        for (key, delta) in adds {
            let row = tx
                .query_one(&upsert, &[&format!("{tree}/{key}"), &delta])
                .await
                .map_err(|e| Refusal::Storage(e.to_string()))?;
            let before = row.get::<_, i64>(0) - delta;
            if let Some((need, at_least, refusal)) = &self.need {
                if need == key && before < *at_least {
                    return Err(Refusal::Rule(refusal(before)));
                }
            }
        }
        Ok(())
    }
}

/// What try, confirm and cancel of each participant do.
fn business(branch: Branch, phase: BarrierPhase, p: &Purchase) -> Change {
    let (user, item, amount, qty) = (p.user.clone(), p.item.clone(), p.amount(), p.qty);
    match (branch, phase) {
        (Branch::Funds, BarrierPhase::Try) => Change::new()
            .need(format!("balance/{user}"), amount, move |balance| {
                format!("insufficient balance: {user} has {balance}, needs {amount}")
            })
            .add(format!("balance/{}", p.user), -amount)
            .add(format!("frozen/{}", p.user), amount),
        (Branch::Funds, BarrierPhase::Confirm) => Change::new()
            .add(format!("frozen/{user}"), -amount)
            .add("merchant", amount),
        (Branch::Funds, BarrierPhase::Cancel) => Change::new()
            .add(format!("frozen/{user}"), -amount)
            .add(format!("balance/{user}"), amount),
        (Branch::Stock, BarrierPhase::Try) => Change::new()
            .need(format!("available/{item}"), qty, move |available| {
                format!("{item} sold out ({available} left)")
            })
            .add(format!("available/{}", p.item), -qty)
            .add(format!("reserved/{}", p.item), qty),
        (Branch::Stock, BarrierPhase::Confirm) => Change::new()
            .add(format!("reserved/{item}"), -qty)
            .add(format!("sold/{item}"), qty),
        (Branch::Stock, BarrierPhase::Cancel) => Change::new()
            .add(format!("reserved/{item}"), -qty)
            .add(format!("available/{item}"), qty),
        (Branch::Order, BarrierPhase::Try) => Change::new().add("orders/pending", 1),
        (Branch::Order, BarrierPhase::Confirm) => Change::new()
            .add("orders/pending", -1)
            .add("orders/paid", 1),
        (Branch::Order, BarrierPhase::Cancel) => Change::new()
            .add("orders/pending", -1)
            .add("orders/cancelled", 1),
    }
}

/// Where the participants keep their state.
#[derive(Clone)]
enum Books {
    /// One sled database beside the saga log: a tree (with its barrier)
    /// per participant, and the call log.
    Sled {
        db: sled::Db,
        trees: [(sled::Tree, Barrier); 3],
        calls: sled::Tree,
    },
    /// Tables beside the saga log in PostgreSQL: the counters (each
    /// participant's under its tree's name), the barrier, and the call log.
    Pg { pool: Pool, schema: String },
}

/// The participants' store and a call log written before every call's
/// effect, so a checker can match each call to an intent record.
#[derive(Clone)]
struct Shop {
    books: Books,
    /// Scenario 5: the next funds confirm of user "carol" hangs (the process
    /// "crashes" between try and confirm).
    hang_next_confirm: Arc<AtomicBool>,
    hung: Arc<Notify>,
}

fn tree_name(branch: Branch) -> &'static str {
    match branch {
        Branch::Funds => "funds",
        Branch::Stock => "stock",
        Branch::Order => "orders",
    }
}

fn phase_name(phase: BarrierPhase) -> &'static str {
    match phase {
        BarrierPhase::Try => "try",
        BarrierPhase::Confirm => "confirm",
        BarrierPhase::Cancel => "cancel",
    }
}

fn storage(e: impl std::fmt::Display) -> Refusal {
    Refusal::Storage(e.to_string())
}

impl Shop {
    fn new(books: Books) -> Shop {
        Shop {
            books,
            hang_next_confirm: Arc::new(AtomicBool::new(false)),
            hung: Arc::new(Notify::new()),
        }
    }

    fn open(path: &Path) -> Result<Shop, String> {
        // sled 0.34 cannot reopen past a snapshot torn by a kill.
        sagalog::discard_torn_sled_snapshots(path).map_err(|e| e.to_string())?;
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(None)
            .cache_capacity(8 * 1024 * 1024)
            .open()
            .map_err(|e| format!("opening the shop at {}: {e}", path.display()))?;
        let tree = |name: &str| -> Result<(sled::Tree, Barrier), String> {
            let tree = db.open_tree(name).map_err(|e| e.to_string())?;
            Ok((tree.clone(), Barrier::new(tree)))
        };
        Ok(Shop::new(Books::Sled {
            trees: [tree("funds")?, tree("stock")?, tree("orders")?],
            calls: db.open_tree("calls").map_err(|e| e.to_string())?,
            db,
        }))
    }

    /// The shop in schema `schema` of the PostgreSQL at `url`, whose tables
    /// are made if missing.
    async fn open_pg(url: &str, schema: &str) -> Result<Shop, String> {
        if schema.is_empty()
            || !schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(format!(
                "the shop's schema {schema:?} should be lowercase letters, digits and _"
            ));
        }
        let pool = Pool::new(url, 8);
        pool.get()
            .await?
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema};
                 CREATE TABLE IF NOT EXISTS {schema}.counter (key text PRIMARY KEY, value bigint NOT NULL);
                 CREATE TABLE IF NOT EXISTS {schema}.barrier (saga_id text, branch text, phase text, \
                     mark text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), \
                     PRIMARY KEY (saga_id, branch, phase));
                 CREATE TABLE IF NOT EXISTS {schema}.call (id bigserial PRIMARY KEY, record text NOT NULL);"
            ))
            .await
            .map_err(|e| format!("making the shop's tables in {schema}: {e}"))?;
        Ok(Shop::new(Books::Pg {
            pool,
            schema: schema.to_string(),
        }))
    }

    /// Stocks the shop once; later runs change nothing.
    async fn initialize(&self, users: &[(&str, i64)], items: &[(&str, i64)]) -> Result<(), String> {
        let money: i64 = users.iter().map(|(_, m)| m).sum();
        let count: i64 = items.iter().map(|(_, c)| c).sum();
        let mut counters = vec![
            ("funds/initial".to_string(), money),
            ("stock/initial".to_string(), count),
        ];
        counters.extend(
            users
                .iter()
                .map(|(u, m)| (format!("funds/balance/{u}"), *m)),
        );
        counters.extend(
            items
                .iter()
                .map(|(i, c)| (format!("stock/available/{i}"), *c)),
        );
        match &self.books {
            Books::Sled { db, trees, .. } => {
                let funds = &trees[0].0;
                if funds
                    .get("initialized")
                    .map_err(|e| e.to_string())?
                    .is_some()
                {
                    return Ok(());
                }
                for (key, value) in &counters {
                    let (tree, key) = key.split_once('/').unwrap_or_default();
                    let tree = if tree == "funds" {
                        &trees[0].0
                    } else {
                        &trees[1].0
                    };
                    tree.insert(key, &value.to_be_bytes())
                        .map_err(|e| e.to_string())?;
                }
                // Last: a kill before this line initializes again from scratch.
                funds
                    .insert("initialized", &[1u8][..])
                    .map_err(|e| e.to_string())?;
                db.flush().map_err(|e| e.to_string())?;
            }
            Books::Pg { pool, schema } => {
                let mut conn = pool.get().await?;
                let tx = conn.transaction().await.map_err(|e| e.to_string())?;
                let first = tx
                    .execute(
                        &format!("INSERT INTO {schema}.counter VALUES ('initialized', 1) ON CONFLICT DO NOTHING"),
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

    /// Runs one guarded participant call and says what the barrier did.
    async fn guarded(
        &self,
        saga: SagaId,
        branch: Branch,
        phase: BarrierPhase,
        purchase: &Purchase,
    ) -> Result<Guarded<()>, StepError> {
        let change = business(branch, phase, purchase);
        let result = match &self.books {
            Books::Sled { trees, .. } => {
                let barrier = &trees[branch as usize].1;
                barrier.call(saga, branch.name(), phase, |tx| change.apply_sled(tx))
            }
            Books::Pg { pool, schema } => guarded_pg(pool, schema, saga, branch, phase, &change)
                .await
                .map_err(BarrierError::Business),
        };
        match result {
            Ok(guarded) => Ok(guarded),
            Err(BarrierError::Business(Refusal::Rule(why))) => Err(StepError::permanent(why)),
            Err(BarrierError::Business(Refusal::Storage(why))) | Err(BarrierError::Store(why)) => {
                Err(StepError::unknown(why))
            }
            Err(BarrierError::Corrupt { key, reason }) => Err(StepError::unknown(format!(
                "barrier record {key:02x?} unreadable: {reason}"
            ))),
            Err(_) => Err(StepError::unknown(
                "the barrier failed in a way this example does not know",
            )),
        }
    }

    /// Appends a call to the call log, durably, before any effect.
    async fn record_call(&self, record: &serde_json::Value) -> Result<(), Refusal> {
        match &self.books {
            Books::Sled { db, calls, .. } => {
                let id = db.generate_id().map_err(storage)?;
                calls
                    .insert(id.to_be_bytes(), record.to_string().as_bytes())
                    .map_err(storage)?;
                db.flush().map(|_| ()).map_err(storage)
            }
            Books::Pg { pool, schema } => {
                let conn = pool.get().await.map_err(Refusal::Storage)?;
                conn.execute(
                    &format!("INSERT INTO {schema}.call (record) VALUES ($1)"),
                    &[&record.to_string()],
                )
                .await
                .map(|_| ())
                .map_err(storage)
            }
        }
    }

    /// A participant call made by the engine: logged durably, then guarded.
    async fn participate(
        &self,
        ctx: StepContext<Purchase>,
        branch: Branch,
        phase: BarrierPhase,
    ) -> Result<(), StepError> {
        let record = json!({
            "saga_id": ctx.saga_id().to_string(),
            "step": ctx.step().as_str(),
            "phase": ctx.phase().as_str(),
            "attempt": ctx.attempt(),
        });
        self.record_call(&record).await.map_err(|e| match e {
            Refusal::Rule(why) | Refusal::Storage(why) => StepError::unknown(why),
        })?;
        let purchase = ctx.input();
        if branch == Branch::Funds
            && phase == BarrierPhase::Confirm
            && purchase.user == "carol"
            && self.hang_next_confirm.swap(false, Ordering::SeqCst)
        {
            self.hung.notify_one();
            std::future::pending::<()>().await;
        }
        match self.guarded(ctx.saga_id(), branch, phase, purchase).await? {
            Guarded::Rejected => Err(StepError::permanent(
                "rejected by the barrier: this branch was already cancelled",
            )),
            Guarded::Ran(()) | Guarded::Duplicate(()) | Guarded::EmptyRollback => Ok(()),
        }
    }

    /// The total of one participant's counters under `prefix`.
    async fn sum(&self, tree: &str, prefix: &str) -> Result<i64, String> {
        match &self.books {
            Books::Sled { trees, .. } => {
                let index = ["funds", "stock", "orders"]
                    .iter()
                    .position(|t| *t == tree)
                    .ok_or_else(|| format!("no tree {tree}"))?;
                let mut total = 0;
                for item in trees[index].0.scan_prefix(prefix) {
                    let (_, v) = item.map_err(|e| e.to_string())?;
                    total += <[u8; 8]>::try_from(v.as_ref()).map_or(0, i64::from_be_bytes);
                }
                Ok(total)
            }
            Books::Pg { pool, schema } => {
                let conn = pool.get().await?;
                let row = conn
                    .query_one(
                        &format!(
                            "SELECT COALESCE(sum(value), 0)::bigint FROM {schema}.counter WHERE starts_with(key, $1)"
                        ),
                        &[&format!("{tree}/{prefix}")],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(row.get(0))
            }
        }
    }

    /// The books, as the final `{"ledger": ...}` line prints them.
    async fn ledger(&self) -> Result<serde_json::Value, String> {
        Ok(json!({"ledger": {
            "money": {
                "initial": self.sum("funds", "initial").await?,
                "balance": self.sum("funds", "balance/").await?,
                "frozen": self.sum("funds", "frozen/").await?,
                "merchant": self.sum("funds", "merchant").await?,
            },
            "stock": {
                "initial": self.sum("stock", "initial").await?,
                "available": self.sum("stock", "available/").await?,
                "reserved": self.sum("stock", "reserved/").await?,
                "sold": self.sum("stock", "sold/").await?,
            },
            "orders": {
                "pending": self.sum("orders", "orders/pending").await?,
                "paid": self.sum("orders", "orders/paid").await?,
                "cancelled": self.sum("orders", "orders/cancelled").await?,
            },
        }}))
    }
}

/// The barrier's SQL form (docs/guide.md) around one change, in one
/// transaction: a cancel first inserts its try's tombstone (if that row is
/// new, the try never ran: an empty rollback); every call then claims its
/// (saga, branch, phase) row by the primary key, and 0 rows inserted is a
/// repeat, or for a try, a tombstone (rejected). A refused change rolls
/// the claim back with it.
async fn guarded_pg(
    pool: &Pool,
    schema: &str,
    saga: SagaId,
    branch: Branch,
    phase: BarrierPhase,
    change: &Change,
) -> Result<Guarded<()>, Refusal> {
    let mut conn = pool.get().await.map_err(Refusal::Storage)?;
    let tx = conn.transaction().await.map_err(storage)?;
    let saga = saga.to_string();
    let claim = format!(
        "INSERT INTO {schema}.barrier (saga_id, branch, phase, mark) VALUES ($1, $2, $3, $4) \
         ON CONFLICT DO NOTHING"
    );
    let branch_name = branch.name();
    if phase == BarrierPhase::Cancel {
        let tombstone = tx
            .execute(&claim, &[&saga, &branch_name, &"try", &"blocked"])
            .await
            .map_err(storage)?;
        if tombstone == 1 {
            tx.execute(&claim, &[&saga, &branch_name, &"cancel", &"done"])
                .await
                .map_err(storage)?;
            tx.commit().await.map_err(storage)?;
            return Ok(Guarded::EmptyRollback);
        }
    }
    let phase_text = phase_name(phase);
    let claimed = tx
        .execute(&claim, &[&saga, &branch_name, &phase_text, &"done"])
        .await
        .map_err(storage)?;
    if claimed == 0 {
        let mark: String = tx
            .query_one(
                &format!("SELECT mark FROM {schema}.barrier WHERE saga_id = $1 AND branch = $2 AND phase = $3"),
                &[&saga, &branch_name, &phase_text],
            )
            .await
            .map_err(storage)?
            .get(0);
        return Ok(if mark == "blocked" {
            Guarded::Rejected
        } else {
            Guarded::Duplicate(())
        });
    }
    // On a refusal, dropping the transaction rolls it back.
    change.apply_pg(&tx, schema, tree_name(branch)).await?;
    tx.commit().await.map_err(storage)?;
    Ok(Guarded::Ran(()))
}

type CallFuture = Pin<Box<dyn Future<Output = Result<(), StepError>> + Send>>;

fn participant(
    shop: &Shop,
    branch: Branch,
    phase: BarrierPhase,
) -> impl Fn(StepContext<Purchase>) -> CallFuture + Send + Sync + 'static {
    let shop = shop.clone();
    move |ctx| {
        let shop = shop.clone();
        Box::pin(async move { shop.participate(ctx, branch, phase).await })
    }
}

/// Funds and stock are tried together; the order is created after both.
fn seckill(shop: &Shop) -> Result<SagaDefinition<Purchase>, sagalog::DefinitionError> {
    let quick = RetryPolicy {
        max_attempts: 3,
        initial_interval_ms: 20,
        max_interval_ms: 200,
        ..RetryPolicy::forward_default()
    };
    let mut builder = SagaDefinition::<Purchase>::tcc("seckill")
        .retry(quick)
        .compensation_retry(RetryPolicy {
            max_attempts: 10,
            ..quick
        });
    let positions = [
        (
            Branch::Funds,
            StepOptions::new().after(Vec::<String>::new()),
        ),
        (Branch::Stock, StepOptions::new().parallel_with_previous()),
        (Branch::Order, StepOptions::new().after(["funds", "stock"])),
    ];
    for (branch, options) in positions {
        builder = builder.branch_with(
            branch.name(),
            options,
            participant(shop, branch, BarrierPhase::Try),
            participant(shop, branch, BarrierPhase::Confirm),
            participant(shop, branch, BarrierPhase::Cancel),
        );
    }
    builder.build()
}

/// Crash points count across the engines of one run (scenario 5 reopens it).
/// A bundle bought in one go: a saga whose steps are seckill sub-sagas.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Bundle {
    order_id: String,
    user: String,
}

fn bundle(seckill: &SagaRef<Purchase>) -> Result<SagaDefinition<Bundle>, sagalog::DefinitionError> {
    SagaDefinition::<Bundle>::builder("bundle")
        .sub_saga("phone", seckill, |ctx| {
            let b = ctx.input();
            Ok(purchase(
                &format!("{}-phone", b.order_id),
                &b.user,
                "phone",
                1,
                100,
            ))
        })
        .sub_saga("case", seckill, |ctx| {
            let b = ctx.input();
            Ok(purchase(
                &format!("{}-case", b.order_id),
                &b.user,
                "case",
                1,
                20,
            ))
        })
        .build()
}

struct Sagas {
    seckill: SagaRef<Purchase>,
    bundle: SagaRef<Bundle>,
}

async fn open_engine(
    args: &Args,
    shop: &Shop,
    plan: &CrashPlan,
) -> Result<(Engine, Sagas), Box<dyn std::error::Error>> {
    let mut registry = Registry::new();
    let seckill = registry.register(seckill(shop)?)?;
    let bundle = registry.register(bundle(&seckill)?)?;
    let engine = match &args.store {
        Some(url) => {
            let mut options = sagalog::PgOptions::default()
                .node_id(args.node_id.clone())
                .take_over(true);
            if let Some(schema) = &args.schema {
                options = options.schema(schema.clone());
            }
            let store = sagalog::PgStore::connect(url, options).await?;
            Engine::open_with_store(Arc::new(store), registry, plan.config()).await?
        }
        None => Engine::open(args.data_dir.join("log"), registry, plan.config()).await?,
    };
    Ok((engine, Sagas { seckill, bundle }))
}

fn purchase(order_id: &str, user: &str, item: &str, qty: i64, price: i64) -> Purchase {
    Purchase {
        order_id: order_id.into(),
        user: user.into(),
        item: item.into(),
        qty,
        price,
    }
}

fn guard_name(guarded: &Result<Guarded<()>, StepError>) -> String {
    match guarded {
        Ok(Guarded::Ran(())) => "ran".into(),
        Ok(Guarded::Duplicate(())) => "duplicate".into(),
        Ok(Guarded::EmptyRollback) => "empty_rollback".into(),
        Ok(Guarded::Rejected) => "rejected".into(),
        Err(e) => format!("error: {e}"),
    }
}

/// Starts a purchase (idempotently, by its order id) and waits for its outcome.
async fn buy(
    engine: &Engine,
    saga: &SagaRef<Purchase>,
    p: &Purchase,
) -> Result<(SagaId, SagaStatus), sagalog::Error> {
    let options = StartOptions::new().idempotency_key(p.order_id.clone());
    let id = engine.start(saga, p, options).await?.saga_id;
    Ok((id, engine.outcome(id).await?.status))
}

/// Runs the bulk workload; returns (committed, rolled back) counts.
async fn run_bulk(
    engine: &Engine,
    saga: &SagaRef<Purchase>,
    args: &Args,
) -> Result<(usize, usize), sagalog::Error> {
    let (engine, saga) = (engine.clone(), saga.clone());
    let run_one = move |k: usize| {
        let (engine, saga) = (engine.clone(), saga.clone());
        async move {
            let user = if k.is_multiple_of(9) {
                "pauper".to_string()
            } else {
                format!("bulk-{}", k % 8)
            };
            let p = purchase(&format!("bulk-{k}"), &user, "bulk-item", 1, 10);
            Ok(buy(&engine, &saga, &p).await?.1)
        }
    };
    let (total, concurrency) = (args.bulk, args.bulk_concurrency);
    bulk::run(total, concurrency, SagaStatus::RolledBack, run_one).await
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(&args.data_dir)?;
    let shop = match &args.store {
        Some(url) => {
            let schema = format!("{}_ledger", args.schema.as_deref().unwrap_or("seckill"));
            Shop::open_pg(url, &schema).await?
        }
        None => Shop::open(&args.data_dir.join("shop"))?,
    };
    let mut users = vec![
        ("ada", 1_000),
        ("bob", 30),
        ("carol", 500),
        ("dan", 200),
        ("erin", 500),
    ];
    let bulk_users: Vec<String> = (0..8).map(|k| format!("bulk-{k}")).collect();
    users.extend(bulk_users.iter().map(|u| (u.as_str(), 600)));
    users.push(("pauper", 0));
    shop.initialize(
        &users,
        &[("phone", 10), ("case", 10), ("bulk-item", 1_000_000)],
    )
    .await?;
    let plan = CrashPlan::new(&args.crash);
    let (mut engine, mut sagas) = open_engine(&args, &shop, &plan).await?;
    let saga = sagas.seckill.clone();
    let mut lines = Vec::new();

    // 1. A successful purchase.
    let ada = purchase("seckill-ada", "ada", "phone", 1, 100);
    let (ada_id, status) = buy(&engine, &saga, &ada).await?;
    lines.push(
        json!({"scenario": "success", "saga_id": ada_id.to_string(), "status": status.name()}),
    );

    // 2. Too little money: the funds try fails, every tried branch is cancelled.
    let bob = purchase("seckill-bob", "bob", "phone", 1, 100);
    let (id, status) = buy(&engine, &saga, &bob).await?;
    lines.push(json!({"scenario": "insufficient-balance", "saga_id": id.to_string(), "status": status.name()}));

    // 3. The confirm of ada's funds is delivered again: the barrier absorbs it.
    let again = shop
        .guarded(ada_id, Branch::Funds, BarrierPhase::Confirm, &ada)
        .await;
    lines.push(json!({"scenario": "duplicate-confirm", "saga_id": ada_id.to_string(), "status": status_of(&engine, ada_id).await?, "guard": guard_name(&again)}));

    // 4. A cancel overtakes its try: empty rollback, then the late try is rejected.
    let (late, dan) = (
        SagaId::new(),
        purchase("seckill-dan", "dan", "phone", 1, 100),
    );
    let cancel = shop
        .guarded(late, Branch::Funds, BarrierPhase::Cancel, &dan)
        .await;
    let try_ = shop
        .guarded(late, Branch::Funds, BarrierPhase::Try, &dan)
        .await;
    lines.push(json!({"scenario": "cancel-before-try", "saga_id": late.to_string(), "cancel": guard_name(&cancel), "late_try": guard_name(&try_)}));

    // 5. The process stops between try and confirm (the confirm hangs and
    //    the engine is stopped with it in flight); reopening recovers it.
    let carol = purchase("seckill-carol", "carol", "phone", 1, 100);
    shop.hang_next_confirm.store(true, Ordering::SeqCst);
    let options = StartOptions::new().idempotency_key(carol.order_id.clone());
    let carol_id = engine.start(&saga, &carol, options).await?.saga_id;
    let restarted = tokio::select! {
        _ = shop.hung.notified() => true,
        outcome = engine.outcome(carol_id) => { outcome?; false }
    };
    shop.hang_next_confirm.store(false, Ordering::SeqCst);
    if restarted {
        engine.shutdown(Duration::ZERO).await;
        // The database's lock goes with the last handle.
        drop(engine);
        (engine, sagas) = open_engine(&args, &shop, &plan).await?;
    }
    let status = engine.outcome(carol_id).await?.status;
    lines.push(json!({"scenario": "crash-recovery", "saga_id": carol_id.to_string(), "status": status.name(), "restarted": restarted}));

    // 6. A bundle: a saga whose steps are two seckill sub-sagas.
    let erin = Bundle {
        order_id: "bundle-erin".into(),
        user: "erin".into(),
    };
    let options = StartOptions::new().idempotency_key(erin.order_id.clone());
    let id = engine.start(&sagas.bundle, &erin, options).await?.saga_id;
    let status = engine.outcome(id).await?.status;
    let children = engine.saga(id).await?.children.len();
    lines.push(json!({"scenario": "bundle", "saga_id": id.to_string(), "status": status.name(), "children": children}));

    if args.bulk > 0 {
        let (committed, rolled_back) = run_bulk(&engine, &sagas.seckill, &args).await?;
        lines.push(json!({"bulk": {"total": args.bulk, "committed": committed, "rolled_back": rolled_back}}));
    }
    engine.shutdown(Duration::from_secs(5)).await;
    lines.push(shop.ledger().await?);

    if args.json {
        for line in &lines {
            println!("{line}");
        }
    } else {
        print_table(&lines);
    }
    Ok(())
}

async fn status_of(engine: &Engine, id: SagaId) -> Result<&'static str, sagalog::Error> {
    Ok(engine.saga(id).await?.status.name())
}

fn print_table(lines: &[serde_json::Value]) {
    println!("{:<22} {:<14} details", "scenario", "status");
    for line in lines {
        if let Some(scenario) = line["scenario"].as_str() {
            let status = line["status"].as_str().unwrap_or("-");
            let details: Vec<String> = ["guard", "cancel", "late_try", "restarted", "children"]
                .iter()
                .filter_map(|k| line.get(*k).map(|v| format!("{k}={v}")))
                .collect();
            println!("{scenario:<22} {status:<14} {}", details.join(" "));
        } else if let Some(bulk) = line.get("bulk") {
            println!("bulk: {bulk}");
        }
    }
    if let Some(ledger) = lines.last().and_then(|l| l.get("ledger")) {
        println!("\nledger: {ledger}");
        println!("money: initial = balance + frozen + merchant; stock: initial = available + reserved + sold");
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

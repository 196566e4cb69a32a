//! A flash-sale ("seckill") payment as a TCC transaction: reserve
//! funds and stock (tried in parallel), then create the order; confirm all
//! three or cancel every branch that was tried. Each participant keeps its
//! state in its own sled tree and is protected by a [`Barrier`]: repeated
//! calls are no-ops, a cancel without its try is an empty rollback, and a try
//! after its cancel is rejected.
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

use clap::Parser;
use crash::{CrashFlags, CrashPlan};
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

/// One business change of one participant: what try, confirm and cancel do.
fn business(branch: Branch, phase: BarrierPhase, p: &Purchase, tx: &Tx) -> Result<(), Refusal> {
    let (user, item, amount) = (p.user.as_str(), p.item.as_str(), p.amount());
    match (branch, phase) {
        (Branch::Funds, BarrierPhase::Try) => {
            let balance = read(tx, &format!("balance/{user}"))?;
            if balance < amount {
                return Err(Refusal::Rule(format!(
                    "insufficient balance: {user} has {balance}, needs {amount}"
                )));
            }
            add(tx, &format!("balance/{user}"), -amount)?;
            add(tx, &format!("frozen/{user}"), amount)
        }
        (Branch::Funds, BarrierPhase::Confirm) => {
            add(tx, &format!("frozen/{user}"), -amount)?;
            add(tx, "merchant", amount)
        }
        (Branch::Funds, BarrierPhase::Cancel) => {
            add(tx, &format!("frozen/{user}"), -amount)?;
            add(tx, &format!("balance/{user}"), amount)
        }
        (Branch::Stock, BarrierPhase::Try) => {
            let available = read(tx, &format!("available/{item}"))?;
            if available < p.qty {
                return Err(Refusal::Rule(format!("{item} sold out ({available} left)")));
            }
            add(tx, &format!("available/{item}"), -p.qty)?;
            add(tx, &format!("reserved/{item}"), p.qty)
        }
        (Branch::Stock, BarrierPhase::Confirm) => {
            add(tx, &format!("reserved/{item}"), -p.qty)?;
            add(tx, &format!("sold/{item}"), p.qty)
        }
        (Branch::Stock, BarrierPhase::Cancel) => {
            add(tx, &format!("reserved/{item}"), -p.qty)?;
            add(tx, &format!("available/{item}"), p.qty)
        }
        (Branch::Order, BarrierPhase::Try) => add(tx, "orders/pending", 1),
        (Branch::Order, BarrierPhase::Confirm) => {
            add(tx, "orders/pending", -1)?;
            add(tx, "orders/paid", 1)
        }
        (Branch::Order, BarrierPhase::Cancel) => {
            add(tx, "orders/pending", -1)?;
            add(tx, "orders/cancelled", 1)
        }
    }
}

/// The participants' store: one sled database beside the saga log, a tree
/// (with its barrier) per participant, and a call log written before every
/// call's effect, so a checker can match each call to an intent record.
#[derive(Clone)]
struct Shop {
    db: sled::Db,
    trees: [(sled::Tree, Barrier); 3],
    calls: sled::Tree,
    /// Scenario 5: the next funds confirm of user "carol" hangs (the process
    /// "crashes" between try and confirm).
    hang_next_confirm: Arc<AtomicBool>,
    hung: Arc<Notify>,
}

impl Shop {
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
        Ok(Shop {
            trees: [tree("funds")?, tree("stock")?, tree("orders")?],
            calls: db.open_tree("calls").map_err(|e| e.to_string())?,
            db,
            hang_next_confirm: Arc::new(AtomicBool::new(false)),
            hung: Arc::new(Notify::new()),
        })
    }

    fn tree(&self, branch: Branch) -> &(sled::Tree, Barrier) {
        match branch {
            Branch::Funds => &self.trees[0],
            Branch::Stock => &self.trees[1],
            Branch::Order => &self.trees[2],
        }
    }

    /// Stocks the shop once; later runs change nothing.
    fn initialize(&self, users: &[(&str, i64)], items: &[(&str, i64)]) -> Result<(), String> {
        let (funds, stock) = (&self.tree(Branch::Funds).0, &self.tree(Branch::Stock).0);
        if funds
            .get("initialized")
            .map_err(|e| e.to_string())?
            .is_some()
        {
            return Ok(());
        }
        for (user, money) in users {
            funds
                .insert(format!("balance/{user}"), &money.to_be_bytes())
                .map_err(|e| e.to_string())?;
        }
        for (item, count) in items {
            stock
                .insert(format!("available/{item}"), &count.to_be_bytes())
                .map_err(|e| e.to_string())?;
        }
        let money: i64 = users.iter().map(|(_, m)| m).sum();
        let count: i64 = items.iter().map(|(_, c)| c).sum();
        funds
            .insert("initial", &money.to_be_bytes())
            .map_err(|e| e.to_string())?;
        stock
            .insert("initial", &count.to_be_bytes())
            .map_err(|e| e.to_string())?;
        // Last: a kill before this line initializes again from scratch.
        funds
            .insert("initialized", &[1u8][..])
            .map_err(|e| e.to_string())?;
        self.db.flush().map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Runs one guarded participant call and says what the barrier did.
    fn guarded(
        &self,
        saga: SagaId,
        branch: Branch,
        phase: BarrierPhase,
        purchase: &Purchase,
    ) -> Result<Guarded<()>, StepError> {
        let result = self.tree(branch).1.call(saga, branch.name(), phase, |tx| {
            business(branch, phase, purchase, tx)
        });
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
        let id = self
            .db
            .generate_id()
            .map_err(|e| StepError::unknown(e.to_string()))?;
        self.calls
            .insert(id.to_be_bytes(), record.to_string().as_bytes())
            .map_err(|e| StepError::unknown(e.to_string()))?;
        self.db
            .flush()
            .map_err(|e| StepError::unknown(e.to_string()))?;
        let purchase = ctx.input();
        if branch == Branch::Funds
            && phase == BarrierPhase::Confirm
            && purchase.user == "carol"
            && self.hang_next_confirm.swap(false, Ordering::SeqCst)
        {
            self.hung.notify_one();
            std::future::pending::<()>().await;
        }
        match self.guarded(ctx.saga_id(), branch, phase, purchase)? {
            Guarded::Rejected => Err(StepError::permanent(
                "rejected by the barrier: this branch was already cancelled",
            )),
            Guarded::Ran(()) | Guarded::Duplicate(()) | Guarded::EmptyRollback => Ok(()),
        }
    }

    /// The books, as the final `{"ledger": ...}` line prints them.
    fn ledger(&self) -> Result<serde_json::Value, String> {
        let sum = |tree: &sled::Tree, prefix: &str| -> Result<i64, String> {
            let mut total = 0;
            for item in tree.scan_prefix(prefix) {
                let (_, v) = item.map_err(|e| e.to_string())?;
                total += <[u8; 8]>::try_from(v.as_ref()).map_or(0, i64::from_be_bytes);
            }
            Ok(total)
        };
        let (funds, stock, orders) = (
            &self.tree(Branch::Funds).0,
            &self.tree(Branch::Stock).0,
            &self.tree(Branch::Order).0,
        );
        Ok(json!({"ledger": {
            "money": {
                "initial": sum(funds, "initial")?,
                "balance": sum(funds, "balance/")?,
                "frozen": sum(funds, "frozen/")?,
                "merchant": sum(funds, "merchant")?,
            },
            "stock": {
                "initial": sum(stock, "initial")?,
                "available": sum(stock, "available/")?,
                "reserved": sum(stock, "reserved/")?,
                "sold": sum(stock, "sold/")?,
            },
            "orders": {
                "pending": sum(orders, "orders/pending")?,
                "paid": sum(orders, "orders/paid")?,
                "cancelled": sum(orders, "orders/cancelled")?,
            },
        }}))
    }
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
    let engine = Engine::open(args.data_dir.join("log"), registry, plan.config()).await?;
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
    let shop = Shop::open(&args.data_dir.join("shop"))?;
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
    )?;
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
    let again = shop.guarded(ada_id, Branch::Funds, BarrierPhase::Confirm, &ada);
    lines.push(json!({"scenario": "duplicate-confirm", "saga_id": ada_id.to_string(), "status": status_of(&engine, ada_id).await?, "guard": guard_name(&again)}));

    // 4. A cancel overtakes its try: empty rollback, then the late try is rejected.
    let (late, dan) = (
        SagaId::new(),
        purchase("seckill-dan", "dan", "phone", 1, 100),
    );
    let cancel = shop.guarded(late, Branch::Funds, BarrierPhase::Cancel, &dan);
    let try_ = shop.guarded(late, Branch::Funds, BarrierPhase::Try, &dan);
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
    lines.push(shop.ledger()?);

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

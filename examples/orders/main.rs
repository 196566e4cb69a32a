//! The sagalog orders example: an order flow over inventory, payment and
//! shipping, the participants keeping their books durably (in a sled
//! database beside the log, or in PostgreSQL beside it with `--store`) and
//! applying every effect once by its idempotency key.
//!
//! ```text
//! cargo run --release --example orders                      # readable table
//! cargo run --release --example orders -- --json            # one JSON object per line
//! cargo run --release --example orders -- --crash-after 5   # abort after the 5th durable append
//! cargo run --release --example orders                      # ...then rerun: recovery finishes it
//! ```
//!
//! Several nodes on one PostgreSQL log, one per terminal; kill one and the
//! others finish its sagas (a run without `--bulk-only` then reports all):
//!
//! ```text
//! cargo run --release --example orders -- --store postgres://… --node-id n1 --bulk 5000 --bulk-only
//! ```
//!
//! One scenario per compensation strategy: a successful order; a declined
//! payment compensated at once; a flaky courier retried, then compensated;
//! a declined payment under the manual strategy, resolved by an operator
//! action in this example; an undeliverable address compensated after a
//! scheduled delay. Each scenario starts with a fixed idempotency key (its
//! order id), so a rerun attaches to the sagas that already exist instead
//! of starting new ones.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

#[path = "../support/bulk.rs"]
mod bulk;
#[path = "../support/crash.rs"]
mod crash;
mod ledger;
#[path = "../support/pg_pool.rs"]
mod pg_pool;

use clap::Parser;
use crash::{CrashFlags, CrashPlan};
use ledger::{CallRecord, Effect, Ledger, Refusal};
use sagalog::{
    CompensationStrategy, DelayedItem, Engine, ManualItem, Registry, RetryPolicy, SagaDefinition,
    SagaId, SagaRef, SagaStatus, SagaView, StartOptions, StepContext, StepError, UnixMillis,
};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "Run the sagalog order scenarios against a durable log")]
struct Args {
    /// Directory for the saga log and the participants' ledger.
    #[arg(long, default_value = "./sagalog-data")]
    data_dir: PathBuf,
    /// Keep the saga log and the participants' ledger in this PostgreSQL
    /// database instead of DATA_DIR (postgres://USER@HOST:PORT/DB).
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// With --store, the schema for sagalog's tables (default: the
    /// connection's search_path); the ledger's go in NAME_ledger (default:
    /// orders_ledger).
    #[arg(long, value_name = "NAME", requires = "store")]
    schema: Option<String>,
    /// With --store, this process's node id on the shared log. A process
    /// started again with the same id takes its place at once (it must be
    /// gone: give processes that run together different ids).
    #[arg(long, value_name = "ID", default_value = "orders", requires = "store")]
    node_id: String,
    /// With --store, this node's lease on the shared log, in milliseconds:
    /// a node that stops renewing loses its sagas to the others this long
    /// after its last renewal.
    #[arg(long, value_name = "MS", default_value_t = 10_000, requires = "store")]
    lease_ttl_ms: u64,
    /// Run only the generated orders, not the five scenarios: for nodes
    /// that share one log (the manual scenario is resolved by the node that
    /// runs the scenarios).
    #[arg(long, requires = "bulk")]
    bulk_only: bool,
    /// With --bulk, also start the order `bulk-manual`: its payment is
    /// declined under the manual strategy, and the node waits until an
    /// operator resolves it (`sagalog --db … compensate ID`), from any node
    /// or tool: the action goes to the node that runs the saga.
    #[arg(long, requires = "bulk")]
    bulk_manual: bool,
    #[command(flatten)]
    crash: CrashFlags,
    /// Print one JSON object per saga, then the ledger, instead of a table.
    #[arg(long)]
    json: bool,
    /// Delay of the scheduled-compensation scenario, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    scheduled_delay_ms: u64,
    /// Also run this many generated orders (mixed strategies and outcomes),
    /// with their own products and accounts: the crash tests' workload.
    #[arg(long, default_value_t = 0)]
    bulk: usize,
    /// How many generated orders run at once.
    #[arg(long, default_value_t = 32)]
    bulk_concurrency: usize,
    /// After the scenarios, keep the engine open with its admin server on
    /// DATA_DIR/log/admin.sock until Ctrl-C or SIGTERM. The manual order is
    /// left waiting for you (see it with `sagalog --db DATA_DIR/log manual`).
    #[arg(long)]
    serve: bool,
    /// With --serve, also serve the API and the page on this TCP address
    /// (e.g. 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR", requires = "serve")]
    admin_addr: Option<std::net::SocketAddr>,
    /// With --admin-addr, the bearer token TCP requests must carry (needed
    /// for an address that is not loopback).
    #[arg(long, value_name = "TOKEN", requires = "admin_addr")]
    admin_token: Option<String>,
}

/// Serves the admin API until Ctrl-C or SIGTERM, saying where and how.
async fn serve_until_stopped(
    engine: &Engine,
    args: &Args,
) -> Result<(), Box<dyn std::error::Error>> {
    let config = sagalog::AdminConfig {
        // A log in PostgreSQL has no directory: the socket goes in DATA_DIR.
        socket: args
            .store
            .as_ref()
            .map(|_| args.data_dir.join("admin.sock")),
        tcp: args.admin_addr,
        token: args.admin_token.clone(),
        ..sagalog::AdminConfig::default()
    };
    let admin = engine.serve_admin(config).await?;
    let db = args.data_dir.join("log");
    if args.json {
        let serving = serde_json::json!({"socket": admin.socket(), "tcp": admin.tcp()});
        println!("{}", serde_json::json!({ "serving": serving }));
    } else {
        println!("\nserving the admin API on {}", admin.socket().display());
        match admin.tcp() {
            Some(addr) => println!("open the page:  http://{addr}/"),
            None => println!("for the page, run with --admin-addr 127.0.0.1:8080 and open http://127.0.0.1:8080/"),
        }
        println!("try, in another shell:");
        println!("  sagalog --db {} list", db.display());
        println!("  sagalog --db {} manual", db.display());
        println!(
            "  sagalog --db {} compensate <saga id> --reason \"customer agreed\"",
            db.display()
        );
        println!("Ctrl-C or SIGTERM stops it.");
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    admin.stop().await;
    Ok(())
}

/// The ledger's schema: beside the log's, `NAME_ledger`, or `orders_ledger`.
fn ledger_schema(log_schema: Option<&str>) -> String {
    format!("{}_ledger", log_schema.unwrap_or("orders"))
}

/// Generated order `k` of the bulk workload, with its strategy.
fn bulk_order(k: usize, scheduled_delay_ms: u64) -> (CompensationStrategy, Order) {
    let strategy = match k % 3 {
        0 => CompensationStrategy::Immediate,
        1 => CompensationStrategy::RetryThenCompensate {
            policy: RetryPolicy {
                max_attempts: 2,
                initial_interval_ms: 20,
                max_interval_ms: 100,
                ..RetryPolicy::forward_default()
            },
        },
        _ => CompensationStrategy::Scheduled {
            delay_ms: scheduled_delay_ms.min(100),
        },
    };
    let customer = if k.is_multiple_of(5) {
        "pauper".to_string()
    } else {
        format!("bulk-{}", k % 8)
    };
    let address = match (k % 7, k % 11) {
        (0, _) => "nowhere",
        (_, 0) => "flaky-courier",
        _ => "1 Bulk Rd",
    };
    let order = Order {
        order_id: format!("bulk-{k}"),
        customer,
        product: "bulk-item".into(),
        quantity: 1,
        unit_price: 10,
        address: address.into(),
    };
    (strategy, order)
}

/// Runs the bulk workload; returns (committed, compensated) counts.
async fn run_bulk(
    engine: &Engine,
    orders: &SagaRef<Order>,
    args: &Args,
) -> Result<(usize, usize), sagalog::Error> {
    let (manual_engine, manual_orders) = (engine.clone(), orders.clone());
    let (engine, orders, delay) = (engine.clone(), orders.clone(), args.scheduled_delay_ms);
    // Nodes that share a log start the same orders from different places,
    // so that they share the work and some keys are started on two nodes.
    let (total, offset) = (args.bulk, start_offset(&args.node_id, args.bulk));
    let run_one = move |k| {
        let (engine, orders) = (engine.clone(), orders.clone());
        async move {
            let (strategy, order) = bulk_order((k + offset) % total, delay);
            let options = StartOptions::new()
                .idempotency_key(order.order_id.clone())
                .strategy(strategy);
            let id = engine.start(&orders, &order, options).await?.saga_id;
            Ok(engine.outcome(id).await?.status)
        }
    };
    let manual = match args.bulk_manual {
        true => Some(tokio::spawn(wait_for_the_operator(
            manual_engine,
            manual_orders,
        ))),
        false => None,
    };
    let counts = bulk::run(
        total,
        args.bulk_concurrency,
        SagaStatus::Compensated,
        run_one,
    )
    .await?;
    if let Some(manual) = manual {
        manual.await.map_err(|e| {
            sagalog::Error::InvalidOptions(format!("the manual order's task failed: {e}"))
        })??;
    }
    Ok(counts)
}

/// Starts the order `bulk-manual` (declined, under the manual strategy)
/// and waits until an operator's action has brought it to its end, which
/// may happen on another node.
async fn wait_for_the_operator(
    engine: Engine,
    orders: SagaRef<Order>,
) -> Result<(), sagalog::Error> {
    let order = Order {
        order_id: "bulk-manual".into(),
        customer: "pauper".into(),
        product: "bulk-item".into(),
        quantity: 1,
        unit_price: 10,
        address: "1 Bulk Rd".into(),
    };
    let options = StartOptions::new()
        .idempotency_key(order.order_id.clone())
        .strategy(CompensationStrategy::Manual);
    let id = engine.start(&orders, &order, options).await?.saga_id;
    loop {
        if engine.saga(id).await?.status.is_terminal() {
            return Ok(());
        }
        if engine.lease().is_some_and(|lease| lease.is_lost()) {
            return Err(sagalog::Error::ShuttingDown { saga: Some(id) });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where node `node_id` starts in the `total` generated orders (FNV-1a of
/// the id): the default node starts at the first.
fn start_offset(node_id: &str, total: usize) -> usize {
    if node_id == "orders" || total == 0 {
        return 0;
    }
    let hash = node_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % total as u64) as usize
}

/// A customer's order: the saga's input.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Order {
    order_id: String,
    customer: String,
    product: String,
    quantity: i64,
    unit_price: i64,
    address: String,
}

impl Order {
    fn amount(&self) -> i64 {
        self.quantity * self.unit_price
    }
}

fn refusal(r: Refusal) -> StepError {
    match r {
        Refusal::Rule(why) => StepError::permanent(why),
        // The transaction may or may not have reached the disk.
        Refusal::Storage(why) => StepError::unknown(why),
    }
}

/// Records the call, then applies `effect` once per idempotency key.
async fn participate(
    ledger: &Ledger,
    ctx: &StepContext<Order>,
    effect: Effect,
) -> Result<String, StepError> {
    ledger
        .record_call(&call_record(ctx))
        .await
        .map_err(refusal)?;
    ledger
        .apply_once(ctx.idempotency_key(), effect)
        .await
        .map_err(refusal)
}

fn call_record(ctx: &StepContext<Order>) -> CallRecord {
    CallRecord {
        saga_id: ctx.saga_id().to_string(),
        step: ctx.step().to_string(),
        phase: ctx.phase().to_string(),
        attempt: ctx.attempt(),
    }
}

/// The key of the forward action of the same step, for compensations that
/// must know whether the action's effect happened.
fn action_key(ctx: &StepContext<Order>) -> String {
    format!("{}/{}/action", ctx.saga_id(), ctx.step())
}

fn product(o: &Order, field: &str) -> String {
    format!("product/{}/{field}", o.product)
}

fn account(o: &Order, field: &str) -> String {
    format!("account/{}/{field}", o.customer)
}

fn order_saga(ledger: &Ledger) -> Result<SagaDefinition<Order>, sagalog::DefinitionError> {
    // Each call gets a clone of the ledger (a cheap handle).
    let with = |ledger: &Ledger| {
        let ledger = ledger.clone();
        move || ledger.clone()
    };
    let (l1, l2, l3, l4) = (with(ledger), with(ledger), with(ledger), with(ledger));
    let (l5, l6, l7, l8) = (with(ledger), with(ledger), with(ledger), with(ledger));
    SagaDefinition::<Order>::builder("order")
        .step(
            "reserve_stock",
            move |ctx| {
                let l = l1();
                async move {
                    let o = ctx.input().clone();
                    let name = o.product.clone();
                    let effect = Effect::new(format!("res-{}", o.order_id))
                        .need(product(&o, "available"), o.quantity, move |n| {
                            format!("only {n} {name} in stock")
                        })
                        .add(product(&o, "available"), -o.quantity)
                        .add(product(&o, "reserved"), o.quantity);
                    participate(&l, &ctx, effect).await
                }
            },
            move |ctx| {
                let l = l2();
                async move {
                    let o = ctx.input().clone();
                    let effect = Effect::new("released")
                        .only_after(action_key(&ctx), "nothing was reserved")
                        .add(product(&o, "reserved"), -o.quantity)
                        .add(product(&o, "available"), o.quantity);
                    participate(&l, &ctx, effect).await.map(|_| ())
                }
            },
        )
        .step(
            "charge_payment",
            move |ctx| {
                let l = l3();
                async move {
                    let o = ctx.input().clone();
                    let reservation: String = ctx.output("reserve_stock")?;
                    let amount = o.amount();
                    let effect = Effect::new(format!("pay-{}", o.order_id))
                        .need(account(&o, "balance"), amount, move |balance| {
                            format!(
                                "payment declined: balance {balance} < {amount} for {reservation}"
                            )
                        })
                        .add(account(&o, "balance"), -amount)
                        .add(account(&o, "held"), amount);
                    participate(&l, &ctx, effect).await
                }
            },
            move |ctx| {
                let l = l4();
                async move {
                    let o = ctx.input().clone();
                    let effect = Effect::new("refunded")
                        .only_after(action_key(&ctx), "refunded")
                        .add(account(&o, "held"), -o.amount())
                        .add(account(&o, "balance"), o.amount());
                    participate(&l, &ctx, effect).await.map(|_| ())
                }
            },
        )
        .step(
            "create_shipment",
            move |ctx| {
                let l = l5();
                async move {
                    let o = ctx.input().clone();
                    if o.address == "flaky-courier" {
                        // The courier's API is down: the call is recorded,
                        // nothing takes effect, try again later.
                        l.record_call(&call_record(&ctx)).await.map_err(refusal)?;
                        return Err(StepError::retryable("courier API unavailable"));
                    }
                    if o.address.is_empty() || o.address == "nowhere" {
                        l.record_call(&call_record(&ctx)).await.map_err(refusal)?;
                        return Err(StepError::permanent(format!(
                            "cannot ship to '{}'",
                            o.address
                        )));
                    }
                    let effect = Effect::new(format!("ship-{}", o.order_id))
                        .add("shipments/created".into(), 1);
                    participate(&l, &ctx, effect).await
                }
            },
            move |ctx| {
                let l = l6();
                async move {
                    let effect = Effect::new("cancelled")
                        .only_after(action_key(&ctx), "cancelled")
                        .add("shipments/cancelled".into(), 1);
                    participate(&l, &ctx, effect).await.map(|_| ())
                }
            },
        )
        .step(
            "confirm_order",
            move |ctx| {
                let l = l7();
                async move {
                    let o = ctx.input().clone();
                    let effect = Effect::new("confirmed")
                        .add(product(&o, "reserved"), -o.quantity)
                        .add(product(&o, "sold"), o.quantity)
                        .add(account(&o, "held"), -o.amount())
                        .add(account(&o, "paid"), o.amount());
                    participate(&l, &ctx, effect).await.map(|_| ())
                }
            },
            move |ctx| {
                let l = l8();
                async move {
                    let o = ctx.input().clone();
                    let effect = Effect::new("unconfirmed")
                        .only_after(action_key(&ctx), "unconfirmed")
                        .add(product(&o, "sold"), -o.quantity)
                        .add(product(&o, "reserved"), o.quantity)
                        .add(account(&o, "paid"), -o.amount())
                        .add(account(&o, "held"), o.amount());
                    participate(&l, &ctx, effect).await.map(|_| ())
                }
            },
        )
        .build()
}

fn scenarios(scheduled_delay_ms: u64) -> Vec<(&'static str, CompensationStrategy, Order)> {
    let order =
        |id: &str, customer: &str, product: &str, quantity, unit_price, address: &str| Order {
            order_id: id.into(),
            customer: customer.into(),
            product: product.into(),
            quantity,
            unit_price,
            address: address.into(),
        };
    let retry = RetryPolicy {
        max_attempts: 3,
        initial_interval_ms: 100,
        max_interval_ms: 1_000,
        ..RetryPolicy::forward_default()
    };
    vec![
        (
            "success",
            CompensationStrategy::Immediate,
            order("order-1001", "ada", "widget", 2, 25, "1 Main St"),
        ),
        (
            "payment-declined",
            CompensationStrategy::Immediate,
            order("order-1002", "bob", "widget", 1, 25, "2 Side St"),
        ),
        (
            "retry-then-compensate",
            CompensationStrategy::RetryThenCompensate { policy: retry },
            order("order-1003", "cyd", "gadget", 1, 40, "flaky-courier"),
        ),
        (
            "manual",
            CompensationStrategy::Manual,
            order("order-1004", "dan", "widget", 1, 25, "4 Hill Rd"),
        ),
        (
            "scheduled",
            CompensationStrategy::Scheduled {
                delay_ms: scheduled_delay_ms,
            },
            order("order-1005", "eve", "gadget", 1, 40, "nowhere"),
        ),
    ]
}

#[derive(Serialize)]
struct StepLine {
    name: String,
    status: &'static str,
}

#[derive(Serialize)]
struct SagaLine {
    saga_id: String,
    scenario: String,
    #[serde(rename = "type")]
    saga_type: String,
    strategy: String,
    status: String,
    steps: Vec<StepLine>,
}

impl SagaLine {
    fn new(scenario: &str, view: &SagaView) -> Self {
        SagaLine {
            saga_id: view.saga_id.to_string(),
            scenario: scenario.into(),
            saga_type: view.saga_type.to_string(),
            strategy: view.strategy.clone(),
            status: view.status.to_string(),
            steps: view
                .steps
                .iter()
                .map(|s| StepLine {
                    name: s.name.to_string(),
                    status: s.summary(),
                })
                .collect(),
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(&args.data_dir)?;
    let ledger = match &args.store {
        Some(url) => Ledger::open_pg(url, &ledger_schema(args.schema.as_deref())).await?,
        None => Ledger::open(&args.data_dir.join("ledger"))?,
    };
    ledger
        .initialize(
            &[("widget", 100), ("gadget", 10), ("bulk-item", 1_000_000)],
            &[
                ("ada", 1000),
                ("bob", 10),
                ("cyd", 500),
                ("dan", 5),
                ("eve", 300),
                ("bulk-0", 1_000_000),
                ("bulk-1", 1_000_000),
                ("bulk-2", 1_000_000),
                ("bulk-3", 1_000_000),
                ("bulk-4", 1_000_000),
                ("bulk-5", 1_000_000),
                ("bulk-6", 1_000_000),
                ("bulk-7", 1_000_000),
                ("pauper", 0),
            ],
        )
        .await?;

    let mut registry = Registry::new();
    let orders: SagaRef<Order> = registry.register(order_saga(&ledger)?)?;
    let config = CrashPlan::new(&args.crash).config();
    let engine = match &args.store {
        Some(url) => {
            let mut options = sagalog::PgOptions::default()
                .node_id(args.node_id.clone())
                .lease_ttl(Duration::from_millis(args.lease_ttl_ms))
                .take_over(true);
            if let Some(schema) = &args.schema {
                options = options.schema(schema.clone());
            }
            let store = sagalog::PgStore::connect(url, options).await?;
            Engine::open_with_store(std::sync::Arc::new(store), registry, config).await?
        }
        None => Engine::open(args.data_dir.join("log"), registry, config).await?,
    };
    let recovered = engine.recovery();
    if !args.json {
        match &args.store {
            Some(_) => println!(
                "sagalog orders example (log and ledger in PostgreSQL, schema {})\n",
                ledger_schema(args.schema.as_deref())
            ),
            None => println!(
                "sagalog orders example (data in {})\n",
                args.data_dir.display()
            ),
        }
        let from_before =
            recovered.resumed + recovered.sleeping + recovered.parked + recovered.suspended;
        if from_before > 0 {
            let sagas = if from_before == 1 { "saga" } else { "sagas" };
            println!(
                "recovered {from_before} {sagas} in flight from the last run: {} resumed, {} asleep on a timer, {} waiting for an operator, {} parked\n",
                recovered.resumed, recovered.sleeping, recovered.suspended, recovered.parked
            );
        }
    }

    let started = match args.bulk_only {
        true => Vec::new(),
        false => run_scenarios(&engine, &orders, &args).await?,
    };

    let bulk = if args.bulk > 0 {
        match run_bulk(&engine, &orders, &args).await {
            Ok(counts) => Some(counts),
            Err(e) => match engine.lease().and_then(|lease| lease.lost_reason()) {
                Some(why) => return Err(Box::new(Fenced(why))),
                None => return Err(e.into()),
            },
        }
    } else {
        None
    };

    let mut lines = Vec::new();
    if args.serve {
        serve_until_stopped(&engine, &args).await?;
    }
    for (scenario, id) in &started {
        // While serving, a person decides when sagas end; after it, they
        // are shown as they stand.
        if !args.serve {
            engine.outcome(*id).await?;
        }
        lines.push(SagaLine::new(scenario, &engine.saga(*id).await?));
    }
    engine.shutdown(Duration::from_secs(10)).await;
    let books = ledger.books().await?;
    let balanced = books.balance();

    if args.json {
        for line in &lines {
            println!("{}", serde_json::to_string(line)?);
        }
        if let Some((committed, compensated)) = bulk {
            let summary = serde_json::json!({"total": args.bulk, "committed": committed, "compensated": compensated});
            println!("{}", serde_json::json!({ "bulk": summary }));
        }
        println!(
            "{}",
            serde_json::json!({ "recovered": {
                "resumed": recovered.resumed,
                "sleeping": recovered.sleeping,
                "parked": recovered.parked,
                "suspended": recovered.suspended,
            }, "books_balance": balanced.is_ok() })
        );
        // The ledger comes last (the crash tests read it there).
        println!("{}", serde_json::json!({ "ledger": books }));
        return Ok(());
    }

    println!(
        "{:<22} {:<22} {:<12} {:<37} STEPS",
        "SCENARIO", "STRATEGY", "STATUS", "SAGA"
    );
    for line in &lines {
        let steps: Vec<String> = line
            .steps
            .iter()
            .map(|s| format!("{}={}", s.name, s.status))
            .collect();
        println!(
            "{:<22} {:<22} {:<12} {:<37} {}",
            line.scenario,
            line.strategy,
            line.status,
            line.saga_id,
            steps.join(" ")
        );
    }
    // The bulk accounts and product are used only with --bulk.
    let used = |name: &str| args.bulk > 0 || !name.starts_with("bulk-");
    println!("\nLEDGER");
    for (name, p) in books.products.iter().filter(|(n, _)| used(n)) {
        println!(
            "  product {name:<8} initial {:>5} = available {:>5} + reserved {:>3} + sold {:>3}",
            p.initial, p.available, p.reserved, p.sold
        );
    }
    for (name, a) in books.accounts.iter().filter(|(n, _)| used(n)) {
        println!(
            "  account {name:<8} initial {:>5} = balance   {:>5} + held     {:>3} + paid {:>3}",
            a.initial, a.balance, a.held, a.paid
        );
    }
    println!(
        "  shipments created {}, cancelled {}",
        books.shipments.created, books.shipments.cancelled
    );
    match balanced {
        Ok(()) => println!(
            "  the books balance: nothing was lost or counted twice (every account: initial = balance + held + paid; every product: initial = available + reserved + sold)"
        ),
        Err(why) => println!("  THE BOOKS DO NOT BALANCE: {why}"),
    }
    Ok(())
}

/// Runs the five scenarios and resolves the manual one (unless serving);
/// each scenario's name and saga.
async fn run_scenarios(
    engine: &Engine,
    orders: &SagaRef<Order>,
    args: &Args,
) -> Result<Vec<(&'static str, SagaId)>, Box<dyn std::error::Error>> {
    // Start every scenario (sequentially, so that a run's appends come in a
    // fixed order for --crash-after) and wait until each has stopped:
    // terminal, waiting for an operator, or asleep on a scheduled compensation.
    let mut started = Vec::new();
    for (scenario, strategy, order) in scenarios(args.scheduled_delay_ms) {
        let options = StartOptions::new()
            .idempotency_key(order.order_id.clone())
            .strategy(strategy);
        let id = engine.start(orders, &order, options).await?.saga_id;
        if let CompensationStrategy::Scheduled { .. } = strategy {
            wait_until_asleep_or_done(engine, id).await?;
        } else {
            engine.outcome(id).await?;
        }
        started.push((scenario, id));
    }

    // The queues as they stand: the scheduled saga sleeps, the manual one waits.
    let delay_queue = engine.delay_queue(100).await?;
    let manual_queue = engine.manual_queue().await?;
    let mut waits: Vec<String> = Vec::with_capacity(delay_queue.len());
    for d in &delay_queue {
        let steps = engine
            .saga(d.saga_id)
            .await
            .map(|v| v.steps)
            .unwrap_or_default();
        let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
        waits.push(
            d.purpose
                .as_ref()
                .map_or("(unreadable purpose)".into(), |p| p.describe(&names)),
        );
    }
    print_queues(args, engine.now(), &delay_queue, &waits, &manual_queue)?;

    // The operator resolves the manual queue: compensate now. With --serve
    // the manual order is left for a person to resolve while it runs.
    for item in manual_queue.iter().filter(|_| !args.serve) {
        if !item.parked {
            engine
                .compensate_now(
                    item.saga_id,
                    "example-operator",
                    "customer agreed to cancel",
                )
                .await?;
        }
    }
    Ok(started)
}

/// This node lost its lease on the shared log: another node fenced it and
/// finishes its sagas.
#[derive(Debug)]
struct Fenced(String);

impl std::fmt::Display for Fenced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "this node lost its lease and stopped ({}); the other nodes finish its sagas",
            self.0
        )
    }
}

impl std::error::Error for Fenced {}

/// Polls until the saga sleeps on a timer or has stopped.
async fn wait_until_asleep_or_done(engine: &Engine, id: SagaId) -> Result<(), sagalog::Error> {
    loop {
        if engine
            .delay_queue(100)
            .await?
            .iter()
            .any(|item| item.saga_id == id)
        {
            return Ok(());
        }
        let status = engine.saga(id).await?.status;
        if status.is_terminal() || status == SagaStatus::Suspended {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Prints the delay queue (with each wait's purpose in words, `waits`)
/// and the manual queue.
fn print_queues(
    args: &Args,
    now: UnixMillis,
    delayed: &[DelayedItem],
    waits: &[String],
    manual: &[ManualItem],
) -> Result<(), serde_json::Error> {
    let serve = args.serve;
    if args.json {
        let delayed: Vec<_> = delayed
            .iter()
            .zip(waits)
            .map(|(d, wait)| serde_json::json!({"saga_id": d.saga_id.to_string(), "due": d.due.to_string(), "due_ms": d.due.0, "purpose": wait}))
            .collect();
        let manual: Vec<_> = manual
            .iter()
            .map(|m| {
                serde_json::json!({
                    "saga_id": m.saga_id.to_string(),
                    "reason": m.reason,
                    "failed_step": m.failed_step.as_ref().map(|(s, _)| s.to_string()),
                    "to_compensate": m.to_compensate,
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "delay_queue": delayed }));
        println!("{}", serde_json::json!({ "manual_queue": manual }));
        return Ok(());
    }
    println!("DELAY QUEUE ({} sleeping)", delayed.len());
    for (d, wait) in delayed.iter().zip(waits) {
        let in_secs = d.due.0.saturating_sub(now.0) as f64 / 1000.0;
        println!("  {}  due in {in_secs:.1} s ({})  {wait}", d.saga_id, d.due);
    }
    println!("MANUAL QUEUE ({} waiting)", manual.len());
    for m in manual {
        let step = m
            .failed_step
            .as_ref()
            .map_or("-".to_string(), |(s, f)| format!("{s}: {}", f.message));
        println!(
            "  {}  failed {}  would compensate [{}]",
            m.saga_id,
            step,
            m.to_compensate.join(", ")
        );
    }
    match serve {
        true => println!("  -> left for you to resolve (see below)\n"),
        false => println!("  -> example-operator runs \"compensate now\" on each manual item\n"),
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("error: {e}");
        // 3: fenced, as a service would exit to be restarted.
        std::process::exit(if e.is::<Fenced>() { 3 } else { 1 });
    }
}

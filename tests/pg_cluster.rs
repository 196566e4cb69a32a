//! Several nodes on one PostgreSQL log: a node that dies loses its sagas
//! to the survivors once its lease expires, each saga goes to one of them,
//! a node that leaves hands its sagas over at once, and a fenced node's
//! writes are refused by the database. A node "dies" by having its runtime
//! dropped: its tasks, connections and lease renewals stop mid-flight and
//! it never leaves. Skipped without a PostgreSQL (tests/common/pg.rs).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly

mod common;

use common::{pg, trip_registry, Behaviour, Script};
use sagalog::{
    Engine, EngineConfig, Error, InDoubtPolicy, Phase, SagaId, SagaStatus, StartOptions, StoreError,
};
use std::time::{Duration, Instant};

/// The shortest lease the store takes, so that a dead node expires soon.
const TTL: Duration = Duration::from_millis(500);

/// How long a test waits for what a lease period or two should bring about
/// before it fails.
const PATIENCE: Duration = Duration::from_secs(30);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn new_schema() -> String {
    format!("cl_{}", SagaId::new().to_string().replace('-', ""))
}

/// The options of node `node` of the log in `schema`, with [`TTL`].
fn options(schema: &str, node: &str) -> sagalog::PgOptions {
    sagalog::PgOptions::default()
        .schema(schema)
        .node_id(node)
        .lease_ttl(TTL)
}

/// A store of the test database with `options`.
async fn connect(url: &str, options: sagalog::PgOptions) -> sagalog::PgStore {
    sagalog::PgStore::connect(url, options)
        .await
        .expect("the test database takes a node")
}

/// Node `node` of the log in `schema`, running the trip saga with `script`.
async fn node(
    url: &str,
    schema: &str,
    node: &str,
    script: &Script,
) -> (Engine, sagalog::SagaRef<String>) {
    node_with(url, options(schema, node), script).await
}

/// The node `options` name, running the trip saga with `script`.
async fn node_with(
    url: &str,
    options: sagalog::PgOptions,
    script: &Script,
) -> (Engine, sagalog::SagaRef<String>) {
    let store = connect(url, options).await;
    let (registry, trip) = trip_registry(script, InDoubtPolicy::Rerun);
    let engine = Engine::open_with_store(
        std::sync::Arc::new(store),
        registry,
        EngineConfig::default(),
    )
    .await
    .expect("the node opens");
    (engine, trip)
}

/// A client of the test database, for what the tests read and change in
/// the tables themselves.
async fn client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// Fences node `node` of the log in `schema` by hand, as a live node does
/// once its lease expired.
async fn fence(client: &tokio_postgres::Client, schema: &str, node: &str) {
    client
        .execute(
            &format!("UPDATE {schema}.sagalog_node SET state = 'dead' WHERE node_id = $1"),
            &[&node],
        )
        .await
        .unwrap();
}

/// A script whose flight step never returns: the saga stays in flight.
fn hanging() -> Script {
    let script = Script::default();
    script.set("flight", Phase::Action, Behaviour::Hang);
    script
}

/// On a runtime that is then dropped (the node dies without leaving):
/// starts `n` trips on node `a` and waits until each has called its
/// hanging flight step.
fn die_with_sagas_in_flight(url: &str, schema: &str, n: usize) -> Vec<SagaId> {
    let script = hanging();
    let rt = runtime();
    let ids = rt.block_on(async {
        let (engine, trip) = node(url, schema, "a", &script).await;
        let mut ids = Vec::new();
        for i in 0..n {
            let started = engine
                .start(&trip, &format!("guest-{i}"), StartOptions::new())
                .await
                .unwrap();
            ids.push(started.saga_id);
        }
        common::until_calls(&script, |calls| {
            calls
                .iter()
                .filter(|c| c.starts_with("flight:action"))
                .count()
                == n
        })
        .await;
        ids
    });
    drop(rt);
    ids
}

/// Waits until every saga of `ids` is terminal on `engine`; their statuses.
async fn all_terminal(engine: &Engine, ids: &[SagaId]) -> Vec<SagaStatus> {
    let give_up = Instant::now() + PATIENCE;
    loop {
        let mut statuses = Vec::new();
        for id in ids {
            statuses.push(engine.saga(*id).await.unwrap().status);
        }
        if statuses.iter().all(|s| s.is_terminal()) {
            return statuses;
        }
        assert!(Instant::now() < give_up, "not all terminal: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The owner column of each saga of `ids`.
async fn owners(url: &str, schema: &str, ids: &[SagaId]) -> Vec<Option<String>> {
    let client = client(url).await;
    let mut owners = Vec::new();
    for id in ids {
        let uuid: uuid::Uuid = id.to_string().parse().unwrap();
        let row = client
            .query_one(
                &format!("SELECT owner_node FROM {schema}.sagalog_saga WHERE saga_id = $1"),
                &[&uuid],
            )
            .await
            .unwrap();
        owners.push(row.get(0));
    }
    owners
}

#[test]
fn a_survivor_adopts_and_finishes_the_sagas_of_a_node_that_died() {
    let Some(url) = pg::url_or_skip() else { return };
    let schema = new_schema();
    let ids = die_with_sagas_in_flight(&url, &schema, 3);

    runtime().block_on(async {
        let script = Script::default();
        let (b, _) = node(&url, &schema, "b", &script).await;
        let statuses = all_terminal(&b, &ids).await;
        assert!(
            statuses.iter().all(|s| *s == SagaStatus::Committed),
            "{statuses:?}"
        );
        assert_eq!(
            script.count("flight:action"),
            3,
            "each in-doubt flight call is run again once, on the survivor"
        );
        b.shutdown(Duration::ZERO).await;
    });
}

#[test]
fn two_survivors_adopt_each_saga_of_a_dead_node_exactly_once() {
    let Some(url) = pg::url_or_skip() else { return };
    let schema = new_schema();
    let ids = die_with_sagas_in_flight(&url, &schema, 40);

    runtime().block_on(async {
        let script = Script::default();
        let ((b, _), (c, _)) = tokio::join!(
            node(&url, &schema, "b", &script),
            node(&url, &schema, "c", &script)
        );
        all_terminal(&b, &ids).await;
        assert_eq!(
            script.count("flight:action"),
            40,
            "between them the survivors ran each saga's flight call once"
        );
        assert_eq!(script.count("hotel:action"), 40);
        for owner in owners(&url, &schema, &ids).await {
            assert!(
                matches!(owner.as_deref(), Some("b") | Some("c")),
                "{owner:?}"
            );
        }
        b.shutdown(Duration::ZERO).await;
        c.shutdown(Duration::ZERO).await;
    });
}

#[test]
fn a_node_that_leaves_hands_its_sagas_over_before_its_lease_would_expire() {
    let Some(url) = pg::url_or_skip() else { return };
    let schema = new_schema();
    runtime().block_on(async {
        let script = hanging();
        let (a, trip) = node(&url, &schema, "a", &script).await;
        let id = a
            .start(&trip, &"guest".to_string(), StartOptions::new())
            .await
            .unwrap()
            .saga_id;
        common::until_calls(&script, |calls| {
            calls.iter().any(|c| c.starts_with("flight"))
        })
        .await;
        a.shutdown(Duration::ZERO).await;
        assert_eq!(owners(&url, &schema, &[id]).await, vec![None]);

        // A lease far longer than the test's patience: only the hand-over
        // lets b have the saga in time.
        let long = options(&schema, "b").lease_ttl(Duration::from_secs(600));
        let (b, _) = node_with(&url, long, &Script::default()).await;
        assert_eq!(all_terminal(&b, &[id]).await, vec![SagaStatus::Committed]);
        b.shutdown(Duration::ZERO).await;
    });
}

#[test]
fn a_fenced_node_is_refused_by_the_database_and_loses_its_lease() {
    let Some(url) = pg::url_or_skip() else { return };
    let schema = new_schema();
    runtime().block_on(async {
        let script = Script::default();
        let (a, trip) = node(&url, &schema, "a", &script).await;
        let client = client(&url).await;
        fence(&client, &schema, "a").await;

        let refused = a
            .start(&trip, &"guest".to_string(), StartOptions::new())
            .await;
        assert!(
            matches!(refused, Err(Error::Store(StoreError::Fenced { ref node, .. })) if node == "a"),
            "{refused:?}"
        );
        let lease = a.lease().expect("a node on PostgreSQL holds a lease");
        assert!(lease.is_lost());
        let rows = client
            .query_one(&format!("SELECT count(*) FROM {schema}.sagalog_log"), &[])
            .await
            .unwrap();
        assert_eq!(rows.get::<_, i64>(0), 0, "nothing of the refused start was written");
        assert_eq!(script.count("flight:action"), 0);
    });
}

#[test]
fn a_restarted_node_with_the_same_id_takes_its_sagas_back_at_once() {
    let Some(url) = pg::url_or_skip() else { return };
    let schema = new_schema();
    let ids = die_with_sagas_in_flight(&url, &schema, 2);

    runtime().block_on(async {
        let again = options(&schema, "a")
            .lease_ttl(Duration::from_secs(600))
            .take_over(true);
        let (a, _) = node_with(&url, again, &Script::default()).await;
        let statuses = all_terminal(&a, &ids).await;
        assert!(
            statuses.iter().all(|s| *s == SagaStatus::Committed),
            "{statuses:?}"
        );
        a.shutdown(Duration::ZERO).await;
    });
}

#[test]
fn outcome_follows_a_saga_that_runs_on_another_node() {
    let Some(url) = pg::url_or_skip() else { return };
    let schema = new_schema();
    runtime().block_on(async {
        let script = Script::default();
        script.set("flight", Phase::Action, Behaviour::Gate);
        let (a, trip) = node(&url, &schema, "a", &script).await;
        let (b, _) = node(&url, &schema, "b", &Script::default()).await;
        let id = a
            .start(&trip, &"guest".to_string(), StartOptions::new())
            .await
            .unwrap()
            .saga_id;
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.outcome(id).await }
        });
        common::until_calls(&script, |calls| {
            calls.iter().any(|c| c.starts_with("flight"))
        })
        .await;
        assert!(!waiting.is_finished(), "the saga is still in flight on a");
        script.open_gate();

        let outcome = tokio::time::timeout(PATIENCE, waiting)
            .await
            .expect("b learns how a's saga ended")
            .unwrap()
            .unwrap();
        assert_eq!(outcome.status, SagaStatus::Committed);
        a.shutdown(Duration::ZERO).await;
        b.shutdown(Duration::ZERO).await;
    });
}

#[test]
fn one_key_started_on_two_nodes_at_once_gives_both_callers_one_saga() {
    let Some(url) = pg::url_or_skip() else { return };
    let schema = new_schema();
    runtime().block_on(async {
        let script = Script::default();
        let ((a, trip), (b, _)) = tokio::join!(
            node(&url, &schema, "a", &script),
            node(&url, &schema, "b", &script)
        );
        for k in 0..20 {
            let key = format!("order-{k}");
            let input = "guest".to_string();
            let (on_a, on_b) = tokio::join!(
                a.start(
                    &trip,
                    &input,
                    StartOptions::new().idempotency_key(key.as_str())
                ),
                b.start(
                    &trip,
                    &input,
                    StartOptions::new().idempotency_key(key.as_str())
                )
            );
            let (on_a, on_b) = (on_a.unwrap(), on_b.unwrap());
            assert_eq!(on_a.saga_id, on_b.saga_id, "{key}");
            assert!(
                on_a.existing != on_b.existing,
                "{key}: one of them started it"
            );
        }
        assert_eq!(a.list(None).await.unwrap().len(), 20);
        a.shutdown(Duration::ZERO).await;
        b.shutdown(Duration::ZERO).await;
    });
}

/// Starts a trip on `engine` whose hotel step fails under the manual
/// strategy, and waits until it is suspended for an operator.
async fn suspended_trip(engine: &Engine, trip: &sagalog::SagaRef<String>) -> SagaId {
    let id = engine
        .start(
            trip,
            &"guest".to_string(),
            StartOptions::new().strategy(sagalog::CompensationStrategy::Manual),
        )
        .await
        .unwrap()
        .saga_id;
    let outcome = engine.outcome(id).await.unwrap();
    assert_eq!(outcome.status, SagaStatus::Suspended);
    id
}

/// Nodes `a` and `b` of the log in `schema`, with a trip that `a` runs
/// suspended for an operator (its hotel is full).
async fn a_saga_of_a_suspended_before_b(url: &str, schema: &str) -> (Engine, Engine, SagaId) {
    let script = failing_hotel();
    let (a, trip) = node(url, schema, "a", &script).await;
    let (b, _) = node(url, schema, "b", &script).await;
    let id = suspended_trip(&a, &trip).await;
    (a, b, id)
}

fn failing_hotel() -> Script {
    Script::failing(
        "hotel",
        Phase::Action,
        sagalog::StepError::permanent("full"),
    )
}

#[test]
fn an_operator_action_through_a_node_that_does_not_run_the_saga_is_carried_out_by_its_owner() {
    let Some(url) = pg::url_or_skip() else { return };
    let schema = new_schema();
    runtime().block_on(async {
        let (a, b, id) = a_saga_of_a_suspended_before_b(&url, &schema).await;

        b.compensate_now(id, "ops", "customer cancelled")
            .await
            .unwrap();

        assert_eq!(a.outcome(id).await.unwrap().status, SagaStatus::Compensated);
        assert_eq!(owners(&url, &schema, &[id]).await, [Some("a".to_string())]);
        let actions = a
            .history(id)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| matches!(e.record, Ok((_, sagalog::Record::OperatorAction(_)))))
            .count();
        assert_eq!(actions, 1, "the action was carried out once");
        a.shutdown(Duration::ZERO).await;
        b.shutdown(Duration::ZERO).await;
    });
}

#[test]
fn a_queued_action_that_makes_no_sense_is_refused_by_the_owner_with_its_reason() {
    let Some(url) = pg::url_or_skip() else { return };
    let schema = new_schema();
    runtime().block_on(async {
        let (a, b, id) = a_saga_of_a_suspended_before_b(&url, &schema).await;

        // The car was never booked: there is nothing to mark compensated.
        let refused = b.mark_compensated(id, "car", "ops", "refunded").await;

        assert!(
            matches!(refused, Err(Error::ActionRefused { ref node, .. }) if node == "a"),
            "{refused:?}"
        );
        assert_eq!(a.saga(id).await.unwrap().status, SagaStatus::Suspended);
        a.shutdown(Duration::ZERO).await;
        b.shutdown(Duration::ZERO).await;
    });
}

#[test]
fn an_operator_action_on_a_fenced_nodes_saga_is_applied_by_the_acting_node() {
    let Some(url) = pg::url_or_skip() else { return };
    let schema = new_schema();
    let script = failing_hotel();
    let rt = runtime();
    let id = rt.block_on(async {
        let (a, trip) = node(&url, &schema, "a", &script).await;
        suspended_trip(&a, &trip).await
    });
    drop(rt);

    runtime().block_on(async {
        // A lease far longer than the test: b adopts only when it opens,
        // while a is still live, so only the action can give b the saga.
        let long = options(&schema, "b").lease_ttl(Duration::from_secs(600));
        let (b, _) = node_with(&url, long, &script).await;
        fence(&client(&url).await, &schema, "a").await;

        b.compensate_now(id, "ops", "customer cancelled")
            .await
            .unwrap();
        assert_eq!(b.outcome(id).await.unwrap().status, SagaStatus::Compensated);
        assert_eq!(
            owners(&url, &schema, &[id]).await,
            vec![Some("b".to_string())]
        );
        b.shutdown(Duration::ZERO).await;
    });
}

#[test]
fn a_node_whose_adoption_fails_at_open_opens_and_adopts_at_a_later_renewal() {
    let Some(url) = pg::url_or_skip() else { return };
    let schema = new_schema();
    let ids = die_with_sagas_in_flight(&url, &schema, 3);

    runtime().block_on(async {
        let store = connect(&url, options(&schema, "b")).await;
        let faulty = common::faulty::Faulty::new(std::sync::Arc::new(store), 1, 0);
        faulty.fail_adopts(1);
        let script = Script::default();
        let (registry, _) = trip_registry(&script, InDoubtPolicy::Rerun);

        let b = Engine::open_with_store(
            std::sync::Arc::new(faulty),
            registry,
            EngineConfig::default(),
        )
        .await
        .expect("a failed adoption does not stop the open");

        let statuses = all_terminal(&b, &ids).await;
        assert!(
            statuses.iter().all(|s| *s == SagaStatus::Committed),
            "{statuses:?}"
        );
        b.shutdown(Duration::ZERO).await;
    });
}

/// Store `node` of the log in `schema`, joined with no saga types.
async fn joined_node(url: &str, schema: &str, node: &str) -> sagalog::PgStore {
    common::pg::joined(connect(url, options(schema, node)).await).await
}

#[test]
fn a_job_one_node_runs_stays_with_its_holder_until_it_leaves() {
    use sagalog::store::LogStore;
    let Some(url) = pg::url_or_skip() else { return };
    let schema = new_schema();
    runtime().block_on(async {
        let a = joined_node(&url, &schema, "a").await;
        let b = joined_node(&url, &schema, "b").await;
        let long = Duration::from_secs(600);

        assert!(a.hold_singleton("retention", long).await.unwrap());
        assert!(!b.hold_singleton("retention", long).await.unwrap());
        assert!(
            a.hold_singleton("retention", long).await.unwrap(),
            "a keeps it"
        );
        a.leave().await.unwrap();
        assert!(
            b.hold_singleton("retention", long).await.unwrap(),
            "b takes it once a left"
        );
        b.leave().await.unwrap();
    });
}

#[test]
fn a_job_whose_holder_stopped_asking_goes_to_another_node() {
    use sagalog::store::LogStore;
    let Some(url) = pg::url_or_skip() else { return };
    let schema = new_schema();
    runtime().block_on(async {
        let a = joined_node(&url, &schema, "a").await;
        let b = joined_node(&url, &schema, "b").await;
        let short = Duration::from_millis(100);

        assert!(a.hold_singleton("retention", short).await.unwrap());
        tokio::time::sleep(Duration::from_millis(300)).await;

        assert!(b
            .hold_singleton("retention", Duration::from_secs(600))
            .await
            .unwrap());
        assert!(!a.hold_singleton("retention", short).await.unwrap());
        a.leave().await.unwrap();
        b.leave().await.unwrap();
    });
}

#[test]
fn a_listing_names_the_node_that_owns_each_unfinished_saga() {
    let Some(url) = pg::url_or_skip() else { return };
    let schema = new_schema();
    runtime().block_on(async {
        let script = failing_hotel();
        let (a, trip) = node(&url, &schema, "a", &script).await;
        let (b, _) = node(&url, &schema, "b", &Script::default()).await;
        let suspended = suspended_trip(&a, &trip).await;
        let finished = b
            .start(&trip, &"bob".to_string(), StartOptions::new())
            .await
            .unwrap()
            .saga_id;
        b.outcome(finished).await.unwrap();

        let listed = b.find(&sagalog::SagaFilter::new()).await.unwrap();

        let owner_of = |id: SagaId| {
            listed
                .iter()
                .find(|l| l.saga_id == id)
                .map(|l| l.owner.clone())
        };
        assert_eq!(owner_of(suspended), Some(Some("a".to_string())));
        assert_eq!(
            owner_of(finished),
            Some(None),
            "a finished saga has no owner"
        );
        a.shutdown(Duration::ZERO).await;
        b.shutdown(Duration::ZERO).await;
    });
}

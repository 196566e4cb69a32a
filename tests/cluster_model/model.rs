//! A deterministic model of several nodes over one log: engines over a
//! `testing::MemCluster` on tokio's paused clock (the cluster's database
//! clock), driven by a list of operations (starts, one key started on two
//! nodes at once, time passing, kills, restarts, stalls past the lease,
//! graceful leaves, operator cancels), each order running a payment
//! sub-saga. After the operations the model
//! reconnects every node, lets the cluster settle, and checks its
//! invariants. Shared by `tests/cluster_model` and the `cluster_model`
//! fuzz target, which decodes the operations from bytes.

use sagalog::store::{KvLogStore, QueuedOutcome};
use sagalog::testing::{MemCluster, MemNode};
use sagalog::tools::{decode_record, frames_of};
use sagalog::{
    CompensationStrategy, Engine, EngineConfig, Phase, Record, Registry, RetryPolicy,
    SagaDefinition, SagaId, SagaRef, SagaStatus, StartOptions, StepContext, StepError, StepOptions,
};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How many nodes the model runs.
pub const NODES: usize = 3;
/// Their lease.
pub const TTL: Duration = Duration::from_secs(2);
/// How long the cluster may take to settle after the operations.
const SETTLE: Duration = Duration::from_secs(900);
/// The participant steps of the model's sagas, with their indexes in the
/// plan: `order` runs `reserve`, `charge`, the `payment` sub-saga (step 2,
/// run by the engine) and `ship`; `payment` runs `authorize` and `capture`.
const ORDER: [(u32, &str); 3] = [(0, "reserve"), (1, "charge"), (3, "ship")];
const PAYMENT: [(u32, &str); 2] = [(0, "authorize"), (1, "capture")];

/// One operation of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Start the saga of key `key` on node `node`.
    Start { node: usize, key: u8 },
    /// Start key `key` on two nodes at once.
    StartTwice { a: usize, b: usize, key: u8 },
    /// Let `ms` milliseconds pass.
    Advance { ms: u16 },
    /// `kill -9` the node.
    Kill { node: usize },
    /// Start the node again (a new process with the same node id) if it is
    /// down.
    Restart { node: usize },
    /// Stall the node for `leases` lease periods: its calls wait, its lease
    /// runs out, and survivors may fence it.
    Stall { node: usize, leases: u8 },
    /// Shut the node down gracefully: its sagas are handed over.
    Leave { node: usize },
    /// An operator cancels the saga of key `key` through node `node`.
    Cancel { node: usize, key: u8 },
}

impl Op {
    /// Decodes operations from bytes, three per operation; a short tail is
    /// ignored. Every input decodes.
    pub fn decode(bytes: &[u8]) -> Vec<Op> {
        bytes
            .chunks_exact(3)
            .map(|op| {
                let (kind, x, y) = (op[0], op[1], op[2]);
                let node = usize::from(x) % NODES;
                let other = (node + 1 + usize::from(y) % (NODES - 1)) % NODES;
                match kind % 16 {
                    0..=4 => Op::Start { node, key: y % 32 },
                    5 => Op::StartTwice {
                        a: node,
                        b: other,
                        key: y % 32,
                    },
                    6..=8 => Op::Advance {
                        ms: u16::from_le_bytes([x, y]) % 4_000,
                    },
                    9 => Op::Kill { node },
                    10 | 11 => Op::Restart { node },
                    12 => Op::Stall {
                        node,
                        leases: 2 + y % 3,
                    },
                    13 => Op::Leave { node },
                    _ => Op::Cancel { node, key: y % 32 },
                }
            })
            .collect()
    }

    /// `count` operations drawn from `seed`.
    pub fn random(seed: u64, count: usize) -> Vec<Op> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let bytes: Vec<u8> = (0..count * 3)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        Op::decode(&bytes)
    }
}

/// One participant call, as the participant saw it (every field shows in
/// a violation's message).
#[derive(Clone, Debug)]
#[allow(dead_code)]
struct Call {
    saga: SagaId,
    step: u32,
    phase: Phase,
    attempt: u32,
    token: u64,
    /// The call's intent was in the log when the call began.
    intent_logged: bool,
    /// The caller's token was fenced when the call began.
    fenced: bool,
    ok: bool,
}

/// What a run saw, for its report.
#[derive(Clone, Copy, Debug, Default)]
pub struct Figures {
    /// Sagas in the log.
    pub sagas: usize,
    /// Participant calls.
    pub calls: usize,
    /// Sagas written by more than one token (moved between nodes).
    pub moved: usize,
    /// Tokens that wrote and were fenced.
    pub fenced_writers: usize,
    /// Sub-sagas last written by another process than their parent.
    pub split: usize,
    /// Operator actions queued for the node that ran their saga, and
    /// carried out by it (or by the node that adopted the saga).
    pub queued_applied: usize,
}

impl std::ops::AddAssign for Figures {
    fn add_assign(&mut self, other: Figures) {
        self.sagas += other.sagas;
        self.calls += other.calls;
        self.moved += other.moved;
        self.fenced_writers += other.fenced_writers;
        self.split += other.split;
        self.queued_applied += other.queued_applied;
    }
}

/// A node slot: its current process, if it runs.
struct Slot {
    id: String,
    process: Option<(Arc<MemNode>, Engine, SagaRef<u64>)>,
}

/// The model of one run.
pub struct Model {
    cluster: MemCluster,
    slots: Vec<Slot>,
    calls: Arc<Mutex<Vec<Call>>>,
    /// The clients' calls in flight (each gives up after two leases).
    clients: Vec<tokio::task::JoinHandle<()>>,
}

/// How each key's saga behaves: some fail for good at the last step
/// (compensated at once or after a scheduled delay), some fail once on the
/// second and retry after a backoff long enough to sleep on a timer.
fn fails_for_good(key: u64) -> bool {
    key % 5 == 4
}

fn fails_once(key: u64) -> bool {
    key % 3 == 1
}

fn strategy(key: u64) -> CompensationStrategy {
    match key % 2 {
        0 => CompensationStrategy::Immediate,
        _ => CompensationStrategy::Scheduled { delay_ms: 3_000 },
    }
}

/// The model's sagas, whose participants run on node `node` and record
/// their calls in `calls`, checking the log as they begin.
fn registry(
    cluster: &MemCluster,
    node: &Arc<MemNode>,
    calls: &Arc<Mutex<Vec<Call>>>,
) -> (Registry, SagaRef<u64>) {
    let retry = RetryPolicy {
        max_attempts: 3,
        initial_interval_ms: 2_500,
        ..RetryPolicy::forward_default()
    };
    let participant = |step: u32, name: &'static str| {
        let (a, c) = (
            Participant::new(cluster, node, calls, step, name),
            Participant::new(cluster, node, calls, step, name),
        );
        (
            move |ctx| {
                let a: Participant = a.clone();
                async move { a.call(ctx).await }
            },
            move |ctx| {
                let c: Participant = c.clone();
                async move { c.call(ctx).await }
            },
        )
    };
    let mut registry = Registry::new();
    let mut payment = SagaDefinition::<u64>::builder("payment");
    for (step, name) in PAYMENT {
        let (action, compensation) = participant(step, name);
        payment = payment.step_with(name, StepOptions::new().retry(retry), action, compensation);
    }
    let payment = registry
        .register(payment.build().expect("the model's payment is valid"))
        .expect("registered once");
    let (action, compensation) = participant(0, "reserve");
    let mut order = SagaDefinition::<u64>::builder("order").step_with(
        "reserve",
        StepOptions::new().retry(retry),
        action,
        compensation,
    );
    let (action, compensation) = participant(1, "charge");
    order = order
        .step_with(
            "charge",
            StepOptions::new().retry(retry),
            action,
            compensation,
        )
        .sub_saga("payment", &payment, |ctx| Ok(*ctx.input()));
    let (action, compensation) = participant(3, "ship");
    order = order.step_with(
        "ship",
        StepOptions::new().retry(retry),
        action,
        compensation,
    );
    let order = registry
        .register(order.build().expect("the model's order is valid"))
        .expect("registered once");
    (registry, order)
}

#[derive(Clone)]
struct Participant {
    cluster: MemCluster,
    node: Arc<MemNode>,
    calls: Arc<Mutex<Vec<Call>>>,
    step: u32,
    name: &'static str,
}

impl Participant {
    fn new(
        cluster: &MemCluster,
        node: &Arc<MemNode>,
        calls: &Arc<Mutex<Vec<Call>>>,
        step: u32,
        name: &'static str,
    ) -> Self {
        Participant {
            cluster: cluster.clone(),
            node: node.clone(),
            calls: calls.clone(),
            step,
            name,
        }
    }

    async fn call(&self, ctx: StepContext<u64>) -> Result<(), StepError> {
        let key = *ctx.input();
        let (saga, phase, attempt) = (ctx.saga_id(), ctx.phase(), ctx.attempt());
        let token = self.node.lease().map_or(0, |l| l.token());
        let intent_logged = intent_in_log(&self.cluster, saga, self.step, phase, attempt);
        let fenced = self.cluster.is_fenced(token);
        // A call takes a while, so that kills and stalls land mid-call.
        tokio::time::sleep(Duration::from_millis(20 + key % 7 * 30)).await;
        let result = match phase {
            Phase::Action if self.name == "ship" && fails_for_good(key) => {
                Err(StepError::permanent("out of stock"))
            }
            Phase::Action if self.name == "capture" && key % 7 == 6 => {
                Err(StepError::permanent("card declined"))
            }
            Phase::Action if self.name == "charge" && fails_once(key) && attempt == 1 => {
                Err(StepError::retryable("card network busy"))
            }
            _ => Ok(()),
        };
        self.calls.lock().unwrap().push(Call {
            saga,
            step: self.step,
            phase,
            attempt,
            token,
            intent_logged,
            fenced,
            ok: result.is_ok(),
        });
        result
    }
}

/// Whether saga `saga`'s log holds the intent of this call.
fn intent_in_log(
    cluster: &MemCluster,
    saga: SagaId,
    step: u32,
    phase: Phase,
    attempt: u32,
) -> bool {
    records(cluster, saga)
        .iter()
        .any(|record| match (record, phase) {
            (Record::StepStarted(call), Phase::Action)
            | (Record::CompensationStarted(call), Phase::Compensation) => {
                call.step == step && call.attempt == attempt
            }
            _ => false,
        })
}

/// Saga `saga`'s records as the log holds them.
fn records(cluster: &MemCluster, saga: SagaId) -> Vec<Record> {
    let values = KvLogStore::read_log(cluster.log(), saga).unwrap_or_default();
    values
        .iter()
        .flat_map(|(_, value)| {
            frames_of(value)
                .into_iter()
                .map(|f| f.to_vec())
                .collect::<Vec<_>>()
        })
        .filter_map(|frame| decode_record(&frame).ok().map(|(_, r)| r))
        .collect()
}

/// Runs `future` as a client with a timeout would: it gives up after two
/// leases.
async fn answer<T>(future: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout(TTL * 2, future).await.ok()
}

impl Model {
    /// A cluster of [`NODES`] nodes, all running.
    pub async fn new() -> Model {
        let mut model = Model {
            cluster: MemCluster::new(),
            slots: (0..NODES)
                .map(|n| Slot {
                    id: format!("n{n}"),
                    process: None,
                })
                .collect(),
            calls: Arc::default(),
            clients: Vec::new(),
        };
        for node in 0..NODES {
            model.restart(node).await;
        }
        model
    }

    /// Starts a process for node `node` if none runs.
    async fn restart(&mut self, node: usize) {
        if self.slots[node].process.is_some() {
            return;
        }
        let store = self.cluster.node(&self.slots[node].id, TTL);
        let (registry, saga) = registry(&self.cluster, &store, &self.calls);
        let config = EngineConfig {
            retention: None,
            ..EngineConfig::default()
        };
        let engine = Engine::open_with_store(store.clone(), registry, config)
            .await
            .expect("a node of the model opens");
        self.slots[node].process = Some((store, engine, saga));
    }

    /// Forgets processes whose lease was lost (the service would restart
    /// them).
    fn reap(&mut self) {
        for slot in &mut self.slots {
            let lost = slot
                .process
                .as_ref()
                .is_some_and(|(_, engine, _)| engine.lease().is_some_and(|l| l.is_lost()));
            if lost {
                slot.process = None;
            }
        }
    }

    fn start_on(&mut self, node: usize, key: u8) {
        let Some((_, engine, saga)) = self.slots[node].process.clone() else {
            return;
        };
        let options = StartOptions::new()
            .idempotency_key(format!("key-{key}"))
            .strategy(strategy(u64::from(key)));
        self.clients.push(tokio::spawn(async move {
            let _ = answer(engine.start(&saga, &u64::from(key), options)).await;
        }));
    }

    /// Shuts node `node` down gracefully, as [`Op::Leave`] does, and
    /// waits for the shutdown to end: whether it did within `limit`.
    pub async fn shut_down_within(&mut self, node: usize, limit: Duration) -> bool {
        let Some((_, engine, _)) = self.slots[node].process.take() else {
            return true;
        };
        tokio::time::timeout(limit, engine.shutdown(Duration::ZERO))
            .await
            .is_ok()
    }

    /// The cluster the model runs on.
    pub fn cluster(&self) -> &MemCluster {
        &self.cluster
    }

    /// Applies one operation.
    pub async fn apply(&mut self, op: Op) {
        self.reap();
        match op {
            Op::Start { node, key } => self.start_on(node, key),
            Op::StartTwice { a, b, key } => {
                self.start_on(a, key);
                self.start_on(b, key);
            }
            Op::Advance { ms } => tokio::time::sleep(Duration::from_millis(u64::from(ms))).await,
            Op::Kill { node } => {
                if let Some((store, _engine, _)) = self.slots[node].process.take() {
                    store.kill();
                }
            }
            Op::Restart { node } => self.restart(node).await,
            Op::Stall { node, leases } => {
                if let Some((store, _, _)) = &self.slots[node].process {
                    store.cut_off();
                    let store = store.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(TTL * u32::from(leases)).await;
                        store.reconnect();
                    });
                }
            }
            Op::Leave { node } => {
                if let Some((_, engine, _)) = self.slots[node].process.take() {
                    tokio::spawn(async move { engine.shutdown(Duration::from_secs(1)).await });
                }
            }
            Op::Cancel { node, key } => {
                let Some((_, engine, _)) = self.slots[node].process.clone() else {
                    return;
                };
                // Each cancel has a reason of its own, so that the checks
                // can tell that none was carried out twice.
                let reason = format!("cancel #{}", self.clients.len());
                self.clients.push(tokio::spawn(async move {
                    let key = sagalog::IdempotencyKey::from(format!("key-{key}").as_str());
                    if let Some(Ok(Some(saga))) = answer(engine.find_by_key(&key)).await {
                        let _ = answer(engine.cancel(saga.saga_id, "model", &reason)).await;
                    }
                }));
            }
        }
    }

    /// Reconnects every node, restarts those that are down, and waits
    /// until no saga is left unfinished; then checks every invariant.
    /// Returns the run's figures, or every violation found.
    pub async fn settle_and_check(mut self) -> Result<Figures, Vec<String>> {
        self.settle().await?;
        self.check().await
    }

    /// Reconnects every node, restarts those that are down, and waits
    /// until no saga is left unfinished, or fails after a while.
    pub async fn settle(&mut self) -> Result<(), Vec<String>> {
        let began = tokio::time::Instant::now();
        for client in std::mem::take(&mut self.clients) {
            let _ = client.await;
        }
        loop {
            self.reap();
            for node in 0..NODES {
                if let Some((store, _, _)) = &self.slots[node].process {
                    store.reconnect();
                }
                self.restart(node).await;
            }
            let unfinished = KvLogStore::scan_active(self.cluster.log()).unwrap_or_default();
            if unfinished.is_empty() {
                break;
            }
            if began.elapsed() > SETTLE {
                let stuck: Vec<String> = unfinished
                    .iter()
                    .map(|(saga, _)| self.describe(*saga))
                    .collect();
                return Err(vec![format!(
                    "sagas did not settle within {}s: {}",
                    SETTLE.as_secs(),
                    stuck.join(", ")
                )]);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok(())
    }

    /// A saga that did not settle, for the failure message: its type,
    /// owner (with that node's token and liveness), writers and last record.
    fn describe(&self, saga: SagaId) -> String {
        let records = records(&self.cluster, saga);
        let kind = match records.first() {
            Some(Record::SagaStarted(started)) => started.saga_type.to_string(),
            _ => "?".into(),
        };
        let owner = self.cluster.owner(saga);
        let node = owner.as_deref().and_then(|o| self.cluster.token_of(o));
        let last: Vec<String> = records
            .iter()
            .rev()
            .take(3)
            .map(|r| match r {
                Record::CompensationFailed(failed) | Record::StepFailed(failed) => {
                    format!("{} ({:?})", r.kind_name(), failed)
                }
                _ => r.kind_name().to_string(),
            })
            .collect();
        format!(
            "{saga} ({kind}, owner {owner:?} {node:?}, writers {:?}, last records {last:?})",
            self.cluster.writers(saga)
        )
    }

    /// The status saga `key` ended with, as its log says.
    pub fn status_of(&self, key: u8) -> Option<SagaStatus> {
        let key = format!("key-{key}");
        self.cluster.sagas().into_iter().find_map(|saga| {
            let records = records(&self.cluster, saga);
            match records.first() {
                Some(Record::SagaStarted(started))
                    if started.idempotency_key.as_ref().map(|k| k.as_str())
                        == Some(key.as_str()) =>
                {
                    status_in(&records)
                }
                _ => None,
            }
        })
    }

    /// Checks every invariant over the settled cluster; the run's figures,
    /// or every violation found.
    pub async fn check(&self) -> Result<Figures, Vec<String>> {
        let mut problems = Vec::new();
        let calls = self.calls.lock().unwrap().clone();
        for call in &calls {
            if !call.intent_logged {
                problems.push(format!("a call had no durable intent: {call:?}"));
            }
            if call.fenced {
                problems.push(format!("a fenced token started a call: {call:?}"));
            }
        }
        let sagas = self.cluster.sagas();
        let mut figures = Figures {
            sagas: sagas.len(),
            calls: calls.len(),
            ..Figures::default()
        };
        let mut writers_fenced = HashSet::new();
        let mut by_key: HashMap<String, Vec<SagaId>> = HashMap::new();
        let mut reasons: HashSet<String> = HashSet::new();
        for &saga in &sagas {
            let writers = self.cluster.writers(saga);
            let mut runs: Vec<u64> = Vec::new();
            for token in &writers {
                if runs.last() != Some(token) {
                    if runs.contains(token) {
                        problems.push(format!("saga {saga}: token {token} wrote again after another token (writers {writers:?})"));
                    }
                    runs.push(*token);
                }
            }
            if runs.len() > 1 {
                figures.moved += 1;
            }
            writers_fenced.extend(runs.iter().copied().filter(|t| self.cluster.is_fenced(*t)));
            let records = records(&self.cluster, saga);
            if let Some(Record::SagaStarted(started)) = records.first() {
                if let Some(key) = &started.idempotency_key {
                    by_key.entry(key.to_string()).or_default().push(saga);
                }
            }
            self.check_outcome(saga, &records, &calls, &mut problems);
            for record in &records {
                if let Record::OperatorAction(action) = record {
                    if !reasons.insert(action.reason.clone()) {
                        problems.push(format!(
                            "saga {saga}: the operator's '{}' was carried out twice",
                            action.reason
                        ));
                    }
                }
            }
            if self.check_child(saga, &records, &mut problems) {
                figures.split += 1;
            }
        }
        figures.fenced_writers = writers_fenced.len();
        for (saga, outcome) in self.cluster.queued() {
            match outcome {
                QueuedOutcome::Applied { .. } => figures.queued_applied += 1,
                QueuedOutcome::Pending => problems.push(format!(
                    "an action queued for saga {saga} was never carried out or refused"
                )),
                _ => {}
            }
        }
        for (key, sagas) in by_key {
            if sagas.len() > 1 {
                problems.push(format!("key {key} has {} sagas: {sagas:?}", sagas.len()));
            }
        }
        if let Some((_, engine, _)) = self.slots.iter().find_map(|s| s.process.clone()) {
            match engine.verify().await {
                Ok(report) if report.is_clean() => {}
                Ok(report) => {
                    problems.push(format!("verify found problems: {:?}", report.problems))
                }
                Err(e) => problems.push(format!("verify failed: {e}")),
            }
        }
        match problems.is_empty() {
            true => Ok(figures),
            false => Err(problems),
        }
    }

    /// The saga's end agrees with the calls made: a committed saga's every
    /// action succeeded; a compensated one compensated every step whose
    /// action may have taken effect.
    fn check_outcome(
        &self,
        saga: SagaId,
        records: &[Record],
        calls: &[Call],
        problems: &mut Vec<String>,
    ) {
        let steps: &[(u32, &str)] = match records.first() {
            Some(Record::SagaStarted(started)) if started.saga_type.as_str() == "payment" => {
                &PAYMENT
            }
            _ => &ORDER,
        };
        let of = |step: u32, phase: Phase| {
            calls
                .iter()
                .filter(move |c| c.saga == saga && c.step == step && c.phase == phase)
        };
        match status_in(records) {
            Some(SagaStatus::Committed) => {
                for (step, name) in steps {
                    if !of(*step, Phase::Action).any(|c| c.ok) {
                        problems.push(format!("saga {saga} committed without a successful {name}"));
                    }
                }
            }
            Some(SagaStatus::Compensated) => {
                for (step, name) in steps {
                    let acted = of(*step, Phase::Action).any(|c| c.ok);
                    if acted && !of(*step, Phase::Compensation).any(|c| c.ok) {
                        problems.push(format!("saga {saga} compensated without undoing {name}"));
                    }
                }
            }
            other => problems.push(format!("saga {saga} ended {other:?}")),
        }
    }

    /// A sub-saga ends as its parent needs: committed under a committed
    /// parent, compensated under a compensated one. True when the two
    /// were last written by different processes.
    fn check_child(&self, child: SagaId, records: &[Record], problems: &mut Vec<String>) -> bool {
        let Some(Record::SagaStarted(started)) = records.first() else {
            return false;
        };
        let Some(link) = started.parent else {
            return false;
        };
        let parent = status_in(&self::records(&self.cluster, link.saga));
        let status = status_in(records);
        let agrees = match parent {
            Some(SagaStatus::Committed) => status == Some(SagaStatus::Committed),
            Some(SagaStatus::Compensated) => status == Some(SagaStatus::Compensated),
            _ => false,
        };
        if !agrees {
            problems.push(format!(
                "sub-saga {child} ended {status:?} under parent {} that ended {parent:?}",
                link.saga
            ));
        }
        self.cluster.writers(child).last() != self.cluster.writers(link.saga).last()
    }
}

/// The status the saga's last `SagaFinished` record gives it.
fn status_in(records: &[Record]) -> Option<SagaStatus> {
    records.iter().rev().find_map(|r| match r {
        Record::SagaFinished(finished) => Some(finished.status),
        _ => None,
    })
}

/// Runs `ops` on a fresh cluster and checks the invariants.
pub async fn run(ops: &[Op]) -> Result<Figures, Vec<String>> {
    let mut model = Model::new().await;
    for op in ops {
        model.apply(*op).await;
    }
    model.settle_and_check().await
}

/// A current-thread runtime on paused time, as the model needs.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime for the model")
}

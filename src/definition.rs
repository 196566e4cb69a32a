//! What a saga is: a named, versioned list of steps, each an async action
//! and its compensation, plus the policies recorded with every instance.
//!
//! Build a [`SagaDefinition`] with [`SagaDefinition::builder`]; `build`
//! checks everything at once and reports every problem in one
//! [`DefinitionError`]. Register it in a [`Registry`] to get a typed
//! [`SagaRef`], which is what `Engine::start` takes.

use crate::ids::{millis, Attempt, SagaId, SagaType, StepIndex, StepName};
use crate::log::codec::{self, DecodeError};
use crate::log::record::{ErrorClass, PlanKind, SagaPlan, StepFailure, StepPlan};
use crate::policy::{CompensationStrategy, InDoubtPolicy, RetryPolicy};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Longest saga type or step name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Most steps one saga may have.
pub const MAX_STEPS: usize = 1024;

/// Which call of a step (or TCC branch) is being made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The forward action of a saga step.
    Action,
    /// The compensation that undoes a saga step's action, or a committed
    /// TCC branch (the 2PC adapter's `compensate`).
    Compensation,
    /// TCC: reserve the resources.
    Try,
    /// TCC: use what the try reserved.
    Confirm,
    /// TCC: release what the try reserved (also called when the try never
    /// ran or failed: the participant's barrier makes that an empty rollback).
    Cancel,
}

impl Phase {
    /// `"action"`, `"compensation"`, `"try"`, `"confirm"` or `"cancel"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Action => "action",
            Phase::Compensation => "compensation",
            Phase::Try => "try",
            Phase::Confirm => "confirm",
            Phase::Cancel => "cancel",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error a participant returns. Its class tells the engine what the
/// failed call did: see [`ErrorClass`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{class:?}: {message}")]
pub struct StepError {
    class: ErrorClass,
    message: String,
}

impl StepError {
    /// The call certainly had no effect and never will succeed (e.g. card
    /// declined). Not retried; the step is not compensated.
    pub fn permanent(message: impl Into<String>) -> Self {
        StepError {
            class: ErrorClass::Permanent,
            message: message.into(),
        }
    }

    /// The call had no effect but may succeed if tried again (e.g. service
    /// unavailable). Retried under the saga's retry policy.
    pub fn retryable(message: impl Into<String>) -> Self {
        StepError {
            class: ErrorClass::Retryable,
            message: message.into(),
        }
    }

    /// The call may have taken effect (e.g. timeout). Retried like a
    /// retryable error, and compensated if the saga compensates.
    pub fn unknown(message: impl Into<String>) -> Self {
        StepError {
            class: ErrorClass::Unknown,
            message: message.into(),
        }
    }

    /// The call may have taken effect and trying again cannot help (e.g.
    /// its output can never be stored). Not retried; the step is
    /// compensated.
    pub fn in_doubt(message: impl Into<String>) -> Self {
        StepError {
            class: ErrorClass::InDoubt,
            message: message.into(),
        }
    }

    /// What the failure says about the call's effect.
    pub fn class(&self) -> ErrorClass {
        self.class
    }

    /// The participant's message.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn into_failure(self) -> StepFailure {
        StepFailure {
            class: self.class,
            message: self.message,
        }
    }
}

/// Everything a participant call receives: the saga's input, earlier steps'
/// outputs, and the identity of this call.
///
/// [`StepContext::idempotency_key`] is the same for every attempt of one
/// step's action (and, separately, its compensation), and differs between
/// sagas and steps: participants key their effects by it so that a repeated
/// call (retry, or re-run after a crash) changes nothing twice.
pub struct StepContext<I> {
    saga_id: SagaId,
    step: StepName,
    phase: Phase,
    attempt: Attempt,
    key: String,
    input: Arc<I>,
    names: Arc<[StepName]>,
    outputs: Arc<[Option<Vec<u8>>]>,
}

impl<I> StepContext<I> {
    /// The saga's id.
    pub fn saga_id(&self) -> SagaId {
        self.saga_id
    }

    /// This step's name.
    pub fn step(&self) -> &StepName {
        &self.step
    }

    /// Action or compensation.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Attempt number of this call, from 1. Attempts after a crash count too.
    pub fn attempt(&self) -> Attempt {
        self.attempt
    }

    /// `"{saga id}/{step}/{phase}"`: stable across attempts and restarts.
    pub fn idempotency_key(&self) -> &str {
        &self.key
    }

    /// The saga's input.
    pub fn input(&self) -> &I {
        &self.input
    }

    /// The output of step `step`, which must have succeeded.
    ///
    /// In an action, every earlier step has succeeded. In a compensation,
    /// the step's own output is absent if its action was left in doubt: use
    /// [`StepContext::output_if_any`] there.
    pub fn output<T: DeserializeOwned>(&self, step: &str) -> Result<T, StepError> {
        self.output_if_any(step)?.ok_or_else(|| {
            StepError::permanent(format!(
                "step '{step}' has no output (it has not succeeded)"
            ))
        })
    }

    /// The output of step `step` if it succeeded, `None` if it has not.
    /// Errors if no step has that name or its output does not decode as `T`.
    pub fn output_if_any<T: DeserializeOwned>(&self, step: &str) -> Result<Option<T>, StepError> {
        let index = self
            .names
            .iter()
            .position(|n| n.as_str() == step)
            .ok_or_else(|| StepError::permanent(format!("the saga has no step named '{step}'")))?;
        match self.outputs.get(index).and_then(|o| o.as_deref()) {
            None => Ok(None),
            Some(bytes) => codec::decode_value(bytes).map(Some).map_err(|e| {
                StepError::permanent(format!(
                    "output of step '{step}' does not decode as {}: {e}",
                    std::any::type_name::<T>()
                ))
            }),
        }
    }
}

/// A boxed, sendable future: what erased participants return.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type ActionFn<I> =
    Arc<dyn Fn(StepContext<I>) -> BoxFuture<Result<Vec<u8>, StepError>> + Send + Sync>;
type CompensationFn<I> =
    Arc<dyn Fn(StepContext<I>) -> BoxFuture<Result<(), StepError>> + Send + Sync>;

struct StepDef<I> {
    name: StepName,
    options: StepOptions,
    action: ActionFn<I>,
    /// The compensation of a saga step; the cancel of a TCC branch.
    compensation: CompensationFn<I>,
    /// TCC: the confirm.
    confirm: Option<CompensationFn<I>>,
    /// TCC: the compensation of a committed branch (2PC `compensate`).
    undo: Option<CompensationFn<I>>,
    /// Indices of the steps this one runs after, resolved by `build`.
    after: Vec<StepIndex>,
    /// A sub-saga step: the child's type, and how to make its input.
    child: Option<(SagaType, ChildInputFn<I>)>,
}

type ChildInputFn<I> = Arc<dyn Fn(&StepContext<I>) -> Result<Vec<u8>, StepError> + Send + Sync>;

/// Which steps a step runs after.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum After {
    /// The step before it (a sequential saga; a TCC transaction that tries
    /// in order).
    #[default]
    Previous,
    /// The same steps as the step before it: the two run in parallel.
    WithPrevious,
    /// Exactly these steps (none: from the start).
    Steps(Vec<StepName>),
}

/// Per-step overrides of the saga's settings; see [`SagaBuilder::step_with`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepOptions {
    strategy: Option<CompensationStrategy>,
    retry: Option<RetryPolicy>,
    timeout: Option<Duration>,
    after: Option<After>,
}

impl StepOptions {
    /// No overrides.
    pub fn new() -> Self {
        Self::default()
    }

    /// The strategy that applies when this step fails for good.
    pub fn strategy(mut self, strategy: CompensationStrategy) -> Self {
        self.strategy = Some(strategy);
        self
    }

    /// The retry policy of this step's action.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Per-attempt timeout of this step's action and compensation. A call
    /// that times out may have taken effect: it is an `Unknown` failure.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Runs this step once every step named in `steps` has succeeded (an
    /// empty list: at the start), instead of after the step before it.
    /// Steps may only name steps declared before them. Compensation keeps
    /// the same order backwards: a step is compensated only after every
    /// step that runs after it is compensated or never ran.
    pub fn after<S: Into<StepName>>(mut self, steps: impl IntoIterator<Item = S>) -> Self {
        self.after = Some(After::Steps(steps.into_iter().map(Into::into).collect()));
        self
    }

    /// Runs this step in parallel with the step declared before it: after
    /// the same steps as that one. A run of such steps forms a group.
    pub fn parallel_with_previous(mut self) -> Self {
        self.after = Some(After::WithPrevious);
        self
    }
}

/// A participant in the shape of the seed framework's two-phase commit:
/// `prepare` / `commit` / `rollback`, plus `compensate` to reverse a
/// committed transaction later. Register it with
/// [`SagaBuilder::participant`]; it maps onto TCC as prepare = try,
/// commit = confirm, rollback = cancel.
///
/// Every method may be called more than once for one transaction (retries,
/// re-runs after a crash) and must be idempotent by
/// [`StepContext::idempotency_key`]; `rollback` may be called although
/// `prepare` never ran or failed, and must then succeed without effect.
/// [`crate::barrier::Barrier`] provides all three guarantees.
pub trait TwoPhaseParticipant<I>: Send + Sync + 'static {
    /// Checks and reserves (TCC try).
    fn prepare(&self, ctx: StepContext<I>) -> impl Future<Output = Result<(), StepError>> + Send;
    /// Makes the prepared change real (TCC confirm). Retried until it succeeds.
    fn commit(&self, ctx: StepContext<I>) -> impl Future<Output = Result<(), StepError>> + Send;
    /// Releases what `prepare` reserved (TCC cancel). Retried until it succeeds.
    fn rollback(&self, ctx: StepContext<I>) -> impl Future<Output = Result<(), StepError>> + Send;
    /// Reverses a committed change, when an operator compensates a
    /// committed transaction.
    fn compensate(&self, ctx: StepContext<I>)
        -> impl Future<Output = Result<(), StepError>> + Send;
}

/// A saga type: its steps and policies. `I` is the saga's input type.
pub struct SagaDefinition<I> {
    saga_type: SagaType,
    version: u32,
    steps: Vec<StepDef<I>>,
    names: Arc<[StepName]>,
    strategy: CompensationStrategy,
    retry: RetryPolicy,
    compensation_retry: RetryPolicy,
    in_doubt: InDoubtPolicy,
    timeout: Option<Duration>,
    kind: PlanKind,
    max_parallel: u32,
}

impl<I> SagaDefinition<I>
where
    I: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Starts a definition of saga type `saga_type`, version 1, immediate
    /// compensation, default retry policies, in-doubt steps re-run.
    pub fn builder(saga_type: impl Into<SagaType>) -> SagaBuilder<I> {
        SagaBuilder {
            saga_type: saga_type.into(),
            version: 1,
            steps: Vec::new(),
            strategy: CompensationStrategy::Immediate,
            retry: RetryPolicy::forward_default(),
            compensation_retry: RetryPolicy::compensation_default(),
            in_doubt: InDoubtPolicy::Rerun,
            timeout: None,
            kind: PlanKind::Saga,
            max_parallel: DEFAULT_MAX_PARALLEL,
            parallel_tries: false,
        }
    }

    /// Starts a TCC transaction type `saga_type`: add branches with
    /// [`SagaBuilder::branch`] or [`SagaBuilder::participant`]. Tries run
    /// in declaration order unless [`SagaBuilder::parallel_tries`]; if every
    /// try succeeds every branch is confirmed, otherwise every branch whose
    /// try started is cancelled. Confirms and cancels are retried under the
    /// compensation retry policy, then the transaction waits in the manual
    /// queue. The outcome is `Committed` or `RolledBack`.
    pub fn tcc(saga_type: impl Into<SagaType>) -> SagaBuilder<I> {
        let mut builder = Self::builder(saga_type);
        builder.kind = PlanKind::Tcc {
            async_confirm: false,
            async_cancel: false,
        };
        builder
    }

    /// The saga type.
    pub fn saga_type(&self) -> &SagaType {
        &self.saga_type
    }

    /// The plan recorded in each instance's start record.
    pub fn plan(&self) -> SagaPlan {
        SagaPlan {
            steps: self
                .steps
                .iter()
                .map(|s| StepPlan {
                    name: s.name.clone(),
                    strategy: s.options.strategy,
                    retry: s.options.retry,
                    timeout_ms: s.options.timeout.map(millis),
                    after: s.after.clone(),
                    child: s.child.as_ref().map(|(t, _)| t.clone()),
                })
                .collect(),
            strategy: self.strategy,
            retry: self.retry,
            compensation_retry: self.compensation_retry,
            in_doubt: self.in_doubt,
            timeout_ms: self.timeout.map(millis),
            kind: self.kind,
            max_parallel: self.max_parallel,
        }
    }
}

/// Most participant calls of one saga in flight at once, unless
/// [`SagaBuilder::max_parallel`] says otherwise.
pub const DEFAULT_MAX_PARALLEL: u32 = 16;

/// Collects a definition; see [`SagaDefinition::builder`] and
/// [`SagaDefinition::tcc`].
pub struct SagaBuilder<I> {
    saga_type: SagaType,
    version: u32,
    steps: Vec<StepDef<I>>,
    strategy: CompensationStrategy,
    retry: RetryPolicy,
    compensation_retry: RetryPolicy,
    in_doubt: InDoubtPolicy,
    timeout: Option<Duration>,
    kind: PlanKind,
    max_parallel: u32,
    parallel_tries: bool,
}

impl<I> SagaBuilder<I>
where
    I: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Sets the definition version (default 1). Bump it when steps change
    /// incompatibly: recovery refuses to run an instance started under
    /// another version, and parks it instead.
    pub fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// Appends a step: `action` runs forward, `compensation` undoes it.
    ///
    /// Both may be called more than once for one saga (retries, re-runs
    /// after a crash) and must be idempotent by
    /// [`StepContext::idempotency_key`]. The action's output is stored in
    /// the log and readable by later steps through [`StepContext::output`].
    /// A compensation may run although the action's effect never happened
    /// (the action was in doubt); it must then succeed without effect.
    pub fn step<A, AF, O, C, CF>(
        self,
        name: impl Into<StepName>,
        action: A,
        compensation: C,
    ) -> Self
    where
        A: Fn(StepContext<I>) -> AF + Send + Sync + 'static,
        AF: Future<Output = Result<O, StepError>> + Send + 'static,
        O: Serialize,
        C: Fn(StepContext<I>) -> CF + Send + Sync + 'static,
        CF: Future<Output = Result<(), StepError>> + Send + 'static,
    {
        self.step_with(name, StepOptions::new(), action, compensation)
    }

    /// Appends a step with its own strategy, retry policy or timeout; see
    /// [`SagaBuilder::step`] for the contract of `action` and `compensation`.
    pub fn step_with<A, AF, O, C, CF>(
        mut self,
        name: impl Into<StepName>,
        options: StepOptions,
        action: A,
        compensation: C,
    ) -> Self
    where
        A: Fn(StepContext<I>) -> AF + Send + Sync + 'static,
        AF: Future<Output = Result<O, StepError>> + Send + 'static,
        O: Serialize,
        C: Fn(StepContext<I>) -> CF + Send + Sync + 'static,
        CF: Future<Output = Result<(), StepError>> + Send + 'static,
    {
        let action: ActionFn<I> = Arc::new(move |ctx| {
            let call = action(ctx);
            Box::pin(async move {
                let output = call.await?;
                // The action ran, so its effect may have happened; an output
                // that cannot be logged never will be, so running it again
                // cannot help: settle it in doubt, to be compensated.
                codec::encode_output(&output).map_err(|e| {
                    StepError::in_doubt(format!(
                        "the step's output could not be stored, so the step is not run again and is compensated: {e}"
                    ))
                })
            })
        });
        let compensation: CompensationFn<I> = Arc::new(move |ctx| Box::pin(compensation(ctx)));
        self.steps.push(StepDef {
            name: name.into(),
            options,
            action,
            compensation,
            confirm: None,
            undo: None,
            after: Vec::new(),
            child: None,
        });
        self
    }

    /// Appends a step that runs a saga of type `child` as a sub-saga: the
    /// engine starts it (once: a re-run after a crash finds the same child)
    /// with the input `input` makes, and the step waits for its outcome.
    /// The step succeeds when the child commits (its output is the child's
    /// [`SagaId`]) and fails permanently when the child ends compensated.
    /// Compensating the step compensates the committed child (or cancels a
    /// child still running). The child's start record links to this saga
    /// and step; register `child`'s definition in the same registry.
    pub fn sub_saga<J, F>(self, name: impl Into<StepName>, child: &SagaRef<J>, input: F) -> Self
    where
        J: Serialize,
        F: Fn(&StepContext<I>) -> Result<J, StepError> + Send + Sync + 'static,
    {
        self.sub_saga_with(name, StepOptions::new(), child, input)
    }

    /// Like [`SagaBuilder::sub_saga`], with the step's own options.
    pub fn sub_saga_with<J, F>(
        mut self,
        name: impl Into<StepName>,
        options: StepOptions,
        child: &SagaRef<J>,
        input: F,
    ) -> Self
    where
        J: Serialize,
        F: Fn(&StepContext<I>) -> Result<J, StepError> + Send + Sync + 'static,
    {
        let unreachable = |_: StepContext<I>| async {
            Err::<(), _>(StepError::permanent(
                "internal error: a sub-saga step is run by the engine",
            ))
        };
        self = self.step_with(name, options, unreachable, unreachable);
        let make: ChildInputFn<I> = Arc::new(move |ctx| {
            let value = input(ctx)?;
            codec::encode_value(&value).map_err(|e| {
                StepError::permanent(format!("the sub-saga's input could not be stored: {e}"))
            })
        });
        if let Some(step) = self.steps.last_mut() {
            step.child = Some((child.saga_type().clone(), make));
        }
        self
    }

    /// Appends a TCC branch: `try_` reserves, `confirm` uses the
    /// reservation, `cancel` releases it. See [`SagaDefinition::tcc`] for
    /// the flow and [`TwoPhaseParticipant`] for the contract of each call
    /// (idempotent; cancel without try is an empty rollback). The try's
    /// output is readable by later branches through [`StepContext::output`].
    pub fn branch<T, TF, O, C, CF, X, XF>(
        self,
        name: impl Into<StepName>,
        try_: T,
        confirm: C,
        cancel: X,
    ) -> Self
    where
        T: Fn(StepContext<I>) -> TF + Send + Sync + 'static,
        TF: Future<Output = Result<O, StepError>> + Send + 'static,
        O: Serialize,
        C: Fn(StepContext<I>) -> CF + Send + Sync + 'static,
        CF: Future<Output = Result<(), StepError>> + Send + 'static,
        X: Fn(StepContext<I>) -> XF + Send + Sync + 'static,
        XF: Future<Output = Result<(), StepError>> + Send + 'static,
    {
        self.branch_with(name, StepOptions::new(), try_, confirm, cancel)
    }

    /// Like [`SagaBuilder::branch`], with the branch's own retry policy,
    /// timeout or position ([`StepOptions::after`]).
    pub fn branch_with<T, TF, O, C, CF, X, XF>(
        mut self,
        name: impl Into<StepName>,
        options: StepOptions,
        try_: T,
        confirm: C,
        cancel: X,
    ) -> Self
    where
        T: Fn(StepContext<I>) -> TF + Send + Sync + 'static,
        TF: Future<Output = Result<O, StepError>> + Send + 'static,
        O: Serialize,
        C: Fn(StepContext<I>) -> CF + Send + Sync + 'static,
        CF: Future<Output = Result<(), StepError>> + Send + 'static,
        X: Fn(StepContext<I>) -> XF + Send + Sync + 'static,
        XF: Future<Output = Result<(), StepError>> + Send + 'static,
    {
        self = self.step_with(name, options, try_, cancel);
        if let Some(step) = self.steps.last_mut() {
            step.confirm = Some(Arc::new(move |ctx| Box::pin(confirm(ctx))));
        }
        self
    }

    /// Appends a TCC branch made of a [`TwoPhaseParticipant`]: prepare =
    /// try, commit = confirm, rollback = cancel, and compensate reverses the
    /// branch when an operator compensates the committed transaction.
    pub fn participant<P: TwoPhaseParticipant<I>>(
        self,
        name: impl Into<StepName>,
        participant: Arc<P>,
    ) -> Self {
        let (prepare, commit, rollback, compensate) = (
            participant.clone(),
            participant.clone(),
            participant.clone(),
            participant,
        );
        let mut builder = self.branch(
            name,
            move |ctx| {
                let p = prepare.clone();
                async move { p.prepare(ctx).await }
            },
            move |ctx| {
                let p = commit.clone();
                async move { p.commit(ctx).await }
            },
            move |ctx| {
                let p = rollback.clone();
                async move { p.rollback(ctx).await }
            },
        );
        if let Some(step) = builder.steps.last_mut() {
            step.undo = Some(Arc::new(move |ctx| {
                let p = compensate.clone();
                Box::pin(async move { p.compensate(ctx).await })
            }));
        }
        builder
    }

    /// TCC: every branch declared without [`StepOptions::after`] is tried
    /// at the start, in parallel (up to [`SagaBuilder::max_parallel`]).
    pub fn parallel_tries(mut self) -> Self {
        self.parallel_tries = true;
        self
    }

    /// TCC: report the outcome as soon as the commit decision is durable
    /// (status `Committing`); confirms run in the background and survive
    /// restarts (the seed's asyncConfirm).
    pub fn async_confirm(mut self) -> Self {
        if let PlanKind::Tcc { async_confirm, .. } = &mut self.kind {
            *async_confirm = true;
        }
        self
    }

    /// TCC: report the outcome as soon as the rollback decision is durable
    /// (status `RollingBack`); cancels run in the background and survive
    /// restarts (the seed's asyncCancel).
    pub fn async_cancel(mut self) -> Self {
        if let PlanKind::Tcc { async_cancel, .. } = &mut self.kind {
            *async_cancel = true;
        }
        self
    }

    /// Most participant calls of one saga in flight at once (default
    /// [`DEFAULT_MAX_PARALLEL`]); matters only for steps that may run in
    /// parallel.
    pub fn max_parallel(mut self, limit: u32) -> Self {
        self.max_parallel = limit;
        self
    }

    /// Sets a per-attempt timeout for every participant call of this saga
    /// (steps may override it). A call that times out may have taken
    /// effect: it is an `Unknown` failure, retried and compensated as such.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the compensation strategy (default immediate).
    pub fn strategy(mut self, strategy: CompensationStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Sets the retry policy of forward actions.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Sets the retry policy of compensations; when it is used up the saga
    /// is suspended for an operator.
    pub fn compensation_retry(mut self, policy: RetryPolicy) -> Self {
        self.compensation_retry = policy;
        self
    }

    /// Sets what recovery does with an action left in doubt (default re-run).
    pub fn in_doubt(mut self, policy: InDoubtPolicy) -> Self {
        self.in_doubt = policy;
        self
    }

    /// Checks the definition; reports every problem at once.
    pub fn build(mut self) -> Result<SagaDefinition<I>, DefinitionError> {
        let mut problems = Vec::new();
        let tcc = matches!(self.kind, PlanKind::Tcc { .. });
        if self.max_parallel == 0 {
            problems.push("max_parallel is 0; allow at least one call in flight".to_string());
        }
        for step in &self.steps {
            if tcc && step.confirm.is_none() {
                problems.push(format!(
                    "'{}' is a step, but a TCC transaction has branches; add it with .branch(...) or .participant(...)",
                    step.name
                ));
            }
            if !tcc && step.confirm.is_some() {
                problems.push(format!(
                    "'{}' is a TCC branch, but this is a saga; start with SagaDefinition::tcc(...) for branches",
                    step.name
                ));
            }
        }
        let default_after = if tcc && self.parallel_tries {
            After::Steps(Vec::new())
        } else {
            After::Previous
        };
        let mut resolved: Vec<Vec<StepIndex>> = Vec::with_capacity(self.steps.len());
        for (index, step) in self.steps.iter().enumerate() {
            let after = match step.options.after.clone().unwrap_or(default_after.clone()) {
                After::Previous if index == 0 => Vec::new(),
                After::Previous => vec![index as StepIndex - 1],
                After::WithPrevious => resolved.last().cloned().unwrap_or_default(),
                After::Steps(names) => names
                    .iter()
                    .filter_map(|name| {
                        let found = self.steps[..index].iter().position(|s| s.name == *name);
                        if found.is_none() {
                            problems.push(format!(
                                "step '{}' runs after '{name}', which is not a step declared before it",
                                step.name
                            ));
                        }
                        found.map(|i| i as StepIndex)
                    })
                    .collect(),
            };
            resolved.push(after);
        }
        for (step, after) in self.steps.iter_mut().zip(resolved) {
            step.after = after;
        }
        check_name(&mut problems, "saga type", self.saga_type.as_str());
        if self.steps.is_empty() {
            problems.push("it has no steps; add at least one with .step(...)".to_string());
        }
        if self.steps.len() > MAX_STEPS {
            problems.push(format!(
                "it has {} steps, over the limit of {MAX_STEPS}; split it into smaller sagas",
                self.steps.len()
            ));
        }
        let mut seen = HashSet::new();
        for step in &self.steps {
            check_name(&mut problems, "step name", step.name.as_str());
            if !seen.insert(step.name.as_str()) {
                problems.push(format!(
                    "step name '{}' is used twice; step names must be unique",
                    step.name
                ));
            }
        }
        problems.extend(self.retry.problems("retry policy"));
        problems.extend(
            self.compensation_retry
                .problems("compensation retry policy"),
        );
        if !problems.is_empty() {
            return Err(DefinitionError {
                saga_type: self.saga_type.to_string(),
                problems,
            });
        }
        let names: Arc<[StepName]> = self.steps.iter().map(|s| s.name.clone()).collect();
        Ok(SagaDefinition {
            saga_type: self.saga_type,
            version: self.version,
            steps: self.steps,
            names,
            strategy: self.strategy,
            retry: self.retry,
            compensation_retry: self.compensation_retry,
            in_doubt: self.in_doubt,
            timeout: self.timeout,
            kind: self.kind,
            max_parallel: self.max_parallel,
        })
    }
}

fn check_name(problems: &mut Vec<String>, what: &str, name: &str) {
    if name.trim().is_empty() {
        problems.push(format!("{what} is empty"));
    } else if name.len() > MAX_NAME_LEN {
        problems.push(format!(
            "{what} '{}...' is {} bytes, over the {MAX_NAME_LEN}-byte limit",
            &name[..name.char_indices().nth(16).map_or(name.len(), |(i, _)| i)],
            name.len()
        ));
    }
}

/// A definition is unusable. Lists every problem found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("saga definition '{saga_type}' is invalid: {}", problems.join("; "))]
pub struct DefinitionError {
    saga_type: String,
    problems: Vec<String>,
}

impl DefinitionError {
    /// The saga type the definition was for.
    pub fn saga_type(&self) -> &str {
        &self.saga_type
    }

    /// Each problem, described for a person.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }
}

/// A saga definition with its input type erased, as the engine runs it.
pub(crate) trait ErasedSaga: Send + Sync {
    fn version(&self) -> u32;
    fn plan(&self) -> SagaPlan;
    fn step_names(&self) -> &Arc<[StepName]>;
    fn decode_input(&self, bytes: &[u8]) -> Result<ErasedInput, DecodeError>;
    fn call(&self, call: CallSpec, input: &ErasedInput) -> BoxFuture<Result<Vec<u8>, StepError>>;
    /// The encoded input of the sub-saga that step `call.step` runs.
    fn child_input(&self, call: CallSpec, input: &ErasedInput) -> Result<Vec<u8>, StepError>;
}

/// A decoded saga input, shared by every call of one saga run.
pub(crate) type ErasedInput = Arc<dyn Any + Send + Sync>;

/// One participant call, as the engine asks for it.
pub(crate) struct CallSpec {
    pub saga_id: SagaId,
    pub step: StepIndex,
    pub phase: Phase,
    pub attempt: Attempt,
    pub outputs: Arc<[Option<Vec<u8>>]>,
}

impl<I> ErasedSaga for SagaDefinition<I>
where
    I: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn version(&self) -> u32 {
        self.version
    }

    fn plan(&self) -> SagaPlan {
        SagaDefinition::plan(self)
    }

    fn step_names(&self) -> &Arc<[StepName]> {
        &self.names
    }

    fn decode_input(&self, bytes: &[u8]) -> Result<ErasedInput, DecodeError> {
        let input: I = codec::decode_value(bytes)?;
        Ok(Arc::new(input))
    }

    fn child_input(&self, call: CallSpec, input: &ErasedInput) -> Result<Vec<u8>, StepError> {
        let (def, ctx) = self.context(call, input)?;
        match &def.child {
            Some((_, make)) => make(&ctx),
            None => Err(StepError::permanent(
                "internal error: the step runs no sub-saga",
            )),
        }
    }

    fn call(&self, call: CallSpec, input: &ErasedInput) -> BoxFuture<Result<Vec<u8>, StepError>> {
        let phase = call.phase;
        let (def, ctx) = match self.context(call, input) {
            Ok(found) => found,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let unit = match phase {
            Phase::Action | Phase::Try => return (def.action)(ctx),
            Phase::Cancel => Some(&def.compensation),
            Phase::Compensation if def.confirm.is_some() => def.undo.as_ref(),
            Phase::Compensation => Some(&def.compensation),
            Phase::Confirm => def.confirm.as_ref(),
        };
        let Some(unit) = unit else {
            let message = format!(
                "branch '{}' has no {phase} (a .branch without a 2PC compensate cannot reverse a committed transaction); do it by hand and mark the branch compensated",
                def.name
            );
            return Box::pin(async move { Err(StepError::permanent(message)) });
        };
        let run = unit(ctx);
        Box::pin(async move { run.await.map(|()| Vec::new()) })
    }
}

/// A call's idempotency key, `"<saga id>/<step>/<phase>"`, built in one
/// allocation of the right size, without `fmt` (which costs more here than
/// the rest of preparing a call).
fn call_key(saga: SagaId, step: &str, phase: Phase) -> String {
    let phase = phase.as_str();
    let mut key =
        String::with_capacity(uuid::fmt::Hyphenated::LENGTH + step.len() + phase.len() + 2);
    saga.push_to(&mut key);
    key.push('/');
    key.push_str(step);
    key.push('/');
    key.push_str(phase);
    key
}

impl<I> SagaDefinition<I>
where
    I: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn context(
        &self,
        call: CallSpec,
        input: &ErasedInput,
    ) -> Result<(&StepDef<I>, StepContext<I>), StepError> {
        let Ok(input) = input.clone().downcast::<I>() else {
            return Err(StepError::permanent(
                "internal error: saga input has the wrong type",
            ));
        };
        let Some(def) = self.steps.get(call.step as usize) else {
            return Err(StepError::permanent("internal error: no such step"));
        };
        let ctx = StepContext {
            saga_id: call.saga_id,
            step: def.name.clone(),
            phase: call.phase,
            attempt: call.attempt,
            key: call_key(call.saga_id, def.name.as_str(), call.phase),
            input,
            names: self.names.clone(),
            outputs: call.outputs,
        };
        Ok((def, ctx))
    }
}

/// A typed handle to a registered saga type: `Engine::start` takes it, so
/// the compiler checks the input type.
pub struct SagaRef<I> {
    saga_type: SagaType,
    _input: PhantomData<fn(I)>,
}

impl<I> SagaRef<I> {
    /// The saga type it refers to.
    pub fn saga_type(&self) -> &SagaType {
        &self.saga_type
    }
}

impl<I> Clone for SagaRef<I> {
    fn clone(&self) -> Self {
        SagaRef {
            saga_type: self.saga_type.clone(),
            _input: PhantomData,
        }
    }
}

impl<I> fmt::Debug for SagaRef<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SagaRef({})", self.saga_type)
    }
}

/// Two definitions were registered under one saga type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("saga type '{0}' is already registered; each type may be registered once")]
pub struct DuplicateSagaType(pub SagaType);

/// The saga definitions an engine can run. Register every type before
/// opening the engine: recovery needs the code of every saga in the log.
#[derive(Default)]
pub struct Registry {
    sagas: HashMap<SagaType, Arc<dyn ErasedSaga>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a definition and returns the typed handle used to start it.
    pub fn register<I>(
        &mut self,
        definition: SagaDefinition<I>,
    ) -> Result<SagaRef<I>, DuplicateSagaType>
    where
        I: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let saga_type = definition.saga_type.clone();
        if self.sagas.contains_key(&saga_type) {
            return Err(DuplicateSagaType(saga_type));
        }
        self.sagas.insert(saga_type.clone(), Arc::new(definition));
        Ok(SagaRef {
            saga_type,
            _input: PhantomData,
        })
    }

    pub(crate) fn get(&self, saga_type: &SagaType) -> Option<&Arc<dyn ErasedSaga>> {
        self.sagas.get(saga_type)
    }
}

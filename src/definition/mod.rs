//! What a saga is: a named, versioned list of steps, each an async action
//! and its compensation, plus the policies recorded with every instance.
//!
//! Build a [`SagaDefinition`] with [`SagaDefinition::builder`]; `build`
//! checks everything at once and reports every problem in one
//! [`DefinitionError`]. Register it in a [`Registry`] to get a typed
//! [`SagaRef`], which is what `Engine::start` takes.

mod builder;
mod erased;
mod registry;
mod step;

pub use builder::{DefinitionError, SagaBuilder, DEFAULT_MAX_PARALLEL};
pub(crate) use erased::{CallSpec, ErasedInput, ErasedSaga};
pub use registry::{DuplicateSagaType, Registry, SagaRef};
pub use step::{Phase, StepContext, StepError, StepOptions};

use crate::ids::{millis, SagaType, StepIndex, StepName};
use crate::log::record::{PlanKind, SagaPlan, StepPlan};
use crate::policy::{CompensationStrategy, InDoubtPolicy, RetryPolicy};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Longest saga type or step name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Most steps one saga may have.
pub const MAX_STEPS: usize = 1024;

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

/// A participant in the shape of a classic two-phase commit:
/// `prepare` / `commit` / `rollback`, plus `compensate` to reverse a
/// committed transaction later. Register it with
/// [`SagaBuilder::participant`]; it maps onto TCC as prepare = try,
/// commit = confirm, rollback = cancel.
///
/// Every method may be called more than once for one transaction (retries,
/// re-runs after a crash) and must be idempotent by
/// [`StepContext::idempotency_key`]; `rollback` may be called although
/// `prepare` never ran or failed, and must then succeed without effect.
/// The `barrier` feature's `Barrier` provides all three guarantees.
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

//! Building a definition: [`SagaBuilder`] collects the steps and policies,
//! and `build` checks them all at once ([`DefinitionError`]).

use super::registry::SagaRef;
use super::step::{StepContext, StepError, StepOptions};
use super::{
    ActionFn, After, ChildInputFn, CompensationFn, SagaDefinition, StepDef, TwoPhaseParticipant,
    MAX_NAME_LEN, MAX_STEPS,
};
use crate::ids::{SagaType, StepIndex, StepName};
use crate::log::codec::{self};
use crate::log::record::PlanKind;
use crate::policy::{CompensationStrategy, InDoubtPolicy, RetryPolicy};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Most participant calls of one saga in flight at once, unless
/// [`SagaBuilder::max_parallel`] says otherwise.
pub const DEFAULT_MAX_PARALLEL: u32 = 16;

/// Collects a definition; see [`SagaDefinition::builder`] and
/// [`SagaDefinition::tcc`].
pub struct SagaBuilder<I> {
    pub(super) saga_type: SagaType,
    pub(super) version: u32,
    pub(super) steps: Vec<StepDef<I>>,
    pub(super) strategy: CompensationStrategy,
    pub(super) retry: RetryPolicy,
    pub(super) compensation_retry: RetryPolicy,
    pub(super) in_doubt: InDoubtPolicy,
    pub(super) timeout: Option<Duration>,
    pub(super) kind: PlanKind,
    pub(super) max_parallel: u32,
    pub(super) parallel_tries: bool,
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
    /// [`SagaId`](crate::SagaId)) and fails permanently when the child ends compensated.
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
    /// restarts.
    pub fn async_confirm(mut self) -> Self {
        if let PlanKind::Tcc { async_confirm, .. } = &mut self.kind {
            *async_confirm = true;
        }
        self
    }

    /// TCC: report the outcome as soon as the rollback decision is durable
    /// (status `RollingBack`); cancels run in the background and survive
    /// restarts.
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
    // Long on purpose: it checks everything in one pass so that one error lists
    // every problem of the definition.
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

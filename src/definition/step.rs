//! A step as its code sees it: which call is being made ([`Phase`]), what
//! it is given ([`StepContext`]), how it fails ([`StepError`]), and its
//! per-step settings ([`StepOptions`]).

use super::After;
use crate::ids::{Attempt, SagaId, StepName};
use crate::log::codec::{self};
use crate::log::record::{ErrorClass, StepFailure};
use crate::policy::{CompensationStrategy, RetryPolicy};
use serde::de::DeserializeOwned;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Which call of a step (or TCC branch) is being made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
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
    pub(super) saga_id: SagaId,
    pub(super) step: StepName,
    pub(super) phase: Phase,
    pub(super) attempt: Attempt,
    pub(super) key: String,
    pub(super) input: Arc<I>,
    pub(super) names: Arc<[StepName]>,
    pub(super) outputs: Arc<[Option<Vec<u8>>]>,
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

/// Per-step overrides of the saga's settings; see [`SagaBuilder::step_with`](crate::SagaBuilder::step_with).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepOptions {
    pub(super) strategy: Option<CompensationStrategy>,
    pub(super) retry: Option<RetryPolicy>,
    pub(super) timeout: Option<Duration>,
    pub(super) after: Option<After>,
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

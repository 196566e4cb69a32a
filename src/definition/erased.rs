//! A definition with its input type erased, as the engine calls it.

use super::step::{Phase, StepContext, StepError};
use super::{BoxFuture, SagaDefinition, StepDef};
use crate::ids::{Attempt, SagaId, StepIndex, StepName};
use crate::log::codec::{self, DecodeError};
use crate::log::record::SagaPlan;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::any::Any;
use std::sync::Arc;

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

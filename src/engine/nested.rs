//! Sub-sagas: a step that runs a saga of another type and waits for it.
//!
//! The child is started once per (parent, step): its idempotency key is
//! derived from both, so a parent step re-run after a crash finds the child
//! it started before instead of starting another. The child is an ordinary
//! saga in the log (recovered on its own at open); its start record links
//! to the parent's step. Compensating the step compensates the child.

use crate::engine::Engine;
use crate::error::Error;
use crate::ids::{IdempotencyKey, SagaId, SagaType, StepIndex};
use crate::log::codec;
use crate::log::record::ParentLink;
use crate::status::SagaStatus;
use crate::StepError;

/// Who the engine says it is when it acts on a sub-saga.
const ACTOR: &str = "sagalog";

impl Engine {
    fn child_key(parent: SagaId, step: StepIndex) -> IdempotencyKey {
        IdempotencyKey::from(format!("sagalog:child:{parent}:{step}"))
    }

    /// The sub-saga that step `step` of saga `parent` started, if it has.
    pub async fn child_of(&self, parent: SagaId, step: StepIndex) -> Result<Option<SagaId>, Error> {
        Ok(self.key_owner(&Self::child_key(parent, step)).await?)
    }

    /// The call of a sub-saga step: starts (or finds) the child and waits
    /// for it when `input` is given (the action), compensates it otherwise.
    pub(crate) async fn run_child(
        self,
        parent: SagaId,
        step: StepIndex,
        child_type: SagaType,
        input: Option<Result<Vec<u8>, StepError>>,
    ) -> Result<Vec<u8>, StepError> {
        match input {
            Some(input) => self.start_child(parent, step, child_type, input).await,
            None => self
                .compensate_child(parent, step)
                .await
                .map(|()| Vec::new()),
        }
    }

    async fn start_child(
        &self,
        parent: SagaId,
        step: StepIndex,
        child_type: SagaType,
        input: Result<Vec<u8>, StepError>,
    ) -> Result<Vec<u8>, StepError> {
        let key = Self::child_key(parent, step);
        let id = match self.key_owner(&key).await.map_err(unknown)? {
            Some(id) => id,
            None => {
                let input = input?;
                let definition = self.inner.registry.get(&child_type).cloned().ok_or_else(|| {
                    StepError::permanent(format!(
                        "sub-saga type '{child_type}' is not registered; register it in the parent's registry"
                    ))
                })?;
                let plan = definition.plan();
                let link = ParentLink { saga: parent, step };
                // A parent's step that runs again after a crash finds its
                // child by the key, whatever input it computes this time.
                let on_conflict = crate::engine::Conflict {
                    fingerprint: crate::log::store::input_fingerprint(child_type.as_str(), &input),
                    attach: true,
                };
                let new = crate::engine::NewSaga {
                    saga_type: child_type.clone(),
                    definition,
                    plan,
                    input,
                    key: Some((key, on_conflict)),
                    parent: Some(link),
                };
                self.start_encoded(new, None)
                    .await
                    .map_err(|e| StepError::unknown(format!("could not start the sub-saga: {e}")))?
                    .saga_id
            }
        };
        let outcome = self
            .outcome(id)
            .await
            .map_err(|e| StepError::unknown(format!("sub-saga {id}: {e}")))?;
        let failure = outcome
            .failure
            .as_ref()
            .map(|(step, f)| format!(" (step '{step}': {})", f.message))
            .unwrap_or_default();
        match outcome.status {
            // An async-confirm TCC child reports once its commit is decided.
            SagaStatus::Committed | SagaStatus::Committing => {
                codec::encode_value(&id.to_string()).map_err(|e| StepError::unknown(e.to_string()))
            }
            SagaStatus::Compensated | SagaStatus::RolledBack | SagaStatus::RollingBack => Err(
                StepError::permanent(format!("sub-saga {id} failed and was undone{failure}")),
            ),
            SagaStatus::Failed => Err(StepError::permanent(format!(
                "sub-saga {id} was abandoned by an operator{failure}"
            ))),
            status => Err(StepError::unknown(format!(
                "sub-saga {id} is {status}: {}",
                outcome.reason.unwrap_or_default()
            ))),
        }
    }

    async fn compensate_child(&self, parent: SagaId, step: StepIndex) -> Result<(), StepError> {
        let Some(id) = self.child_of(parent, step).await.map_err(unknown)? else {
            // The step's action never got as far as starting the child.
            return Ok(());
        };
        let reason = format!("parent saga {parent} compensates its step {step}");
        for _ in 0..4 {
            let status = self.saga(id).await.map_err(unknown)?.status;
            let ordered = match status {
                SagaStatus::Compensated | SagaStatus::RolledBack => return Ok(()),
                SagaStatus::Failed => {
                    return Err(StepError::permanent(format!(
                        "sub-saga {id} was abandoned; undo its effects by hand, then mark this step compensated"
                    )))
                }
                SagaStatus::Committed | SagaStatus::Suspended => {
                    self.compensate_now(id, ACTOR, &reason).await
                }
                SagaStatus::Created | SagaStatus::Running => self.cancel(id, ACTOR, &reason).await,
                SagaStatus::Compensating | SagaStatus::RollingBack | SagaStatus::Committing => {
                    Ok(())
                }
            };
            match ordered {
                // The child moved on meanwhile (it committed as the cancel
                // came): look again.
                Ok(()) | Err(Error::Illegal { .. }) => {}
                Err(e) => return Err(unknown(e)),
            }
            let outcome = self.outcome(id).await.map_err(unknown)?;
            match outcome.status {
                SagaStatus::Compensated | SagaStatus::RolledBack => return Ok(()),
                SagaStatus::Suspended => {
                    return Err(StepError::unknown(format!(
                        "sub-saga {id} waits for an operator: {}",
                        outcome.reason.unwrap_or_default()
                    )))
                }
                _ => {}
            }
        }
        Err(StepError::unknown(format!(
            "sub-saga {id} did not end compensated"
        )))
    }
}

fn unknown(e: impl std::fmt::Display) -> StepError {
    StepError::unknown(e.to_string())
}

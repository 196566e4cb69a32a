//! The loop every saga runs, fresh or recovered:
//!
//! ```text
//! state  = fold(records)              (in memory, kept up to date by apply)
//! action = decide(state, now)
//! RunStep / Compensate -> append intent (durable) -> call -> stage result
//! WaitUntil            -> append staged -> sleep (cancelled by shutdown)
//! Suspend / Finish     -> append staged + record (durable)
//! AwaitOperator / Done -> leave memory
//! ```
//!
//! A call's result is staged and written together with the next intent or
//! the terminal record: one flush per call instead of two, and still no
//! call without a durable intent before it (invariant I1).

use crate::definition::{CallSpec, ErasedInput, ErasedSaga, Phase, StepError};
use crate::engine::view::{failure_of, Outcome};
use crate::engine::{Inner, SagaRun};
use crate::error::Error;
use crate::ids::{SagaId, StepIndex, UnixMillis};
use crate::log::codec;
use crate::log::record::{
    CallFailed, CallRef, CallSucceeded, Finished, LogEntry, Record, Suspended,
};
use crate::log::store::{IndexEntry, IndexUpdate, SagaAppend};
use crate::log::writer::AppendError;
use crate::state::{decide, NextAction, SagaState};
use crate::status::SagaStatus;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Records applied to the in-memory state but not yet durable.
pub(crate) struct Staged {
    saga: SagaId,
    first_seq: u64,
    frames: Vec<Vec<u8>>,
    /// Status as of the last durable write (None before the first).
    durable_status: Option<SagaStatus>,
}

impl Staged {
    pub(crate) fn new(saga: SagaId, state: Option<&SagaState>) -> Self {
        Staged {
            saga,
            first_seq: state.map_or(0, |s| s.next_seq),
            frames: Vec::new(),
            durable_status: state.map(|s| s.status()),
        }
    }

    /// Applies `record` to `state` and stages its frame.
    pub(crate) fn push(
        &mut self,
        state: &mut SagaState,
        at: UnixMillis,
        record: Record,
    ) -> Result<(), Error> {
        let entry = LogEntry {
            seq: state.next_seq,
            at,
            record,
        };
        state.apply(&entry).map_err(|error| Error::Illegal {
            saga: self.saga,
            error,
        })?;
        self.frames
            .push(codec::encode_record(at, &entry.record).map_err(|e| Error::encode("record", e))?);
        Ok(())
    }

    /// Stages an already-encoded frame (the start record, applied by the caller).
    pub(crate) fn stage_frame(&mut self, frame: Vec<u8>) {
        self.frames.push(frame);
    }

    /// Turns the staged frames into one append, with the index update the
    /// status change (if any) requires.
    pub(crate) fn take(&mut self, state: &SagaState) -> Result<Option<SagaAppend>, Error> {
        if self.frames.is_empty() {
            return Ok(None);
        }
        let status = state.status();
        let index = if self.durable_status != Some(status) {
            let entry = IndexEntry {
                saga_type: state.saga_type().clone(),
                status,
                started_at: state.started_at,
            };
            let bytes =
                codec::encode_index_entry(&entry).map_err(|e| Error::encode("index entry", e))?;
            Some(if status.is_terminal() {
                IndexUpdate::Finished(bytes)
            } else {
                IndexUpdate::Active(bytes)
            })
        } else {
            None
        };
        let append = SagaAppend {
            saga: self.saga,
            first_seq: self.first_seq,
            records: std::mem::take(&mut self.frames),
            index,
            claim_key: None,
        };
        self.first_seq = state.next_seq;
        self.durable_status = Some(status);
        Ok(Some(append))
    }
}

impl Inner {
    /// Makes everything staged durable.
    pub(crate) async fn commit(&self, staged: &mut Staged, state: &SagaState) -> Result<(), Error> {
        match staged.take(state)? {
            None => Ok(()),
            Some(append) => match self.writer.append(append).await {
                Ok(()) => Ok(()),
                Err(AppendError::Store(e)) => Err(Error::Store(e)),
                Err(AppendError::KeyTaken(_)) => Err(Error::Store(
                    crate::log::store::StoreError::Backend("unexpected key claim conflict".into()),
                )),
            },
        }
    }

    /// Drives one saga until it is terminal, suspended, or the engine stops.
    pub(crate) async fn drive(self: &Arc<Self>, run: SagaRun) -> Result<Outcome, Error> {
        let SagaRun {
            id,
            definition,
            input,
            mut state,
        } = run;
        let mut staged = Staged::new(id, Some(&state));
        loop {
            let now = self.clock.now();
            match decide(&state, now) {
                NextAction::RunStep { step, attempt } => {
                    self.call_step(
                        id,
                        &definition,
                        &input,
                        &mut state,
                        &mut staged,
                        step,
                        attempt,
                        Phase::Action,
                    )
                    .await?
                }
                NextAction::Compensate { step, attempt } => {
                    self.call_step(
                        id,
                        &definition,
                        &input,
                        &mut state,
                        &mut staged,
                        step,
                        attempt,
                        Phase::Compensation,
                    )
                    .await?
                }
                NextAction::WaitUntil { due } => {
                    self.commit(&mut staged, &state).await?;
                    let wait = Duration::from_millis(due.0.saturating_sub(now.0));
                    tracing::debug!(wait_ms = wait.as_millis() as u64, "waiting before retry");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.stopping.cancelled() => return Err(Error::ShuttingDown(id)),
                    }
                }
                NextAction::Suspend { reason } => {
                    tracing::warn!(%reason, "saga suspended; an operator must act");
                    staged.push(&mut state, now, Record::SagaSuspended(Suspended { reason }))?;
                    self.commit(&mut staged, &state).await?;
                }
                NextAction::Finish { status } => {
                    staged.push(&mut state, now, Record::SagaFinished(Finished { status }))?;
                    self.commit(&mut staged, &state).await?;
                    tracing::info!(%status, "saga finished");
                }
                NextAction::AwaitOperator | NextAction::Done { .. } => {
                    self.commit(&mut staged, &state).await?;
                    return Ok(Outcome {
                        saga_id: id,
                        status: state.status(),
                        failure: failure_of(&state),
                        reason: state.suspended.clone(),
                    });
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn call_step(
        &self,
        id: SagaId,
        definition: &Arc<dyn ErasedSaga>,
        input: &ErasedInput,
        state: &mut SagaState,
        staged: &mut Staged,
        step: StepIndex,
        attempt: u32,
        phase: Phase,
    ) -> Result<(), Error> {
        let call = CallRef { step, attempt };
        if self.stopping.is_cancelled() {
            // Write what is staged (results of finished calls), start nothing new.
            self.commit(staged, state).await?;
            return Err(Error::ShuttingDown(id));
        }
        let intent = match phase {
            Phase::Action => Record::StepStarted(call),
            Phase::Compensation => Record::CompensationStarted(call),
        };
        staged.push(state, self.clock.now(), intent)?;
        // I1: the participant is called only after this returns Ok.
        self.commit(staged, state).await?;

        let outputs: Arc<[Option<Vec<u8>>]> =
            state.steps.iter().map(|s| s.output.clone()).collect();
        let spec = CallSpec {
            saga_id: id,
            step,
            phase,
            attempt,
            outputs,
        };
        let step_name = definition
            .step_names()
            .get(step as usize)
            .map(|n| n.as_str().to_owned())
            .unwrap_or_default();
        let span =
            tracing::info_span!("call", saga_id = %id, step = %step_name, phase = %phase, attempt);
        let future = definition.call(spec, input).instrument(span);
        // Spawned so that a panicking participant is an error, not a dead
        // saga task; aborted if dropped (hard shutdown leaves it in doubt).
        let task = AbortOnDrop(tokio::spawn(future));
        let joined = tokio::select! {
            joined = task.join() => joined,
            _ = self.aborting.cancelled() => return Err(Error::ShuttingDown(id)),
        };
        let result = match joined {
            Ok(result) => result,
            Err(e) => Err(StepError::unknown(format!(
                "the participant panicked or was cancelled: {e}"
            ))),
        };
        let now = self.clock.now();
        let record = match (phase, result) {
            (Phase::Action, Ok(output)) => Record::StepSucceeded(CallSucceeded { call, output }),
            (Phase::Compensation, Ok(_)) => Record::CompensationSucceeded(call),
            (Phase::Action, Err(e)) => {
                tracing::info!(error = %e, "step failed");
                Record::StepFailed(CallFailed {
                    call,
                    failure: e.into_failure(),
                })
            }
            (Phase::Compensation, Err(e)) => {
                tracing::warn!(error = %e, "compensation failed");
                Record::CompensationFailed(CallFailed {
                    call,
                    failure: e.into_failure(),
                })
            }
        };
        staged.push(state, now, record)
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

//! Fold and decide: the pure core. No I/O, no clock reads, no randomness.
//!
//! [`fold`] turns a saga's log into a [`SagaState`], rejecting any sequence
//! the engine could not have written (an [`IllegalTransition`]). [`decide`]
//! turns a state and a clock value into the one [`NextAction`] the engine
//! performs next. The engine applies its own records through the same
//! [`SagaState::apply`], so a bug that would write an illegal record is
//! caught before the record reaches the disk.

mod decide;
#[cfg(test)]
mod tests;

pub use decide::{decide, NextAction};

use crate::ids::{Attempt, IdempotencyKey, SagaType, StepIndex, UnixMillis};
use crate::log::record::{
    CallRef, ErrorClass, LogEntry, Record, SagaPlan, SagaStarted, StepFailure,
};
use crate::status::SagaStatus;

/// A log that no engine could have written. Folding stops at the first one;
/// the saga is parked with this as the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("illegal record at seq {seq} ({kind}): {reason}")]
pub struct IllegalTransition {
    /// Sequence number of the offending record.
    pub seq: u64,
    /// Kind of the offending record.
    pub kind: &'static str,
    /// What rule it breaks.
    pub reason: String,
}

/// Progress of one kind of call (forward action or compensation) of one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallState {
    /// Never attempted.
    NotStarted,
    /// Intent written, no result: running now, or in doubt after a crash.
    InFlight {
        /// The attempt in flight.
        attempt: Attempt,
        /// When the intent was written.
        since: UnixMillis,
    },
    /// The last attempt failed.
    Failed {
        /// The failed attempt.
        attempt: Attempt,
        /// Why.
        failure: StepFailure,
        /// When the failure was written.
        at: UnixMillis,
    },
    /// The last attempt succeeded.
    Succeeded {
        /// The successful attempt.
        attempt: Attempt,
        /// When the success was written.
        at: UnixMillis,
    },
}

impl CallState {
    /// Attempts made so far.
    pub fn attempts(&self) -> Attempt {
        match self {
            CallState::NotStarted => 0,
            CallState::InFlight { attempt, .. }
            | CallState::Failed { attempt, .. }
            | CallState::Succeeded { attempt, .. } => *attempt,
        }
    }

    fn is_succeeded(&self) -> bool {
        matches!(self, CallState::Succeeded { .. })
    }
}

/// Everything the log says about one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepState {
    /// The forward action.
    pub forward: CallState,
    /// The compensation.
    pub compensation: CallState,
    /// The action's output, once it succeeded.
    pub output: Option<Vec<u8>>,
    /// Some earlier attempt of the action may have taken effect (it was left
    /// in doubt, or failed with [`ErrorClass::Unknown`]).
    pub earlier_attempt_in_doubt: bool,
}

impl StepState {
    fn new() -> Self {
        StepState {
            forward: CallState::NotStarted,
            compensation: CallState::NotStarted,
            output: None,
            earlier_attempt_in_doubt: false,
        }
    }

    /// True when the action started and may have taken effect: it
    /// succeeded, is in flight or in doubt, or some attempt's outcome is
    /// unknown. Only such steps are compensated (invariant I4).
    pub fn maybe_applied(&self) -> bool {
        self.earlier_attempt_in_doubt
            || match &self.forward {
                CallState::NotStarted => false,
                CallState::InFlight { .. } | CallState::Succeeded { .. } => true,
                CallState::Failed { failure, .. } => failure.class == ErrorClass::Unknown,
            }
    }

    /// True when this step needs no (more) compensation.
    pub fn is_compensated_or_untouched(&self) -> bool {
        !self.maybe_applied() || self.compensation.is_succeeded()
    }
}

/// A saga as its log describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct SagaState {
    /// The start record.
    pub started: SagaStarted,
    /// When the start record was written.
    pub started_at: UnixMillis,
    /// One entry per step of the plan.
    pub steps: Vec<StepState>,
    /// A compensation has started: no forward step may start again.
    pub compensating: bool,
    /// Why the saga waits for an operator, if it does.
    pub suspended: Option<String>,
    /// The terminal status, once written.
    pub finished: Option<SagaStatus>,
    /// The forward failure that made the saga compensate, if any.
    pub failure: Option<(StepIndex, StepFailure)>,
    /// Sequence number the next record must have.
    pub next_seq: u64,
    /// Time of the last record.
    pub last_at: UnixMillis,
}

/// Folds a saga's log, in sequence order, into its state.
///
/// The first record must be `SagaStarted` with seq 0, sequence numbers must
/// have no gaps, and every record must be legal after the ones before it.
pub fn fold(entries: &[LogEntry]) -> Result<SagaState, IllegalTransition> {
    let (first, rest) = entries.split_first().ok_or_else(|| IllegalTransition {
        seq: 0,
        kind: "none",
        reason: "the log is empty; a saga's log starts with saga_started".into(),
    })?;
    let mut state = SagaState::from_start(first)?;
    for entry in rest {
        state.apply(entry)?;
    }
    Ok(state)
}

impl SagaState {
    /// The state after the first record, which must be `SagaStarted` at seq 0.
    pub fn from_start(entry: &LogEntry) -> Result<SagaState, IllegalTransition> {
        let illegal = |reason: &str| IllegalTransition {
            seq: entry.seq,
            kind: entry.record.kind_name(),
            reason: reason.into(),
        };
        if entry.seq != 0 {
            return Err(illegal("the first record present must have seq 0"));
        }
        let Record::SagaStarted(started) = &entry.record else {
            return Err(illegal("the first record must be saga_started"));
        };
        if started.plan.steps.is_empty() {
            return Err(illegal("the plan has no steps"));
        }
        if started.plan.steps.len() > crate::definition::MAX_STEPS {
            return Err(illegal(
                "the plan has more steps than a definition may have",
            ));
        }
        Ok(SagaState {
            steps: vec![StepState::new(); started.plan.steps.len()],
            started: started.clone(),
            started_at: entry.at,
            compensating: false,
            suspended: None,
            finished: None,
            failure: None,
            next_seq: 1,
            last_at: entry.at,
        })
    }

    /// The plan from the start record.
    pub fn plan(&self) -> &SagaPlan {
        &self.started.plan
    }

    /// The saga's registered type.
    pub fn saga_type(&self) -> &SagaType {
        &self.started.saga_type
    }

    /// The caller's idempotency key, if any.
    pub fn idempotency_key(&self) -> Option<&IdempotencyKey> {
        self.started.idempotency_key.as_ref()
    }

    /// Applies the next record, or explains why it cannot follow.
    pub fn apply(&mut self, entry: &LogEntry) -> Result<(), IllegalTransition> {
        let illegal = |reason: String| IllegalTransition {
            seq: entry.seq,
            kind: entry.record.kind_name(),
            reason,
        };
        if entry.seq != self.next_seq {
            return Err(illegal(format!(
                "expected seq {}, found {} (a record is missing or repeated)",
                self.next_seq, entry.seq
            )));
        }
        if let Some(status) = self.finished {
            return Err(illegal(format!("the saga already finished as {status}")));
        }
        match &entry.record {
            Record::SagaStarted(_) => {
                return Err(illegal("saga_started may only be the first record".into()))
            }
            Record::StepStarted(call) => self.step_started(*call, entry.at).map_err(illegal)?,
            Record::StepSucceeded(result) => {
                let step = self.forward_in_flight(result.call).map_err(illegal)?;
                step.forward = CallState::Succeeded {
                    attempt: result.call.attempt,
                    at: entry.at,
                };
                step.output = Some(result.output.clone());
            }
            Record::StepFailed(result) => {
                let step = self.forward_in_flight(result.call).map_err(illegal)?;
                if result.failure.class == ErrorClass::Unknown {
                    step.earlier_attempt_in_doubt = true;
                }
                step.forward = CallState::Failed {
                    attempt: result.call.attempt,
                    failure: result.failure.clone(),
                    at: entry.at,
                };
                if self.failure.is_none() && self.forward_failed_for_good(result.call.step) {
                    self.failure = Some((result.call.step, result.failure.clone()));
                }
            }
            Record::CompensationStarted(call) => self
                .compensation_started(*call, entry.at)
                .map_err(illegal)?,
            Record::CompensationSucceeded(call) => {
                let step = self.compensation_in_flight(*call).map_err(illegal)?;
                step.compensation = CallState::Succeeded {
                    attempt: call.attempt,
                    at: entry.at,
                };
            }
            Record::CompensationFailed(result) => {
                let step = self.compensation_in_flight(result.call).map_err(illegal)?;
                step.compensation = CallState::Failed {
                    attempt: result.call.attempt,
                    failure: result.failure.clone(),
                    at: entry.at,
                };
            }
            Record::SagaSuspended(suspended) => {
                self.suspended = Some(suspended.reason.clone());
            }
            Record::SagaFinished(finished) => {
                self.check_finish(finished.status).map_err(illegal)?;
                self.finished = Some(finished.status);
                self.suspended = None;
            }
        }
        self.next_seq += 1;
        self.last_at = entry.at;
        Ok(())
    }

    fn step_mut(&mut self, step: StepIndex) -> Result<&mut StepState, String> {
        let count = self.steps.len();
        self.steps
            .get_mut(step as usize)
            .ok_or_else(|| format!("step {step} does not exist; the plan has {count} steps"))
    }

    fn step_started(&mut self, call: CallRef, at: UnixMillis) -> Result<(), String> {
        if self.compensating {
            return Err("a forward step may not start once compensation has started".into());
        }
        if self.suspended.is_some() {
            return Err("a forward step may not start while the saga is suspended".into());
        }
        if let Some(earlier) = self.steps[..self.steps.len().min(call.step as usize)]
            .iter()
            .position(|s| !s.forward.is_succeeded())
        {
            return Err(format!(
                "step {} may not start before step {earlier} succeeded",
                call.step
            ));
        }
        let step = self.step_mut(call.step)?;
        let expected = match &step.forward {
            CallState::NotStarted => 1,
            CallState::InFlight { attempt, .. } => {
                // The previous attempt never reported: it stays in doubt.
                step.earlier_attempt_in_doubt = true;
                attempt.saturating_add(1)
            }
            CallState::Failed {
                attempt, failure, ..
            } if failure.class != ErrorClass::Permanent => attempt.saturating_add(1),
            CallState::Failed { .. } => {
                return Err("the step failed permanently and may not be retried".into())
            }
            CallState::Succeeded { .. } => return Err("the step already succeeded".into()),
        };
        if call.attempt != expected {
            return Err(format!(
                "expected attempt {expected}, found {}",
                call.attempt
            ));
        }
        step.forward = CallState::InFlight {
            attempt: call.attempt,
            since: at,
        };
        Ok(())
    }

    fn forward_in_flight(&mut self, call: CallRef) -> Result<&mut StepState, String> {
        let step = self.step_mut(call.step)?;
        match step.forward {
            CallState::InFlight { attempt, .. } if attempt == call.attempt => Ok(step),
            _ => Err(format!(
                "no intent for attempt {} of step {} is open",
                call.attempt, call.step
            )),
        }
    }

    fn compensation_started(&mut self, call: CallRef, at: UnixMillis) -> Result<(), String> {
        if self.suspended.is_some() {
            return Err("a compensation may not start while the saga is suspended".into());
        }
        let later = (call.step as usize + 1).min(self.steps.len());
        if let Some(offset) = self.steps[later..]
            .iter()
            .position(|s| !s.is_compensated_or_untouched())
        {
            return Err(format!(
                "step {} may not be compensated before step {} (reverse order)",
                call.step,
                later + offset
            ));
        }
        let step = self.step_mut(call.step)?;
        if !step.maybe_applied() {
            return Err("the step's action never started or certainly had no effect".into());
        }
        let expected = match &step.compensation {
            CallState::NotStarted => 1,
            CallState::InFlight { attempt, .. } | CallState::Failed { attempt, .. } => {
                attempt.saturating_add(1)
            }
            CallState::Succeeded { .. } => return Err("the step is already compensated".into()),
        };
        if call.attempt != expected {
            return Err(format!(
                "expected attempt {expected}, found {}",
                call.attempt
            ));
        }
        step.compensation = CallState::InFlight {
            attempt: call.attempt,
            since: at,
        };
        self.compensating = true;
        Ok(())
    }

    fn compensation_in_flight(&mut self, call: CallRef) -> Result<&mut StepState, String> {
        let step = self.step_mut(call.step)?;
        match step.compensation {
            CallState::InFlight { attempt, .. } if attempt == call.attempt => Ok(step),
            _ => Err(format!(
                "no compensation intent for attempt {} of step {} is open",
                call.attempt, call.step
            )),
        }
    }

    fn check_finish(&self, status: SagaStatus) -> Result<(), String> {
        match status {
            SagaStatus::Committed => {
                if self.compensating {
                    return Err("a compensating saga cannot commit".into());
                }
                match self.steps.iter().position(|s| !s.forward.is_succeeded()) {
                    Some(step) => Err(format!("step {step} has not succeeded")),
                    None => Ok(()),
                }
            }
            SagaStatus::Compensated => {
                if let Some(step) = self
                    .steps
                    .iter()
                    .position(|s| !s.is_compensated_or_untouched())
                {
                    return Err(format!("step {step} started and is not compensated"));
                }
                if !self.compensating && self.failure.is_none() {
                    return Err("no step failed for good and no compensation ran".into());
                }
                Ok(())
            }
            SagaStatus::Failed | SagaStatus::RolledBack => {
                if status == SagaStatus::RolledBack {
                    return Err("rolled_back is a TCC outcome; step sagas end compensated".into());
                }
                Ok(())
            }
            SagaStatus::Created
            | SagaStatus::Running
            | SagaStatus::Committing
            | SagaStatus::RollingBack
            | SagaStatus::Compensating
            | SagaStatus::Suspended => Err(format!("{status} is not a terminal status")),
        }
    }

    /// True when step `step`'s forward action will not be tried again: it
    /// failed permanently, or its retries are used up.
    fn forward_failed_for_good(&self, step: StepIndex) -> bool {
        match self.steps.get(step as usize).map(|s| &s.forward) {
            Some(CallState::Failed {
                attempt, failure, ..
            }) => {
                failure.class == ErrorClass::Permanent || *attempt >= self.plan().retry.max_attempts
            }
            _ => false,
        }
    }

    /// The saga's status, derived from the records alone.
    pub fn status(&self) -> SagaStatus {
        if let Some(status) = self.finished {
            return status;
        }
        if self.suspended.is_some() {
            return SagaStatus::Suspended;
        }
        if self.compensating || self.failure.is_some() {
            return SagaStatus::Compensating;
        }
        if self
            .steps
            .iter()
            .all(|s| s.forward == CallState::NotStarted)
        {
            return SagaStatus::Created;
        }
        SagaStatus::Running
    }
}

//! What the read API returns: plain data, detached from the engine.

use crate::ids::{Attempt, SagaId, SagaType, StepName, UnixMillis};
use crate::log::codec::DecodeError;
use crate::log::record::{ParentLink, Record, StepFailure};
use crate::state::{CallState, SagaState};
use crate::status::SagaStatus;

/// How a saga ended, or why it stopped moving.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The saga.
    pub saga_id: SagaId,
    /// A terminal status, or `Suspended` (waiting for an operator or parked).
    pub status: SagaStatus,
    /// The forward failure that made the saga compensate, with the step's name.
    pub failure: Option<(StepName, StepFailure)>,
    /// Why the saga is suspended or parked, if it is.
    pub reason: Option<String>,
}

impl Outcome {
    pub(crate) fn of(saga_id: SagaId, state: &SagaState) -> Outcome {
        Outcome {
            saga_id,
            status: state.status(),
            failure: failure_of(state),
            reason: state.suspended.clone(),
        }
    }
}

/// Where one call kind (action or compensation) of a step stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallStatus {
    /// Never attempted.
    NotStarted,
    /// Intent written, no result yet (running, or in doubt after a crash).
    InFlight,
    /// Last attempt failed.
    Failed,
    /// Succeeded.
    Succeeded,
}

impl CallStatus {
    fn of(state: &CallState) -> Self {
        match state {
            CallState::NotStarted => CallStatus::NotStarted,
            CallState::InFlight { .. } => CallStatus::InFlight,
            CallState::Failed { .. } => CallStatus::Failed,
            CallState::Succeeded { .. } => CallStatus::Succeeded,
        }
    }
}

/// One step of a saga, for display.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepView {
    /// The step's name.
    pub name: StepName,
    /// The forward action.
    pub action: CallStatus,
    /// Attempts of the action.
    pub action_attempts: Attempt,
    /// The compensation.
    pub compensation: CallStatus,
    /// Attempts of the compensation.
    pub compensation_attempts: Attempt,
    /// The last error of either call, if the last attempt failed.
    pub last_error: Option<StepFailure>,
}

impl StepView {
    /// One word for the step's state: `pending`, `running`, `done`,
    /// `failed`, `compensating`, `compensated`, `compensation_failed`.
    pub fn summary(&self) -> &'static str {
        match (self.compensation, self.action) {
            (CallStatus::Succeeded, _) => "compensated",
            (CallStatus::InFlight, _) => "compensating",
            (CallStatus::Failed, _) => "compensation_failed",
            (CallStatus::NotStarted, CallStatus::NotStarted) => "pending",
            (CallStatus::NotStarted, CallStatus::InFlight) => "running",
            (CallStatus::NotStarted, CallStatus::Failed) => "failed",
            (CallStatus::NotStarted, CallStatus::Succeeded) => "done",
        }
    }
}

/// A saga's current state, for display.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SagaView {
    /// The saga.
    pub saga_id: SagaId,
    /// Its registered type.
    pub saga_type: SagaType,
    /// Definition version it started under.
    pub version: u32,
    /// Its status. A parked saga shows `Suspended`.
    pub status: SagaStatus,
    /// Compensation strategy name.
    pub strategy: &'static str,
    /// The caller's idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// When it started.
    pub started_at: UnixMillis,
    /// When its last record was written.
    pub updated_at: UnixMillis,
    /// Its steps, in forward order.
    pub steps: Vec<StepView>,
    /// The forward failure that made it compensate.
    pub failure: Option<(StepName, StepFailure)>,
    /// Why it is suspended or parked.
    pub reason: Option<String>,
    /// The saga and step this one runs as a sub-saga of, if it does.
    pub parent: Option<ParentLink>,
    /// The sub-sagas its steps started, by step name.
    pub children: Vec<(StepName, SagaId)>,
}

impl SagaView {
    pub(crate) fn from_state(saga_id: SagaId, state: &SagaState) -> Self {
        let plan = state.plan();
        let steps = state
            .steps
            .iter()
            .zip(plan.steps.iter())
            .map(|(s, name)| {
                let last_error = match (&s.compensation, &s.forward) {
                    (CallState::Failed { failure, .. }, _) => Some(failure.clone()),
                    (CallState::NotStarted, CallState::Failed { failure, .. }) => {
                        Some(failure.clone())
                    }
                    _ => None,
                };
                StepView {
                    name: name.name.clone(),
                    action: CallStatus::of(&s.forward),
                    action_attempts: s.forward.attempts(),
                    compensation: CallStatus::of(&s.compensation),
                    compensation_attempts: s.compensation.attempts(),
                    last_error,
                }
            })
            .collect();
        SagaView {
            saga_id,
            saga_type: state.saga_type().clone(),
            version: state.started.version,
            status: state.status(),
            strategy: plan.strategy.name(),
            idempotency_key: state.idempotency_key().map(|k| k.as_str().to_owned()),
            started_at: state.started_at,
            updated_at: state.last_at,
            steps,
            failure: failure_of(state),
            reason: state.suspended.clone(),
            parent: state.started.parent,
            children: Vec::new(),
        }
    }

    /// The outcome this view implies.
    pub fn outcome(&self) -> Outcome {
        Outcome {
            saga_id: self.saga_id,
            status: self.status,
            failure: self.failure.clone(),
            reason: self.reason.clone(),
        }
    }
}

pub(crate) fn failure_of(state: &SagaState) -> Option<(StepName, StepFailure)> {
    state.failure.as_ref().and_then(|(step, failure)| {
        state
            .plan()
            .steps
            .get(*step as usize)
            .map(|plan| (plan.name.clone(), failure.clone()))
    })
}

/// One line of a saga's list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SagaListing {
    /// The saga.
    pub saga_id: SagaId,
    /// Its registered type.
    pub saga_type: SagaType,
    /// Its status (from the index; a parked saga shows `Suspended`).
    pub status: SagaStatus,
    /// When it started.
    pub started_at: UnixMillis,
    /// When its status or timer last changed (for a finished saga: when it
    /// finished).
    pub changed_at: UnixMillis,
    /// When it wakes, if it sleeps on a durable timer.
    pub next_wake: Option<UnixMillis>,
    /// Why it is parked, if it is.
    pub parked: Option<String>,
}

/// One record of a saga's history. A log value that cannot be decoded is
/// listed once, at the sequence number of its first record, with its error,
/// instead of hiding the rest.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryEntry {
    /// Sequence number in the saga's log.
    pub seq: u64,
    /// The record and its timestamp, or why its bytes are unreadable.
    pub record: Result<(UnixMillis, Record), DecodeError>,
}

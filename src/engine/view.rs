//! What the read API returns: plain data, detached from the engine.
//!
//! Every type here is also the JSON schema of the admin API and of the
//! command line's `--json`: it derives `Serialize` and `Deserialize`, and
//! nothing builds that JSON by hand.

use crate::ids::{Attempt, SagaId, SagaType, StepIndex, StepName, UnixMillis};
use crate::log::codec::DecodeError;
use crate::log::record::{ParentLink, Record, StepFailure};
use crate::policy::InDoubtPolicy;
use crate::state::{CallState, SagaState};
use crate::status::SagaStatus;
use serde::{Deserialize, Serialize};

/// How a saga ended, or why it stopped moving.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The saga.
    pub saga_id: SagaId,
    /// A terminal status, or `Suspended` (waiting for an operator or parked).
    pub status: SagaStatus,
    /// The forward failure that made the saga compensate, with the step's
    /// name; in JSON `{"step", "class", "message"}`.
    #[serde(with = "failed_step")]
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
            reason: reason_of(state),
        }
    }
}

/// Why the saga waits or stopped, when a step failure does not say it: its
/// suspension, or the operator order that ended or turned it back.
pub(crate) fn reason_of(state: &SagaState) -> Option<String> {
    if let Some(suspended) = &state.suspended {
        return Some(suspended.clone());
    }
    let stopped = !matches!(
        state.status(),
        SagaStatus::Created | SagaStatus::Running | SagaStatus::Committing | SagaStatus::Committed
    );
    match &state.ordered_by {
        Some(order) if stopped => Some(format!("ordered by an operator: {order}")),
        _ => None,
    }
}

/// Where one call kind (action or compensation) of a step stands; in JSON
/// `not_started`, `in_flight`, `failed` or `succeeded`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepView {
    /// The step's name.
    pub name: StepName,
    /// Where the step stands in one word, in the saga's own words:
    /// [`StepView::summary`] for a saga, [`StepView::tcc_summary`] for a
    /// TCC branch.
    pub state: String,
    /// The forward action.
    pub action: CallStatus,
    /// Attempts of the action.
    pub action_attempts: Attempt,
    /// The compensation.
    pub compensation: CallStatus,
    /// Attempts of the compensation.
    pub compensation_attempts: Attempt,
    /// The confirm (TCC branches only; `NotStarted` otherwise).
    pub confirm: CallStatus,
    /// Attempts of the confirm.
    pub confirm_attempts: Attempt,
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

    /// One word for a TCC branch's state, in TCC words: `pending`,
    /// `trying`, `tried`, `try_failed`, `confirming`, `confirmed`,
    /// `confirm_failed`, `cancelling`, `cancelled`, `cancel_failed`.
    pub fn tcc_summary(&self) -> &'static str {
        match (self.compensation, self.confirm, self.action) {
            (CallStatus::Succeeded, _, _) => "cancelled",
            (CallStatus::InFlight, _, _) => "cancelling",
            (CallStatus::Failed, _, _) => "cancel_failed",
            (_, CallStatus::Succeeded, _) => "confirmed",
            (_, CallStatus::InFlight, _) => "confirming",
            (_, CallStatus::Failed, _) => "confirm_failed",
            (_, _, CallStatus::NotStarted) => "pending",
            (_, _, CallStatus::InFlight) => "trying",
            (_, _, CallStatus::Failed) => "try_failed",
            (_, _, CallStatus::Succeeded) => "tried",
        }
    }
}

/// A saga's current state, for display.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaView {
    /// The saga.
    pub saga_id: SagaId,
    /// Its registered type.
    pub saga_type: SagaType,
    /// Definition version it started under.
    pub version: u32,
    /// Its status. A parked saga shows `Suspended`.
    pub status: SagaStatus,
    /// Compensation strategy name (`immediate`, `scheduled`, `manual`,
    /// `retry_then_compensate`).
    pub strategy: String,
    /// A TCC transaction (try / confirm / cancel branches), not a saga of
    /// steps.
    pub tcc: bool,
    /// The caller's idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// When it started.
    pub started_at: UnixMillis,
    /// When its last record was written.
    pub updated_at: UnixMillis,
    /// Its steps, in forward order.
    pub steps: Vec<StepView>,
    /// The forward failure that made it compensate; in JSON `{"step",
    /// "class", "message"}`.
    #[serde(with = "failed_step")]
    pub failure: Option<(StepName, StepFailure)>,
    /// Why it is suspended or parked.
    pub reason: Option<String>,
    /// What the saga waits for now, in one line (a timer and when, a call
    /// in flight and since when, an operator and why); `None` once it is
    /// terminal. Times are UTC, RFC 3339.
    pub waiting: Option<String>,
    /// The saga and step this one runs as a sub-saga of, if it does.
    pub parent: Option<ParentLink>,
    /// The sub-sagas its steps started, by step name; in JSON
    /// `[{"step", "saga_id"}]`.
    #[serde(with = "children")]
    pub children: Vec<(StepName, SagaId)>,
    /// Operator actions recorded and not yet carried out (see
    /// [`SagaListing::pending`]), each as "NAME by ACTOR at TIME: REASON".
    pub pending: Vec<String>,
}

impl SagaView {
    pub(crate) fn from_state(saga_id: SagaId, state: &SagaState) -> Self {
        let plan = state.plan();
        let tcc = plan.is_tcc();
        let in_doubt = given_up_in_doubt(state);
        let steps = state
            .steps
            .iter()
            .zip(plan.steps.iter())
            .enumerate()
            .map(|(index, (s, name))| {
                let last_error = match (&s.compensation.state, &s.forward.state) {
                    (CallState::Failed { failure, .. }, _) => Some(failure.clone()),
                    (CallState::NotStarted, CallState::Failed { failure, .. }) => {
                        Some(failure.clone())
                    }
                    (_, CallState::InFlight { .. }) => in_doubt
                        .as_ref()
                        .filter(|(step, _)| *step as usize == index)
                        .map(|(_, failure)| failure.clone()),
                    _ => None,
                };
                let mut view = StepView {
                    name: name.name.clone(),
                    state: String::new(),
                    action: CallStatus::of(&s.forward.state),
                    action_attempts: s.forward.attempts(),
                    compensation: CallStatus::of(&s.compensation.state),
                    compensation_attempts: s.compensation.attempts(),
                    confirm: CallStatus::of(&s.confirm.state),
                    confirm_attempts: s.confirm.attempts(),
                    last_error,
                };
                view.state = match tcc {
                    true => view.tcc_summary(),
                    false => view.summary(),
                }
                .to_owned();
                view
            })
            .collect();
        SagaView {
            saga_id,
            saga_type: state.saga_type().clone(),
            version: state.started.version,
            status: state.status(),
            strategy: plan.strategy.name().to_owned(),
            tcc,
            idempotency_key: state.idempotency_key().map(|k| k.as_str().to_owned()),
            started_at: state.started_at,
            updated_at: state.last_at,
            steps,
            failure: failure_of(state),
            reason: reason_of(state),
            waiting: super::waiting::waiting_of(state),
            parent: state.started.parent,
            children: Vec::new(),
            pending: pending_of(state),
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

/// The operator actions `state` holds that are not yet carried out, each as
/// "NAME by ACTOR: REASON".
pub(crate) fn pending_of(state: &SagaState) -> Vec<String> {
    state
        .pending
        .iter()
        .map(|a| {
            let step = match a.command {
                crate::log::record::OperatorCommand::MarkCompensated { step } => state
                    .plan()
                    .steps
                    .get(step as usize)
                    .map(|p| format!(" {}", p.name))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            format!("{}{step} by {}: {}", a.command.name(), a.actor, a.reason)
        })
        .collect()
}

/// The forward failure that made the saga give up: the one in its log, or,
/// for a step given up while its call was in doubt (no result was ever
/// written), one that says so.
pub(crate) fn failure_of(state: &SagaState) -> Option<(StepName, StepFailure)> {
    let (step, failure) = match &state.failure {
        Some((step, failure)) => (*step, failure.clone()),
        None => given_up_in_doubt(state)?,
    };
    state
        .plan()
        .steps
        .get(step as usize)
        .map(|plan| (plan.name.clone(), failure))
}

/// The step the saga gave up on while its call was in doubt, with why: the
/// in-doubt policy is to compensate, or restarts used up its attempts.
/// `None` while the saga still goes forward, or when it stopped for another
/// reason (a failure in its log, an operator's order).
fn given_up_in_doubt(state: &SagaState) -> Option<(StepIndex, StepFailure)> {
    if state.failure.is_some() || state.compensation_ordered {
        return None;
    }
    if matches!(
        state.status(),
        SagaStatus::Created | SagaStatus::Running | SagaStatus::Committing | SagaStatus::Committed
    ) {
        return None;
    }
    let plan = state.plan();
    state.steps.iter().enumerate().find_map(|(index, step)| {
        let CallState::InFlight { attempt, .. } = step.forward.state else {
            return None;
        };
        let index = index as StepIndex;
        if state.reruns_in_doubt(index, attempt) {
            return None;
        }
        let message = match plan.in_doubt {
            InDoubtPolicy::Compensate => format!(
                "in doubt: the process stopped during attempt {attempt} and its result was never written; the saga's in-doubt policy is to compensate rather than run it again"
            ),
            InDoubtPolicy::Rerun => format!(
                "attempts used up: {} attempts, the last left in doubt by a restart (the process stopped while it ran); the retry policy allows {}",
                attempt.saturating_sub(step.forward.base),
                plan.retry_of(index).max_attempts
            ),
        };
        Some((
            index,
            StepFailure {
                class: crate::log::record::ErrorClass::Unknown,
                message,
            },
        ))
    })
}

/// One line of a saga's list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Operator actions recorded and not yet carried out, by name (e.g.
    /// `"abandon"`): a tool recorded them while the service was stopped,
    /// and the service does them when it next runs the saga.
    pub pending: Option<String>,
    /// On a log several nodes share, the node that owns the saga (runs it,
    /// or will when it wakes); `None` for a finished or handed-over saga,
    /// and on a store one process writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
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

/// `Option<(StepName, StepFailure)>` as `{"step", "class", "message"}`.
pub(crate) mod failed_step {
    use super::*;
    use crate::log::record::ErrorClass;
    use serde::{Deserializer, Serializer};

    #[derive(Serialize, Deserialize)]
    struct FailedStep {
        step: StepName,
        class: ErrorClass,
        message: String,
    }

    pub(crate) fn serialize<S: Serializer>(
        value: &Option<(StepName, StepFailure)>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        value
            .as_ref()
            .map(|(step, failure)| FailedStep {
                step: step.clone(),
                class: failure.class,
                message: failure.message.clone(),
            })
            .serialize(serializer)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<(StepName, StepFailure)>, D::Error> {
        let value = Option::<FailedStep>::deserialize(deserializer)?;
        Ok(value.map(|f| {
            let failure = StepFailure {
                class: f.class,
                message: f.message,
            };
            (f.step, failure)
        }))
    }
}

/// `Vec<(StepName, SagaId)>` as `[{"step", "saga_id"}]`.
mod children {
    use super::*;
    use serde::{Deserializer, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Child {
        step: StepName,
        saga_id: SagaId,
    }

    pub(super) fn serialize<S: Serializer>(
        value: &[(StepName, SagaId)],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(value.iter().map(|(step, saga_id)| Child {
            step: step.clone(),
            saga_id: *saga_id,
        }))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<(StepName, SagaId)>, D::Error> {
        let children = Vec::<Child>::deserialize(deserializer)?;
        Ok(children.into_iter().map(|c| (c.step, c.saga_id)).collect())
    }
}

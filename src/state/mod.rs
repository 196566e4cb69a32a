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

pub use decide::{decide, decide_live, to_compensate, NextAction};

use crate::ids::{Attempt, IdempotencyKey, SagaType, StepIndex, UnixMillis};
use crate::log::record::{
    CallRef, Decision, LogEntry, OperatorAction, OperatorCommand, Record, SagaPlan, SagaStarted,
    StepFailure, WaitPurpose,
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
#[non_exhaustive]
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
    /// in doubt, or failed with [`ErrorClass::Unknown`](crate::ErrorClass::Unknown) or [`InDoubt`](crate::ErrorClass::InDoubt)).
    pub earlier_attempt_in_doubt: bool,
    /// Action attempts made before the last operator retry; the retry
    /// budget counts attempts after it.
    pub forward_base: Attempt,
    /// An operator granted one more attempt, even after a permanent error.
    pub retry_granted: bool,
    /// When the first attempt (since the last operator retry) started; the
    /// retry deadline counts from here.
    pub first_attempt_at: Option<UnixMillis>,
    /// Compensation attempts made before the last operator "compensate now".
    pub compensation_base: Attempt,
    /// An operator marked this step compensated by hand.
    pub compensated_by_operator: bool,
    /// TCC: the confirm of this branch.
    pub confirm: CallState,
    /// Confirm attempts made before the last operator retry.
    pub confirm_base: Attempt,
    /// TCC: a branch whose try started is cancelled whatever the try
    /// reported (its participant's barrier turns a needless cancel into an
    /// empty rollback).
    pub cancel_if_tried: bool,
}

impl StepState {
    fn new(cancel_if_tried: bool) -> Self {
        StepState {
            confirm: CallState::NotStarted,
            confirm_base: 0,
            cancel_if_tried,
            forward: CallState::NotStarted,
            compensation: CallState::NotStarted,
            output: None,
            earlier_attempt_in_doubt: false,
            forward_base: 0,
            retry_granted: false,
            first_attempt_at: None,
            compensation_base: 0,
            compensated_by_operator: false,
        }
    }

    /// True when the action started and may have taken effect: it
    /// succeeded, is in flight or in doubt, or some attempt's outcome is
    /// unknown. Only such steps are compensated (invariant I4).
    pub fn maybe_applied(&self) -> bool {
        if self.cancel_if_tried {
            return self.forward != CallState::NotStarted;
        }
        self.earlier_attempt_in_doubt
            || match &self.forward {
                CallState::NotStarted => false,
                CallState::InFlight { .. } | CallState::Succeeded { .. } => true,
                CallState::Failed { failure, .. } => failure.class.maybe_applied(),
            }
    }

    /// True when this step needs no (more) compensation.
    pub fn is_compensated_or_untouched(&self) -> bool {
        !self.maybe_applied() || self.compensation.is_succeeded()
    }
}

/// A pending durable timer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingTimer {
    /// When it falls due.
    pub due: UnixMillis,
    /// Sequence number of its `TimerSet` record.
    pub seq: u64,
    /// Why the saga waits.
    pub purpose: WaitPurpose,
}

/// What the retry policy says about a failed forward action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Run the next attempt at once (an operator granted it).
    Now,
    /// Run the next attempt once this time has come.
    At(UnixMillis),
    /// No more attempts: the step failed for good.
    No,
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
    /// A compensation has started (or an operator marked a step
    /// compensated): no forward step may start again.
    pub compensating: bool,
    /// An operator ordered compensation (compensate now, or cancel).
    pub compensation_ordered: bool,
    /// Why the saga waits for an operator, if it does.
    pub suspended: Option<String>,
    /// An operator abandoned the saga, for this reason.
    pub abandoned: Option<String>,
    /// The last operator order that ended or turned the saga back
    /// (`compensate_now`, `cancel`, `abandon`), as "NAME by ACTOR: REASON":
    /// why a saga that no step failure explains stopped.
    pub ordered_by: Option<String>,
    /// Operator actions recorded since the engine last wrote a record of
    /// its own: recorded (by a tool, while the service was stopped) and not
    /// yet carried out. A later action is judged against them.
    pub pending: Vec<OperatorAction>,
    /// The terminal status, once written.
    pub finished: Option<SagaStatus>,
    /// The forward failure that made the saga give up going forward.
    pub failure: Option<(StepIndex, StepFailure)>,
    /// When the forward step failed for good (scheduled compensation counts
    /// its delay from here).
    pub failure_at: Option<UnixMillis>,
    /// The durable timer the saga sleeps on, if any. Cleared by the next record.
    pub timer: Option<PendingTimer>,
    /// Sequence number the next record must have.
    pub next_seq: u64,
    /// Time of the last record.
    pub last_at: UnixMillis,
    /// TCC: the decision, once written.
    pub decision: Option<Decision>,
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
        let started = Self::check_start(entry)?;
        Ok(Self::started(entry.at, started.clone()))
    }

    /// Like [`SagaState::from_start`], keeping the caller's start record
    /// instead of a copy of it (a new saga's, which the engine builds).
    pub fn from_start_owned(entry: LogEntry) -> Result<SagaState, IllegalTransition> {
        Self::check_start(&entry)?;
        match entry.record {
            Record::SagaStarted(started) => Ok(Self::started(entry.at, *started)),
            // `check_start` accepted it, so it is a start record.
            _ => Err(IllegalTransition {
                seq: entry.seq,
                kind: entry.record.kind_name(),
                reason: "the first record must be saga_started".into(),
            }),
        }
    }

    /// The start record of `entry`, if it may begin a saga's log.
    fn check_start(entry: &LogEntry) -> Result<&SagaStarted, IllegalTransition> {
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
        if started.plan.max_parallel == 0 {
            return Err(illegal(
                "the plan allows no call in flight (max_parallel 0)",
            ));
        }
        for (index, step) in started.plan.steps.iter().enumerate() {
            if step.after.iter().any(|&dep| dep as usize >= index) {
                return Err(illegal(
                    "a step may only depend on steps before it in the plan",
                ));
            }
        }
        Ok(started)
    }

    /// The state right after a checked start record.
    fn started(at: UnixMillis, started: SagaStarted) -> SagaState {
        SagaState {
            steps: vec![StepState::new(started.plan.is_tcc()); started.plan.steps.len()],
            started,
            started_at: at,
            compensating: false,
            compensation_ordered: false,
            suspended: None,
            abandoned: None,
            ordered_by: None,
            pending: Vec::new(),
            finished: None,
            failure: None,
            failure_at: None,
            timer: None,
            next_seq: 1,
            last_at: at,
            decision: None,
        }
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

    /// Applies the next record, or explains why it cannot follow. On error
    /// the state may be partly changed: apply to a clone when the record
    /// comes from outside (an operator), and discard the state otherwise.
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
        let reopening = matches!(
            (&entry.record, self.finished),
            (
                Record::OperatorAction(OperatorAction {
                    command: OperatorCommand::CompensateNow,
                    ..
                }),
                Some(SagaStatus::Committed)
            )
        );
        if let (Some(status), false) = (self.finished, reopening) {
            return Err(illegal(format!("the saga already finished as {status}")));
        }
        // Any record ends the sleep a timer stood for.
        self.timer = None;
        // A record of the engine's own: the actions before it are carried out.
        if !matches!(entry.record, Record::OperatorAction(_)) {
            self.pending.clear();
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
                if result.failure.class.maybe_applied() {
                    step.earlier_attempt_in_doubt = true;
                }
                step.forward = CallState::Failed {
                    attempt: result.call.attempt,
                    failure: result.failure.clone(),
                    at: entry.at,
                };
                if self.failure.is_none() && self.forward_retry(result.call.step) == Retry::No {
                    self.failure = Some((result.call.step, result.failure.clone()));
                    self.failure_at = Some(entry.at);
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
            Record::TimerSet(timer) => {
                if self.suspended.is_some() {
                    return Err(illegal(
                        "a suspended saga waits for an operator, not a timer".into(),
                    ));
                }
                self.timer = Some(PendingTimer {
                    due: timer.due,
                    seq: entry.seq,
                    purpose: timer.purpose.clone(),
                });
            }
            Record::OperatorAction(action) => {
                self.refuse_against_pending(action.command)
                    .map_err(illegal)?;
                self.operator_action(action, entry.at).map_err(illegal)?;
                self.suspended = None;
                self.pending.push(action.clone());
            }
            Record::Decided(decided) => self.decided(decided.decision).map_err(illegal)?,
            Record::ConfirmStarted(call) => {
                self.confirm_started(*call, entry.at).map_err(illegal)?
            }
            Record::ConfirmSucceeded(call) => {
                let step = self.confirm_in_flight(*call).map_err(illegal)?;
                step.confirm = CallState::Succeeded {
                    attempt: call.attempt,
                    at: entry.at,
                };
            }
            Record::ConfirmFailed(result) => {
                let step = self.confirm_in_flight(result.call).map_err(illegal)?;
                step.confirm = CallState::Failed {
                    attempt: result.call.attempt,
                    failure: result.failure.clone(),
                    at: entry.at,
                };
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
        if self.compensating || self.compensation_ordered {
            return Err("a forward step may not start once compensation has started".into());
        }
        if self.suspended.is_some() || self.abandoned.is_some() {
            return Err("a forward step may not start while the saga waits for an operator".into());
        }
        if self.decision.is_some() {
            return Err("a try may not start once the transaction is decided".into());
        }
        if let Some((failed, _)) = &self.failure {
            return Err(format!(
                "no forward step may start after step {failed} failed for good"
            ));
        }
        let after = self
            .plan()
            .steps
            .get(call.step as usize)
            .map(|s| s.after.clone())
            .unwrap_or_default();
        if let Some(dep) = after
            .iter()
            .find(|&&dep| !self.steps[dep as usize].forward.is_succeeded())
        {
            return Err(format!(
                "step {} may not start before step {dep} succeeded",
                call.step
            ));
        }
        let step = self.step_mut(call.step)?;
        let expected = match &step.forward {
            CallState::NotStarted => 1,
            CallState::InFlight { attempt, .. } => attempt.saturating_add(1),
            CallState::Failed {
                attempt, failure, ..
            } if failure.class.retries() || step.retry_granted => attempt.saturating_add(1),
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
        if matches!(step.forward, CallState::InFlight { .. }) {
            // The previous attempt never reported: it stays in doubt.
            step.earlier_attempt_in_doubt = true;
        }
        step.retry_granted = false;
        step.first_attempt_at.get_or_insert(at);
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
        if self.suspended.is_some() || self.abandoned.is_some() {
            return Err("a compensation may not start while the saga waits for an operator".into());
        }
        if self.plan().is_tcc() {
            match self.decision {
                Some(Decision::Rollback) => {}
                Some(Decision::Commit) if self.compensation_ordered && self.all_confirmed() => {}
                Some(Decision::Commit) => {
                    return Err("a committing transaction is confirmed, not cancelled".into())
                }
                None => return Err("a branch is cancelled only after the rollback decision".into()),
            }
        }
        if let Some(dependent) = self
            .plan()
            .dependents(call.step)
            .find(|&d| !self.steps[d as usize].is_compensated_or_untouched())
        {
            return Err(format!(
                "step {} may not be compensated before step {dependent}, which depends on it",
                call.step
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

    fn decided(&mut self, decision: Decision) -> Result<(), String> {
        if !self.plan().is_tcc() {
            return Err("only a TCC transaction is decided".into());
        }
        if let Some(earlier) = self.decision {
            return Err(format!("the transaction is already decided ({earlier:?})"));
        }
        if self.suspended.is_some() || self.abandoned.is_some() {
            return Err("a transaction waiting for an operator is not decided".into());
        }
        let all_tried = self.steps.iter().all(|s| s.forward.is_succeeded());
        match decision {
            Decision::Commit if self.compensation_ordered || self.failure.is_some() => {
                Err("a cancelled or failed transaction cannot commit".into())
            }
            Decision::Commit if !all_tried => Err("commit needs every try to succeed".into()),
            Decision::Rollback if all_tried && !self.compensation_ordered => {
                Err("every try succeeded; only an operator's cancel rolls back now".into())
            }
            Decision::Commit | Decision::Rollback => {
                self.decision = Some(decision);
                Ok(())
            }
        }
    }

    fn confirm_started(&mut self, call: CallRef, at: UnixMillis) -> Result<(), String> {
        if self.decision != Some(Decision::Commit) || self.compensation_ordered {
            return Err("a branch is confirmed only after the commit decision".into());
        }
        if self.suspended.is_some() || self.abandoned.is_some() {
            return Err("a confirm may not start while the saga waits for an operator".into());
        }
        let step = self.step_mut(call.step)?;
        let expected = match &step.confirm {
            CallState::NotStarted => 1,
            CallState::InFlight { attempt, .. } | CallState::Failed { attempt, .. } => {
                attempt.saturating_add(1)
            }
            CallState::Succeeded { .. } => return Err("the branch is already confirmed".into()),
        };
        if call.attempt != expected {
            return Err(format!(
                "expected attempt {expected}, found {}",
                call.attempt
            ));
        }
        step.confirm = CallState::InFlight {
            attempt: call.attempt,
            since: at,
        };
        Ok(())
    }

    fn confirm_in_flight(&mut self, call: CallRef) -> Result<&mut StepState, String> {
        let step = self.step_mut(call.step)?;
        match step.confirm {
            CallState::InFlight { attempt, .. } if attempt == call.attempt => Ok(step),
            _ => Err(format!(
                "no confirm intent for attempt {} of branch {} is open",
                call.attempt, call.step
            )),
        }
    }

    /// True when every branch's confirm succeeded.
    pub fn all_confirmed(&self) -> bool {
        self.steps.iter().all(|s| s.confirm.is_succeeded())
    }

    /// Refuses `command` when an action recorded and not yet carried out
    /// ([`SagaState::pending`]) repeats it or contradicts it: after a
    /// pending abandon nothing more can be ordered, a compensate or cancel
    /// is not ordered twice, and a retry and a compensation exclude each
    /// other. Marking further steps compensated stays possible.
    fn refuse_against_pending(&self, command: OperatorCommand) -> Result<(), String> {
        use OperatorCommand::*;
        for earlier in &self.pending {
            let refused = match (earlier.command, command) {
                (Abandon, _) => true,
                (MarkCompensated { .. }, _) | (_, MarkCompensated { .. }) => false,
                (CompensateNow | Cancel, CompensateNow | Cancel | RetryStep) => true,
                (RetryStep, CompensateNow | Cancel | RetryStep) => true,
                (CompensateNow | Cancel | RetryStep, Abandon) => false,
            };
            if refused {
                return Err(format!(
                    "{} by {} ({}) is recorded and not yet carried out: the service does it when it next runs this saga, so {} now would {} it",
                    earlier.command.name(),
                    earlier.actor,
                    earlier.reason,
                    command.name(),
                    if earlier.command == command { "repeat" } else { "contradict" }
                ));
            }
        }
        Ok(())
    }

    /// The pending operator actions (see [`SagaState::pending`]) by name,
    /// e.g. `"abandon"`, or `None` if there are none.
    pub fn pending_summary(&self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let names: Vec<&str> = self.pending.iter().map(|a| a.command.name()).collect();
        Some(names.join(", "))
    }

    fn operator_action(&mut self, action: &OperatorAction, at: UnixMillis) -> Result<(), String> {
        if matches!(
            action.command,
            OperatorCommand::CompensateNow | OperatorCommand::Cancel | OperatorCommand::Abandon
        ) {
            self.ordered_by = Some(format!(
                "{} by {}: {}",
                action.command.name(),
                action.actor,
                action.reason
            ));
        }
        match action.command {
            OperatorCommand::CompensateNow => {
                if self.decision == Some(Decision::Commit) && self.finished.is_none() {
                    return Err(
                        "the transaction is committing; compensate it once it has committed".into(),
                    );
                }
                // On a committed saga this reopens it: every step is compensated.
                self.finished = None;
                self.compensation_ordered = true;
                for step in &mut self.steps {
                    step.compensation_base = step.compensation.attempts();
                }
            }
            OperatorCommand::MarkCompensated { step } => {
                if self.plan().is_tcc()
                    && self.decision != Some(Decision::Rollback)
                    && !self.compensation_ordered
                {
                    return Err("only a transaction that rolls back (or is compensated after its commit) has branches to mark".into());
                }
                let state = self.step_mut(step)?;
                if !state.maybe_applied() {
                    return Err(format!(
                        "step {step} never took effect; there is nothing to compensate"
                    ));
                }
                if state.compensation.is_succeeded() {
                    return Err(format!("step {step} is already compensated"));
                }
                state.compensation = CallState::Succeeded {
                    attempt: state.compensation.attempts(),
                    at,
                };
                state.compensated_by_operator = true;
                self.compensating = true;
            }
            OperatorCommand::RetryStep if self.decision == Some(Decision::Commit) => {
                if self.compensation_ordered {
                    return Err("compensation has started; there is nothing to retry".into());
                }
                for step in &mut self.steps {
                    step.confirm_base = step.confirm.attempts();
                }
            }
            OperatorCommand::RetryStep => {
                if self.compensating || self.compensation_ordered || self.decision.is_some() {
                    return Err(
                        "compensation has started; the forward step can no longer be retried"
                            .into(),
                    );
                }
                let step = self
                    .steps
                    .iter_mut()
                    .find(|s| !s.forward.is_succeeded())
                    .ok_or("every step succeeded; there is nothing to retry")?;
                match step.forward {
                    CallState::Failed { .. } | CallState::InFlight { .. } => {}
                    CallState::NotStarted | CallState::Succeeded { .. } => {
                        return Err("the next step has not failed; there is nothing to retry".into())
                    }
                }
                step.retry_granted = true;
                step.forward_base = step.forward.attempts();
                step.first_attempt_at = None;
                self.failure = None;
                self.failure_at = None;
            }
            OperatorCommand::Abandon => self.abandoned = Some(action.reason.clone()),
            OperatorCommand::Cancel => {
                if self.decision == Some(Decision::Commit) {
                    return Err("the commit decision is durable and confirms cannot be undone; compensate the transaction once it has committed".into());
                }
                self.compensation_ordered = true;
                for step in &mut self.steps {
                    step.compensation_base = step.compensation.attempts();
                }
            }
        }
        Ok(())
    }

    fn check_finish(&self, status: SagaStatus) -> Result<(), String> {
        match status {
            SagaStatus::Committed if self.plan().is_tcc() => {
                if self.decision != Some(Decision::Commit) || self.compensation_ordered {
                    return Err("a transaction commits only after the commit decision".into());
                }
                match self.steps.iter().position(|s| !s.confirm.is_succeeded()) {
                    Some(step) => Err(format!("branch {step} is not confirmed")),
                    None => Ok(()),
                }
            }
            SagaStatus::Committed => {
                if self.compensating || self.compensation_ordered {
                    return Err("a compensating saga cannot commit".into());
                }
                match self.steps.iter().position(|s| !s.forward.is_succeeded()) {
                    Some(step) => Err(format!("step {step} has not succeeded")),
                    None => Ok(()),
                }
            }
            SagaStatus::Compensated
                if self.plan().is_tcc()
                    && !(self.decision == Some(Decision::Commit) && self.compensation_ordered) =>
            {
                Err("a transaction that did not commit ends rolled_back, not compensated".into())
            }
            SagaStatus::Compensated | SagaStatus::RolledBack => {
                if status == SagaStatus::RolledBack && self.decision != Some(Decision::Rollback) {
                    return Err("rolled_back is a TCC outcome after the rollback decision".into());
                }
                if let Some(step) = self
                    .steps
                    .iter()
                    .position(|s| !s.is_compensated_or_untouched())
                {
                    return Err(format!("step {step} started and is not compensated"));
                }
                if !self.compensating
                    && !self.compensation_ordered
                    && self.failure.is_none()
                    && self.decision.is_none()
                {
                    return Err("no step failed for good and no compensation ran".into());
                }
                Ok(())
            }
            SagaStatus::Failed => match self.abandoned {
                Some(_) => Ok(()),
                None => Err("only an operator's abandon ends a saga failed".into()),
            },
            SagaStatus::Created
            | SagaStatus::Running
            | SagaStatus::Committing
            | SagaStatus::RollingBack
            | SagaStatus::Compensating
            | SagaStatus::Suspended => Err(format!("{status} is not a terminal status")),
        }
    }

    /// What the retry policy allows after step `step`'s action failed.
    /// Only meaningful when its forward state is `Failed`.
    /// Whether step `step`'s action, left in doubt at `attempt` (a restart
    /// found its intent without a result), runs again: the in-doubt policy
    /// re-runs and the step's retry policy has attempts left. Otherwise
    /// the saga gives up on the step.
    pub(crate) fn reruns_in_doubt(&self, step: StepIndex, attempt: Attempt) -> bool {
        let base = self.steps.get(step as usize).map_or(0, |s| s.forward_base);
        self.plan().in_doubt == crate::policy::InDoubtPolicy::Rerun
            && attempt.saturating_sub(base) < self.plan().retry_of(step).max_attempts
    }

    pub(crate) fn forward_retry(&self, step: StepIndex) -> Retry {
        let Some(state) = self.steps.get(step as usize) else {
            return Retry::No;
        };
        let CallState::Failed {
            attempt,
            failure,
            at,
        } = &state.forward
        else {
            return Retry::No;
        };
        if state.retry_granted {
            return Retry::Now;
        }
        if !failure.class.retries() {
            return Retry::No;
        }
        let policy = self.plan().retry_of(step);
        let used = attempt.saturating_sub(state.forward_base);
        if used >= policy.max_attempts {
            return Retry::No;
        }
        let due =
            at.plus_millis(policy.jittered_delay_after(used, self.jitter_seed(step, *attempt)));
        if let (Some(deadline), Some(first)) = (policy.deadline_ms, state.first_attempt_at) {
            if due > first.plus_millis(deadline) {
                return Retry::No;
            }
        }
        Retry::At(due)
    }

    /// A number that differs per saga, step and attempt, for jitter.
    pub(crate) fn jitter_seed(&self, step: StepIndex, attempt: Attempt) -> u64 {
        self.started_at.0 ^ (u64::from(step) << 40) ^ u64::from(attempt)
    }

    /// The saga's status, derived from the records alone.
    pub fn status(&self) -> SagaStatus {
        if let Some(status) = self.finished {
            return status;
        }
        if self.suspended.is_some() || self.abandoned.is_some() {
            return SagaStatus::Suspended;
        }
        if self.plan().is_tcc() {
            return match self.decision {
                Some(Decision::Commit) if self.compensation_ordered => SagaStatus::Compensating,
                Some(Decision::Commit) => SagaStatus::Committing,
                Some(Decision::Rollback) => SagaStatus::RollingBack,
                None if self.failure.is_some() || self.compensation_ordered => {
                    SagaStatus::RollingBack
                }
                None if self
                    .steps
                    .iter()
                    .all(|s| s.forward == CallState::NotStarted) =>
                {
                    SagaStatus::Created
                }
                None => SagaStatus::Running,
            };
        }
        if self.compensating || self.compensation_ordered || self.failure.is_some() {
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

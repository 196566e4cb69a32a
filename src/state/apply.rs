//! Applying one record to a saga's state: the rules of which record may
//! follow which. A record that breaks one is an [`IllegalTransition`].

use crate::ids::{StepIndex, UnixMillis};
use crate::log::record::{
    CallRef, Decision, LogEntry, OperatorAction, OperatorCommand, Record, StepFailure,
};
use crate::status::SagaStatus;

use super::step::CallKind;
use super::{CallState, IllegalTransition, PendingTimer, Retry, SagaState, StepState};

impl SagaState {
    /// Applies the next record, or explains why it cannot follow. On error
    /// the state may be partly changed: apply to a clone when the record
    /// comes from outside (an operator), and discard the state otherwise.
    // Long on purpose: one arm per record kind is the table of which record may
    // follow which; each rule it needs is a method of its own.
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
                let step = self
                    .in_flight(result.call, CallKind::Forward)
                    .map_err(illegal)?;
                step.forward.end(result.call.attempt, entry.at, None);
                step.output = Some(result.output.clone());
            }
            Record::StepFailed(result) => {
                let step = self
                    .in_flight(result.call, CallKind::Forward)
                    .map_err(illegal)?;
                step.earlier_attempt_in_doubt |= result.failure.class.maybe_applied();
                let failure = Some(result.failure.clone());
                step.forward.end(result.call.attempt, entry.at, failure);
                if self.failure.is_none() && self.forward_retry(result.call.step) == Retry::No {
                    self.failure = Some((result.call.step, result.failure.clone()));
                    self.failure_at = Some(entry.at);
                }
            }
            Record::CompensationStarted(call) => self
                .compensation_started(*call, entry.at)
                .map_err(illegal)?,
            Record::CompensationSucceeded(call) => self
                .end_call(*call, CallKind::Compensate, entry.at, None)
                .map_err(illegal)?,
            Record::CompensationFailed(result) => self
                .end_call(
                    result.call,
                    CallKind::Compensate,
                    entry.at,
                    Some(&result.failure),
                )
                .map_err(illegal)?,
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
            Record::ConfirmSucceeded(call) => self
                .end_call(*call, CallKind::Confirm, entry.at, None)
                .map_err(illegal)?,
            Record::ConfirmFailed(result) => self
                .end_call(
                    result.call,
                    CallKind::Confirm,
                    entry.at,
                    Some(&result.failure),
                )
                .map_err(illegal)?,
        }
        self.next_seq += 1;
        self.last_at = entry.at;
        Ok(())
    }

    /// Ends the open `kind` call `call` at `at`, failed with `failure` or
    /// succeeded.
    fn end_call(
        &mut self,
        call: CallRef,
        kind: CallKind,
        at: UnixMillis,
        failure: Option<&StepFailure>,
    ) -> Result<(), String> {
        let step = self.in_flight(call, kind)?;
        step.track_mut(kind).end(call.attempt, at, failure.cloned());
        Ok(())
    }

    /// The step of `call`, if `call` is the attempt of its `kind` in flight:
    /// only an open intent takes a result.
    pub(super) fn in_flight(
        &mut self,
        call: CallRef,
        kind: CallKind,
    ) -> Result<&mut StepState, String> {
        let step = self.step_mut(call.step)?;
        if step.track(kind).is_in_flight(call.attempt) {
            return Ok(step);
        }
        let what = match kind {
            CallKind::Forward => "",
            CallKind::Compensate => "compensation ",
            CallKind::Confirm => "confirm ",
        };
        let of = if kind == CallKind::Confirm {
            "branch"
        } else {
            "step"
        };
        Err(format!(
            "no {what}intent for attempt {} of {of} {} is open",
            call.attempt, call.step
        ))
    }

    pub(super) fn step_mut(&mut self, step: StepIndex) -> Result<&mut StepState, String> {
        let count = self.steps.len();
        self.steps
            .get_mut(step as usize)
            .ok_or_else(|| format!("step {step} does not exist; the plan has {count} steps"))
    }

    pub(super) fn step_started(&mut self, call: CallRef, at: UnixMillis) -> Result<(), String> {
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
        let expected = match &step.forward.state {
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
        // The previous attempt, if it never reported, stays in doubt.
        let unreported = matches!(step.forward.state, CallState::InFlight { .. });
        step.forward.start(call, at, expected)?;
        step.earlier_attempt_in_doubt |= unreported;
        step.retry_granted = false;
        step.first_attempt_at.get_or_insert(at);
        Ok(())
    }

    pub(super) fn compensation_started(
        &mut self,
        call: CallRef,
        at: UnixMillis,
    ) -> Result<(), String> {
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
        step.compensation
            .begin(call, at, "the step is already compensated")?;
        self.compensating = true;
        Ok(())
    }

    pub(super) fn decided(&mut self, decision: Decision) -> Result<(), String> {
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

    pub(super) fn confirm_started(&mut self, call: CallRef, at: UnixMillis) -> Result<(), String> {
        if self.decision != Some(Decision::Commit) || self.compensation_ordered {
            return Err("a branch is confirmed only after the commit decision".into());
        }
        if self.suspended.is_some() || self.abandoned.is_some() {
            return Err("a confirm may not start while the saga waits for an operator".into());
        }
        self.step_mut(call.step)?
            .confirm
            .begin(call, at, "the branch is already confirmed")
    }

    /// Refuses `command` when an action recorded and not yet carried out
    /// ([`SagaState::pending`]) repeats it or contradicts it: after a
    /// pending abandon nothing more can be ordered, a compensate or cancel
    /// is not ordered twice, and a retry and a compensation exclude each
    /// other. Marking further steps compensated stays possible.
    pub(super) fn refuse_against_pending(&self, command: OperatorCommand) -> Result<(), String> {
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

    // Long on purpose: one arm per operator command, each saying when that
    // command is legal (the table in DESIGN.md §6).
    pub(super) fn operator_action(
        &mut self,
        action: &OperatorAction,
        at: UnixMillis,
    ) -> Result<(), String> {
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
                    step.compensation.fresh_budget();
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
                state.compensation.state = CallState::Succeeded {
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
                    step.confirm.fresh_budget();
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
                match step.forward.state {
                    CallState::Failed { .. } | CallState::InFlight { .. } => {}
                    CallState::NotStarted | CallState::Succeeded { .. } => {
                        return Err("the next step has not failed; there is nothing to retry".into())
                    }
                }
                step.retry_granted = true;
                step.forward.fresh_budget();
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
                    step.compensation.fresh_budget();
                }
            }
        }
        Ok(())
    }

    pub(super) fn check_finish(&self, status: SagaStatus) -> Result<(), String> {
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
}

//! The loop every saga runs, fresh, recovered, or woken by a timer:
//!
//! ```text
//! state = fold(records)              (in memory, kept current by apply)
//! loop:
//!   apply operator commands from the mailbox (durable before replying)
//!   action = decide_live(state, now, running steps)
//!   RunStep / Compensate / Confirm -> stage intent, decide again
//!   Busy      -> append staged (durable), launch staged calls, wait for a result, stage it
//!   Decide    -> stage the TCC decision
//!   WaitUntil -> append staged + timer (durable) -> leave memory
//!   Suspend / Finish -> append staged + record (durable)
//!   AwaitOperator / Done -> leave memory
//! ```
//!
//! A call's result is staged and written together with the next intents,
//! the timer, or the terminal record: one flush per call instead of two,
//! and still no call without a durable intent before it (invariant I1).

use super::calls::{CallKind, Calls, SagaCode};
use super::staged::Staged;
use crate::definition::StepError;
use crate::engine::view::Outcome;
use crate::engine::{CallPoint, Command, Inner, SagaRun};
use crate::error::Error;
use crate::ids::SagaId;
use crate::ids::StepIndex;
use crate::log::record::{
    CallRef, Decided, Decision, Finished, PlanKind, Record, Suspended, TimerSet,
};
use crate::log::writer::AppendError;
use crate::state::{decide_live, NextAction, SagaState};
use crate::status::SagaStatus;
use crate::sync::lock;
use std::sync::Arc;

/// How a loop ended without error.
pub(crate) enum LoopEnd {
    /// Terminal, or waiting for an operator.
    Outcome(Outcome),
    /// Asleep on a durable timer; the delay queue wakes it.
    Sleeping,
}

impl Inner {
    /// Makes everything staged durable.
    pub(crate) async fn commit(&self, staged: &mut Staged, state: &SagaState) -> Result<(), Error> {
        let before = (staged.durable_status, staged.durable_timer.is_some());
        let undecided = staged.durable_decision.is_none();
        match staged.take(state)? {
            None => Ok(()),
            Some(append) => match self.writer.append(append).await {
                Ok(append) => {
                    staged.written(append, self.local_store);
                    record_transition(before, state);
                    if undecided && reports_at_decision(state) {
                        // asyncConfirm / asyncCancel: the caller learns the
                        // outcome now; the loop goes on in the background.
                        // A caller who asks while it does gets it too.
                        let outcome = Outcome::of(staged.saga, state);
                        lock(&self.decided).insert(staged.saga, outcome.clone());
                        self.notify_waiters(staged.saga, Ok(outcome));
                    }
                    Ok(())
                }
                Err(AppendError::Store(e)) => Err(Error::Store(e)),
                Err(AppendError::Closed) => Err(Error::shutting_down(staged.saga)),
                Err(AppendError::Conflict) => {
                    Err(Error::Store(super::start::conflict(staged.saga)))
                }
                Err(AppendError::KeyTaken(_)) => Err(Error::Store(
                    crate::log::store::StoreError::Backend("unexpected key claim conflict".into()),
                )),
            },
        }
    }

    /// Applies queued operator commands: each is checked against a copy of
    /// the state first, so a refused command changes nothing. Replies once
    /// the accepted ones are durable.
    async fn apply_commands(
        &self,
        id: SagaId,
        state: &mut SagaState,
        staged: &mut Staged,
    ) -> Result<(), Error> {
        let commands: Vec<Command> = match lock(&self.running).get_mut(&id) {
            Some(mailbox) => std::mem::take(mailbox),
            None => Vec::new(),
        };
        if commands.is_empty() {
            return Ok(());
        }
        let mut accepted = Vec::new();
        for (action, reply, queued) in commands {
            let record = Record::OperatorAction(action);
            match staged.push_checked(state, self.clock.now(), record) {
                Ok(()) => {
                    if let Some(queued) = queued {
                        staged.applies(queued);
                    }
                    accepted.push(reply)
                }
                Err(refused @ Error::Illegal { .. }) => {
                    let _ = reply.send(Err(refused));
                }
                Err(e) => return Err(e),
            }
        }
        let result = self.commit(staged, state).await;
        for reply in accepted {
            let _ = reply.send(result.clone());
        }
        result
    }

    /// Gives up ownership of the saga unless commands arrived meanwhile.
    pub(crate) fn release_if_idle(&self, id: SagaId) -> bool {
        let mut running = lock(&self.running);
        match running.get(&id) {
            Some(mailbox) if !mailbox.is_empty() => false,
            _ => {
                running.remove(&id);
                true
            }
        }
    }

    /// Drives one saga until it is terminal, waits for an operator, sleeps
    /// on a timer, or the engine stops. The caller owns the saga.
    ///
    /// Calls of steps that may run in parallel run as tasks of this loop:
    /// their intents are written in one append, and each result is staged
    /// as it arrives and written with the next intents (or the timer, or the
    /// terminal record).
    // Long on purpose: this is the loop of DESIGN.md §5, one arm per action,
    // and it reads against that outline line by line.
    pub(crate) async fn drive(self: &Arc<Self>, run: SagaRun) -> Result<LoopEnd, Error> {
        let SagaRun {
            id,
            definition,
            input,
            mut state,
            pending_calls,
            open,
        } = run;
        let code = SagaCode {
            id,
            definition,
            input,
        };
        let mut staged = Staged::resume(id, &state, open);
        let mut calls = Calls::default();
        // Intents staged (or, for a fresh saga, already durable) whose
        // calls have not been launched yet.
        let mut ready: Vec<(CallRef, CallKind)> = pending_calls;
        // The steps with a call running or about to be launched; one buffer
        // for the loop's life instead of a new one per turn.
        let mut live: Vec<StepIndex> = Vec::new();
        loop {
            self.apply_commands(id, &mut state, &mut staged).await?;
            let now = self.clock.now();
            live.clear();
            live.extend(calls.live().chain(ready.iter().map(|(call, _)| call.step)));
            let next = decide_live(&state, now, &live);
            let starts = match next {
                NextAction::RunStep { step, attempt } => Some((step, attempt, CallKind::Forward)),
                NextAction::Compensate { step, attempt } => {
                    Some((step, attempt, CallKind::Compensate))
                }
                NextAction::Confirm { step, attempt } => Some((step, attempt, CallKind::Confirm)),
                _ => None,
            };
            if let Some((step, attempt, kind)) = starts {
                if !self.stopping.is_cancelled() {
                    let call = CallRef { step, attempt };
                    staged.push(&mut state, now, kind.intent(call))?;
                    ready.push((call, kind));
                    continue;
                }
            }
            match next {
                NextAction::RunStep { .. }
                | NextAction::Compensate { .. }
                | NextAction::Confirm { .. }
                | NextAction::Busy => {
                    // I1: a participant is called only after its intent is durable.
                    self.commit(&mut staged, &state).await?;
                    if self.stopping.is_cancelled() {
                        // Start nothing new; intents written but not called
                        // stay in doubt for recovery. Finish what runs.
                        ready.clear();
                        if calls.is_empty() {
                            return Err(Error::shutting_down(id));
                        }
                    }
                    if !ready.is_empty() {
                        self.may_call(id).await?;
                    }
                    for (call, kind) in ready.drain(..) {
                        self.launch(&code, &state, &mut calls, call, kind);
                    }
                    let (call, kind, number, result) = tokio::select! {
                        next = calls.next() => next,
                        _ = self.aborting.cancelled() => return Err(Error::shutting_down(id)),
                    };
                    if let Some(hook) = &self.around_call {
                        hook(CallPoint::AfterCall, number);
                    }
                    let at = self.clock.now();
                    match staged.push(&mut state, at, kind.result(call, result)) {
                        // The call ran, but its result cannot be written:
                        // settle it in doubt, here and now, instead of
                        // leaving the saga stuck until a restart re-runs it.
                        Err(Error::Encode { reason, .. }) => {
                            let failure = StepError::in_doubt(format!(
                                "the call's result could not be stored ({reason}), so it is not run again and its effect counts as possible"
                            ));
                            staged.push(&mut state, at, kind.result(call, Err(failure)))?;
                        }
                        other => other?,
                    }
                }
                NextAction::Decide { decision } => {
                    tracing::info!(?decision, "transaction decided");
                    staged.push(&mut state, now, Record::Decided(Decided { decision }))?;
                }
                NextAction::WaitUntil { due, purpose } => {
                    tracing::debug!(due = due.0, ?purpose, "sleeping on a durable timer");
                    staged.push(&mut state, now, Record::TimerSet(TimerSet { due, purpose }))?;
                    self.commit(&mut staged, &state).await?;
                    if let Some(timer) = &state.timer {
                        self.delay_queue.insert(staged.key_of(timer));
                    }
                    if self.release_if_idle(id) {
                        return Ok(LoopEnd::Sleeping);
                    }
                }
                NextAction::Suspend { reason } => {
                    tracing::warn!(%reason, "saga suspended; an operator must act");
                    staged.push(
                        &mut state,
                        now,
                        Record::SagaSuspended(Suspended {
                            reason: reason.clone(),
                        }),
                    )?;
                    self.commit(&mut staged, &state).await?;
                    if let Some(alert) = &self.on_suspend {
                        // A panicking hook must not leave the saga owned by a dead task.
                        let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            alert(id, &reason)
                        }));
                        if called.is_err() {
                            tracing::error!("the on_suspend hook panicked");
                        }
                    }
                }
                NextAction::Finish { status } => {
                    staged.push(&mut state, now, Record::SagaFinished(Finished { status }))?;
                    self.commit(&mut staged, &state).await?;
                    tracing::info!(%status, "saga finished");
                }
                NextAction::AwaitOperator | NextAction::Done { .. } => {
                    self.commit(&mut staged, &state).await?;
                    if self.release_if_idle(id) {
                        return Ok(LoopEnd::Outcome(Outcome::of(id, &state)));
                    }
                }
            }
        }
    }
}

/// True when `state` holds a TCC decision whose outcome the plan reports
/// before the confirms or cancels are done.
pub(crate) fn reports_at_decision(state: &SagaState) -> bool {
    match (state.decision, state.plan().kind) {
        (
            Some(decision),
            PlanKind::Tcc {
                async_confirm,
                async_cancel,
            },
        ) => match decision {
            Decision::Commit => async_confirm,
            Decision::Rollback => async_cancel,
        },
        _ => false,
    }
}

/// Keeps the queue gauges and the finished counter current after a durable
/// append moved a saga from `before` (status, asleep) to `state`.
fn record_transition(before: (Option<SagaStatus>, bool), state: &SagaState) {
    use crate::metrics::{DELAY_QUEUE_DEPTH, MANUAL_QUEUE_DEPTH, SAGAS_FINISHED};
    let (status, asleep) = (state.status(), state.timer.is_some());
    let was_suspended = before.0 == Some(SagaStatus::Suspended);
    if was_suspended != (status == SagaStatus::Suspended) {
        let delta = if was_suspended { -1.0 } else { 1.0 };
        metrics::gauge!(MANUAL_QUEUE_DEPTH).increment(delta);
    }
    if before.1 != asleep {
        metrics::gauge!(DELAY_QUEUE_DEPTH).increment(if asleep { 1.0 } else { -1.0 });
    }
    if status.is_terminal() && !before.0.is_some_and(SagaStatus::is_terminal) {
        metrics::counter!(
            SAGAS_FINISHED,
            "saga_type" => state.saga_type().shared(),
            "status" => status.name()
        )
        .increment(1);
    }
}

//! The loop every saga runs, fresh, recovered, or woken by a timer:
//!
//! ```text
//! state  = fold(records)              (in memory, kept current by apply)
//! loop:
//!   apply operator commands from the mailbox (durable before replying)
//!   action = decide(state, now)
//!   RunStep / Compensate -> append intent (durable) -> call -> stage result
//!   WaitUntil            -> append staged + timer (durable) -> leave memory
//!   Suspend / Finish     -> append staged + record (durable)
//!   AwaitOperator / Done -> leave memory
//! ```
//!
//! A call's result is staged and written together with the next intent, the
//! timer, or the terminal record: one flush per call instead of two, and
//! still no call without a durable intent before it (invariant I1).

use crate::definition::{CallSpec, ErasedInput, ErasedSaga, Phase, StepError};
use crate::engine::view::{failure_of, Outcome};
use crate::engine::{CallPoint, Command, Inner, SagaRun};
use crate::error::Error;
use crate::ids::{SagaId, UnixMillis};
use crate::log::codec;
use crate::log::record::{
    CallFailed, CallRef, CallSucceeded, Finished, LogEntry, Record, Suspended, TimerSet,
};
use crate::log::store::{IndexEntry, IndexSet, IndexUpdate, SagaAppend, TimerKey};
use crate::log::writer::AppendError;
use crate::state::{decide, NextAction, PendingTimer, SagaState};
use crate::status::SagaStatus;
use crate::sync::lock;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// How a loop ended without error.
pub(crate) enum LoopEnd {
    /// Terminal, or waiting for an operator.
    Outcome(Outcome),
    /// Asleep on a durable timer; the delay queue wakes it.
    Sleeping,
}

/// Records applied to the in-memory state but not yet durable, and what
/// the last durable write left in the indexes.
pub(crate) struct Staged {
    saga: SagaId,
    first_seq: u64,
    frames: Vec<Vec<u8>>,
    durable_status: Option<SagaStatus>,
    durable_timer: Option<PendingTimer>,
}

impl Staged {
    /// `state` is what is durable now (`None` before the start record).
    pub(crate) fn new(saga: SagaId, state: Option<&SagaState>) -> Self {
        Staged {
            saga,
            first_seq: state.map_or(0, |s| s.next_seq),
            frames: Vec::new(),
            durable_status: state.map(|s| s.status()),
            durable_timer: state.and_then(|s| s.timer.clone()),
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

    /// Like [`Staged::push`], for a record from outside the engine (an
    /// operator action): it is applied to a copy of the state first, so a
    /// refused record ([`Error::Illegal`]) leaves `state` unchanged.
    pub(crate) fn push_checked(
        &mut self,
        state: &mut SagaState,
        at: UnixMillis,
        record: Record,
    ) -> Result<(), Error> {
        let mut trial = state.clone();
        self.push(&mut trial, at, record)?;
        *state = trial;
        Ok(())
    }

    /// Stages an already-encoded frame (the start record, applied by the caller).
    pub(crate) fn stage_frame(&mut self, frame: Vec<u8>) {
        self.frames.push(frame);
    }

    /// Turns the staged frames into one append, with the index and timer
    /// changes that the new state requires.
    pub(crate) fn take(&mut self, state: &SagaState) -> Result<Option<SagaAppend>, Error> {
        if self.frames.is_empty() {
            return Ok(None);
        }
        let status = state.status();
        let timer_changed = self.durable_timer != state.timer;
        let index = if self.durable_status != Some(status) || timer_changed {
            let entry = IndexEntry {
                saga_type: state.saga_type().clone(),
                status,
                started_at: state.started_at,
                next_wake: state.timer.as_ref().map(|t| t.due),
                changed_at: state.last_at,
            };
            let bytes =
                codec::encode_index_entry(&entry).map_err(|e| Error::encode("index entry", e))?;
            Some(IndexUpdate {
                entry: bytes,
                from: self.durable_status.map(index_set),
                to: index_set(status),
            })
        } else {
            None
        };
        let mut append =
            SagaAppend::records(self.saga, self.first_seq, std::mem::take(&mut self.frames));
        append.index = index;
        if timer_changed {
            append.timer_delete = self.durable_timer.as_ref().map(|t| self.key_of(t));
            if let Some(timer) = &state.timer {
                let purpose = codec::encode_index_entry(&timer.purpose)
                    .map_err(|e| Error::encode("timer", e))?;
                append.timer_put = Some((self.key_of(timer), purpose));
            }
        }
        self.first_seq = state.next_seq;
        self.durable_status = Some(status);
        self.durable_timer = state.timer.clone();
        Ok(Some(append))
    }

    fn key_of(&self, timer: &PendingTimer) -> TimerKey {
        TimerKey {
            due: timer.due,
            saga: self.saga,
            seq: timer.seq,
        }
    }
}

impl Inner {
    /// Makes everything staged durable.
    pub(crate) async fn commit(&self, staged: &mut Staged, state: &SagaState) -> Result<(), Error> {
        let before = (staged.durable_status, staged.durable_timer.is_some());
        match staged.take(state)? {
            None => Ok(()),
            Some(append) => match self.writer.append(append).await {
                Ok(()) => {
                    record_transition(before, state);
                    Ok(())
                }
                Err(AppendError::Store(e)) => Err(Error::Store(e)),
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
        for (action, reply) in commands {
            let record = Record::OperatorAction(action);
            match staged.push_checked(state, self.clock.now(), record) {
                Ok(()) => accepted.push(reply),
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
    pub(crate) async fn drive(self: &Arc<Self>, run: SagaRun) -> Result<LoopEnd, Error> {
        let SagaRun {
            id,
            definition,
            input,
            mut state,
            pending_call,
        } = run;
        let code = SagaCode {
            id,
            definition,
            input,
        };
        let mut staged = Staged::new(id, Some(&state));
        if let Some(call) = pending_call {
            if self.stopping.is_cancelled() {
                // Left in doubt: recovery re-runs it.
                return Err(Error::ShuttingDown(id));
            }
            self.invoke(&code, &mut state, &mut staged, call, Phase::Action)
                .await?;
        }
        loop {
            self.apply_commands(id, &mut state, &mut staged).await?;
            let now = self.clock.now();
            match decide(&state, now) {
                NextAction::RunStep { step, attempt } => {
                    let call = CallRef { step, attempt };
                    self.call_step(&code, &mut state, &mut staged, call, Phase::Action)
                        .await?
                }
                NextAction::Compensate { step, attempt } => {
                    let call = CallRef { step, attempt };
                    self.call_step(&code, &mut state, &mut staged, call, Phase::Compensation)
                        .await?
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
                        return Ok(LoopEnd::Outcome(Outcome {
                            saga_id: id,
                            status: state.status(),
                            failure: failure_of(&state),
                            reason: state.suspended.clone(),
                        }));
                    }
                }
            }
        }
    }

    /// Writes the intent for `call` durably, then calls the participant.
    async fn call_step(
        &self,
        code: &SagaCode,
        state: &mut SagaState,
        staged: &mut Staged,
        call: CallRef,
        phase: Phase,
    ) -> Result<(), Error> {
        let id = code.id;
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
        if call.attempt > 1 {
            metrics::counter!(crate::metrics::RETRIES, "phase" => phase.as_str()).increment(1);
        }
        if phase == Phase::Compensation {
            metrics::counter!(crate::metrics::COMPENSATIONS).increment(1);
        }
        self.invoke(code, state, staged, call, phase).await
    }

    /// Calls the participant for `call`, whose intent is durable, and stages
    /// the result record.
    async fn invoke(
        &self,
        code: &SagaCode,
        state: &mut SagaState,
        staged: &mut Staged,
        call: CallRef,
        phase: Phase,
    ) -> Result<(), Error> {
        let SagaCode {
            id,
            definition,
            input,
        } = code;
        let (id, step, attempt) = (*id, call.step, call.attempt);

        let outputs: Arc<[Option<Vec<u8>>]> =
            state.steps.iter().map(|s| s.output.clone()).collect();
        let timeout = state.plan().timeout_of(step);
        let spec = CallSpec {
            saga_id: id,
            step,
            phase,
            attempt,
            outputs,
        };
        let span = tracing::info_span!(
            "call",
            saga_id = %id,
            step = %state.plan().step_name(step),
            phase = %phase,
            attempt
        );
        let number = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if let Some(hook) = &self.around_call {
            hook(CallPoint::BeforeCall, number);
        }
        let future = definition.call(spec, input).instrument(span);
        // Spawned so that a panicking participant is an error, not a dead
        // saga task; aborted when dropped (timeout, hard shutdown).
        let task = AbortOnDrop(tokio::spawn(future));
        let began = std::time::Instant::now();
        let deadline = async {
            match timeout {
                Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                None => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            joined = task.join() => match joined {
                Ok(result) => result,
                Err(e) => Err(StepError::unknown(format!("the participant panicked or was cancelled: {e}"))),
            },
            _ = deadline => Err(StepError::unknown(format!(
                "no reply within {} ms; the call may have taken effect",
                timeout.unwrap_or(0)
            ))),
            _ = self.aborting.cancelled() => return Err(Error::ShuttingDown(id)),
        };
        metrics::histogram!(
            crate::metrics::CALL_SECONDS,
            "phase" => phase.as_str(),
            "outcome" => if result.is_ok() { "ok" } else { "error" }
        )
        .record(began.elapsed().as_secs_f64());
        if let Some(hook) = &self.around_call {
            hook(CallPoint::AfterCall, number);
        }
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
            "saga_type" => state.saga_type().to_string(),
            "status" => status.name()
        )
        .increment(1);
    }
}

/// The index a saga's entry belongs in. A sleeping saga stays in the active
/// index, its entry overwritten with `next_wake`: moving it to an index of
/// its own would delete a key written moments before, and sled 0.34 holds
/// memory for every such short-lived key (DESIGN.md §10).
fn index_set(status: SagaStatus) -> IndexSet {
    if status.is_terminal() {
        IndexSet::Finished
    } else {
        IndexSet::Active
    }
}

/// What a loop calls participants with: the saga's id, its code, its input.
struct SagaCode {
    id: SagaId,
    definition: Arc<dyn ErasedSaga>,
    input: ErasedInput,
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

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

use crate::definition::{CallSpec, ErasedInput, ErasedSaga, Phase, StepError};
use crate::engine::view::Outcome;
use crate::engine::{CallPoint, Command, Inner, SagaRun};
use crate::error::Error;
use crate::ids::StepIndex;
use crate::ids::{SagaId, UnixMillis};
use crate::log::codec;
use crate::log::record::{
    CallFailed, CallRef, CallSucceeded, Decided, Decision, Finished, LogEntry, PlanKind, Record,
    Suspended, TimerSet,
};
use crate::log::store::{IndexEntry, IndexSet, IndexUpdate, LogValue, SagaAppend, TimerKey};
use crate::log::writer::AppendError;
use crate::state::{decide_live, NextAction, PendingTimer, SagaState};
use crate::status::SagaStatus;
use crate::sync::lock;
use std::future::Future;
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

/// The largest log value a loop grows by rewriting it (DESIGN.md §4b):
/// past it, the next append starts a new value. Small enough that the
/// rewrites cost little, large enough for a short saga's whole log.
pub(crate) const OPEN_VALUE_LIMIT: usize = 2048;

/// Records applied to the in-memory state but not yet durable, and what
/// the last durable write left in the indexes.
pub(crate) struct Staged {
    saga: SagaId,
    first_seq: u64,
    /// The value the next append writes: the saga's last log value as this
    /// loop wrote it (its first `durable_len` bytes, while it is under
    /// [`OPEN_VALUE_LIMIT`]), followed by the frames staged since, each
    /// encoded straight into it. The append rewrites the whole value under
    /// its key, so a short saga keeps its whole log in one key (§4b).
    value: LogValue,
    /// How many leading bytes of `value` are durable: 0 when the next
    /// append starts a new value at `first_seq`.
    durable_len: usize,
    durable_status: Option<SagaStatus>,
    durable_timer: Option<PendingTimer>,
    durable_decision: Option<Decision>,
    /// Whether the durable state has operator actions not yet carried out.
    durable_pending: bool,
}

impl Staged {
    /// `state` is what is durable now (`None` before the start record).
    pub(crate) fn new(saga: SagaId, state: Option<&SagaState>) -> Self {
        let first_seq = state.map_or(0, |s| s.next_seq);
        Staged {
            saga,
            first_seq,
            value: LogValue {
                seq: first_seq,
                bytes: Vec::new(),
            },
            durable_len: 0,
            durable_status: state.map(|s| s.status()),
            durable_timer: state.and_then(|s| s.timer.clone()),
            durable_decision: state.and_then(|s| s.decision),
            durable_pending: state.is_some_and(|s| !s.pending.is_empty()),
        }
    }

    /// The same, going on from the last log value another `Staged` of this
    /// saga wrote and made durable (the start, handing over to the loop).
    pub(crate) fn resume(saga: SagaId, state: &SagaState, open: Option<LogValue>) -> Self {
        let mut staged = Staged::new(saga, Some(state));
        if let Some(open) = open {
            staged.durable_len = open.bytes.len();
            staged.value = open;
        }
        staged
    }

    /// The last log value this `Staged` wrote, if it may still grow and
    /// nothing is staged after it.
    pub(crate) fn into_open(self) -> Option<LogValue> {
        (self.durable_len > 0 && self.durable_len == self.value.bytes.len()).then_some(self.value)
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
        // Encoded first: a record that cannot be encoded leaves both the
        // value and the state as they were.
        let before = self.value.bytes.len();
        codec::encode_record_into(&mut self.value.bytes, at, &entry.record)
            .map_err(|e| Error::encode("record", e))?;
        if let Err(error) = state.apply(&entry) {
            self.value.bytes.truncate(before);
            return Err(Error::Illegal {
                saga: self.saga,
                error,
            });
        }
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
        if self.value.bytes.is_empty() {
            self.value.bytes = frame;
        } else {
            self.value.bytes.extend_from_slice(&frame);
        }
    }

    /// Turns the staged frames into one append, with the index and timer
    /// changes that the new state requires. The staged value goes with the
    /// append; [`Staged::written`] takes it back once it is durable.
    pub(crate) fn take(&mut self, state: &SagaState) -> Result<Option<SagaAppend>, Error> {
        if self.value.bytes.len() == self.durable_len {
            return Ok(None);
        }
        let status = state.status();
        let timer_changed = self.durable_timer != state.timer;
        let pending = !state.pending.is_empty();
        let index = if self.durable_status != Some(status)
            || timer_changed
            || pending
            || self.durable_pending
        {
            let entry = index_entry(state);
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
        let mut value = std::mem::replace(
            &mut self.value,
            LogValue {
                seq: state.next_seq,
                bytes: Vec::new(),
            },
        );
        let mut added_from = std::mem::take(&mut self.durable_len);
        if added_from == 0 {
            value.seq = self.first_seq;
        } else if value.bytes.len() > OPEN_VALUE_LIMIT {
            // The open value would grow past the limit: the new frames
            // start a value of their own instead.
            value.bytes.drain(..added_from);
            value.seq = self.first_seq;
            added_from = 0;
        }
        let mut append = SagaAppend::records(self.saga, self.first_seq, Vec::new());
        append.value = value;
        append.added_from = added_from;
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
        self.durable_decision = state.decision;
        self.durable_pending = pending;
        Ok(Some(append))
    }

    /// `append`, taken from this `Staged`, is durable: its log value, while
    /// under [`OPEN_VALUE_LIMIT`], becomes the open value the next append
    /// extends. Only an acknowledged write may be extended (§4b), so the
    /// caller hands the append back only after the writer's `Ok`.
    pub(crate) fn written(&mut self, append: SagaAppend) {
        let value = append.value;
        if self.value.bytes.is_empty()
            && !value.bytes.is_empty()
            && value.bytes.len() < OPEN_VALUE_LIMIT
        {
            self.durable_len = value.bytes.len();
            self.value = value;
        }
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
        let undecided = staged.durable_decision.is_none();
        match staged.take(state)? {
            None => Ok(()),
            Some(append) => match self.writer.append(append).await {
                Ok(append) => {
                    staged.written(append);
                    record_transition(before, state);
                    if undecided && reports_at_decision(state) {
                        // asyncConfirm / asyncCancel: the caller learns the
                        // outcome now; the loop goes on in the background.
                        self.notify_waiters(staged.saga, Ok(Outcome::of(staged.saga, state)));
                    }
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
    ///
    /// Calls of steps that may run in parallel run as tasks of this loop:
    /// their intents are written in one append, and each result is staged
    /// as it arrives and written with the next intents (or the timer, or the
    /// terminal record).
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
                            return Err(Error::ShuttingDown(id));
                        }
                    }
                    for (call, kind) in ready.drain(..) {
                        self.launch(&code, &state, &mut calls, call, kind);
                    }
                    let (call, kind, number, result) = tokio::select! {
                        next = calls.next() => next,
                        _ = self.aborting.cancelled() => return Err(Error::ShuttingDown(id)),
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

    /// Starts the participant call for `call`, whose intent is durable: polls
    /// it once here, and spawns it into `calls` if it has to wait. A panic
    /// of the participant, on that poll or later, is its call's error.
    fn launch(
        self: &Arc<Self>,
        code: &SagaCode,
        state: &SagaState,
        calls: &mut Calls,
        call: CallRef,
        kind: CallKind,
    ) {
        let (id, step, attempt) = (code.id, call.step, call.attempt);
        let phase = kind.phase(state);
        if attempt > 1 {
            metrics::counter!(crate::metrics::RETRIES, "phase" => phase.as_str()).increment(1);
        }
        if kind == CallKind::Compensate {
            metrics::counter!(crate::metrics::COMPENSATIONS).increment(1);
        }
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
        let child = state
            .plan()
            .steps
            .get(step as usize)
            .and_then(|s| s.child.clone());
        let began = std::time::Instant::now();
        let deadline =
            timeout.map(|ms| (ms, tokio::time::Instant::now() + Duration::from_millis(ms)));
        let launched = Launched {
            call,
            kind,
            phase,
            number,
            began,
        };
        // The participant's code runs first here, in this loop's task: a
        // call that is ready at once (a local step, a cached reply) is
        // reported without a task of its own. A call that has to wait is
        // then spawned, so that it makes progress while this loop waits for
        // its own writes, and runs in parallel with its sibling calls.
        let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let future: crate::definition::BoxFuture<Result<Vec<u8>, StepError>> = match child {
                Some(child_type) => {
                    let engine = crate::engine::Engine {
                        _handle: None,
                        inner: self.clone(),
                    };
                    let input = (kind == CallKind::Forward)
                        .then(|| code.definition.child_input(spec, &code.input));
                    Box::pin(engine.run_child(id, step, child_type, input))
                }
                None => code.definition.call(spec, &code.input),
            };
            let mut future = future.instrument(span);
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match std::pin::Pin::new(&mut future).poll(&mut cx) {
                std::task::Poll::Ready(result) => Ok(result),
                std::task::Poll::Pending => Err(future),
            }
        }));
        let future = match first {
            Ok(Ok(result)) => {
                calls.ready.push_back((launched, result));
                return;
            }
            Ok(Err(pending)) => pending,
            Err(panic) => {
                let result = Err(StepError::unknown(format!(
                    "the participant panicked: {}",
                    panic_message(panic.as_ref())
                )));
                calls.ready.push_back((launched, result));
                return;
            }
        };
        let timed = async move {
            match deadline {
                None => future.await,
                Some((ms, at)) => tokio::time::timeout_at(at, future)
                    .await
                    .unwrap_or_else(|_| {
                        Err(StepError::unknown(format!(
                            "no reply within {ms} ms; the call may have taken effect"
                        )))
                    }),
            }
        };
        // Spawned so that a panicking participant is an error, not a dead
        // saga task; aborted when the set is dropped (hard shutdown).
        let handle = calls.set.spawn(timed);
        calls.meta.insert(handle.id(), launched);
    }
}

/// The text a panic carries, for the error that reports it.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(text) = panic.downcast_ref::<&str>() {
        text
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text
    } else {
        "(no message)"
    }
}

/// The three kinds of participant call, by the records they write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallKind {
    /// A saga step's action or a TCC try.
    Forward,
    /// A compensation, a TCC cancel, or the compensation of a committed branch.
    Compensate,
    /// A TCC confirm.
    Confirm,
}

impl CallKind {
    fn intent(self, call: CallRef) -> Record {
        match self {
            CallKind::Forward => Record::StepStarted(call),
            CallKind::Compensate => Record::CompensationStarted(call),
            CallKind::Confirm => Record::ConfirmStarted(call),
        }
    }

    /// What the participant is told it is doing.
    fn phase(self, state: &SagaState) -> Phase {
        let tcc = state.plan().is_tcc();
        match self {
            CallKind::Forward if tcc => Phase::Try,
            CallKind::Forward => Phase::Action,
            CallKind::Confirm => Phase::Confirm,
            CallKind::Compensate if tcc && state.decision != Some(Decision::Commit) => {
                Phase::Cancel
            }
            CallKind::Compensate => Phase::Compensation,
        }
    }

    fn result(self, call: CallRef, result: Result<Vec<u8>, StepError>) -> Record {
        match (self, result) {
            (CallKind::Forward, Ok(output)) => {
                Record::StepSucceeded(CallSucceeded { call, output })
            }
            (CallKind::Compensate, Ok(_)) => Record::CompensationSucceeded(call),
            (CallKind::Confirm, Ok(_)) => Record::ConfirmSucceeded(call),
            (kind, Err(e)) => {
                tracing::info!(error = %e, ?kind, "participant call failed");
                let failed = CallFailed {
                    call,
                    failure: e.into_failure(),
                };
                match kind {
                    CallKind::Forward => Record::StepFailed(failed),
                    CallKind::Compensate => Record::CompensationFailed(failed),
                    CallKind::Confirm => Record::ConfirmFailed(failed),
                }
            }
        }
    }
}

struct Launched {
    call: CallRef,
    kind: CallKind,
    phase: Phase,
    number: u64,
    began: std::time::Instant,
}

/// The participant calls of one saga that are running now, and those that
/// finished on their first poll and are not reported yet.
#[derive(Default)]
struct Calls {
    set: tokio::task::JoinSet<Result<Vec<u8>, StepError>>,
    meta: crate::ids::IdMap<tokio::task::Id, Launched>,
    ready: std::collections::VecDeque<(Launched, Result<Vec<u8>, StepError>)>,
}

impl Calls {
    fn live(&self) -> impl Iterator<Item = StepIndex> + '_ {
        let ready = self.ready.iter().map(|(l, _)| l.call.step);
        self.meta.values().map(|l| l.call.step).chain(ready)
    }

    fn is_empty(&self) -> bool {
        self.meta.is_empty() && self.ready.is_empty()
    }

    /// The next call to report: one that finished on its first poll, in
    /// launch order, else the next spawned one to finish. Never returns
    /// while none runs.
    async fn next(&mut self) -> (CallRef, CallKind, u64, Result<Vec<u8>, StepError>) {
        let (launched, result) = match self.ready.pop_front() {
            Some(done) => done,
            None => self.join_next().await,
        };
        metrics::histogram!(
            crate::metrics::CALL_SECONDS,
            "phase" => launched.phase.as_str(),
            "outcome" => if result.is_ok() { "ok" } else { "error" }
        )
        .record(launched.began.elapsed().as_secs_f64());
        (launched.call, launched.kind, launched.number, result)
    }

    async fn join_next(&mut self) -> (Launched, Result<Vec<u8>, StepError>) {
        loop {
            let (id, result) = match self.set.join_next_with_id().await {
                None => std::future::pending().await,
                Some(Ok((id, result))) => (id, result),
                Some(Err(e)) => (
                    e.id(),
                    Err(StepError::unknown(format!(
                        "the participant panicked or was cancelled: {e}"
                    ))),
                ),
            };
            if let Some(launched) = self.meta.remove(&id) {
                return (launched, result);
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

/// The index entry that sums up `state`.
pub(crate) fn index_entry(state: &SagaState) -> IndexEntry {
    IndexEntry {
        saga_type: state.saga_type().clone(),
        status: state.status(),
        started_at: state.started_at,
        next_wake: state.timer.as_ref().map(|t| t.due),
        changed_at: state.last_at,
        pending: state.pending_summary(),
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

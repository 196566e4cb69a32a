//! Participant calls: launching one as a task of its saga's loop (after its
//! intent is durable), and collecting the results as they arrive.

use crate::definition::{CallSpec, ErasedInput, ErasedSaga, Phase, StepError};
use crate::engine::{CallPoint, Inner};
use crate::ids::SagaId;
use crate::ids::StepIndex;
use crate::log::record::{CallFailed, CallRef, CallSucceeded, Decision, Record};
pub(crate) use crate::state::CallKind;
use crate::state::SagaState;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

impl Inner {
    /// Starts the participant call for `call`, whose intent is durable: polls
    /// it once here, and spawns it into `calls` if it has to wait. A panic
    /// of the participant, on that poll or later, is its call's error.
    pub(super) fn launch(
        self: &Arc<Self>,
        code: &SagaCode,
        state: &SagaState,
        calls: &mut Calls,
        call: CallRef,
        kind: CallKind,
    ) {
        let (id, step, attempt) = (code.id, call.step, call.attempt);
        let phase = kind.phase(state);
        count_call(phase, attempt, kind);
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
            let mut future = self.participant(code, spec, child, kind).instrument(span);
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
        // Spawned so that a panicking participant is an error, not a dead
        // saga task; aborted when the set is dropped (hard shutdown).
        let handle = calls.set.spawn(with_deadline(future, deadline));
        calls.meta.insert(handle.id(), launched);
    }

    /// The future of one call: the participant's, or for a sub-saga step
    /// the engine's own, which starts or finds the child and waits for it.
    fn participant(
        self: &Arc<Self>,
        code: &SagaCode,
        spec: CallSpec,
        child: Option<crate::ids::SagaType>,
        kind: CallKind,
    ) -> crate::definition::BoxFuture<Result<Vec<u8>, StepError>> {
        match child {
            Some(child_type) => {
                let (id, step) = (spec.saga_id, spec.step);
                let engine = crate::engine::Engine {
                    _handle: None,
                    inner: self.clone(),
                };
                let input = (kind == CallKind::Forward)
                    .then(|| code.definition.child_input(spec, &code.input));
                Box::pin(engine.run_child(id, step, child_type, input))
            }
            None => code.definition.call(spec, &code.input),
        }
    }
}

/// Counts a call that is about to be made: a retry, a compensation.
fn count_call(phase: Phase, attempt: u32, kind: CallKind) {
    if attempt > 1 {
        metrics::counter!(crate::metrics::RETRIES, "phase" => phase.as_str()).increment(1);
    }
    if kind == CallKind::Compensate {
        metrics::counter!(crate::metrics::COMPENSATIONS).increment(1);
    }
}

/// `future`, ended as an `Unknown` failure if it is not done by the
/// deadline (its timeout in ms, and the instant it runs out).
async fn with_deadline<F>(
    future: F,
    deadline: Option<(u64, tokio::time::Instant)>,
) -> Result<Vec<u8>, StepError>
where
    F: Future<Output = Result<Vec<u8>, StepError>>,
{
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
}

/// The text a panic carries, for the error that reports it.
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(text) = panic.downcast_ref::<&str>() {
        text
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text
    } else {
        "(no message)"
    }
}

/// The records each kind of call writes, and the phase its participant sees.
impl CallKind {
    pub(super) fn intent(self, call: CallRef) -> Record {
        match self {
            CallKind::Forward => Record::StepStarted(call),
            CallKind::Compensate => Record::CompensationStarted(call),
            CallKind::Confirm => Record::ConfirmStarted(call),
        }
    }

    /// What the participant is told it is doing.
    pub(super) fn phase(self, state: &SagaState) -> Phase {
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

    pub(super) fn result(self, call: CallRef, result: Result<Vec<u8>, StepError>) -> Record {
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

pub(super) struct Launched {
    call: CallRef,
    kind: CallKind,
    phase: Phase,
    number: u64,
    began: std::time::Instant,
}

/// The participant calls of one saga that are running now, and those that
/// finished on their first poll and are not reported yet.
#[derive(Default)]
pub(super) struct Calls {
    set: tokio::task::JoinSet<Result<Vec<u8>, StepError>>,
    meta: crate::ids::IdMap<tokio::task::Id, Launched>,
    ready: std::collections::VecDeque<(Launched, Result<Vec<u8>, StepError>)>,
}

impl Calls {
    pub(super) fn live(&self) -> impl Iterator<Item = StepIndex> + '_ {
        let ready = self.ready.iter().map(|(l, _)| l.call.step);
        self.meta.values().map(|l| l.call.step).chain(ready)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.meta.is_empty() && self.ready.is_empty()
    }

    /// The next call to report: one that finished on its first poll, in
    /// launch order, else the next spawned one to finish. Never returns
    /// while none runs.
    pub(super) async fn next(&mut self) -> (CallRef, CallKind, u64, Result<Vec<u8>, StepError>) {
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

/// What a loop calls participants with: the saga's id, its code, its input.
pub(super) struct SagaCode {
    pub(super) id: SagaId,
    pub(super) definition: Arc<dyn ErasedSaga>,
    pub(super) input: ErasedInput,
}

//! Fold and decide: the pure core. No I/O, no clock reads, no randomness.
//!
//! [`fold`] turns a saga's log into a [`SagaState`], rejecting any sequence
//! the engine could not have written (an [`IllegalTransition`]). [`decide`]
//! turns a state and a clock value into the one [`NextAction`] the engine
//! performs next. The engine applies its own records through the same
//! [`SagaState::apply`], so a bug that would write an illegal record is
//! caught before the record reaches the disk.

mod apply;
mod decide;
mod step;
#[cfg(test)]
mod tests;

pub use decide::{decide, decide_live, to_compensate, NextAction};
pub(crate) use step::CallKind;
pub(crate) use step::Retry;
pub use step::{CallState, PendingTimer, StepState};

use crate::ids::{Attempt, IdempotencyKey, SagaType, StepIndex, UnixMillis};
use crate::log::record::{
    Decision, LogEntry, OperatorAction, Record, SagaPlan, SagaStarted, StepFailure,
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

    /// True when every branch's confirm succeeded.
    pub fn all_confirmed(&self) -> bool {
        self.steps.iter().all(|s| s.confirm.is_succeeded())
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

    /// Whether step `step`'s action, left in doubt at `attempt` (a restart
    /// found its intent without a result), runs again: the in-doubt policy
    /// re-runs and the step's retry policy has attempts left. Otherwise
    /// the saga gives up on the step.
    pub(crate) fn reruns_in_doubt(&self, step: StepIndex, attempt: Attempt) -> bool {
        let base = self.steps.get(step as usize).map_or(0, |s| s.forward.base);
        self.plan().in_doubt == crate::policy::InDoubtPolicy::Rerun
            && attempt.saturating_sub(base) < self.plan().retry_of(step).max_attempts
    }

    /// What the retry policy allows after step `step`'s action failed.
    /// Only meaningful when its forward state is `Failed`.
    pub(crate) fn forward_retry(&self, step: StepIndex) -> Retry {
        let Some(state) = self.steps.get(step as usize) else {
            return Retry::No;
        };
        let CallState::Failed {
            attempt,
            failure,
            at,
        } = &state.forward.state
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
        let used = attempt.saturating_sub(state.forward.base);
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
                    .all(|s| s.forward.state == CallState::NotStarted) =>
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
            .all(|s| s.forward.state == CallState::NotStarted)
        {
            return SagaStatus::Created;
        }
        SagaStatus::Running
    }
}

//! A saga's history as a reader sees it: each record as an event with its
//! step by name, its call in the saga's own words (a TCC branch tries,
//! confirms and cancels), and a line of text. The admin API, its page and
//! the command line all show this one form.

use crate::engine::view::{HistoryEntry, SagaView};
use crate::engine::Engine;
use crate::error::Error;
use crate::ids::{Attempt, SagaId, StepIndex, StepName, UnixMillis};
use crate::log::record::{CallRef, Decision, OperatorCommand, Record, StepFailure};
use serde::{Deserialize, Serialize};

/// One record of a saga's history, for display. Fields that do not apply
/// to the record's kind are `None`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEvent {
    /// Sequence number in the saga's log.
    pub seq: u64,
    /// When the record was written; `None` for an unreadable value.
    pub at: Option<UnixMillis>,
    /// The record's kind (e.g. `step_started`), or `unreadable`.
    pub kind: String,
    /// The step (or TCC branch) the record is about.
    pub step: Option<StepName>,
    /// Which call of the step: `action` or `compensation` for a saga;
    /// `try`, `confirm`, `cancel`, or `compensation` (after a commit) for a
    /// TCC branch.
    pub call: Option<String>,
    /// The call's attempt number.
    pub attempt: Option<Attempt>,
    /// What happened to the call: `intent` (about to call), `succeeded`
    /// or `failed`.
    pub result: Option<String>,
    /// The call's error, for a failure.
    pub error: Option<StepFailure>,
    /// When a timer falls due.
    pub due: Option<UnixMillis>,
    /// Who acted, for an operator action.
    pub actor: Option<String>,
    /// Why: an operator's reason, or why the saga was suspended.
    pub reason: Option<String>,
    /// The whole event in one line of words.
    pub text: String,
}

/// A saga's view with its timeline: what `GET /v1/sagas/{id}` and
/// `sagalog show --json` return.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaDetail {
    /// Where the saga stands.
    pub saga: SagaView,
    /// Every record of its log, oldest first.
    pub timeline: Vec<TimelineEvent>,
}

impl Engine {
    /// Saga `id`'s view and timeline; [`Error::NotFound`] if there is no
    /// such saga.
    pub async fn detail(&self, id: SagaId) -> Result<SagaDetail, Error> {
        let saga = self.saga(id).await?;
        let history = self.history(id).await?;
        let timeline = timeline(&saga, &history);
        Ok(SagaDetail { saga, timeline })
    }
}

/// The events of `history`, a saga's records, with the step names of its
/// view.
pub fn timeline(view: &SagaView, history: &[HistoryEntry]) -> Vec<TimelineEvent> {
    let names: Vec<&str> = view.steps.iter().map(|s| s.name.as_str()).collect();
    let mut committed = false;
    history
        .iter()
        .map(|entry| match &entry.record {
            Ok((at, record)) => {
                if let Record::Decided(d) = record {
                    committed = d.decision == Decision::Commit;
                }
                let words = match (view.tcc, committed) {
                    (false, _) => ("action", "compensation"),
                    (true, false) => ("try", "cancel"),
                    (true, true) => ("try", "compensation"),
                };
                event(entry.seq, *at, record, &names, words)
            }
            Err(error) => TimelineEvent {
                text: format!("unreadable: {error}"),
                ..blank(entry.seq, None, "unreadable")
            },
        })
        .collect()
}

fn blank(seq: u64, at: Option<UnixMillis>, kind: &str) -> TimelineEvent {
    TimelineEvent {
        seq,
        at,
        kind: kind.to_owned(),
        step: None,
        call: None,
        attempt: None,
        result: None,
        error: None,
        due: None,
        actor: None,
        reason: None,
        text: String::new(),
    }
}

// Long on purpose: one arm per record kind, each its own sentence.
fn event(
    seq: u64,
    at: UnixMillis,
    record: &Record,
    names: &[&str],
    (forward, backward): (&str, &str),
) -> TimelineEvent {
    let name = |step: StepIndex| {
        names
            .get(step as usize)
            .map_or_else(|| format!("#{step}"), |n| (*n).to_owned())
    };
    let base = blank(seq, Some(at), record.kind_name());
    let call = |c: &CallRef, which: &str, result: &str, error: Option<&StepFailure>| {
        let step = name(c.step);
        let text = match error {
            Some(e) => format!(
                "{step} {which}, attempt {}: failed ({:?}): {}",
                c.attempt, e.class, e.message
            ),
            None => format!("{step} {which}, attempt {}: {result}", c.attempt),
        };
        TimelineEvent {
            step: Some(StepName::new(step)),
            call: Some(which.to_owned()),
            attempt: Some(c.attempt),
            result: Some(result.to_owned()),
            error: error.cloned(),
            text,
            ..base.clone()
        }
    };
    match record {
        Record::SagaStarted(s) => {
            let key = s
                .idempotency_key
                .as_ref()
                .map(|k| format!(", key {}", k.as_str()))
                .unwrap_or_default();
            let parent = s
                .parent
                .map(|p| format!(", sub-saga of {} step #{}", p.saga, p.step))
                .unwrap_or_default();
            let kind = if s.plan.is_tcc() {
                "TCC (try / confirm / cancel)".to_owned()
            } else {
                format!("strategy {}", s.plan.strategy.name())
            };
            TimelineEvent {
                text: format!(
                    "started {} v{}, {kind}{key}{parent}",
                    s.saga_type, s.version
                ),
                ..base
            }
        }
        Record::StepStarted(c) => call(c, forward, "intent", None),
        Record::StepSucceeded(r) => call(&r.call, forward, "succeeded", None),
        Record::StepFailed(f) => call(&f.call, forward, "failed", Some(&f.failure)),
        Record::CompensationStarted(c) => call(c, backward, "intent", None),
        Record::CompensationSucceeded(c) => call(c, backward, "succeeded", None),
        Record::CompensationFailed(f) => call(&f.call, backward, "failed", Some(&f.failure)),
        Record::ConfirmStarted(c) => call(c, "confirm", "intent", None),
        Record::ConfirmSucceeded(c) => call(c, "confirm", "succeeded", None),
        Record::ConfirmFailed(f) => call(&f.call, "confirm", "failed", Some(&f.failure)),
        Record::SagaSuspended(s) => TimelineEvent {
            reason: Some(s.reason.clone()),
            text: format!("suspended: {}", s.reason),
            ..base
        },
        Record::SagaFinished(f) => TimelineEvent {
            text: format!("finished {}", f.status),
            ..base
        },
        Record::TimerSet(t) => TimelineEvent {
            due: Some(t.due),
            text: format!("asleep until {}: {}", t.due, t.purpose.describe(names)),
            ..base
        },
        Record::OperatorAction(a) => {
            let (step, command) = match a.command {
                OperatorCommand::MarkCompensated { step } => (
                    Some(StepName::new(name(step))),
                    format!("mark_compensated {}", name(step)),
                ),
                other => (None, other.name().to_owned()),
            };
            TimelineEvent {
                step,
                actor: Some(a.actor.clone()),
                reason: Some(a.reason.clone()),
                text: format!("operator {}: {command} ({})", a.actor, a.reason),
                ..base
            }
        }
        Record::Decided(d) => TimelineEvent {
            text: format!("decided: {:?}", d.decision).to_lowercase(),
            ..base
        },
    }
}

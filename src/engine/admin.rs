//! Operator actions and the queues operators look at.
//!
//! Every action is a log record (actor, reason, time), so history shows it
//! and recovery replays it. An action on a saga whose loop is running is
//! queued in its mailbox and applied at the next step boundary; an action
//! on a saga nobody runs (suspended, asleep on a timer, finished) claims
//! the saga, appends the record, and starts its loop.

use crate::engine::staged::Staged;
use crate::engine::Engine;
use crate::error::Error;
use crate::ids::{SagaId, SagaType, StepIndex, StepName, UnixMillis};
use crate::log::codec;
use crate::log::record::{
    Decision, OperatorAction, OperatorCommand, Record, StepFailure, WaitPurpose,
};
use crate::log::store::QueuedOutcome;
use crate::state::{to_compensate, SagaState};
use crate::status::SagaStatus;
use crate::sync::lock;
use tokio::sync::oneshot;

/// A saga waiting for an operator.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManualItem {
    /// The saga.
    pub saga_id: SagaId,
    /// Its type.
    pub saga_type: SagaType,
    /// Why it waits.
    pub reason: String,
    /// The forward step that failed, and its error; in JSON `{"step",
    /// "class", "message"}`.
    #[serde(with = "crate::engine::view::failed_step")]
    pub failed_step: Option<(StepName, StepFailure)>,
    /// Steps compensation would undo, in the order it would.
    pub to_compensate: Vec<String>,
    /// When it started waiting (its last record).
    pub since: UnixMillis,
    /// True when the saga cannot run at all (unreadable log, unknown type):
    /// operator actions are refused until the cause is fixed and the engine
    /// reopened.
    pub parked: bool,
    /// Operator actions recorded and not yet carried out: the service does
    /// them when it next runs the saga (see [`crate::SagaView::pending`]).
    pub pending: Vec<String>,
}

/// A saga asleep on a durable timer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DelayedItem {
    /// When it wakes.
    pub due: UnixMillis,
    /// The saga.
    pub saga_id: SagaId,
    /// Why it sleeps (`None` if the stored purpose is unreadable).
    pub purpose: Option<WaitPurpose>,
}

impl Engine {
    /// Applies an operator action to saga `id`, recorded with `actor` and
    /// `reason`. Returns once the action is durable (for a running saga: at
    /// its next step boundary).
    ///
    /// Refused with [`Error::Illegal`] when the action makes no sense in the
    /// saga's state (e.g. retrying a step of a compensating saga), and with
    /// [`Error::Parked`] for a parked saga.
    ///
    /// On a log several nodes share, an action on a saga that another live
    /// node runs is queued for that node, which carries it out (or refuses
    /// it, [`Error::ActionRefused`]) at its next scan, once whatever
    /// happens to the nodes; this call waits for that. On a store without
    /// a queue it is refused with [`Error::OwnedElsewhere`].
    ///
    /// Cancellation-safe: a caller that stops waiting does not leave the
    /// saga without a loop; the action is still carried out, or refused.
    pub async fn operate(
        &self,
        id: SagaId,
        command: OperatorCommand,
        actor: &str,
        reason: &str,
    ) -> Result<(), Error> {
        let action = OperatorAction {
            actor: actor.to_owned(),
            reason: reason.to_owned(),
            command,
        };
        tracing::info!(saga_id = %id, command = command.name(), actor, reason, "operator action");
        self.carry_out(id, action, None).await
    }

    /// Carries out `action` on saga `id`; `queued` is its id in the action
    /// queue when another node queued it for this one.
    async fn carry_out(
        &self,
        id: SagaId,
        action: OperatorAction,
        queued: Option<u64>,
    ) -> Result<(), Error> {
        if let Some(why) = lock(&self.inner.parked).get(&id) {
            return Err(Error::Parked {
                saga: id,
                reason: why.clone(),
            });
        }
        let waiting = {
            let mut running = lock(&self.inner.running);
            match running.get_mut(&id) {
                Some(mailbox) => {
                    let (tx, rx) = oneshot::channel();
                    mailbox.push((action.clone(), tx, queued));
                    Some(rx)
                }
                None => {
                    running.insert(id, Vec::new());
                    None
                }
            }
        };
        if let Some(reply) = waiting {
            return reply.await.unwrap_or(Err(Error::shutting_down(id)));
        }
        // The saga is claimed: from here on the work runs on a task of its
        // own, so that a caller who stops waiting cannot leave the claim
        // behind with nothing driving the saga.
        let engine = self.background();
        self.detached(
            async move { engine.act_as_owner(id, action, queued).await },
            || Error::shutting_down(id),
        )
        .await
    }

    /// Carries out `action` on saga `id`, which this engine has just
    /// claimed: takes it on a shared log, appends the record, and runs the
    /// saga; on a refusal, releases the claim and answers the actions
    /// queued meanwhile with the same error. A saga a live node owns gets
    /// the action through the queue, unless it came from there.
    async fn act_as_owner(
        &self,
        id: SagaId,
        action: OperatorAction,
        queued: Option<u64>,
    ) -> Result<(), Error> {
        // On a shared log, this node must own the saga too (if it cannot,
        // actions queued meanwhile get the same refusal).
        let appended = match self.take_for_action(id).await {
            Ok(()) => self.append_action(id, action.clone(), queued).await,
            Err(e) => Err(e),
        };
        match appended {
            Ok(_) if self.inner.admin_only => {
                // Nothing runs here: the service acts at its next open.
                lock(&self.inner.running).remove(&id);
                Ok(())
            }
            Ok(state) => {
                self.run_or_park(id, self.prepare_state(id, state));
                Ok(())
            }
            Err(e) => {
                let pending = lock(&self.inner.running).remove(&id).unwrap_or_default();
                for (_, reply, _) in pending {
                    let _ = reply.send(Err(e.clone()));
                }
                match (e, queued) {
                    (Error::OwnedElsewhere { node, .. }, None) => {
                        self.queue_for_owner(id, &action, node).await
                    }
                    (e, _) => Err(e),
                }
            }
        }
    }

    /// Queues `action` on saga `id` for `owner`, the live node that runs
    /// it, and waits until that node (or one that adopted the saga since)
    /// has carried it out or refused it, or this engine stops. On a store
    /// without a queue, the action is refused naming the owner.
    async fn queue_for_owner(
        &self,
        id: SagaId,
        action: &OperatorAction,
        owner: String,
    ) -> Result<(), Error> {
        let bytes = codec::encode_value(action).map_err(|e| Error::encode("operator action", e))?;
        let Some(queued) = self.inner.store.queue_action(id, &bytes).await? else {
            return Err(Error::OwnedElsewhere {
                saga: id,
                node: owner,
            });
        };
        tracing::info!(saga_id = %id, queued, node = %owner, "operator action queued for the node that runs the saga");
        loop {
            match self.inner.store.queued_outcome(queued).await? {
                // An engine that stops leaves the action queued: the owner
                // still carries it out.
                QueuedOutcome::Pending => tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                    _ = self.inner.stopping.cancelled() => return Err(Error::shutting_down(id)),
                },
                QueuedOutcome::Applied { .. } => return Ok(()),
                QueuedOutcome::Refused { node, reason } => {
                    return Err(Error::ActionRefused {
                        saga: id,
                        node,
                        reason,
                    })
                }
            }
        }
    }

    /// Carries out the queued actions on sagas this node owns that no task
    /// here is carrying out yet, each in a task of its own. An action that
    /// makes no sense in its saga's state is marked refused; one this node
    /// cannot carry out now (the saga moved, the store is down) stays
    /// queued for the next scan.
    pub(super) async fn apply_queued(&self) -> Result<(), Error> {
        for queued in self.inner.store.queued_actions(256).await? {
            if !lock(&self.inner.applying).insert(queued.id) {
                continue;
            }
            let engine = self.background();
            self.inner.tracker.spawn(async move {
                let id = queued.id;
                let refusal = match codec::decode_value::<OperatorAction>(&queued.action) {
                    Ok(action) => match engine.carry_out(queued.saga, action, Some(id)).await {
                        Ok(()) => None,
                        Err(e @ (Error::Illegal { .. }
                        | Error::Parked { .. }
                        | Error::InvalidOptions(_)
                        | Error::NotFound(_))) => Some(e.to_string()),
                        Err(e) => {
                            tracing::warn!(saga_id = %queued.saga, queued = id, error = %e, "a queued operator action could not be carried out yet; it stays queued");
                            None
                        }
                    },
                    Err(e) => Some(format!("the queued action cannot be decoded: {e}")),
                };
                if let Some(reason) = refusal {
                    if let Err(e) = engine.inner.store.refuse_queued(id, &reason).await {
                        tracing::warn!(queued = id, error = %e, "could not mark a queued operator action refused; the next scan judges it again");
                    }
                }
                lock(&engine.inner.applying).remove(&id);
            });
        }
        Ok(())
    }

    /// On a log several nodes share, makes this node the owner of saga
    /// `id`, which no loop here drives, unless a live node owns it: then
    /// only that node may act ([`Error::OwnedElsewhere`]).
    ///
    /// An engine opened for administration on a store that joined the log
    /// (the command line's) takes the saga the same way: its store then
    /// hands it back when it leaves.
    async fn take_for_action(&self, id: SagaId) -> Result<(), Error> {
        if self.inner.lease.is_none() && !self.inner.admin_only {
            return Ok(());
        }
        match self.inner.store.take(id).await? {
            None => Ok(()),
            Some(node) => Err(Error::OwnedElsewhere { saga: id, node }),
        }
    }

    async fn append_action(
        &self,
        id: SagaId,
        action: OperatorAction,
        queued: Option<u64>,
    ) -> Result<SagaState, Error> {
        if self.inner.stopping.is_cancelled() {
            return Err(Error::shutting_down(id));
        }
        let mut state = self.load_state(id).await?;
        let mut staged = Staged::new(id, Some(&state));
        staged.push_checked(
            &mut state,
            self.inner.clock.now(),
            Record::OperatorAction(action),
        )?;
        if let Some(queued) = queued {
            staged.applies(queued);
        }
        self.inner.commit(&mut staged, &state).await?;
        Ok(state)
    }

    /// Compensate now: for a suspended saga (manual strategy, escalated
    /// compensation), a saga waiting for a scheduled compensation, or a
    /// committed saga (reopened; every step is compensated in reverse).
    /// Failed compensations get a fresh retry budget.
    pub async fn compensate_now(&self, id: SagaId, actor: &str, reason: &str) -> Result<(), Error> {
        self.operate(id, OperatorCommand::CompensateNow, actor, reason)
            .await
    }

    /// Records that the operator compensated step `step` by hand; its
    /// compensation will not be called.
    pub async fn mark_compensated(
        &self,
        id: SagaId,
        step: &str,
        actor: &str,
        reason: &str,
    ) -> Result<(), Error> {
        let state = self.load_state(id).await?;
        let index = state
            .plan()
            .steps
            .iter()
            .position(|s| s.name.as_str() == step)
            .ok_or_else(|| {
                Error::InvalidOptions(format!("saga {id} has no step named '{step}'"))
            })?;
        let step = StepIndex::try_from(index)
            .map_err(|_| Error::InvalidOptions("step index out of range".into()))?;
        self.operate(id, OperatorCommand::MarkCompensated { step }, actor, reason)
            .await
    }

    /// Retries the failed forward step with a fresh retry budget, even
    /// after a permanent error.
    pub async fn retry_step(&self, id: SagaId, actor: &str, reason: &str) -> Result<(), Error> {
        self.operate(id, OperatorCommand::RetryStep, actor, reason)
            .await
    }

    /// Retry now: does at once what the saga is waiting for, with a fresh
    /// retry budget. Asleep on a forward backoff, or suspended after its
    /// forward step failed: the step is retried ([`Engine::retry_step`]).
    /// Asleep on a scheduled compensation or a compensation backoff, or
    /// suspended during compensation: compensation runs now
    /// ([`Engine::compensate_now`]). Refused with
    /// [`Error::InvalidOptions`] for a saga that waits for nothing (running
    /// or finished).
    pub async fn retry_now(&self, id: SagaId, actor: &str, reason: &str) -> Result<(), Error> {
        let state = self.load_state(id).await?;
        let command = match state.timer.as_ref().map(|t| &t.purpose) {
            Some(WaitPurpose::RetryBackoff { .. }) | Some(WaitPurpose::ConfirmBackoff { .. }) => {
                OperatorCommand::RetryStep
            }
            Some(WaitPurpose::ScheduledCompensation { .. })
            | Some(WaitPurpose::CompensationBackoff { .. }) => OperatorCommand::CompensateNow,
            None if state.suspended.is_some() => {
                if state.decision == Some(Decision::Commit) && !state.compensation_ordered {
                    OperatorCommand::RetryStep
                } else if state.compensating
                    || state.compensation_ordered
                    || state.decision == Some(Decision::Rollback)
                {
                    OperatorCommand::CompensateNow
                } else {
                    OperatorCommand::RetryStep
                }
            }
            None => {
                return Err(Error::InvalidOptions(format!(
                    "saga {id} is {} and waits for nothing; retry-now applies to a saga asleep on a backoff or a scheduled compensation, or suspended",
                    state.status()
                )))
            }
        };
        self.operate(id, command, actor, reason).await
    }

    /// Gives up on the saga: it ends `Failed`, and nothing more is compensated.
    pub async fn abandon(&self, id: SagaId, actor: &str, reason: &str) -> Result<(), Error> {
        self.operate(id, OperatorCommand::Abandon, actor, reason)
            .await
    }

    /// Cancels a running saga: forward progress stops at the next step
    /// boundary and compensation follows.
    pub async fn cancel(&self, id: SagaId, actor: &str, reason: &str) -> Result<(), Error> {
        self.operate(id, OperatorCommand::Cancel, actor, reason)
            .await
    }

    /// Every saga waiting for an operator, oldest first, including parked
    /// ones (whose log or index entry cannot be read, or whose type is not
    /// registered).
    pub async fn manual_queue(&self) -> Result<Vec<ManualItem>, Error> {
        let mut items = Vec::new();
        for listing in self.index_rows().await? {
            if listing.status != SagaStatus::Suspended {
                continue;
            }
            let parked = |reason: String| ManualItem {
                saga_id: listing.saga_id,
                saga_type: listing.saga_type.clone(),
                reason,
                failed_step: None,
                to_compensate: Vec::new(),
                since: listing.changed_at,
                parked: true,
                pending: Vec::new(),
            };
            if let Some(reason) = &listing.parked {
                items.push(parked(reason.clone()));
                continue;
            }
            let state = match self.load_state(listing.saga_id).await {
                Ok(state) => state,
                Err(e) => {
                    items.push(parked(e.to_string()));
                    continue;
                }
            };
            // A suspended saga an operator has acted on, while the service
            // was stopped, stays listed until the service carries it out.
            let pending = crate::engine::view::pending_of(&state);
            let reason = match (state.suspended.clone(), pending.first()) {
                (Some(reason), _) => reason,
                (None, Some(first)) => {
                    format!("waiting for the service to carry out the operator's {first}")
                }
                (None, None) => continue,
            };
            items.push(ManualItem {
                saga_id: listing.saga_id,
                saga_type: state.saga_type().clone(),
                reason,
                failed_step: crate::engine::view::failure_of(&state),
                to_compensate: to_compensate(&state),
                since: state.last_at,
                parked: false,
                pending,
            });
        }
        Ok(items)
    }

    /// The first `limit` sagas asleep on a durable timer, earliest first.
    pub async fn delay_queue(&self, limit: usize) -> Result<Vec<DelayedItem>, Error> {
        let none = std::collections::HashSet::new();
        let (timers, _) = self.inner.store.scan_timers(limit, &none).await?;
        Ok(timers
            .into_iter()
            .map(|(key, purpose)| DelayedItem {
                due: key.due,
                saga_id: key.saga,
                purpose: codec::decode_index_entry(&purpose).ok(),
            })
            .collect())
    }
}

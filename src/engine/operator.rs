//! Operator actions by name, one saga at a time or over a filter: what the
//! admin API's `POST .../actions/{action}` and the command line do.

use crate::engine::query::SagaFilter;
use crate::engine::Engine;
use crate::error::Error;
use crate::ids::SagaId;
use crate::status::SagaStatus;
use serde::{Deserialize, Serialize};

/// An operator action, by the name the API and the command line use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Action {
    /// [`Engine::compensate_now`].
    CompensateNow,
    /// [`Engine::mark_compensated`]; needs a step.
    MarkCompensated,
    /// [`Engine::retry_step`].
    RetryStep,
    /// [`Engine::retry_now`].
    RetryNow,
    /// [`Engine::abandon`].
    Abandon,
    /// [`Engine::cancel`].
    Cancel,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 6] = [
        Action::CompensateNow,
        Action::MarkCompensated,
        Action::RetryStep,
        Action::RetryNow,
        Action::Abandon,
        Action::Cancel,
    ];

    /// The action's name, e.g. `compensate_now`.
    pub fn name(self) -> &'static str {
        match self {
            Action::CompensateNow => "compensate_now",
            Action::MarkCompensated => "mark_compensated",
            Action::RetryStep => "retry_step",
            Action::RetryNow => "retry_now",
            Action::Abandon => "abandon",
            Action::Cancel => "cancel",
        }
    }

    /// The action named `name` (`-` and `_` alike), or
    /// [`Error::InvalidOptions`] listing the names there are.
    pub fn parse(name: &str) -> Result<Action, Error> {
        let wanted = name.replace('-', "_");
        Action::ALL
            .into_iter()
            .find(|a| a.name() == wanted)
            .ok_or_else(|| {
                let names: Vec<_> = Action::ALL.iter().map(|a| a.name()).collect();
                Error::InvalidOptions(format!(
                    "'{name}' is not an operator action; use one of {}",
                    names.join(", ")
                ))
            })
    }
}

/// Who acts, why, and on which step: the body of an action request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRequest {
    /// Who acts; recorded in the saga's log.
    #[serde(default)]
    pub actor: String,
    /// Why; recorded in the saga's log. Required.
    #[serde(default)]
    pub reason: String,
    /// The step, for `mark_compensated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

/// What a bulk action did (or, in a dry run, would do) to one saga.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkItem {
    /// The saga.
    pub saga_id: SagaId,
    /// Its status when it was chosen.
    pub status: SagaStatus,
    /// True once the action is durable; false in a dry run and when it was
    /// refused.
    pub applied: bool,
    /// Why the action was refused, in the library's words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Engine {
    /// Applies `action` to saga `id` as `request` says. Refused with
    /// [`Error::InvalidOptions`] when the reason or the actor is empty, or
    /// `mark_compensated` names no step; otherwise as the action's own
    /// method refuses it.
    pub async fn act(
        &self,
        id: SagaId,
        action: Action,
        request: &ActionRequest,
    ) -> Result<(), Error> {
        let (actor, reason) = checked(request)?;
        match action {
            Action::CompensateNow => self.compensate_now(id, actor, reason).await,
            Action::MarkCompensated => match request.step.as_deref() {
                Some(step) => self.mark_compensated(id, step, actor, reason).await,
                None => Err(Error::InvalidOptions(
                    "mark_compensated needs the step you compensated by hand; name it in `step`"
                        .into(),
                )),
            },
            Action::RetryStep => self.retry_step(id, actor, reason).await,
            Action::RetryNow => self.retry_now(id, actor, reason).await,
            Action::Abandon => self.abandon(id, actor, reason).await,
            Action::Cancel => self.cancel(id, actor, reason).await,
        }
    }

    /// Applies `action` to every saga `filter` accepts, one after another,
    /// and reports each; a refusal is reported and does not stop the rest.
    /// With `dry_run`, only lists the sagas it would act on.
    pub async fn act_on_matching(
        &self,
        filter: &SagaFilter,
        action: Action,
        request: &ActionRequest,
        dry_run: bool,
    ) -> Result<Vec<BulkItem>, Error> {
        checked(request)?;
        let mut items = Vec::new();
        for listing in self.find(filter).await? {
            let mut item = BulkItem {
                saga_id: listing.saga_id,
                status: listing.status,
                applied: false,
                error: None,
            };
            if !dry_run {
                match self.act(listing.saga_id, action, request).await {
                    Ok(()) => item.applied = true,
                    Err(e) => item.error = Some(e.to_string()),
                }
            }
            items.push(item);
        }
        Ok(items)
    }
}

fn checked(request: &ActionRequest) -> Result<(&str, &str), Error> {
    if request.reason.trim().is_empty() {
        return Err(Error::InvalidOptions(
            "a reason is required: say why you act, for the saga's history".into(),
        ));
    }
    if request.actor.trim().is_empty() {
        return Err(Error::InvalidOptions(
            "an actor is required: say who acts, for the saga's history".into(),
        ));
    }
    Ok((&request.actor, &request.reason))
}

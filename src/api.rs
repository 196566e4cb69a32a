//! The documents of the admin API, version 1: what its routes return and
//! take, and what the command line prints with `--json`. They are plain
//! serde types, compiled without the `admin-http` feature, so that a client
//! reads exactly what the server writes.

use crate::engine::view::SagaListing;
use crate::engine::{Action, ActionRequest, BulkItem, DelayedItem, ListQuery, ManualItem};
use crate::ids::SagaId;
use crate::SagaView;
use serde::{Deserialize, Serialize};

/// `GET /v1/sagas`: one page of a listing, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaPage {
    /// The sagas of this page.
    pub sagas: Vec<SagaListing>,
    /// The cursor of the next page (pass it as `after=`), when the page
    /// is full and more may follow.
    pub next: Option<SagaId>,
}

/// `GET /v1/manual`: the sagas waiting for an operator, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManualQueue {
    /// The items.
    pub manual_queue: Vec<ManualItem>,
}

/// `GET /v1/delay`: the sagas asleep on a timer, soonest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelayQueue {
    /// The items.
    pub delay_queue: Vec<DelayedItem>,
}

/// `POST /v1/sagas/{id}/actions/{action}`: the action is durable, and this
/// is the saga right after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionDone {
    /// The action applied.
    pub action: Action,
    /// Who acted.
    pub actor: String,
    /// The saga as it stands now.
    pub saga: SagaView,
}

/// The body of `POST /v1/actions/{action}`: the action over every saga a
/// filter accepts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkRequest {
    /// Which sagas, as `GET /v1/sagas` takes it.
    #[serde(default)]
    pub filter: ListQuery,
    /// Only list the sagas the action would touch.
    #[serde(default)]
    pub dry_run: bool,
    /// Who acts, why, and the step for `mark_compensated`.
    #[serde(flatten)]
    pub request: ActionRequest,
}

/// What `POST /v1/actions/{action}` did, saga by saga.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkReport {
    /// The action.
    pub action: Action,
    /// True when nothing was applied.
    pub dry_run: bool,
    /// One item per saga the filter accepted.
    pub sagas: Vec<BulkItem>,
}

/// The body of every error response: what went wrong and what to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// The HTTP status, repeated for clients that only see the body.
    pub status: u16,
    /// What happened and how to fix it, in the library's words.
    pub error: String,
}

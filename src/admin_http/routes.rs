//! The routes of the admin API, version 1 (docs/ADMIN-API.md). Reads run
//! on tokio's blocking pool, actions as the engine's operator actions: a
//! request never runs on, or waits for, a saga's loop except to hand an
//! action to its mailbox.

use super::listen::Peer;
use super::prometheus;
use crate::api::{
    ActionDone, ApiError, BulkReport, BulkRequest, DelayQueue, ManualQueue, SagaPage,
};
use crate::engine::{Action, ActionRequest, Engine, ListQuery};
use crate::error::Error;
use crate::ids::SagaId;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The page, compiled in: no CDN, no build step.
const PAGE: &str = include_str!("page.html");

#[derive(Clone)]
struct App {
    engine: Engine,
    token: Option<Arc<str>>,
}

pub(super) fn router(engine: Engine, token: Option<String>) -> Router {
    let app = App {
        engine,
        token: token.map(Arc::from),
    };
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/v1/sagas", get(list))
        .route("/v1/sagas/{id}", get(detail))
        .route("/v1/sagas/{id}/actions/{action}", post(act))
        .route("/v1/actions/{action}", post(bulk))
        .route("/v1/manual", get(manual))
        .route("/v1/delay", get(delay))
        .route("/v1/stats", get(stats))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            Problem::new(
                StatusCode::NOT_FOUND,
                "no such route; the API's routes are listed in docs/ADMIN-API.md (GET /v1/sagas, /v1/sagas/{id}, /v1/manual, /v1/delay, /v1/stats, /metrics)",
            )
        })
        .layer(axum::middleware::from_fn_with_state(app.clone(), authorize))
        .with_state(app)
}

/// An error response: a status and an [`ApiError`] body.
pub(super) struct Problem(StatusCode, String);

impl Problem {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Problem(status, message.into())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = ApiError {
            status: self.0.as_u16(),
            error: self.1,
        };
        (self.0, Json(body)).into_response()
    }
}

impl From<Error> for Problem {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::InvalidOptions(_) | Error::UnknownSagaType(_) => StatusCode::BAD_REQUEST,
            Error::Illegal { .. }
            | Error::Parked { .. }
            | Error::AdminOnly
            | Error::OwnedElsewhere { .. }
            | Error::ActionRefused { .. } => StatusCode::CONFLICT,
            Error::ShuttingDown { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Problem(status, e.to_string())
    }
}

impl From<JsonRejection> for Problem {
    fn from(e: JsonRejection) -> Self {
        Problem(
            StatusCode::BAD_REQUEST,
            format!(
                "the body is not the JSON this route takes ({}); send {{\"reason\": \"...\"}} with `Content-Type: application/json`, optionally with \"actor\" and \"step\"",
                e.body_text()
            ),
        )
    }
}

impl From<QueryRejection> for Problem {
    fn from(e: QueryRejection) -> Self {
        Problem(
            StatusCode::BAD_REQUEST,
            format!(
                "the query string is not one this route takes ({}); e.g. ?status=suspended&limit=50",
                e.body_text()
            ),
        )
    }
}

/// With a token configured, a TCP request must carry it.
async fn authorize(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let (Some(token), true) = (&app.token, peer.is_tcp()) {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
            return Problem::new(
                StatusCode::UNAUTHORIZED,
                "this server needs its token: send `Authorization: Bearer <token>` (the CLI's --token)",
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// Compares in time that depends only on the lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Runs a read. On a local store a read scans sled inline, so it runs on
/// the blocking pool: it must not hold an async worker that saga loops
/// need. Any other store is awaited here.
async fn read<T, R>(
    engine: &Engine,
    f: impl FnOnce(Engine) -> R + Send + 'static,
) -> Result<T, Problem>
where
    T: Send + 'static,
    R: std::future::Future<Output = Result<T, Error>> + Send + 'static,
{
    let engine = engine.clone();
    if !engine.reads_block() {
        return f(engine).await.map_err(Problem::from);
    }
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || runtime.block_on(f(engine)))
        .await
        .map_err(|e| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the read task failed: {e}"),
            )
        })?
        .map_err(Problem::from)
}

fn saga_id(text: &str) -> Result<SagaId, Problem> {
    SagaId::parse(text).ok_or_else(|| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!("'{text}' is not a saga id; ids look like 019a6c1e-8f00-7abc-9def-0123456789ab (GET /v1/sagas lists them)"),
        )
    })
}

fn action(text: &str) -> Result<Action, Problem> {
    Action::parse(text).map_err(Problem::from)
}

async fn list(
    State(app): State<App>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<SagaPage>, Problem> {
    let Query(query) = query?;
    let filter = query.filter()?;
    let sagas = read(&app.engine, move |e| async move { e.find(&filter).await }).await?;
    let next = match query.limit {
        Some(limit) if limit > 0 && sagas.len() == limit => sagas.last().map(|s| s.saga_id),
        _ => None,
    };
    Ok(Json(SagaPage { sagas, next }))
}

async fn detail(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<crate::engine::SagaDetail>, Problem> {
    let id = saga_id(&id)?;
    Ok(Json(
        read(&app.engine, move |e| async move { e.detail(id).await }).await?,
    ))
}

async fn manual(State(app): State<App>) -> Result<Json<ManualQueue>, Problem> {
    let manual_queue = read(&app.engine, move |e| async move { e.manual_queue().await }).await?;
    Ok(Json(ManualQueue { manual_queue }))
}

/// `limit=` of `GET /v1/delay`.
#[derive(Deserialize, Serialize)]
struct DelayLimit {
    limit: Option<usize>,
}

async fn delay(
    State(app): State<App>,
    query: Result<Query<DelayLimit>, QueryRejection>,
) -> Result<Json<DelayQueue>, Problem> {
    let Query(DelayLimit { limit }) = query?;
    let limit = limit.unwrap_or(100);
    let delay_queue = read(
        &app.engine,
        move |e| async move { e.delay_queue(limit).await },
    )
    .await?;
    Ok(Json(DelayQueue { delay_queue }))
}

async fn stats(State(app): State<App>) -> Result<Json<crate::engine::Stats>, Problem> {
    Ok(Json(
        read(&app.engine, move |e| async move { e.stats().await }).await?,
    ))
}

async fn metrics(State(app): State<App>) -> Result<Response, Problem> {
    let stats = read(&app.engine, move |e| async move { e.stats().await }).await?;
    let text = prometheus::render(&stats, &app.engine.log_stats());
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// Fills in the actor from the connection when the request names none.
fn with_actor(mut request: ActionRequest, peer: &Peer) -> ActionRequest {
    if request.actor.trim().is_empty() {
        request.actor = peer.default_actor();
    }
    request
}

async fn act(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path((id, name)): Path<(String, String)>,
    body: Result<Json<ActionRequest>, JsonRejection>,
) -> Result<Json<ActionDone>, Problem> {
    let (id, action) = (saga_id(&id)?, action(&name)?);
    let Json(request) = body?;
    let request = with_actor(request, &peer);
    app.engine.act(id, action, &request).await?;
    let saga = read(&app.engine, move |e| async move { e.saga(id).await }).await?;
    Ok(Json(ActionDone {
        action,
        actor: request.actor,
        saga,
    }))
}

async fn bulk(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
    body: Result<Json<BulkRequest>, JsonRejection>,
) -> Result<Json<BulkReport>, Problem> {
    let action = action(&name)?;
    let Json(bulk) = body?;
    let filter = bulk.filter.filter()?;
    let request = with_actor(bulk.request, &peer);
    let sagas = app
        .engine
        .act_on_matching(&filter, action, &request, bulk.dry_run)
        .await?;
    Ok(Json(BulkReport {
        action,
        dry_run: bulk.dry_run,
        sagas,
    }))
}

//! The action routes: one saga, and bulk over a filter with a dry run.

use super::client::{post, Reply};
use super::*;
use serde_json::{json, Value};

/// A served engine with one suspended saga, and the reply to `action` on
/// that saga with `body`.
async fn acted(action: &str, body: Value) -> (Served, SagaId, Reply) {
    let served = served().await;
    let id = suspended(&served, "a").await;
    let path = format!("/v1/sagas/{id}/actions/{action}");
    let reply = post(&served.socket(), &path, body).await;
    (served, id, reply)
}

/// The reply's error message.
fn error(reply: &Reply) -> &str {
    reply.json["error"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compensate_now_takes_effect_at_once_and_returns_the_new_state() {
    let (served, id, reply) =
        acted("compensate_now", json!({"reason": "customer cancelled"})).await;

    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json["action"], "compensate_now");
    assert_eq!(
        outcome_of(&served.engine, id).await.status,
        SagaStatus::Compensated
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_without_an_actor_is_recorded_as_the_sockets_user() {
    let (served, id, reply) = acted("abandon", json!({"reason": "duplicate order"})).await;

    let actor = reply.json["actor"].as_str().unwrap().to_string();
    assert!(!actor.is_empty());
    let history = served.engine.detail(id).await.unwrap().timeline;
    let action = history
        .iter()
        .find(|e| e.kind == "operator_action")
        .unwrap();
    assert_eq!(action.actor.as_deref(), Some(actor.as_str()));
    assert_eq!(action.reason.as_deref(), Some("duplicate order"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_without_a_reason_is_a_400_and_writes_nothing() {
    let (served, id, reply) = acted("abandon", json!({"actor": "ada"})).await;

    assert_eq!(reply.status, 400);
    assert!(error(&reply).contains("a reason is required"));
    let timeline = served.engine.detail(id).await.unwrap().timeline;
    assert!(timeline.iter().all(|e| e.kind != "operator_action"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_json_is_a_400_that_shows_the_body_to_send() {
    let served = served().await;
    let id = suspended(&served, "a").await;
    let raw = format!(
        "POST /v1/sagas/{id}/actions/abandon HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n{{nope"
    );

    let io = tokio::net::UnixStream::connect(served.socket())
        .await
        .unwrap();
    let reply = super::client::exchange(io, raw.as_bytes()).await;

    assert_eq!(reply.status, 400);
    assert!(error(&reply).contains("\"reason\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_that_makes_no_sense_is_a_409_with_the_librarys_message() {
    let (served, id, reply) =
        acted("mark_compensated", json!({"reason": "typo", "step": "car"})).await;

    assert_eq!(reply.status, 409, "{}", reply.text);
    let refused = served
        .engine
        .mark_compensated(id, "car", "ada", "typo")
        .await
        .unwrap_err();
    assert_eq!(reply.json["error"], refused.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_action_is_a_400_that_lists_the_actions() {
    let (_served, _, reply) = acted("undo", json!({"reason": "why not"})).await;

    assert_eq!(reply.status, 400);
    assert!(error(&reply).contains("compensate_now"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_on_a_saga_that_does_not_exist_is_a_404() {
    let served = served().await;

    let reply = post(
        &served.socket(),
        &format!("/v1/sagas/{}/actions/abandon", SagaId::new()),
        json!({"reason": "cleanup"}),
    )
    .await;

    assert_eq!(reply.status, 404, "{}", reply.text);
}

/// Two suspended sagas, and the reply to compensating every suspended saga
/// in bulk.
async fn bulk_on_two_suspended(dry_run: bool) -> (Served, [SagaId; 2], Reply) {
    let served = served().await;
    let ids = [suspended(&served, "a").await, suspended(&served, "b").await];
    let body =
        json!({"filter": {"status": "suspended"}, "dry_run": dry_run, "reason": "incident 7"});
    let reply = post(&served.socket(), "/v1/actions/compensate_now", body).await;
    (served, ids, reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_dry_run_lists_the_sagas_and_changes_none() {
    let (served, [a, b], reply) = bulk_on_two_suspended(true).await;

    assert_eq!(reply.status, 200, "{}", reply.text);
    let listed: Vec<_> = reply.json["sagas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["saga_id"].as_str().unwrap().to_string(),
                s["applied"].clone(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [(a.to_string(), json!(false)), (b.to_string(), json!(false))]
    );
    for id in [a, b] {
        assert_eq!(
            served.engine.saga(id).await.unwrap().status,
            SagaStatus::Suspended
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_run_applies_the_action_to_each_saga_and_reports_each() {
    let (served, [a, b], reply) = bulk_on_two_suspended(false).await;

    let applied: Vec<_> = reply.json["sagas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["applied"].clone())
        .collect();
    assert_eq!(applied, [json!(true), json!(true)]);
    for id in [a, b] {
        assert_eq!(
            outcome_of(&served.engine, id).await.status,
            SagaStatus::Compensated
        );
    }
}

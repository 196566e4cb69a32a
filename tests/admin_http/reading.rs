//! The read routes: lists, one saga, the queues, stats and metrics.

use super::client::get;
use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_returns_every_saga_oldest_first() {
    let served = served().await;
    let first = suspended(&served, "a").await;
    let second = suspended(&served, "b").await;

    let reply = get(&served.socket(), "/v1/sagas").await;

    assert_eq!(reply.status, 200, "{}", reply.text);
    let ids: Vec<_> = reply.json["sagas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["saga_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, [first.to_string(), second.to_string()]);
    assert_eq!(reply.json["sagas"][0]["status"], "SUSPENDED");
    assert!(reply.json["next"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_page_carries_the_cursor_of_the_next() {
    let served = served().await;
    let first = suspended(&served, "a").await;
    let second = suspended(&served, "b").await;

    let page = get(&served.socket(), "/v1/sagas?limit=1").await;
    let next = page.json["next"].as_str().unwrap().to_string();
    let rest = get(&served.socket(), &format!("/v1/sagas?limit=1&after={next}")).await;

    assert_eq!(next, first.to_string());
    assert_eq!(rest.json["sagas"][0]["saga_id"], second.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_by_status_and_by_idempotency_key() {
    let served = served().await;
    suspended(&served, "a").await;
    let b = suspended(&served, "b").await;

    let by_key = get(&served.socket(), "/v1/sagas?key=b").await;
    let committed = get(&served.socket(), "/v1/sagas?status=committed").await;

    assert_eq!(by_key.json["sagas"].as_array().unwrap().len(), 1);
    assert_eq!(by_key.json["sagas"][0]["saga_id"], b.to_string());
    assert_eq!(committed.json["sagas"].as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_filter_is_a_400_that_says_what_to_use() {
    let served = served().await;

    let reply = get(&served.socket(), "/v1/sagas?status=stuck").await;

    assert_eq!(reply.status, 400);
    let error = reply.json["error"].as_str().unwrap();
    assert!(error.contains("'stuck' is not a status"), "{error}");
    assert!(error.contains("SUSPENDED"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_shows_its_view_why_it_waits_and_its_timeline_by_step_name() {
    let served = served().await;
    let id = suspended(&served, "a").await;

    let reply = get(&served.socket(), &format!("/v1/sagas/{id}")).await;

    assert_eq!(reply.status, 200, "{}", reply.text);
    let saga = &reply.json["saga"];
    assert_eq!(saga["status"], "SUSPENDED");
    assert_eq!(saga["failure"]["step"], "car");
    assert_eq!(saga["steps"][2]["state"], "failed");
    let waiting = saga["waiting"].as_str().unwrap();
    assert!(waiting.starts_with("waiting for an operator"), "{waiting}");
    let failed = reply.json["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "step_failed")
        .expect("the failure is in the timeline");
    assert_eq!(failed["step"], "car");
    assert_eq!(failed["call"], "action");
    assert_eq!(failed["error"]["message"], "sold out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_that_does_not_exist_is_a_404() {
    let served = served().await;

    let reply = get(&served.socket(), &format!("/v1/sagas/{}", SagaId::new())).await;

    assert_eq!(reply.status, 404);
    assert!(reply.json["error"].as_str().unwrap().contains("no saga"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_saga_id_is_a_400_that_shows_what_an_id_looks_like() {
    let served = served().await;

    let reply = get(&served.socket(), "/v1/sagas/not-an-id").await;

    assert_eq!(reply.status, 400);
    assert!(reply.json["error"]
        .as_str()
        .unwrap()
        .contains("ids look like"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manual_queue_lists_the_suspended_saga_with_its_failure() {
    let served = served().await;
    let id = suspended(&served, "a").await;

    let reply = get(&served.socket(), "/v1/manual").await;

    let items = reply.json["manual_queue"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["saga_id"], id.to_string());
    assert_eq!(items[0]["failed_step"]["message"], "sold out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delay_queue_lists_a_scheduled_compensation_with_its_due_time() {
    let served = served().await;
    let id = start(
        &served,
        "a",
        CompensationStrategy::Scheduled {
            delay_ms: 3_600_000,
        },
    )
    .await;
    common::timed::until_sleeping(&served.engine, id).await;

    let reply = get(&served.socket(), "/v1/delay").await;

    let items = reply.json["delay_queue"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["saga_id"], id.to_string());
    assert!(items[0]["due"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_the_sagas_by_status() {
    let served = served().await;
    suspended(&served, "a").await;

    let reply = get(&served.socket(), "/v1/stats").await;

    assert_eq!(reply.json["by_status"]["SUSPENDED"], 1);
    assert_eq!(reply.json["manual_queue_depth"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text() {
    let served = served().await;
    suspended(&served, "a").await;

    let reply = get(&served.socket(), "/metrics").await;

    assert_eq!(reply.status, 200);
    assert!(reply.headers.contains("text/plain; version=0.0.4"));
    assert!(reply
        .text
        .contains("# TYPE sagalog_manual_queue_depth gauge"));
    assert!(reply.text.contains("sagalog_sagas{status=\"SUSPENDED\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_route_is_a_404_that_lists_the_routes() {
    let served = served().await;

    let reply = get(&served.socket(), "/v2/sagas").await;

    assert_eq!(reply.status, 404);
    assert!(reply.json["error"].as_str().unwrap().contains("/v1/sagas"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_at_the_root() {
    let served = served().await;

    let reply = get(&served.socket(), "/").await;

    assert_eq!(reply.status, 200);
    assert!(reply.headers.contains("text/html"));
    assert!(reply.text.contains("<title>sagalog</title>"));
}

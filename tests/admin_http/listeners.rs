//! The listeners: the socket's mode, TCP with and without a token, the
//! server's end with the engine, and clients that do not read.

use super::client::{exchange, get, request};
use super::*;
use std::os::unix::fs::PermissionsExt;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_readable_and_writable_by_its_owner_only() {
    let served = served().await;

    let mode = std::fs::metadata(served.socket())
        .unwrap()
        .permissions()
        .mode();

    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_on_an_address_that_is_not_loopback_is_refused_without_a_token() {
    let (engine, _) = trip_on(&Arc::new(MemStore::new()), &Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = AdminConfig {
        socket: Some(dir.path().join("admin.sock")),
        tcp: Some("0.0.0.0:0".parse().unwrap()),
        ..AdminConfig::default()
    };

    let refused = engine.serve_admin(config).await.unwrap_err();

    assert!(matches!(
        refused,
        sagalog::AdminError::ExposedWithoutToken { .. }
    ));
    assert!(
        refused.to_string().contains("AdminConfig::token"),
        "{refused}"
    );
}

async fn served_on_tcp() -> (Served, std::net::SocketAddr) {
    let config = AdminConfig {
        tcp: Some("127.0.0.1:0".parse().unwrap()),
        token: Some("s3cret".into()),
        ..AdminConfig::default()
    };
    let served = served_with(Script::default(), config).await;
    let addr = served.admin.tcp().unwrap();
    (served, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_a_tcp_request_without_it_is_a_401() {
    let (_served, addr) = served_on_tcp().await;

    let io = tokio::net::TcpStream::connect(addr).await.unwrap();
    let reply = exchange(io, &request("GET", "/v1/stats", None, &[])).await;

    assert_eq!(reply.status, 401);
    assert!(reply.json["error"].as_str().unwrap().contains("Bearer"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_a_tcp_request_with_a_wrong_one_is_a_401() {
    let (_served, addr) = served_on_tcp().await;

    let io = tokio::net::TcpStream::connect(addr).await.unwrap();
    let wrong = ["Authorization: Bearer s3creT"];
    let reply = exchange(io, &request("GET", "/v1/stats", None, &wrong)).await;

    assert_eq!(reply.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_a_tcp_request_that_carries_it_is_served() {
    let (_served, addr) = served_on_tcp().await;

    let io = tokio::net::TcpStream::connect(addr).await.unwrap();
    let token = ["Authorization: Bearer s3cret"];
    let reply = exchange(io, &request("GET", "/v1/stats", None, &token)).await;

    assert_eq!(reply.status, 200, "{}", reply.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_stops_and_removes_its_socket_when_the_engine_shuts_down() {
    let served = served().await;
    let socket = served.socket();

    served.engine.shutdown(std::time::Duration::ZERO).await;
    served.admin.wait().await;

    assert!(!socket.exists());
    assert!(tokio::net::UnixStream::connect(&socket).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_server_on_the_socket_is_not_replaced() {
    let served = served().await;
    let (engine, _) = trip_on(&Arc::new(MemStore::new()), &Script::default()).await;
    let config = AdminConfig {
        socket: Some(served.socket()),
        ..AdminConfig::default()
    };

    let refused = engine.serve_admin(config).await.unwrap_err();

    assert!(
        matches!(refused, sagalog::AdminError::SocketPathTaken { .. }),
        "{refused}"
    );
    assert_eq!(get(&served.socket(), "/v1/stats").await.status, 200);
}

/// Clients that never read their responses, and one that never finishes
/// its request, hold connections open while sagas run: every saga still
/// finishes, and the server still answers others. The listing is larger
/// than a socket's buffers, so the server's writes to those clients block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_do_not_read_stall_no_saga_and_no_other_client() {
    let served = served().await;
    for i in 0..2000 {
        suspended(&served, &format!("old-{i}")).await;
    }
    let listing = get(&served.socket(), "/v1/sagas").await;
    assert!(listing.text.len() > 300_000, "{} bytes", listing.text.len());
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut io = tokio::net::UnixStream::connect(served.socket())
            .await
            .unwrap();
        io.write_all(&request("GET", "/v1/sagas", None, &[]))
            .await
            .unwrap();
        stalled.push(io); // never read
    }
    let mut half = tokio::net::UnixStream::connect(served.socket())
        .await
        .unwrap();
    half.write_all(b"GET /v1/sagas HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    stalled.push(half);

    for i in 0..20 {
        let id = suspended(&served, &format!("new-{i}")).await;
        assert_eq!(
            served.engine.saga(id).await.unwrap().status,
            SagaStatus::Suspended
        );
    }

    assert_eq!(get(&served.socket(), "/v1/stats").await.status, 200);
    drop(stalled);
}

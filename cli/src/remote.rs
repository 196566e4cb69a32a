//! The client of a running service's admin server (docs/ADMIN-API.md): one
//! HTTP/1.1 request per connection, over the Unix socket or TCP.

use crate::Failure;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use sagalog::api::ApiError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::PathBuf;

/// Where the admin server listens.
#[derive(Clone, Debug)]
pub enum Target {
    /// A Unix socket.
    Unix(PathBuf),
    /// `host:port` over TCP.
    Tcp(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
            Target::Tcp(addr) => write!(f, "http://{addr}"),
        }
    }
}

impl Target {
    /// `unix:PATH` or `http://HOST:PORT`.
    pub fn parse(text: &str) -> Option<Target> {
        if let Some(path) = text.strip_prefix("unix:") {
            return Some(Target::Unix(PathBuf::from(path)));
        }
        let addr = text.strip_prefix("http://")?.trim_end_matches('/');
        (!addr.is_empty()).then(|| Target::Tcp(addr.to_string()))
    }
}

/// A running service, reached through its admin server.
pub struct Remote {
    pub target: Target,
    pub token: Option<String>,
}

/// What a call to the server can end in: the server's refusal (its status
/// and message) or not reaching it.
pub enum CallError {
    Refused(StatusCode, String),
    Unreachable(String),
}

impl From<CallError> for crate::Failed {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Refused(status, message) if status == StatusCode::BAD_REQUEST => {
                crate::Failed::Usage(crate::Usage(message))
            }
            CallError::Refused(_, message) | CallError::Unreachable(message) => {
                crate::Failed::Command(Failure(message))
            }
        }
    }
}

impl Remote {
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CallError> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, CallError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| CallError::Unreachable(format!("could not write the request: {e}")))?;
        self.call(Method::POST, path, Some(body)).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, CallError> {
        let unreachable = |e: &dyn std::fmt::Display| {
            CallError::Unreachable(format!(
                "could not talk to the admin server at {}: {e}",
                self.target
            ))
        };
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "sagalog")
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(token) = &self.token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| unreachable(&e))?;
        let response = match &self.target {
            Target::Unix(path) => {
                let io = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|e| unreachable(&e))?;
                send(TokioIo::new(io), request).await
            }
            Target::Tcp(addr) => {
                let io = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| unreachable(&e))?;
                send(TokioIo::new(io), request).await
            }
        }
        .map_err(|e| unreachable(&e))?;
        let (status, bytes) = response;
        if !status.is_success() {
            let message = serde_json::from_slice::<ApiError>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| format!("the server answered {status}"));
            return Err(CallError::Refused(status, message));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            CallError::Unreachable(format!(
                "the admin server at {} sent a document this sagalog does not read ({e}); use the sagalog release that matches the service",
                self.target
            ))
        })
    }
}

async fn send<I>(io: I, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    let connection = tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    drop(sender);
    let _ = connection.await;
    Ok((status, bytes))
}

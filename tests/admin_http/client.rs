//! A minimal HTTP/1.1 client for the admin server's tests: one request per
//! connection (`Connection: close`), so that a test controls every byte.

use serde_json::Value;
use std::path::Path;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A response: its status and its body as JSON (`Value::Null` if the body
/// is not JSON), with the body's text.
pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub text: String,
    pub json: Value,
}

/// Writes the raw request for `method path` with `body` and `extra`
/// header lines.
pub fn request(method: &str, path: &str, body: Option<&Value>, extra: &[&str]) -> Vec<u8> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: sagalog\r\nConnection: close\r\n");
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    if !body.is_empty() {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

/// Sends one request over `io` and reads the whole response.
pub async fn exchange(mut io: impl AsyncRead + AsyncWrite + Unpin, raw: &[u8]) -> Reply {
    io.write_all(raw).await.unwrap();
    let mut bytes = Vec::new();
    io.read_to_end(&mut bytes).await.unwrap();
    parse(&bytes)
}

fn parse(bytes: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(bytes).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Reply {
        status,
        headers: head.to_string(),
        json: serde_json::from_str(&body).unwrap_or(Value::Null),
        text: body,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// `method path` over the Unix socket at `socket`.
pub async fn call(socket: &Path, method: &str, path: &str, body: Option<Value>) -> Reply {
    let io = tokio::net::UnixStream::connect(socket).await.unwrap();
    exchange(io, &request(method, path, body.as_ref(), &[])).await
}

/// `GET path` over the socket.
pub async fn get(socket: &Path, path: &str) -> Reply {
    call(socket, "GET", path, None).await
}

/// `POST path` with a JSON body over the socket.
pub async fn post(socket: &Path, path: &str, body: Value) -> Reply {
    call(socket, "POST", path, Some(body)).await
}

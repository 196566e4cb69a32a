//! The admin server inside the service: the JSON API of `sagalog::api` and
//! the operator's page, served on the engine's tokio runtime.
//!
//! - `listen`: the Unix socket (mode 0600, the peer's uid as the actor) and
//!   the optional TCP listener (loopback, or a bearer token);
//! - `routes`: the handlers, which read off the async workers and never
//!   touch a saga's loop;
//! - `prometheus`: `GET /metrics`.

mod listen;
mod prometheus;
mod routes;

use crate::engine::Engine;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Where and how [`Engine::serve_admin`] listens.
#[derive(Clone, Debug)]
pub struct AdminConfig {
    /// The Unix socket's path. `None` (the default) puts it at
    /// `<database dir>/admin.sock`; an engine opened over a store of its
    /// own ([`Engine::open_with_store`]) must name one.
    pub socket: Option<PathBuf>,
    /// Also listen on TCP at this address. Off by default. Any address
    /// that is not loopback is refused unless `token` is set.
    pub tcp: Option<SocketAddr>,
    /// A bearer token that every TCP request must carry
    /// (`Authorization: Bearer <token>`). The Unix socket is authorized
    /// by its file mode instead.
    pub token: Option<String>,
    /// How long stopping waits for requests in progress before it drops
    /// their connections. Default 2 s.
    pub drain: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            socket: None,
            tcp: None,
            token: None,
            drain: Duration::from_secs(2),
        }
    }
}

/// Why the admin server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The engine has no database directory to put the socket in.
    #[error("this engine was opened over a store of its own and has no database directory; set AdminConfig::socket to where the admin socket should go")]
    NoSocketPath,
    /// A TCP address that is not loopback, without a token.
    #[error("refusing to serve the admin API on {addr} without a token: it is not a loopback address; set AdminConfig::token, or listen on 127.0.0.1 / [::1]")]
    ExposedWithoutToken {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// The socket's path holds something that is not a stale socket.
    #[error("{path} exists and {what}; remove it, or set AdminConfig::socket to another path")]
    SocketPathTaken {
        /// The path.
        path: PathBuf,
        /// What is there.
        what: &'static str,
    },
    /// Binding or preparing a listener failed.
    #[error("could not listen on {what}: {source}")]
    Listen {
        /// The socket path or address.
        what: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// The running admin server. [`AdminHandle::stop`] stops it; it also stops
/// when the engine shuts down. Dropping the handle leaves it running.
#[derive(Debug)]
pub struct AdminHandle {
    socket: PathBuf,
    tcp: Option<SocketAddr>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl AdminHandle {
    /// The Unix socket it serves on.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// The TCP address it serves on, with the port the system chose if the
    /// configured port was 0.
    pub fn tcp(&self) -> Option<SocketAddr> {
        self.tcp
    }

    /// Waits until the server has stopped on its own: the engine shut down
    /// (or [`AdminHandle::stop`] was called on another path to it).
    pub async fn wait(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Stops accepting connections, lets requests in progress finish
    /// (up to [`AdminConfig::drain`]), and removes the socket file.
    pub async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

impl Engine {
    /// Starts the admin server on this engine's runtime: the API of
    /// [`crate::api`] and the operator's page, on a Unix socket (mode
    /// 0600) and, if configured, on TCP. See docs/ADMIN-API.md.
    ///
    /// The server reads through the engine's query API and acts through
    /// its operator actions; it holds no saga and never blocks a saga's
    /// loop. It does not keep the engine open: it stops when the engine
    /// shuts down.
    pub async fn serve_admin(&self, config: AdminConfig) -> Result<AdminHandle, AdminError> {
        let socket = match (&config.socket, self.database_dir()) {
            (Some(path), _) => path.clone(),
            (None, Some(dir)) => dir.join("admin.sock"),
            (None, None) => return Err(AdminError::NoSocketPath),
        };
        if let Some(addr) = config.tcp {
            if !addr.ip().is_loopback() && config.token.is_none() {
                return Err(AdminError::ExposedWithoutToken { addr });
            }
        }
        let stop = self.stopping().child_token();
        let unix = listen::bind_socket(&socket)?;
        let app = routes::router(self.background(), config.token.clone());
        let mut tasks = vec![tokio::spawn(listen::serve_unix(
            unix,
            socket.clone(),
            app.clone(),
            stop.clone(),
            config.drain,
        ))];
        let mut tcp = None;
        if let Some(addr) = config.tcp {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AdminError::Listen {
                    what: addr.to_string(),
                    source,
                })?;
            tcp = listener.local_addr().ok();
            tasks.push(tokio::spawn(listen::serve(
                listener,
                app,
                stop.clone(),
                config.drain,
            )));
        }
        tracing::info!(socket = %socket.display(), tcp = ?tcp, "admin server listening");
        Ok(AdminHandle {
            socket,
            tcp,
            stop,
            tasks,
        })
    }
}

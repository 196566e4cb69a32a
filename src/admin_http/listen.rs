//! The listeners: a Unix socket whose file mode is the authorization, and
//! an optional TCP listener; and who is on the other end of a connection.

use super::AdminError;
use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use axum::Router;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

/// Who sent a request: the local user behind the socket, or a TCP peer.
#[derive(Clone, Debug)]
pub(super) enum Peer {
    /// A process on this machine; its uid, if the system told it.
    Unix { uid: Option<u32> },
    /// A TCP client.
    Tcp(SocketAddr),
}

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        Peer::Unix {
            uid: stream.io().peer_cred().ok().map(|c| c.uid()),
        }
    }
}

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Peer::Tcp(*stream.remote_addr())
    }
}

impl Peer {
    /// The actor an action is recorded with when the request names none:
    /// the local user's name (or uid), or the TCP peer's address.
    pub(super) fn default_actor(&self) -> String {
        match self {
            Peer::Unix { uid: Some(uid) } => match user_name(*uid) {
                Some(name) => name,
                None => format!("uid {uid}"),
            },
            Peer::Unix { uid: None } => "local user".to_owned(),
            Peer::Tcp(addr) => format!("http {addr}"),
        }
    }

    /// True for a TCP client, which must carry the token when one is set.
    pub(super) fn is_tcp(&self) -> bool {
        matches!(self, Peer::Tcp(_))
    }
}

/// The name `/etc/passwd` gives `uid`, if it names one.
fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let found: u32 = fields.nth(1)?.parse().ok()?;
        (found == uid).then(|| name.to_owned())
    })
}

/// Binds the socket at `path` with mode 0600. A stale socket (nobody
/// answers on it) is replaced; anything else there is refused. The socket
/// is bound under a temporary name, restricted, then renamed into place,
/// so that it is never reachable with a wider mode.
pub(super) fn bind_socket(path: &Path) -> Result<UnixListener, AdminError> {
    let failed = |source| AdminError::Listen {
        what: path.display().to_string(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(AdminError::SocketPathTaken {
                    path: path.to_owned(),
                    what: "a live admin server answers on it",
                });
            }
            std::fs::remove_file(path).map_err(failed)?;
        }
        Ok(_) => {
            return Err(AdminError::SocketPathTaken {
                path: path.to_owned(),
                what: "is not a socket",
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed(e)),
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = PathBuf::from(temporary);
    if std::fs::symlink_metadata(&temporary).is_ok_and(|m| m.file_type().is_socket()) {
        std::fs::remove_file(&temporary).map_err(failed)?;
    }
    let listener = UnixListener::bind(&temporary).map_err(failed)?;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&temporary);
            failed(e)
        })?;
    Ok(listener)
}

/// Serves `app` on the socket until `stop`, then removes the socket file.
pub(super) async fn serve_unix(
    listener: UnixListener,
    path: PathBuf,
    app: Router,
    stop: CancellationToken,
    drain: Duration,
) {
    serve(listener, app, stop, drain).await;
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(&path);
    }
}

/// Serves `app` on `listener` until `stop`, each request knowing its
/// [`Peer`].
pub(super) async fn serve<L>(listener: L, app: Router, stop: CancellationToken, drain: Duration)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
    Peer: for<'a> Connected<IncomingStream<'a, L>>,
{
    let service = app.into_make_service_with_connect_info::<Peer>();
    let server = axum::serve(listener, service)
        .with_graceful_shutdown(stop.clone().cancelled_owned())
        .into_future();
    until_stopped(server, &stop, drain).await;
}

/// Runs `server`; once `stop` fires, gives the requests in progress
/// `drain` to finish and then drops their connections, so that a client
/// that never reads cannot hold the shutdown.
async fn until_stopped(
    server: impl std::future::Future<Output = std::io::Result<()>>,
    stop: &CancellationToken,
    drain: Duration,
) {
    tokio::pin!(server);
    let ended = tokio::select! {
        ended = &mut server => Some(ended),
        () = stop.cancelled() => None,
    };
    let ended = match ended {
        Some(ended) => ended,
        None => match tokio::time::timeout(drain, &mut server).await {
            Ok(ended) => ended,
            Err(_) => {
                tracing::warn!(
                    "admin server: connections still open after the drain period are dropped"
                );
                Ok(())
            }
        },
    };
    if let Err(e) = ended {
        tracing::error!(error = %e, "admin server stopped");
    }
}

//! Sockets: the kubelet API over TLS, and the metrics endpoints over plain HTTP.
//!
//! The TLS loop is written out (rather than taken from a server crate) because each
//! connection's verified client certificate must reach the request handlers: it is read
//! once per connection into a [`PeerIdentity`] and put into every request of it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::api::auth::{PeerIdentity, user_from_certificate};

/// A client must finish the TLS handshake within this time, so idle sockets cannot pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// On shutdown, open connections get this long to finish their requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed accept (out of file descriptors), wait before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Errors of serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listening socket could not be opened.
    #[error("failed to listen on {address} for the {what}: {source}")]
    Bind {
        what: &'static str,
        address: SocketAddr,
        source: std::io::Error,
    },
    /// The plain HTTP server stopped with an error.
    #[error("failed to serve the {what}: {source}")]
    Serve {
        what: &'static str,
        source: std::io::Error,
    },
}

/// Open a listening socket for `what` (named in the error).
pub async fn bind(what: &'static str, address: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| ServeError::Bind {
            what,
            address,
            source,
        })
}

/// Serve `app` over TLS on `listener` until `shutdown` completes, then let open
/// connections finish for up to [`DRAIN_TIMEOUT`]. Per-connection failures (handshake,
/// protocol) are logged and never stop the server.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "kubelet API: accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let Some((stream, identity)) = handshake(&acceptor, stream, peer).await else {
                return;
            };
            let service = app.map_request(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(identity.clone());
                request
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            // Upgrades: exec, attach and port-forward switch protocols (api::streams).
            let connection = builder.serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(service),
            );
            if let Err(error) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%peer, %error, "kubelet API connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?DRAIN_TIMEOUT, "kubelet API: connections still open after the drain timeout; closing them");
    }
}

/// The TLS handshake, and the user named by the client certificate if one was presented
/// (rustls has verified it against the client CA by then).
async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, PeerIdentity)> {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::info!(%peer, %error, "kubelet API: TLS handshake failed");
            return None;
        }
        Err(_) => {
            tracing::info!(%peer, "kubelet API: TLS handshake timed out");
            return None;
        }
    };
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first());
    let identity = match leaf.map(|cert| user_from_certificate(cert)) {
        None => PeerIdentity(None),
        Some(Ok(user)) => PeerIdentity(Some(Arc::new(user))),
        Some(Err(error)) => {
            // Verified but unusable: the client is treated as presenting no certificate.
            tracing::warn!(%peer, %error, "kubelet API: client certificate names no user");
            PeerIdentity(None)
        }
    };
    Some((stream, identity))
}

/// Serve `app` over plain HTTP on `listener` until `shutdown` completes.
pub async fn serve_plain(
    what: &'static str,
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| ServeError::Serve { what, source })
}

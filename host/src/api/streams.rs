//! Exec, attach and port-forward: the client's upgraded connection, passed through to the
//! agent of the pod's cell.
//!
//! The node declares `ExtendWebSocketsToKubelet` (see `kube::node`), so the API server
//! proxies kubectl's WebSocket upgrade to this API unchanged instead of translating it to
//! SPDY. The host checks and routes the request (auth, pod, container, cell) and then opens
//! the same upgrade on the agent over the mutual-TLS channel, with the client's WebSocket
//! key and protocols: the agent's `101` answer (its `Sec-WebSocket-Accept` matches the
//! client's key) goes back to the client, and from then on bytes are copied both ways. The
//! agent speaks the protocols itself; the host never parses a frame, so a session costs
//! the host two sockets and a copy loop.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;

use crate::api::status::Failure;
use crate::cells::{AgentClient, ClientError};

/// The request headers a session upgrade needs on the agent: the upgrade itself and the
/// WebSocket handshake (`Sec-WebSocket-Extensions` is left out: no extension is served).
const FORWARDED: [HeaderName; 5] = [
    header::CONNECTION,
    header::UPGRADE,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_PROTOCOL,
];

/// The agent's answer headers that complete the client's handshake.
const ANSWERED: [HeaderName; 4] = [
    header::CONNECTION,
    header::UPGRADE,
    header::SEC_WEBSOCKET_ACCEPT,
    header::SEC_WEBSOCKET_PROTOCOL,
];

/// Open `path` on `agent` with `request`'s upgrade and join the two connections.
///
/// # Errors
/// A request that is not an upgrade → 400 (the kubelet's "Upgrade request required"); an
/// agent that refuses → its code and message; an agent out of reach → 500.
pub async fn pass_through(
    agent: &AgentClient,
    path: &str,
    mut request: Request,
) -> Result<Response, Failure> {
    if !request.headers().contains_key(header::UPGRADE) {
        return Err(Failure::bad_request("Upgrade request required"));
    }
    let path_and_query = match request.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    let headers: HeaderMap = FORWARDED
        .iter()
        .filter_map(|name| Some((name.clone(), request.headers().get(name)?.clone())))
        .collect();
    let client_side = hyper::upgrade::on(&mut request);
    let (answer, mut agent_side) =
        agent
            .upgrade(&path_and_query, headers)
            .await
            .map_err(|error| match error {
                ClientError::Refused {
                    status, message, ..
                } => Failure::from_agent(status, message),
                other => {
                    tracing::warn!(error = %other, "session not opened on the cell agent");
                    Failure::internal(other.to_string())
                }
            })?;
    tokio::spawn(async move {
        let client_side = match client_side.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%error, "session client left before the upgrade");
                return;
            }
        };
        let mut client_side = TokioIo::new(client_side);
        match tokio::io::copy_bidirectional(&mut client_side, &mut agent_side).await {
            Ok((up, down)) => tracing::debug!(up, down, "session ended"),
            Err(error) => tracing::debug!(%error, "session ended with an error"),
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    for name in ANSWERED {
        if let Some(value) = answer.get(&name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    Ok(response)
}

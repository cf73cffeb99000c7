//! Interactive sessions with the pod, as the kubelet serves them: `exec` and `attach` on
//! the WebSocket channel protocols of [`channel`]. The host passes the client's upgraded
//! connection through unchanged (the API server proxies it to the node when the node
//! declares `ExtendWebSocketsToKubelet`), so the agent speaks kubectl's protocol itself.
//!
//! Routes: `GET /v1/containers/{name}/exec?command=…&stdin=1&stdout=1&stderr=1&tty=1`,
//! `GET /v1/containers/{name}/attach?stdin=1&stdout=1&stderr=1&tty=1`, and `GET /v1/portforward`
//! (SPDY tunnelled in the WebSocket, [`portforward`]).

pub mod attach;
pub mod channel;
pub mod exec;
pub mod portforward;
pub mod session;
pub mod spdy;

use std::sync::Arc;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::server::{Agent, error, runtime_error};
use exec::ExecOptions;

/// The session routes, merged into the agent's API.
pub fn routes() -> Router<Arc<Agent>> {
    Router::new()
        .route("/v1/containers/{name}/exec", get(exec))
        .route("/v1/containers/{name}/attach", get(attach))
        .route("/v1/portforward", get(port_forward))
}

/// The upgrade with one of the channel protocols, or the 400 the kubelet answers.
// A refusal is an axum `Response`, answered at once; boxing it would buy nothing.
#[allow(clippy::result_large_err)]
fn channel_upgrade(upgrade: WebSocketUpgrade) -> Result<WebSocketUpgrade, Response> {
    let upgrade = upgrade.protocols(channel::PROTOCOLS);
    if upgrade.selected_protocol().is_none() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!(
                "no supported stream protocol requested; this agent speaks {}",
                channel::PROTOCOLS.join(", ")
            ),
        ));
    }
    Ok(upgrade)
}

async fn exec(
    State(agent): State<Arc<Agent>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    upgrade: WebSocketUpgrade,
) -> Response {
    let upgrade = match channel_upgrade(upgrade) {
        Ok(upgrade) => upgrade,
        Err(refused) => return refused,
    };
    let options = ExecOptions::from_query(query.as_deref().unwrap_or_default());
    let id = match agent.runtime().running(&name).await {
        Ok(id) => id,
        Err(failure) => return runtime_error(failure),
    };
    let session = match exec::start(agent.runtime(), &id, &options).await {
        Ok(session) => session,
        Err(exec::ExecError::NoCommand) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "exec needs a command",
            );
        }
        Err(failure) => {
            tracing::warn!(container = %name, error = %failure, "exec failed to start");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "RuntimeFailed", failure);
        }
    };
    tracing::info!(container = %name, command = ?options.command, tty = options.tty, "exec session");
    upgrade
        .on_upgrade(move |socket| session::serve(socket, session))
        .into_response()
}

async fn attach(
    State(agent): State<Arc<Agent>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    upgrade: WebSocketUpgrade,
) -> Response {
    let upgrade = match channel_upgrade(upgrade) {
        Ok(upgrade) => upgrade,
        Err(refused) => return refused,
    };
    let options = ExecOptions::from_query(query.as_deref().unwrap_or_default());
    let attachment = match agent.runtime().attach(&name).await {
        Ok(attachment) => attachment,
        Err(failure) => return runtime_error(failure),
    };
    if options.tty && !attachment.console.is_terminal() {
        return error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("container {name:?} runs without a terminal (tty: false); attach without -t"),
        );
    }
    tracing::info!(container = %name, stdin = options.stdin, tty = options.tty, "attach session");
    let session = attach::session(attachment, &options).await;
    upgrade
        .on_upgrade(move |socket| session::serve(socket, session))
        .into_response()
}

async fn port_forward(State(agent): State<Arc<Agent>>, upgrade: WebSocketUpgrade) -> Response {
    let upgrade = upgrade.protocols([portforward::PROTOCOL]);
    if upgrade.selected_protocol().is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!(
                "no supported port-forward protocol requested; this agent speaks {}",
                portforward::PROTOCOL
            ),
        );
    }
    let Some(sandbox) = agent.sandbox().await else {
        return error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the pod has no network yet",
        );
    };
    tracing::info!("port-forward session");
    upgrade
        .on_upgrade(move |socket| portforward::serve(socket, sandbox.netns))
        .into_response()
}

//! `cellet run`: load the config and the three plugins, report readiness, wait for a
//! termination signal. The Kubernetes loop is not wired in yet (see the command's help).

use std::path::Path;

use tokio::signal::unix::{SignalKind, signal};

use cellet::config::check::{self, StartError};

/// Errors of `cellet run`.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Start(#[from] StartError),
    /// The signal handlers could not be installed.
    #[error("failed to listen for SIGTERM and SIGINT: {0}")]
    Signals(std::io::Error),
}

pub async fn run(config: &Path) -> Result<(), RunError> {
    let loaded = check::start(config).await?;
    let node = &loaded.config.node;
    tracing::info!(
        config = %config.display(),
        node = %node.name,
        controller_id = %node.controller_id,
        cloud = %loaded.config.cloud.source,
        network = %loaded.config.network.source,
        hostport = %loaded.config.hostport.source,
        "cellet ready: plugins loaded; the Kubernetes loop is not part of this release, waiting for SIGTERM or SIGINT"
    );

    let mut terminate = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    let name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "cellet stopping");
    drop(loaded);
    Ok(())
}

//! `cellet run`: load the config and the three plugins, then serve the node (the
//! Kubernetes loop, `cellet::kube`) until SIGTERM or SIGINT.

use std::path::Path;

use tokio::signal::unix::{SignalKind, signal};

use cellet::config::check::{self, StartError};
use cellet::kube::provider::{Plugins, WrongSlot};
use cellet::kube::{self, KubeError, KubeSettings};

/// Errors of `cellet run`.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Start(#[from] StartError),
    /// The signal handlers could not be installed.
    #[error("failed to listen for SIGTERM and SIGINT: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Plugins(#[from] WrongSlot),
    #[error(transparent)]
    Kube(#[from] KubeError),
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
        "cellet ready: plugins loaded; serving the node until SIGTERM or SIGINT"
    );

    let mut terminate = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    let shutdown = async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "cellet stopping");
    };
    let plugins = Plugins::from_handles(&loaded.cloud.handle, &loaded.network.handle, &loaded.hostport.handle)?;
    kube::serve(node.clone(), KubeSettings::default(), plugins, shutdown).await?;
    drop(loaded);
    Ok(())
}

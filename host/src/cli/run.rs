//! `cellet run`: load the config and the three plugins, then serve the node (the
//! Kubernetes loop, `cellet::kube`), the kubelet API and the metrics endpoints until
//! SIGTERM or SIGINT.
//!
//! Order of the start, and why: sockets are bound before anything runs, so a port in use
//! fails the start instead of leaving a node whose logs cannot be read; every metric
//! family of the process goes into one registry before the registry is shared. On a
//! signal the node loop stops first (it releases leadership), then the servers drain.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use cellet::api::{
    self, ApiError, ApiMetrics, Auth, KubeletApi, NodeView, Readiness, ServeError, ServingNames,
};
use cellet::cells::{BootstrapSettings, CaError, CellCa, ClientError};
use cellet::config::Config;
use cellet::config::check::{self, StartError};
use cellet::kube::agents::CellAgents;
use cellet::kube::metrics::KubeMetrics;
use cellet::kube::provider::{Plugins, WrongSlot};
use cellet::kube::{self, KubeError, NodeLoop};
use cellet::net::hostport::HostPortRules;
use cellet::plugins::spec::Capability;

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
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    CellCa(#[from] CaError),
    #[error(transparent)]
    AgentTls(#[from] ClientError),
}

/// The host's side of the cell agents: the CA from `cells.ca-dir` (made there on first use,
/// then kept: running agents trust only it) and what each new agent is told.
///
/// `None` when the cloud plugin is granted no capability that makes machines (`ec2`,
/// `local-cells`): such a plugin (the `mock` test tool) cannot start an agent anywhere.
fn cell_agents(config: &Config) -> Result<Option<Arc<CellAgents>>, RunError> {
    let makes_machines = config
        .cloud
        .spec
        .grants
        .iter()
        .any(|c| matches!(c, Capability::Ec2 | Capability::LocalCells));
    if !makes_machines {
        return Ok(None);
    }
    let cells = &config.cells;
    let ca = CellCa::load_or_create(&cells.ca_dir)?;
    let bootstrap = BootstrapSettings {
        management_interface: cells.management_interface.clone(),
        port: cells.agent_port,
        state_root: cells.agent_state_dir.clone(),
    };
    let agents = CellAgents::new(
        ca,
        &config.node.name,
        bootstrap,
        cells.insecure_registries.clone(),
    )?;
    Ok(Some(Arc::new(agents)))
}

pub async fn run(config_path: &Path) -> Result<(), RunError> {
    let loaded = check::start(config_path).await?;
    let config = &loaded.config;
    let node = &config.node;
    let mut terminate = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    let plugins = Plugins::from_handles(
        &loaded.cloud.handle,
        &loaded.network.handle,
        &loaded.hostport.handle,
    )?;
    let client = kube::connect().await?;

    // Every metric family of the process, in the one registry `/metrics` serves.
    let mut registry = Registry::default();
    loaded.runtime.metrics().register(&mut registry);
    loaded.ec2_metrics.register(&mut registry);
    loaded.local_cells_metrics.register(&mut registry);
    let api_metrics = ApiMetrics::default();
    api_metrics.register(&mut registry);
    let kube_metrics = KubeMetrics::default();
    kube_metrics.register(&mut registry);
    let registry = Arc::new(registry);

    let rules = HostPortRules::new(config.node_rules.backend, config.node_rules.netns.clone());
    let agents = cell_agents(config)?;
    let node_loop = NodeLoop::new(
        client.clone(),
        node.clone(),
        config.kube.clone(),
        plugins,
        rules,
        agents,
        kube_metrics,
    );

    // The servers stop when `stop` fires or is dropped (the node loop ended).
    let (stop, stopped) = watch::channel(());
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.changed().await;
        }
    };
    let readiness = Readiness::default();
    let mut servers: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>> = Vec::new();
    match &config.kubelet_api {
        None => tracing::warn!(
            config = %config_path.display(),
            "no kubelet-api section: the kubelet API (kubectl logs, exec) and /metrics are not served"
        ),
        Some(settings) => {
            let listener = api::server::bind("metrics endpoints", settings.metrics_address).await?;
            tracing::info!(address = ?listener.local_addr().ok(), "metrics endpoints serving");
            let app = api::metrics::router(Arc::clone(&registry), readiness.clone());
            let serve =
                api::server::serve_plain("metrics endpoints", listener, app, until_stopped());
            servers.push(Box::pin(async move {
                if let Err(error) = serve.await {
                    tracing::error!(%error, "metrics endpoints stopped");
                }
            }));
            match &settings.api {
                None => tracing::warn!(
                    "kubelet API disabled (kubelet-api.enabled: false): kubectl logs and exec cannot reach this node"
                ),
                Some(listen) => {
                    let view = NodeView {
                        node_name: node.name.as_str().into(),
                        pods: Arc::new(node_loop.pods()),
                        cells: node_loop.cells(),
                        started: k8s_openapi::jiff::Timestamp::now(),
                        registry: Arc::clone(&registry),
                    };
                    let auth = Arc::new(Auth::new(client.clone(), node.name.clone()));
                    let app = api::router(view, auth, api_metrics);
                    let names = ServingNames {
                        node_name: node.name.clone(),
                        addresses: vec![node.internal_ip],
                    };
                    let api = KubeletApi::bind(listen.address, &listen.tls, &names, app).await?;
                    servers.push(Box::pin(api.serve(until_stopped())));
                }
            }
        }
    }

    tracing::info!(
        config = %config_path.display(),
        node = %node.name,
        controller_id = %node.controller_id,
        cloud = %config.cloud.source,
        network = %config.network.source,
        hostport = %config.hostport.source,
        node_rules = %config.node_rules.backend,
        "cellet ready: plugins loaded; serving the node until SIGTERM or SIGINT"
    );
    readiness.set_ready(true);
    let shutdown = async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "cellet stopping");
        readiness.set_ready(false);
    };
    let node_then_servers = async move {
        node_loop.run(shutdown).await;
        // The node is let go of (leadership released): now the servers drain.
        drop(stop);
    };
    tokio::join!(futures_util::future::join_all(servers), node_then_servers);
    tracing::info!(node = %node.name, "cellet stopped");
    drop(loaded);
    Ok(())
}

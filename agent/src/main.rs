//! `cellet-agent --bootstrap FILE`: the cell agent. It reads its bootstrap document (the
//! cell's user data), waits for the management interface's address, and serves the host's
//! API there until SIGTERM or SIGINT. Stopping the agent leaves the pod running: a new agent
//! applies it again from its saved state when it starts.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use cellet_agent::netns::{self, PodNet};
use cellet_agent::protocol::Bootstrap;
use cellet_agent::runtime::Runtime;
use cellet_agent::server::{self, Agent};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

/// How long the agent waits for its management interface to get an IPv4 address (a cloud
/// instance's DHCP may still be running when the agent starts).
const ADDRESS_WAIT: Duration = Duration::from_secs(120);

#[derive(Debug, Parser)]
#[command(name = "cellet-agent", version, about = "The cellet cell agent")]
struct Args {
    /// The bootstrap document (JSON; the cell's user data).
    #[arg(
        long,
        conflicts_with = "bootstrap_env",
        required_unless_present = "bootstrap_env"
    )]
    bootstrap: Option<PathBuf>,
    /// An environment variable holding the bootstrap document instead of a file.
    #[arg(long)]
    bootstrap_env: Option<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    // Image pulls and HTTP probes (reqwest, inside oci-client too) take the process default
    // provider: the agent's own (ring), so that aws-lc is not linked only for them.
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        tracing::debug!("a rustls crypto provider was installed already");
    }
    // Before any thread exists: unshare(CLONE_NEWNS) refuses a multi-threaded process.
    if let Err(error) = cellet_agent::netns::enter_private_mount_namespace() {
        tracing::error!(%error, "failed to enter a mount namespace of the agent's own");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "failed to start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!(error = %message, "cellet-agent failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let document = match (&args.bootstrap, &args.bootstrap_env) {
        (Some(path), _) => std::fs::read(path)
            .map_err(|error| format!("failed to read the bootstrap {}: {error}", path.display()))?,
        (None, Some(variable)) => std::env::var(variable)
            .map_err(|error| format!("failed to read the bootstrap from ${variable}: {error}"))?
            .into_bytes(),
        (None, None) => return Err("give --bootstrap FILE or --bootstrap-env VAR".into()),
    };
    let bootstrap = Bootstrap::from_json(&document).map_err(|error| error.to_string())?;
    let tls = server::tls_config(&bootstrap).map_err(|error| error.to_string())?;
    let management_ip = wait_for_address(&bootstrap.management_interface).await?;
    // The cell's part of the pod network (forwarding, proxy ARP, the table that keeps pods
    // off this agent's port), in place before the agent listens, so before any pod.
    netns::prepare_cell(&bootstrap.management_interface).map_err(|error| error.to_string())?;
    std::fs::create_dir_all(&bootstrap.state_dir).map_err(|error| {
        format!(
            "failed to create the state directory {}: {error}",
            bootstrap.state_dir.display()
        )
    })?;
    let container_runtime =
        Runtime::new(bootstrap.state_dir.join("runtime")).map_err(|error| error.to_string())?;
    let network = PodNet::new(
        &bootstrap.pod_uid,
        &bootstrap.management_interface,
        &bootstrap.state_dir,
    );
    let agent = Arc::new(Agent::new(&bootstrap, container_runtime, network));
    // A pod this cell ran before the agent restarted comes back at once; the host's own
    // apply, when it comes, waits for this one and then changes nothing.
    tokio::spawn({
        let agent = agent.clone();
        async move { agent.resume().await }
    });
    let address = std::net::SocketAddr::from((management_ip, bootstrap.port));
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| format!("failed to listen on {address}: {error}"))?;
    tracing::info!(
        pod_uid = %bootstrap.pod_uid,
        %address,
        "cellet-agent serving"
    );
    let mut terminate = signal(SignalKind::terminate()).map_err(|error| error.to_string())?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
    };
    server::serve(listener, tls, server::router(agent), shutdown).await;
    Ok(())
}

async fn wait_for_address(interface: &str) -> Result<std::net::Ipv4Addr, String> {
    let deadline = tokio::time::Instant::now() + ADDRESS_WAIT;
    loop {
        match netns::interface_ipv4(interface).await {
            Ok(ip) => return Ok(ip),
            Err(error) if tokio::time::Instant::now() >= deadline => {
                return Err(format!("gave up after {ADDRESS_WAIT:?}: {error}"));
            }
            Err(error) => {
                tracing::info!(%error, "waiting for the management address");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

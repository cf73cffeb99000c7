//! Command-line interface: argument definitions (clap derive) and dispatch.

mod local_cells;
pub mod logging;
mod plan;
mod plugin;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cellet::config::check;
use logging::LogFormat;

/// cellet: a virtual kubelet that runs each pod in a cloud instance of its own, with
/// WebAssembly plugins for the cloud, the network strategy and the hostPort policy.
#[derive(Debug, Parser)]
#[command(name = "cellet", version, propagate_version = true)]
pub struct Cli {
    /// Log format on stderr (the filter is read from CELLET_LOG, default `info`).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the config and its plugins, then serve the node until SIGTERM or SIGINT.
    ///
    /// The cluster is reached with KUBECONFIG (or ~/.kube/config, or the in-cluster
    /// service account). The node is registered, its Lease renewed and its pods run once
    /// this replica holds the node's leader Lease; on SIGTERM it releases the Lease and
    /// leaves the cells running for the next leader to adopt.
    Run {
        /// The config file (see docs/config.md).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Preview what the config's plugins decide for some pods, touching no cloud, kernel
    /// or cluster: hostPort mappings or the denial, the pod network, the cell request,
    /// and (given nodes) the cloud routes.
    ///
    /// MANIFESTS holds Pods, Lists, or workloads (Deployment, StatefulSet, DaemonSet, Job,
    /// CronJob...; each planned as its replicas), in one or more YAML documents; pods are
    /// admitted in order, each against the hostPorts of those before it, as on one node.
    /// Exits 1 when any pod would be refused or a plugin call fails.
    Plan {
        /// The manifests file.
        manifests: PathBuf,
        /// The config file whose network and hostport plugins decide (its cloud plugin is
        /// not loaded).
        #[arg(long, short, default_value = "/etc/cellet/cellet.yaml")]
        config: PathBuf,
        /// The cluster's nodes (`kubectl get nodes -o yaml`), for the strategy's cloud routes.
        #[arg(long)]
        nodes: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Work with config files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Work with plugin components.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Work with the local VPC of the `local-cells` cloud.
    #[command(subcommand)]
    LocalCells(LocalCellsCommand),
}

#[derive(Debug, Subcommand)]
pub enum LocalCellsCommand {
    /// Delete every cell of the config's local VPC (agent, namespace, links, record), then
    /// the host's uplink and the VPC namespace with its bridge and routes.
    Down {
        /// The config file whose cloud slot is granted `local-cells`.
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file and load every plugin it names (fetch, digest, compile,
    /// world, capabilities, init). Prints every problem as FILE:LINE: FIELD: MESSAGE and
    /// exits non-zero if there is any.
    Check {
        /// The config file.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Describe a component: world, contract version, imports, exports, size, sha256.
    Inspect {
        /// A component file, or oci://HOST[:PORT]/REPOSITORY:TAG (or @sha256:DIGEST).
        source: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Where compiled (and fetched) components are cached.
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// HOST[:PORT] of a registry to reach over plain HTTP (loopback ones always are).
        #[arg(long = "insecure-registry")]
        insecure_registries: Vec<String>,
    },
    /// Push a component to an OCI registry as a plugin artifact (one application/wasm
    /// layer) and print its reference by digest.
    Push {
        /// The component file.
        file: PathBuf,
        /// oci://HOST[:PORT]/REPOSITORY:TAG
        reference: String,
        /// HOST[:PORT] of a registry to reach over plain HTTP (loopback ones always are).
        #[arg(long = "insecure-registry")]
        insecure_registries: Vec<String>,
    },
    /// Create a plugin crate from the SDK's template for a world.
    New {
        /// The package name (`my-strategy`).
        name: String,
        /// The world the plugin targets.
        #[arg(long, value_enum)]
        world: plugin::World,
        /// Directory to create the crate in (default: the current directory).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Path of the cellet-sdk crate the plugin depends on (default: the sdk/ of the
        /// checkout this cellet was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

impl Command {
    /// The log filter without `CELLET_LOG`: a dry run's report is its output, so it only
    /// warns; everything else logs what it does.
    pub fn default_log_filter(&self) -> &'static str {
        match self {
            Command::Plan { .. } => "warn",
            _ => "info",
        }
    }
}

/// Run one command; errors are printed here, once.
pub async fn run(command: Command) -> ExitCode {
    let outcome: Result<(), Box<dyn std::error::Error>> = match command {
        Command::Run { config } => run::run(&config).await.map_err(Into::into),
        Command::Config(ConfigCommand::Check { file }) => return config_check(&file).await,
        Command::Plan {
            manifests,
            config,
            nodes,
            json,
        } => match plan::run(&manifests, &config, nodes.as_deref(), json).await {
            Ok(status) => return status,
            Err(error) => Err(error.into()),
        },
        Command::Plugin(PluginCommand::Inspect {
            source,
            json,
            cache_dir,
            insecure_registries,
        }) => plugin::inspect(&source, json, cache_dir, insecure_registries)
            .await
            .map_err(Into::into),
        Command::Plugin(PluginCommand::Push {
            file,
            reference,
            insecure_registries,
        }) => plugin::push(&file, &reference, insecure_registries)
            .await
            .map_err(Into::into),
        Command::Plugin(PluginCommand::New {
            name,
            world,
            dir,
            sdk,
        }) => plugin::new(&name, world, &dir, sdk).map_err(Into::into),
        Command::LocalCells(LocalCellsCommand::Down { config }) => {
            local_cells::down(&config).await.map_err(Into::into)
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Every error's message already carries its cause ("failed to X: {source}").
            eprintln!("cellet: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `config check`: the report on stdout, one line per problem, then a summary.
async fn config_check(file: &std::path::Path) -> ExitCode {
    let report = match check::check(file).await {
        Ok(report) => report,
        Err(error) => {
            eprintln!("cellet: {error}");
            return ExitCode::FAILURE;
        }
    };
    for (slot, source, plugin) in &report.loaded {
        println!(
            "{}: {slot}: {source}: ok ({} {}, sha256:{})",
            file.display(),
            slot.world(),
            plugin.version,
            plugin.sha256
        );
    }
    if report.problems.0.is_empty() {
        println!("{}: ok", file.display());
        ExitCode::SUCCESS
    } else {
        println!("{}", report.problems);
        let n = report.problems.0.len();
        println!(
            "{}: {n} problem{}",
            file.display(),
            if n == 1 { "" } else { "s" }
        );
        ExitCode::FAILURE
    }
}

//! Loading the plugins a config names, for `cellet run` and `cellet config check`.
//!
//! `config check` does everything a start does short of registering the node: parse the
//! file, fetch each slot's component, verify its digest, compile it, check its world,
//! contract version and imports against the slot, and call its `init` with its `config:`
//! section, so that a plugin's own config errors surface too. It reports every problem,
//! each attributed to a line: problems of fetching and loading to the slot's `source:`,
//! an `init` refusal to its `config:`.

use std::path::Path;

use crate::config::{
    Config, ConfigError, Draft, NodeConfig, PluginsConfig, Problem, Problems, SlotConfig,
};
use crate::plugins::capabilities::ec2::{Ec2Capability, Ec2Metrics};
use crate::plugins::capabilities::local_cells::{LocalCellsCapability, LocalCellsMetrics};
use crate::plugins::source::{Fetcher, SourceError};
use crate::plugins::{
    LoadError, LoadedPlugin, PluginRuntime, Providers, RuntimeConfig, RuntimeError, Slot,
};

/// Why one slot's plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// Locating, fetching or verifying the component failed.
    #[error("failed to fetch the {slot} plugin: {source}")]
    Fetch { slot: Slot, source: SourceError },
    /// The runtime refused the component (world, version, imports, limits, `init`).
    #[error("failed to load the {slot} plugin from {origin}: {source}")]
    Load {
        slot: Slot,
        origin: String,
        source: LoadError,
    },
}

impl SlotError {
    /// The problem as `config check` reports it: `init` errors at the slot's `config:`,
    /// everything else at its `source:`.
    pub fn problem(&self, file: &Path, slot: &SlotConfig) -> Problem {
        let key = slot.spec.slot.config_key();
        match self {
            SlotError::Fetch { source, .. } => Problem::new(
                file,
                slot.source_line,
                format!("{key}.source"),
                source.to_string(),
            ),
            SlotError::Load {
                source: source @ LoadError::Init { .. },
                origin,
                ..
            } => Problem::new(
                file,
                slot.config_line,
                format!("{key}.config"),
                format!("plugin {origin}: {source}"),
            ),
            SlotError::Load { source, origin, .. } => Problem::new(
                file,
                slot.source_line,
                format!("{key}.source"),
                format!("plugin {origin}: {source}"),
            ),
        }
    }
}

/// Errors of `cellet run`'s start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("failed to start the plugin runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Slot(#[from] SlotError),
}

/// The plugins of a valid config, loaded.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub runtime: PluginRuntime,
    /// Metrics of the `ec2` capability, for the process's registry.
    pub ec2_metrics: Ec2Metrics,
    /// Metrics of the `local-cells` capability, for the process's registry.
    pub local_cells_metrics: LocalCellsMetrics,
    pub cloud: LoadedPlugin,
    pub network: LoadedPlugin,
    pub hostport: LoadedPlugin,
}

/// The runtime settings a config asks for. `node` may be missing in `config check` when
/// its section is invalid (that problem is already reported); `init` then sees empty
/// identity fields.
pub fn runtime_config(node: Option<&NodeConfig>, plugins: &PluginsConfig) -> RuntimeConfig {
    RuntimeConfig {
        engine: plugins.engine.clone(),
        cache_dir: plugins.cache_dir.clone(),
        node_name: node.map(|n| n.name.clone()).unwrap_or_default(),
        controller_id: node.map(|n| n.controller_id.clone()).unwrap_or_default(),
    }
}

/// The fetcher a config asks for: fetched components live in `<cache-dir>/oci`, beside
/// the runtime's compiled ones.
pub fn fetcher(plugins: &PluginsConfig) -> Fetcher {
    Fetcher::new(
        Some(plugins.cache_dir.join("oci")),
        plugins.insecure_registries.clone(),
    )
}

/// The metrics of the capabilities, shared by every slot (register them once with the
/// process's registry).
#[derive(Debug, Clone, Default)]
pub struct CapabilityMetrics {
    pub ec2: Ec2Metrics,
    pub local_cells: LocalCellsMetrics,
}

/// Fetch and load one slot's plugin, with the clients its capabilities need.
pub async fn load_slot(
    runtime: &PluginRuntime,
    fetcher: &Fetcher,
    slot: &SlotConfig,
    metrics: &CapabilityMetrics,
) -> Result<LoadedPlugin, SlotError> {
    let name = slot.spec.slot;
    let fetched = fetcher
        .fetch(&slot.source, slot.pin)
        .await
        .map_err(|source| SlotError::Fetch { slot: name, source })?;
    tracing::debug!(slot = %name, source = %slot.source, digest = %fetched.digest, origin = ?fetched.origin, "plugin fetched");
    let ec2 = match &slot.ec2 {
        // Building the client reads the credential chain but calls no AWS API.
        Some(settings) => {
            Some(Ec2Capability::connect(&slot.spec.name, settings, metrics.ec2.clone()).await)
        }
        None => None,
    };
    // Touches nothing until the plugin's first call: `config check` makes no namespace.
    let local_cells = slot.local_cells.as_ref().map(|settings| {
        LocalCellsCapability::new(
            &slot.spec.name,
            settings.clone(),
            metrics.local_cells.clone(),
        )
    });
    runtime
        .load_with(&slot.spec, &fetched.bytes, Providers { ec2, local_cells })
        .await
        .map_err(|source| SlotError::Load {
            slot: name,
            origin: slot.source.to_string(),
            source,
        })
}

/// Load a config and its three plugins; the first failure stops the start.
pub async fn start(path: &Path) -> Result<Loaded, StartError> {
    let config = Config::load(path)?;
    let runtime = PluginRuntime::new(runtime_config(Some(&config.node), &config.plugins))?;
    let fetcher = fetcher(&config.plugins);
    let metrics = CapabilityMetrics::default();
    let cloud = load_slot(&runtime, &fetcher, &config.cloud, &metrics).await?;
    let network = load_slot(&runtime, &fetcher, &config.network, &metrics).await?;
    let hostport = load_slot(&runtime, &fetcher, &config.hostport, &metrics).await?;
    let CapabilityMetrics {
        ec2: ec2_metrics,
        local_cells: local_cells_metrics,
    } = metrics;
    Ok(Loaded {
        config,
        runtime,
        ec2_metrics,
        local_cells_metrics,
        cloud,
        network,
        hostport,
    })
}

/// What `config check` found.
#[derive(Debug)]
pub struct Report {
    /// Every problem, by line. Empty means the config would start.
    pub problems: Problems,
    /// The plugins that loaded, with their slot.
    pub loaded: Vec<(Slot, String, LoadedPlugin)>,
}

/// Check a config file and every plugin it names (see the module docs). Only an
/// unreadable file is an `Err`; everything else is in the report.
pub async fn check(path: &Path) -> Result<Report, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let Draft {
        node,
        plugins,
        slots,
        mut problems,
        ..
    } = super::parse(path, &text);
    let mut loaded = Vec::new();
    if let Some(plugins) = plugins {
        match PluginRuntime::new(runtime_config(node.as_ref(), &plugins)) {
            Ok(runtime) => {
                let fetcher = fetcher(&plugins);
                let metrics = CapabilityMetrics::default();
                for slot in slots.iter().flatten() {
                    match load_slot(&runtime, &fetcher, slot, &metrics).await {
                        Ok(plugin) => {
                            loaded.push((slot.spec.slot, slot.source.to_string(), plugin))
                        }
                        Err(error) => problems.push(error.problem(path, slot)),
                    }
                }
            }
            Err(error) => problems.push(Problem::new(
                path,
                plugins.line,
                "plugins",
                format!("failed to start the plugin runtime: {error}"),
            )),
        }
    }
    Ok(Report {
        problems: Problems(problems).sorted(),
        loaded,
    })
}

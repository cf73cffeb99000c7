//! `PluginRuntime`: owns the engine, its epoch ticker, the compiled-component cache and the
//! metrics, and turns a [`PluginSpec`] plus component bytes into a typed handle.
//!
//! # Expected flow of `load`
//!
//! 1. check the grants against the slot and take their clients ([`Grants::configure`]),
//!    and check the limits against the engine;
//! 2. compile the component, or load it from the cache (on a blocking thread);
//! 3. identify its world and contract version and refuse it for the wrong slot, a contract
//!    this host does not link, or an import the slot does not grant ([`world`]);
//! 4. link WASI (empty) and the granted capabilities, and pre-instantiate (`InstancePre`);
//! 5. reserve the plugin's `max_instances` in the engine's pool;
//! 6. create one instance and call its `init` with the plugin's config, so a bad config
//!    fails here; the instance stays warm for the first call.
//!
//! Every step fails before the plugin is callable; nothing is left behind but the cache
//! entry.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker, ResourceTable};

use crate::plugins::bindings::{InitContext, v0_1_0, v0_2_0};
use crate::plugins::cache::{CacheError, Compiled, ComponentCache, sha256_hex};
use crate::plugins::capabilities::{CapabilityError, Grants, Providers};
use crate::plugins::engine::{EngineError, EngineSettings, EpochTicker, build_engine};
use crate::plugins::handle::{
    CallError, CloudPlugin, HostportPlugin, NetworkPlugin, PluginHandle, Versioned,
};
use crate::plugins::instance::HostState;
use crate::plugins::metrics::{CacheOutcome, PluginMetrics};
use crate::plugins::pool::{Guest, INIT, INSTANTIATE, Pool, PoolParts};
use crate::plugins::spec::{Limits, PluginSpec, Slot};
use crate::plugins::world::{self, ContractVersion, WorldError};

/// The contract whose plugins borrow host resources (see `plugins::resources`).
const V0_2_0: ContractVersion = ContractVersion::new(0, 2, 0);

/// Smallest memory cap that makes sense: one wasm page.
const MIN_MEMORY_BYTES: u64 = 64 * 1024;

/// Errors creating the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// Why a plugin could not be loaded. Every variant names the plugin.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Capability(#[from] CapabilityError),
    #[error(transparent)]
    World(#[from] WorldError),
    #[error("failed to load plugin `{plugin}`: {source}")]
    Compile {
        plugin: String,
        #[source]
        source: CacheError,
    },
    #[error("failed to load plugin `{plugin}`: invalid limit `{field}`: {reason}")]
    Limits {
        plugin: String,
        field: &'static str,
        reason: String,
    },
    #[error(
        "failed to load plugin `{plugin}`: it needs {requested} instances but the engine has {available} of {total} left (raise the engine's max-instances)"
    )]
    Capacity {
        plugin: String,
        requested: u32,
        available: u32,
        total: u32,
    },
    #[error("failed to link plugin `{plugin}` ({world}): {source}")]
    Link {
        plugin: String,
        world: &'static str,
        #[source]
        source: wasmtime::Error,
    },
    #[error("failed to serialize the config of plugin `{plugin}` as JSON: {source}")]
    Config {
        plugin: String,
        #[source]
        source: serde_json::Error,
    },
    /// The first instance could not be created or its `init` refused the config.
    #[error("failed to initialise plugin `{plugin}`: {source}")]
    Init {
        plugin: String,
        /// Boxed: a `CallError` is large, and `LoadError` travels by value.
        #[source]
        source: Box<CallError>,
    },
    #[error("failed to load plugin `{plugin}`: the compiler thread panicked or was cancelled")]
    CompilerThread { plugin: String },
}

/// Runtime-wide settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub engine: EngineSettings,
    /// Where compiled components are cached ([`ComponentCache::default_dir`] by default).
    pub cache_dir: PathBuf,
    /// Handed to every plugin's `init`.
    pub node_name: String,
    /// Handed to every plugin's `init`: the tag that marks this controller's cloud objects.
    pub controller_id: String,
}

/// What `cellet plugin inspect` shows about a component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentInfo {
    /// The world (`network-strategy`), if the component is a cellet plugin.
    pub world: Option<&'static str>,
    /// The contract version it targets (`0.1.0`), if it exports a cellet interface.
    pub package_version: Option<String>,
    /// Whether this host can load it, and if not why (wrong slot aside).
    pub loadable: Result<(), WorldError>,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    pub size_bytes: usize,
    pub sha256: String,
}

/// A plugin loaded into its slot, ready to call.
#[derive(Debug, Clone)]
pub struct LoadedPlugin {
    pub handle: PluginHandle,
    pub version: ContractVersion,
    /// sha256 of the component's bytes.
    pub sha256: String,
    /// Whether the compiled code came from the cache.
    pub cache: CacheOutcome,
}

/// Instances of the engine's pool not yet promised to a loaded plugin.
#[derive(Debug)]
struct Capacity {
    total: u32,
    reserved: Mutex<u32>,
}

/// A loaded plugin's share of the engine's instance pool, returned when its last handle
/// is dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    capacity: Arc<Capacity>,
    count: u32,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut reserved = self
            .capacity
            .reserved
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *reserved -= self.count;
    }
}

/// The plugin runtime of the process.
pub struct PluginRuntime {
    engine: Engine,
    settings: EngineSettings,
    _ticker: EpochTicker,
    cache: ComponentCache,
    metrics: PluginMetrics,
    capacity: Arc<Capacity>,
    node_name: String,
    controller_id: String,
}

impl std::fmt::Debug for PluginRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRuntime")
            .field("settings", &self.settings)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl PluginRuntime {
    /// Build the engine, start its ticker and open the cache.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let engine = build_engine(&config.engine)?;
        let ticker = EpochTicker::start(&engine, config.engine.epoch_tick)?;
        let cache = ComponentCache::open(&config.cache_dir, &engine)?;
        Ok(PluginRuntime {
            capacity: Arc::new(Capacity {
                total: config.engine.max_instances,
                reserved: Mutex::new(0),
            }),
            engine,
            settings: config.engine,
            _ticker: ticker,
            cache,
            metrics: PluginMetrics::default(),
            node_name: config.node_name,
            controller_id: config.controller_id,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn cache(&self) -> &ComponentCache {
        &self.cache
    }

    /// The runtime's metrics; register them with [`PluginMetrics::register`].
    pub fn metrics(&self) -> &PluginMetrics {
        &self.metrics
    }

    /// Load `component_bytes` into the slot described by `spec` (see the module docs), for
    /// a plugin granted no capability that needs a client (`log` only).
    pub async fn load(
        &self,
        spec: &PluginSpec,
        component_bytes: &[u8],
    ) -> Result<LoadedPlugin, LoadError> {
        self.load_with(spec, component_bytes, Providers::default())
            .await
    }

    /// [`load`](Self::load), with the clients that serve the plugin's granted capabilities
    /// (an `ec2` grant needs `providers.ec2`).
    pub async fn load_with(
        &self,
        spec: &PluginSpec,
        component_bytes: &[u8],
        providers: Providers,
    ) -> Result<LoadedPlugin, LoadError> {
        let grants = Grants::configure(spec, providers)?;
        self.check_limits(spec)?;
        let sha256 = sha256_hex(component_bytes);
        let compiled = self.compile(&spec.name, component_bytes, &sha256).await?;

        let (imports, exports) = world::names(&self.engine, &compiled.component);
        let identity = world::identify(&spec.name, imports, exports)?;
        let version = world::check(&spec.name, &identity, spec.slot, |c| grants.grants(c))?;

        let link_error = |source| LoadError::Link {
            plugin: spec.name.clone(),
            world: spec.slot.world(),
            source,
        };
        let mut linker = Linker::<HostState>::new(&self.engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link_error)?;
        grants.add_to_linker(&mut linker)?;
        if version == V0_2_0 {
            // The resources `types@0.2.0` declares, which a call lends from the table.
            v0_2_0::types::add_to_linker::<HostState, HasSelf<ResourceTable>>(
                &mut linker,
                HostState::table,
            )
            .map_err(link_error)?;
        }
        let pre = linker
            .instantiate_pre(&compiled.component)
            .map_err(link_error)?;

        let reservation = self.reserve(spec)?;
        let init = InitContext {
            config_json: serde_json::to_string(&spec.config).map_err(|source| {
                LoadError::Config {
                    plugin: spec.name.clone(),
                    source,
                }
            })?,
            node_name: self.node_name.clone(),
            controller_id: self.controller_id.clone(),
        };
        let parts = Parts {
            runtime: self,
            spec,
            grants,
            init,
            reservation,
        };
        let handle = match (spec.slot, version == V0_2_0) {
            (Slot::Cloud, false) => PluginHandle::Cloud(CloudPlugin(Versioned::V0_1_0(
                parts.pool::<v0_1_0::CloudProvider>(pre).await?,
            ))),
            (Slot::Cloud, true) => PluginHandle::Cloud(CloudPlugin(Versioned::V0_2_0(
                parts.pool::<v0_2_0::CloudProvider>(pre).await?,
            ))),
            (Slot::Network, false) => PluginHandle::Network(NetworkPlugin::new(Versioned::V0_1_0(
                parts.pool::<v0_1_0::NetworkStrategy>(pre).await?,
            ))),
            (Slot::Network, true) => PluginHandle::Network(NetworkPlugin::new(Versioned::V0_2_0(
                parts.pool::<v0_2_0::NetworkStrategy>(pre).await?,
            ))),
            (Slot::Hostport, false) => PluginHandle::Hostport(HostportPlugin(Versioned::V0_1_0(
                parts.pool::<v0_1_0::HostportPolicy>(pre).await?,
            ))),
            (Slot::Hostport, true) => PluginHandle::Hostport(HostportPlugin(Versioned::V0_2_0(
                parts.pool::<v0_2_0::HostportPolicy>(pre).await?,
            ))),
        };
        tracing::info!(
            plugin = %spec.name,
            world = spec.slot.world(),
            %version,
            %sha256,
            cache = compiled.outcome.as_str(),
            "plugin loaded"
        );
        Ok(LoadedPlugin {
            handle,
            version,
            sha256,
            cache: compiled.outcome,
        })
    }

    /// Describe a component without loading it (it is compiled, through the cache).
    pub async fn inspect(&self, component_bytes: &[u8]) -> Result<ComponentInfo, LoadError> {
        const NAME: &str = "(inspected)";
        let sha256 = sha256_hex(component_bytes);
        let compiled = self.compile(NAME, component_bytes, &sha256).await?;
        let (imports, exports) = world::names(&self.engine, &compiled.component);
        let package_version = world::package_version(&exports);
        let (world, loadable) = match world::identify(NAME, imports.clone(), exports.clone()) {
            Ok(identity) => {
                // Judge the contract only: grant every capability the world may import.
                let loadable = world::check(NAME, &identity, identity.slot, |c| {
                    identity.slot.grantable().contains(&c)
                })
                .map(drop);
                (Some(identity.world()), loadable)
            }
            Err(error) => (None, Err(error)),
        };
        Ok(ComponentInfo {
            world,
            package_version,
            loadable,
            imports,
            exports,
            size_bytes: component_bytes.len(),
            sha256,
        })
    }

    async fn compile(
        &self,
        plugin: &str,
        bytes: &[u8],
        sha256: &str,
    ) -> Result<Compiled, LoadError> {
        let (engine, cache) = (self.engine.clone(), self.cache.clone());
        let (bytes, sha) = (bytes.to_vec(), sha256.to_owned());
        let compiled =
            tokio::task::spawn_blocking(move || cache.load_or_compile(&engine, &bytes, &sha))
                .await
                .map_err(|_| LoadError::CompilerThread {
                    plugin: plugin.to_owned(),
                })?
                .map_err(|source| LoadError::Compile {
                    plugin: plugin.to_owned(),
                    source,
                })?;
        self.metrics.record_cache(compiled.outcome);
        Ok(compiled)
    }

    fn check_limits(&self, spec: &PluginSpec) -> Result<(), LoadError> {
        let Limits {
            deadline,
            memory_bytes,
            max_instances,
        } = spec.limits;
        let invalid = |field, reason: String| LoadError::Limits {
            plugin: spec.name.clone(),
            field,
            reason,
        };
        if deadline < self.settings.epoch_tick {
            return Err(invalid(
                "deadline",
                format!(
                    "{deadline:?} is shorter than the engine's epoch tick of {:?}",
                    self.settings.epoch_tick
                ),
            ));
        }
        if !(MIN_MEMORY_BYTES..=self.settings.max_memory_bytes).contains(&memory_bytes) {
            return Err(invalid(
                "memory-bytes",
                format!(
                    "{memory_bytes} is not between {MIN_MEMORY_BYTES} and the engine's max-memory-bytes of {}",
                    self.settings.max_memory_bytes
                ),
            ));
        }
        if max_instances == 0 {
            return Err(invalid("max-instances", "must be at least 1".into()));
        }
        Ok(())
    }

    fn reserve(&self, spec: &PluginSpec) -> Result<Reservation, LoadError> {
        let requested = spec.limits.max_instances;
        let mut reserved = self
            .capacity
            .reserved
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let available = self.capacity.total - *reserved;
        if requested > available {
            return Err(LoadError::Capacity {
                plugin: spec.name.clone(),
                requested,
                available,
                total: self.capacity.total,
            });
        }
        *reserved += requested;
        Ok(Reservation {
            capacity: self.capacity.clone(),
            count: requested,
        })
    }
}

/// What every pool is built from, whatever its world.
struct Parts<'a> {
    runtime: &'a PluginRuntime,
    spec: &'a PluginSpec,
    grants: Grants,
    init: InitContext,
    reservation: Reservation,
}

impl Parts<'_> {
    async fn pool<G: Guest>(
        self,
        pre: wasmtime::component::InstancePre<HostState>,
    ) -> Result<Arc<Pool<G>>, LoadError> {
        let Parts {
            runtime,
            spec,
            grants,
            init,
            reservation,
        } = self;
        let pre = G::pre(pre).map_err(|source| LoadError::Link {
            plugin: spec.name.clone(),
            world: spec.slot.world(),
            source,
        })?;
        let functions: Vec<&'static str> = [INSTANTIATE, INIT]
            .into_iter()
            .chain(G::FUNCTIONS.iter().copied())
            .collect();
        let pool = Arc::new(Pool::new(PoolParts {
            plugin: Arc::from(spec.name.as_str()),
            slot: spec.slot,
            engine: runtime.engine.clone(),
            pre,
            grants,
            limits: spec.limits,
            init,
            series: runtime
                .metrics
                .for_plugin(&spec.name, spec.slot, &functions),
            grace: grace(runtime.settings.epoch_tick),
            reservation,
        }));
        pool.warm_up().await.map_err(|source| LoadError::Init {
            plugin: spec.name.clone(),
            source: Box::new(source),
        })?;
        Ok(pool)
    }
}

/// Slack of the host-side timeout over the deadline: long enough for the epoch callback
/// (at most one tick late, plus a yield) to fail a computing guest first.
fn grace(epoch_tick: Duration) -> Duration {
    epoch_tick * 4 + Duration::from_millis(50)
}

//! The plugin runtime: one wasmtime engine, components compiled once and cached, one
//! `InstancePre` per plugin, per-call deadlines and memory caps, capability linking and
//! validation of everything a plugin returns.
//!
//! The rest of the host uses [`PluginRuntime::load`] and the typed handles it returns
//! ([`CloudPlugin`], [`NetworkPlugin`], [`HostportPlugin`]), and the WIT types re-exported
//! from [`bindings`] (the host's model of pods, plans and cells, whichever contract a
//! plugin was built for).

mod adapt;
pub mod bindings;
pub mod cache;
pub mod capabilities;
pub mod engine;
pub mod handle;
pub mod instance;
pub mod metrics;
mod pool;
pub mod resources;
pub mod runtime;
pub mod source;
pub mod spec;
pub mod validate;
pub mod wasi;
pub mod world;

pub use capabilities::Providers;
pub use engine::EngineSettings;
pub use handle::{
    CallError, CloudPlugin, HostportPlugin, NetworkPlugin, NodePlan, PluginHandle, RoutesPlan,
};
pub use metrics::{CacheOutcome, ErrorKind, PluginMetrics};
pub use runtime::{
    ComponentInfo, LoadError, LoadedPlugin, PluginRuntime, RuntimeConfig, RuntimeError,
};
pub use spec::{Capability, Limits, PluginSpec, Slot};

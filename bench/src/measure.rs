//! The measurements of one plugin, all through the host runtime's public API.
//!
//! # Expected flow
//!
//! 1. load the component once (into the run's empty cache, so it is compiled) and check
//!    that every measured function decides as the native call does;
//! 2. per function: **warm call** (the handle reuses its one warm instance), **fresh
//!    instance + call** (the warm instance is discarded first, so the call instantiates,
//!    runs `init` with the config, then calls — the path a call takes after a trap), and
//!    the **native** baseline of both: the trait method on a value built once, and `init`
//!    followed by the method;
//! 3. the linear memory of the warm instance, from the runtime's own gauge;
//! 4. **load** as `PluginRuntime::load` does it (world check, linking, `InstancePre`, first
//!    instance and its `init`): cold, after the cache entry is removed, so Cranelift
//!    compiles; cached, from the entry the previous load wrote; and, to split the cached
//!    figure, the cache lookup and deserialization alone.
//!
//! Every timed region is one call as the host makes it; outputs are dropped outside it.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use cellet::plugins::cache::CacheError;
use cellet::plugins::{
    CacheOutcome, Capability, Limits, LoadError, LoadedPlugin, PluginHandle, PluginRuntime,
    PluginSpec,
};
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::inputs::Inputs;
use crate::plugins::{CallFailure, Decision, Function, Native, Plugin, Wasm};
use crate::stats::{Samples, Summary};

/// Iterations of each measure. Warm-up iterations run before the timed ones and are not
/// recorded.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Iterations {
    pub warmup: usize,
    pub warm: usize,
    pub fresh: usize,
    pub native: usize,
    pub cold_loads: usize,
    pub cached_loads: usize,
}

impl Iterations {
    /// Enough samples for a stable p99 of the call measures (the 1 % tail of 2 000 fresh
    /// instances is 20 samples); cold loads are few because each compiles with Cranelift.
    pub const FULL: Iterations = Iterations {
        warmup: 1_000,
        warm: 20_000,
        fresh: 2_000,
        native: 20_000,
        cold_loads: 5,
        cached_loads: 100,
    };

    /// `--quick`: every measure runs, a handful of times; the numbers mean nothing.
    pub const QUICK: Iterations = Iterations {
        warmup: 2,
        warm: 20,
        fresh: 5,
        native: 20,
        cold_loads: 1,
        cached_loads: 2,
    };
}

/// Why a plugin could not be measured. Each variant names the plugin.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(
        "failed to read the component of plugin `{plugin}` at {}: {source} (build it with scripts/build-plugins, or point --plugin-dir at the built components)",
        path.display()
    )]
    ReadComponent {
        plugin: Plugin,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to load plugin `{plugin}`: {source}")]
    Load {
        plugin: Plugin,
        #[source]
        source: LoadError,
    },
    #[error("failed to benchmark plugin `{plugin}`: {source}")]
    Call {
        plugin: Plugin,
        #[source]
        source: CallFailure,
    },
    /// The component and the crate it was built from disagree: measuring them against
    /// each other would compare two different computations.
    #[error(
        "failed to benchmark `{function}` of plugin `{plugin}`: the component decides `{wasm}` but the native call decides `{native}`"
    )]
    Mismatch {
        plugin: Plugin,
        function: &'static str,
        wasm: Decision,
        native: Decision,
    },
    #[error(
        "failed to benchmark the loading of plugin `{plugin}`: expected a cache {expected}, the runtime reported a {got}"
    )]
    CacheOutcome {
        plugin: Plugin,
        expected: &'static str,
        got: &'static str,
    },
    #[error("failed to remove the cache entry {} of plugin `{plugin}` before a cold load: {source}", path.display())]
    Uncache {
        plugin: Plugin,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read the compiled component of plugin `{plugin}` from the cache: {source}")]
    CacheRead {
        plugin: Plugin,
        #[source]
        source: CacheError,
    },
    #[error(
        "failed to benchmark fresh instances of plugin `{plugin}`: {discarded} warm instances to discard, expected 1"
    )]
    NotOneWarmInstance { plugin: Plugin, discarded: usize },
    #[error("failed to read `{series}` of plugin `{plugin}` from the runtime's metrics")]
    Metric { plugin: Plugin, series: String },
    #[error("failed to benchmark plugin `{plugin}`: `{measure}` ran no iteration")]
    NoIterations {
        plugin: Plugin,
        measure: &'static str,
    },
}

/// Everything measured for one plugin.
#[derive(Debug, Serialize)]
pub struct PluginReport {
    pub plugin: &'static str,
    pub world: &'static str,
    pub component_bytes: u64,
    /// Size of the cache entry: the component compiled to native code.
    pub compiled_bytes: u64,
    /// Linear memory of one warm instance after the measured calls.
    pub instance_memory_bytes: u64,
    pub functions: Vec<FunctionReport>,
    pub load_cold: Summary,
    pub load_cached: Summary,
    /// Of `load_cached`: the cache lookup and the deserialization of the compiled code.
    pub cache_read: Summary,
}

/// The measures of one function.
#[derive(Debug, Serialize)]
pub struct FunctionReport {
    pub function: Function,
    pub input: &'static str,
    /// What both ways of calling decided (they are checked to agree).
    pub decision: Decision,
    pub warm: Summary,
    pub fresh: Summary,
    pub native_warm: Summary,
    pub native_fresh: Summary,
}

/// Measures plugins on one runtime, whose cache directory starts empty.
pub struct Bench<'a> {
    pub runtime: &'a PluginRuntime,
    pub inputs: &'a Inputs,
    pub iterations: Iterations,
    /// Where `<crate_name>.wasm` components are.
    pub plugin_dir: PathBuf,
}

impl Bench<'_> {
    /// Run every measure of `plugin` (see the module docs).
    pub async fn plugin(&self, plugin: Plugin) -> Result<PluginReport, BenchError> {
        let path = self.plugin_dir.join(plugin.component_file());
        let bytes = std::fs::read(&path).map_err(|source| BenchError::ReadComponent {
            plugin,
            path: path.clone(),
            source,
        })?;
        let spec = spec(plugin);

        let first = self.load(plugin, &spec, &bytes).await?;
        let entry = self.runtime.cache().entry_path(&first.sha256);
        let compiled_bytes = std::fs::metadata(&entry).map(|m| m.len()).unwrap_or(0);
        let handle = first.handle.clone();
        let wasm = Wasm::new(first.handle);
        tracing::info!(%plugin, component_bytes = bytes.len(), compiled_bytes, "measuring calls");

        let mut functions = Vec::new();
        for &function in plugin.functions() {
            functions.push(self.function(plugin, &handle, &wasm, function).await?);
        }
        let instance_memory_bytes = self.instance_memory(plugin)?;

        tracing::info!(%plugin, "measuring loads");
        let load_cold = self.loads(plugin, &spec, &bytes, Some(&entry)).await?;
        let load_cached = self.loads(plugin, &spec, &bytes, None).await?;
        let cache_read = self.cache_reads(plugin, &bytes, &first.sha256)?;

        Ok(PluginReport {
            plugin: plugin.name(),
            world: plugin.slot().world(),
            component_bytes: bytes.len() as u64,
            compiled_bytes,
            instance_memory_bytes,
            functions,
            load_cold,
            load_cached,
            cache_read,
        })
    }

    async fn function(
        &self,
        plugin: Plugin,
        handle: &PluginHandle,
        wasm: &Wasm,
        function: Function,
    ) -> Result<FunctionReport, BenchError> {
        let (host, native_inputs) = (&self.inputs.host, &self.inputs.native);
        let call_failed = |source| BenchError::Call { plugin, source };
        let it = self.iterations;

        let mut native = Native::init(plugin, context(plugin)).map_err(call_failed)?;
        let native_decision = native
            .call(function, native_inputs)
            .map_err(call_failed)?
            .decision();
        let wasm_decision = wasm
            .call(function, host)
            .await
            .map_err(call_failed)?
            .decision();
        if wasm_decision != native_decision {
            return Err(BenchError::Mismatch {
                plugin,
                function: function.name(),
                wasm: wasm_decision,
                native: native_decision,
            });
        }

        for _ in 0..it.warmup {
            black_box(wasm.call(function, host).await.map_err(call_failed)?);
        }
        let mut warm = Samples::with_capacity(it.warm);
        for _ in 0..it.warm {
            let started = Instant::now();
            let output = wasm.call(function, host).await;
            warm.record(started.elapsed());
            black_box(output.map_err(call_failed)?);
        }

        let mut fresh = Samples::with_capacity(it.fresh);
        for _ in 0..it.fresh {
            let discarded = handle.discard_idle_instances();
            if discarded != 1 {
                return Err(BenchError::NotOneWarmInstance { plugin, discarded });
            }
            let started = Instant::now();
            let output = wasm.call(function, host).await;
            fresh.record(started.elapsed());
            black_box(output.map_err(call_failed)?);
        }

        for _ in 0..it.warmup {
            black_box(native.call(function, native_inputs).map_err(call_failed)?);
        }
        let mut native_warm = Samples::with_capacity(it.native);
        for _ in 0..it.native {
            let started = Instant::now();
            let output = native.call(function, native_inputs);
            native_warm.record(started.elapsed());
            black_box(output.map_err(call_failed)?);
        }

        let mut native_fresh = Samples::with_capacity(it.native);
        for _ in 0..it.native {
            let ctx = context(plugin);
            let started = Instant::now();
            let output =
                Native::init(plugin, ctx).and_then(|mut n| n.call(function, native_inputs));
            native_fresh.record(started.elapsed());
            black_box(output.map_err(call_failed)?);
        }

        let summary = |samples: Samples, measure| {
            samples
                .summarize()
                .ok_or(BenchError::NoIterations { plugin, measure })
        };
        Ok(FunctionReport {
            function,
            input: function.input(),
            decision: wasm_decision,
            warm: summary(warm, "warm call")?,
            fresh: summary(fresh, "fresh instance + call")?,
            native_warm: summary(native_warm, "native call")?,
            native_fresh: summary(native_fresh, "native init + call")?,
        })
    }

    /// Time `load` repeatedly. `uncache`: the cache entry to remove before each load, so
    /// every load compiles; `None`: every load must be served by the cache.
    async fn loads(
        &self,
        plugin: Plugin,
        spec: &PluginSpec,
        bytes: &[u8],
        uncache: Option<&PathBuf>,
    ) -> Result<Summary, BenchError> {
        let (count, expected, measure) = match uncache {
            Some(_) => (self.iterations.cold_loads, CacheOutcome::Miss, "cold load"),
            None => (
                self.iterations.cached_loads,
                CacheOutcome::Hit,
                "cached load",
            ),
        };
        let mut samples = Samples::with_capacity(count);
        for _ in 0..count {
            if let Some(entry) = uncache {
                std::fs::remove_file(entry).map_err(|source| BenchError::Uncache {
                    plugin,
                    path: entry.clone(),
                    source,
                })?;
            }
            let started = Instant::now();
            let loaded = self.load(plugin, spec, bytes).await;
            samples.record(started.elapsed());
            let loaded = loaded?;
            if loaded.cache != expected {
                return Err(BenchError::CacheOutcome {
                    plugin,
                    expected: expected.as_str(),
                    got: loaded.cache.as_str(),
                });
            }
        }
        samples
            .summarize()
            .ok_or(BenchError::NoIterations { plugin, measure })
    }

    /// Time the cache's part of a cached load: look the entry up, check it and
    /// deserialize it.
    fn cache_reads(
        &self,
        plugin: Plugin,
        bytes: &[u8],
        sha256: &str,
    ) -> Result<Summary, BenchError> {
        let (engine, cache) = (self.runtime.engine(), self.runtime.cache());
        let mut samples = Samples::with_capacity(self.iterations.cached_loads);
        for _ in 0..self.iterations.cached_loads {
            let started = Instant::now();
            let compiled = cache.load_or_compile(engine, bytes, sha256);
            samples.record(started.elapsed());
            let compiled = compiled.map_err(|source| BenchError::CacheRead { plugin, source })?;
            if compiled.outcome != CacheOutcome::Hit {
                return Err(BenchError::CacheOutcome {
                    plugin,
                    expected: CacheOutcome::Hit.as_str(),
                    got: compiled.outcome.as_str(),
                });
            }
        }
        samples.summarize().ok_or(BenchError::NoIterations {
            plugin,
            measure: "cache read",
        })
    }

    async fn load(
        &self,
        plugin: Plugin,
        spec: &PluginSpec,
        bytes: &[u8],
    ) -> Result<LoadedPlugin, BenchError> {
        self.runtime
            .load(spec, bytes)
            .await
            .map_err(|source| BenchError::Load { plugin, source })
    }

    /// The plugin's `cellet_plugin_instance_memory_bytes`: the linear memory of its live
    /// instances, here exactly one warm instance.
    fn instance_memory(&self, plugin: Plugin) -> Result<u64, BenchError> {
        let mut registry = Registry::default();
        self.runtime.metrics().register(&mut registry);
        let mut text = String::new();
        let series = format!(
            "cellet_plugin_instance_memory_bytes{{plugin=\"{}\",slot=\"{}\"}}",
            plugin.name(),
            plugin.slot().config_key()
        );
        let missing = || BenchError::Metric {
            plugin,
            series: series.clone(),
        };
        encode(&mut text, &registry).map_err(|_| missing())?;
        text.lines()
            .find_map(|line| line.strip_prefix(series.as_str())?.trim().parse().ok())
            .ok_or_else(missing)
    }
}

/// The slot's defaults: the limits and grants a config that names only `source:` gets.
fn spec(plugin: Plugin) -> PluginSpec {
    PluginSpec {
        name: plugin.name().to_string(),
        slot: plugin.slot(),
        limits: Limits::default_for(plugin.slot()),
        grants: vec![Capability::Log],
        config: plugin.config(),
    }
}

/// The context the runtime hands to `init` (same config; node and controller names do
/// not change what these plugins decide).
fn context(plugin: Plugin) -> cellet_sdk::InitContext {
    cellet_sdk::testing::context(plugin.config())
}

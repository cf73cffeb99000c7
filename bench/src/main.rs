//! `plugin-bench`: the shipped plugins as WebAssembly components through cellet's plugin
//! runtime, against the same plugin crates called natively, in one run.
//!
//! ```sh
//! scripts/build-plugins
//! cargo run --release -p cellet-bench --bin plugin-bench            # Markdown tables
//! cargo run --release -p cellet-bench --bin plugin-bench -- --json  # JSON
//! cargo run --release -p cellet-bench --bin plugin-bench -- --quick --plugin mock
//! ```
//!
//! Measures per plugin: warm call, fresh instance + call, cold and cached load, p50 and
//! p99 of each, the native baseline and the ratio, and the instance's memory (see
//! `measure`). The exit status is 0 whether or not the speed targets are met: targets are
//! reported, not enforced, so `--quick` can run in the test suite on a busy machine.

mod inputs;
mod machine;
mod measure;
mod plugins;
mod report;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;

use cellet::plugins::{EngineSettings, PluginRuntime, RuntimeConfig, RuntimeError};
use clap::Parser;

use crate::inputs::Inputs;
use crate::machine::Machine;
use crate::measure::{Bench, BenchError, Iterations};
use crate::plugins::Plugin;
use crate::report::RunReport;

#[derive(Debug, Parser)]
#[command(about = "Benchmark cellet's shipped plugins: WebAssembly against native")]
struct Args {
    /// Print the results as JSON instead of Markdown.
    #[arg(long)]
    json: bool,
    /// A few iterations of every measure: checks that the benchmark runs, measures nothing.
    #[arg(long)]
    quick: bool,
    /// Only these plugins (repeatable); all shipped plugins by default.
    #[arg(long = "plugin", value_enum)]
    plugins: Vec<Plugin>,
    /// Directory of the built components [default: $CELLET_PLUGIN_DIR, else
    /// target/wasm32-wasip2/release-plugins of the workspace].
    #[arg(long)]
    plugin_dir: Option<PathBuf>,
}

/// Failures outside the measures themselves.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("failed to create the component cache directory: {0}")]
    CacheDir(#[source] std::io::Error),
    #[error("failed to start the async runtime: {0}")]
    Tokio(#[source] std::io::Error),
    #[error("failed to create the plugin runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Bench(#[from] BenchError),
    #[error("failed to write the report as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,plugin_bench=info")),
        )
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(output) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("plugin-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<String, RunError> {
    let machine = Machine::detect();
    let iterations = if args.quick {
        Iterations::QUICK
    } else {
        Iterations::FULL
    };
    let plugins = if args.plugins.is_empty() {
        Plugin::ALL.to_vec()
    } else {
        args.plugins
    };
    let plugin_dir = args.plugin_dir.unwrap_or_else(default_plugin_dir);

    // A fresh cache directory, so the first load of each plugin really compiles.
    let cache = tempfile::tempdir().map_err(RunError::CacheDir)?;
    // One thread: the host drives calls from tokio tasks, and a single-threaded runtime
    // keeps the scheduler's own work out of the samples. Cranelift still compiles on
    // every core from its blocking thread.
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(RunError::Tokio)?;
    let reports = tokio.block_on(async {
        let runtime = PluginRuntime::new(RuntimeConfig {
            engine: EngineSettings::default(),
            cache_dir: cache.path().join("components"),
            node_name: cellet_sdk::testing::NODE_NAME.to_string(),
            controller_id: cellet_sdk::testing::CONTROLLER_ID.to_string(),
        })?;
        let inputs = Inputs::realistic();
        let bench = Bench {
            runtime: &runtime,
            inputs: &inputs,
            iterations,
            plugin_dir,
        };
        let mut reports = Vec::new();
        for plugin in plugins {
            reports.push(bench.plugin(plugin).await?);
        }
        Ok::<_, RunError>(reports)
    })?;

    let report = RunReport::new(machine, iterations, reports);
    if !report.all_targets_met() {
        tracing::warn!("some speed targets were missed; see the report");
    }
    Ok(if args.json {
        serde_json::to_string_pretty(&report)?
    } else {
        report.markdown()
    })
}

fn default_plugin_dir() -> PathBuf {
    std::env::var_os("CELLET_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/wasm32-wasip2/release-plugins")
        })
}

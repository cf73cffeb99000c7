//! `node-bench`: cellet against virtual-kubelet as node agents, on one real control plane.
//!
//! ```sh
//! scripts/build-plugins && cargo build --release -p cellet --bin cellet
//! cargo run --release -p cellet-bench --bin node-bench             # 1,000 pods each, then cellet at 10,000
//! cargo run --release -p cellet-bench --bin node-bench -- --quick  # 50 pods each, no 10,000 run
//! ```
//!
//! The control plane (`tests/cluster/cluster.sh up`) starts once. Then each node agent in
//! turn, alone: start it, wait for its Node to be Ready, create N pods bound to it, wait for
//! all of them Running, read its `/proc` counters, stop it, delete its pods, namespace and
//! Node. Then cellet alone at the scale size. See `pods` for what is timed and how, and
//! `node` for how each agent runs. `vk-mock` is built from `bench/vk-mock` (Go, cached in
//! `~/.cache/cellet`). Targets (cellet ≥ 2× virtual-kubelet's throughput, ≤ ⅓ of its peak
//! RSS, lower p99) are reported, not enforced: the exit status is 0 whether or not they are
//! met, so `--quick` runs in the test suite.

#[path = "../../machine.rs"]
mod machine;
#[path = "../../stats.rs"]
mod stats;

mod cluster;
mod node;
mod pods;
mod report;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use clap::Parser;

use crate::cluster::Cluster;
use crate::machine::Machine;
use crate::node::{Binaries, Kind, NodeProcess};
use crate::report::{NodeRun, Report};

#[derive(Debug, Parser)]
#[command(
    about = "cellet against virtual-kubelet: N pods bound to each node, on a real control plane"
)]
struct Args {
    /// Pods bound to each node.
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    /// Pods of the cellet-alone run after the comparison (0: no such run).
    #[arg(long, default_value_t = 10_000)]
    scale_pods: usize,
    /// Smoke run: 50 pods each, no scale run.
    #[arg(long)]
    quick: bool,
    /// The nodes to compare, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "cellet,vk-mock,vk-mock-unthrottled"
    )]
    nodes: Vec<Kind>,
    /// Pod creates in flight at once.
    #[arg(long, default_value_t = 16)]
    create_concurrency: usize,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
    /// The cellet binary (default: `cellet` beside this binary, i.e. the same target dir and profile).
    #[arg(long)]
    cellet: Option<PathBuf>,
    /// Where the plugin components are (default: CELLET_PLUGIN_DIR, else the workspace's build output).
    #[arg(long)]
    plugin_dir: Option<PathBuf>,
    /// Print the report as JSON instead of Markdown.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("failed to {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("missing {0}")]
    Missing(String),
    #[error("control plane: {0}")]
    Cluster(String),
    #[error("failed to {what}: {source}")]
    Kube {
        what: &'static str,
        source: kube::Error,
    },
    #[error("node {node} exited ({status}); last lines of its log:\n{tail}")]
    NodeExited {
        node: String,
        status: String,
        tail: String,
    },
    #[error("/proc: {0}")]
    Proc(String),
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error("failed to write the report as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl BenchError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> BenchError {
        BenchError::Io {
            what: what.into(),
            source,
        }
    }

    pub fn kube(what: &'static str) -> impl FnOnce(kube::Error) -> BenchError {
        move |source| BenchError::Kube { what, source }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,node_bench=info")),
        )
        .init();
    let mut args = Args::parse();
    if args.quick {
        args.pods = 50;
        args.scale_pods = 0;
    }
    match run(&args) {
        Ok(report) => {
            let text = if args.json {
                serde_json::to_string_pretty(&report).map_err(BenchError::from)
            } else {
                Ok(report.markdown())
            };
            match text {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("node-bench: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(error) => {
            eprintln!("node-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_path_buf()
}

fn binaries(args: &Args) -> Result<Binaries, BenchError> {
    let exe = std::env::current_exe().map_err(|e| BenchError::io("find this binary", e))?;
    let profile_dir = exe
        .parent()
        .ok_or_else(|| BenchError::Missing("this binary's directory".into()))?;
    let cellet = args
        .cellet
        .clone()
        .unwrap_or_else(|| profile_dir.join("cellet"));
    if !cellet.is_file() {
        return Err(BenchError::Missing(format!(
            "the cellet binary {} (build it with `cargo build --release -p cellet --bin cellet`, \
             or without --release for a debug run of node-bench; or pass --cellet)",
            cellet.display()
        )));
    }
    let plugin_dir = args
        .plugin_dir
        .clone()
        .or_else(|| std::env::var_os("CELLET_PLUGIN_DIR").map(PathBuf::from))
        .unwrap_or_else(|| workspace().join("target/wasm32-wasip2/release-plugins"));
    let component_cache = profile_dir.join("node-bench-component-cache");
    Ok(Binaries {
        cellet,
        vk_mock: build_vk_mock()?,
        plugin_dir,
        component_cache,
    })
}

/// `bench/vk-mock/build.sh`: builds (or finds, cached) the virtual-kubelet peer.
fn build_vk_mock() -> Result<PathBuf, BenchError> {
    let script = workspace().join("bench/vk-mock/build.sh");
    let out = Command::new(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| BenchError::io(format!("run {}", script.display()), e))?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !path.is_file() {
        return Err(BenchError::Missing(format!(
            "vk-mock: {} failed ({})",
            script.display(),
            out.status
        )));
    }
    Ok(path)
}

fn run(args: &Args) -> Result<Report, BenchError> {
    let machine = Machine::detect();
    let binaries = binaries(args)?;
    for file in [
        "cellet_plugin_mock.wasm",
        "cellet_plugin_vpc_native.wasm",
        "cellet_plugin_hostport_nat.wasm",
    ] {
        binaries.plugin(file)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::io("start the async runtime", e))?;
    tracing::info!("starting the control plane (tests/cluster/cluster.sh up)");
    let cluster = Cluster::up(&workspace())?;
    let result = runtime.block_on(measure(args, &binaries, &cluster, machine));
    cluster.down();
    result
}

async fn measure(
    args: &Args,
    binaries: &Binaries,
    cluster: &Cluster,
    machine: Machine,
) -> Result<Report, BenchError> {
    let client = cluster.client().await?;
    let work = tempfile::Builder::new()
        .prefix("cellet-node-bench-nodes.")
        .tempdir()
        .map_err(|e| BenchError::io("create a directory for the nodes' files", e))?;
    let netns = node::NetNamespace::create()?;
    let capacity = args.pods.max(args.scale_pods);
    let mut report = Report::new(machine, args.create_concurrency);
    for &kind in &args.nodes {
        report.nodes.push(
            one_node(
                args,
                binaries,
                cluster,
                &client,
                work.path(),
                &netns.0,
                kind,
                args.pods,
                capacity,
            )
            .await?,
        );
    }
    if args.scale_pods > 0 {
        report.scale = Some(
            one_node(
                args,
                binaries,
                cluster,
                &client,
                work.path(),
                &netns.0,
                Kind::Cellet,
                args.scale_pods,
                capacity,
            )
            .await?,
        );
    }
    report.finish();
    Ok(report)
}

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
async fn one_node(
    args: &Args,
    binaries: &Binaries,
    cluster: &Cluster,
    client: &kube::Client,
    dir: &Path,
    netns: &str,
    kind: Kind,
    count: usize,
    capacity: usize,
) -> Result<NodeRun, BenchError> {
    let node = kind.node_name(count);
    let namespace = node.clone();
    tracing::info!(%node, pods = count, "starting {}", kind.describe());
    pods::create_namespace(client, &namespace).await?;
    let mut process = NodeProcess::start(kind, &node, capacity, binaries, cluster, dir, netns)?;
    let measured = async {
        let ready = pods::wait_node_ready(client, &mut process).await?;
        let mut result = pods::run(
            client,
            &namespace,
            &mut process,
            count,
            args.create_concurrency,
            Duration::from_secs(args.timeout),
        )
        .await?;
        result.ready_after_start_seconds = ready;
        Ok::<_, BenchError>(result)
    }
    .await;
    process.stop(Duration::from_secs(15));
    pods::clean_up(client, &namespace, &node).await?;
    let result = measured?;
    tracing::info!(
        %node,
        "{count} pods Running in {:.1} s ({:.1} pods/s); p99 {:.0} ms; peak RSS {:.1} MiB; {:.2} CPU s",
        result.all_running_seconds,
        result.pods_per_second,
        result.latency.p99_ns as f64 / 1e6,
        result.usage.peak_rss_bytes as f64 / 1048576.0,
        result.cpu_seconds_during_run,
    );
    Ok(NodeRun {
        kind,
        node,
        description: kind.describe().to_string(),
        result,
    })
}

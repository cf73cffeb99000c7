//! `pod-network`: the cell agent's pod network setup and teardown (the library code path of
//! `cellet-agent`, [`PodNet::setup`] and [`PodNet::teardown`]) against the CNI `bridge`
//! plugin's ADD and DEL with `host-local` IPAM (Debian containernetworking-plugins), the
//! two interleaved in one run, N iterations each.
//!
//! ```sh
//! scripts/install-deps                                       # nft, containernetworking-plugins
//! cargo build --release -p cellet-bench --bin pod-network
//! target/release/pod-network                                 # as root; --iterations N
//! ```
//!
//! Every namespace of the run is made by it and deleted after: the benchmark enters a mount
//! namespace of its own (as the agent does), so the namespaces' files live on mounts nobody
//! else sees and vanish with the process. Contestants:
//!
//! - **cellet**: a "cell" namespace with a management interface (`eth0`, 10.251.0.2/24, one
//!   end of a veth pair whose other end stays in the cell) stands for the instance, prepared
//!   once as the agent prepares it when it starts (`netns::prepare_cell`: forwarding, proxy
//!   ARP, the nftables table that keeps pods off the agent; timed and shown apart). Each
//!   iteration, for a new pod UID, `PodNet::setup` makes the pod namespace, the routed veth
//!   pair (pod side in the pod namespace), the pod address, the gateway address and routes
//!   on both sides, the pod's SNAT rules (no-masquerade CIDRs as the shipped strategies
//!   plan them) and the pod's `hosts` and `resolv.conf`; `PodNet::teardown` removes all of
//!   it.
//! - **CNI**: a "node" namespace holds the bridge (`cni-bench0`, made by the first ADD, as
//!   on a node). Each iteration makes the pod namespace the way a container runtime does
//!   (unshare in a thread, bind-mount the namespace file — the same code as the agent's),
//!   then runs `/usr/lib/cni/bridge` with `CNI_COMMAND=ADD` (veth pair attached to the
//!   bridge, a `host-local` address from 10.252.0.0/16, the gateway address on the bridge,
//!   the default route), as a runtime runs it: one process, config on stdin, environment;
//!   DEL then releases the address and removes the veth, and the runtime removes the
//!   namespace.
//!
//! The target compares the same work: cellet's setup (namespace included) against the
//! runtime's namespace plus ADD, and teardown against DEL plus the namespace's removal.
//! Timings are wall-clock per iteration, exact order statistics; warm-up iterations (the
//! first makes the bridge) are not counted. Needs root.

#[path = "../machine.rs"]
mod machine;
#[path = "../stats.rs"]
mod stats;

use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use cellet_agent::netns::PodNet;
use cellet_agent::protocol::{DnsOption, PodDns, PodNetwork, PodRoute};
use clap::Parser;
use stats::{Samples, Summary, human};

const CNI_DIR: &str = "/usr/lib/cni";
const MANAGEMENT_IP: &str = "10.251.0.2/24";
const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 11);
const VPC_ROUTER: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 1);
const CNI_SUBNET: &str = "10.252.0.0/16";
const CNI_BRIDGE: &str = "cni-bench0";

#[derive(Debug, Parser)]
#[command(
    about = "Pod network setup and teardown: the cell agent against the CNI bridge plugin's ADD and DEL"
)]
struct Args {
    /// Measured iterations of each contestant.
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// Iterations run first and not counted (the first CNI ADD makes the bridge).
    #[arg(long, default_value_t = 5)]
    warmup: usize,
}

#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error("failed to {action}: {source}")]
    Io {
        action: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Status { command: String, stderr: String },
    #[error("cellet-agent's pod network, iteration {iteration}: {source}")]
    Cellet {
        iteration: usize,
        source: cellet_agent::netns::NetError,
    },
    #[error("the pod namespace of {who} lacks {wanted}: {found}")]
    Missing {
        who: &'static str,
        wanted: String,
        found: String,
    },
}

fn io_error(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let action = action.into();
    move |source| BenchError::Io { action, source }
}

/// Make a network namespace and bind-mount it at `path`, as `ip netns add` and container
/// runtimes do: a thread of its own unshares, the mount keeps the namespace.
fn make_netns(path: &Path) -> Result<(), BenchError> {
    File::create(path).map_err(io_error(format!("create {}", path.display())))?;
    let target = path.to_path_buf();
    std::thread::spawn(move || -> nix::Result<()> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
    })
    .join()
    .expect("the namespace thread does not panic")
    .map_err(|errno| BenchError::Io {
        action: format!("make the namespace {}", path.display()),
        source: errno.into(),
    })
}

fn remove_netns(path: &Path) -> Result<(), BenchError> {
    nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH).map_err(|errno| {
        BenchError::Io {
            action: format!("unmount {}", path.display()),
            source: errno.into(),
        }
    })?;
    std::fs::remove_file(path).map_err(io_error(format!("remove {}", path.display())))
}

/// Move the calling thread into the namespace at `path`; what it spawns from then on (CNI
/// plugins, `nft`, netlink sockets) starts there.
fn enter(path: &Path) -> Result<(), BenchError> {
    let file = File::open(path).map_err(io_error(format!("open {}", path.display())))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|errno| BenchError::Io {
        action: format!("enter {}", path.display()),
        source: errno.into(),
    })
}

/// Run a command, stdin fed, and return its stdout; a failure carries its stderr.
fn run(
    program: &str,
    args: &[&str],
    env: &[(&str, String)],
    stdin: Option<&str>,
) -> Result<String, BenchError> {
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_error(format!(
            "start {program} (run scripts/install-deps as root)"
        )))?;
    if let (Some(mut pipe), Some(input)) = (child.stdin.take(), stdin) {
        // The plugins read all their input before answering; a failed write shows in the status.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(io_error(format!("wait for {program}")))?;
    if !out.status.success() {
        return Err(BenchError::Status {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned()
                + &String::from_utf8_lossy(&out.stdout),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS` inside the namespace at `netns` (untimed wiring and checks).
fn ip_in(netns: &Path, args: &[&str]) -> Result<String, BenchError> {
    let mut full = vec![format!("--net={}", netns.display()), "ip".to_owned()];
    full.extend(args.iter().map(|a| (*a).to_owned()));
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    run("nsenter", &full, &[], None)
}

/// Addresses and routes of the pod namespace, to show both contestants did the work.
fn pod_view(netns: &Path) -> Result<String, BenchError> {
    Ok(ip_in(netns, &["-4", "-o", "address", "show"])? + &ip_in(netns, &["-4", "route", "show"])?)
}

fn expect_in(who: &'static str, view: &str, wanted: &str) -> Result<(), BenchError> {
    if view.contains(wanted) {
        Ok(())
    } else {
        Err(BenchError::Missing {
            who,
            wanted: wanted.to_owned(),
            found: view.to_owned(),
        })
    }
}

/// The namespaces and files of one run; every namespace is unmounted on drop.
struct Run {
    dir: tempfile::TempDir,
    cell: PathBuf,
    node: PathBuf,
}

impl Run {
    fn new() -> Result<Run, BenchError> {
        let dir = tempfile::Builder::new()
            .prefix("cellet-pod-network-")
            .tempdir()
            .map_err(io_error("make a temporary directory"))?;
        let run = Run {
            cell: dir.path().join("cell"),
            node: dir.path().join("cni-node"),
            dir,
        };
        for ns in [&run.cell, &run.node] {
            make_netns(ns)?;
            ip_in(ns, &["link", "set", "lo", "up"])?;
        }
        ip_in(
            &run.cell,
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", "vpc0",
            ],
        )?;
        ip_in(&run.cell, &["address", "add", MANAGEMENT_IP, "dev", "eth0"])?;
        for link in ["eth0", "vpc0"] {
            ip_in(&run.cell, &["link", "set", link, "up"])?;
        }
        Ok(run)
    }

    fn cni_pod(&self, iteration: usize) -> PathBuf {
        self.dir.path().join(format!("cni-pod-{iteration}"))
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        for ns in [&self.cell, &self.node] {
            let _ = remove_netns(ns);
        }
    }
}

/// The CNI network config: bridge with host-local IPAM, the gateway on the bridge, a
/// default route; no masquerade (cellet's pods are not masqueraded either).
fn cni_config(run: &Run) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"cellet-bench","type":"bridge","bridge":"{CNI_BRIDGE}","isGateway":true,"ipMasq":false,
"ipam":{{"type":"host-local","subnet":"{CNI_SUBNET}","dataDir":"{}","routes":[{{"dst":"0.0.0.0/0"}}]}}}}"#,
        run.dir.path().join("ipam").display()
    )
}

/// One CNI command for the pod of `iteration`, run from the node namespace.
fn cni(run: &Run, config: &str, command: &str, iteration: usize) -> Result<Duration, BenchError> {
    let env = [
        ("CNI_COMMAND", command.to_owned()),
        ("CNI_CONTAINERID", format!("cellet-bench-{iteration:05}")),
        ("CNI_NETNS", run.cni_pod(iteration).display().to_string()),
        ("CNI_IFNAME", "eth0".to_owned()),
        ("CNI_PATH", CNI_DIR.to_owned()),
    ];
    enter(&run.node)?;
    let start = Instant::now();
    run_cni(config, &env)?;
    Ok(start.elapsed())
}

fn run_cni(config: &str, env: &[(&str, String)]) -> Result<String, BenchError> {
    run(&format!("{CNI_DIR}/bridge"), &[], env, Some(config))
}

fn pod_network() -> PodNetwork {
    PodNetwork {
        pod_ip: Some(POD_IP),
        prefix_len: 32,
        routes: vec![PodRoute {
            destination: "0.0.0.0/0".into(),
            via: Some(VPC_ROUTER),
        }],
        mtu: None,
        // As the shipped strategies plan it (VPC, then cluster CIDRs): the setup includes
        // the pod's SNAT rules.
        no_masquerade: vec![
            "10.251.0.0/16".into(),
            "10.96.0.0/12".into(),
            "10.244.0.0/16".into(),
        ],
        dns: Some(PodDns {
            nameservers: vec![Ipv4Addr::new(10, 96, 0, 10).into()],
            searches: vec!["default.svc.cluster.local".into()],
            options: vec![DnsOption {
                name: "ndots".into(),
                value: Some("5".into()),
            }],
        }),
        hostname: "bench".into(),
        fqdn: None,
    }
}

/// What one iteration of each contestant took.
struct Timings {
    cellet_setup: Samples,
    cellet_teardown: Samples,
    cni_netns: Samples,
    cni_add: Samples,
    cni_setup: Samples,
    cni_del: Samples,
    cni_teardown: Samples,
}

impl Timings {
    fn new(iterations: usize) -> Timings {
        let samples = || Samples::with_capacity(iterations);
        Timings {
            cellet_setup: samples(),
            cellet_teardown: samples(),
            cni_netns: samples(),
            cni_add: samples(),
            cni_setup: samples(),
            cni_del: samples(),
            cni_teardown: samples(),
        }
    }
}

struct Bench {
    run: Run,
    config: String,
    network: PodNetwork,
    runtime: tokio::runtime::Runtime,
}

impl Bench {
    fn cellet(&self, iteration: usize, timings: Option<&mut Timings>) -> Result<(), BenchError> {
        let state = self.run.dir.path().join("agent");
        let pod = PodNet::new(&format!("bench-{iteration:05}"), "eth0", &state);
        let failed = |source| BenchError::Cellet { iteration, source };
        enter(&self.run.cell)?;
        let start = Instant::now();
        let sandbox = self
            .runtime
            .block_on(pod.setup(&self.network, &[]))
            .map_err(failed)?;
        let setup = start.elapsed();
        if timings.is_none() {
            // The table written over netlink reads back as the agent's rules.
            let table = run("nft", &["list", "table", "inet", "cellet_agent"], &[], None)?;
            eprintln!("cellet table:\n{table}");
            for rule in [
                "type filter hook input priority filter; policy accept;",
                "iifname \"pod-veth\" ct state established,related accept",
                "iifname \"pod-veth\" counter packets 0 bytes 0 drop comment \"the pod must not reach the cell or its agent\"",
                "ip saddr 10.251.0.11 ip daddr 10.96.0.0/12 return",
                "ip saddr 10.251.0.11 oifname \"eth0\" snat ip to 10.251.0.2",
            ] {
                expect_in("cellet", &table, rule)?;
            }
            let view = pod_view(&pod.netns_path())?;
            eprintln!("cellet pod namespace:\n{view}");
            expect_in("cellet", &view, &format!("inet {POD_IP}/32"))?;
            expect_in("cellet", &view, "default via 169.254.1.1")?;
            assert_eq!(sandbox.netns.as_deref(), Some(pod.netns_path().as_path()));
        }
        let start = Instant::now();
        self.runtime.block_on(pod.teardown()).map_err(failed)?;
        let teardown = start.elapsed();
        if let Some(timings) = timings {
            timings.cellet_setup.record(setup);
            timings.cellet_teardown.record(teardown);
        }
        Ok(())
    }

    fn cni(&self, iteration: usize, timings: Option<&mut Timings>) -> Result<(), BenchError> {
        let netns = self.run.cni_pod(iteration);
        let start = Instant::now();
        make_netns(&netns)?;
        let made = start.elapsed();
        let add = cni(&self.run, &self.config, "ADD", iteration)?;
        if timings.is_none() {
            let view = pod_view(&netns)?;
            eprintln!("CNI bridge pod namespace:\n{view}");
            expect_in("CNI bridge", &view, "inet 10.252.")?;
            expect_in("CNI bridge", &view, "default via 10.252.0.1")?;
        }
        let del = cni(&self.run, &self.config, "DEL", iteration)?;
        let start = Instant::now();
        remove_netns(&netns)?;
        let removed = start.elapsed();
        if let Some(timings) = timings {
            timings.cni_netns.record(made);
            timings.cni_add.record(add);
            timings.cni_setup.record(made + add);
            timings.cni_del.record(del);
            timings.cni_teardown.record(del + removed);
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pod-network: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: &Args) -> Result<(), BenchError> {
    let machine = machine::Machine::detect();
    // Before any thread exists (unshare(CLONE_NEWNS) refuses a multi-threaded process): the
    // namespaces of the run, and the agent's /run/netns, stay on mounts of this process.
    cellet_agent::netns::enter_private_mount_namespace().map_err(|source| BenchError::Cellet {
        iteration: 0,
        source,
    })?;
    // The agent's own runtime flavour does not matter here: every call is awaited in turn.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_error("start the async runtime"))?;
    let run = Run::new()?;
    // The cell as the agent prepares it when it starts, once, before any pod.
    enter(&run.cell)?;
    let start = Instant::now();
    cellet_agent::netns::prepare_cell("eth0").map_err(|source| BenchError::Cellet {
        iteration: 0,
        source,
    })?;
    let prepare_cell = start.elapsed();
    let bench = Bench {
        config: cni_config(&run),
        network: pod_network(),
        run,
        runtime,
    };
    eprintln!(
        "pod-network: {} warm-up and {} measured iterations of each contestant, interleaved",
        args.warmup, args.iterations
    );
    // The first warm-up iteration checks what each contestant built (untimed).
    for iteration in 0..args.warmup.max(1) {
        bench.cellet(iteration, None)?;
        bench.cni(iteration, None)?;
    }
    let mut timings = Timings::new(args.iterations);
    for i in 0..args.iterations {
        let iteration = args.warmup.max(1) + i;
        // Alternate who goes first, so neither always runs right after the other's work.
        if i % 2 == 0 {
            bench.cellet(iteration, Some(&mut timings))?;
            bench.cni(iteration, Some(&mut timings))?;
        } else {
            bench.cni(iteration, Some(&mut timings))?;
            bench.cellet(iteration, Some(&mut timings))?;
        }
        if (i + 1) % 50 == 0 {
            eprintln!("  {}/{}", i + 1, args.iterations);
        }
    }
    report(
        args,
        &machine,
        &machine::Machine::load_average_now(),
        prepare_cell,
        timings,
    );
    Ok(())
}

fn report(
    args: &Args,
    machine: &machine::Machine,
    load_end: &str,
    prepare_cell: Duration,
    timings: Timings,
) {
    let summary = |samples: Samples| samples.summarize().expect("at least one iteration");
    let cellet_setup = summary(timings.cellet_setup);
    let cni_setup = summary(timings.cni_setup);
    let cellet_teardown = summary(timings.cellet_teardown);
    let cni_teardown = summary(timings.cni_teardown);
    let cni_add = summary(timings.cni_add);
    let cni_del = summary(timings.cni_del);
    println!("{}", machine.summary(load_end));
    println!();
    println!(
        "| {} iterations each, interleaved | p50 | p99 | min | max | mean |",
        args.iterations
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let row = |name: &str, s: &Summary| {
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            human(s.p50_ns),
            human(s.p99_ns),
            human(s.min_ns),
            human(s.max_ns),
            human(s.mean_ns)
        );
    };
    row("cellet-agent setup (`PodNet::setup`)", &cellet_setup);
    row("CNI: pod netns + bridge ADD", &cni_setup);
    row("  of which bridge ADD", &cni_add);
    row("  of which the netns", &summary(timings.cni_netns));
    row(
        "cellet-agent teardown (`PodNet::teardown`)",
        &cellet_teardown,
    );
    row("CNI: bridge DEL + netns removal", &cni_teardown);
    row("  of which bridge DEL", &cni_del);
    println!();
    println!(
        "Once per cell, when the agent starts (`netns::prepare_cell`, not in the setup above): {}.",
        human(u64::try_from(prepare_cell.as_nanos()).unwrap_or(u64::MAX))
    );
    println!();
    let ratio = |peer: u64, ours: u64| peer as f64 / ours as f64;
    let verdict = |x: f64| if x >= 5.0 { "pass" } else { "FAIL" };
    for (what, ours, peer) in [
        ("setup", &cellet_setup, &cni_setup),
        ("teardown", &cellet_teardown, &cni_teardown),
    ] {
        let p50 = ratio(peer.p50_ns, ours.p50_ns);
        let p99 = ratio(peer.p99_ns, ours.p99_ns);
        println!(
            "- {what}: cellet ×{p50:.1} faster at p50 ({}), ×{p99:.1} at p99 ({}) (target ≥ 5×)",
            verdict(p50),
            verdict(p99)
        );
    }
    println!(
        "- against the bridge ADD alone (without the namespace): ×{:.1} at p50, ×{:.1} at p99",
        ratio(cni_add.p50_ns, cellet_setup.p50_ns),
        ratio(cni_add.p99_ns, cellet_setup.p99_ns)
    );
}

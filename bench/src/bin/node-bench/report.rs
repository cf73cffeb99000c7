//! The report: one row per node, the ratios of cellet to each virtual-kubelet run with the
//! targets, and the cellet-alone scale run.

use std::fmt::Write;

use serde::Serialize;

use crate::machine::Machine;
use crate::node::Kind;
use crate::pods::RunResult;
use crate::stats::human;

/// The Kubernetes release of tests/cluster.
const KUBERNETES: &str = "v1.37.2";

#[derive(Debug, Serialize)]
pub struct NodeRun {
    pub kind: Kind,
    pub node: String,
    pub description: String,
    pub result: RunResult,
}

/// cellet against one virtual-kubelet run.
#[derive(Debug, Serialize)]
pub struct Comparison {
    pub against: Kind,
    /// cellet's pods/s over the peer's.
    pub throughput_ratio: f64,
    /// cellet's peak RSS over the peer's.
    pub peak_rss_ratio: f64,
    /// cellet's p99 over the peer's.
    pub p99_ratio: f64,
    /// cellet's CPU seconds (during the run) over the peer's.
    pub cpu_ratio: f64,
    pub targets: Vec<Target>,
}

#[derive(Debug, Serialize)]
pub struct Target {
    pub what: &'static str,
    pub pass: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    /// `/proc/loadavg`'s 1-minute average when the report was finished.
    pub load_average_end: String,
    pub kubernetes: &'static str,
    pub binding: &'static str,
    pub create_concurrency: usize,
    pub nodes: Vec<NodeRun>,
    pub comparisons: Vec<Comparison>,
    pub scale: Option<NodeRun>,
}

impl Report {
    pub fn new(machine: Machine, create_concurrency: usize) -> Report {
        Report {
            machine,
            load_average_end: String::new(),
            kubernetes: KUBERNETES,
            binding: "spec.nodeName set at create (no scheduler)",
            create_concurrency,
            nodes: Vec::new(),
            comparisons: Vec::new(),
            scale: None,
        }
    }

    /// Compute the comparisons and note the load at the end.
    pub fn finish(&mut self) {
        self.load_average_end = Machine::load_average_now();
        let Some(cellet) = self.nodes.iter().find(|n| n.kind == Kind::Cellet) else {
            return;
        };
        let c = &cellet.result;
        self.comparisons = self
            .nodes
            .iter()
            .filter(|n| n.kind != Kind::Cellet)
            .map(|peer| {
                let p = &peer.result;
                let throughput_ratio = c.pods_per_second / p.pods_per_second;
                let peak_rss_ratio = c.usage.peak_rss_bytes as f64 / p.usage.peak_rss_bytes as f64;
                let p99_ratio = c.latency.p99_ns as f64 / p.latency.p99_ns as f64;
                Comparison {
                    against: peer.kind,
                    throughput_ratio,
                    peak_rss_ratio,
                    p99_ratio,
                    cpu_ratio: c.cpu_seconds_during_run / p.cpu_seconds_during_run,
                    targets: vec![
                        Target {
                            what: "throughput ≥ 2×",
                            pass: throughput_ratio >= 2.0,
                        },
                        Target {
                            what: "peak RSS ≤ ⅓",
                            pass: peak_rss_ratio <= 1.0 / 3.0,
                        },
                        Target {
                            what: "p99 lower",
                            pass: p99_ratio < 1.0,
                        },
                    ],
                }
            })
            .collect();
    }

    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(out, "{}", m.summary(&self.load_average_end));
        let _ = writeln!(
            out,
            "Control plane: Kubernetes {} (tests/cluster). Pods bound by {}; {} creates in flight.\n",
            self.kubernetes, self.binding, self.create_concurrency
        );
        let _ = writeln!(
            out,
            "| node | pods | created in | all Running after | throughput | bind→Running p50 | p99 | max | peak RSS | CPU s during run | node Ready after start |"
        );
        let _ = writeln!(
            out,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for run in self.nodes.iter().chain(&self.scale) {
            row(&mut out, run);
        }
        for c in &self.comparisons {
            let verdict =
                |t: &Target| format!("{} **{}**", t.what, if t.pass { "pass" } else { "FAIL" });
            let _ = writeln!(
                out,
                "\ncellet vs {}: throughput ×{:.2}, peak RSS ×{:.2}, p99 ×{:.2}, CPU ×{:.2} — {}.",
                c.against,
                c.throughput_ratio,
                c.peak_rss_ratio,
                c.p99_ratio,
                c.cpu_ratio,
                c.targets.iter().map(verdict).collect::<Vec<_>>().join(", ")
            );
        }
        out
    }
}

fn row(out: &mut String, run: &NodeRun) {
    let r = &run.result;
    let _ = writeln!(
        out,
        "| {} | {} | {:.1} s | {:.1} s | {:.1} pods/s | {} | {} | {} | {:.1} MiB | {:.2} | {:.2} s |",
        run.description,
        r.pods,
        r.create_seconds,
        r.all_running_seconds,
        r.pods_per_second,
        human(r.latency.p50_ns),
        human(r.latency.p99_ns),
        human(r.latency.max_ns),
        r.usage.peak_rss_bytes as f64 / 1048576.0,
        r.cpu_seconds_during_run,
        r.ready_after_start_seconds,
    );
}

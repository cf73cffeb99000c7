//! `node-bench --quick` against the real control plane, the real `cellet` binary with its
//! shipped plugins, and the real virtual-kubelet peer (`bench/vk-mock`): the harness must
//! produce a complete report for every node — all pods Running, every measure present and
//! sane — so the benchmark cannot rot unnoticed. No timing is asserted: speed targets
//! belong to BENCHMARKS.md, and this suite runs on busy machines in debug builds.
//!
//! Needs the `cellet` binary beside `node-bench` (`cargo test --workspace` builds it; alone:
//! `cargo build -p cellet --bin cellet`), the plugin components (`scripts/build-plugins`),
//! Go for the first build of the control plane and of vk-mock (both cached after), and root.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const QUICK_PODS: u64 = 50;

#[test]
fn quick_run_reports_every_node_with_all_pods_running() {
    let bench = Path::new(env!("CARGO_BIN_EXE_node-bench"));
    let cellet = bench.with_file_name("cellet");
    assert!(
        cellet.is_file(),
        "{} is missing: build it with `cargo build -p cellet --bin cellet` (cargo test --workspace does)",
        cellet.display()
    );
    let output = Command::new(bench)
        .args(["--quick", "--json"])
        .output()
        .expect("run node-bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "node-bench --quick failed ({}):\n{stderr}",
        output.status
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON report");

    let kinds: Vec<&str> = report["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["cellet", "vk-mock", "vk-mock-unthrottled"],
        "{report}"
    );
    for node in report["nodes"].as_array().unwrap() {
        let r = &node["result"];
        let what = node["node"].as_str().unwrap();
        assert_eq!(r["pods"].as_u64(), Some(QUICK_PODS), "{what}: {r}");
        let latency = &r["latency"];
        assert_eq!(
            latency["iterations"].as_u64(),
            Some(QUICK_PODS),
            "{what}: every pod measured: {r}"
        );
        let ns = |f: &str| latency[f].as_u64().unwrap();
        assert!(
            ns("p50_ns") <= ns("p99_ns") && ns("p99_ns") <= ns("max_ns"),
            "{what}: {latency}"
        );
        let f = |field: &str| {
            r[field]
                .as_f64()
                .unwrap_or_else(|| panic!("{what}: no {field} in {r}"))
        };
        assert!(
            f("create_seconds") > 0.0 && f("create_seconds") <= f("all_running_seconds"),
            "{what}: {r}"
        );
        assert!(f("pods_per_second") > 0.0, "{what}: {r}");
        assert!(f("cpu_seconds_during_run") > 0.0, "{what}: {r}");
        let usage = &r["usage"];
        let peak = usage["peak_rss_bytes"].as_u64().unwrap();
        // A node agent with a Kubernetes client holds megabytes, and never more than the machine.
        assert!(
            peak > 4 << 20 && peak >= usage["rss_bytes"].as_u64().unwrap(),
            "{what}: {usage}"
        );
        assert!(
            usage["cpu_seconds"].as_f64().unwrap() >= f("cpu_seconds_during_run"),
            "{what}: {usage}"
        );
    }

    let comparisons = report["comparisons"].as_array().expect("comparisons");
    assert_eq!(
        comparisons.len(),
        2,
        "cellet against each virtual-kubelet run: {report}"
    );
    for c in comparisons {
        for ratio in [
            "throughput_ratio",
            "peak_rss_ratio",
            "p99_ratio",
            "cpu_ratio",
        ] {
            assert!(
                c[ratio].as_f64().is_some_and(|r| r.is_finite() && r > 0.0),
                "{ratio}: {c}"
            );
        }
        assert_eq!(c["targets"].as_array().unwrap().len(), 3, "{c}");
    }
    assert!(report["scale"].is_null(), "--quick runs no scale run");
    assert!(report["machine"]["logical_cpus"].as_u64().unwrap() >= 1);
}

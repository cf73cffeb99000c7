//! `plugin-bench --quick` runs against the real components (`scripts/build-plugins`) and
//! reports every measure of every shipped plugin with sane values, so the benchmark cannot
//! rot unnoticed. No timing is asserted: speed targets belong to the benchmark's report,
//! and this suite runs on busy machines in debug builds.

use std::process::{Command, Output};

use serde_json::Value;

const PLUGINS: [(&str, &[&str]); 5] = [
    (
        "vpc-native",
        &[
            "plan-pod",
            "plan-node",
            "plan-routes",
            "plan-cluster",
            "plan-cluster (cold)",
        ],
    ),
    (
        "cloud-routes",
        &[
            "plan-pod",
            "plan-node",
            "plan-routes",
            "plan-cluster",
            "plan-cluster (cold)",
        ],
    ),
    ("hostport-nat", &["admit"]),
    ("hostport-restricted", &["admit"]),
    ("mock", &["create-cell"]),
];

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_plugin-bench"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run plugin-bench")
}

fn stdout_of(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "plugin-bench failed ({}); if a component is missing, run scripts/build-plugins\n{stderr}",
        output.status
    );
    String::from_utf8(output.stdout.clone()).expect("UTF-8 output")
}

/// A summary's fields are ordered and it holds `iterations` samples.
fn assert_summary(summary: &Value, iterations: u64, what: &str) {
    let field = |name: &str| {
        summary[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{what}: no `{name}` in {summary}"))
    };
    assert_eq!(field("iterations"), iterations, "{what}: {summary}");
    let (min, p50, p99, max) = (
        field("min_ns"),
        field("p50_ns"),
        field("p99_ns"),
        field("max_ns"),
    );
    assert!(
        min > 0 && min <= p50 && p50 <= p99 && p99 <= max,
        "{what}: {summary}"
    );
    assert!((min..=max).contains(&field("mean_ns")), "{what}: {summary}");
}

#[test]
fn quick_run_reports_every_measure_of_every_shipped_plugin() {
    let report: Value =
        serde_json::from_str(&stdout_of(&bench(&["--quick", "--json"]))).expect("JSON report");
    let iterations = &report["iterations"];
    let count = |name: &str| iterations[name].as_u64().unwrap();

    let plugins = report["plugins"].as_array().expect("plugins");
    let names: Vec<&str> = plugins
        .iter()
        .map(|p| p["plugin"].as_str().unwrap())
        .collect();
    assert_eq!(names, PLUGINS.map(|(name, _)| name));

    for (plugin, (name, functions)) in plugins.iter().zip(PLUGINS) {
        for size in ["component_bytes", "compiled_bytes", "instance_memory_bytes"] {
            assert!(
                plugin[size].as_u64().unwrap() > 0,
                "{name}: {size} in {plugin}"
            );
        }
        // A compiled component is native code: larger than its wasm.
        assert!(
            plugin["compiled_bytes"].as_u64() > plugin["component_bytes"].as_u64(),
            "{name}"
        );
        assert_summary(
            &plugin["load_cold"],
            count("cold_loads"),
            &format!("{name} cold load"),
        );
        assert_summary(
            &plugin["load_cached"],
            count("cached_loads"),
            &format!("{name} cached load"),
        );
        assert_summary(
            &plugin["cache_read"],
            count("cached_loads"),
            &format!("{name} cache read"),
        );

        let measured: Vec<&str> = plugin["functions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["function"].as_str().unwrap())
            .collect();
        assert_eq!(measured, functions, "{name}");
        for f in plugin["functions"].as_array().unwrap() {
            let what = format!("{name} {}", f["function"]);
            assert_summary(&f["warm"], count("warm"), &format!("{what} warm"));
            assert_summary(&f["fresh"], count("fresh"), &format!("{what} fresh"));
            assert_summary(
                &f["native_warm"],
                count("native"),
                &format!("{what} native"),
            );
            assert_summary(
                &f["native_fresh"],
                count("native"),
                &format!("{what} native fresh"),
            );
        }
    }

    // What the plugins decided on the realistic inputs (the same natively, or the run
    // would have failed): the work measured is the work intended.
    let decision = |plugin: usize, function: usize| {
        plugins[plugin]["functions"][function]["decision"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // (plugin, function, how the decision starts, why)
    let starts = [
        (
            0,
            0,
            "vpc-secondary, routes [0.0.0.0/0]",
            "the pod's VPC address",
        ),
        (0, 2, "manage-routes false", "vpc-native manages no route"),
        (
            1,
            2,
            "manage-routes true",
            "cloud-routes is configured to manage routes",
        ),
        (0, 3, "0 routes", "vpc-native plans no route"),
        (1, 3, "50 routes", "one route per node"),
    ];
    for (plugin, function, start, why) in starts {
        let decided = decision(plugin, function);
        assert!(decided.starts_with(start), "{why}: {decided}");
    }
    for hostport in [2, 3] {
        assert_eq!(
            decision(hostport, 0),
            "admit [8080→8080, 15001→15001, 24224→24224, 24225→24224]",
            "{}",
            names[hostport]
        );
    }
    assert!(
        decision(4, 0).contains("running, with a pod IP"),
        "{}",
        decision(4, 0)
    );

    // One target per call measure (warm and fresh), plus the cached load, for every plugin;
    // the cold cluster pass (51 calls) has none.
    let targets = report["targets"].as_array().unwrap();
    let expected: usize = PLUGINS
        .iter()
        .map(|(_, f)| 2 * f.iter().filter(|f| **f != "plan-cluster (cold)").count() + 1)
        .sum();
    assert_eq!(targets.len(), expected);
    assert!(
        targets
            .iter()
            .all(|t| !t["measure"].as_str().unwrap().contains("(cold)")),
        "{targets:?}"
    );
    assert!(targets.iter().all(|t| t["pass"].is_boolean()));
    assert!(report["machine"]["logical_cpus"].as_u64().unwrap() >= 1);
}

#[test]
fn markdown_report_has_a_table_per_plugin() {
    let text = stdout_of(&bench(&["--quick", "--plugin", "hostport-nat"]));
    assert!(text.starts_with("Machine: "), "{text}");
    assert!(
        text.contains("#### hostport-nat (`hostport-policy`)"),
        "{text}"
    );
    for row in [
        "| `admit` warm call |",
        "| `admit` fresh instance + call |",
        "| load, cached |",
    ] {
        assert!(text.contains(row), "missing row {row}:\n{text}");
    }
    assert!(
        !text.contains("#### vpc-native"),
        "--plugin selects: {text}"
    );
    assert!(text.contains("Targets met: "), "{text}");
}

#[test]
fn a_missing_component_fails_with_the_command_that_builds_it() {
    let dir = tempfile::tempdir().unwrap();
    let output = bench(&[
        "--quick",
        "--plugin",
        "mock",
        "--plugin-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cellet_plugin_mock.wasm") && stderr.contains("scripts/build-plugins"),
        "{stderr}"
    );
}

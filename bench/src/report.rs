//! The targets of issue #3 and the two forms of a run's results: Markdown tables (what
//! `BENCHMARKS.md` shows) and JSON (`--json`, for tools).

use std::fmt::Write;

use serde::Serialize;

use crate::machine::Machine;
use crate::measure::{Iterations, PluginReport};
use crate::stats::{Summary, human};

/// Warm call (instance reused): p99 below 10 µs.
pub const WARM_CALL_P99_NS: u64 = 10_000;
/// Fresh instance + call: p99 below 50 µs.
pub const FRESH_CALL_P99_NS: u64 = 50_000;
/// Load from the compiled-component cache: p99 below 10 ms.
pub const CACHED_LOAD_P99_NS: u64 = 10_000_000;

/// Everything one run produced.
#[derive(Debug, Serialize)]
pub struct RunReport {
    pub machine: Machine,
    pub iterations: Iterations,
    pub plugins: Vec<PluginReport>,
    pub targets: Vec<TargetResult>,
}

/// One target checked against one measure.
#[derive(Debug, Clone, Serialize)]
pub struct TargetResult {
    pub plugin: &'static str,
    pub measure: String,
    pub p99_ns: u64,
    pub limit_ns: u64,
    pub pass: bool,
}

impl RunReport {
    pub fn new(machine: Machine, iterations: Iterations, plugins: Vec<PluginReport>) -> Self {
        let targets = plugins.iter().flat_map(targets).collect();
        RunReport {
            machine,
            iterations,
            plugins,
            targets,
        }
    }

    pub fn all_targets_met(&self) -> bool {
        self.targets.iter().all(|t| t.pass)
    }

    /// The run as Markdown: the machine, one table per plugin, and the targets missed.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let it = &self.iterations;
        // Writing into a String cannot fail.
        // Rendered as soon as the run ends: the load now is the load at its end.
        let _ = writeln!(out, "{}", m.summary(&Machine::load_average_now()));
        let _ = writeln!(
            out,
            "Iterations: {} warm calls and {} fresh instances per function after {} warm-up calls, {} native calls, {} cold and {} cached loads per plugin.",
            it.warm, it.fresh, it.warmup, it.native, it.cold_loads, it.cached_loads
        );
        if m.build == "debug" {
            let _ = writeln!(out, "\n**Debug build: these numbers are not benchmarks.**");
        }
        for plugin in &self.plugins {
            plugin_markdown(&mut out, plugin, &self.targets);
        }
        let missed: Vec<&TargetResult> = self.targets.iter().filter(|t| !t.pass).collect();
        let _ = writeln!(
            out,
            "\nTargets met: {} of {}.",
            self.targets.len() - missed.len(),
            self.targets.len()
        );
        for t in missed {
            let _ = writeln!(
                out,
                "- missed: {} {}: p99 {} (target < {})",
                t.plugin,
                t.measure,
                human(t.p99_ns),
                human(t.limit_ns)
            );
        }
        out
    }
}

fn plugin_markdown(out: &mut String, p: &PluginReport, targets: &[TargetResult]) {
    let _ = writeln!(
        out,
        "\n#### {} (`{}`)\n\nComponent {}, compiled {}; a warm instance holds {} of linear memory.\n",
        p.plugin,
        p.world,
        bytes(p.component_bytes),
        bytes(p.compiled_bytes),
        bytes(p.instance_memory_bytes)
    );
    let _ = writeln!(
        out,
        "| measure | wasm p50 | wasm p99 | native p50 | native p99 | wasm/native p50 | wasm/native p99 | target (p99) | result |"
    );
    let _ = writeln!(
        out,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"
    );
    let verdict = |measure: &str| {
        targets
            .iter()
            .find(|t| t.plugin == p.plugin && t.measure == measure)
            .map_or(("—".to_string(), "—"), |t| {
                (
                    format!("< {}", human(t.limit_ns)),
                    if t.pass { "pass" } else { "**FAIL**" },
                )
            })
    };
    for f in &p.functions {
        for (label, wasm, native) in [
            ("warm call", &f.warm, &f.native_warm),
            ("fresh instance + call", &f.fresh, &f.native_fresh),
        ] {
            let measure = format!("`{}` {label}", f.function.name());
            let (target, result) = verdict(&measure);
            let _ = writeln!(
                out,
                "| {measure} | {} | {} | {} | {} | {} | {} | {target} | {result} |",
                human(wasm.p50_ns),
                human(wasm.p99_ns),
                human(native.p50_ns),
                human(native.p99_ns),
                ratio(wasm.p50_ns, native.p50_ns),
                ratio(wasm.p99_ns, native.p99_ns),
            );
        }
    }
    for (measure, s) in [
        ("load, cold (compile)", &p.load_cold),
        ("load, cached", &p.load_cached),
        ("… of which cache read", &p.cache_read),
    ] {
        let (target, result) = verdict(measure);
        let _ = writeln!(
            out,
            "| {measure} | {} | {} | — | — | — | — | {target} | {result} |",
            human(s.p50_ns),
            human(s.p99_ns)
        );
    }
    let _ = writeln!(out);
    for f in &p.functions {
        let _ = writeln!(
            out,
            "- `{}` of {}: {}",
            f.function.name(),
            f.input,
            f.decision
        );
    }
    for f in p.functions.iter().filter(|f| !has_target(f.function)) {
        let calls = f.function.plugin_calls() as u64;
        let _ = writeln!(
            out,
            "- `{}` is {calls} plugin calls: {} a call at p50 warm, {} fresh (no target: the \
             targets are per call, and each of its calls is measured alone above)",
            f.function.name(),
            human(f.warm.p50_ns / calls),
            human(f.fresh.p50_ns / calls),
        );
    }
}

/// Whether a measure is held to the per-call targets: the measures of one call, and the
/// host's usual cluster pass (two calls, still held to the one-call target).
fn has_target(function: crate::plugins::Function) -> bool {
    function.plugin_calls() <= 2
}

/// The targets that apply to one plugin's measures.
fn targets(p: &PluginReport) -> Vec<TargetResult> {
    let check = |measure: String, s: &Summary, limit_ns: u64| TargetResult {
        plugin: p.plugin,
        measure,
        p99_ns: s.p99_ns,
        limit_ns,
        pass: s.p99_ns < limit_ns,
    };
    let mut out = Vec::new();
    for f in p.functions.iter().filter(|f| has_target(f.function)) {
        let name = f.function.name();
        out.push(check(
            format!("`{name}` warm call"),
            &f.warm,
            WARM_CALL_P99_NS,
        ));
        out.push(check(
            format!("`{name}` fresh instance + call"),
            &f.fresh,
            FRESH_CALL_P99_NS,
        ));
    }
    out.push(check(
        "load, cached".to_string(),
        &p.load_cached,
        CACHED_LOAD_P99_NS,
    ));
    out
}

fn ratio(wasm_ns: u64, native_ns: u64) -> String {
    if native_ns == 0 {
        return "—".to_string();
    }
    format!("×{:.1}", wasm_ns as f64 / native_ns as f64)
}

fn bytes(n: u64) -> String {
    let n = n as f64;
    if n < 1024.0 * 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{:.2} MiB", n / (1024.0 * 1024.0))
    }
}

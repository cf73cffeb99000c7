//! What the numbers were measured on, read from `/proc` at the start of a run: a
//! benchmark result without its machine and its load is not comparable to anything.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// `model name` of `/proc/cpuinfo`, with family, model and clock.
    pub cpu: String,
    pub logical_cpus: usize,
    /// Whether the CPU flags say it runs under a hypervisor.
    pub virtual_machine: bool,
    pub kernel: String,
    /// `/proc/loadavg`'s 1-minute average when the run started: other work on the machine
    /// shows up in the tail percentiles.
    pub load_average: String,
    /// `release` or `debug`: numbers from a debug build are not benchmarks.
    pub build: &'static str,
}

impl Machine {
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            cpuinfo
                .lines()
                .find_map(|line| {
                    let (key, value) = line.split_once(':')?;
                    (key.trim() == name).then(|| value.trim().to_string())
                })
                .unwrap_or_else(|| "unknown".to_string())
        };
        let cpu = format!(
            "{} (family {}, model {}, {} MHz)",
            field("model name"),
            field("cpu family"),
            field("model"),
            field("cpu MHz").split('.').next().unwrap_or("?"),
        );
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".to_string())
        };
        Machine {
            cpu,
            logical_cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            virtual_machine: field("flags").split_whitespace().any(|f| f == "hypervisor"),
            kernel: read("/proc/sys/kernel/osrelease"),
            load_average: read("/proc/loadavg")
                .split_whitespace()
                .next()
                .unwrap_or("unknown")
                .to_string(),
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        }
    }
}

impl Machine {
    /// The 1-minute load average now, to report beside the one at the start.
    pub fn load_average_now() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next().map(str::to_string))
            .unwrap_or_else(|| "unknown".to_string())
    }

    /// The line every benchmark report starts with: the machine, and its load at the
    /// start and at the end of the run (other work shows up in the tails).
    pub fn summary(&self, load_at_end: &str) -> String {
        format!(
            "Machine: {}, {} logical CPUs{}, Linux {}; 1-minute load average {} at start, {load_at_end} at end. Build: {}.",
            self.cpu,
            self.logical_cpus,
            if self.virtual_machine {
                " (virtual machine)"
            } else {
                ""
            },
            self.kernel,
            self.load_average,
            self.build,
        )
    }
}

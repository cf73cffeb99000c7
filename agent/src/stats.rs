//! Usage of the pod and its containers, read from their cgroups when the host asks
//! (`/stats/summary` on the node). cgroup v1 (this machine's hybrid layout: `memory` and
//! `cpuacct` hierarchies) and the unified v2 layout are both read; a file that is missing
//! leaves its value out rather than reporting zero.

use std::path::Path;

use crate::protocol::{ContainerUsage, PodUsage, Usage};

/// The usage of `pod` (its cgroup path) and of `containers` (name, cgroup path), under the
/// cgroup mount `root` (`/sys/fs/cgroup`).
pub fn read(root: &Path, pod: &str, containers: &[(String, String)], time: String) -> PodUsage {
    PodUsage {
        time,
        pod: usage(root, pod),
        containers: containers
            .iter()
            .map(|(name, path)| ContainerUsage {
                name: name.clone(),
                usage: usage(root, path),
            })
            .collect(),
    }
}

/// One cgroup's usage; `path` is relative to each hierarchy (`/cellet/<uid>/<id>`).
fn usage(root: &Path, path: &str) -> Usage {
    let relative = path.trim_start_matches('/');
    let v1 = |hierarchy: &str, file: &str| root.join(hierarchy).join(relative).join(file);
    let v2 = |file: &str| root.join(relative).join(file);
    if v1("memory", "memory.usage_in_bytes").exists() {
        let stat = stat_file(&v1("memory", "memory.stat"));
        let usage = number(&v1("memory", "memory.usage_in_bytes"));
        Usage {
            usage_core_nano_seconds: number(&v1("cpuacct", "cpuacct.usage")),
            memory_usage_bytes: usage,
            memory_working_set_bytes: usage
                .map(|u| u.saturating_sub(stat_value(&stat, "total_inactive_file").unwrap_or(0))),
            memory_rss_bytes: stat_value(&stat, "total_rss"),
        }
    } else {
        let memory = stat_file(&v2("memory.stat"));
        let usage = number(&v2("memory.current"));
        Usage {
            usage_core_nano_seconds: stat_value(&stat_file(&v2("cpu.stat")), "usage_usec")
                .map(|micros| micros.saturating_mul(1000)),
            memory_usage_bytes: usage,
            memory_working_set_bytes: usage
                .map(|u| u.saturating_sub(stat_value(&memory, "inactive_file").unwrap_or(0))),
            memory_rss_bytes: stat_value(&memory, "anon"),
        }
    }
}

fn number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn stat_file(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// `key value` lines of a `memory.stat` or `cpu.stat`.
fn stat_value(stat: &str, key: &str) -> Option<u64> {
    stat.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, file: &str, text: &str) {
        let path = root.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn v1_hierarchies_are_read() {
        let root = tempfile::tempdir().unwrap();
        let cell = "cellet/uid/uid-app-0";
        write(
            root.path(),
            &format!("memory/{cell}/memory.usage_in_bytes"),
            "1000\n",
        );
        write(
            root.path(),
            &format!("memory/{cell}/memory.stat"),
            "cache 5\ntotal_rss 600\ntotal_inactive_file 300\n",
        );
        write(
            root.path(),
            &format!("cpuacct/{cell}/cpuacct.usage"),
            "123456\n",
        );
        let usage = read(
            root.path(),
            "/cellet/uid",
            &[("app".into(), format!("/{cell}"))],
            "now".into(),
        );
        assert_eq!(
            usage.containers[0].usage,
            Usage {
                usage_core_nano_seconds: Some(123456),
                memory_usage_bytes: Some(1000),
                memory_working_set_bytes: Some(700),
                memory_rss_bytes: Some(600),
            }
        );
        assert_eq!(usage.pod, Usage::default(), "no files, no values");
    }

    #[test]
    fn the_unified_hierarchy_is_read() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), "cellet/uid/memory.current", "2048\n");
        write(
            root.path(),
            "cellet/uid/memory.stat",
            "anon 1024\ninactive_file 48\n",
        );
        write(
            root.path(),
            "cellet/uid/cpu.stat",
            "usage_usec 7\nuser_usec 5\n",
        );
        let usage = read(root.path(), "/cellet/uid", &[], "now".into());
        assert_eq!(
            usage.pod,
            Usage {
                usage_core_nano_seconds: Some(7000),
                memory_usage_bytes: Some(2048),
                memory_working_set_bytes: Some(2000),
                memory_rss_bytes: Some(1024),
            }
        );
    }
}

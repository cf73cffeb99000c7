//! `/stats/summary` and `/metrics/resource`: what the host knows of its node and pods,
//! in the kubelet's formats (`stats/v1alpha1` Summary; Prometheus text).
//!
//! Usage is measured in the cells: each pod's agent reads its cgroups when asked (CPU
//! time, memory). What no agent answered for (a pod without a cell yet, an agent out of
//! reach) and what cells do not measure (filesystem, network) is left out rather than
//! filled with zeros, so metrics-server and the HPA see "unknown" instead of an idle pod.

use std::collections::HashMap;
use std::fmt::Write as _;

use cellet_agent::protocol::{PodUsage, Usage};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

/// The kubelet's content type for Prometheus text.
pub const RESOURCE_METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `stats/v1alpha1` `Summary`, the fields known without an agent.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub node: NodeStats,
    pub pods: Vec<PodStats>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    pub node_name: String,
    /// When the host started serving this node.
    pub start_time: Time,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    pub pod_ref: PodReference,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// Containers that have started, with their start time.
    pub containers: Vec<ContainerStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
}

/// `stats/v1alpha1` `CPUStats`: cumulative CPU time (no rate: it needs two reads).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    pub time: String,
    pub usage_core_nano_seconds: u64,
}

/// `stats/v1alpha1` `MemoryStats`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_set_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
}

fn cpu(time: &str, usage: &Usage) -> Option<CpuStats> {
    Some(CpuStats {
        time: time.to_string(),
        usage_core_nano_seconds: usage.usage_core_nano_seconds?,
    })
}

fn memory(time: &str, usage: &Usage) -> Option<MemoryStats> {
    usage.memory_usage_bytes?;
    Some(MemoryStats {
        time: time.to_string(),
        usage_bytes: usage.memory_usage_bytes,
        working_set_bytes: usage.memory_working_set_bytes,
        rss_bytes: usage.memory_rss_bytes,
    })
}

#[derive(Debug, Serialize)]
pub struct PodReference {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    pub name: String,
    pub start_time: Time,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
}

/// What the pods' agents measured, by pod UID.
pub type UsageByPod = HashMap<String, PodUsage>;

/// The summary of `node` and its `pods`, with the `usage` their agents reported.
pub fn summary(node: &str, started: Timestamp, pods: &[Pod], usage: &UsageByPod) -> Summary {
    let pods = pods
        .iter()
        .map(|pod| {
            let measured = pod.metadata.uid.as_ref().and_then(|uid| usage.get(uid));
            let of_container = |name: &str| {
                let measured = measured?;
                let container = measured.containers.iter().find(|c| c.name == name)?;
                Some((measured.time.as_str(), &container.usage))
            };
            PodStats {
                pod_ref: PodReference {
                    name: pod.metadata.name.clone().unwrap_or_default(),
                    namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                    uid: pod.metadata.uid.clone().unwrap_or_default(),
                },
                start_time: pod
                    .status
                    .as_ref()
                    .and_then(|s| s.start_time.as_ref())
                    .cloned(),
                containers: container_starts(pod)
                    .map(|(name, start_time)| ContainerStats {
                        name: name.to_string(),
                        start_time: Time(start_time),
                        cpu: of_container(name).and_then(|(time, usage)| cpu(time, usage)),
                        memory: of_container(name).and_then(|(time, usage)| memory(time, usage)),
                    })
                    .collect(),
                cpu: measured.and_then(|m| cpu(&m.time, &m.pod)),
                memory: measured.and_then(|m| memory(&m.time, &m.pod)),
            }
        })
        .collect();
    Summary {
        node: NodeStats {
            node_name: node.to_string(),
            start_time: Time(started),
        },
        pods,
    }
}

/// The running containers of `pod` and when each started, from its status.
fn container_starts(pod: &Pod) -> impl Iterator<Item = (&str, Timestamp)> {
    pod.status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .filter_map(|c| {
            let started = c.state.as_ref()?.running.as_ref()?.started_at.as_ref()?;
            Some((c.name.as_str(), started.0))
        })
}

/// The kubelet's resource metrics: `container_start_time_seconds` from the pods' status,
/// CPU and working-set memory of containers and pods from what their agents measured.
pub fn resource_metrics(pods: &[Pod], usage: &UsageByPod) -> String {
    let mut text = String::from(
        "# HELP container_start_time_seconds Start time of the container since unix epoch in seconds\n\
         # TYPE container_start_time_seconds gauge\n",
    );
    let mut cpu_lines = String::new();
    let mut memory_lines = String::new();
    let mut pod_cpu_lines = String::new();
    let mut pod_memory_lines = String::new();
    for pod in pods {
        let Some(measured) = pod.metadata.uid.as_ref().and_then(|uid| usage.get(uid)) else {
            continue;
        };
        let namespace = escape(pod.metadata.namespace.as_deref().unwrap_or_default());
        let name = escape(pod.metadata.name.as_deref().unwrap_or_default());
        let millis = measured
            .time
            .parse::<Timestamp>()
            .map(|t| t.as_millisecond())
            .unwrap_or_default();
        for container in &measured.containers {
            let labels = format!(
                "container=\"{}\",namespace=\"{namespace}\",pod=\"{name}\"",
                escape(&container.name)
            );
            if let Some(nanos) = container.usage.usage_core_nano_seconds {
                let _ = writeln!(
                    cpu_lines,
                    "container_cpu_usage_seconds_total{{{labels}}} {} {millis}",
                    nanos as f64 / 1e9
                );
            }
            if let Some(bytes) = container.usage.memory_working_set_bytes {
                let _ = writeln!(
                    memory_lines,
                    "container_memory_working_set_bytes{{{labels}}} {bytes} {millis}"
                );
            }
        }
        let labels = format!("namespace=\"{namespace}\",pod=\"{name}\"");
        if let Some(nanos) = measured.pod.usage_core_nano_seconds {
            let _ = writeln!(
                pod_cpu_lines,
                "pod_cpu_usage_seconds_total{{{labels}}} {} {millis}",
                nanos as f64 / 1e9
            );
        }
        if let Some(bytes) = measured.pod.memory_working_set_bytes {
            let _ = writeln!(
                pod_memory_lines,
                "pod_memory_working_set_bytes{{{labels}}} {bytes} {millis}"
            );
        }
    }
    for pod in pods {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        for (container, started) in container_starts(pod) {
            let seconds = started.as_millisecond() as f64 / 1000.0;
            // Writing to a String cannot fail.
            let _ = writeln!(
                text,
                "container_start_time_seconds{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}} {seconds}",
                escape(container),
                escape(namespace),
                escape(name),
            );
        }
    }
    for (family, kind, help, lines) in [
        (
            "container_cpu_usage_seconds_total",
            "counter",
            "Cumulative cpu time consumed by the container in core-seconds",
            cpu_lines,
        ),
        (
            "container_memory_working_set_bytes",
            "gauge",
            "Current working set of the container in bytes",
            memory_lines,
        ),
        (
            "pod_cpu_usage_seconds_total",
            "counter",
            "Cumulative cpu time consumed by the pod in core-seconds",
            pod_cpu_lines,
        ),
        (
            "pod_memory_working_set_bytes",
            "gauge",
            "Current working set of the pod in bytes",
            pod_memory_lines,
        ),
    ] {
        if !lines.is_empty() {
            let _ = write!(
                text,
                "# HELP {family} {help}\n# TYPE {family} {kind}\n{lines}"
            );
        }
    }
    text
}

/// A Prometheus label value: `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

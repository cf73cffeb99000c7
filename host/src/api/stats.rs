//! `/stats/summary` and `/metrics/resource`: what the host knows of its node and pods,
//! in the kubelet's formats (`stats/v1alpha1` Summary; Prometheus text).
//!
//! Usage (CPU, memory, filesystem, network) is measured in the cells by their agents,
//! which this release does not have: every usage field is left out rather than filled with
//! zeros, so metrics-server and the HPA see "unknown" instead of an idle pod.

use std::fmt::Write as _;
use std::sync::Arc;

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
}

/// The summary of `node` and its `pods`.
pub fn summary(node: &str, started: Timestamp, pods: &[Arc<Pod>]) -> Summary {
    let pods = pods
        .iter()
        .map(|pod| PodStats {
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
                })
                .collect(),
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

/// The kubelet's resource metrics that are known: `container_start_time_seconds`.
pub fn resource_metrics(pods: &[Arc<Pod>]) -> String {
    let mut text = String::from(
        "# HELP container_start_time_seconds Start time of the container since unix epoch in seconds\n\
         # TYPE container_start_time_seconds gauge\n",
    );
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
    text
}

/// A Prometheus label value: `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

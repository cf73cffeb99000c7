//! The downward API: pod fields and container resources as environment values and as
//! files of `downwardAPI` volumes. The pod IP and the host IP are the cell's, known before
//! any container starts, so `status.podIP` works from the first run.

use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeSource, ObjectFieldSelector, ResourceFieldSelector,
};

use super::pod::PodContext;
use crate::protocol::VolumeFile;

/// The value of a `fieldRef` (`metadata.name`, `status.podIP`, `metadata.labels['app']`).
pub fn field_value(pod: &PodContext, selector: &ObjectFieldSelector) -> Result<String, String> {
    let meta = &pod.pod.metadata;
    let spec = pod.pod.spec.as_ref();
    let path = selector.field_path.as_str();
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let value = match path {
        "metadata.name" => text(&meta.name),
        "metadata.namespace" => text(&meta.namespace),
        "metadata.uid" => text(&meta.uid),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => pod.sandbox.pod_ip.to_string(),
        "status.hostIP" | "status.hostIPs" => pod.sandbox.host_ip.to_string(),
        other => {
            let keyed = |prefix: &str| {
                other
                    .strip_prefix(prefix)
                    .and_then(|rest| rest.strip_suffix("']"))
            };
            if let Some(key) = keyed("metadata.labels['") {
                meta.labels
                    .as_ref()
                    .and_then(|m| m.get(key))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(key) = keyed("metadata.annotations['") {
                meta.annotations
                    .as_ref()
                    .and_then(|m| m.get(key))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(format!("unsupported fieldRef fieldPath {other:?}"));
            }
        }
    };
    Ok(value)
}

/// `key="value"` lines, sorted, as the kubelet writes labels and annotations.
fn format_map(map: Option<&std::collections::BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The value of a `resourceFieldRef` of `container`: its limit or request, divided by the
/// divisor and rounded up. A missing limit is the cell's capacity (the kubelet's node
/// allocatable); a missing request is 0, except that a CPU request defaults to the limit.
pub fn resource_value(
    container: &Container,
    selector: &ResourceFieldSelector,
) -> Result<String, String> {
    let resources = container.resources.as_ref();
    let get = |limits: bool, name: &str| {
        let map = if limits {
            resources.and_then(|r| r.limits.as_ref())
        } else {
            resources.and_then(|r| r.requests.as_ref())
        };
        map.and_then(|m| m.get(name)).map(|q| q.0.clone())
    };
    let divisor = selector
        .divisor
        .as_ref()
        .map(|q| q.0.as_str())
        .unwrap_or("1");
    let quantity_error = |e: cellet_sdk::quantity::QuantityError| e.to_string();
    match selector.resource.as_str() {
        "limits.cpu" | "requests.cpu" => {
            let limit = get(true, "cpu");
            let quantity = if selector.resource == "limits.cpu" {
                limit
            } else {
                get(false, "cpu").or(limit)
            };
            let millis = match quantity {
                Some(q) => cellet_sdk::quantity::cpu_millis(&q).map_err(quantity_error)?,
                None if selector.resource == "limits.cpu" => cell_cpus() * 1000,
                None => 0,
            };
            let per = cellet_sdk::quantity::cpu_millis(divisor)
                .map_err(quantity_error)?
                .max(1);
            Ok(millis.div_ceil(per).to_string())
        }
        name @ ("limits.memory"
        | "requests.memory"
        | "limits.ephemeral-storage"
        | "requests.ephemeral-storage") => {
            let (limits, resource) = name.split_once('.').expect("a dotted name");
            let bytes = match get(limits == "limits", resource) {
                Some(q) => cellet_sdk::quantity::bytes(&q).map_err(quantity_error)?,
                None if limits == "limits" && resource == "memory" => cell_memory_bytes(),
                None => 0,
            };
            let per = cellet_sdk::quantity::bytes(divisor)
                .map_err(quantity_error)?
                .max(1);
            Ok(bytes.div_ceil(per).to_string())
        }
        other => Err(format!("unsupported resourceFieldRef resource {other:?}")),
    }
}

/// CPUs of the cell.
fn cell_cpus() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

/// Memory of the cell (`MemTotal`).
fn cell_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// The files of a `downwardAPI` volume.
pub fn volume_files(
    pod: &PodContext,
    source: &DownwardAPIVolumeSource,
) -> Result<Vec<VolumeFile>, String> {
    let mut files = Vec::new();
    for item in source.items.iter().flatten() {
        let value = if let Some(field) = &item.field_ref {
            field_value(pod, field)?
        } else if let Some(resource) = &item.resource_field_ref {
            let name = resource.container_name.as_deref().unwrap_or_default();
            let container = pod.containers().find(|c| c.name == name).ok_or_else(|| {
                format!(
                    "resourceFieldRef of {:?} names no container {name:?}",
                    item.path
                )
            })?;
            resource_value(container, resource)?
        } else {
            return Err(format!(
                "downwardAPI item {:?} has neither fieldRef nor resourceFieldRef",
                item.path
            ));
        };
        files.push(VolumeFile {
            path: item.path.clone(),
            data: value.into_bytes(),
            mode: item.mode.or(source.default_mode).map(|m| m as u32),
        });
    }
    Ok(files)
}

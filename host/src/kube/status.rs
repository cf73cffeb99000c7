//! Pod status: what cellet knows about a pod, written to its `status` subresource.
//!
//! The status says only what the cloud reported. Until the cell agent exists (it reports
//! container states from inside the cell), a cell that runs means an instance that booted,
//! not containers that run, so containers stay `ContainerCreating`. A cloud that runs no
//! containers at all — the `mock` test plugin — says what it simulates with the cell tag
//! [`CONTAINERS_TAG`]` = running`, and only then are containers reported running.
//!
//! Writes are strategic merge patches of the `status` subresource, as the kubelet's own
//! status manager makes them: every field cellet owns is in the patch, with an explicit
//! `null` where it has no value, so the status says exactly what cellet knows; the pod's
//! UID is in it too, so a patch never lands on a newer pod of the same name; conditions
//! are merged by type, so other writers' conditions (readiness gates, disruption targets)
//! stay. Server-side apply said the same at a higher cost: the API server computes field
//! ownership on every apply, and a pod's status is written two or three times on its way
//! to Running (node-bench, BENCHMARKS.md: the node agent section).
//! [`changed`] compares the owned fields first, so a reconcile that learns nothing new
//! writes nothing (and so triggers no watch event of its own).

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use super::FIELD_MANAGER;
use cellet_agent::protocol::PodReport;

use crate::plugins::bindings::{Cell, CellState};

/// Cell tag by which a cloud that simulates containers reports their state.
pub const CONTAINERS_TAG: &str = "cellet.io/containers";

/// The condition types cellet owns, sorted.
const OWN_CONDITIONS: [&str; 4] = ["ContainersReady", "Initialized", "PodScheduled", "Ready"];

/// Errors of writing a pod's status.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("failed to update the status of pod {namespace}/{name}: {source}")]
    Patch {
        namespace: String,
        name: String,
        source: kube::Error,
    },
}

/// Where a pod stands, as far as cellet knows.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// Refused on this node; the pod stays Pending with this reason and message.
    Refused { reason: &'a str, message: &'a str },
    /// Accepted; the containers are not (known to be) running yet. `cell` is the pod's
    /// cell once it exists.
    Waiting { cell: Option<&'a Cell> },
    /// The cloud reports the pod's containers running.
    Running { cell: &'a Cell },
}

/// Whether the cloud itself reports the containers of this cell running.
pub fn containers_running(cell: &Cell) -> bool {
    matches!(cell.state, CellState::Running)
        && cell
            .tags
            .iter()
            .any(|t| t.key == CONTAINERS_TAG && t.value == "running")
}

/// The pod's address in `cell`: a `hostNetwork` pod shares the cell's management IP,
/// any other has the pod IP of its own network namespace.
pub fn pod_address(host_network: bool, cell: &Cell) -> Option<&str> {
    if host_network {
        cell.management_ip.as_deref()
    } else {
        cell.pod_ip.as_deref()
    }
}

/// The progress a cell means for its pod.
pub fn progress_of(cell: &Cell) -> Progress<'_> {
    if containers_running(cell) {
        Progress::Running { cell }
    } else {
        Progress::Waiting { cell: Some(cell) }
    }
}

/// The status cellet wants the pod to have at `now`. Times already in the pod's status
/// (start time, transitions, container start) are kept where the fact they date is
/// unchanged, so that [`changed`] sees no difference when nothing happened.
pub fn desired(pod: &Pod, host_ip: IpAddr, progress: Progress<'_>, now: Timestamp) -> PodStatus {
    let current = pod.status.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let init = spec.init_containers.unwrap_or_default();
    let running = matches!(progress, Progress::Running { .. });

    let condition = |kind: &str, ok: bool, reason: Option<String>, message: Option<String>| {
        condition(&current, kind, ok, reason, message, now)
    };
    let not_ready = |names: &mut dyn Iterator<Item = &str>| {
        let list: Vec<&str> = names.collect();
        format!("containers with unready status: [{}]", list.join(" "))
    };
    let initialized = running || init.is_empty();
    let (ready_reason, ready_message) = match progress {
        Progress::Running { .. } => (None, None),
        Progress::Refused { reason, message } => {
            (Some(reason.to_string()), Some(message.to_string()))
        }
        Progress::Waiting { .. } => (
            Some("ContainersNotReady".to_string()),
            Some(not_ready(
                &mut spec.containers.iter().map(|c| c.name.as_str()),
            )),
        ),
    };
    let mut conditions = vec![
        condition(
            "ContainersReady",
            running,
            ready_reason.clone(),
            ready_message.clone(),
        ),
        condition(
            "Initialized",
            initialized,
            (!initialized).then(|| "ContainersNotInitialized".into()),
            (!initialized).then(|| not_ready(&mut init.iter().map(|c| c.name.as_str()))),
        ),
        condition("PodScheduled", true, None, None),
        condition("Ready", running, ready_reason, ready_message),
    ];
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));

    let container_state = |name: &str, is_init: bool| -> (ContainerState, bool) {
        let previous = current
            .container_statuses
            .iter()
            .chain(current.init_container_statuses.iter())
            .flatten()
            .find(|s| s.name == name)
            .and_then(|s| s.state.clone());
        let waiting = |reason: &str| ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.into()),
                message: None,
            }),
            ..Default::default()
        };
        match progress {
            // A simulated pod runs its init containers to completion before its containers.
            Progress::Running { .. } if is_init => {
                let done =
                    previous
                        .and_then(|s| s.terminated)
                        .unwrap_or(ContainerStateTerminated {
                            exit_code: 0,
                            reason: Some("Completed".into()),
                            started_at: Some(Time(now)),
                            finished_at: Some(Time(now)),
                            ..Default::default()
                        });
                (
                    ContainerState {
                        terminated: Some(done),
                        ..Default::default()
                    },
                    false,
                )
            }
            Progress::Running { .. } => {
                let started = previous
                    .and_then(|s| s.running)
                    .and_then(|r| r.started_at)
                    .unwrap_or(Time(now));
                (
                    ContainerState {
                        running: Some(ContainerStateRunning {
                            started_at: Some(started),
                        }),
                        ..Default::default()
                    },
                    true,
                )
            }
            Progress::Refused { reason, .. } => (waiting(reason), false),
            Progress::Waiting { .. } if is_init => (waiting("PodInitializing"), false),
            Progress::Waiting { .. } if !init.is_empty() => (waiting("PodInitializing"), false),
            Progress::Waiting { .. } => (waiting("ContainerCreating"), false),
        }
    };
    let statuses =
        |list: &[k8s_openapi::api::core::v1::Container], is_init: bool| -> Vec<ContainerStatus> {
            list.iter()
                .map(|c| {
                    let (state, up) = container_state(&c.name, is_init);
                    ContainerStatus {
                        name: c.name.clone(),
                        image: c.image.clone().unwrap_or_default(),
                        // No runtime has pulled the image, so there is no digest to report.
                        image_id: String::new(),
                        ready: up,
                        started: Some(up),
                        restart_count: 0,
                        state: Some(state),
                        ..Default::default()
                    }
                })
                .collect()
        };

    let pod_ip = match progress {
        Progress::Running { cell } | Progress::Waiting { cell: Some(cell) } => {
            pod_address(spec.host_network == Some(true), cell).map(str::to_string)
        }
        _ => None,
    };
    let (reason, message) = match progress {
        Progress::Refused { reason, message } => {
            (Some(reason.to_string()), Some(message.to_string()))
        }
        _ => (None, None),
    };
    PodStatus {
        phase: Some(if running { "Running" } else { "Pending" }.into()),
        conditions: Some(conditions),
        host_ip: Some(host_ip.to_string()),
        host_ips: Some(vec![HostIP {
            ip: host_ip.to_string(),
        }]),
        pod_ips: pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        pod_ip,
        start_time: Some(current.start_time.clone().unwrap_or(Time(now))),
        container_statuses: Some(statuses(&spec.containers, false)),
        init_container_statuses: (!init.is_empty()).then(|| statuses(&init, true)),
        reason,
        message,
        ..Default::default()
    }
}

/// Condition `kind` as `ok` says, keeping the transition time already in `current` when
/// the condition's status is unchanged.
fn condition(
    current: &PodStatus,
    kind: &str,
    ok: bool,
    reason: Option<String>,
    message: Option<String>,
    now: Timestamp,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let transition = current
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == kind && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    PodCondition {
        type_: kind.into(),
        status: status.into(),
        reason,
        message,
        last_transition_time: Some(transition),
        ..Default::default()
    }
}

/// The status of a pod whose cell agent reported `report`: phase, conditions and
/// container statuses are the agent's; addresses are the agent's pod IP, else the cell's.
pub fn reported(
    pod: &Pod,
    host_ip: IpAddr,
    cell: &Cell,
    report: &PodReport,
    now: Timestamp,
) -> PodStatus {
    let current = pod.status.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let has_init = spec.init_containers.as_ref().is_some_and(|c| !c.is_empty());
    let unready = (!report.containers_ready).then(|| "ContainersNotReady".to_string());
    let message = report.message.clone().or_else(|| {
        unready
            .as_ref()
            .map(|_| "containers are not ready".to_string())
    });
    let mut conditions = vec![
        condition(
            &current,
            "ContainersReady",
            report.containers_ready,
            unready.clone(),
            unready.as_ref().and(message.clone()),
            now,
        ),
        condition(
            &current,
            "Initialized",
            report.initialized,
            (!report.initialized).then(|| "ContainersNotInitialized".into()),
            None,
            now,
        ),
        condition(&current, "PodScheduled", true, None, None, now),
        condition(
            &current,
            "Ready",
            report.ready,
            unready.clone(),
            unready.as_ref().and(message),
            now,
        ),
    ];
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    let pod_ip = report
        .pod_ip
        .map(|ip| ip.to_string())
        .or_else(|| pod_address(spec.host_network == Some(true), cell).map(str::to_string));
    PodStatus {
        phase: Some(report.phase.as_str().into()),
        conditions: Some(conditions),
        host_ip: Some(host_ip.to_string()),
        host_ips: Some(vec![HostIP {
            ip: host_ip.to_string(),
        }]),
        pod_ips: pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        pod_ip,
        start_time: Some(
            current
                .start_time
                .clone()
                .or_else(|| report.start_time.clone())
                .unwrap_or(Time(now)),
        ),
        container_statuses: Some(report.container_statuses.clone()),
        init_container_statuses: has_init.then(|| report.init_container_statuses.clone()),
        reason: None,
        message: None,
        ..Default::default()
    }
}

/// The fields of a status cellet owns, in a canonical order.
fn owned(status: &PodStatus) -> PodStatus {
    let mut conditions: Vec<PodCondition> = status
        .conditions
        .iter()
        .flatten()
        .filter(|c| OWN_CONDITIONS.contains(&c.type_.as_str()))
        .cloned()
        .map(|mut c| {
            // The scheduler writes PodScheduled with probe times cellet does not set.
            c.last_probe_time = None;
            c
        })
        .collect();
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    let sorted = |list: &Option<Vec<ContainerStatus>>| {
        list.clone().map(|mut l| {
            l.sort_by(|a, b| a.name.cmp(&b.name));
            l
        })
    };
    PodStatus {
        phase: status.phase.clone(),
        conditions: Some(conditions),
        host_ip: status.host_ip.clone(),
        host_ips: status.host_ips.clone(),
        pod_ip: status.pod_ip.clone(),
        pod_ips: status.pod_ips.clone(),
        start_time: status.start_time.clone(),
        container_statuses: sorted(&status.container_statuses),
        init_container_statuses: sorted(&status.init_container_statuses),
        reason: status.reason.clone(),
        message: status.message.clone(),
        ..Default::default()
    }
}

/// Whether writing `desired` would change what the pod's status says.
pub fn changed(pod: &Pod, desired: &PodStatus) -> bool {
    owned(&pod.status.clone().unwrap_or_default()) != owned(desired)
}

/// The strategic merge patch that makes the status of the pod `uid` say `desired` in
/// every field cellet owns, and leaves the others as they are.
fn status_patch(uid: &str, desired: &PodStatus) -> Value {
    let status = owned(desired);
    let conditions: Vec<Value> = status
        .conditions
        .iter()
        .flatten()
        .map(|c| {
            // A field left out of a merged entry would keep its old value: a condition that
            // turned True keeps no stale reason.
            json!({
                "type": c.type_,
                "status": c.status,
                "reason": c.reason,
                "message": c.message,
                "lastTransitionTime": c.last_transition_time,
            })
        })
        .collect();
    // Address lists are merged by `ip`, which would keep an old address beside a new one;
    // `$patch: replace` makes them exactly the ones given.
    let addresses = |ips: Option<Vec<String>>| match ips {
        Some(ips) => Value::Array(
            ips.into_iter()
                .map(|ip| json!({ "ip": ip }))
                .chain([json!({ "$patch": "replace" })])
                .collect(),
        ),
        None => Value::Null,
    };
    json!({
        "metadata": { "uid": uid },
        "status": {
            "phase": status.phase,
            "conditions": conditions,
            "hostIP": status.host_ip,
            "hostIPs": addresses(status.host_ips.map(|l| l.into_iter().map(|a| a.ip).collect())),
            "podIP": status.pod_ip,
            "podIPs": addresses(status.pod_ips.map(|l| l.into_iter().map(|a| a.ip).collect())),
            "startTime": status.start_time,
            // Not merged by the API server: a patch replaces these lists whole.
            "containerStatuses": status.container_statuses,
            "initContainerStatuses": status.init_container_statuses,
            "reason": status.reason,
            "message": status.message,
        },
    })
}

/// Write `desired` to the pod's status when it differs; returns whether it wrote.
pub async fn write(client: &Client, pod: &Pod, desired: PodStatus) -> Result<bool, StatusError> {
    if !changed(pod, &desired) {
        return Ok(false);
    }
    let namespace = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let patch = status_patch(pod.uid().as_deref().unwrap_or_default(), &desired);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    api.patch_status(&name, &params, &Patch::Strategic(&patch))
        .await
        .map_err(|source| StatusError::Patch {
            namespace,
            name,
            source,
        })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::bindings::KeyValue;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(init: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("n".into()),
                uid: Some("u".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    image: Some("nginx:1.27".into()),
                    ..Default::default()
                }],
                init_containers: init.then(|| {
                    vec![Container {
                        name: "setup".into(),
                        image: Some("busybox".into()),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn cell(simulated: bool) -> Cell {
        Cell {
            id: "cell-1".into(),
            pod_uid: "u".into(),
            pod_namespace: "n".into(),
            pod_name: "p".into(),
            state: CellState::Running,
            management_ip: Some("10.250.0.2".into()),
            pod_ip: Some("10.250.0.3".into()),
            subnet_prefix: 16,
            instance_type: "mock".into(),
            tags: if simulated {
                vec![KeyValue {
                    key: CONTAINERS_TAG.into(),
                    value: "running".into(),
                }]
            } else {
                vec![]
            },
        }
    }

    fn condition<'a>(s: &'a PodStatus, kind: &str) -> &'a PodCondition {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == kind)
            .unwrap()
    }

    const HOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 2, 3));

    #[test]
    fn a_simulated_cell_makes_the_pod_running_and_ready() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let c = cell(true);
        let s = desired(&pod(true), HOST, progress_of(&c), now);
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.pod_ip.as_deref(), Some("10.250.0.3"));
        assert_eq!(s.host_ip.as_deref(), Some("10.1.2.3"));
        assert_eq!(condition(&s, "Ready").status, "True");
        assert_eq!(condition(&s, "Initialized").status, "True");
        let app = &s.container_statuses.as_ref().unwrap()[0];
        assert!(app.ready && app.state.as_ref().unwrap().running.is_some());
        assert_eq!(app.image, "nginx:1.27");
        let setup = &s.init_container_statuses.as_ref().unwrap()[0];
        assert_eq!(
            setup
                .state
                .as_ref()
                .unwrap()
                .terminated
                .as_ref()
                .unwrap()
                .exit_code,
            0
        );
    }

    #[test]
    fn a_real_cloud_without_agent_reports_container_creating() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let c = cell(false);
        let s = desired(&pod(false), HOST, progress_of(&c), now);
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let app = &s.container_statuses.as_ref().unwrap()[0];
        let waiting = app.state.as_ref().unwrap().waiting.as_ref().unwrap();
        assert_eq!(waiting.reason.as_deref(), Some("ContainerCreating"));
        assert!(!app.ready);
        assert_eq!(
            condition(&s, "Ready").reason.as_deref(),
            Some("ContainersNotReady")
        );
    }

    #[test]
    fn a_refusal_keeps_the_pod_pending_with_its_reason() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let s = desired(
            &pod(false),
            HOST,
            Progress::Refused {
                reason: "HostPortDenied",
                message: "port 80 taken",
            },
            now,
        );
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(
            (s.reason.as_deref(), s.message.as_deref()),
            (Some("HostPortDenied"), Some("port 80 taken"))
        );
        assert_eq!(s.pod_ip, None);
        assert_eq!(
            condition(&s, "Ready").message.as_deref(),
            Some("port 80 taken")
        );
    }

    #[test]
    fn an_unchanged_status_is_not_written_again() {
        let c = cell(true);
        let first = desired(
            &pod(false),
            HOST,
            progress_of(&c),
            Timestamp::from_second(1_700_000_000).unwrap(),
        );
        let mut written = pod(false);
        written.status = Some(first);
        let later = desired(
            &written,
            HOST,
            progress_of(&c),
            Timestamp::from_second(1_700_000_100).unwrap(),
        );
        assert!(
            !changed(&written, &later),
            "times are kept, so nothing changed"
        );
        let refused = desired(
            &written,
            HOST,
            Progress::Refused {
                reason: "X",
                message: "y",
            },
            Timestamp::now(),
        );
        assert!(changed(&written, &refused));
    }

    #[test]
    fn the_patch_names_every_owned_field_and_replaces_the_addresses() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let c = cell(true);
        let running = desired(&pod(false), HOST, progress_of(&c), now);
        let patch = status_patch("u", &running);
        assert_eq!(patch["metadata"]["uid"], "u");
        let status = &patch["status"];
        // Cleared fields are sent as null, so the API server removes them.
        for field in ["reason", "message", "initContainerStatuses"] {
            assert_eq!(status.get(field), Some(&Value::Null), "{field}");
        }
        let ready = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "True");
        assert_eq!(ready.get("reason"), Some(&Value::Null));
        assert_eq!(
            status["podIPs"],
            json!([{ "ip": "10.250.0.3" }, { "$patch": "replace" }])
        );
        assert_eq!(status["containerStatuses"][0]["name"], "app");

        let refused = desired(
            &pod(false),
            HOST,
            Progress::Refused {
                reason: "HostPortDenied",
                message: "port 80 taken",
            },
            now,
        );
        let patch = status_patch("u", &refused);
        assert_eq!(patch["status"]["podIP"], Value::Null);
        assert_eq!(patch["status"]["podIPs"], Value::Null);
        assert_eq!(patch["status"]["reason"], "HostPortDenied");
    }
}

//! Events about pods (`events.k8s.io/v1`), as `kubectl describe pod` shows them.
//!
//! Every step of a pod's life that fails or waits gets an Event, so a user sees why a
//! pod is not Running without reading the host's log. An Event published on every retry
//! of a failing step goes through kube-runtime's `Recorder`, which turns the repeats into a
//! series (count and last time) instead of a new object each retry. The others — one per
//! created cell, or per change of a pod's status — are created directly: the recorder
//! keeps every Event it published for six minutes to find repeats, which for the one
//! `CellCreated` per pod was 4 MiB of a node's memory at 1,000 pods (node-bench, heaptrack)
//! and a scan of the whole cache under its lock on every publish.
//! Publishing is best effort: an Event that cannot be written is logged, never retried,
//! and never fails the work it describes.

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::api::events::v1::Event as EventObject;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};

/// The reasons cellet reports, one per thing that can happen to a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The hostport policy refused the pod's hostPorts (Warning).
    HostPortDenied,
    /// The pod belongs to a DaemonSet and the config refuses those (Warning).
    DaemonSetPodRefused,
    /// The pod could not be described to the plugins (Warning).
    InvalidPod,
    /// A plugin call failed (Warning).
    PluginFailed,
    /// The cloud is out of capacity for the cell (Warning).
    InsufficientCapacity,
    /// The cloud failed to create the cell (Warning).
    CellCreateFailed,
    /// The cell was created (Normal).
    CellCreated,
    /// The cell exists but is not running yet (Normal).
    CellPending,
    /// The cell is gone or going while its pod still wants it (Warning).
    CellLost,
    /// The cell could not be deleted (Warning).
    CellDeleteFailed,
    /// The pod's hostPort rules could not be installed or removed on the node (Warning).
    HostPortRulesFailed,
    /// The cell runs but its agent does not answer yet (Normal: agents take a moment to start).
    AgentUnreachable,
    /// The cell's agent refused the pod, or its references could not be resolved (Warning).
    AgentFailed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::HostPortDenied => "HostPortDenied",
            Reason::DaemonSetPodRefused => "DaemonSetPodRefused",
            Reason::InvalidPod => "InvalidPod",
            Reason::PluginFailed => "PluginFailed",
            Reason::InsufficientCapacity => "InsufficientCapacity",
            Reason::CellCreateFailed => "CellCreateFailed",
            Reason::CellCreated => "CellCreated",
            Reason::CellPending => "CellPending",
            Reason::CellLost => "CellLost",
            Reason::CellDeleteFailed => "CellDeleteFailed",
            Reason::HostPortRulesFailed => "HostPortRulesFailed",
            Reason::AgentUnreachable => "AgentUnreachable",
            Reason::AgentFailed => "AgentFailed",
        }
    }

    fn event_type(self) -> EventType {
        match self {
            Reason::CellCreated | Reason::CellPending | Reason::AgentUnreachable => {
                EventType::Normal
            }
            _ => EventType::Warning,
        }
    }

    /// Whether the Event is published on every retry of a failing step, so that it comes
    /// again and again with the same reason and is worth folding into a series.
    fn repeats(self) -> bool {
        matches!(
            self,
            Reason::PluginFailed
                | Reason::InsufficientCapacity
                | Reason::CellCreateFailed
                | Reason::CellDeleteFailed
                | Reason::HostPortRulesFailed
                | Reason::AgentFailed
        )
    }

    /// The action the Event is about (`events.k8s.io/v1` requires one).
    fn action(self) -> &'static str {
        match self {
            Reason::HostPortDenied | Reason::DaemonSetPodRefused | Reason::InvalidPod => "Admit",
            Reason::CellDeleteFailed => "DeleteCell",
            Reason::HostPortRulesFailed => "ApplyHostPortRules",
            Reason::AgentUnreachable | Reason::AgentFailed => "RunPod",
            _ => "CreateCell",
        }
    }
}

/// The reporting controller of every Event.
const CONTROLLER: &str = "cellet";

/// Publishes pod Events as the reporting controller `cellet`, instance = node name.
#[derive(Clone)]
pub struct Events {
    /// For the Events that repeat.
    recorder: Recorder,
    /// For the others, written once each.
    client: Client,
    node: String,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

impl Events {
    pub fn new(client: Client, node: &str) -> Self {
        let reporter = Reporter {
            controller: CONTROLLER.into(),
            instance: Some(node.into()),
        };
        Events {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            node: node.into(),
        }
    }

    /// Publish an Event about `pod` in the background; failures are logged.
    ///
    /// The caller never waits for the API server: an Event describes a step, it is not
    /// part of it, and awaiting its write put one API round trip on every pod's way to
    /// Running (the CellCreated Event is published between the cell's creation and the
    /// status write). The kubelet's and virtual-kubelet's recorders do not block either.
    /// Still `async`, so that callers keep their shape should publishing need to wait again.
    pub async fn publish(&self, pod: &Pod, reason: Reason, note: impl Into<String>) {
        // The API refuses notes over 1 kB; plugin messages may be longer.
        let mut note: String = note.into();
        if note.len() > 1024 {
            let mut end = 1021;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
            note.push_str("...");
        }
        let event = Event {
            type_: reason.event_type(),
            reason: reason.as_str().into(),
            note: Some(note),
            action: reason.action().into(),
            secondary: None,
        };
        let reference = pod.object_ref(&());
        let events = self.clone();
        tokio::spawn(async move {
            let result = if reason.repeats() {
                events.recorder.publish(&event, &reference).await
            } else {
                events.create(&event, &reference).await
            };
            if let Err(error) = result {
                tracing::warn!(
                    pod = ?reference.name, namespace = ?reference.namespace, reason = reason.as_str(), %error,
                    "failed to publish event"
                );
            }
        });
    }

    /// Write `event` as a new Event object, as the recorder writes the first of a series.
    async fn create(&self, event: &Event, regarding: &ObjectReference) -> kube::Result<()> {
        let now = Timestamp::now();
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let object = EventObject {
            metadata: ObjectMeta {
                // The recorder's naming: the object's name and the time, unique per publish.
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(CONTROLLER),
                    now.as_nanosecond()
                )),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            note: event.note.clone(),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(CONTROLLER.into()),
            reporting_instance: Some(self.node.clone()),
            type_: Some(
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            ..Default::default()
        };
        let api: Api<EventObject> = Api::namespaced(self.client.clone(), &namespace);
        api.create(&PostParams::default(), &object).await?;
        Ok(())
    }
}

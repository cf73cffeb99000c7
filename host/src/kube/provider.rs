//! The plugins the Kubernetes loop calls, and how it treats their failures.
//!
//! The loop decides *when* to call a plugin; the plugin runtime (`crate::plugins`) decides
//! how a call runs (instances, deadlines, validation of what comes back). The loop uses
//! seven exports of the contract: `cloud.{node-capacity, create-cell, get-cell,
//! list-cells, delete-cell}`, `network.plan-pod` and `hostport.admit`. None of the calls
//! is retried here: the pod worker owns retries and backoff, so a retry policy lives in
//! exactly one place.

use crate::plugins::bindings::PluginError;
use crate::plugins::{CallError, CloudPlugin, HostportPlugin, NetworkPlugin, PluginHandle, Slot};

/// A plugin handed to the loop in the wrong slot (a bug of the caller: the runtime checks
/// each component's world against its slot when it loads it).
#[derive(Debug, thiserror::Error)]
#[error("failed to use plugin {plugin} as the {slot} plugin: it was loaded as a {loaded} plugin")]
pub struct WrongSlot {
    pub plugin: String,
    pub slot: Slot,
    pub loaded: Slot,
}

/// The loaded plugins of the three slots.
#[derive(Clone)]
pub struct Plugins {
    pub cloud: CloudPlugin,
    pub network: NetworkPlugin,
    pub hostport: HostportPlugin,
}

impl Plugins {
    /// The three typed handles out of the plugins loaded into the cloud, network and
    /// hostport slots.
    pub fn from_handles(
        cloud: &PluginHandle,
        network: &PluginHandle,
        hostport: &PluginHandle,
    ) -> Result<Plugins, WrongSlot> {
        let wrong = |handle: &PluginHandle, slot| WrongSlot {
            plugin: handle.name().to_string(),
            slot,
            loaded: handle.slot(),
        };
        Ok(Plugins {
            cloud: match cloud {
                PluginHandle::Cloud(p) => p.clone(),
                other => return Err(wrong(other, Slot::Cloud)),
            },
            network: match network {
                PluginHandle::Network(p) => p.clone(),
                other => return Err(wrong(other, Slot::Network)),
            },
            hostport: match hostport {
                PluginHandle::Hostport(p) => p.clone(),
                other => return Err(wrong(other, Slot::Hostport)),
            },
        })
    }
}

impl std::fmt::Debug for Plugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugins")
            .field("cloud", &self.cloud.name())
            .field("network", &self.network.name())
            .field("hostport", &self.hostport.name())
            .finish()
    }
}

/// How a failed plugin call should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Out of capacity (quota, addresses): reported as such to users, retried slowly.
    Capacity,
    /// The plugin's dependency failed, or the call trapped or ran late: retried with backoff.
    Transient,
    /// The plugin refused the input or its own configuration: the same input fails the
    /// same way until something changes, so retries wait the longest.
    Permanent,
}

/// Classify a failed call.
pub fn failure_kind(error: &CallError) -> FailureKind {
    match error {
        CallError::Plugin { error, .. } => match error {
            PluginError::Capacity(_) => FailureKind::Capacity,
            PluginError::Unavailable(_) | PluginError::Internal(_) | PluginError::NotFound(_) => {
                FailureKind::Transient
            }
            PluginError::InvalidConfig(_)
            | PluginError::InvalidInput(_)
            | PluginError::Unsupported(_) => FailureKind::Permanent,
        },
        // The instance is rebuilt after each of these; the next call may well succeed.
        CallError::Trapped { .. }
        | CallError::DeadlineExceeded { .. }
        | CallError::MemoryExceeded { .. }
        | CallError::InvalidOutput { .. }
        | CallError::Instantiate { .. } => FailureKind::Transient,
    }
}

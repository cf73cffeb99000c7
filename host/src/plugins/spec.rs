//! The vocabulary shared by config, loading and the runtime: slots, capabilities, limits
//! and the description of one plugin to load.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// One of the three decisions a plugin makes; each slot takes a component of one world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    /// `cloud-provider`: where cells come from.
    Cloud,
    /// `network-strategy`: how pods are addressed and reached.
    Network,
    /// `hostport-policy`: which hostPorts a pod may have.
    Hostport,
}

impl Slot {
    pub const ALL: [Slot; 3] = [Slot::Cloud, Slot::Network, Slot::Hostport];

    /// The key of the slot in the config file.
    pub fn config_key(self) -> &'static str {
        match self {
            Slot::Cloud => "cloud",
            Slot::Network => "network",
            Slot::Hostport => "hostport",
        }
    }

    /// The WIT world a component in this slot must target.
    pub fn world(self) -> &'static str {
        match self {
            Slot::Cloud => "cloud-provider",
            Slot::Network => "network-strategy",
            Slot::Hostport => "hostport-policy",
        }
    }

    /// The interface the world exports (`cellet:plugin/<name>@<version>`).
    pub fn exported_interface(self) -> &'static str {
        match self {
            Slot::Cloud => "cloud",
            Slot::Network => "network",
            Slot::Hostport => "hostport",
        }
    }

    /// Capabilities a config may grant to this slot. Only cloud plugins do I/O.
    pub fn grantable(self) -> &'static [Capability] {
        match self {
            Slot::Cloud => &[Capability::Log, Capability::Ec2, Capability::LocalCells],
            Slot::Network | Slot::Hostport => &[Capability::Log],
        }
    }

    /// Default per-call deadline: pure decision plugins get 1 s; cloud plugins wait on
    /// cloud APIs through host calls, so they get longer.
    pub fn default_deadline(self) -> Duration {
        match self {
            Slot::Cloud => Duration::from_secs(60),
            Slot::Network | Slot::Hostport => Duration::from_secs(1),
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.config_key())
    }
}

/// A host interface a plugin may import, granted per slot by the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    /// `cellet:plugin/log`: always granted.
    Log,
    /// `cellet:plugin/ec2`: the EC2 API, through the host's AWS SDK client.
    Ec2,
    /// `cellet:plugin/local-cells`: cells as network namespaces on this machine.
    LocalCells,
}

impl Capability {
    pub const ALL: [Capability; 3] = [Capability::Log, Capability::Ec2, Capability::LocalCells];

    /// The name used in the config file and in the WIT interface name.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Log => "log",
            Capability::Ec2 => "ec2",
            Capability::LocalCells => "local-cells",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Capability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Capability::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                let known: Vec<_> = Capability::ALL.iter().map(|c| c.name()).collect();
                format!("unknown capability `{s}` (known: {})", known.join(", "))
            })
    }
}

/// Resource limits applied to every call into one plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock budget of one call, enforced by epoch interruption.
    pub deadline: Duration,
    /// Cap on the linear memory of one instance, in bytes.
    pub memory_bytes: u64,
    /// How many instances may run calls at once. Plugins that keep state in their
    /// instance (the `mock` cloud) need 1.
    pub max_instances: u32,
}

impl Limits {
    pub const DEFAULT_MEMORY_BYTES: u64 = 64 * 1024 * 1024;
    pub const DEFAULT_MAX_INSTANCES: u32 = 1;

    pub fn default_for(slot: Slot) -> Self {
        Limits {
            deadline: slot.default_deadline(),
            memory_bytes: Self::DEFAULT_MEMORY_BYTES,
            max_instances: Self::DEFAULT_MAX_INSTANCES,
        }
    }
}

/// Everything the runtime needs to load one plugin into one slot.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// Name used in logs, metrics and errors (the config's slot key, or the file name when
    /// loaded by hand).
    pub name: String,
    pub slot: Slot,
    pub limits: Limits,
    /// Capabilities the config grants, `log` included.
    pub grants: Vec<Capability>,
    /// The slot's free-form `config:` section, handed to the plugin's `init` as JSON.
    pub config: serde_json::Value,
}

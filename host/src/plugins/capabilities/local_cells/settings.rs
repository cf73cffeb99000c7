//! The `local-cells:` section of the cloud slot: where the local VPC lives and how big it is.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::Deserialize;

/// Longest Linux interface name (`IFNAMSIZ` less the terminating NUL).
const MAX_INTERFACE_NAME: usize = 15;
/// Longest network namespace name we accept: it is a file name under `/run/netns`, and a
/// cell's state directory is named after the cell the same way.
const MAX_NAMESPACE_NAME: usize = 64;

/// Settings of the capability: the slot's `local-cells:` section. Every key is optional.
///
/// ```yaml
/// cloud:
///   capabilities: [local-cells]
///   local-cells:
///     subnet: 10.77.0.0/16        # the VPC's subnet; cells take their addresses from it
///     gateway: 10.77.0.1          # the VPC router's address (default: the first address)
///     host-address: 10.77.0.2     # the host's address on the VPC (default: the second)
///     vpc-namespace: cellet-vpc   # namespace holding the bridge and the VPC's route table
///     bridge: vpc0                # the bridge standing for the VPC, inside that namespace
///     uplink: cellet-vpc0         # the host's link to the VPC, in the host's namespace
///     agent: /usr/local/bin/cellet-agent   # default: `cellet-agent` next to `cellet`
///     state-dir: /var/lib/cellet/local-cells
///     max-cells: 64
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct LocalCellsSettings {
    pub subnet: Ipv4Net,
    /// `None`: the subnet's first address.
    pub gateway: Option<Ipv4Addr>,
    /// `None`: the subnet's second address.
    pub host_address: Option<Ipv4Addr>,
    pub vpc_namespace: String,
    pub bridge: String,
    pub uplink: String,
    /// `None`: `cellet-agent` in the directory of the running executable.
    pub agent: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub max_cells: u32,
}

impl Default for LocalCellsSettings {
    fn default() -> Self {
        LocalCellsSettings {
            subnet: Ipv4Net::new(Ipv4Addr::new(10, 77, 0, 0), 16).expect("a /16 is a valid prefix"),
            gateway: None,
            host_address: None,
            vpc_namespace: "cellet-vpc".to_owned(),
            bridge: "vpc0".to_owned(),
            uplink: "cellet-vpc0".to_owned(),
            agent: None,
            state_dir: PathBuf::from("/var/lib/cellet/local-cells"),
            max_cells: 64,
        }
    }
}

/// Errors of [`LocalCellsSettings::from_json`].
#[derive(Debug, thiserror::Error)]
pub enum LocalCellsSettingsError {
    /// The section does not have the shape of [`LocalCellsSettings`].
    #[error("failed to read the `local-cells` settings: {source}")]
    Parse {
        #[source]
        source: serde_json::Error,
    },
    /// A value is out of its range or inconsistent with another.
    #[error("failed to read the `local-cells` settings: `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> LocalCellsSettingsError {
    LocalCellsSettingsError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl LocalCellsSettings {
    /// Parse and check the `local-cells:` section of a slot; relative paths are resolved
    /// against `base_dir` (the config file's directory).
    pub fn from_json(
        value: serde_json::Value,
        base_dir: &Path,
    ) -> Result<Self, LocalCellsSettingsError> {
        let mut settings: LocalCellsSettings = serde_json::from_value(value)
            .map_err(|source| LocalCellsSettingsError::Parse { source })?;
        settings.agent = settings.agent.map(|agent| base_dir.join(agent));
        settings.state_dir = base_dir.join(&settings.state_dir);
        settings.validate()?;
        Ok(settings)
    }

    /// Check what serde cannot: addresses inside the subnet and distinct, names the kernel
    /// takes, a capacity the subnet holds.
    pub fn validate(&self) -> Result<(), LocalCellsSettingsError> {
        let subnet = self.subnet;
        if subnet != subnet.trunc() {
            return Err(invalid(
                "subnet",
                format!(
                    "{subnet} has host bits set (the network is {})",
                    subnet.trunc()
                ),
            ));
        }
        if subnet.prefix_len() > 29 {
            return Err(invalid(
                "subnet",
                format!(
                    "{subnet} is too small: the gateway, the host and one cell need at least a /29"
                ),
            ));
        }
        let gateway = self.gateway();
        let host = self.host_address();
        for (field, address) in [("gateway", gateway), ("host-address", host)] {
            if !self.is_assignable(address) {
                return Err(invalid(
                    field,
                    format!("{address} is not a host address of the subnet {subnet}"),
                ));
            }
        }
        if gateway == host {
            return Err(invalid(
                "host-address",
                format!("{host} is the gateway's address too"),
            ));
        }
        valid_name("vpc-namespace", &self.vpc_namespace, MAX_NAMESPACE_NAME)?;
        valid_name("bridge", &self.bridge, MAX_INTERFACE_NAME)?;
        valid_name("uplink", &self.uplink, MAX_INTERFACE_NAME)?;
        if self.max_cells == 0 || self.max_cells > self.address_capacity() {
            return Err(invalid(
                "max-cells",
                format!(
                    "{} is out of range: the subnet {subnet} holds 1 to {} cells (two addresses each)",
                    self.max_cells,
                    self.address_capacity()
                ),
            ));
        }
        Ok(())
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway.unwrap_or_else(|| nth_address(self.subnet, 1))
    }

    pub fn host_address(&self) -> Ipv4Addr {
        self.host_address
            .unwrap_or_else(|| nth_address(self.subnet, 2))
    }

    /// The agent binary: as configured, else `cellet-agent` beside the running executable.
    pub fn agent_path(&self) -> PathBuf {
        self.agent.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|dir| dir.join("cellet-agent")))
                .unwrap_or_else(|| PathBuf::from("cellet-agent"))
        })
    }

    /// Whether `address` can be given to an interface: inside the subnet, neither its
    /// network nor its broadcast address.
    pub fn is_assignable(&self, address: Ipv4Addr) -> bool {
        self.subnet.contains(&address)
            && address != self.subnet.network()
            && address != self.subnet.broadcast()
    }

    /// How many cells the subnet holds when every cell takes two addresses.
    fn address_capacity(&self) -> u32 {
        let hosts = (1u64 << (32 - self.subnet.prefix_len())) - 2 - 2;
        u32::try_from(hosts / 2).unwrap_or(u32::MAX)
    }
}

/// The `n`th address of `subnet` (0 is the network address).
fn nth_address(subnet: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).saturating_add(n))
}

/// A name the kernel and the file system take as it is: letters, digits, `-`, `_`, `.`,
/// not `.` or `..`, at most `max` bytes.
fn valid_name(field: &'static str, name: &str, max: usize) -> Result<(), LocalCellsSettingsError> {
    let charset = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if name.is_empty() || name.len() > max || !charset || name == "." || name == ".." {
        return Err(invalid(
            field,
            format!("{name:?} is not a valid name (1 to {max} letters, digits, `-`, `_` or `.`)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: serde_json::Value) -> Result<LocalCellsSettings, LocalCellsSettingsError> {
        LocalCellsSettings::from_json(value, Path::new("/etc/cellet"))
    }

    #[test]
    fn defaults_take_the_first_addresses_of_the_subnet() {
        let settings = parse(json!({})).unwrap();
        assert_eq!(settings.subnet.to_string(), "10.77.0.0/16");
        assert_eq!(settings.gateway(), Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(settings.host_address(), Ipv4Addr::new(10, 77, 0, 2));
        assert_eq!(
            settings.state_dir,
            PathBuf::from("/var/lib/cellet/local-cells")
        );
        assert!(settings.agent_path().ends_with("cellet-agent"));

        let settings =
            parse(json!({ "subnet": "10.9.8.0/24", "agent": "bin/agent", "state-dir": "state" }))
                .unwrap();
        assert_eq!(
            (settings.gateway(), settings.host_address()),
            (Ipv4Addr::new(10, 9, 8, 1), Ipv4Addr::new(10, 9, 8, 2))
        );
        assert_eq!(
            settings.agent_path(),
            PathBuf::from("/etc/cellet/bin/agent")
        );
        assert_eq!(settings.state_dir, PathBuf::from("/etc/cellet/state"));
    }

    #[test]
    fn every_mistake_names_its_field() {
        for (value, field) in [
            (json!({ "subnet": "10.9.8.1/24" }), "subnet"),
            (json!({ "subnet": "10.9.8.0/30" }), "subnet"),
            (json!({ "gateway": "10.78.0.1" }), "gateway"),
            (json!({ "host-address": "10.77.255.255" }), "host-address"),
            (json!({ "host-address": "10.77.0.1" }), "host-address"),
            (json!({ "bridge": "a-bridge-name-too-long" }), "bridge"),
            (json!({ "vpc-namespace": "../etc" }), "vpc-namespace"),
            (json!({ "uplink": "" }), "uplink"),
            (
                json!({ "subnet": "10.9.8.0/28", "max-cells": 7 }),
                "max-cells",
            ),
            (json!({ "max-cells": 0 }), "max-cells"),
        ] {
            let error = parse(value.clone()).unwrap_err().to_string();
            assert!(error.contains(&format!("`{field}`")), "{value}: {error}");
        }
        let error = parse(json!({ "subnett": "10.0.0.0/8" }))
            .unwrap_err()
            .to_string();
        assert!(error.contains("subnett"), "{error}");
        parse(json!({ "subnet": "10.9.8.0/28", "max-cells": 6 }))
            .expect("12 host addresses hold 6 cells");
    }
}

//! What a component is: its world and contract version, read from the names of its
//! imports and exports, and whether it may go in a slot.
//!
//! The check runs at load time, before any instance exists, so a wrong plugin is refused
//! with an error that names it and says what was expected, instead of failing at the first
//! pod. A component is a `<world>` of contract `X.Y.Z` when it exports
//! `cellet:plugin/<interface>@X.Y.Z` (`network` → `network-strategy`...). Its imports may
//! be WASI 0.2 (linked with a context that grants nothing), the contract's `types` (and
//! those of the older contracts it builds on: 0.2.0 uses `types@0.1.0`), and the
//! capabilities its slot grants, at the version the host implements them
//! ([`CAPABILITIES_VERSION`]: 0.2.0 did not change them and imports them at 0.1.0).

use std::fmt;
use std::str::FromStr;

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::plugins::spec::{Capability, Slot};

/// The WIT package of the contract.
pub const PACKAGE: &str = "cellet:plugin";

/// Contract versions this host links, oldest first. A version appears here once
/// `bindings` has a module for it.
pub const SUPPORTED_VERSIONS: &[ContractVersion] =
    &[ContractVersion::new(0, 1, 0), ContractVersion::new(0, 2, 0)];

/// The version of the capability interfaces (`log`, `ec2`, `local-cells`) the host
/// implements; every supported contract imports them at this version.
pub const CAPABILITIES_VERSION: ContractVersion = ContractVersion::new(0, 1, 0);

/// WASI 0.2 packages `wasmtime_wasi::p2` links (with an empty context).
const WASI_PACKAGES: &[&str] = &[
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:cli/",
    "wasi:filesystem/",
    "wasi:sockets/",
];

/// Why a component may not be loaded into a slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorldError {
    #[error(
        "failed to identify plugin `{plugin}`: it exports no cellet plugin interface (exports: {exports})"
    )]
    NotAPlugin { plugin: String, exports: String },
    #[error(
        "failed to identify plugin `{plugin}`: it exports more than one cellet world ({found})"
    )]
    SeveralWorlds { plugin: String, found: String },
    #[error(
        "failed to load plugin `{plugin}` into slot `{slot}`: the slot expects world `{expected}`, the component is `{found}`"
    )]
    WrongWorld {
        plugin: String,
        slot: Slot,
        expected: &'static str,
        found: &'static str,
    },
    #[error(
        "failed to load plugin `{plugin}`: plugin {plugin} targets {PACKAGE}@{found}; this host supports {supported}"
    )]
    UnsupportedVersion {
        plugin: String,
        found: String,
        supported: String,
    },
    #[error(
        "failed to load plugin `{plugin}`: it mixes contract versions ({import} beside {PACKAGE}@{version})"
    )]
    MixedVersions {
        plugin: String,
        import: String,
        version: ContractVersion,
    },
    #[error(
        "failed to load plugin `{plugin}`: plugin {plugin} imports {import} but slot `{slot}` does not grant `{capability}`"
    )]
    NotGranted {
        plugin: String,
        import: String,
        slot: Slot,
        capability: Capability,
    },
    #[error(
        "failed to load plugin `{plugin}`: it imports {import}, which this host does not provide"
    )]
    UnknownImport { plugin: String, import: String },
}

/// A contract version (`0.1.0`). Pre-release versions are not contracts this host links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContractVersion {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl ContractVersion {
    pub const fn new(major: u64, minor: u64, patch: u64) -> Self {
        ContractVersion {
            major,
            minor,
            patch,
        }
    }
}

impl fmt::Display for ContractVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl FromStr for ContractVersion {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let mut parts = s.split('.').map(|p| {
            // Digits only: `+build` or `-pre` suffixes are not released contracts.
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(());
            }
            p.parse::<u64>().map_err(|_| ())
        });
        let (Some(major), Some(minor), Some(patch), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(());
        };
        Ok(ContractVersion::new(major?, minor?, patch?))
    }
}

/// A `cellet:plugin/<interface>@<version>` name, split.
struct ContractName<'a> {
    interface: &'a str,
    version: &'a str,
}

fn contract_name(name: &str) -> Option<ContractName<'_>> {
    let rest = name.strip_prefix(PACKAGE)?.strip_prefix('/')?;
    let (interface, version) = rest.split_once('@')?;
    Some(ContractName { interface, version })
}

fn slot_of_export(interface: &str) -> Option<Slot> {
    Slot::ALL
        .into_iter()
        .find(|slot| slot.exported_interface() == interface)
}

/// What a component is, from its type alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The slot whose world the component targets.
    pub slot: Slot,
    /// The contract version as the component spells it.
    pub version: String,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

impl Identity {
    /// The world's name (`network-strategy`).
    pub fn world(&self) -> &'static str {
        self.slot.world()
    }
}

/// The import and export names of `component`.
pub fn names(engine: &Engine, component: &Component) -> (Vec<String>, Vec<String>) {
    let ty = component.component_type();
    let imports = ty.imports(engine).map(|(n, _)| n.to_owned()).collect();
    let exports = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();
    (imports, exports)
}

/// The contract version of the first `cellet:plugin` interface among `exports`, whether
/// or not this host supports it.
pub fn package_version(exports: &[String]) -> Option<String> {
    exports
        .iter()
        .find_map(|name| contract_name(name))
        .map(|name| name.version.to_owned())
}

/// Identify the world of a component named `plugin` (the name is for errors).
pub fn identify(
    plugin: &str,
    imports: Vec<String>,
    exports: Vec<String>,
) -> Result<Identity, WorldError> {
    let mut found: Vec<(Slot, &str)> = exports
        .iter()
        .filter_map(|name| {
            let name = contract_name(name)?;
            Some((slot_of_export(name.interface)?, name.version))
        })
        .collect();
    found.dedup();
    let (slot, version) = match found.as_slice() {
        [] => {
            // A contract this host does not know may export interfaces it has never
            // heard of: say so rather than "not a plugin".
            if let Some(version) = exports
                .iter()
                .filter_map(|name| contract_name(name))
                .map(|name| name.version)
                .find(|v| {
                    !v.parse::<ContractVersion>()
                        .is_ok_and(|v| SUPPORTED_VERSIONS.contains(&v))
                })
            {
                return Err(unsupported(plugin, version));
            }
            return Err(WorldError::NotAPlugin {
                plugin: plugin.to_owned(),
                exports: if exports.is_empty() {
                    "none".to_owned()
                } else {
                    exports.join(", ")
                },
            });
        }
        [one] => *one,
        several => {
            return Err(WorldError::SeveralWorlds {
                plugin: plugin.to_owned(),
                found: several
                    .iter()
                    .map(|(slot, v)| format!("{}@{v}", slot.world()))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    };
    let version = version.to_owned();
    Ok(Identity {
        slot,
        version,
        imports,
        exports,
    })
}

fn unsupported(plugin: &str, found: &str) -> WorldError {
    WorldError::UnsupportedVersion {
        plugin: plugin.to_owned(),
        found: found.to_owned(),
        supported: SUPPORTED_VERSIONS
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Refuse `identity` for `slot` unless it is the slot's world, of a supported contract
/// version, importing only what `granted` allows. Returns the version to link.
pub fn check(
    plugin: &str,
    identity: &Identity,
    slot: Slot,
    granted: impl Fn(Capability) -> bool,
) -> Result<ContractVersion, WorldError> {
    let version = identity
        .version
        .parse::<ContractVersion>()
        .ok()
        .filter(|v| SUPPORTED_VERSIONS.contains(v))
        .ok_or_else(|| unsupported(plugin, &identity.version))?;
    // After the version: a newer contract may have moved things, and "upgrade the host"
    // is the error that helps.
    if identity.slot != slot {
        return Err(WorldError::WrongWorld {
            plugin: plugin.to_owned(),
            slot,
            expected: slot.world(),
            found: identity.slot.world(),
        });
    }

    for import in &identity.imports {
        if WASI_PACKAGES.iter().any(|p| import.starts_with(p)) {
            continue;
        }
        let unknown = || WorldError::UnknownImport {
            plugin: plugin.to_owned(),
            import: import.clone(),
        };
        let name = contract_name(import).ok_or_else(unknown)?;
        let mixed = || WorldError::MixedVersions {
            plugin: plugin.to_owned(),
            import: import.clone(),
            version,
        };
        let imported = name
            .version
            .parse::<ContractVersion>()
            .map_err(|_| mixed())?;
        if name.interface == "types" {
            // Its own contract's types, or those of an older contract it builds on.
            if imported > version || !SUPPORTED_VERSIONS.contains(&imported) {
                return Err(mixed());
            }
            continue;
        }
        let capability = name
            .interface
            .parse::<Capability>()
            .map_err(|_| unknown())?;
        if imported != CAPABILITIES_VERSION {
            // A contract that declares no capability of its own (0.2.0 has no `log`)
            // imports nothing by that name at its version.
            return Err(if imported == version {
                unknown()
            } else {
                mixed()
            });
        }
        if !granted(capability) || !slot.grantable().contains(&capability) {
            return Err(WorldError::NotGranted {
                plugin: plugin.to_owned(),
                import: import.clone(),
                slot,
                capability,
            });
        }
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn network_plugin(version: &str, extra_imports: &[&str]) -> Identity {
        let mut imports = strings(&["wasi:cli/environment@0.2.6", "wasi:io/streams@0.2.6"]);
        imports.push(format!("cellet:plugin/types@{version}"));
        imports.push("cellet:plugin/log@0.1.0".to_owned());
        imports.extend(strings(extra_imports));
        identify(
            "net",
            imports,
            vec![format!("cellet:plugin/network@{version}")],
        )
        .unwrap()
    }

    #[test]
    fn the_newest_supported_version_has_bindings() {
        assert_eq!(
            SUPPORTED_VERSIONS
                .last()
                .map(ToString::to_string)
                .as_deref(),
            Some(crate::plugins::bindings::NEWEST_VERSION)
        );
    }

    #[test]
    fn a_newer_contract_with_unknown_interfaces_is_a_version_error() {
        let err = identify("x", vec![], strings(&["cellet:plugin/dns@0.3.0"])).unwrap_err();
        assert!(
            matches!(err, WorldError::UnsupportedVersion { .. }),
            "{err}"
        );
    }

    #[test]
    fn versions_parse_strictly() {
        assert_eq!("0.1.0".parse(), Ok(ContractVersion::new(0, 1, 0)));
        assert_eq!("10.20.30".parse(), Ok(ContractVersion::new(10, 20, 30)));
        for bad in ["0.1", "0.1.0.0", "0.1.0-rc1", "0.1.x", "", "0..1"] {
            assert_eq!(bad.parse::<ContractVersion>(), Err(()), "{bad}");
        }
    }

    #[test]
    fn identifies_the_world_from_the_export() {
        let id = network_plugin("0.1.0", &[]);
        assert_eq!(id.slot, Slot::Network);
        assert_eq!(id.world(), "network-strategy");
        assert_eq!(
            check("net", &id, Slot::Network, |_| true),
            Ok(ContractVersion::new(0, 1, 0))
        );
    }

    #[test]
    fn refuses_the_wrong_world_naming_both() {
        let id = network_plugin("0.1.0", &[]);
        let err = check("net", &id, Slot::Hostport, |_| true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "failed to load plugin `net` into slot `hostport`: the slot expects world `hostport-policy`, the component is `network-strategy`"
        );
    }

    #[test]
    fn refuses_a_newer_contract_naming_both_versions() {
        let id = network_plugin("0.3.0", &[]);
        let err = check("net", &id, Slot::Network, |_| true).unwrap_err();
        assert!(
            err.to_string().ends_with(
                "plugin net targets cellet:plugin@0.3.0; this host supports 0.1.0, 0.2.0"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_0_2_0_plugin_imports_types_of_0_1_0_and_capabilities_at_0_1_0() {
        let id = network_plugin("0.2.0", &["cellet:plugin/types@0.1.0"]);
        assert_eq!(
            check("net", &id, Slot::Network, |_| true),
            Ok(ContractVersion::new(0, 2, 0))
        );
        // 0.2.0 declares no `log` of its own.
        let id = network_plugin("0.2.0", &["cellet:plugin/log@0.2.0"]);
        assert!(matches!(
            check("net", &id, Slot::Network, |_| true),
            Err(WorldError::UnknownImport { .. })
        ));
        // A 0.1.0 plugin cannot use types of a later contract.
        let id = network_plugin("0.1.0", &["cellet:plugin/types@0.2.0"]);
        assert!(matches!(
            check("net", &id, Slot::Network, |_| true),
            Err(WorldError::MixedVersions { .. })
        ));
    }

    #[test]
    fn refuses_an_ungranted_capability() {
        let mut id = network_plugin("0.1.0", &[]);
        id.slot = Slot::Cloud;
        id.imports.push("cellet:plugin/ec2@0.1.0".into());
        let err = check("cloud", &id, Slot::Cloud, |c| c == Capability::Log).unwrap_err();
        assert!(
            err.to_string().ends_with(
                "plugin cloud imports cellet:plugin/ec2@0.1.0 but slot `cloud` does not grant `ec2`"
            ),
            "{err}"
        );
        // A network slot can never grant it, whatever the config says.
        let id = network_plugin("0.1.0", &["cellet:plugin/ec2@0.1.0"]);
        let err = check("net", &id, Slot::Network, |_| true).unwrap_err();
        assert!(
            matches!(
                err,
                WorldError::NotGranted {
                    capability: Capability::Ec2,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn refuses_unknown_and_mixed_imports() {
        let id = network_plugin("0.1.0", &["wasi:http/outgoing-handler@0.2.6"]);
        assert!(matches!(
            check("net", &id, Slot::Network, |_| true),
            Err(WorldError::UnknownImport { .. })
        ));
        let id = network_plugin("0.1.0", &["cellet:plugin/log@0.2.0"]);
        assert!(matches!(
            check("net", &id, Slot::Network, |_| true),
            Err(WorldError::MixedVersions { .. })
        ));
    }

    #[test]
    fn refuses_components_that_are_not_plugins() {
        let err = identify("x", vec![], strings(&["wasi:cli/run@0.2.6"])).unwrap_err();
        assert!(matches!(err, WorldError::NotAPlugin { .. }), "{err}");
        let err = identify(
            "x",
            vec![],
            strings(&[
                "cellet:plugin/network@0.1.0",
                "cellet:plugin/hostport@0.1.0",
            ]),
        )
        .unwrap_err();
        assert!(matches!(err, WorldError::SeveralWorlds { .. }), "{err}");
    }
}

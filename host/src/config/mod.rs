//! The host's config file: one YAML document naming the node and, per slot, the plugin to
//! load and what it is granted. `docs/config.md` documents the format for operators.
//!
//! Parsing never stops at the first problem: [`parse`] walks the whole document, records
//! every problem with its line and field, and returns a [`Draft`] holding whatever parts are
//! valid, so `cellet config check` can still load the plugins of the valid slots and report
//! their problems too. [`Config::load`] is the strict entry point for `cellet run`.

mod cells;
pub mod check;
mod kube_loop;
mod kubelet_api;
mod node_rules;
mod problem;
mod units;
mod yaml;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use cells::CellsConfig;
pub use kubelet_api::{DEFAULT_METRICS_ADDRESS, KubeletApiConfig, KubeletApiListener};
pub use node_rules::NodeRulesConfig;
pub use problem::{Problem, Problems};

use crate::kube::KubeSettings;
use crate::plugins::cache::ComponentCache;
use crate::plugins::capabilities::ec2::Ec2Settings;
use crate::plugins::capabilities::local_cells::LocalCellsSettings;
use crate::plugins::source::{PluginSource, Sha256Digest};
use crate::plugins::{Capability, EngineSettings, Limits, PluginSpec, Slot};
use yaml::{Field, Reader, Section};

/// The kubelet API port, as on every other node.
pub const DEFAULT_KUBELET_PORT: u16 = 10250;

/// Bounds of the per-slot limits. A deadline over 10 minutes would hold a pod worker for
/// longer than any cloud API needs; wasm32 cannot address more than 4 GiB, and a component
/// needs at least a few pages to run at all.
const MAX_DEADLINE: Duration = Duration::from_secs(600);
const MIN_MEMORY_BYTES: u64 = 1 << 20;
const MAX_MEMORY_BYTES: u64 = 4 << 30;
const MAX_INSTANCES: i64 = 1024;

const TOP_KEYS: &[&str] = &[
    "node",
    "plugins",
    "cloud",
    "network",
    "hostport",
    "kube",
    "kubelet-api",
    "node-rules",
    "cells",
];
const NODE_KEYS: &[&str] = &[
    "name",
    "controller-id",
    "internal-ip",
    "kubelet-port",
    "labels",
];
const PLUGINS_KEYS: &[&str] = &[
    "cache-dir",
    "insecure-registries",
    "max-instances",
    "max-memory",
];
const SLOT_KEYS: &[&str] = &[
    "source",
    "sha256",
    "deadline",
    "memory",
    "max-instances",
    "capabilities",
    "config",
    "ec2",
    "local-cells",
];

/// Errors of loading a config file for use.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("failed to read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file was read but is not a valid config; every problem is listed.
    #[error("failed to load config file {path}:\n{problems}")]
    Invalid { path: PathBuf, problems: Problems },
}

/// The smallest valid config, for the tests of the section parsers.
#[cfg(test)]
const MINIMAL: &str = "\
node: {name: n, controller-id: c, internal-ip: 127.0.0.1}
cloud: {source: c.wasm}
network: {source: n.wasm}
hostport: {source: h.wasm}
";

/// A valid config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from; relative paths in it are relative to its directory.
    pub path: PathBuf,
    pub node: NodeConfig,
    pub plugins: PluginsConfig,
    pub cloud: SlotConfig,
    pub network: SlotConfig,
    pub hostport: SlotConfig,
    /// The `kube:` section (the defaults when absent).
    pub kube: KubeSettings,
    /// The `kubelet-api:` section; `None` when absent: neither the kubelet API nor the
    /// metrics address is served.
    pub kubelet_api: Option<KubeletApiConfig>,
    /// The `node-rules:` section (the defaults when absent).
    pub node_rules: NodeRulesConfig,
    /// The `cells:` section (the defaults when absent).
    pub cells: CellsConfig,
}

/// The `node:` section: the identity of the virtual node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// The Node object's name (a DNS subdomain).
    pub name: String,
    /// Durable identity of this controller; every cloud object it owns is tagged with it.
    /// Never generated at start: a new id would orphan every cell of the previous run.
    pub controller_id: String,
    /// The address the API server reaches the kubelet API on. Required: guessing an
    /// interface silently breaks logs and exec when the guess is wrong.
    pub internal_ip: IpAddr,
    pub kubelet_port: u16,
    /// Labels added to the Node object.
    pub labels: BTreeMap<String, String>,
}

/// The `plugins:` section: settings shared by every plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginsConfig {
    /// Where compiled components are cached, and fetched ones (under `oci/`).
    pub cache_dir: PathBuf,
    /// `HOST[:PORT]` of registries reached over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// The engine's instance pool: `max-instances` in total across the slots, and the
    /// largest `memory` a slot may ask for (`max-memory`).
    pub engine: EngineSettings,
    /// Line of the `plugins:` key (1 when absent), for problems of the runtime as a whole.
    pub line: usize,
}

impl PluginsConfig {
    fn defaults(line: usize) -> Self {
        PluginsConfig {
            cache_dir: ComponentCache::default_dir(),
            insecure_registries: Vec::new(),
            engine: EngineSettings::default(),
            line,
        }
    }
}

/// One slot: the plugin to load and the lines its settings came from.
#[derive(Debug, Clone)]
pub struct SlotConfig {
    pub spec: PluginSpec,
    pub source: PluginSource,
    /// The digest the component must have (`sha256:` in the config).
    pub pin: Option<Sha256Digest>,
    /// Line of the slot's `source:`: problems found when loading the plugin (fetch,
    /// digest, world, version, capabilities) are attributed to it.
    pub source_line: usize,
    /// Line of the slot's `config:` (or of `source:` when absent): `init` errors point here.
    pub config_line: usize,
    /// Line of the slot's `memory:` (or of the slot), for the check against the pool.
    pub memory_line: usize,
    /// Region and endpoint of the `ec2` capability: the slot's `ec2:` section, present
    /// exactly when `ec2` is granted.
    pub ec2: Option<Ec2Settings>,
    /// The VPC of the `local-cells` capability: the slot's `local-cells:` section (its
    /// defaults when absent), present exactly when `local-cells` is granted.
    pub local_cells: Option<LocalCellsSettings>,
}

/// What parsing produced: every valid part, and every problem. A slot or section with a
/// problem is `None`.
#[derive(Debug, Clone)]
pub struct Draft {
    pub path: PathBuf,
    pub node: Option<NodeConfig>,
    pub plugins: Option<PluginsConfig>,
    /// Indexed like [`Slot::ALL`].
    pub slots: [Option<SlotConfig>; 3],
    pub kube: Option<KubeSettings>,
    /// `Some(None)` when the section is absent.
    pub kubelet_api: Option<Option<KubeletApiConfig>>,
    pub node_rules: Option<NodeRulesConfig>,
    pub cells: Option<CellsConfig>,
    pub problems: Vec<Problem>,
}

impl Config {
    /// Read and validate a config file; any problem makes it fail, listing them all.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        parse(path, &text).into_config()
    }

    pub fn slot(&self, slot: Slot) -> &SlotConfig {
        match slot {
            Slot::Cloud => &self.cloud,
            Slot::Network => &self.network,
            Slot::Hostport => &self.hostport,
        }
    }
}

impl Draft {
    /// The config, if no problem was found.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let invalid = |problems: Vec<Problem>| ConfigError::Invalid {
            path: self.path.clone(),
            problems: Problems(problems).sorted(),
        };
        let host = (self.kube, self.kubelet_api, self.node_rules, self.cells);
        match (
            self.problems.is_empty(),
            self.node,
            self.plugins,
            self.slots,
            host,
        ) {
            (
                true,
                Some(node),
                Some(plugins),
                [Some(cloud), Some(network), Some(hostport)],
                (Some(kube), Some(kubelet_api), Some(node_rules), Some(cells)),
            ) => Ok(Config {
                path: self.path,
                node,
                plugins,
                cloud,
                network,
                hostport,
                kube,
                kubelet_api,
                node_rules,
                cells,
            }),
            // Every `None` part comes with a problem; this arm is for the non-empty list.
            _ => Err(invalid(self.problems)),
        }
    }
}

/// Parse the text of a config file read from `path`. Relative paths in it (plugin files,
/// the cache directory) are resolved against `path`'s directory.
pub fn parse(path: &Path, text: &str) -> Draft {
    let mut draft = Draft {
        path: path.to_path_buf(),
        node: None,
        plugins: None,
        slots: [None, None, None],
        kube: None,
        kubelet_api: None,
        node_rules: None,
        cells: None,
        problems: Vec::new(),
    };
    let root = match yaml::parse_document(path, text) {
        Ok(root) => root,
        Err(problem) => {
            draft.problems.push(problem);
            return draft;
        }
    };
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut reader = Reader::new(path);
    let top = reader.section(&Field::root(&root), TOP_KEYS);
    if !matches!(root.data, saphyr::YamlData::Mapping(_)) {
        draft.problems = reader.into_problems();
        return draft;
    }

    draft.node = top
        .required(&mut reader, "node", "")
        .and_then(|f| node(&mut reader, &f));
    draft.plugins = match top.get("plugins") {
        Some(field) => plugins(&mut reader, &field, &base_dir),
        None => Some(PluginsConfig::defaults(1)),
    };
    for (i, slot) in Slot::ALL.into_iter().enumerate() {
        let hint = match slot {
            // No implicit policy: hostPorts open ports on the node, so the choice is written
            // down. hostport-nat is the default that ships with cellet.
            Slot::Hostport => "; the shipped default policy is hostport-nat",
            Slot::Cloud | Slot::Network => "",
        };
        draft.slots[i] = top
            .required(&mut reader, slot.config_key(), hint)
            .and_then(|f| slot_config(&mut reader, slot, &f, &base_dir));
    }
    if let Some(plugins) = &draft.plugins {
        check_pool(&mut reader, plugins, &draft.slots);
    }
    draft.kube = kube_loop::kube_settings(&mut reader, top.get("kube").as_ref());
    draft.kubelet_api = match top.get("kubelet-api") {
        Some(f) => {
            kubelet_api::kubelet_api(&mut reader, &f, draft.node.as_ref(), &base_dir).map(Some)
        }
        None => Some(None),
    };
    draft.node_rules = node_rules::node_rules(&mut reader, top.get("node-rules").as_ref());
    draft.cells = cells::cells(&mut reader, top.get("cells").as_ref(), &base_dir);
    draft.problems = Problems(reader.into_problems()).sorted().0;
    draft
}

fn node(reader: &mut Reader, field: &Field<'_, '_>) -> Option<NodeConfig> {
    let section = reader.section(field, NODE_KEYS);
    let name = section.required(reader, "name", "").and_then(|f| {
        let name = reader.string(&f)?;
        valid_dns_subdomain(&name).then_some(name.clone()).or_else(|| {
            reader.report(f.line, &f.path, format!("`{name}` is not a valid node name (lowercase letters, digits, `-` and `.`, at most 253)"));
            None
        })
    });
    let controller_id = section.required(reader, "controller-id", "").and_then(|f| {
        let id = reader.string(&f)?;
        valid_label_value(&id).then_some(id.clone()).or_else(|| {
            reader.report(
                f.line,
                &f.path,
                format!("`{id}` is not a valid controller id: it is written as a cloud tag and a label value, so 1 to 63 letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit"),
            );
            None
        })
    });
    let internal_ip = section.required(reader, "internal-ip", "").and_then(|f| {
        let text = reader.string(&f)?;
        text.parse::<IpAddr>().ok().or_else(|| {
            reader.report(f.line, &f.path, format!("`{text}` is not an IP address"));
            None
        })
    });
    let kubelet_port = match section.get("kubelet-port") {
        Some(f) => reader.integer(&f, 1, i64::from(u16::MAX)).map(|p| p as u16),
        None => Some(DEFAULT_KUBELET_PORT),
    };
    let labels = match section.get("labels") {
        Some(f) => labels(reader, &f),
        None => Some(BTreeMap::new()),
    };
    Some(NodeConfig {
        name: name?,
        controller_id: controller_id?,
        internal_ip: internal_ip?,
        kubelet_port: kubelet_port?,
        labels: labels?,
    })
}

fn labels(reader: &mut Reader, field: &Field<'_, '_>) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (key, at, value) in reader.string_map(field)? {
        if !valid_label_key(&key) {
            reader.report(at.line, &at.path, "not a valid label key ([prefix/]name, name 1 to 63 letters, digits, `-`, `_` or `.`)");
            ok = false;
        } else if !value.is_empty() && !valid_label_value(&value) {
            reader.report(
                at.line,
                &at.path,
                format!("`{value}` is not a valid label value"),
            );
            ok = false;
        } else {
            out.insert(key, value);
        }
    }
    ok.then_some(out)
}

fn plugins(reader: &mut Reader, field: &Field<'_, '_>, base_dir: &Path) -> Option<PluginsConfig> {
    let section = reader.section(field, PLUGINS_KEYS);
    let defaults = PluginsConfig::defaults(field.line);
    let cache_dir = match section.get("cache-dir") {
        Some(f) => reader.string(&f).map(|dir| base_dir.join(dir)),
        None => Some(defaults.cache_dir.clone()),
    };
    let insecure_registries = match section.get("insecure-registries") {
        Some(f) => {
            let items = reader.list(&f)?;
            let registries: Vec<_> = items
                .iter()
                .filter_map(|item| reader.string(item))
                .collect();
            (registries.len() == items.len()).then_some(registries)
        }
        None => Some(Vec::new()),
    };
    let max_instances = optional(reader, &section, "max-instances", |reader, f| {
        reader.integer(f, 1, MAX_INSTANCES).map(|n| n as u32)
    });
    let max_memory = optional(reader, &section, "max-memory", memory_size);
    let engine = EngineSettings {
        max_instances: max_instances?.unwrap_or(defaults.engine.max_instances),
        max_memory_bytes: max_memory?.unwrap_or(defaults.engine.max_memory_bytes),
        ..defaults.engine
    };
    Some(PluginsConfig {
        cache_dir: cache_dir?,
        insecure_registries: insecure_registries?,
        engine,
        line: field.line,
    })
}

/// Every slot must fit the engine's pool: its `memory` within `plugins.max-memory`, and
/// the slots' `max-instances` together within `plugins.max-instances`.
fn check_pool(reader: &mut Reader, plugins: &PluginsConfig, slots: &[Option<SlotConfig>; 3]) {
    let engine = &plugins.engine;
    for slot in slots.iter().flatten() {
        if slot.spec.limits.memory_bytes > engine.max_memory_bytes {
            reader.report(
                slot.memory_line,
                format!("{}.memory", slot.spec.slot),
                format!(
                    "{} bytes is more than plugins.max-memory ({} bytes)",
                    slot.spec.limits.memory_bytes, engine.max_memory_bytes
                ),
            );
        }
    }
    let wanted: u32 = slots
        .iter()
        .flatten()
        .map(|s| s.spec.limits.max_instances)
        .sum();
    if wanted > engine.max_instances {
        reader.report(
            plugins.line,
            "plugins.max-instances",
            format!(
                "the slots ask for {wanted} instances in total, more than the {} allowed",
                engine.max_instances
            ),
        );
    }
}

/// A memory size within what a plugin can use.
fn memory_size(reader: &mut Reader, f: &Field<'_, '_>) -> Option<u64> {
    let text = reader.string_or_integer(f)?;
    match units::parse_bytes(&text) {
        Ok(b) if (MIN_MEMORY_BYTES..=MAX_MEMORY_BYTES).contains(&b) => Some(b),
        Ok(_) => {
            reader.report(
                f.line,
                &f.path,
                format!("`{text}` is out of range (1Mi to 4Gi)"),
            );
            None
        }
        Err(e) => {
            reader.report(f.line, &f.path, e);
            None
        }
    }
}

fn slot_config(
    reader: &mut Reader,
    slot: Slot,
    field: &Field<'_, '_>,
    base_dir: &Path,
) -> Option<SlotConfig> {
    let section: Section<'_, '_> = reader.section(field, SLOT_KEYS);
    let source_field = section.required(
        reader,
        "source",
        " (a file path or oci://HOST/REPOSITORY:TAG)",
    );
    let source_line = source_field.as_ref().map_or(section.field.line, |f| f.line);
    let source = source_field.and_then(|f| {
        let text = reader.string(&f)?;
        PluginSource::parse(&text, base_dir)
            .map_err(|e| reader.report(f.line, &f.path, e.to_string()))
            .ok()
    });
    let pin = optional(reader, &section, "sha256", |reader, f| {
        let text = reader.string(f)?;
        text.parse::<Sha256Digest>()
            .map_err(|e| reader.report(f.line, &f.path, e.to_string()))
            .ok()
    });
    let defaults = Limits::default_for(slot);
    let deadline = optional(reader, &section, "deadline", |reader, f| {
        // A bare number is read too, so that the message can ask for a unit.
        let text = reader.string_or_integer(f)?;
        match units::parse_duration(&text) {
            Ok(d) if !d.is_zero() && d <= MAX_DEADLINE => Some(d),
            Ok(_) => {
                reader.report(
                    f.line,
                    &f.path,
                    format!(
                        "`{text}` is out of range (more than 0, at most {})",
                        humantime::format_duration(MAX_DEADLINE)
                    ),
                );
                None
            }
            Err(e) => {
                reader.report(f.line, &f.path, e);
                None
            }
        }
    });
    let memory_line = section.line_of("memory");
    let memory = optional(reader, &section, "memory", memory_size);
    let max_instances = optional(reader, &section, "max-instances", |reader, f| {
        reader.integer(f, 1, MAX_INSTANCES).map(|n| n as u32)
    });
    let grants = match section.get("capabilities") {
        Some(f) => capabilities(reader, slot, &f),
        None => Some(vec![Capability::Log]),
    };
    let ec2 = ec2_settings(reader, slot, &section, grants.as_deref());
    let local_cells = local_cells_settings(reader, slot, &section, grants.as_deref(), base_dir);
    let config_field = section.get("config");
    let config_line = config_field.as_ref().map_or(source_line, |f| f.line);
    let config = match &config_field {
        Some(f) => reader.json(f),
        None => Some(serde_json::Value::Object(serde_json::Map::new())),
    };

    let limits = Limits {
        deadline: deadline?.unwrap_or(defaults.deadline),
        memory_bytes: memory?.unwrap_or(defaults.memory_bytes),
        max_instances: max_instances?.unwrap_or(defaults.max_instances),
    };
    let spec = PluginSpec {
        name: slot.config_key().to_string(),
        slot,
        limits,
        grants: grants?,
        config: config?,
    };
    Some(SlotConfig {
        spec,
        source: source?,
        pin: pin?,
        source_line,
        config_line,
        memory_line,
        ec2: ec2?,
        local_cells: local_cells?,
    })
}

/// The slot's `ec2:` section. It goes with the `ec2` grant both ways: a grant without
/// settings cannot be served (the host never guesses a region), and settings without the
/// grant are a config that does not say what its author meant.
fn ec2_settings(
    reader: &mut Reader,
    slot: Slot,
    section: &Section<'_, '_>,
    grants: Option<&[Capability]>,
) -> Option<Option<Ec2Settings>> {
    let granted = grants.map(|g| g.contains(&Capability::Ec2));
    match (section.get("ec2"), granted) {
        (Some(f), _) if slot != Slot::Cloud => {
            reader.report(f.line, &f.path, "only the cloud slot can be granted ec2");
            None
        }
        (Some(f), Some(false)) => {
            reader.report(
                f.line,
                &f.path,
                "ec2 settings without the ec2 capability (add `ec2` to `capabilities`)",
            );
            None
        }
        (Some(f), _) => {
            let value = reader.json(&f)?;
            Ec2Settings::from_json(value)
                .map(Some)
                .map_err(|e| reader.report(f.line, &f.path, e.to_string()))
                .ok()
        }
        (None, Some(true)) => {
            reader.report(
                section.line_of("capabilities"),
                section.path_of("capabilities"),
                "`ec2` is granted but the slot has no `ec2:` section (`ec2: {region: us-east-1}`, optionally `endpoint:`)",
            );
            None
        }
        (None, _) => Some(None),
    }
}

/// The slot's `local-cells:` section. Every key has a default, so the grant alone is
/// enough; the section without the grant, or on another slot than `cloud`, is a mistake.
fn local_cells_settings(
    reader: &mut Reader,
    slot: Slot,
    section: &Section<'_, '_>,
    grants: Option<&[Capability]>,
    base_dir: &Path,
) -> Option<Option<LocalCellsSettings>> {
    let granted = grants.map(|g| g.contains(&Capability::LocalCells));
    match (section.get("local-cells"), granted) {
        (Some(f), _) if slot != Slot::Cloud => {
            reader.report(
                f.line,
                &f.path,
                "only the cloud slot can be granted local-cells",
            );
            None
        }
        (Some(f), Some(false)) => {
            reader.report(f.line, &f.path, "local-cells settings without the local-cells capability (add `local-cells` to `capabilities`)");
            None
        }
        (Some(f), _) => {
            let value = reader.json(&f)?;
            LocalCellsSettings::from_json(value, base_dir)
                .map(Some)
                .map_err(|e| reader.report(f.line, &f.path, e.to_string()))
                .ok()
        }
        (None, Some(true)) => Some(Some(LocalCellsSettings::default())),
        (None, _) => Some(None),
    }
}

/// An optional field: `Some(None)` when absent, `Some(Some(v))` when valid, `None` when
/// present but invalid (the problem is already reported).
fn optional<T>(
    reader: &mut Reader,
    section: &Section<'_, '_>,
    key: &str,
    read: impl FnOnce(&mut Reader, &Field<'_, '_>) -> Option<T>,
) -> Option<Option<T>> {
    match section.get(key) {
        Some(f) => read(reader, &f).map(Some),
        None => Some(None),
    }
}

/// The granted capabilities: known names, grantable to this slot; `log` is always added.
fn capabilities(reader: &mut Reader, slot: Slot, field: &Field<'_, '_>) -> Option<Vec<Capability>> {
    let mut grants = vec![Capability::Log];
    let mut ok = true;
    for item in reader.list(field)? {
        let Some(name) = reader.string(&item) else {
            ok = false;
            continue;
        };
        match name.parse::<Capability>() {
            Ok(cap) if slot.grantable().contains(&cap) => {
                if !grants.contains(&cap) {
                    grants.push(cap);
                }
            }
            Ok(cap) => {
                let grantable: Vec<_> = slot.grantable().iter().map(|c| c.name()).collect();
                reader.report(
                    item.line,
                    &item.path,
                    format!(
                        "capability `{cap}` cannot be granted to slot {slot} (grantable: {})",
                        grantable.join(", ")
                    ),
                );
                ok = false;
            }
            Err(message) => {
                reader.report(item.line, &item.path, message);
                ok = false;
            }
        }
    }
    ok.then_some(grants)
}

/// A DNS-1123 subdomain, which Node names must be.
fn valid_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A Kubernetes label value (non-empty here), which is also a valid cloud tag value.
fn valid_label_value(value: &str) -> bool {
    (1..=63).contains(&value.len())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A Kubernetes label key: `[prefix/]name`, the prefix a DNS subdomain.
fn valid_label_key(key: &str) -> bool {
    match key.rsplit_once('/') {
        Some((prefix, name)) => {
            !prefix.is_empty() && valid_dns_subdomain(prefix) && valid_label_value(name)
        }
        None => valid_label_value(key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
node:
  name: cellet-0
  controller-id: 4f9c2a
  internal-ip: 127.0.0.1
  labels:
    topology.kubernetes.io/zone: local-a
plugins:
  cache-dir: cache
cloud:
  source: oci://127.0.0.1:5000/cellet/local-cells:0.1.0
  deadline: 30s
  memory: 32Mi
  max-instances: 2
  capabilities: [local-cells]
  config:
    subnet: 10.77.0.0/16
    sizes: [1, 2.5, true, null]
network:
  source: plugins/vpc-native.wasm
hostport:
  source: plugins/hostport-nat.wasm
";

    fn problems(text: &str) -> Vec<String> {
        parse(Path::new("cellet.yaml"), text)
            .problems
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_good_config_maps_each_slot_to_a_spec_and_a_source() {
        let config = parse(Path::new("/etc/cellet/cellet.yaml"), GOOD)
            .into_config()
            .unwrap();
        assert_eq!(config.node.name, "cellet-0");
        assert_eq!(config.node.kubelet_port, DEFAULT_KUBELET_PORT);
        assert_eq!(config.node.labels["topology.kubernetes.io/zone"], "local-a");
        assert_eq!(config.plugins.cache_dir, PathBuf::from("/etc/cellet/cache"));

        let cloud = config.slot(Slot::Cloud);
        assert_eq!(
            cloud.spec.limits,
            Limits {
                deadline: Duration::from_secs(30),
                memory_bytes: 32 << 20,
                max_instances: 2
            }
        );
        assert_eq!(
            cloud.spec.grants,
            vec![Capability::Log, Capability::LocalCells]
        );
        assert_eq!(
            cloud.spec.config,
            serde_json::json!({"subnet": "10.77.0.0/16", "sizes": [1, 2.5, true, null]})
        );
        assert_eq!((cloud.source_line, cloud.config_line), (10, 15));

        let network = config.slot(Slot::Network);
        assert_eq!(
            network.source,
            PluginSource::File(PathBuf::from("/etc/cellet/plugins/vpc-native.wasm"))
        );
        assert_eq!(network.spec.limits, Limits::default_for(Slot::Network));
        assert_eq!(network.spec.grants, vec![Capability::Log]);
        assert_eq!(network.spec.config, serde_json::json!({}));
        assert_eq!(network.config_line, network.source_line);
    }

    #[test]
    fn every_problem_is_reported_with_its_line_and_field() {
        let text = GOOD
            .replace(
                "  controller-id: 4f9c2a\n",
                "  controller-id: 4f9c2a\n  colour: blue\n",
            )
            .replace(
                "capabilities: [local-cells]",
                "capabilities: [local-cells, s3]",
            )
            .replace("deadline: 30s", "deadline: 30")
            .replace("network:\n", "network:\n  capabilities: [ec2]\n");
        let found = problems(&text);
        assert_eq!(
            found,
            vec![
                "cellet.yaml:4: node.colour: unknown field (known: name, controller-id, internal-ip, kubelet-port, labels)",
                "cellet.yaml:12: cloud.deadline: `30` has no unit (write e.g. `30s` or `30ms`)",
                "cellet.yaml:15: cloud.capabilities[1]: unknown capability `s3` (known: log, ec2, local-cells)",
                "cellet.yaml:20: network.capabilities[0]: capability `ec2` cannot be granted to slot network (grantable: log)",
            ],
        );
    }

    #[test]
    fn missing_sections_and_wrong_kinds_are_named() {
        let found = problems(
            "node:\n  name: Cellet_0\n  controller-id: 12\n  kubelet-port: 70000\ncloud: oops\n",
        );
        assert_eq!(
            found,
            vec![
                "cellet.yaml:1: node.internal-ip: missing (required)",
                "cellet.yaml:1: network: missing (required)",
                "cellet.yaml:1: hostport: missing (required); the shipped default policy is hostport-nat",
                "cellet.yaml:2: node.name: `Cellet_0` is not a valid node name (lowercase letters, digits, `-` and `.`, at most 253)",
                "cellet.yaml:3: node.controller-id: expected a string, found an integer (quote it)",
                "cellet.yaml:4: node.kubelet-port: 70000 is out of range (1..=65535)",
                "cellet.yaml:5: cloud: expected a mapping, found a string",
            ],
        );
    }

    #[test]
    fn the_ec2_section_goes_with_the_ec2_grant() {
        let granted = GOOD.replace(
            "capabilities: [local-cells]",
            "capabilities: [ec2]\n  ec2: {region: us-east-1, endpoint: \"http://127.0.0.1:5000\"}",
        );
        let config = parse(Path::new("cellet.yaml"), &granted)
            .into_config()
            .unwrap();
        let ec2 = config.cloud.ec2.expect("ec2 settings");
        assert_eq!(
            (ec2.region.as_str(), ec2.endpoint.as_deref()),
            ("us-east-1", Some("http://127.0.0.1:5000"))
        );

        let without_settings = GOOD.replace("capabilities: [local-cells]", "capabilities: [ec2]");
        assert_eq!(
            problems(&without_settings),
            vec![
                "cellet.yaml:14: cloud.capabilities: `ec2` is granted but the slot has no `ec2:` section (`ec2: {region: us-east-1}`, optionally `endpoint:`)"
            ]
        );
        let without_grant = GOOD.replace(
            "capabilities: [local-cells]",
            "capabilities: [local-cells]\n  ec2: {region: us-east-1}",
        );
        assert_eq!(
            problems(&without_grant),
            vec![
                "cellet.yaml:15: cloud.ec2: ec2 settings without the ec2 capability (add `ec2` to `capabilities`)"
            ]
        );
        let bad_region = GOOD.replace(
            "capabilities: [local-cells]",
            "capabilities: [ec2]\n  ec2: {region: Mars}",
        );
        let found = problems(&bad_region);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("cellet.yaml:15: cloud.ec2: ") && found[0].contains("Mars"),
            "{found:?}"
        );
        let on_network = GOOD.replace("network:\n", "network:\n  ec2: {region: us-east-1}\n");
        assert_eq!(
            problems(&on_network),
            vec!["cellet.yaml:19: network.ec2: only the cloud slot can be granted ec2"]
        );
    }

    #[test]
    fn the_local_cells_section_goes_with_the_local_cells_grant() {
        let config = parse(Path::new("/etc/cellet/cellet.yaml"), GOOD)
            .into_config()
            .unwrap();
        assert_eq!(
            config.cloud.local_cells,
            Some(LocalCellsSettings::default()),
            "the grant alone takes the defaults"
        );
        assert_eq!(config.network.local_cells, None);

        let section = GOOD.replace(
            "capabilities: [local-cells]",
            "capabilities: [local-cells]\n  local-cells: {subnet: 10.9.0.0/24, state-dir: state, max-cells: 4}",
        );
        let settings = parse(Path::new("/etc/cellet/cellet.yaml"), &section)
            .into_config()
            .unwrap()
            .cloud
            .local_cells
            .unwrap();
        assert_eq!(settings.subnet.to_string(), "10.9.0.0/24");
        assert_eq!(settings.state_dir, PathBuf::from("/etc/cellet/state"));
        assert_eq!(settings.max_cells, 4);

        let bad = GOOD.replace(
            "capabilities: [local-cells]",
            "capabilities: [local-cells]\n  local-cells: {gateway: 10.1.0.1}",
        );
        let found = problems(&bad);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("cellet.yaml:15: cloud.local-cells: ")
                && found[0].contains("`gateway`"),
            "{found:?}"
        );
        let on_network = GOOD.replace("network:\n", "network:\n  local-cells: {}\n");
        assert_eq!(
            problems(&on_network),
            vec![
                "cellet.yaml:19: network.local-cells: only the cloud slot can be granted local-cells"
            ]
        );
        let without_grant = GOOD.replace(
            "capabilities: [local-cells]",
            "capabilities: []\n  local-cells: {}",
        );
        assert_eq!(
            problems(&without_grant),
            vec![
                "cellet.yaml:15: cloud.local-cells: local-cells settings without the local-cells capability (add `local-cells` to `capabilities`)"
            ]
        );
    }

    #[test]
    fn yaml_syntax_errors_and_empty_files_are_problems() {
        assert_eq!(
            problems(""),
            vec!["cellet.yaml:1: (file): the file is empty"]
        );
        let found = problems("node:\n  name: [unclosed\n");
        assert_eq!(found.len(), 1);
        assert!(
            found[0].starts_with("cellet.yaml:") && found[0].contains("failed to parse YAML"),
            "{found:?}"
        );
        let found = problems("node: {}\nnode: {}\n");
        assert!(found[0].contains("duplicated key"), "{found:?}");
    }

    #[test]
    fn bad_sources_pins_and_limits_point_at_their_lines() {
        let text = GOOD
            .replace(
                "source: oci://127.0.0.1:5000/cellet/local-cells:0.1.0",
                "source: oci://127.0.0.1:5000/cellet/local-cells\n  sha256: abc",
            )
            .replace("memory: 32Mi", "memory: 8Gi")
            .replace("max-instances: 2", "max-instances: 0");
        let found = problems(&text);
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(
            found[0].starts_with("cellet.yaml:10: cloud.source: invalid plugin source"),
            "{found:?}"
        );
        assert!(
            found[1].starts_with("cellet.yaml:11: cloud.sha256: invalid sha256 digest `abc`"),
            "{found:?}"
        );
        assert!(
            found[2].starts_with("cellet.yaml:13: cloud.memory: `8Gi` is out of range"),
            "{found:?}"
        );
        assert!(
            found[3].starts_with("cellet.yaml:14: cloud.max-instances: 0 is out of range"),
            "{found:?}"
        );
    }
}

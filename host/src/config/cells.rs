//! The `cells:` section: how the host and the cell agents trust each other and what each
//! agent is told at boot. Every key is optional.
//!
//! ```yaml
//! cells:
//!   ca-dir: /var/lib/cellet/cell-ca       # the CA agents and host trust; kept across restarts
//!   agent-port: 4443                      # agents listen on their management IP only
//!   agent-state-dir: /var/lib/cellet-agent   # each agent uses <dir>/<pod-uid>
//!   management-interface: eth0
//!   insecure-registries: ["10.77.0.2:5000"]  # pulled over plain HTTP
//! ```

use std::path::{Path, PathBuf};

use cellet_agent::protocol::{AGENT_PORT, DEFAULT_MANAGEMENT_INTERFACE, DEFAULT_STATE_DIR};

use super::optional;
use super::yaml::{Field, Reader};

const KEYS: &[&str] = &[
    "ca-dir",
    "agent-port",
    "agent-state-dir",
    "management-interface",
    "insecure-registries",
];

/// Where the CA lives unless configured: it must outlive the process, since running agents
/// trust only it.
pub const DEFAULT_CA_DIR: &str = "/var/lib/cellet/cell-ca";

/// The `cells:` section; the defaults when it is absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellsConfig {
    pub ca_dir: PathBuf,
    pub agent_port: u16,
    pub agent_state_dir: PathBuf,
    pub management_interface: String,
    /// Registries (`host:port`) agents pull from over plain HTTP.
    pub insecure_registries: Vec<String>,
}

impl Default for CellsConfig {
    fn default() -> Self {
        CellsConfig {
            ca_dir: PathBuf::from(DEFAULT_CA_DIR),
            agent_port: AGENT_PORT,
            agent_state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            management_interface: DEFAULT_MANAGEMENT_INTERFACE.to_string(),
            insecure_registries: Vec::new(),
        }
    }
}

pub(super) fn cells(
    reader: &mut Reader,
    field: Option<&Field<'_, '_>>,
    base_dir: &Path,
) -> Option<CellsConfig> {
    let Some(field) = field else {
        return Some(CellsConfig::default());
    };
    let section = reader.section(field, KEYS);
    let defaults = CellsConfig::default();
    let ca_dir = optional(reader, &section, "ca-dir", |reader, f| {
        reader.string(f).map(|p| base_dir.join(p))
    });
    let agent_port = optional(reader, &section, "agent-port", |reader, f| {
        reader.integer(f, 1, 65535).map(|p| p as u16)
    });
    let agent_state_dir = optional(reader, &section, "agent-state-dir", |reader, f| {
        let text = reader.string(f)?;
        // The agent runs in another filesystem view on a real cloud: only an absolute path
        // means the same there.
        if Path::new(&text).is_absolute() {
            Some(PathBuf::from(text))
        } else {
            reader.report(f.line, &f.path, format!("`{text}` is not an absolute path"));
            None
        }
    });
    let interface = optional(reader, &section, "management-interface", |reader, f| {
        reader.string(f)
    });
    let registries = optional(reader, &section, "insecure-registries", |reader, f| {
        let items = reader.list(f)?;
        let mut out = Vec::new();
        for item in &items {
            let text = reader.string(item)?;
            if text.is_empty() || text.contains('/') {
                reader.report(
                    item.line,
                    &item.path,
                    format!("`{text}` is not a registry `host[:port]`"),
                );
                return None;
            }
            out.push(text);
        }
        Some(out)
    });
    Some(CellsConfig {
        ca_dir: ca_dir?.unwrap_or(defaults.ca_dir),
        agent_port: agent_port?.unwrap_or(defaults.agent_port),
        agent_state_dir: agent_state_dir?.unwrap_or(defaults.agent_state_dir),
        management_interface: interface?.unwrap_or(defaults.management_interface),
        insecure_registries: registries?.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::parse;

    /// The smallest valid config; each test adds the section under test.
    const BASE: &str = crate::config::MINIMAL;

    #[test]
    fn defaults_when_absent_and_relative_ca_dirs_follow_the_file() {
        let draft = parse(Path::new("/etc/cellet/c.yaml"), BASE);
        assert_eq!(draft.cells, Some(CellsConfig::default()));
        let text =
            format!("{BASE}cells: {{ca-dir: ca, insecure-registries: [\"10.77.0.2:5000\"]}}\n");
        let cells = parse(Path::new("/etc/cellet/c.yaml"), &text).cells.unwrap();
        assert_eq!(cells.ca_dir, PathBuf::from("/etc/cellet/ca"));
        assert_eq!(
            cells.insecure_registries,
            vec!["10.77.0.2:5000".to_string()]
        );
    }

    #[test]
    fn bad_values_are_located() {
        let text = format!(
            "{BASE}cells:\n  agent-state-dir: state\n  insecure-registries: [\"http://x/\"]\n"
        );
        let found: Vec<String> = parse(Path::new("c.yaml"), &text)
            .problems
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            found
                .iter()
                .any(|p| p.contains("c.yaml:6: cells.agent-state-dir")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.contains("c.yaml:7: cells.insecure-registries[0]")),
            "{found:?}"
        );
    }
}

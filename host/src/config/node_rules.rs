//! The `node-rules:` section: where the host writes the node's hostPort rules. The
//! hostport *policy* (which mappings a pod gets) is the `hostport:` slot's plugin; this
//! section is about the host's own act of installing them, so it sits beside the slots
//! rather than in one.

use super::optional;
use super::yaml::{Field, Reader};
use crate::net::hostport::{Backend, NetNamespace};

const KEYS: &[&str] = &["backend", "network-namespace"];

/// The `node-rules:` section; the defaults when it is absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRulesConfig {
    /// nftables (default) or iptables.
    pub backend: Backend,
    /// The network namespace the rules go into: the host's own by default. A named one
    /// (`/run/netns/NAME`) is for tests and benchmarks that must not touch the machine's
    /// rules, and for hosts whose node address lives in a namespace of its own.
    pub netns: NetNamespace,
}

impl Default for NodeRulesConfig {
    fn default() -> Self {
        NodeRulesConfig {
            backend: Backend::default(),
            netns: NetNamespace::Current,
        }
    }
}

pub(super) fn node_rules(
    reader: &mut Reader,
    field: Option<&Field<'_, '_>>,
) -> Option<NodeRulesConfig> {
    let Some(field) = field else {
        return Some(NodeRulesConfig::default());
    };
    let section = reader.section(field, KEYS);
    let backend = optional(reader, &section, "backend", |reader, f| {
        let text = reader.string(f)?;
        text.parse::<Backend>()
            .map_err(|e| reader.report(f.line, &f.path, e))
            .ok()
    });
    let netns = optional(reader, &section, "network-namespace", |reader, f| {
        let name = reader.string(f)?;
        // The name becomes a file under /run/netns and an argument of `ip netns exec`.
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            && !name.starts_with('.');
        valid.then_some(NetNamespace::Named(name.clone())).or_else(|| {
            reader.report(f.line, &f.path, format!("`{name}` is not a network namespace name (1 to 64 letters, digits, `.`, `_`, `-`)"));
            None
        })
    });
    Some(NodeRulesConfig {
        backend: backend?.unwrap_or_default(),
        netns: netns?.unwrap_or(NetNamespace::Current),
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
    fn nftables_in_the_hosts_namespace_by_default() {
        let draft = parse(Path::new("c.yaml"), BASE);
        assert_eq!(
            draft.node_rules,
            Some(NodeRulesConfig {
                backend: Backend::Nftables,
                netns: NetNamespace::Current
            })
        );
        let text =
            format!("{BASE}node-rules: {{backend: iptables, network-namespace: cellet-test}}\n");
        let draft = parse(Path::new("c.yaml"), &text);
        assert_eq!(
            draft.node_rules,
            Some(NodeRulesConfig {
                backend: Backend::Iptables,
                netns: NetNamespace::Named("cellet-test".into())
            })
        );
    }

    #[test]
    fn unknown_backends_and_bad_names_are_located() {
        let text = format!("{BASE}node-rules:\n  backend: ipvs\n  network-namespace: \"../etc\"\n");
        let found: Vec<String> = parse(Path::new("c.yaml"), &text)
            .problems
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            vec![
                "c.yaml:6: node-rules.backend: unknown hostPort backend `ipvs` (known: nftables, iptables)",
                "c.yaml:7: node-rules.network-namespace: `../etc` is not a network namespace name (1 to 64 letters, digits, `.`, `_`, `-`)",
            ]
        );
    }
}

//! {{name}}: a cellet hostPort policy.
//!
//! Admits a pod's hostPorts when it declares at most `max-ports` of them, then applies the
//! collision rules every policy keeps (`cellet_sdk::hostport::ports`). Add your own rules
//! in `admit`, before the collision rules.

use cellet_sdk::hostport::{Admission, HostportPolicy, NodeMappings, ports};
use cellet_sdk::pod::PodView;
use cellet_sdk::{InitContext, PluginError};
use serde::Deserialize;

fn default_max_ports() -> usize {
    8
}

/// The slot's `config:` section. Keys are kebab-case; unknown keys are errors.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Config {
    /// Most hostPorts one pod may declare.
    #[serde(default = "default_max_ports")]
    max_ports: usize,
}

#[derive(Debug)]
pub struct Policy {
    max_ports: usize,
}

impl HostportPolicy for Policy {
    fn init(ctx: InitContext) -> Result<Self, PluginError> {
        let config: Config = cellet_sdk::config(&ctx)?;
        Ok(Policy { max_ports: config.max_ports })
    }

    fn admit(&self, pod: PodView, existing: NodeMappings) -> Result<Admission, PluginError> {
        let wanted = ports::declared(&pod)?;
        if wanted.len() > self.max_ports {
            return Ok(Admission::Deny(format!(
                "pod {} declares {} hostPorts, more than `max-ports` ({})",
                pod.key(),
                wanted.len(),
                self.max_ports
            )));
        }
        ports::admit(&pod, wanted, &existing)
    }
}

cellet_sdk::export_hostport_policy!(Policy);

#[cfg(test)]
mod tests {
    use cellet_sdk::testing::{MappingBuilder, PodBuilder, context};
    use serde_json::json;

    use super::*;

    #[test]
    fn limits_ports_then_refuses_collisions() {
        let policy = Policy::init(context(json!({ "max-ports": 1 }))).unwrap();
        let two = PodBuilder::new("default", "two").host_port(8080, 80).host_port(8443, 443).build();
        let none = NodeMappings::list(&[]);
        assert!(matches!(policy.admit(two.view(), none).unwrap(), Admission::Deny(reason) if reason.contains("max-ports")));

        let web = PodBuilder::new("default", "web").host_port(8080, 80).build();
        let held = MappingBuilder::new("default", "old", 8080).build();
        let on_node = [held];
        assert!(matches!(policy.admit(web.view(), NodeMappings::list(&on_node)).unwrap(), Admission::Deny(_)));
        assert!(matches!(policy.admit(web.view(), NodeMappings::list(&[])).unwrap(), Admission::Admit(mappings) if mappings.len() == 1));
    }
}

//! {{name}}: a cellet network strategy.
//!
//! Pods keep an address from the VPC and leave through the subnet's router; traffic to
//! the CIDRs in `no-masquerade` keeps the pod's own source address. Change `plan_pod`,
//! `plan_node` and `plan_routes` to make the strategy your own.

use cellet_sdk::net;
use cellet_sdk::network::{NetworkStrategy, PodNetworkPlan, vpc_pod_plan};
use cellet_sdk::pod::PodView;
use cellet_sdk::{InitContext, PluginError};
use serde::Deserialize;

/// The slot's `config:` section. Keys are kebab-case; unknown keys are errors.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Config {
    /// CIDRs reached without masquerading: the VPC and the cluster's pods.
    no_masquerade: Vec<String>,
}

#[derive(Debug)]
pub struct Strategy {
    no_masquerade: Vec<String>,
}

impl NetworkStrategy for Strategy {
    fn init(ctx: InitContext) -> Result<Self, PluginError> {
        let config: Config = cellet_sdk::config(&ctx)?;
        let cidrs = net::parse_cidrs("no-masquerade", &config.no_masquerade)
            .map_err(net::NetError::into_config_error)?;
        Ok(Strategy { no_masquerade: cidrs.iter().map(ToString::to_string).collect() })
    }

    fn plan_pod(&self, pod: PodView) -> Result<PodNetworkPlan, PluginError> {
        Ok(vpc_pod_plan(&pod, self.no_masquerade.clone(), None))
    }

    // `plan_node` and `plan_routes` keep their defaults: no cloud route, none managed.
}

cellet_sdk::export_network_strategy!(Strategy);

#[cfg(test)]
mod tests {
    use cellet_sdk::network::PodAddressSource;
    use cellet_sdk::testing::{PodBuilder, context};
    use serde_json::json;

    use super::*;

    #[test]
    fn plans_a_vpc_address_without_masquerading_to_the_vpc() {
        let strategy = Strategy::init(context(json!({ "no-masquerade": ["10.0.0.0/16"] }))).unwrap();
        let plan = strategy.plan_pod(PodBuilder::new("default", "web").build().view()).unwrap();
        assert_eq!(plan.address_source, PodAddressSource::VpcSecondary);
        assert_eq!(plan.no_masquerade, vec!["10.0.0.0/16"]);
    }

    #[test]
    fn a_bad_cidr_names_its_field() {
        let err = Strategy::init(context(json!({ "no-masquerade": ["10.0.0.0/99"] }))).unwrap_err();
        assert!(err.to_string().contains("no-masquerade[0]"), "{err}");
    }
}

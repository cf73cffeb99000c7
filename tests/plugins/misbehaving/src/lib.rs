//! A network strategy that misbehaves on request, so the host's runtime tests can prove that
//! a plugin cannot take the host down. **Test-only: never configure it in a real slot.**
//!
//! `init` reads `{ "misbehave": "none" | "trap" | "loop" | "sleep" | "oom" | "bad-output" }`
//! (default `none`); then `plan-pod` does it:
//!
//! - `none`: returns a valid plan (VPC address, default route via the subnet gateway);
//! - `trap`: panics, which traps the instance (`wasm32-wasip2` panics abort);
//! - `loop`: spins forever, until the host's epoch deadline interrupts it;
//! - `sleep`: sleeps for an hour in a WASI host call, where no guest code runs for the
//!   epoch to interrupt: the host's own timeout must end the call;
//! - `oom`: allocates and touches memory until an allocation fails, which traps once the
//!   host's memory cap stops the linear memory from growing;
//! - `bad-output`: returns a plan whose route destination is `not-a-cidr`, which the host's
//!   plan validation must refuse.
//!
//! `plan-node` and `plan-routes` (the SDK's defaults) stay well-behaved in every mode, so
//! tests can show that one bad call fails alone.

use cellet_sdk::network::{
    NetworkStrategy, NextHop, PodAddressSource, PodNetworkPlan, PodRoute, default_route,
};
use cellet_sdk::pod::PodView;
use cellet_sdk::{InitContext, PluginError, log};
use serde::Deserialize;

/// What `plan-pod` does.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Misbehave {
    #[default]
    None,
    Trap,
    Loop,
    Sleep,
    Oom,
    BadOutput,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Config {
    #[serde(default)]
    misbehave: Misbehave,
}

#[derive(Debug)]
pub struct Misbehaving {
    mode: Misbehave,
}

impl NetworkStrategy for Misbehaving {
    fn init(ctx: InitContext) -> Result<Self, PluginError> {
        let config: Config = cellet_sdk::config(&ctx)?;
        Ok(Misbehaving {
            mode: config.misbehave,
        })
    }

    fn plan_pod(&self, pod: PodView) -> Result<PodNetworkPlan, PluginError> {
        log::warn(
            "misbehaving on purpose",
            &[("mode", &format!("{:?}", self.mode)), ("pod", &pod.key())],
        );
        let mut plan = PodNetworkPlan {
            address_source: PodAddressSource::VpcSecondary,
            prefix_length: None,
            routes: vec![default_route()],
            no_masquerade: vec!["10.0.0.0/16".to_string()],
            mtu: None,
        };
        match self.mode {
            Misbehave::None => {}
            Misbehave::Trap => panic!("misbehaving plugin: trap requested for pod {}", pod.key()),
            Misbehave::Loop => spin_forever(),
            Misbehave::Sleep => std::thread::sleep(std::time::Duration::from_secs(3600)),
            Misbehave::Oom => exhaust_memory(),
            Misbehave::BadOutput => plan.routes.push(PodRoute {
                destination: "not-a-cidr".to_string(),
                via: NextHop::SubnetGateway,
            }),
        }
        Ok(plan)
    }
}

/// Loops without ever returning; `black_box` keeps the optimiser from proving it pointless.
fn spin_forever() -> ! {
    let mut counter = 0u64;
    loop {
        counter = std::hint::black_box(counter.wrapping_add(1));
    }
}

/// Grows the heap 1 MiB at a time, writing every page so the memory is really used,
/// until allocation fails (an abort, hence a trap).
fn exhaust_memory() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![0xA5; 1 << 20]);
        std::hint::black_box(&hoard);
    }
}

cellet_sdk::export_network_strategy!(Misbehaving);

#[cfg(test)]
mod tests {
    use cellet_sdk::testing::{PodBuilder, context};
    use serde_json::json;

    use super::*;

    #[test]
    fn none_returns_a_valid_plan_and_bad_output_an_invalid_route() {
        let pod = PodBuilder::new("default", "victim").build();
        let good = Misbehaving::init(context(json!({})))
            .unwrap()
            .plan_pod(pod.view())
            .unwrap();
        assert_eq!(good.routes, vec![default_route()]);
        let bad = Misbehaving::init(context(json!({ "misbehave": "bad-output" })))
            .unwrap()
            .plan_pod(pod.view())
            .unwrap();
        assert!(
            bad.routes
                .iter()
                .any(|route| route.destination == "not-a-cidr")
        );
    }

    #[test]
    fn unknown_mode_is_a_config_error_naming_the_field() {
        let err = Misbehaving::init(context(json!({ "misbehave": "explode" }))).unwrap_err();
        assert!(
            matches!(&err, PluginError::InvalidConfig(m) if m.contains("misbehave")),
            "{err:?}"
        );
    }

    #[test]
    #[should_panic(expected = "trap requested")]
    fn trap_panics() {
        let plugin = Misbehaving::init(context(json!({ "misbehave": "trap" }))).unwrap();
        let _ = plugin.plan_pod(PodBuilder::new("default", "victim").build().view());
    }
}

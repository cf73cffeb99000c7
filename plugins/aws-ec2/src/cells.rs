//! Cells as EC2 instances: the pure parts — what to ask EC2 for, and how to read its answer.

use cellet_sdk::capabilities::ec2::{Filter, Instance, RunInstancesRequest};
use cellet_sdk::cloud::{self, Cell, CellRequest, CellState};
use cellet_sdk::types::{KeyValue, find};
use sha2::{Digest, Sha256};

use crate::config::Config;

/// EC2's limit on raw user data (before base64).
pub const MAX_USER_DATA_BYTES: usize = 16 * 1024;
/// EC2's limit on tags per resource.
pub const MAX_TAGS: usize = 50;

/// Instance states in which an instance still is, or may again be, a cell: everything but
/// `terminated`.
pub const LIVE_STATES: [&str; 5] = ["pending", "running", "shutting-down", "stopping", "stopped"];

/// The cell's state as the contract names it. A `stopped` instance will not start by
/// itself: it reads as `stopping`, so that the host replaces it rather than waits.
pub fn cell_state(ec2_state: &str) -> CellState {
    match ec2_state {
        "pending" => CellState::Pending,
        "running" => CellState::Running,
        "shutting-down" | "stopping" | "stopped" => CellState::Stopping,
        _ => CellState::Terminated,
    }
}

/// Whether an instance can serve its pod (now or once booted).
pub fn is_usable(instance: &Instance) -> bool {
    matches!(instance.state.as_str(), "pending" | "running")
}

/// Filters for this controller's live instances, optionally of one pod.
pub fn filters(controller_id: &str, pod_uid: Option<&str>) -> Vec<Filter> {
    let mut filters = vec![
        Filter {
            name: format!("tag:{}", cloud::tags::CONTROLLER),
            values: vec![controller_id.to_owned()],
        },
        Filter {
            name: "instance-state-name".to_owned(),
            values: LIVE_STATES.iter().map(|s| s.to_string()).collect(),
        },
    ];
    if let Some(uid) = pod_uid {
        filters.push(Filter {
            name: format!("tag:{}", cloud::tags::POD_UID),
            values: vec![uid.to_owned()],
        });
    }
    filters
}

/// The idempotency token of the launch of a pod's cell. EC2 never launches a second
/// instance for a token it has seen, so a host that retries after a crash cannot get two
/// cells. `replacing` is the id of a dead instance the same token already returned: the
/// next token is derived from it, so a pod whose cell died gets a new one, and a retry of
/// that replacement still finds it (the chain is the same every time).
///
/// EC2 accepts at most 64 ASCII characters; this is `cellet-` and 32 hex digits.
pub fn client_token(controller_id: &str, pod_uid: &str, replacing: Option<&str>) -> String {
    let mut hash = Sha256::new();
    for part in [controller_id, pod_uid, replacing.unwrap_or_default()] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    format!("cellet-{}", &hex::encode(hash.finalize())[..32])
}

/// The tags of a new cell: the SDK's ownership tags over the host's, and a `Name` for
/// the EC2 console unless the host set one.
pub fn launch_tags(controller_id: &str, request: &CellRequest) -> Vec<KeyValue> {
    let mut tags = cloud::cell_tags(controller_id, request);
    if find(&tags, "Name").is_none() {
        tags.push(KeyValue::new(
            "Name",
            format!("cellet {}", request.pod.key()),
        ));
    }
    tags
}

/// The launch request of a pod's cell, or why the pod's request cannot be launched.
pub fn run_request(
    config: &Config,
    controller_id: &str,
    request: &CellRequest,
    client_token: String,
) -> Result<RunInstancesRequest, String> {
    if request.user_data.len() > MAX_USER_DATA_BYTES {
        return Err(format!(
            "the cell's user data is {} bytes; EC2 takes at most {MAX_USER_DATA_BYTES}",
            request.user_data.len()
        ));
    }
    let tags = launch_tags(controller_id, request);
    if tags.len() > MAX_TAGS {
        return Err(format!(
            "the cell would carry {} tags; EC2 takes at most {MAX_TAGS}",
            tags.len()
        ));
    }
    Ok(RunInstancesRequest {
        image_id: config.image_id.clone(),
        instance_type: config.instance_type.clone(),
        subnet_id: config.subnet_id.clone(),
        security_group_ids: config.security_group_ids.clone(),
        // The pod's address: a second address of the primary interface.
        secondary_private_ip_count: u32::from(request.needs_pod_ip),
        user_data: (!request.user_data.is_empty()).then(|| request.user_data.clone()),
        tags,
        client_token,
        iam_instance_profile_arn: config.instance_profile_arn.clone(),
    })
}

/// An instance as the contract's cell. The management address is the primary address;
/// the pod address is the first secondary one.
pub fn to_cell(instance: Instance, subnet_prefix: u8) -> Cell {
    let (pod_uid, pod_namespace, pod_name) = cloud::pod_identity(&instance.tags);
    Cell {
        id: instance.instance_id,
        pod_uid,
        pod_namespace,
        pod_name,
        state: cell_state(&instance.state),
        management_ip: instance.private_ip,
        pod_ip: instance.secondary_private_ips.into_iter().next(),
        subnet_prefix,
        instance_type: instance.instance_type,
        tags: instance.tags,
    }
}

/// The instance that serves a pod among those tagged with its UID: a running one before a
/// pending one; `None` when none is usable.
pub fn usable_instance(instances: Vec<Instance>) -> Option<Instance> {
    let mut usable: Vec<Instance> = instances.into_iter().filter(is_usable).collect();
    usable.sort_by_key(|i| i.state != "running");
    usable.into_iter().next()
}

/// The instance to report for a pod in `get-cell`: a usable one, else a dying one (so
/// the host sees the cell stopping and replaces it).
pub fn reported_instance(instances: Vec<Instance>) -> Option<Instance> {
    let mut all = instances;
    all.sort_by_key(|i| match i.state.as_str() {
        "running" => 0,
        "pending" => 1,
        _ => 2,
    });
    all.into_iter().next()
}

#[cfg(test)]
mod tests {
    use cellet_sdk::cloud::tags;
    use cellet_sdk::testing::{PodBuilder, cell_request, context};
    use serde_json::json;

    use super::*;

    fn config() -> Config {
        Config::from_context(&context(json!({
            "subnet-id": "subnet-1", "image-id": "ami-1", "security-group-ids": ["sg-1"],
            "capacity": { "cpu": 64, "memory": "256Gi", "pods": 32 }
        })))
        .unwrap()
    }

    fn instance(id: &str, state: &str) -> Instance {
        Instance {
            instance_id: id.into(),
            state: state.into(),
            instance_type: "t3.medium".into(),
            image_id: "ami-1".into(),
            subnet_id: Some("subnet-1".into()),
            vpc_id: Some("vpc-1".into()),
            private_ip: Some("10.0.1.5".into()),
            secondary_private_ips: vec!["10.0.1.6".into(), "10.0.1.7".into()],
            network_interface_id: Some("eni-1".into()),
            tags: vec![
                KeyValue::new(tags::CONTROLLER, "ctrl"),
                KeyValue::new(tags::POD_UID, "uid-1"),
                KeyValue::new(tags::POD_NAMESPACE, "shop"),
                KeyValue::new(tags::POD_NAME, "web"),
            ],
        }
    }

    #[test]
    fn tokens_are_stable_per_pod_distinct_per_controller_and_fit_ec2() {
        let token = client_token("ctrl", "uid-1", None);
        assert_eq!(token, client_token("ctrl", "uid-1", None));
        assert_ne!(token, client_token("ctrl", "uid-2", None));
        assert_ne!(token, client_token("other", "uid-1", None));
        let replacement = client_token("ctrl", "uid-1", Some("i-dead"));
        assert_ne!(token, replacement);
        assert_eq!(replacement, client_token("ctrl", "uid-1", Some("i-dead")));
        // No ambiguity between the parts: ("ab", "c") and ("a", "bc") differ.
        assert_ne!(client_token("ab", "c", None), client_token("a", "bc", None));
        assert!(token.len() <= 64 && token.is_ascii(), "{token}");
    }

    #[test]
    fn a_launch_asks_for_a_pod_address_only_when_the_pod_needs_one() {
        let pod = PodBuilder::new("shop", "web").build();
        let mut request = cell_request(&pod);
        request.needs_pod_ip = true;
        request.user_data = "bootstrap".into();
        let launch = run_request(&config(), "ctrl", &request, "tok".into()).unwrap();
        assert_eq!(launch.secondary_private_ip_count, 1);
        assert_eq!(launch.subnet_id, "subnet-1");
        assert_eq!(launch.security_group_ids, vec!["sg-1".to_string()]);
        assert_eq!(launch.user_data.as_deref(), Some("bootstrap"));
        assert_eq!(launch.client_token, "tok");
        assert_eq!(find(&launch.tags, tags::CONTROLLER), Some("ctrl"));
        assert_eq!(find(&launch.tags, tags::POD_UID), Some(pod.uid.as_str()));
        assert_eq!(find(&launch.tags, "Name"), Some("cellet shop/web"));

        request.needs_pod_ip = false;
        request.user_data.clear();
        let launch = run_request(&config(), "ctrl", &request, "tok".into()).unwrap();
        assert_eq!(launch.secondary_private_ip_count, 0);
        assert_eq!(launch.user_data, None);
    }

    #[test]
    fn a_launch_over_ec2s_limits_is_refused() {
        let pod = PodBuilder::new("shop", "web").build();
        let mut request = cell_request(&pod);
        request.user_data = "x".repeat(MAX_USER_DATA_BYTES + 1);
        assert!(
            run_request(&config(), "ctrl", &request, "t".into())
                .unwrap_err()
                .contains("user data")
        );

        let mut request = cell_request(&pod);
        request.tags = (0..MAX_TAGS)
            .map(|i| KeyValue::new(format!("k{i}"), "v"))
            .collect();
        assert!(
            run_request(&config(), "ctrl", &request, "t".into())
                .unwrap_err()
                .contains("tags")
        );
    }

    #[test]
    fn an_instance_reads_as_a_cell() {
        let cell = to_cell(instance("i-1", "running"), 24);
        assert_eq!(cell.id, "i-1");
        assert_eq!(
            (
                cell.pod_uid.as_str(),
                cell.pod_namespace.as_str(),
                cell.pod_name.as_str()
            ),
            ("uid-1", "shop", "web")
        );
        assert_eq!(cell.state, CellState::Running);
        assert_eq!(cell.management_ip.as_deref(), Some("10.0.1.5"));
        assert_eq!(cell.pod_ip.as_deref(), Some("10.0.1.6"));
        assert_eq!(cell.subnet_prefix, 24);

        let mut host_network = instance("i-2", "pending");
        host_network.secondary_private_ips.clear();
        assert_eq!(to_cell(host_network, 24).pod_ip, None);
    }

    #[test]
    fn states_map_onto_the_contract() {
        assert_eq!(cell_state("pending"), CellState::Pending);
        assert_eq!(cell_state("running"), CellState::Running);
        assert_eq!(cell_state("stopped"), CellState::Stopping);
        assert_eq!(cell_state("shutting-down"), CellState::Stopping);
        assert_eq!(cell_state("terminated"), CellState::Terminated);
    }

    #[test]
    fn a_running_instance_serves_its_pod_before_a_pending_one_and_dying_ones_never_do() {
        let chosen =
            usable_instance(vec![instance("i-p", "pending"), instance("i-r", "running")]).unwrap();
        assert_eq!(chosen.instance_id, "i-r");
        assert!(
            usable_instance(vec![
                instance("i-s", "stopped"),
                instance("i-d", "shutting-down")
            ])
            .is_none()
        );
        let reported = reported_instance(vec![instance("i-s", "stopped")]).unwrap();
        assert_eq!(reported.instance_id, "i-s");
    }

    #[test]
    fn filters_select_the_controller_and_optionally_the_pod() {
        let all = filters("ctrl", None);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].name, "tag:cellet.io/controller");
        assert!(!all[1].values.contains(&"terminated".to_string()));
        let one = filters("ctrl", Some("uid-1"));
        assert_eq!(
            one[2],
            Filter {
                name: "tag:cellet.io/pod-uid".into(),
                values: vec!["uid-1".into()]
            }
        );
    }
}

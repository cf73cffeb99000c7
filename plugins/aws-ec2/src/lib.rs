//! `aws-ec2`: a cloud plugin whose cells are EC2 instances, reached through the host's
//! `ec2` capability (the host holds the AWS credentials; this component never sees them).
//! Grant the slot `ec2` in the config and give the capability its region.
//!
//! - `init`: reads the config ([`config`]); `node-capacity` reports its `capacity`, after
//!   checking once that the instance type exists in the region and can hold two addresses
//!   per interface (management and pod).
//! - `create-cell`: returns the pod's live cell if there is one (found by its tags), else
//!   launches an instance in the configured subnet with one secondary address when the pod
//!   needs its own, this controller's and the pod's tags, and the user data. The launch
//!   carries an idempotency token derived from the pod UID, so a retried launch never
//!   starts a second instance (see [`cells::client_token`]).
//! - `get-cell`/`list-cells`: instances tagged with this controller's id, by pod UID.
//! - `delete-cell`: terminates an instance of this controller; one that is already gone
//!   counts as deleted; another controller's is refused.
//! - routes: instance routes of the configured route table ([`routes`]).
//!
//! The plugin keeps only caches (the subnet's prefix, the instance-type check) in its
//! state, so any number of instances may run side by side.

pub mod cells;
pub mod config;
pub mod errors;
pub mod routes;

use std::collections::HashMap;

use cellet_sdk::capabilities::ec2::{self, Filter, Instance, RouteTable};
use cellet_sdk::cloud::{self, Cell, CellRequest, CloudProvider, NodeResources};
use cellet_sdk::net;
use cellet_sdk::types::{CloudRoute, RouteTarget};
use cellet_sdk::{InitContext, PluginError, log};

use config::Config;
use errors::{classify, classify_launch, is_not_found};

/// Launch attempts for one pod: the first token, then one per dead instance an earlier
/// token already returned (see [`cells::client_token`]).
const MAX_LAUNCH_ATTEMPTS: usize = 3;

#[derive(Debug)]
pub struct AwsEc2 {
    controller_id: String,
    config: Config,
    /// Prefix length of each subnet seen, by subnet id: subnets do not change size.
    subnet_prefixes: HashMap<String, u8>,
    /// Whether the instance type passed the check of [`AwsEc2::check_instance_type`].
    instance_type_checked: bool,
}

impl AwsEc2 {
    fn prefix_of(&mut self, subnet_id: &str) -> Result<u8, PluginError> {
        if let Some(prefix) = self.subnet_prefixes.get(subnet_id) {
            return Ok(*prefix);
        }
        let what = format!("describe subnet {subnet_id}");
        let subnets =
            ec2::describe_subnets(&[subnet_id.to_owned()], &[]).map_err(|e| classify(&what, e))?;
        let subnet = subnets
            .into_iter()
            .find(|s| s.subnet_id == subnet_id)
            .ok_or_else(|| {
                PluginError::NotFound(format!("failed to {what}: EC2 does not list it"))
            })?;
        let prefix = net::parse_cidr("subnet cidr-block", &subnet.cidr_block)
            .map_err(|e| PluginError::Unavailable(format!("failed to {what}: {e}")))?
            .prefix_len();
        self.subnet_prefixes.insert(subnet_id.to_owned(), prefix);
        Ok(prefix)
    }

    /// The cell of an instance; the prefix is that of the instance's subnet (the
    /// configured one when EC2 no longer says, as for a terminating instance).
    fn cell(&mut self, instance: Instance) -> Result<Cell, PluginError> {
        let subnet = instance
            .subnet_id
            .clone()
            .unwrap_or_else(|| self.config.subnet_id.clone());
        let prefix = self.prefix_of(&subnet)?;
        Ok(cells::to_cell(instance, prefix))
    }

    /// This controller's live instances, optionally of one pod.
    fn instances(&self, pod_uid: Option<&str>) -> Result<Vec<Instance>, PluginError> {
        let filters: Vec<Filter> = cells::filters(&self.controller_id, pod_uid);
        ec2::describe_instances(&[], &filters)
            .map_err(|e| classify("list this controller's instances", e))
    }

    /// One instance by id, `None` if EC2 does not know it.
    fn instance(&self, id: &str) -> Result<Option<Instance>, PluginError> {
        match ec2::describe_instances(&[id.to_owned()], &[]) {
            Ok(found) => Ok(found.into_iter().find(|i| i.instance_id == id)),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(classify(&format!("describe instance {id}"), error)),
        }
    }

    /// Check once that the configured type exists here and can carry a cell's two
    /// addresses on one interface.
    fn check_instance_type(&mut self) -> Result<(), PluginError> {
        if self.instance_type_checked {
            return Ok(());
        }
        let wanted = &self.config.instance_type;
        let types =
            ec2::describe_instance_types(std::slice::from_ref(wanted)).map_err(|e| {
                match e.code.as_str() {
                    "InvalidInstanceType" => PluginError::InvalidConfig(format!(
                        "config field `instance-type`: EC2 does not offer {wanted:?} here: {}",
                        e.message
                    )),
                    _ => classify(&format!("describe instance type {wanted}"), e),
                }
            })?;
        let info = types
            .into_iter()
            .find(|t| &t.instance_type == wanted)
            .ok_or_else(|| {
                PluginError::InvalidConfig(format!(
                    "config field `instance-type`: EC2 does not offer {wanted:?} here"
                ))
            })?;
        if info.ipv4_addresses_per_interface < 2 {
            return Err(PluginError::InvalidConfig(format!(
                "config field `instance-type`: {wanted} takes {} address per interface; a cell needs 2 (management and pod)",
                info.ipv4_addresses_per_interface
            )));
        }
        log::info(
            "instance type checked",
            &[
                ("type", wanted),
                ("vcpus", &info.vcpus),
                ("memory-mib", &info.memory_mib),
            ],
        );
        self.instance_type_checked = true;
        Ok(())
    }

    /// Make sure a cell that needs a pod address has one. EC2 assigns it at launch; this
    /// covers an EC2-compatible API that ignores the launch-time count, and a cell found
    /// after a crash between a launch and a later assignment.
    fn ensure_pod_ip(
        &self,
        instance: Instance,
        needs_pod_ip: bool,
    ) -> Result<Instance, PluginError> {
        if !needs_pod_ip || !instance.secondary_private_ips.is_empty() {
            return Ok(instance);
        }
        let id = instance.instance_id.clone();
        let Some(interface) = instance.network_interface_id.clone() else {
            return Err(PluginError::Unavailable(format!(
                "instance {id} has no network interface yet"
            )));
        };
        let what = format!("assign the pod address of instance {id}");
        ec2::assign_private_ip_addresses(&interface, &[], 1).map_err(|e| classify(&what, e))?;
        self.instance(&id)?
            .ok_or_else(|| PluginError::NotFound(format!("failed to {what}: the instance is gone")))
    }

    /// Launch the pod's instance, following the token chain past dead instances.
    fn launch(&self, request: &CellRequest) -> Result<Instance, PluginError> {
        let what = format!("launch the cell of {}", request.pod.key());
        let mut replacing: Option<String> = None;
        for _ in 0..MAX_LAUNCH_ATTEMPTS {
            let token =
                cells::client_token(&self.controller_id, &request.pod.uid, replacing.as_deref());
            let launch = cells::run_request(&self.config, &self.controller_id, request, token)
                .map_err(|reason| {
                    PluginError::InvalidInput(format!("failed to {what}: {reason}"))
                })?;
            let instance = ec2::run_instances(&launch)
                .map_err(|e| classify_launch(&what, e))?
                .into_iter()
                .next()
                .ok_or_else(|| {
                    PluginError::Unavailable(format!("failed to {what}: EC2 returned no instance"))
                })?;
            if cells::is_usable(&instance) {
                return Ok(instance);
            }
            // The token belongs to an instance that died since: derive the next one.
            log::info(
                "launch token returned a dead instance; launching a replacement",
                &[
                    ("pod", &request.pod.key()),
                    ("dead", &instance.instance_id),
                    ("state", &instance.state),
                ],
            );
            replacing = Some(instance.instance_id);
        }
        Err(PluginError::Unavailable(format!(
            "failed to {what}: EC2 returned only dead instances for {MAX_LAUNCH_ATTEMPTS} launch tokens"
        )))
    }

    fn route_table_id(&self, asked: &str) -> Result<&str, PluginError> {
        self.config.route_table_id.as_deref().ok_or_else(|| {
            PluginError::Unsupported(format!(
                "aws-ec2 manages no route table (config field `route-table-id` is absent); asked to {asked}"
            ))
        })
    }

    fn route_table(&self, table_id: &str) -> Result<RouteTable, PluginError> {
        let what = format!("describe route table {table_id}");
        ec2::describe_route_tables(&[table_id.to_owned()], &[])
            .map_err(|e| classify(&what, e))?
            .into_iter()
            .find(|t| t.route_table_id == table_id)
            .ok_or_else(|| PluginError::NotFound(format!("failed to {what}: EC2 does not list it")))
    }

    /// The instance a route target names: an instance id as given (checked to exist), an
    /// address as the live instance whose primary address it is.
    fn target_instance(&self, target: &RouteTarget) -> Result<String, PluginError> {
        match target {
            RouteTarget::Instance(id) => {
                if !id.starts_with("i-") {
                    return Err(PluginError::InvalidInput(format!(
                        "route target {id:?} is not an instance id"
                    )));
                }
                Ok(id.clone())
            }
            RouteTarget::Address(address) => {
                let ip = net::parse_ip("route target", address)
                    .map_err(net::NetError::into_input_error)?;
                let filters = [
                    Filter {
                        name: "private-ip-address".into(),
                        values: vec![ip.to_string()],
                    },
                    Filter {
                        name: "instance-state-name".into(),
                        values: ["pending", "running", "stopping", "stopped"]
                            .map(String::from)
                            .to_vec(),
                    },
                ];
                let what = format!("find the instance of address {ip}");
                let found =
                    ec2::describe_instances(&[], &filters).map_err(|e| classify(&what, e))?;
                match found.as_slice() {
                    [one] => Ok(one.instance_id.clone()),
                    [] => Err(PluginError::NotFound(format!(
                        "failed to {what}: no instance has it as its primary address"
                    ))),
                    _ => Err(PluginError::InvalidInput(format!(
                        "failed to {what}: {} instances have it",
                        found.len()
                    ))),
                }
            }
        }
    }
}

impl CloudProvider for AwsEc2 {
    fn init(ctx: InitContext) -> Result<Self, PluginError> {
        let config = Config::from_context(&ctx)?;
        if ctx.controller_id.is_empty() {
            return Err(PluginError::InvalidInput(
                "the init context has no controller id".into(),
            ));
        }
        Ok(AwsEc2 {
            controller_id: ctx.controller_id,
            config,
            subnet_prefixes: HashMap::new(),
            instance_type_checked: false,
        })
    }

    fn node_capacity(&mut self) -> Result<NodeResources, PluginError> {
        self.check_instance_type()?;
        Ok(self.config.capacity)
    }

    fn create_cell(&mut self, request: CellRequest) -> Result<Cell, PluginError> {
        let uid = request.pod.uid.clone();
        if uid.is_empty() {
            return Err(PluginError::InvalidInput(format!(
                "pod {} has no UID",
                request.pod.key()
            )));
        }
        let existing = self.instances(Some(&uid))?;
        // A stopped instance never comes back by itself: replace it. Terminating it here
        // keeps it from lingering as a second cell of the pod.
        let stopped: Vec<String> = existing
            .iter()
            .filter(|i| i.state == "stopped")
            .map(|i| i.instance_id.clone())
            .collect();
        let instance = match cells::usable_instance(existing) {
            Some(found) => found,
            None => {
                if !stopped.is_empty() {
                    let what = format!("terminate the stopped cells of {}", request.pod.key());
                    ec2::terminate_instances(&stopped).map_err(|e| classify(&what, e))?;
                }
                let launched = self.launch(&request)?;
                log::info(
                    "cell launched",
                    &[
                        ("pod", &request.pod.key()),
                        ("instance", &launched.instance_id),
                        ("type", &launched.instance_type),
                    ],
                );
                launched
            }
        };
        let instance = self.ensure_pod_ip(instance, request.needs_pod_ip)?;
        self.cell(instance)
    }

    fn get_cell(&mut self, pod_uid: String) -> Result<Option<Cell>, PluginError> {
        match cells::reported_instance(self.instances(Some(&pod_uid))?) {
            Some(instance) => self.cell(instance).map(Some),
            None => Ok(None),
        }
    }

    fn list_cells(&mut self) -> Result<Vec<Cell>, PluginError> {
        self.instances(None)?
            .into_iter()
            .map(|instance| self.cell(instance))
            .collect()
    }

    fn delete_cell(&mut self, id: String) -> Result<(), PluginError> {
        if !id.starts_with("i-") {
            return Err(PluginError::InvalidInput(format!(
                "cell id {id:?} is not an instance id"
            )));
        }
        let Some(instance) = self.instance(&id)? else {
            return Ok(());
        };
        if instance.state == "terminated" {
            return Ok(());
        }
        if !cloud::owned_by(&instance.tags, &self.controller_id) {
            return Err(PluginError::InvalidInput(format!(
                "instance {id} is not a cell of this controller: not terminating it"
            )));
        }
        match ec2::terminate_instances(std::slice::from_ref(&id)) {
            Ok(()) => {
                log::info("cell terminated", &[("instance", &id)]);
                Ok(())
            }
            Err(error) if is_not_found(&error) => Ok(()),
            Err(error) => Err(classify(&format!("terminate instance {id}"), error)),
        }
    }

    fn list_routes(&mut self) -> Result<Vec<CloudRoute>, PluginError> {
        match self.config.route_table_id.clone() {
            Some(table_id) => Ok(routes::cloud_routes(&self.route_table(&table_id)?)),
            None => Ok(Vec::new()),
        }
    }

    fn ensure_route(&mut self, route: CloudRoute) -> Result<(), PluginError> {
        let table_id = self
            .route_table_id(&format!("route {}", route.destination))?
            .to_owned();
        let destination = net::parse_cidr("route destination", &route.destination)
            .map_err(net::NetError::into_input_error)?;
        let instance_id = self.target_instance(&route.target)?;
        let table = self.route_table(&table_id)?;
        let target = ec2::RouteTarget::InstanceId(instance_id.clone());
        let what = format!("route {destination} to {instance_id} in {table_id}");
        let replace = || {
            ec2::replace_route(&table_id, &destination.to_string(), &target)
                .map_err(|e| classify(&what, e))
        };
        match routes::change(routes::find(&table, &destination), &instance_id) {
            routes::Change::Keep => Ok(()),
            routes::Change::Replace => {
                let current = routes::find(&table, &destination).filter(|r| !routes::is_managed(r));
                if current.is_some() {
                    return Err(PluginError::InvalidInput(format!(
                        "failed to {what}: the table routes {destination} to a gateway, which cellet does not replace"
                    )));
                }
                replace()
            }
            routes::Change::Create => {
                match ec2::create_route(&table_id, &destination.to_string(), &target) {
                    Ok(()) => Ok(()),
                    // Created by someone else since the table was read.
                    Err(error) if error.code == "RouteAlreadyExists" => replace(),
                    Err(error) => Err(classify(&what, error)),
                }
            }
        }
    }

    fn remove_route(&mut self, destination: String) -> Result<(), PluginError> {
        let table_id = self
            .route_table_id(&format!("remove route {destination}"))?
            .to_owned();
        let destination = net::parse_cidr("route destination", &destination)
            .map_err(net::NetError::into_input_error)?;
        let table = self.route_table(&table_id)?;
        let Some(current) = routes::find(&table, &destination) else {
            return Ok(());
        };
        if !routes::is_managed(current) {
            return Err(PluginError::InvalidInput(format!(
                "route {destination} of {table_id} does not go to an instance: cellet does not remove it"
            )));
        }
        match ec2::delete_route(&table_id, &destination.to_string()) {
            Ok(()) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            Err(error) => Err(classify(
                &format!("remove route {destination} from {table_id}"),
                error,
            )),
        }
    }
}

cellet_sdk::export_cloud_provider!(AwsEc2);

//! The plugin's `config:` section.
//!
//! ```yaml
//! cloud:
//!   source: ./cellet_plugin_aws_ec2.wasm
//!   capabilities: [ec2]
//!   ec2: { region: us-east-1 }
//!   config:
//!     subnet-id: subnet-0123456789abcdef0
//!     image-id: ami-0123456789abcdef0
//!     instance-type: t3.medium                # optional, this is the default
//!     security-group-ids: [sg-0123456789abcdef0]
//!     instance-profile-arn: arn:aws:iam::123456789012:instance-profile/cellet-cell  # optional
//!     route-table-id: rtb-0123456789abcdef0   # optional: without it, no cloud routes
//!     capacity: { cpu: 64, memory: 256Gi, pods: 32, ephemeral-storage: 1Ti }
//! ```

use cellet_sdk::cloud::NodeResources;
use cellet_sdk::{InitContext, PluginError, quantity};
use serde::Deserialize;

/// The instance type when the config names none: small enough to be cheap, large enough
/// for the cell agent and a typical pod.
pub const DEFAULT_INSTANCE_TYPE: &str = "t3.medium";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Raw {
    subnet_id: String,
    image_id: String,
    #[serde(default = "default_instance_type")]
    instance_type: String,
    #[serde(default)]
    security_group_ids: Vec<String>,
    #[serde(default)]
    instance_profile_arn: Option<String>,
    #[serde(default)]
    route_table_id: Option<String>,
    capacity: RawCapacity,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawCapacity {
    cpu: Quantity,
    memory: Quantity,
    pods: u32,
    #[serde(default)]
    ephemeral_storage: Option<Quantity>,
}

/// A quantity as YAML gives it: `64` arrives as a number, `256Gi` as a string.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum Quantity {
    Number(u64),
    Text(String),
}

impl Quantity {
    fn text(&self) -> String {
        match self {
            Quantity::Number(n) => n.to_string(),
            Quantity::Text(text) => text.clone(),
        }
    }
}

fn default_instance_type() -> String {
    DEFAULT_INSTANCE_TYPE.to_owned()
}

/// The checked config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Subnet every cell is launched in; both of a cell's addresses come from it.
    pub subnet_id: String,
    /// Image of every cell: it must start the cell agent from the user data.
    pub image_id: String,
    pub instance_type: String,
    /// Security groups of the cells' primary interface (the VPC's default group when empty).
    pub security_group_ids: Vec<String>,
    /// Instance profile the cells run with, if they need AWS access themselves.
    pub instance_profile_arn: Option<String>,
    /// Route table whose instance routes the plugin manages; without it the route
    /// functions report `unsupported` and `list-routes` is empty.
    pub route_table_id: Option<String>,
    /// What the node advertises.
    pub capacity: NodeResources,
}

impl Config {
    pub fn from_context(ctx: &InitContext) -> Result<Config, PluginError> {
        let raw: Raw = cellet_sdk::config(ctx)?;
        prefixed("subnet-id", &raw.subnet_id, "subnet-")?;
        prefixed("image-id", &raw.image_id, "ami-")?;
        if !raw.instance_type.contains('.') {
            return Err(PluginError::InvalidConfig(format!(
                "config field `instance-type`: {:?} is not an instance type (e.g. `{DEFAULT_INSTANCE_TYPE}`)",
                raw.instance_type
            )));
        }
        for (i, group) in raw.security_group_ids.iter().enumerate() {
            prefixed(&format!("security-group-ids[{i}]"), group, "sg-")?;
        }
        if let Some(arn) = &raw.instance_profile_arn
            && !(arn.starts_with("arn:") && arn.contains(":instance-profile/"))
        {
            return Err(PluginError::InvalidConfig(format!(
                "config field `instance-profile-arn`: {arn:?} is not an instance profile ARN"
            )));
        }
        if let Some(table) = &raw.route_table_id {
            prefixed("route-table-id", table, "rtb-")?;
        }
        if raw.capacity.pods == 0 {
            return Err(PluginError::InvalidConfig(
                "config field `capacity.pods`: must be at least 1".to_owned(),
            ));
        }
        let capacity = NodeResources {
            cpu_millis: quantity::cpu_millis(&raw.capacity.cpu.text())
                .map_err(|e| e.into_config_error("capacity.cpu"))?,
            memory_bytes: quantity::bytes(&raw.capacity.memory.text())
                .map_err(|e| e.into_config_error("capacity.memory"))?,
            pods: raw.capacity.pods,
            ephemeral_storage_bytes: match &raw.capacity.ephemeral_storage {
                Some(q) => quantity::bytes(&q.text())
                    .map_err(|e| e.into_config_error("capacity.ephemeral-storage"))?,
                None => 0,
            },
        };
        Ok(Config {
            subnet_id: raw.subnet_id,
            image_id: raw.image_id,
            instance_type: raw.instance_type,
            security_group_ids: raw.security_group_ids,
            instance_profile_arn: raw.instance_profile_arn,
            route_table_id: raw.route_table_id,
            capacity,
        })
    }
}

/// EC2 ids carry a fixed prefix; checking it catches a subnet id pasted as an image id
/// at `config check` time rather than at the first pod.
fn prefixed(field: &str, value: &str, prefix: &str) -> Result<(), PluginError> {
    if value.len() > prefix.len() && value.starts_with(prefix) {
        Ok(())
    } else {
        Err(PluginError::InvalidConfig(format!(
            "config field `{field}`: {value:?} is not an id of the form `{prefix}...`"
        )))
    }
}

#[cfg(test)]
mod tests {
    use cellet_sdk::testing::context;
    use serde_json::json;

    use super::*;

    fn minimal() -> serde_json::Value {
        json!({
            "subnet-id": "subnet-1", "image-id": "ami-1",
            "capacity": { "cpu": 64, "memory": "256Gi", "pods": 32 }
        })
    }

    fn message(error: PluginError) -> String {
        match error {
            PluginError::InvalidConfig(message) => message,
            other => panic!("expected invalid-config, got {other:?}"),
        }
    }

    #[test]
    fn a_minimal_config_takes_the_defaults() {
        let config = Config::from_context(&context(minimal())).unwrap();
        assert_eq!(config.instance_type, DEFAULT_INSTANCE_TYPE);
        assert!(config.security_group_ids.is_empty());
        assert_eq!(config.route_table_id, None);
        assert_eq!(
            config.capacity,
            NodeResources {
                cpu_millis: 64_000,
                memory_bytes: 256 << 30,
                pods: 32,
                ephemeral_storage_bytes: 0
            }
        );
    }

    #[test]
    fn quantities_are_read_as_in_pod_specs() {
        let mut value = minimal();
        value["capacity"] =
            json!({ "cpu": "7500m", "memory": 1_000_000, "pods": 3, "ephemeral-storage": "1Ti" });
        let config = Config::from_context(&context(value)).unwrap();
        assert_eq!(config.capacity.cpu_millis, 7500);
        assert_eq!(config.capacity.memory_bytes, 1_000_000);
        assert_eq!(config.capacity.ephemeral_storage_bytes, 1 << 40);
    }

    #[test]
    fn problems_name_their_field() {
        let mut typo = minimal();
        typo["subnet"] = json!("subnet-2");
        assert!(message(Config::from_context(&context(typo)).unwrap_err()).contains("subnet"));

        let mut swapped = minimal();
        swapped["image-id"] = json!("subnet-2");
        assert!(
            message(Config::from_context(&context(swapped)).unwrap_err()).contains("`image-id`")
        );

        let mut group = minimal();
        group["security-group-ids"] = json!(["sg-1", "rtb-1"]);
        assert!(
            message(Config::from_context(&context(group)).unwrap_err())
                .contains("`security-group-ids[1]`")
        );

        let mut cpu = minimal();
        cpu["capacity"]["cpu"] = json!("lots");
        assert!(
            message(Config::from_context(&context(cpu)).unwrap_err()).contains("`capacity.cpu`")
        );

        let mut pods = minimal();
        pods["capacity"]["pods"] = json!(0);
        assert!(
            message(Config::from_context(&context(pods)).unwrap_err()).contains("`capacity.pods`")
        );

        let mut arn = minimal();
        arn["instance-profile-arn"] = json!("cellet-cell");
        assert!(
            message(Config::from_context(&context(arn)).unwrap_err())
                .contains("`instance-profile-arn`")
        );
    }
}

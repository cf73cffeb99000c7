//! From `ec2-error` to `plugin-error`: the host reacts to the kind (retry, report
//! capacity, surface a config problem), so each EC2 code is sorted into one.

use cellet_sdk::PluginError;
use cellet_sdk::capabilities::ec2::Ec2Error;

/// Codes that mean "out of room": quota, capacity of a zone, addresses of a subnet, entries
/// of a route table.
const CAPACITY: &[&str] = &[
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "InstanceLimitExceeded",
    "VcpuLimitExceeded",
    "InsufficientFreeAddressesInSubnet",
    "PrivateIpAddressLimitExceeded",
    "RouteLimitExceeded",
    "InsufficientAddressCapacity",
];

/// Codes that say the call may work later without anyone changing the request: throttling,
/// EC2's own trouble, the host's capability unreachable, or permissions being fixed.
const TRANSIENT: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ServiceUnavailable",
    "Unavailable",
    "InternalError",
    "InternalFailure",
    "UnauthorizedOperation",
    "AuthFailure",
    "CelletUnavailable",
];

/// Codes that, during a launch, point at the plugin's config rather than at the pod: the
/// subnet, image, security groups, instance type or profile it names.
const LAUNCH_CONFIG: &[&str] = &[
    "InvalidSubnetID.NotFound",
    "InvalidSubnetID.Malformed",
    "InvalidAMIID.NotFound",
    "InvalidAMIID.Malformed",
    "InvalidAMIID.Unavailable",
    "InvalidGroup.NotFound",
    "InvalidGroupId.Malformed",
    "InvalidInstanceType",
    "InvalidParameterValue",
    "InvalidIamInstanceProfile.NotFound",
];

/// The plugin error for a failed capability call made to `what` (a phrase such as
/// `launch the cell of shop/web`).
pub fn classify(what: &str, error: Ec2Error) -> PluginError {
    let message = format!("failed to {what}: EC2 {}: {}", error.code, error.message);
    let code = error.code.as_str();
    if CAPACITY.contains(&code) {
        PluginError::Capacity(message)
    } else if TRANSIENT.contains(&code) {
        PluginError::Unavailable(message)
    } else if code.ends_with(".NotFound") {
        PluginError::NotFound(message)
    } else if code.starts_with("Invalid")
        || code.starts_with("Missing")
        || code.starts_with("Cellet")
    {
        // `CelletRequestTooLarge` and `CelletInvalidRequest`: the host refused what this
        // plugin built from the host's own records.
        PluginError::InvalidInput(message)
    } else {
        PluginError::Unavailable(message)
    }
}

/// Like [`classify`], for `run-instances`: the resources it names come from the config.
pub fn classify_launch(what: &str, error: Ec2Error) -> PluginError {
    if LAUNCH_CONFIG.contains(&error.code.as_str()) {
        PluginError::InvalidConfig(format!(
            "failed to {what}: EC2 {}: {}",
            error.code, error.message
        ))
    } else {
        classify(what, error)
    }
}

/// Whether the error is EC2 saying the object does not exist.
pub fn is_not_found(error: &Ec2Error) -> bool {
    error.code.ends_with(".NotFound")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(code: &str) -> Ec2Error {
        Ec2Error {
            code: code.into(),
            message: "m".into(),
        }
    }

    #[test]
    fn codes_are_sorted_by_what_the_host_can_do() {
        assert!(matches!(
            classify("x", error("InsufficientInstanceCapacity")),
            PluginError::Capacity(_)
        ));
        assert!(matches!(
            classify("x", error("RequestLimitExceeded")),
            PluginError::Unavailable(_)
        ));
        assert!(matches!(
            classify("x", error("CelletUnavailable")),
            PluginError::Unavailable(_)
        ));
        assert!(matches!(
            classify("x", error("InvalidInstanceID.NotFound")),
            PluginError::NotFound(_)
        ));
        assert!(matches!(
            classify("x", error("InvalidParameterValue")),
            PluginError::InvalidInput(_)
        ));
        assert!(matches!(
            classify("x", error("CelletRequestTooLarge")),
            PluginError::InvalidInput(_)
        ));
        assert!(matches!(
            classify("x", error("SomethingNew")),
            PluginError::Unavailable(_)
        ));
    }

    #[test]
    fn a_launch_blames_the_config_for_the_resources_it_names() {
        assert!(matches!(
            classify_launch("x", error("InvalidAMIID.NotFound")),
            PluginError::InvalidConfig(_)
        ));
        assert!(matches!(
            classify_launch("x", error("VcpuLimitExceeded")),
            PluginError::Capacity(_)
        ));
        let PluginError::InvalidConfig(message) = classify_launch(
            "launch the cell of shop/web",
            error("InvalidSubnetID.NotFound"),
        ) else {
            panic!()
        };
        assert_eq!(
            message,
            "failed to launch the cell of shop/web: EC2 InvalidSubnetID.NotFound: m"
        );
    }
}

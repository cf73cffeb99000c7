//! The `ec2` capability (`wit/v0.1.0/ec2.wit`): the subset of the EC2 API a cloud plugin
//! needs, served by the host with `aws-sdk-ec2`.
//!
//! The plugin sends typed requests; the host holds the client, the credentials (the
//! standard AWS chain: environment, profile, web identity, container or instance role),
//! the region and the endpoint. None of them ever enters WebAssembly, and a plugin cannot
//! reach any other AWS API or any other endpoint.
//!
//! Errors a plugin sees (`ec2-error.code`):
//! - EC2's own code, verbatim (`InvalidInstanceID.NotFound`, `RequestLimitExceeded`...);
//! - `CelletRequestTooLarge`: a list or string over the bounds of `ec2.wit` ([`bounds`]);
//!   EC2 was not called;
//! - `CelletInvalidRequest`: the SDK refused to build the request; EC2 was not called;
//! - `CelletUnavailable`: EC2 could not be reached or did not answer in time (after the
//!   SDK's retries); the call may be retried.
//!
//! Every call is a `tracing` span `ec2` (plugin, operation, outcome, duration) and a sample
//! of the [`Ec2Metrics`] families.

mod bounds;
mod convert;
mod metrics;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types as aws;
use base64::Engine as _;
use serde::Deserialize;
use tracing::Instrument as _;
use wasmtime::component::{HasSelf, Linker};

pub use bounds::{MAX_LIST_ITEMS, MAX_RESULT_ITEMS, MAX_STRING_BYTES, MAX_USER_DATA_BYTES};
pub use metrics::Ec2Metrics;

use crate::plugins::bindings::ec2::{
    self as wit, Ec2Error, Filter, Image, Instance, InstanceTypeInfo, RouteTable, RouteTarget,
    RunInstancesRequest, Subnet,
};
use crate::plugins::bindings::types::KeyValue;
use bounds::Bounds;

/// Budget of one capability call, retries included. It stays well under the cloud slot's
/// default call deadline (60 s), so a hung endpoint fails the host call with
/// `CelletUnavailable` before the plugin's deadline expires, and the plugin can react.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Budget of one HTTP attempt; the SDK's standard retry policy makes up to three.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Most pages one Describe call follows. EC2 may return empty pages with a next token
/// while it filters; this keeps a call from following them forever.
const MAX_PAGES: usize = 100;

/// Settings of the capability: the `ec2:` section of the cloud slot in the host config.
///
/// ```yaml
/// cloud:
///   capabilities: [ec2]
///   ec2: { region: us-east-1, endpoint: http://127.0.0.1:5000 }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Ec2Settings {
    /// AWS region of the VPC the cells live in. Required: the host never guesses it from
    /// the instance metadata service, so a config means the same thing on every machine.
    pub region: String,
    /// Endpoint URL that replaces the region's public one: a VPC interface endpoint, or an
    /// EC2-compatible server in tests. `None` uses the region's endpoint.
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// Errors of [`Ec2Settings::from_json`].
#[derive(Debug, thiserror::Error)]
pub enum Ec2SettingsError {
    /// The section does not have the shape of [`Ec2Settings`].
    #[error("failed to read the `ec2` settings: {source}")]
    Parse {
        #[source]
        source: serde_json::Error,
    },
    /// `region` is empty or not a region name.
    #[error(
        "failed to read the `ec2` settings: `region` {region:?} is not a region name (e.g. `us-east-1`)"
    )]
    Region { region: String },
    /// `endpoint` is not an absolute http(s) URL.
    #[error(
        "failed to read the `ec2` settings: `endpoint` {endpoint:?} is not an http:// or https:// URL with a host"
    )]
    Endpoint { endpoint: String },
}

impl Ec2Settings {
    /// Parse and check the `ec2:` section of a slot.
    pub fn from_json(value: serde_json::Value) -> Result<Self, Ec2SettingsError> {
        let settings: Ec2Settings =
            serde_json::from_value(value).map_err(|source| Ec2SettingsError::Parse { source })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Check what serde cannot: the region looks like one and the endpoint is a URL.
    pub fn validate(&self) -> Result<(), Ec2SettingsError> {
        let region_ok = !self.region.is_empty()
            && self
                .region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !region_ok {
            return Err(Ec2SettingsError::Region {
                region: self.region.clone(),
            });
        }
        if let Some(endpoint) = &self.endpoint {
            let host = endpoint
                .strip_prefix("http://")
                .or_else(|| endpoint.strip_prefix("https://"))
                .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or_default());
            if !matches!(host, Some(h) if !h.is_empty() && !h.contains(char::is_whitespace)) {
                return Err(Ec2SettingsError::Endpoint {
                    endpoint: endpoint.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Why one capability call failed. The plugin receives it as an `ec2-error` (see
/// [`Ec2CallError::code`]); the host logs it whole.
#[derive(Debug, thiserror::Error)]
pub enum Ec2CallError {
    /// A list or string of the request is over a bound of `ec2.wit`; EC2 was not called.
    #[error(
        "failed to call EC2 {operation}: `{field}` has {size} {unit}, over the limit of {limit}"
    )]
    TooLarge {
        operation: &'static str,
        field: String,
        size: usize,
        limit: usize,
        unit: &'static str,
    },
    /// The SDK could not build a request from what the plugin sent; EC2 was not called.
    #[error("failed to call EC2 {operation}: the request is invalid: {message}")]
    Invalid {
        operation: &'static str,
        message: String,
    },
    /// EC2 answered with an error code.
    #[error("failed to call EC2 {operation}: EC2 answered {code}: {message}")]
    Service {
        operation: &'static str,
        code: String,
        message: String,
    },
    /// EC2 could not be reached, did not answer in time, or sent an unreadable answer.
    #[error("failed to call EC2 {operation}: EC2 is unavailable: {message}")]
    Unavailable {
        operation: &'static str,
        message: String,
    },
}

impl Ec2CallError {
    /// The `ec2-error.code` the plugin sees.
    pub fn code(&self) -> &str {
        match self {
            Ec2CallError::TooLarge { .. } => "CelletRequestTooLarge",
            Ec2CallError::Invalid { .. } => "CelletInvalidRequest",
            Ec2CallError::Service { code, .. } => code,
            Ec2CallError::Unavailable { .. } => "CelletUnavailable",
        }
    }

    /// The `outcome` label of the metrics.
    fn outcome(&self) -> &'static str {
        match self {
            Ec2CallError::TooLarge { .. } => "too-large",
            Ec2CallError::Invalid { .. } => "invalid",
            Ec2CallError::Service { .. } => "ec2-error",
            Ec2CallError::Unavailable { .. } => "unavailable",
        }
    }

    fn from_sdk<E, R>(operation: &'static str, error: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        match &error {
            SdkError::ServiceError(context) => match context.err().code() {
                Some(code) => Ec2CallError::Service {
                    operation,
                    code: code.to_owned(),
                    message: context.err().message().unwrap_or_default().to_owned(),
                },
                // An answer without an EC2 error code (a proxy's 502 page) says nothing
                // about the request: treat it as an unavailable endpoint.
                None => Ec2CallError::Unavailable {
                    operation,
                    message: DisplayErrorContext(&error).to_string(),
                },
            },
            SdkError::ConstructionFailure(_) => Ec2CallError::Invalid {
                operation,
                message: DisplayErrorContext(&error).to_string(),
            },
            _ => Ec2CallError::Unavailable {
                operation,
                message: DisplayErrorContext(&error).to_string(),
            },
        }
    }

    fn into_wit(self) -> Ec2Error {
        let code = self.code().to_owned();
        let message = match self {
            Ec2CallError::Service { message, .. } => message,
            other => other.to_string(),
        };
        Ec2Error { code, message }
    }
}

/// The `ec2` capability of one plugin: an EC2 client and the plugin's name for logs.
///
/// Cloning is cheap (the SDK client is reference-counted), so the runtime gives each store
/// its own clone.
#[derive(Debug, Clone)]
pub struct Ec2Capability {
    plugin: Arc<str>,
    client: aws_sdk_ec2::Client,
    metrics: Ec2Metrics,
}

impl Ec2Capability {
    /// Build the client for `plugin` with the standard AWS credential chain and the
    /// region and endpoint of `settings`.
    pub async fn connect(plugin: &str, settings: &Ec2Settings, metrics: Ec2Metrics) -> Self {
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .load()
            .await;
        Self::from_sdk_config(plugin, &sdk, settings, metrics)
    }

    /// Build the client from an SDK config the caller loaded (with its own credentials
    /// provider, for instance); `settings` still decides region and endpoint.
    pub fn from_sdk_config(
        plugin: &str,
        sdk: &SdkConfig,
        settings: &Ec2Settings,
        metrics: Ec2Metrics,
    ) -> Self {
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .operation_timeout(OPERATION_TIMEOUT)
            .operation_attempt_timeout(ATTEMPT_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build();
        let mut config = aws_sdk_ec2::config::Builder::from(sdk)
            .region(Region::new(settings.region.clone()))
            .timeout_config(timeouts);
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint);
        }
        let config = config.build();
        Ec2Capability {
            plugin: Arc::from(plugin),
            client: aws_sdk_ec2::Client::from_conf(config),
            metrics,
        }
    }

    /// Link `cellet:plugin/ec2` into `linker`; `get` finds the capability in the store's
    /// data. The runtime calls this only for a plugin whose slot is granted `ec2`: an
    /// ungranted plugin that imports the interface then fails to instantiate.
    pub fn add_to_linker<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut Ec2Capability,
    ) -> wasmtime::Result<()> {
        wit::add_to_linker::<T, HasSelf<Ec2Capability>>(linker, get)
    }

    /// Run one operation inside its span, record its metrics and log its failure.
    async fn call<T>(
        &self,
        operation: &'static str,
        work: impl Future<Output = Result<T, Ec2CallError>>,
    ) -> Result<T, Ec2Error> {
        let span = tracing::info_span!(
            "ec2",
            plugin = %self.plugin,
            operation,
            outcome = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        let started = Instant::now();
        let result = work.instrument(span.clone()).await;
        let elapsed = started.elapsed();
        let outcome = result.as_ref().map_or_else(Ec2CallError::outcome, |_| "ok");
        span.record("outcome", outcome);
        span.record("duration_ms", elapsed.as_millis() as u64);
        self.metrics.observe(operation, outcome, elapsed);
        match &result {
            Ok(_) => tracing::debug!(parent: &span, "ec2 call succeeded"),
            // EC2's answers are often expected (a terminated instance is not found): the
            // plugin decides; the host only notes them.
            Err(error @ Ec2CallError::Service { .. }) => {
                tracing::info!(parent: &span, code = error.code(), error = %error, "ec2 call failed")
            }
            Err(error) => {
                tracing::warn!(parent: &span, code = error.code(), error = %error, "ec2 call failed")
            }
        }
        result.map_err(Ec2CallError::into_wit)
    }

    pub async fn run_instances(
        &self,
        request: RunInstancesRequest,
    ) -> Result<Vec<Instance>, Ec2Error> {
        const OP: &str = "run-instances";
        self.call(OP, async {
            let b = Bounds::new(OP);
            b.string("image-id", &request.image_id)?;
            b.string("instance-type", &request.instance_type)?;
            b.string("subnet-id", &request.subnet_id)?;
            b.strings("security-group-ids", &request.security_group_ids)?;
            b.tags("tags", &request.tags)?;
            b.string("client-token", &request.client_token)?;
            if let Some(arn) = &request.iam_instance_profile_arn {
                b.string("iam-instance-profile-arn", arn)?;
            }
            if let Some(data) = &request.user_data {
                b.string_within("user-data", data, MAX_USER_DATA_BYTES)?;
            }
            let secondary = b.count(
                "secondary-private-ip-count",
                request.secondary_private_ip_count,
            )?;

            // Subnet and groups go on the primary interface, since that is where EC2
            // takes the count of secondary addresses from.
            let interface = aws::InstanceNetworkInterfaceSpecification::builder()
                .device_index(0)
                .subnet_id(request.subnet_id)
                .set_groups(convert::non_empty(request.security_group_ids))
                .set_secondary_private_ip_address_count((secondary > 0).then_some(secondary))
                .build();
            let tags = convert::tags_to_aws(request.tags);
            let tag_specifications = convert::non_empty(tags).map(|tags| {
                [
                    aws::ResourceType::Instance,
                    aws::ResourceType::Volume,
                    aws::ResourceType::NetworkInterface,
                ]
                .into_iter()
                .map(|resource| {
                    aws::TagSpecification::builder()
                        .resource_type(resource)
                        .set_tags(Some(tags.clone()))
                        .build()
                })
                .collect()
            });
            let output = self
                .client
                .run_instances()
                .image_id(request.image_id)
                .instance_type(aws::InstanceType::from(request.instance_type.as_str()))
                .min_count(1)
                .max_count(1)
                .network_interfaces(interface)
                .set_user_data(
                    request
                        .user_data
                        .map(|d| base64::engine::general_purpose::STANDARD.encode(d)),
                )
                .set_tag_specifications(tag_specifications)
                .client_token(request.client_token)
                .set_iam_instance_profile(request.iam_instance_profile_arn.map(|arn| {
                    aws::IamInstanceProfileSpecification::builder()
                        .arn(arn)
                        .build()
                }))
                .send()
                .await
                .map_err(|e| Ec2CallError::from_sdk(OP, e))?;
            Ok(output.instances().iter().map(convert::instance).collect())
        })
        .await
    }

    pub async fn describe_instances(
        &self,
        instance_ids: Vec<String>,
        filters: Vec<Filter>,
    ) -> Result<Vec<Instance>, Ec2Error> {
        const OP: &str = "describe-instances";
        self.call(OP, async {
            let b = Bounds::new(OP);
            b.strings("instance-ids", &instance_ids)?;
            b.filters("filters", &filters)?;
            // EC2 refuses a page size together with ids; with ids the answer is one page.
            let page_size = instance_ids.is_empty().then_some(1000);
            let request = self
                .client
                .describe_instances()
                .set_instance_ids(convert::non_empty(instance_ids))
                .set_filters(convert::filters(filters))
                .set_max_results(page_size);
            collect_pages(
                OP,
                |token| request.clone().set_next_token(token).send(),
                |output| {
                    let items = output
                        .reservations()
                        .iter()
                        .flat_map(|r| r.instances())
                        .map(convert::instance)
                        .collect();
                    (items, output.next_token().map(str::to_owned))
                },
            )
            .await
        })
        .await
    }

    pub async fn terminate_instances(&self, instance_ids: Vec<String>) -> Result<(), Ec2Error> {
        const OP: &str = "terminate-instances";
        self.call(OP, async {
            Bounds::new(OP).strings("instance-ids", &instance_ids)?;
            self.client
                .terminate_instances()
                .set_instance_ids(Some(instance_ids))
                .send()
                .await
                .map_err(|e| Ec2CallError::from_sdk(OP, e))?;
            Ok(())
        })
        .await
    }

    pub async fn assign_private_ip_addresses(
        &self,
        network_interface_id: String,
        addresses: Vec<String>,
        count: u32,
    ) -> Result<Vec<String>, Ec2Error> {
        const OP: &str = "assign-private-ip-addresses";
        self.call(OP, async {
            let b = Bounds::new(OP);
            b.string("network-interface-id", &network_interface_id)?;
            b.strings("addresses", &addresses)?;
            let count = b.count("count", count)?;
            let output = self
                .client
                .assign_private_ip_addresses()
                .network_interface_id(network_interface_id)
                .set_private_ip_addresses(convert::non_empty(addresses))
                .set_secondary_private_ip_address_count((count > 0).then_some(count))
                .send()
                .await
                .map_err(|e| Ec2CallError::from_sdk(OP, e))?;
            Ok(output
                .assigned_private_ip_addresses()
                .iter()
                .filter_map(|a| a.private_ip_address().map(str::to_owned))
                .collect())
        })
        .await
    }

    pub async fn unassign_private_ip_addresses(
        &self,
        network_interface_id: String,
        addresses: Vec<String>,
    ) -> Result<(), Ec2Error> {
        const OP: &str = "unassign-private-ip-addresses";
        self.call(OP, async {
            let b = Bounds::new(OP);
            b.string("network-interface-id", &network_interface_id)?;
            b.strings("addresses", &addresses)?;
            self.client
                .unassign_private_ip_addresses()
                .network_interface_id(network_interface_id)
                .set_private_ip_addresses(Some(addresses))
                .send()
                .await
                .map_err(|e| Ec2CallError::from_sdk(OP, e))?;
            Ok(())
        })
        .await
    }

    pub async fn create_tags(
        &self,
        resource_ids: Vec<String>,
        tags: Vec<KeyValue>,
    ) -> Result<(), Ec2Error> {
        const OP: &str = "create-tags";
        self.call(OP, async {
            let b = Bounds::new(OP);
            b.strings("resource-ids", &resource_ids)?;
            b.tags("tags", &tags)?;
            self.client
                .create_tags()
                .set_resources(Some(resource_ids))
                .set_tags(Some(convert::tags_to_aws(tags)))
                .send()
                .await
                .map_err(|e| Ec2CallError::from_sdk(OP, e))?;
            Ok(())
        })
        .await
    }

    pub async fn describe_instance_types(
        &self,
        instance_types: Vec<String>,
    ) -> Result<Vec<InstanceTypeInfo>, Ec2Error> {
        const OP: &str = "describe-instance-types";
        self.call(OP, async {
            Bounds::new(OP).strings("instance-types", &instance_types)?;
            let request =
                self.client
                    .describe_instance_types()
                    .set_instance_types(convert::non_empty(
                        instance_types
                            .iter()
                            .map(|t| aws::InstanceType::from(t.as_str()))
                            .collect(),
                    ));
            // 100 is the largest page DescribeInstanceTypes allows.
            let request = if instance_types.is_empty() {
                request.max_results(100)
            } else {
                request
            };
            collect_pages(
                OP,
                |token| request.clone().set_next_token(token).send(),
                |output| {
                    let items = output
                        .instance_types()
                        .iter()
                        .map(convert::instance_type_info)
                        .collect();
                    (items, output.next_token().map(str::to_owned))
                },
            )
            .await
        })
        .await
    }

    pub async fn describe_subnets(
        &self,
        subnet_ids: Vec<String>,
        filters: Vec<Filter>,
    ) -> Result<Vec<Subnet>, Ec2Error> {
        const OP: &str = "describe-subnets";
        self.call(OP, async {
            let b = Bounds::new(OP);
            b.strings("subnet-ids", &subnet_ids)?;
            b.filters("filters", &filters)?;
            let page_size = subnet_ids.is_empty().then_some(1000);
            let request = self
                .client
                .describe_subnets()
                .set_subnet_ids(convert::non_empty(subnet_ids))
                .set_filters(convert::filters(filters))
                .set_max_results(page_size);
            collect_pages(
                OP,
                |token| request.clone().set_next_token(token).send(),
                |output| {
                    let items = output.subnets().iter().map(convert::subnet).collect();
                    (items, output.next_token().map(str::to_owned))
                },
            )
            .await
        })
        .await
    }

    pub async fn describe_images(
        &self,
        image_ids: Vec<String>,
        owners: Vec<String>,
        filters: Vec<Filter>,
    ) -> Result<Vec<Image>, Ec2Error> {
        const OP: &str = "describe-images";
        self.call(OP, async {
            let b = Bounds::new(OP);
            b.strings("image-ids", &image_ids)?;
            b.strings("owners", &owners)?;
            b.filters("filters", &filters)?;
            let page_size = image_ids.is_empty().then_some(1000);
            let request = self
                .client
                .describe_images()
                .set_image_ids(convert::non_empty(image_ids))
                .set_owners(convert::non_empty(owners))
                .set_filters(convert::filters(filters))
                .set_max_results(page_size);
            collect_pages(
                OP,
                |token| request.clone().set_next_token(token).send(),
                |output| {
                    let items = output.images().iter().map(convert::image).collect();
                    (items, output.next_token().map(str::to_owned))
                },
            )
            .await
        })
        .await
    }

    pub async fn describe_route_tables(
        &self,
        route_table_ids: Vec<String>,
        filters: Vec<Filter>,
    ) -> Result<Vec<RouteTable>, Ec2Error> {
        const OP: &str = "describe-route-tables";
        self.call(OP, async {
            let b = Bounds::new(OP);
            b.strings("route-table-ids", &route_table_ids)?;
            b.filters("filters", &filters)?;
            // 100 is the largest page DescribeRouteTables allows.
            let page_size = route_table_ids.is_empty().then_some(100);
            let request = self
                .client
                .describe_route_tables()
                .set_route_table_ids(convert::non_empty(route_table_ids))
                .set_filters(convert::filters(filters))
                .set_max_results(page_size);
            collect_pages(
                OP,
                |token| request.clone().set_next_token(token).send(),
                |output| {
                    let items = output
                        .route_tables()
                        .iter()
                        .map(convert::route_table)
                        .collect();
                    (items, output.next_token().map(str::to_owned))
                },
            )
            .await
        })
        .await
    }

    pub async fn create_route(
        &self,
        route_table_id: String,
        destination_cidr: String,
        target: RouteTarget,
    ) -> Result<(), Ec2Error> {
        const OP: &str = "create-route";
        self.call(OP, async {
            let route = RouteRequest::new(OP, route_table_id, destination_cidr, Some(target))?;
            let (instance, interface, gateway) = route.target();
            let (v4, v6) = route.destination();
            self.client
                .create_route()
                .route_table_id(route.table)
                .set_destination_cidr_block(v4)
                .set_destination_ipv6_cidr_block(v6)
                .set_instance_id(instance)
                .set_network_interface_id(interface)
                .set_gateway_id(gateway)
                .send()
                .await
                .map_err(|e| Ec2CallError::from_sdk(OP, e))?;
            Ok(())
        })
        .await
    }

    pub async fn replace_route(
        &self,
        route_table_id: String,
        destination_cidr: String,
        target: RouteTarget,
    ) -> Result<(), Ec2Error> {
        const OP: &str = "replace-route";
        self.call(OP, async {
            let route = RouteRequest::new(OP, route_table_id, destination_cidr, Some(target))?;
            let (instance, interface, gateway) = route.target();
            let (v4, v6) = route.destination();
            self.client
                .replace_route()
                .route_table_id(route.table)
                .set_destination_cidr_block(v4)
                .set_destination_ipv6_cidr_block(v6)
                .set_instance_id(instance)
                .set_network_interface_id(interface)
                .set_gateway_id(gateway)
                .send()
                .await
                .map_err(|e| Ec2CallError::from_sdk(OP, e))?;
            Ok(())
        })
        .await
    }

    pub async fn delete_route(
        &self,
        route_table_id: String,
        destination_cidr: String,
    ) -> Result<(), Ec2Error> {
        const OP: &str = "delete-route";
        self.call(OP, async {
            let route = RouteRequest::new(OP, route_table_id, destination_cidr, None)?;
            let (v4, v6) = route.destination();
            self.client
                .delete_route()
                .route_table_id(route.table)
                .set_destination_cidr_block(v4)
                .set_destination_ipv6_cidr_block(v6)
                .send()
                .await
                .map_err(|e| Ec2CallError::from_sdk(OP, e))?;
            Ok(())
        })
        .await
    }
}

/// The common part of the three route calls, checked against the bounds.
struct RouteRequest {
    table: String,
    destination: String,
    target: Option<RouteTarget>,
}

impl RouteRequest {
    fn new(
        operation: &'static str,
        table: String,
        destination: String,
        target: Option<RouteTarget>,
    ) -> Result<Self, Ec2CallError> {
        let b = Bounds::new(operation);
        b.string("route-table-id", &table)?;
        b.string("destination-cidr", &destination)?;
        if let Some(
            RouteTarget::InstanceId(id)
            | RouteTarget::NetworkInterfaceId(id)
            | RouteTarget::GatewayId(id),
        ) = &target
        {
            b.string("target", id)?;
        }
        Ok(RouteRequest {
            table,
            destination,
            target,
        })
    }

    /// EC2 takes IPv4 and IPv6 destinations in two different parameters.
    fn destination(&self) -> (Option<String>, Option<String>) {
        if self.destination.contains(':') {
            (None, Some(self.destination.clone()))
        } else {
            (Some(self.destination.clone()), None)
        }
    }

    /// The target as the (instance, interface, gateway) parameters of the request.
    fn target(&self) -> (Option<String>, Option<String>, Option<String>) {
        match self.target.clone() {
            Some(RouteTarget::InstanceId(id)) => (Some(id), None, None),
            Some(RouteTarget::NetworkInterfaceId(id)) => (None, Some(id), None),
            Some(RouteTarget::GatewayId(id)) => (None, None, Some(id)),
            None => (None, None, None),
        }
    }
}

/// Follow a Describe call's pages until EC2 has no more, [`MAX_RESULT_ITEMS`] are
/// collected, or [`MAX_PAGES`] were read; a truncated answer is logged.
async fn collect_pages<O, E, R, T, Fut>(
    operation: &'static str,
    mut send: impl FnMut(Option<String>) -> Fut,
    mut split: impl FnMut(O) -> (Vec<T>, Option<String>),
) -> Result<Vec<T>, Ec2CallError>
where
    Fut: Future<Output = Result<O, SdkError<E, R>>>,
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let mut items = Vec::new();
    let mut token = None;
    for _ in 0..MAX_PAGES {
        let output = send(token.take())
            .await
            .map_err(|e| Ec2CallError::from_sdk(operation, e))?;
        let (page, next) = split(output);
        items.extend(page);
        let next = next.filter(|t| !t.is_empty());
        if items.len() >= MAX_RESULT_ITEMS {
            if items.len() > MAX_RESULT_ITEMS || next.is_some() {
                tracing::warn!(operation, limit = MAX_RESULT_ITEMS, "ec2 result truncated");
            }
            items.truncate(MAX_RESULT_ITEMS);
            return Ok(items);
        }
        match next {
            Some(next) => token = Some(next),
            None => return Ok(items),
        }
    }
    tracing::warn!(
        operation,
        pages = MAX_PAGES,
        "ec2 result truncated: too many pages"
    );
    Ok(items)
}

/// The guest's view: each import delegates to the method of the same name above.
impl wit::Host for Ec2Capability {
    async fn run_instances(
        &mut self,
        request: RunInstancesRequest,
    ) -> Result<Vec<Instance>, Ec2Error> {
        Ec2Capability::run_instances(self, request).await
    }

    async fn describe_instances(
        &mut self,
        instance_ids: Vec<String>,
        filters: Vec<Filter>,
    ) -> Result<Vec<Instance>, Ec2Error> {
        Ec2Capability::describe_instances(self, instance_ids, filters).await
    }

    async fn terminate_instances(&mut self, instance_ids: Vec<String>) -> Result<(), Ec2Error> {
        Ec2Capability::terminate_instances(self, instance_ids).await
    }

    async fn assign_private_ip_addresses(
        &mut self,
        network_interface_id: String,
        addresses: Vec<String>,
        count: u32,
    ) -> Result<Vec<String>, Ec2Error> {
        Ec2Capability::assign_private_ip_addresses(self, network_interface_id, addresses, count)
            .await
    }

    async fn unassign_private_ip_addresses(
        &mut self,
        network_interface_id: String,
        addresses: Vec<String>,
    ) -> Result<(), Ec2Error> {
        Ec2Capability::unassign_private_ip_addresses(self, network_interface_id, addresses).await
    }

    async fn create_tags(
        &mut self,
        resource_ids: Vec<String>,
        tags: Vec<KeyValue>,
    ) -> Result<(), Ec2Error> {
        Ec2Capability::create_tags(self, resource_ids, tags).await
    }

    async fn describe_instance_types(
        &mut self,
        instance_types: Vec<String>,
    ) -> Result<Vec<InstanceTypeInfo>, Ec2Error> {
        Ec2Capability::describe_instance_types(self, instance_types).await
    }

    async fn describe_subnets(
        &mut self,
        subnet_ids: Vec<String>,
        filters: Vec<Filter>,
    ) -> Result<Vec<Subnet>, Ec2Error> {
        Ec2Capability::describe_subnets(self, subnet_ids, filters).await
    }

    async fn describe_images(
        &mut self,
        image_ids: Vec<String>,
        owners: Vec<String>,
        filters: Vec<Filter>,
    ) -> Result<Vec<Image>, Ec2Error> {
        Ec2Capability::describe_images(self, image_ids, owners, filters).await
    }

    async fn describe_route_tables(
        &mut self,
        route_table_ids: Vec<String>,
        filters: Vec<Filter>,
    ) -> Result<Vec<RouteTable>, Ec2Error> {
        Ec2Capability::describe_route_tables(self, route_table_ids, filters).await
    }

    async fn create_route(
        &mut self,
        route_table_id: String,
        destination_cidr: String,
        target: RouteTarget,
    ) -> Result<(), Ec2Error> {
        Ec2Capability::create_route(self, route_table_id, destination_cidr, target).await
    }

    async fn replace_route(
        &mut self,
        route_table_id: String,
        destination_cidr: String,
        target: RouteTarget,
    ) -> Result<(), Ec2Error> {
        Ec2Capability::replace_route(self, route_table_id, destination_cidr, target).await
    }

    async fn delete_route(
        &mut self,
        route_table_id: String,
        destination_cidr: String,
    ) -> Result<(), Ec2Error> {
        Ec2Capability::delete_route(self, route_table_id, destination_cidr).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_kebab_case_and_refuse_unknown_fields() {
        let settings = Ec2Settings::from_json(serde_json::json!({
            "region": "us-east-1",
            "endpoint": "http://127.0.0.1:5000",
        }))
        .unwrap();
        assert_eq!(settings.endpoint.as_deref(), Some("http://127.0.0.1:5000"));

        let error =
            Ec2Settings::from_json(serde_json::json!({ "region": "us-east-1", "regoin": "x" }))
                .unwrap_err()
                .to_string();
        assert!(error.contains("regoin"), "{error}");
    }

    #[test]
    fn settings_need_a_region_name_and_an_http_endpoint() {
        let error = Ec2Settings::from_json(serde_json::json!({ "region": "US East" })).unwrap_err();
        assert!(matches!(error, Ec2SettingsError::Region { .. }), "{error}");
        for endpoint in ["127.0.0.1:5000", "ftp://host", "http://", "http:///path"] {
            let error = Ec2Settings::from_json(
                serde_json::json!({ "region": "us-east-1", "endpoint": endpoint }),
            )
            .unwrap_err();
            assert!(
                matches!(error, Ec2SettingsError::Endpoint { .. }),
                "{endpoint}: {error}"
            );
        }
    }

    #[test]
    fn a_service_error_keeps_its_message_and_host_errors_explain_themselves() {
        let service = Ec2CallError::Service {
            operation: "terminate-instances",
            code: "InvalidInstanceID.NotFound".into(),
            message: "The instance ID 'i-1' does not exist".into(),
        }
        .into_wit();
        assert_eq!(service.code, "InvalidInstanceID.NotFound");
        assert_eq!(service.message, "The instance ID 'i-1' does not exist");

        let unavailable = Ec2CallError::Unavailable {
            operation: "describe-instances",
            message: "timeout".into(),
        }
        .into_wit();
        assert_eq!(unavailable.code, "CelletUnavailable");
        assert!(
            unavailable.message.contains("describe-instances"),
            "{}",
            unavailable.message
        );
    }
}

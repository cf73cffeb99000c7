//! The instances of one plugin: created from its `InstancePre`, initialised, kept warm,
//! leased out one call at a time, and discarded after a failure.
//!
//! # Expected flow
//!
//! A handle method takes a [`Lease`] (waiting for one of the plugin's `max_instances`
//! permits), which pops a warm instance or creates one (instantiate, then `init` with the
//! plugin's config). [`Lease::begin`] starts the call's clock; [`Lease::finish`] turns the
//! outcome into the typed result, records metrics, and decides the instance's fate.
//!
//! # Guarantees
//!
//! - At most `max_instances` instances of a plugin exist at once, warm or busy, so the
//!   engine's pool (which reserved them at load) never runs dry.
//! - An instance that trapped, passed its deadline or hit its memory cap is dropped; so is
//!   one whose call was cancelled (the caller's future dropped mid-call). The next call
//!   gets a fresh instance.
//! - An instance whose call returned normally (a value or the guest's own
//!   `plugin-error`) goes back to the warm list, most recently used first. So does one
//!   whose value the handle then refuses as invalid: that is the plugin's logic answering
//!   wrongly, not an instance left in a broken state.
//! - Every call is bounded twice: by the epoch callback while guest code runs, and by a
//!   host-side timer while the guest waits in a host function (`wasi:io/poll` for a sleep,
//!   an `ec2` request), where no guest code runs to notice the epoch.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::error::Elapsed;
use wasmtime::component::InstancePre;
use wasmtime::{Engine, Store};

use crate::plugins::bindings::{InitContext, PluginError, v0_1_0, v0_2_0};
use crate::plugins::capabilities::Grants;
use crate::plugins::handle::CallError;
use crate::plugins::instance::{self, Failure, HostState};
use crate::plugins::metrics::PluginSeries;
use crate::plugins::runtime::Reservation;
use crate::plugins::spec::{Limits, Slot};
use crate::plugins::validate::Violation;

/// Host-side steps of an instance's life, reported like calls (metrics, errors).
pub(crate) const INSTANTIATE: &str = "instantiate";
pub(crate) const INIT: &str = "init";

/// The typed bindings of one world, as the pool needs them.
pub(crate) trait Guest: Sized + Send + Sync + 'static {
    type Pre: Clone + Send + Sync + 'static;
    /// The world's exported functions, as named in WIT.
    const FUNCTIONS: &'static [&'static str];

    fn pre(pre: InstancePre<HostState>) -> wasmtime::Result<Self::Pre>;

    fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<HostState>,
    ) -> impl Future<Output = wasmtime::Result<Self>> + Send;

    fn init(
        &self,
        store: &mut Store<HostState>,
        context: &InitContext,
    ) -> impl Future<Output = wasmtime::Result<Result<(), PluginError>>> + Send;
}

/// The worlds' bindings (three per contract version) differ only in their names: the
/// generated `*Pre` type, the exported functions, and the accessor of the interface that
/// carries `init`. `init` takes the same `init-context` in every version.
macro_rules! guest {
    ($world:ty, $pre:ty, $interface:ident, $functions:expr) => {
        impl Guest for $world {
            type Pre = $pre;
            const FUNCTIONS: &'static [&'static str] = $functions;

            fn pre(pre: InstancePre<HostState>) -> wasmtime::Result<Self::Pre> {
                <$pre>::new(pre)
            }

            async fn instantiate(
                pre: &Self::Pre,
                store: &mut Store<HostState>,
            ) -> wasmtime::Result<Self> {
                pre.instantiate_async(store).await
            }

            async fn init(
                &self,
                store: &mut Store<HostState>,
                context: &InitContext,
            ) -> wasmtime::Result<Result<(), PluginError>> {
                self.$interface().call_init(store, context).await
            }
        }
    };
}

/// The `cloud-provider` world's functions: the same in both contract versions.
const CLOUD_FUNCTIONS: &[&str] = &[
    "node-capacity",
    "create-cell",
    "get-cell",
    "list-cells",
    "delete-cell",
    "list-routes",
    "ensure-route",
    "remove-route",
];

/// The three worlds of one contract version: they differ between versions only in the
/// accessors of their interfaces and the network world's functions.
macro_rules! worlds {
    ($version:ident, $network:ident, $network_functions:expr, $hostport:ident, $cloud:ident) => {
        guest!(
            $version::NetworkStrategy,
            $version::NetworkStrategyPre<HostState>,
            $network,
            $network_functions
        );
        guest!(
            $version::HostportPolicy,
            $version::HostportPolicyPre<HostState>,
            $hostport,
            &["admit"]
        );
        guest!(
            $version::CloudProvider,
            $version::CloudProviderPre<HostState>,
            $cloud,
            CLOUD_FUNCTIONS
        );
    };
}

worlds!(
    v0_1_0,
    cellet_plugin_network,
    &["plan-pod", "plan-cluster"],
    cellet_plugin_hostport,
    cellet_plugin_cloud
);
worlds!(
    v0_2_0,
    cellet_plugin0_2_0_network,
    &["plan-pod", "plan-node", "plan-routes"],
    cellet_plugin0_2_0_hostport,
    cellet_plugin0_2_0_cloud
);

/// Everything a pool is built from (see `PluginRuntime::load`).
pub(crate) struct PoolParts<G: Guest> {
    pub plugin: Arc<str>,
    pub slot: Slot,
    pub engine: Engine,
    pub pre: G::Pre,
    pub grants: Grants,
    pub limits: Limits,
    pub init: InitContext,
    pub series: PluginSeries,
    /// Slack on top of the deadline for the host-side timeout (see [`Pool::within_deadline`]).
    pub grace: Duration,
    pub reservation: Reservation,
}

/// The instances of one plugin.
pub(crate) struct Pool<G: Guest> {
    plugin: Arc<str>,
    slot: Slot,
    engine: Engine,
    pre: G::Pre,
    grants: Grants,
    limits: Limits,
    memory_cap: usize,
    init: InitContext,
    permits: Semaphore,
    /// Warm instances, most recently used last. Never locked across an `.await`.
    idle: Mutex<Vec<Warm<G>>>,
    series: PluginSeries,
    grace: Duration,
    _reservation: Reservation,
}

/// A live instance and its store, and the memory it last reported to the gauge.
struct Warm<G> {
    store: Store<HostState>,
    guest: G,
    memory_gauge: Gauge,
    reported_memory: i64,
}

impl<G> Warm<G> {
    fn report_memory(&mut self) {
        let now = i64::try_from(instance::memory_bytes(&self.store)).unwrap_or(i64::MAX);
        self.memory_gauge.inc_by(now - self.reported_memory);
        self.reported_memory = now;
    }
}

impl<G> Drop for Warm<G> {
    fn drop(&mut self) {
        self.memory_gauge.dec_by(self.reported_memory);
    }
}

impl<G: Guest> Pool<G> {
    pub(crate) fn new(parts: PoolParts<G>) -> Self {
        Pool {
            memory_cap: usize::try_from(parts.limits.memory_bytes).unwrap_or(usize::MAX),
            permits: Semaphore::new(parts.limits.max_instances as usize),
            idle: Mutex::new(Vec::with_capacity(parts.limits.max_instances as usize)),
            plugin: parts.plugin,
            slot: parts.slot,
            engine: parts.engine,
            pre: parts.pre,
            grants: parts.grants,
            limits: parts.limits,
            init: parts.init,
            series: parts.series,
            grace: parts.grace,
            _reservation: parts.reservation,
        }
    }

    pub(crate) fn plugin(&self) -> &str {
        &self.plugin
    }

    pub(crate) fn slot(&self) -> Slot {
        self.slot
    }

    /// Create one instance and park it warm: a plugin whose `init` refuses its config
    /// fails at load, not at the first pod.
    pub(crate) async fn warm_up(&self) -> Result<(), CallError> {
        drop(self.lease(INIT).await?);
        Ok(())
    }

    /// Drop every warm instance (busy ones are untouched), so the next call creates a
    /// fresh one exactly as after a failure. Returns how many were dropped. The stores are
    /// dropped after the lock is released. Added for `cellet-bench`, which times
    /// "fresh instance + call" through this real path rather than a copy of it.
    pub(crate) fn discard_idle(&self) -> usize {
        let idle: Vec<Warm<G>> = self
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        idle.len()
    }

    /// Wait for a permit, then take a warm instance or create one.
    pub(crate) async fn lease(&self, function: &'static str) -> Result<Lease<'_, G>, CallError> {
        let permit = self
            .permits
            .acquire()
            .await
            .expect("the pool never closes its semaphore");
        let started = Instant::now();
        let warm = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let warm = match warm {
            Some(warm) => warm,
            None => self.create(function).await?,
        };
        Ok(Lease {
            pool: self,
            warm: Some(warm),
            _permit: permit,
            started,
            in_call: false,
        })
    }

    async fn create(&self, for_function: &'static str) -> Result<Warm<G>, CallError> {
        let mut store = instance::new_store(&self.engine, &self.grants, self.memory_cap);
        let started = Instant::now();

        instance::arm(&mut store, self.limits.deadline);
        let instantiated = self
            .within_deadline(G::instantiate(&self.pre, &mut store))
            .await;
        let guest = match instantiated {
            Ok(Ok(guest)) => guest,
            Ok(Err(error)) => {
                let failure = instance::classify(&store, &error);
                return Err(self.creation_failed(INSTANTIATE, for_function, failure, &error));
            }
            Err(_elapsed) => {
                return Err(self.creation_failed_deadline(INSTANTIATE, for_function));
            }
        };

        instance::arm(&mut store, self.limits.deadline);
        let initialised = self
            .within_deadline(guest.init(&mut store, &self.init))
            .await;
        match initialised {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => return Err(self.refused(INIT, error)),
            Ok(Err(error)) => {
                let failure = instance::classify(&store, &error);
                return Err(self.creation_failed(INIT, for_function, failure, &error));
            }
            Err(_elapsed) => return Err(self.creation_failed_deadline(INIT, for_function)),
        }
        self.series.function(INIT).call(started.elapsed());
        self.series.instances_created.inc();

        let mut warm = Warm {
            store,
            guest,
            memory_gauge: self.series.memory.clone(),
            reported_memory: 0,
        };
        warm.report_memory();
        Ok(warm)
    }

    fn creation_failed(
        &self,
        step: &'static str,
        for_function: &'static str,
        failure: Failure,
        error: &wasmtime::Error,
    ) -> CallError {
        tracing::warn!(
            plugin = &*self.plugin,
            world = self.slot.world(),
            step,
            function = for_function,
            error = format!("{error:#}"),
            "failed to create a plugin instance"
        );
        match (step, failure) {
            // Not a guest trap: the host could not build the instance (a link error, the
            // engine's pool exhausted).
            (INSTANTIATE, Failure::Trapped(reason))
                if error.downcast_ref::<wasmtime::Trap>().is_none() =>
            {
                self.record(
                    INSTANTIATE,
                    CallError::Instantiate {
                        plugin: self.plugin.to_string(),
                        world: self.slot.world(),
                        reason,
                    },
                )
            }
            (_, failure) => self.failed(step, failure),
        }
    }

    fn creation_failed_deadline(
        &self,
        step: &'static str,
        for_function: &'static str,
    ) -> CallError {
        tracing::warn!(
            plugin = &*self.plugin,
            world = self.slot.world(),
            step,
            function = for_function,
            "plugin instance creation passed its deadline"
        );
        self.failed(step, Failure::DeadlineExceeded)
    }

    /// The error for a call of `function` that failed, with its metrics recorded.
    fn failed(&self, function: &'static str, failure: Failure) -> CallError {
        let plugin = self.plugin.to_string();
        let world = self.slot.world();
        let error = match failure {
            Failure::Trapped(reason) => CallError::Trapped {
                plugin,
                world,
                function,
                reason,
            },
            Failure::DeadlineExceeded => CallError::DeadlineExceeded {
                plugin,
                world,
                function,
                deadline: self.limits.deadline,
            },
            Failure::MemoryExceeded => CallError::MemoryExceeded {
                plugin,
                world,
                function,
                limit_bytes: self.limits.memory_bytes,
            },
        };
        self.record(function, error)
    }

    /// Count `error` against `function`, and hand it back.
    fn record(&self, function: &'static str, error: CallError) -> CallError {
        self.series.function(function).error(error.kind());
        error
    }

    /// The guest's own error for `function`, counted.
    fn refused(&self, function: &'static str, error: PluginError) -> CallError {
        self.record(
            function,
            CallError::Plugin {
                plugin: self.plugin.to_string(),
                world: self.slot.world(),
                function,
                error,
            },
        )
    }

    /// The error for a value of `function` that failed validation, with its metric.
    pub(crate) fn invalid(&self, function: &'static str, violation: Violation) -> CallError {
        tracing::warn!(
            plugin = &*self.plugin,
            world = self.slot.world(),
            function,
            field = %violation.field,
            reason = %violation.reason,
            "plugin returned an invalid value"
        );
        self.record(
            function,
            CallError::InvalidOutput {
                plugin: self.plugin.to_string(),
                world: self.slot.world(),
                function,
                field: violation.field,
                reason: violation.reason,
            },
        )
    }

    /// Bound a call by wall-clock time on the host side too. The epoch callback stops a
    /// guest that computes past its deadline; this stops a call waiting in a host function
    /// (a guest's `sleep` in `wasi:io/poll`, an EC2 request that never returns), where no
    /// guest code runs to notice the epoch. Every plugin needs it: WASI alone can wait.
    /// The grace lets the epoch fire first for guest code, so its error is the one seen.
    /// The timer costs nothing when the call completes on its first poll (tokio registers
    /// it only when polled).
    pub(crate) async fn within_deadline<F: Future>(&self, call: F) -> Result<F::Output, Elapsed> {
        tokio::time::timeout(self.limits.deadline + self.grace, call).await
    }
}

/// One instance, taken from a pool for one call.
pub(crate) struct Lease<'p, G: Guest> {
    pool: &'p Pool<G>,
    warm: Option<Warm<G>>,
    _permit: SemaphorePermit<'p>,
    started: Instant,
    /// Set by `begin`, cleared by `finish`: a lease dropped in between was cancelled
    /// mid-call and its instance is in an unknown state.
    in_call: bool,
}

impl<G: Guest> Lease<'_, G> {
    /// Start the call's clock; the caller then calls into the guest with these.
    pub(crate) fn begin(&mut self) -> (&G, &mut Store<HostState>) {
        let warm = self
            .warm
            .as_mut()
            .expect("a lease holds its instance until finished");
        instance::arm(&mut warm.store, self.pool.limits.deadline);
        self.in_call = true;
        (&warm.guest, &mut warm.store)
    }

    /// The value of a call of `function`, its outcome recorded and the instance kept or
    /// dropped as the module docs say.
    pub(crate) fn finish<T>(
        mut self,
        function: &'static str,
        outcome: Result<wasmtime::Result<Result<T, PluginError>>, Elapsed>,
    ) -> Result<T, CallError> {
        self.in_call = false;
        let pool = self.pool;
        pool.series.function(function).call(self.started.elapsed());
        let failure = match outcome {
            Ok(Ok(Ok(value))) => {
                if let Some(warm) = &mut self.warm {
                    warm.report_memory();
                }
                return Ok(value);
            }
            Ok(Ok(Err(error))) => return Err(pool.refused(function, error)),
            Ok(Err(error)) => {
                let warm = self
                    .warm
                    .as_ref()
                    .expect("a lease holds its instance until finished");
                let failure = instance::classify(&warm.store, &error);
                tracing::warn!(
                    plugin = pool.plugin(),
                    world = pool.slot.world(),
                    function,
                    error = format!("{error:#}"),
                    "plugin call failed; discarding the instance"
                );
                failure
            }
            Err(_elapsed) => {
                tracing::warn!(
                    plugin = pool.plugin(),
                    world = pool.slot.world(),
                    function,
                    "plugin call passed its deadline in a host function; discarding the instance"
                );
                Failure::DeadlineExceeded
            }
        };
        self.warm = None;
        Err(pool.failed(function, failure))
    }
}

impl<G: Guest> Drop for Lease<'_, G> {
    fn drop(&mut self) {
        let Some(warm) = self.warm.take() else { return };
        if self.in_call {
            tracing::debug!(
                plugin = self.pool.plugin(),
                "plugin call cancelled; discarding the instance"
            );
            return;
        }
        self.pool
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(warm);
    }
}

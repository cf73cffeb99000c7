//! One plugin instance's store: its state, its memory cap, its per-call deadline, and the
//! classification of a failed call into trap, deadline or memory.
//!
//! A store holds exactly one instance and lives exactly as long as it: an instance that
//! fails a call is dropped with its store, so nothing a broken guest left behind (a
//! poisoned lock in its globals, a half-written table) is ever seen again.

use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{
    Engine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::plugins::capabilities::{CapabilityStates, Grants};
use crate::plugins::wasi::{self, GuestOutput};

/// The data of a plugin instance's store.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// State of the capabilities the plugin was granted.
    pub(crate) caps: CapabilityStates,
    limiter: MemoryLimiter,
    output: GuestOutput,
    /// When the current call must have returned; read by the epoch callback.
    call_deadline: Instant,
}

impl HostState {
    /// The instance's resource table: WASI's handles, and the values a 0.2.0 call lends
    /// the plugin (`plugins::resources`).
    pub(crate) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Why a call into a guest failed, as far as the host can tell from the outer `Result`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The guest trapped (or a host function it called failed the call).
    Trapped(String),
    /// The call ran past its deadline.
    DeadlineExceeded,
    /// The guest tried to grow its memory past the cap.
    MemoryExceeded,
}

/// Raised by the epoch callback when a call passes its deadline.
#[derive(Debug, thiserror::Error)]
#[error("call passed its deadline")]
struct DeadlineReached;

/// Raised by the limiter when a guest asks for more memory than its cap.
#[derive(Debug, thiserror::Error)]
#[error("memory cap of {cap} bytes exceeded: the guest asked for {desired} bytes")]
struct MemoryCapExceeded {
    desired: usize,
    cap: usize,
}

/// `StoreLimits` (instance, table and memory counts; trap on a failed grow) plus a record
/// of the two facts the runtime reports: the memory in use, and whether the cap was hit.
struct MemoryLimiter {
    limits: StoreLimits,
    cap: usize,
    memory_bytes: usize,
    exceeded: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.exceeded = true;
            return Err(MemoryCapExceeded {
                desired,
                cap: self.cap,
            }
            .into());
        }
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if allowed {
            self.memory_bytes = desired;
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// Create the store of a new instance of a plugin with these grants and memory cap.
pub(crate) fn new_store(engine: &Engine, grants: &Grants, memory_cap: usize) -> Store<HostState> {
    let output = GuestOutput::new(grants.plugin());
    let state = HostState {
        wasi: wasi::empty_ctx(&output),
        table: ResourceTable::new(),
        caps: grants.prepare(),
        limiter: MemoryLimiter {
            limits: StoreLimitsBuilder::new()
                .memory_size(memory_cap)
                .trap_on_grow_failure(true)
                .build(),
            cap: memory_cap,
            memory_bytes: 0,
            exceeded: false,
        },
        output,
        call_deadline: Instant::now(),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.limiter);
    // Each epoch tick during a call lands here: past the deadline the call fails;
    // before it, the guest yields so a long call cannot monopolize a tokio worker.
    store.epoch_deadline_callback(|store| {
        if Instant::now() >= store.data().call_deadline {
            Err(DeadlineReached.into())
        } else {
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        }
    });
    store
}

/// Start the clock of one call (instantiation and `init` count as calls).
pub(crate) fn arm(store: &mut Store<HostState>, deadline: Duration) {
    let state = store.data_mut();
    state.call_deadline = Instant::now() + deadline;
    state.output.reset_budget();
    // Enter the callback at the next tick; it decides whether time is up.
    store.set_epoch_deadline(1);
}

/// Linear memory the instance holds, in bytes.
pub(crate) fn memory_bytes(store: &Store<HostState>) -> usize {
    store.data().limiter.memory_bytes
}

/// Why `error`, returned by a call on `store`, failed the call.
pub(crate) fn classify(store: &Store<HostState>, error: &wasmtime::Error) -> Failure {
    if store.data().limiter.exceeded || error.is::<MemoryCapExceeded>() {
        return Failure::MemoryExceeded;
    }
    if error.is::<DeadlineReached>() || error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return Failure::DeadlineExceeded;
    }
    let reason = match error.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("{error:#}"),
    };
    Failure::Trapped(reason)
}

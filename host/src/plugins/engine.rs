//! The one `wasmtime::Engine` of the process and the epoch ticker that drives call
//! deadlines.
//!
//! Every plugin shares this engine: compiled code, the pooling allocator's slots and the
//! epoch counter are engine-wide. The pooling allocator is sized from
//! [`EngineSettings`]: a bounded number of instances alive at once (warm or busy, across
//! all plugins), each with at most one linear memory of at most
//! `EngineSettings::max_memory_bytes`. Pre-reserving those slots makes a fresh instance
//! cost a few microseconds (copy-on-write memory images, no `mmap` per instance), which is
//! what lets the runtime throw an instance away after a trap instead of repairing it.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Errors building the engine or starting its ticker.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// wasmtime refused the configuration (for example a pool larger than the address
    /// space allows).
    #[error(
        "failed to build the wasmtime engine ({max_instances} instances of up to {max_memory_bytes} bytes): {source}"
    )]
    Build {
        max_instances: u32,
        max_memory_bytes: u64,
        #[source]
        source: wasmtime::Error,
    },
    /// The settings themselves are out of range.
    #[error("failed to build the wasmtime engine: invalid setting `{field}`: {reason}")]
    InvalidSetting { field: &'static str, reason: String },
    /// The OS refused to start the ticker thread.
    #[error("failed to start the epoch ticker thread: {source}")]
    Ticker {
        #[source]
        source: std::io::Error,
    },
}

/// Process-wide settings of the plugin engine (the config file's `plugins:` section maps
/// onto this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSettings {
    /// Instances alive at once across all plugins. Each loaded plugin reserves its
    /// `Limits::max_instances` from this total at load time, so the pool can never run dry
    /// at call time.
    pub max_instances: u32,
    /// Largest linear memory any plugin may be given (`Limits::memory_bytes` must not
    /// exceed it). It sizes the pool's memory slots.
    pub max_memory_bytes: u64,
    /// Period of the epoch ticker: the granularity of deadlines, and how often a guest
    /// that runs long yields its thread back to tokio.
    pub epoch_tick: Duration,
}

impl EngineSettings {
    pub const DEFAULT_MAX_INSTANCES: u32 = 32;
    pub const DEFAULT_MAX_MEMORY_BYTES: u64 = 256 * 1024 * 1024;
    /// 10 ms: deadlines are 1 s or more, so a 1 % granularity is plenty, and a thread
    /// waking 100 times a second costs nothing measurable.
    pub const DEFAULT_EPOCH_TICK: Duration = Duration::from_millis(10);
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            max_instances: Self::DEFAULT_MAX_INSTANCES,
            max_memory_bytes: Self::DEFAULT_MAX_MEMORY_BYTES,
            epoch_tick: Self::DEFAULT_EPOCH_TICK,
        }
    }
}

/// Core instances a Rust `wasm32-wasip2` component contains: the program plus the small
/// shim and fixup modules `wit-component` adds for lowered imports. Leaves room to spare.
const CORE_INSTANCES_PER_COMPONENT: u32 = 16;
/// Tables per component: one per core instance at most.
const TABLES_PER_COMPONENT: u32 = CORE_INSTANCES_PER_COMPONENT;
/// A plugin gets one linear memory; a second one is refused at instantiation.
const MEMORIES_PER_COMPONENT: u32 = 1;
/// Dirty pages of a freed memory slot reset in place (kept paged in) rather than returned
/// to the kernel, per slot. A Rust plugin's instance writes to a few dozen 4 KiB pages
/// (the top of its 1 MiB shadow stack, its heap); once madvised away, each of them costs
/// the next instance in that slot a page fault, which in a virtual machine is ~1 µs, and
/// those faults were most of "fresh instance + call". 1 MiB covers what a call dirties and
/// bounds what a slot keeps resident: at most `max_instances` MiB in all.
const MEMORY_KEEP_RESIDENT_BYTES: usize = 1 << 20;
/// The same for tables (funcref tables of a few hundred entries).
const TABLE_KEEP_RESIDENT_BYTES: usize = 64 << 10;

/// Build the engine: component model, epoch interruption, pooling allocator.
///
/// Async support is implied by the `async` feature in wasmtime 48: calls run on fibers
/// whose stacks also come from the pool (one per instance, plus slack for instantiation).
pub fn build_engine(settings: &EngineSettings) -> Result<Engine, EngineError> {
    if settings.max_instances == 0 {
        return Err(EngineError::InvalidSetting {
            field: "max-instances",
            reason: "must be at least 1".into(),
        });
    }
    if settings.epoch_tick.is_zero() {
        return Err(EngineError::InvalidSetting {
            field: "epoch-tick",
            reason: "must be longer than zero".into(),
        });
    }
    let max_memory = usize::try_from(settings.max_memory_bytes)
        .ok()
        .filter(|&m| m > 0 && m <= 4 << 30)
        .ok_or_else(|| EngineError::InvalidSetting {
            field: "max-memory-bytes",
            reason: format!(
                "{} is not between 1 byte and 4 GiB (plugins are 32-bit wasm)",
                settings.max_memory_bytes
            ),
        })?;

    let n = settings.max_instances;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
        .total_memories(n.saturating_mul(MEMORIES_PER_COMPONENT))
        .total_tables(n.saturating_mul(TABLES_PER_COMPONENT))
        .total_stacks(n.saturating_mul(2))
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .max_memory_size(max_memory);
    // Keeping pages resident is only a win when the kernel can tell wasmtime which pages
    // were dirtied (the PAGEMAP_SCAN ioctl, Linux 6.7+): it then resets exactly those.
    // Without it, wasmtime would `memset` the lowest addresses of every freed slot, which
    // for a Rust guest is its mostly untouched stack: the default `madvise` is better.
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        pool.pagemap_scan(Enabled::Yes)
            .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT_BYTES)
            .table_keep_resident(TABLE_KEEP_RESIDENT_BYTES);
    }

    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        // Copy-on-write images: instantiation maps the data segments instead of copying.
        .memory_init_cow(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));

    Engine::new(&config).map_err(|source| EngineError::Build {
        max_instances: n,
        max_memory_bytes: settings.max_memory_bytes,
        source,
    })
}

/// Advances the engine's epoch every `tick` until dropped.
///
/// A dedicated OS thread rather than a tokio task: a guest stuck in a loop occupies the
/// tokio worker that polls it until the epoch moves, and on a 2-core machine two such
/// guests would occupy every worker, so a ticker task could never run and the deadline
/// would never fire. A thread is scheduled by the kernel regardless of what tokio's
/// workers are doing.
#[derive(Debug)]
pub struct EpochTicker {
    /// Dropping the sender wakes the thread with `Disconnected`, which ends it.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl EpochTicker {
    pub fn start(engine: &Engine, tick: Duration) -> Result<Self, EngineError> {
        let engine = engine.clone();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("cellet-epoch".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    engine.increment_epoch();
                }
            })
            .map_err(|source| EngineError::Ticker { source })?;
        Ok(EpochTicker {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // The thread only sleeps and increments a counter: it cannot panic, and it
            // exits within one tick.
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_memory_slots_beyond_32_bit() {
        let settings = EngineSettings {
            max_memory_bytes: 8 << 30,
            ..EngineSettings::default()
        };
        let err = build_engine(&settings).unwrap_err();
        assert!(
            matches!(
                err,
                EngineError::InvalidSetting {
                    field: "max-memory-bytes",
                    ..
                }
            ),
            "{err}"
        );
    }

    /// A guest spinning forever is interrupted once the ticker has moved the epoch past
    /// its deadline, and the ticker thread ends when dropped.
    #[test]
    fn ticker_interrupts_a_spinning_guest() {
        let engine = build_engine(&EngineSettings::default()).unwrap();
        let module = wasmtime::Module::new(
            &engine,
            r#"(module (func (export "spin") (loop $l (br $l))))"#,
        )
        .unwrap();
        let mut store = wasmtime::Store::new(&engine, ());
        store.epoch_deadline_trap();
        store.set_epoch_deadline(3);
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        let spin = instance
            .get_typed_func::<(), ()>(&mut store, "spin")
            .unwrap();

        let ticker = EpochTicker::start(&engine, Duration::from_millis(5)).unwrap();
        let started = std::time::Instant::now();
        let err = spin.call(&mut store, ()).unwrap_err();
        let elapsed = started.elapsed();
        drop(ticker);

        assert_eq!(
            err.downcast_ref::<wasmtime::Trap>(),
            Some(&wasmtime::Trap::Interrupt),
            "{err:?}"
        );
        assert!(
            elapsed < Duration::from_secs(2),
            "interrupted only after {elapsed:?}"
        );
    }
}

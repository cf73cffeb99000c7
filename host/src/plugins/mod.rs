//! The plugin runtime: one wasmtime engine, components compiled once and cached, one
//! `InstancePre` per plugin, per-call deadlines and memory caps, capability linking and
//! validation of everything a plugin returns.

pub mod spec;

pub use spec::{Capability, Limits, PluginSpec, Slot};

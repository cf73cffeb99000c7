//! cellet: a virtual kubelet whose pods each run in a cloud instance of their own (a
//! *cell*), with the cloud, the network strategy and the hostPort policy supplied as
//! WebAssembly components. See `DESIGN.md` in the repository for the architecture.

pub mod api;
pub mod cells;
pub mod config;
pub mod kube;
pub mod net;
pub mod plan;
pub mod plugins;

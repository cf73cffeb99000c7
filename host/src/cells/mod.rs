//! Cells from the host's side: the CA that makes the host and each cell agent trust each
//! other ([`ca`]), the bootstrap document a cell starts from ([`bootstrap`]), and the client
//! of a cell's agent ([`client`]). The wire types are the agent's `protocol` module.

pub mod bootstrap;
pub mod ca;
pub mod client;

pub use bootstrap::{BootstrapBuildError, BootstrapSettings, bootstrap_document};
pub use ca::{CaError, CellCa, IssuedCert};
pub use client::{AgentClient, AgentTls, ClientError};

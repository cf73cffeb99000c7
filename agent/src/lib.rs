//! cellet-agent: runs in each cell. It builds the pod's network namespace, runs the pod's
//! containers and answers the cellet host over mutual TLS on the cell's management address.
//!
//! Without the default `server` feature only [`protocol`] is built: the wire types the host
//! shares with the agent.

pub mod protocol;

#[cfg(feature = "server")]
pub mod json_body;
#[cfg(feature = "server")]
pub mod netns;
#[cfg(feature = "server")]
pub mod pty;
#[cfg(feature = "server")]
pub mod runtime;
#[cfg(feature = "server")]
pub mod sandbox;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod stats;
#[cfg(feature = "server")]
pub mod streams;

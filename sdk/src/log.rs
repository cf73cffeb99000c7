//! Logging from a plugin. Inside the host, records go through the `log` capability into the
//! host's `tracing` output, tagged with the plugin's name and slot; in a native test they
//! are printed to stderr, where `cargo test` shows them for failing tests.
//!
//! ```
//! use cellet_sdk::log;
//! let pod = cellet_sdk::testing::PodBuilder::new("shop", "web").build();
//! log::info("cell created", &[("pod", &pod.key()), ("id", &"i-0123")]);
//! ```

use std::fmt::Display;

/// Severity of a record, as the host's `tracing` levels.
pub use crate::__bindings::cloud_world::cellet::plugin0_1_0::log::Level;

/// Write one record with structured fields. The host keeps at most 32 fields and cuts
/// messages longer than 4 KiB.
pub fn write(level: Level, message: &str, fields: &[(&str, &dyn Display)]) {
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    emit(level, message, &fields);
}

#[cfg(target_arch = "wasm32")]
fn emit(level: Level, message: &str, fields: &[(String, String)]) {
    crate::__bindings::cloud_world::cellet::plugin0_1_0::log::write(level, message, fields);
}

#[cfg(not(target_arch = "wasm32"))]
fn emit(level: Level, message: &str, fields: &[(String, String)]) {
    let fields: String = fields
        .iter()
        .map(|(key, value)| format!(" {key}={value:?}"))
        .collect();
    eprintln!("{level:?} {message}{fields}");
}

pub fn trace(message: &str, fields: &[(&str, &dyn Display)]) {
    write(Level::Trace, message, fields);
}

pub fn debug(message: &str, fields: &[(&str, &dyn Display)]) {
    write(Level::Debug, message, fields);
}

pub fn info(message: &str, fields: &[(&str, &dyn Display)]) {
    write(Level::Info, message, fields);
}

pub fn warn(message: &str, fields: &[(&str, &dyn Display)]) {
    write(Level::Warn, message, fields);
}

pub fn error(message: &str, fields: &[(&str, &dyn Display)]) {
    write(Level::Error, message, fields);
}

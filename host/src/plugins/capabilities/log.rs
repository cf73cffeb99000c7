//! `cellet:plugin/log`: a plugin's structured log records, written to the host's
//! `tracing` output under the target `cellet::plugin`, tagged with the plugin and its slot.
//!
//! Bounds (the guest controls every size here): the message is cut at
//! [`MAX_MESSAGE_BYTES`], at most [`MAX_FIELDS`] fields are kept, a field key is cut at
//! [`MAX_FIELD_KEY_BYTES`] and a value at [`MAX_FIELD_VALUE_BYTES`]. `tracing` needs field
//! names known at compile time, so the guest's fields travel as one `fields` value
//! rendered `key="value" key="value"`.

use std::fmt;
use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use crate::plugins::bindings::log::{self as wit, Level};
use crate::plugins::spec::Slot;

/// Messages longer than this are cut (the contract promises 4 KiB).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024;
/// Fields kept per record (the contract promises 32).
pub const MAX_FIELDS: usize = 32;
pub const MAX_FIELD_KEY_BYTES: usize = 64;
pub const MAX_FIELD_VALUE_BYTES: usize = 1024;

/// Per-instance state of the capability: who is logging.
#[derive(Debug, Clone)]
pub struct LogState {
    plugin: Arc<str>,
    slot: Slot,
}

impl LogState {
    pub fn new(plugin: Arc<str>, slot: Slot) -> Self {
        LogState { plugin, slot }
    }
}

/// Link `cellet:plugin/log` into `linker`, reading the state with `get`.
pub fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut LogState,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasSelf<LogState>>(linker, get)
}

impl wit::Host for LogState {
    fn write(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        let message = truncate(&message, MAX_MESSAGE_BYTES);
        let fields = GuestFields(&fields);
        let plugin = &*self.plugin;
        let slot = self.slot.config_key();
        // `tracing` takes the level as a constant, hence one arm per level.
        match level {
            Level::Trace => {
                tracing::trace!(target: "cellet::plugin", plugin, slot, %fields, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "cellet::plugin", plugin, slot, %fields, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "cellet::plugin", plugin, slot, %fields, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "cellet::plugin", plugin, slot, %fields, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "cellet::plugin", plugin, slot, %fields, "{message}")
            }
        }
    }
}

/// The guest's fields, rendered lazily (only if a subscriber wants the record) and
/// bounded as documented above.
struct GuestFields<'a>(&'a [(String, String)]);

impl fmt::Display for GuestFields<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (key, value)) in self.0.iter().take(MAX_FIELDS).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(
                f,
                "{}={:?}",
                truncate(key, MAX_FIELD_KEY_BYTES),
                truncate(value, MAX_FIELD_VALUE_BYTES)
            )?;
        }
        Ok(())
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_keeps_whole_characters() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("short", 64), "short");
    }

    #[test]
    fn fields_are_bounded_in_number_and_size() {
        let fields: Vec<(String, String)> = (0..40)
            .map(|i| (format!("k{i}"), "v".repeat(2 * MAX_FIELD_VALUE_BYTES)))
            .collect();
        let rendered = GuestFields(&fields).to_string();
        assert_eq!(rendered.matches('=').count(), MAX_FIELDS);
        assert!(!rendered.contains("k32="));
        let first = rendered.split(' ').next().unwrap();
        // key, `=`, the value cut to the cap, and its two quotes.
        assert_eq!(first.len(), "k0=".len() + MAX_FIELD_VALUE_BYTES + 2);
    }
}

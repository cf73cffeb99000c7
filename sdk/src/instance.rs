//! The guest-global slot that holds the value a plugin's `init` built.
//!
//! A component exports one world and the host never re-enters an instance, so a single
//! slot, borrowed mutably for the length of one call, is all the state handling the export
//! glue needs. It is a `thread_local` only because a plain `static` would need `Sync`; a
//! `wasm32-wasip2` guest has one thread.

use std::any::Any;
use std::cell::RefCell;

use crate::types::PluginError;

thread_local! {
    static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// Run a plugin's `init` and keep what it returns for the calls that follow. A failed
/// `init` leaves the slot empty, so later calls fail instead of using stale state.
pub(crate) fn init<T: 'static>(
    build: impl FnOnce() -> Result<T, PluginError>,
) -> Result<(), PluginError> {
    INSTANCE.with(|slot| *slot.borrow_mut() = None);
    let value = build()?;
    INSTANCE.with(|slot| *slot.borrow_mut() = Some(Box::new(value)));
    Ok(())
}

/// Lend the instance's value to one call.
pub(crate) fn with<T: 'static, R>(
    call: impl FnOnce(&mut T) -> Result<R, PluginError>,
) -> Result<R, PluginError> {
    INSTANCE.with(|slot| {
        let mut slot = slot.borrow_mut();
        match slot.as_mut().and_then(|value| value.downcast_mut::<T>()) {
            Some(value) => call(value),
            None => Err(PluginError::Internal(
                "plugin called before a successful `init` on this instance".to_string(),
            )),
        }
    })
}

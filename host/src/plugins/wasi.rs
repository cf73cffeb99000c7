//! The WASI a plugin sees: an empty world.
//!
//! Rust's standard library on `wasm32-wasip2` imports WASI 0.2 (clocks, random, stdio,
//! environment, filesystem), so every plugin needs it linked, but a plugin gets nothing
//! through it: no preopened directories, no environment variables, no arguments, no
//! sockets and no name lookups (the `WasiCtx` defaults), stdin closed. Its stdout and
//! stderr go to the host log, tagged with the plugin's name.
//!
//! Bounds: a line is logged in pieces of at most [`MAX_LINE_BYTES`], and at most [`MAX_BYTES_PER_CALL`] bytes of
//! output are logged per call (the budget is reset when a call starts); the rest is
//! dropped, with one warning.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

pub const MAX_LINE_BYTES: usize = 1024;
pub const MAX_BYTES_PER_CALL: usize = 16 * 1024;

/// A WASI context that grants nothing, with stdout and stderr sent to the log.
pub fn empty_ctx(output: &GuestOutput) -> WasiCtx {
    WasiCtxBuilder::new()
        .stdout(output.stream("stdout"))
        .stderr(output.stream("stderr"))
        .build()
}

/// The output of one instance: its budget and partial lines, shared by its streams.
#[derive(Debug, Clone)]
pub struct GuestOutput {
    plugin: Arc<str>,
    state: Arc<Mutex<OutputState>>,
}

#[derive(Debug, Default)]
struct OutputState {
    logged: usize,
    warned: bool,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl GuestOutput {
    pub fn new(plugin: Arc<str>) -> Self {
        GuestOutput {
            plugin,
            state: Arc::default(),
        }
    }

    /// Give the instance a fresh budget: called as each call starts.
    pub fn reset_budget(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.logged = 0;
        state.warned = false;
    }

    fn stream(&self, name: &'static str) -> GuestStream {
        GuestStream {
            output: self.clone(),
            name,
        }
    }

    fn write(&self, name: &'static str, mut bytes: &[u8]) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let state = &mut *state;
        let buffer = if name == "stdout" {
            &mut state.stdout
        } else {
            &mut state.stderr
        };
        while !bytes.is_empty() {
            // A line longer than the cap is logged in pieces: a guest that never writes a
            // newline cannot grow the buffer.
            let room = MAX_LINE_BYTES - buffer.len();
            let (take, consumed, complete) = match bytes.iter().take(room).position(|&b| b == b'\n')
            {
                Some(i) => (i, i + 1, true),
                None if bytes.len() >= room => (room, room, true),
                None => (bytes.len(), bytes.len(), false),
            };
            buffer.extend_from_slice(&bytes[..take]);
            bytes = &bytes[consumed..];
            if !complete {
                break;
            }
            let line = String::from_utf8_lossy(buffer).into_owned();
            buffer.clear();
            if state.logged >= MAX_BYTES_PER_CALL {
                if !state.warned {
                    state.warned = true;
                    tracing::warn!(
                        target: "cellet::plugin",
                        plugin = &*self.plugin,
                        stream = name,
                        "plugin output over {MAX_BYTES_PER_CALL} bytes in one call; dropping the rest"
                    );
                }
                continue;
            }
            state.logged += line.len();
            tracing::info!(
                target: "cellet::plugin",
                plugin = &*self.plugin,
                stream = name,
                "{line}"
            );
        }
    }
}

/// One of an instance's output streams, as WASI hands it to the guest.
struct GuestStream {
    output: GuestOutput,
    name: &'static str,
}

impl IsTerminal for GuestStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(GuestStream {
            output: self.output.clone(),
            name: self.name,
        })
    }
}

/// Writing never blocks: a line goes to `tracing` (which buffers in its subscriber) or is
/// dropped.
impl AsyncWrite for GuestStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.output.write(self.name, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_without_newline_never_grows_past_the_cap() {
        let output = GuestOutput::new(Arc::from("p"));
        output.write("stderr", &vec![b'x'; 10 * MAX_LINE_BYTES]);
        let state = output.state.lock().unwrap();
        assert!(state.stderr.len() < MAX_LINE_BYTES);
        // Ten full lines were logged and counted against the budget.
        assert_eq!(state.logged, 10 * MAX_LINE_BYTES);
    }

    #[test]
    fn the_budget_stops_logging_until_reset() {
        let output = GuestOutput::new(Arc::from("p"));
        let line = [vec![b'y'; 99], vec![b'\n']].concat();
        for _ in 0..(2 * MAX_BYTES_PER_CALL / 100) {
            output.write("stdout", &line);
        }
        {
            let state = output.state.lock().unwrap();
            assert!(state.warned);
            assert!(state.logged >= MAX_BYTES_PER_CALL);
            assert!(state.logged < MAX_BYTES_PER_CALL + 100);
        }
        output.reset_budget();
        let state = output.state.lock().unwrap();
        assert_eq!((state.logged, state.warned), (0, false));
    }
}

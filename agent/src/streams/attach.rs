//! `attach`: the running container's output as it is written, as a [`Session`].
//!
//! The runtime broadcasts what it reads from the container's pipes (besides writing the
//! log); an attached client gets it from the moment it attaches, stdout and stderr on their
//! own channels, until the run ends. Containers run with stdin closed and without a
//! terminal, so an attach has no input.

use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::sync::broadcast;

use super::channel::{self, Outcome};
use super::exec::ExecOptions;
use super::session::{Output, Session};
use crate::runtime::Live;

/// How much output may wait for the client before the broadcast is read more slowly.
const BUFFER: usize = 64 * 1024;

/// A session on the output of `live`.
pub fn session(mut live: broadcast::Receiver<Live>, options: &ExecOptions) -> Session {
    let pipe = |wanted: bool| wanted.then(|| tokio::io::duplex(BUFFER));
    let (stdout, stderr) = (pipe(options.stdout), pipe(options.stderr));
    let mut outputs: Vec<(u8, Output)> = Vec::new();
    let (mut out, mut err): (Option<DuplexStream>, Option<DuplexStream>) = (None, None);
    if let Some((writer, reader)) = stdout {
        outputs.push((channel::STDOUT, Box::new(reader)));
        out = Some(writer);
    }
    if let Some((writer, reader)) = stderr {
        outputs.push((channel::STDERR, Box::new(reader)));
        err = Some(writer);
    }
    tokio::spawn(async move {
        loop {
            let (writer, data) = match live.recv().await {
                Ok(Live::Stdout(data)) => (&mut out, data),
                Ok(Live::Stderr(data)) => (&mut err, data),
                Ok(Live::Closed) | Err(broadcast::error::RecvError::Closed) => break,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::info!(missed, "attached client fell behind; output skipped");
                    continue;
                }
            };
            if let Some(pipe) = writer
                && pipe.write_all(&data).await.is_err()
            {
                // The client is gone.
                break;
            }
        }
        // Dropping the writers ends the outputs, and then the session.
    });
    Session {
        stdin: None,
        outputs,
        resize: None,
        end: Box::pin(async { Outcome::Exited(0) }),
    }
}

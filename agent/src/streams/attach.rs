//! `attach`: the running container's own stdio, as a [`Session`], the way the kubelet's
//! runtimes serve it.
//!
//! - Output: the runtime broadcasts what it reads from the container (besides writing the
//!   log); every attached client gets all of it from the moment it attaches, stdout and
//!   stderr on their own channels (a terminal has one output, on stdout), until the run ends.
//! - Input (containers with `stdin: true`): what each client sends goes to the container's
//!   one stdin, a whole message at a time. With `stdinOnce`, the container's stdin closes
//!   when the first session's input ends (the client closes it, or goes away).
//! - Resize (containers with `tty: true`): any client's size is the terminal's.
//!
//! A client going away detaches it only; the container keeps running.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::broadcast;

use super::channel::{self, Outcome};
use super::exec::ExecOptions;
use super::session::{Input, Output, Session};
use crate::runtime::{Attachment, Console, Live};

/// How much output may wait for the client before the broadcast is read more slowly, and
/// how much input may wait for the container.
const BUFFER: usize = 64 * 1024;

/// A session on `attachment`, with the streams `options` ask for.
pub async fn session(attachment: Attachment, options: &ExecOptions) -> Session {
    let Attachment {
        output: mut live,
        console,
    } = attachment;
    let pipe = |wanted: bool| wanted.then(|| tokio::io::duplex(BUFFER));
    // A terminal's output is one stream: the client reads it on stdout whatever it asked.
    let (stdout, stderr) = (
        pipe(options.stdout || console.is_terminal()),
        pipe(options.stderr && !console.is_terminal()),
    );
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
    // A client that asks for no stdin, or a container without one, sends nothing that
    // goes anywhere (the kubelet's runtimes drop it too).
    let stdin = if options.stdin && console.has_stdin().await {
        Some(input(console.clone()))
    } else {
        None
    };
    let resize = console.is_terminal().then(|| {
        let console = console.clone();
        Box::new(move |columns, rows| console.resize(columns, rows)) as _
    });
    Session {
        stdin,
        outputs,
        resize,
        end: Box::pin(async { Outcome::Exited(0) }),
    }
}

/// The session's input: copied to the console until the client's stdin ends, which with
/// `stdinOnce` closes the container's.
fn input(console: Arc<Console>) -> Input {
    let (writer, mut reader) = tokio::io::duplex(BUFFER);
    tokio::spawn(async move {
        let mut chunk = vec![0u8; BUFFER];
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Err(error) = console.write(&chunk[..n]).await {
                        tracing::debug!(%error, "attached input not taken: the container's stdin is closed");
                        return;
                    }
                }
            }
        }
        if console.stdin_once() {
            tracing::info!(
                "the first attach session's input ended; closing the container's stdin (stdinOnce)"
            );
            console.close_stdin().await;
        }
    });
    Box::new(writer)
}

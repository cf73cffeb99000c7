//! One exec or attach session on its WebSocket: the process's output goes out on its
//! channels, the client's input and terminal sizes come in, and the final status closes it.
//!
//! # Expected flow
//! Outputs are copied until each reaches end of file, then the session's end (the exit
//! status) is awaited and sent on the status channel, then the socket is closed normally.
//! Client input is passed on with back-pressure: while a chunk waits for the process to
//! take it, no further message is read, but output keeps flowing (so a process that
//! writes before it reads cannot deadlock the session).
//!
//! # Caveats
//! A client that goes away ends the session's I/O only: its stdin is closed and, with a
//! terminal, the terminal hangs up, but the process is not killed (as the kubelet, which
//! leaves exec'd processes to finish).

use std::io;
use std::pin::Pin;

use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::channel::{self, Incoming, Outcome};

/// The size of one output read, and so the largest message the session sends.
const CHUNK: usize = 32 * 1024;

/// Something a session writes its client's input to.
pub type Input = Box<dyn AsyncWrite + Send + Unpin>;
/// Something a session reads output from.
pub type Output = Box<dyn AsyncRead + Send + Unpin>;
/// Sets the terminal's size (columns, rows).
pub type Resize = Box<dyn FnMut(u16, u16) -> io::Result<()> + Send>;

/// The process side of a session.
pub struct Session {
    /// Where the client's stdin goes; `None` when the session has no stdin.
    pub stdin: Option<Input>,
    /// Each output with the channel it is sent on.
    pub outputs: Vec<(u8, Output)>,
    /// With a terminal: how to resize it.
    pub resize: Option<Resize>,
    /// Completes when the process has ended, with how it ended.
    pub end: Pin<Box<dyn Future<Output = Outcome> + Send>>,
}

/// Serve `session` on `socket` until the process ends or the client goes away.
pub async fn serve(mut socket: WebSocket, session: Session) {
    let close_signal = socket
        .protocol()
        .is_some_and(|protocol| protocol == channel::V5);
    let Session {
        stdin,
        outputs,
        mut resize,
        end,
    } = session;
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(16);
    let driver = tokio::spawn(async move {
        let pumps = outputs
            .into_iter()
            .map(|(channel, reader)| pump(channel, reader, out_tx.clone()));
        futures_util::future::join_all(pumps).await;
        let outcome = end.await;
        let _ = out_tx.send(channel::status(&outcome)).await;
    });
    let mut stdin_tx = stdin.map(|writer| {
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        tokio::spawn(feed(writer, rx));
        tx
    });
    let mut pending: Option<Bytes> = None;
    loop {
        tokio::select! {
            permit = reserve(stdin_tx.clone()), if pending.is_some() => match (permit, pending.take()) {
                (Some(permit), Some(chunk)) => { permit.send(chunk); }
                // The process closed its stdin: the rest of the input goes nowhere.
                _ => stdin_tx = None,
            },
            incoming = socket.recv(), if pending.is_none() => match incoming {
                Some(Ok(Message::Binary(data))) => match channel::parse(data, close_signal) {
                    Ok(Incoming::Stdin(chunk)) => {
                        if stdin_tx.is_some() && !chunk.is_empty() {
                            pending = Some(chunk);
                        }
                    }
                    Ok(Incoming::CloseStdin) => stdin_tx = None,
                    Ok(Incoming::Resize { width, height }) => {
                        if let Some(resize) = &mut resize
                            && let Err(error) = resize(width, height)
                        {
                            tracing::debug!(%error, "terminal resize failed");
                        }
                    }
                    Ok(Incoming::Nothing) => {}
                    Err(error) => {
                        tracing::warn!(%error, "session ended on a malformed client message");
                        break;
                    }
                },
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(error)) => {
                    tracing::debug!(%error, "session socket failed");
                    break;
                }
                // Pings are answered by the WebSocket layer; text is not part of the protocol.
                Some(Ok(_)) => {}
            },
            outgoing = out_rx.recv() => match outgoing {
                Some(message) => {
                    if socket.send(Message::Binary(message)).await.is_err() {
                        break;
                    }
                }
                None => {
                    let close = CloseFrame { code: close_code::NORMAL, reason: "".into() };
                    let _ = socket.send(Message::Close(Some(close))).await;
                    break;
                }
            },
        }
    }
    // A client gone early: release the outputs (a terminal hangs up) and stop waiting.
    driver.abort();
}

async fn reserve(tx: Option<mpsc::Sender<Bytes>>) -> Option<mpsc::OwnedPermit<Bytes>> {
    tx?.reserve_owned().await.ok()
}

/// Copy `reader` to the client on `channel` until end of file.
async fn pump(channel: u8, mut reader: Output, out: mpsc::Sender<Bytes>) {
    let mut buffer = vec![0u8; CHUNK];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) => break,
            Ok(n) => {
                if out
                    .send(channel::frame(channel, &buffer[..n]))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Err(error) => {
                tracing::debug!(channel, %error, "session output ended with an error");
                break;
            }
        }
    }
}

/// Write the client's input to `writer` until the client closes its stdin.
async fn feed(mut writer: Input, mut input: mpsc::Receiver<Bytes>) {
    while let Some(chunk) = input.recv().await {
        if writer.write_all(&chunk).await.is_err() || writer.flush().await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

//! `port-forward`: SPDY streams tunnelled in a WebSocket (`SPDY/3.1+portforward.k8s.io`),
//! each pair of them one connection to a port of the pod.
//!
//! # Expected flow
//! The client opens two streams per connection, both with headers `port` and `requestid`:
//! `streamtype: error` (which it half-closes at once) and `streamtype: data`. Each stream is
//! accepted (`SYN_REPLY`); once both of a request have arrived, the agent connects to
//! `127.0.0.1:port` inside the pod's network namespace (as the kubelet does, so a server
//! bound to the pod's loopback is reached too) and copies the data stream to and from the
//! socket. When the pod's side closes, the data stream is closed and then the error stream;
//! a connection that fails is reported as text on the error stream, which kubectl prints.
//!
//! # Caveats
//! Data the client sends is queued for the pod's socket without a bound: SPDY's flow
//! control is not spoken by Kubernetes' own peer either, so a client can only be held back
//! by the WebSocket's TCP connection, which this loop keeps reading so as never to stall
//! other streams.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::spdy::{self, Codec, Frame};

/// The WebSocket protocol kubectl tunnels port-forward's SPDY in.
pub const PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// How long connecting to the pod's port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest data frame sent.
const CHUNK: usize = 32 * 1024;

/// The streams of one request seen so far.
#[derive(Default)]
struct Request {
    port: String,
    error: Option<u32>,
    data: Option<(u32, mpsc::UnboundedReceiver<Bytes>)>,
}

/// Serve port-forward streams on `socket` until the client leaves; connections go to the
/// pod's namespace `netns` (the agent's own for `hostNetwork` pods).
pub async fn serve(mut socket: WebSocket, netns: Option<PathBuf>) {
    let mut codec = Codec::new();
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(64);
    let mut to_pod: HashMap<u32, mpsc::UnboundedSender<Bytes>> = HashMap::new();
    let mut requests: HashMap<String, Request> = HashMap::new();
    let mut connections = JoinSet::new();
    'session: loop {
        tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Binary(bytes))) => {
                    codec.feed(&bytes);
                    loop {
                        let frame = match codec.next_frame() {
                            Ok(Some(frame)) => frame,
                            Ok(None) => break,
                            Err(error) => {
                                tracing::warn!(%error, "port-forward session ended on a bad frame");
                                break 'session;
                            }
                        };
                        match frame {
                            Frame::SynStream { id, headers, .. } => {
                                if socket.send(Message::Binary(codec.syn_reply(id))).await.is_err() {
                                    break 'session;
                                }
                                let header = |name: &str| {
                                    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap_or_default()
                                };
                                let request_id = header("requestid");
                                let request = requests.entry(request_id.clone()).or_default();
                                request.port = header("port");
                                match header("streamtype").as_str() {
                                    "error" => request.error = Some(id),
                                    "data" => {
                                        let (tx, rx) = mpsc::unbounded_channel();
                                        to_pod.insert(id, tx);
                                        request.data = Some((id, rx));
                                    }
                                    other => tracing::debug!(stream_type = other, "unknown port-forward stream ignored"),
                                }
                                if request.error.is_some() && request.data.is_some() {
                                    let request = requests.remove(&request_id).unwrap_or_default();
                                    if let (Some(error), Some((data, from_client))) = (request.error, request.data) {
                                        connections.spawn(forward(request.port, error, data, from_client, out_tx.clone(), netns.clone()));
                                    }
                                }
                            }
                            Frame::Data { id, fin, data } => {
                                if let Some(tx) = to_pod.get(&id) && !data.is_empty() {
                                    let _ = tx.send(data);
                                }
                                if fin {
                                    to_pod.remove(&id);
                                }
                            }
                            Frame::RstStream { id } => {
                                to_pod.remove(&id);
                            }
                            Frame::Ping(id) => {
                                if socket.send(Message::Binary(spdy::ping(id))).await.is_err() {
                                    break 'session;
                                }
                            }
                            Frame::GoAway => break 'session,
                            Frame::Ignored => {}
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(error)) => {
                    tracing::debug!(%error, "port-forward socket failed");
                    break;
                }
                Some(Ok(_)) => {}
            },
            Some(frame) = out_rx.recv() => {
                if socket.send(Message::Binary(frame)).await.is_err() {
                    break;
                }
            }
        }
    }
    connections.abort_all();
}

/// One forwarded connection: the pod's `port`, and the client's streams for it.
async fn forward(
    port: String,
    error_stream: u32,
    data_stream: u32,
    mut from_client: mpsc::UnboundedReceiver<Bytes>,
    out: mpsc::Sender<Bytes>,
    netns: Option<PathBuf>,
) {
    let connected = match port.parse::<u16>() {
        Ok(number) => connect(netns, number).await,
        Err(_) => Err(io::Error::other(format!("invalid port {port:?}"))),
    };
    match connected {
        Err(error) => {
            let message = format!("failed to connect to localhost:{port} inside the pod: {error}");
            tracing::info!(%message, "port-forward refused");
            let _ = out
                .send(spdy::data(error_stream, message.as_bytes(), false))
                .await;
        }
        Ok(stream) => {
            let (mut read, mut write) = stream.into_split();
            let upstream = tokio::spawn(async move {
                while let Some(chunk) = from_client.recv().await {
                    if write.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                let _ = write.shutdown().await;
            });
            let mut buffer = vec![0u8; CHUNK];
            loop {
                match read.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if out
                            .send(spdy::data(data_stream, &buffer[..n], false))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
            // The pod closed the connection: so does the client's side (the kubelet's way).
            upstream.abort();
        }
    }
    let _ = out.send(spdy::data(data_stream, &[], true)).await;
    let _ = out.send(spdy::data(error_stream, &[], true)).await;
}

/// Connect to `127.0.0.1:port` in the namespace `netns`: on a thread of its own, which
/// enters the namespace and ends, since `setns` changes the calling thread for good. The
/// socket stays in the namespace it was made in.
async fn connect(netns: Option<PathBuf>, port: u16) -> io::Result<TcpStream> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Some(netns) = netns else {
        return tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?;
    };
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        let connected = (|| {
            let namespace = std::fs::File::open(&netns)?;
            nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)?;
            let stream = std::net::TcpStream::connect_timeout(&address, CONNECT_TIMEOUT)?;
            stream.set_nonblocking(true)?;
            Ok::<_, io::Error>(stream)
        })();
        let _ = tx.send(connected);
    });
    let stream = rx
        .await
        .map_err(|_| io::Error::other("the connecting thread ended"))??;
    TcpStream::from_std(stream)
}

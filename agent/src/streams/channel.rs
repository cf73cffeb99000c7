//! The kubelet's WebSocket channel protocols for exec and attach: `v5.channel.k8s.io`
//! (what kubectl 1.37 asks for) and `v4.channel.k8s.io` (the same without the close signal).
//!
//! Every binary message starts with a channel byte: 0 stdin (client → server), 1 stdout,
//! 2 stderr, 3 the final status (a `metav1.Status` as JSON), 4 terminal resize (JSON
//! `{"Width":…,"Height":…}`); in v5 a message `[255, n]` half-closes channel `n` (the
//! client's end of stdin). Described from k8s.io/streaming's `wsstream` and client-go's
//! `tools/remotecommand` (v4.go: how the status carries the exit code).

use bytes::Bytes;
use serde::Deserialize;

/// The protocols served, most preferred first.
pub const PROTOCOLS: [&str; 2] = [V5, V4];
pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const STATUS: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5: `[CLOSE, channel]` half-closes `channel`.
const CLOSE: u8 = 255;

/// What a client message asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Stdin(Bytes),
    /// The client has no more input (v5 only).
    CloseStdin,
    Resize {
        width: u16,
        height: u16,
    },
    /// An empty message, or a channel a client does not write to; ignored as the kubelet does.
    Nothing,
}

/// A client message the protocol does not allow.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChannelError {
    #[error("a stream close signal must name exactly one channel, got {0} bytes")]
    Close(usize),
    #[error("failed to read a terminal size from the resize channel: {0}")]
    Resize(String),
}

/// Read one binary message of the client.
pub fn parse(message: Bytes, close_signal: bool) -> Result<Incoming, ChannelError> {
    let Some(&channel) = message.first() else {
        return Ok(Incoming::Nothing);
    };
    let data = message.slice(1..);
    match channel {
        STDIN => Ok(Incoming::Stdin(data)),
        RESIZE => {
            #[derive(Deserialize)]
            #[serde(rename_all = "PascalCase")]
            struct Size {
                width: u16,
                height: u16,
            }
            let size: Size = serde_json::from_slice(&data)
                .map_err(|error| ChannelError::Resize(error.to_string()))?;
            Ok(Incoming::Resize {
                width: size.width,
                height: size.height,
            })
        }
        CLOSE if close_signal => match *data {
            [STDIN] => Ok(Incoming::CloseStdin),
            [_] => Ok(Incoming::Nothing),
            _ => Err(ChannelError::Close(data.len())),
        },
        _ => Ok(Incoming::Nothing),
    }
}

/// A server message: `data` on `channel`.
pub fn frame(channel: u8, data: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(data.len() + 1);
    frame.push(channel);
    frame.extend_from_slice(data);
    frame.into()
}

/// How a session ended, as the status channel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The process exited with this code (0 is success).
    Exited(i32),
    /// The session could not run or broke (the message says why).
    Failed(String),
}

/// The status message of `outcome` (channel byte included): `Success`, or a `Failure` with
/// reason `NonZeroExitCode` and the code as the `ExitCode` cause, which kubectl turns into
/// its own exit code.
pub fn status(outcome: &Outcome) -> Bytes {
    let body = match outcome {
        Outcome::Exited(0) => serde_json::json!({"metadata": {}, "status": "Success"}),
        Outcome::Exited(code) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Outcome::Failed(message) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "InternalError",
            "code": 500,
        }),
    };
    frame(STATUS, body.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_are_read_by_channel() {
        assert_eq!(
            parse(Bytes::from_static(b"\x00hi\n"), true),
            Ok(Incoming::Stdin(Bytes::from_static(b"hi\n")))
        );
        assert_eq!(
            parse(
                Bytes::from_static(b"\x04{\"Width\":120,\"Height\":40}"),
                true
            ),
            Ok(Incoming::Resize {
                width: 120,
                height: 40
            })
        );
        assert_eq!(
            parse(Bytes::from_static(b"\xff\x00"), true),
            Ok(Incoming::CloseStdin)
        );
        assert_eq!(
            parse(Bytes::from_static(b"\xff\x00"), false),
            Ok(Incoming::Nothing),
            "v4 has no close signal"
        );
        assert_eq!(parse(Bytes::new(), true), Ok(Incoming::Nothing));
        assert!(parse(Bytes::from_static(b"\xff\x00\x01"), true).is_err());
        assert!(parse(Bytes::from_static(b"\x04{}"), true).is_err());
    }

    #[test]
    fn the_exit_code_travels_as_kubectl_reads_it() {
        let message = status(&Outcome::Exited(3));
        assert_eq!(message[0], STATUS);
        let status: serde_json::Value = serde_json::from_slice(&message[1..]).unwrap();
        assert_eq!(status["status"], "Failure");
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(
            status["details"]["causes"][0],
            serde_json::json!({"reason": "ExitCode", "message": "3"})
        );
        let success: serde_json::Value =
            serde_json::from_slice(&status_body(&Outcome::Exited(0))).unwrap();
        assert_eq!(success["status"], "Success");
    }

    fn status_body(outcome: &Outcome) -> Vec<u8> {
        status(outcome)[1..].to_vec()
    }
}

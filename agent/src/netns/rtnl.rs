//! A blocking rtnetlink socket that sends the pod network's requests in batches: every
//! request of one namespace in one datagram, answered by one acknowledgement each.
//!
//! Why not rtnetlink's asynchronous handle, which the pod network used before: there, each
//! request is a round trip through the async runtime (send, wait for the socket to become
//! readable, wake the task), one after the other — about fifteen per pod, each a scheduler
//! wake-up that a loaded machine delays. The kernel handles the messages of one datagram in
//! order, within the `sendmsg` call, so a batch costs the kernel's work and one wake-up. The
//! messages are still rtnetlink's own types, built with its builders.
//!
//! A refused request does not stop the kernel from handling the ones after it in the same
//! datagram; the batch's error is the first refusal, and what was made stays for the
//! teardown to remove (as with one request at a time).

use std::io;

use nix::libc;
use rtnetlink::packet_core::{
    ErrorMessage, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::NetError;

/// Large enough for any datagram the kernel sends a dump reader (at most 32 KiB).
const RECEIVE_BUFFER: usize = 64 * 1024;

/// One request of a batch and what it does, to name it when the kernel refuses it.
pub(super) struct Request {
    message: RouteNetlinkMessage,
    /// `NLM_F_*` beyond `NLM_F_REQUEST | NLM_F_ACK`: create, replace, exclusive.
    flags: u16,
    action: String,
    /// "No such device/route/address" is success: the object is gone already.
    unless_gone: bool,
}

impl Request {
    pub(super) fn new(message: RouteNetlinkMessage, flags: u16, action: impl Into<String>) -> Self {
        Request {
            message,
            flags,
            action: action.into(),
            unless_gone: false,
        }
    }

    /// A deletion that is done when its object is gone already.
    pub(super) fn unless_gone(self) -> Self {
        Request {
            unless_gone: true,
            ..self
        }
    }
}

/// True for the kernel's "no such device/route/address" refusals.
fn is_missing(error: &ErrorMessage) -> bool {
    matches!(
        error.to_io().raw_os_error(),
        Some(libc::ENODEV | libc::ESRCH | libc::ENOENT | libc::EADDRNOTAVAIL)
    )
}

/// An rtnetlink socket of the namespace the thread that opened it was in.
pub(super) struct Rtnl {
    socket: Socket,
    sequence: u32,
    buffer: Vec<u8>,
}

impl Rtnl {
    /// Open a socket in the calling thread's network namespace (it stays there).
    pub(super) fn open() -> io::Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        // Refusals then carry the refused message's header only, not the whole message.
        socket.set_cap_ack(true)?;
        Ok(Rtnl {
            socket,
            sequence: 0,
            buffer: vec![0; RECEIVE_BUFFER],
        })
    }

    /// Send `requests` in one datagram and wait for every acknowledgement.
    ///
    /// # Errors
    /// The first request the kernel refused, named by its action.
    pub(super) fn apply(&mut self, requests: Vec<Request>) -> Result<(), NetError> {
        if requests.is_empty() {
            return Ok(());
        }
        let first = self.sequence.wrapping_add(1);
        let mut datagram = Vec::new();
        let mut actions = Vec::with_capacity(requests.len());
        let mut unless_gone = Vec::with_capacity(requests.len());
        for request in requests {
            self.encode(
                request.message,
                NLM_F_REQUEST | NLM_F_ACK | request.flags,
                &mut datagram,
            );
            actions.push(request.action);
            unless_gone.push(request.unless_gone);
        }
        self.send(&datagram, "send a batch of rtnetlink requests")?;
        let mut refusals: Vec<(usize, rtnetlink::Error)> = Vec::new();
        let mut answered = 0;
        while answered < actions.len() {
            for message in self.receive()? {
                let NetlinkPayload::Error(error) = message.payload else {
                    continue;
                };
                let step = message.header.sequence_number.wrapping_sub(first) as usize;
                if step >= actions.len() {
                    // An answer to an earlier exchange on this socket.
                    continue;
                }
                answered += 1;
                if error.code.is_some() && !(unless_gone[step] && is_missing(&error)) {
                    refusals.push((step, rtnetlink::Error::NetlinkError(error)));
                }
            }
        }
        match refusals.into_iter().min_by_key(|(step, _)| *step) {
            Some((step, source)) => Err(NetError::Netlink {
                action: actions.swap_remove(step),
                source,
            }),
            None => Ok(()),
        }
    }

    /// The link named `name`, `None` when there is none.
    pub(super) fn link(&mut self, name: &str) -> Result<Option<LinkMessage>, NetError> {
        let mut query = LinkMessage::default();
        query
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        let action = format!("look up link {name}");
        let sequence = self.send_one(RouteNetlinkMessage::GetLink(query), 0, &action)?;
        loop {
            for message in self.receive()? {
                if message.header.sequence_number != sequence {
                    continue;
                }
                match message.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                        return Ok(Some(link));
                    }
                    NetlinkPayload::Error(error) if error.code.is_some() => {
                        if is_missing(&error) {
                            return Ok(None);
                        }
                        return Err(NetError::Netlink {
                            action,
                            source: rtnetlink::Error::NetlinkError(error),
                        });
                    }
                    _ => {}
                }
            }
        }
    }

    /// Every object a dump request (`RTM_GETADDR`, `RTM_GETROUTE`, ...) lists.
    pub(super) fn dump(
        &mut self,
        query: RouteNetlinkMessage,
        action: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, NetError> {
        let sequence = self.send_one(query, NLM_F_DUMP, action)?;
        let mut found = Vec::new();
        loop {
            for message in self.receive()? {
                if message.header.sequence_number != sequence {
                    continue;
                }
                match message.payload {
                    NetlinkPayload::InnerMessage(inner) => found.push(inner),
                    NetlinkPayload::Done(_) => return Ok(found),
                    NetlinkPayload::Error(error) if error.code.is_some() => {
                        return Err(NetError::Netlink {
                            action: action.to_string(),
                            source: rtnetlink::Error::NetlinkError(error),
                        });
                    }
                    _ => {}
                }
            }
        }
    }

    fn send_one(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        action: &str,
    ) -> Result<u32, NetError> {
        let mut datagram = Vec::new();
        self.encode(message, NLM_F_REQUEST | flags, &mut datagram);
        self.send(&datagram, action)?;
        Ok(self.sequence)
    }

    /// Append `message` with the next sequence number to `datagram`.
    fn encode(&mut self, message: RouteNetlinkMessage, flags: u16, datagram: &mut Vec<u8>) {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.sequence;
        let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        message.finalize();
        let at = datagram.len();
        // Messages are aligned to 4 bytes; rtnetlink's lengths are multiples of 4 already.
        datagram.resize(at + message.buffer_len().next_multiple_of(4), 0);
        message.serialize(&mut datagram[at..]);
    }

    fn send(&self, datagram: &[u8], action: &str) -> Result<(), NetError> {
        self.socket
            .send_to(datagram, &SocketAddr::new(0, 0), 0)
            .map(drop)
            .map_err(super::io_error(action))
    }

    /// The messages of the next datagram.
    fn receive(&mut self) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>, NetError> {
        let received = self
            .socket
            .recv(&mut &mut self.buffer[..], 0)
            .map_err(super::io_error("read the kernel's rtnetlink answer"))?;
        let mut messages = Vec::new();
        let mut at = 0;
        while at < received {
            let message =
                NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buffer[at..received])
                    .map_err(|error| NetError::Io {
                        action: "decode the kernel's rtnetlink answer".into(),
                        source: io::Error::new(io::ErrorKind::InvalidData, error.to_string()),
                    })?;
            let length = (message.header.length as usize).next_multiple_of(4);
            if length == 0 {
                break;
            }
            at += length;
            messages.push(message);
        }
        Ok(messages)
    }
}

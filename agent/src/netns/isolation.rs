//! The nftables table that keeps the pod off the cell, written over netlink: one nf_tables
//! batch (one atomic transaction) per change, the messages `nft -f` would send for
//!
//! ```text
//! table inet cellet_agent {
//!     chain input {
//!         type filter hook input priority filter; policy accept;
//!         iifname "pod-veth" ct state established,related accept
//!         iifname "pod-veth" counter drop comment "the pod must not reach the cell or its agent"
//!     }
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!     }
//! }
//! ```
//!
//! The table is the cell's: loaded once when the agent starts ([`super::prepare_cell`]),
//! before any pod exists, and left in place as long as the cell lives. The `postrouting`
//! chain holds the pod's SNAT rules ([`super::masquerade`]), added with the pod and flushed
//! with it; the chain is the cell's so that a pod adds rules only, which registers no hook.
//!
//! Why not `nft -f -`: starting `nft` (exec, its shared libraries, its cache) took about
//! 15 ms per call on the benchmark machine — more than the whole rest of the pod network
//! setup (netns, veth, addresses, routes). The table is
//! fixed, so its encoding is a few attributes; the kernel answers in microseconds. No
//! maintained, permissively licensed crate speaks nf_tables' netlink; the socket is
//! netlink-sys's (through rtnetlink), the attribute layout is `linux/netfilter/nf_tables.h`'s.

use std::io;

use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use super::{CELL_VETH, NFT_TABLE};

/// `nfnetlink.h`: the nf_tables subsystem and the batch delimiters.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
/// `nf_tables.h`: `enum nf_tables_msg_types`.
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
pub(super) const NFT_MSG_DELRULE: u16 = 8;
/// `netlink.h`.
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
pub(super) const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;
const NFPROTO_INET: u8 = 1;
const AF_UNSPEC: u8 = 0;
/// Attribute types, `nf_tables.h`.
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
pub(super) const NFTA_RULE_TABLE: u16 = 1;
pub(super) const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
pub(super) const NFTA_META_DREG: u16 = 1;
pub(super) const NFTA_META_KEY: u16 = 2;
pub(super) const NFTA_CMP_SREG: u16 = 1;
pub(super) const NFTA_CMP_OP: u16 = 2;
pub(super) const NFTA_CMP_DATA: u16 = 3;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
pub(super) const NFTA_IMMEDIATE_DREG: u16 = 1;
pub(super) const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
pub(super) const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
/// Values.
const NF_INET_LOCAL_IN: u32 = 1;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NFT_REG_VERDICT: u32 = 0;
pub(super) const NFT_REG_1: u32 = 1;
const NFT_META_IIFNAME: u32 = 6;
const NFT_CT_STATE: u32 = 0;
pub(super) const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
/// `ct state established,related`: the bits of `IP_CT_ESTABLISHED` (1 << 1) and
/// `IP_CT_RELATED` (1 << 2), in host order as the conntrack expression loads them.
const CT_STATE_ESTABLISHED_RELATED: u32 = (1 << 1) | (1 << 2);
/// libnftnl's user data type for a rule's comment (what `nft list` shows).
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;
const IFNAMSIZ: usize = 16;
const CHAIN: &str = "input";
const DROP_COMMENT: &str = "the pod must not reach the cell or its agent";

/// Replace the agent's table with the isolation table, atomically.
pub fn load() -> Result<(), String> {
    isolation_table().send()
}

/// The transaction that replaces the agent's table with the isolation table.
fn isolation_table() -> Batch {
    let mut batch = Batch::new();
    // add + delete + add: replaces whatever version of the table was there, in one
    // transaction that fails as a whole (as the `nft -f` script did).
    batch.table(NFT_MSG_NEWTABLE, NLM_F_CREATE, "add the table");
    batch.table(NFT_MSG_DELTABLE, 0, "delete the old table");
    batch.table(NFT_MSG_NEWTABLE, NLM_F_CREATE, "add the table");
    batch.base_chain(CHAIN, "filter", NF_INET_LOCAL_IN, 0, "add the input chain");
    super::masquerade::add_chain(&mut batch);
    batch.rule(
        "accept the pod's established flows",
        [
            expression("ct", |data| {
                data.u32_be(NFTA_CT_DREG, NFT_REG_1);
                data.u32_be(NFTA_CT_KEY, NFT_CT_STATE);
            }),
            bitwise_and(CT_STATE_ESTABLISHED_RELATED.to_ne_bytes()),
            expression("cmp", |data| {
                data.u32_be(NFTA_CMP_SREG, NFT_REG_1);
                data.u32_be(NFTA_CMP_OP, NFT_CMP_NEQ);
                data.nested(NFTA_CMP_DATA, |value| {
                    value.bytes(NFTA_DATA_VALUE, &0u32.to_ne_bytes());
                });
            }),
            verdict(NF_ACCEPT),
        ],
        None,
    );
    batch.rule(
        "drop everything else from the pod",
        [
            expression("counter", |data| {
                data.u64_be(NFTA_COUNTER_BYTES, 0);
                data.u64_be(NFTA_COUNTER_PACKETS, 0);
            }),
            verdict(NF_DROP),
        ],
        Some(DROP_COMMENT),
    );
    batch
}

/// Netlink attributes being written: type-length-value, each padded to 4 bytes.
#[derive(Default)]
pub(super) struct Attributes(Vec<u8>);

impl Attributes {
    pub(super) fn bytes(&mut self, kind: u16, value: &[u8]) {
        let length = u16::try_from(4 + value.len()).expect("attributes are small");
        self.0.extend_from_slice(&length.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.pad();
    }

    pub(super) fn string(&mut self, kind: u16, value: &str) {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.bytes(kind, &bytes);
    }

    pub(super) fn u32_be(&mut self, kind: u16, value: u32) {
        self.bytes(kind, &value.to_be_bytes());
    }

    fn u64_be(&mut self, kind: u16, value: u64) {
        self.bytes(kind, &value.to_be_bytes());
    }

    pub(super) fn nested(&mut self, kind: u16, fill: impl FnOnce(&mut Attributes)) {
        let mut inner = Attributes(Vec::new());
        fill(&mut inner);
        self.bytes(kind | NLA_F_NESTED, &inner.0);
    }

    fn pad(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }
}

/// One expression of a rule: its name and the attributes of its data.
pub(super) type Expression = (&'static str, Attributes);

pub(super) fn expression(name: &'static str, fill: impl FnOnce(&mut Attributes)) -> Expression {
    let mut data = Attributes(Vec::new());
    fill(&mut data);
    (name, data)
}

/// `iifname "NAME"`: load the input interface's name, compare all `IFNAMSIZ` bytes.
fn iifname_is(name: &str) -> [Expression; 2] {
    interface_name_is(NFT_META_IIFNAME, name)
}

/// The interface name that meta key `key` loads (`iifname`, `oifname`) is `name`.
pub(super) fn interface_name_is(key: u32, name: &str) -> [Expression; 2] {
    let mut padded = [0u8; IFNAMSIZ];
    let length = name.len().min(IFNAMSIZ - 1);
    padded[..length].copy_from_slice(&name.as_bytes()[..length]);
    [
        expression("meta", |data| {
            data.u32_be(NFTA_META_DREG, NFT_REG_1);
            data.u32_be(NFTA_META_KEY, key);
        }),
        expression("cmp", |data| {
            data.u32_be(NFTA_CMP_SREG, NFT_REG_1);
            data.u32_be(NFTA_CMP_OP, NFT_CMP_EQ);
            data.nested(NFTA_CMP_DATA, |value| value.bytes(NFTA_DATA_VALUE, &padded));
        }),
    ]
}

/// Register 1 &= `mask` (4 bytes, in the byte order of what the register holds).
pub(super) fn bitwise_and(mask: [u8; 4]) -> Expression {
    expression("bitwise", |data| {
        data.u32_be(NFTA_BITWISE_SREG, NFT_REG_1);
        data.u32_be(NFTA_BITWISE_DREG, NFT_REG_1);
        data.u32_be(NFTA_BITWISE_LEN, 4);
        data.nested(NFTA_BITWISE_MASK, |value| {
            value.bytes(NFTA_DATA_VALUE, &mask)
        });
        data.nested(NFTA_BITWISE_XOR, |value| {
            value.bytes(NFTA_DATA_VALUE, &[0; 4])
        });
    })
}

pub(super) fn verdict(code: u32) -> Expression {
    expression("immediate", |data| {
        data.u32_be(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
        data.nested(NFTA_IMMEDIATE_DATA, |value| {
            value.nested(NFTA_DATA_VERDICT, |verdict| {
                verdict.u32_be(NFTA_VERDICT_CODE, code);
            });
        });
    })
}

/// The messages of one transaction, between batch begin and end; every message asks for
/// an acknowledgement, so a refusal names the step.
pub(super) struct Batch {
    buffer: Vec<u8>,
    /// What each acknowledged message does, by sequence number − 1.
    steps: Vec<&'static str>,
}

impl Batch {
    pub(super) fn new() -> Batch {
        let mut batch = Batch {
            buffer: Vec::with_capacity(1024),
            steps: Vec::new(),
        };
        batch.message(NFNL_MSG_BATCH_BEGIN, AF_UNSPEC, 0, 0, &[]);
        batch
    }

    /// Append one message with the nfgenmsg header; `sequence` 0 for the delimiters.
    fn message(&mut self, kind: u16, family: u8, flags: u16, sequence: u32, attributes: &[u8]) {
        let length = u32::try_from(16 + 4 + attributes.len()).expect("messages are small");
        self.buffer.extend_from_slice(&length.to_ne_bytes());
        self.buffer.extend_from_slice(&kind.to_ne_bytes());
        self.buffer
            .extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        self.buffer.extend_from_slice(&sequence.to_ne_bytes());
        self.buffer.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: family, version 0, resource id (the subsystem, for the delimiters).
        self.buffer.push(family);
        self.buffer.push(0);
        self.buffer
            .extend_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
        self.buffer.extend_from_slice(attributes);
    }

    pub(super) fn nf_tables(
        &mut self,
        kind: u16,
        flags: u16,
        step: &'static str,
        attributes: Attributes,
    ) {
        self.steps.push(step);
        let sequence = u32::try_from(self.steps.len()).expect("few steps");
        self.message(
            (NFNL_SUBSYS_NFTABLES << 8) | kind,
            NFPROTO_INET,
            flags | NLM_F_ACK,
            sequence,
            &attributes.0,
        );
    }

    fn table(&mut self, kind: u16, flags: u16, step: &'static str) {
        let mut attributes = Attributes(Vec::new());
        attributes.string(NFTA_TABLE_NAME, NFT_TABLE);
        self.nf_tables(kind, flags, step, attributes);
    }

    /// A base chain of the table, policy accept: `type KIND hook HOOK priority PRIORITY`.
    pub(super) fn base_chain(
        &mut self,
        name: &str,
        kind: &str,
        hook: u32,
        priority: i32,
        step: &'static str,
    ) {
        let mut attributes = Attributes(Vec::new());
        attributes.string(NFTA_CHAIN_TABLE, NFT_TABLE);
        attributes.string(NFTA_CHAIN_NAME, name);
        attributes.nested(NFTA_CHAIN_HOOK, |attributes| {
            attributes.u32_be(NFTA_HOOK_HOOKNUM, hook);
            attributes.bytes(NFTA_HOOK_PRIORITY, &priority.to_be_bytes());
        });
        attributes.u32_be(NFTA_CHAIN_POLICY, NF_ACCEPT);
        attributes.string(NFTA_CHAIN_TYPE, kind);
        self.nf_tables(NFT_MSG_NEWCHAIN, NLM_F_CREATE, step, attributes);
    }

    /// A rule of the input chain for packets from the pod's veth: `iifname "pod-veth"`,
    /// then `expressions`.
    fn rule<const N: usize>(
        &mut self,
        step: &'static str,
        expressions: [Expression; N],
        comment: Option<&str>,
    ) {
        let from_pod = iifname_is(CELL_VETH);
        let all: Vec<&Expression> = from_pod.iter().chain(&expressions).collect();
        self.rule_in(CHAIN, step, &all, comment);
    }

    /// A rule appended to chain `chain` of the table: `expressions` in order.
    pub(super) fn rule_in(
        &mut self,
        chain: &str,
        step: &'static str,
        expressions: &[&Expression],
        comment: Option<&str>,
    ) {
        let mut attributes = Attributes(Vec::new());
        attributes.string(NFTA_RULE_TABLE, NFT_TABLE);
        attributes.string(NFTA_RULE_CHAIN, chain);
        attributes.nested(NFTA_RULE_EXPRESSIONS, |list| {
            for (name, data) in expressions {
                list.nested(NFTA_LIST_ELEM, |element| {
                    element.string(NFTA_EXPR_NAME, name);
                    element.nested(NFTA_EXPR_DATA, |inner| inner.0.extend_from_slice(&data.0));
                });
            }
        });
        if let Some(comment) = comment {
            let mut user_data = vec![
                NFTNL_UDATA_RULE_COMMENT,
                u8::try_from(comment.len() + 1).expect("short comment"),
            ];
            user_data.extend_from_slice(comment.as_bytes());
            user_data.push(0);
            attributes.bytes(NFTA_RULE_USERDATA, &user_data);
        }
        self.nf_tables(
            NFT_MSG_NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND,
            step,
            attributes,
        );
    }

    /// Send the transaction on a socket of the caller's network namespace and wait for
    /// every acknowledgement; the first refusal fails it (the kernel then applied nothing).
    pub(super) fn send(self) -> Result<(), String> {
        self.send_unless(None)
    }

    /// [`Batch::send`], but a refusal with `errno` (say ENOENT for a flush of what is
    /// gone) is success.
    pub(super) fn send_unless(mut self, errno: Option<i32>) -> Result<(), String> {
        self.message(NFNL_MSG_BATCH_END, AF_UNSPEC, 0, 0, &[]);
        let mut kept = KEPT_SOCKET
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let namespace =
            current_namespace().map_err(|error| format!("find the namespace: {error}"))?;
        let socket = match kept.take() {
            Some((kept_namespace, socket)) if kept_namespace == namespace => socket,
            _ => open_socket()?,
        };
        let result = self.exchange(&socket, errno);
        // Kept only after a clean exchange: no answer of this batch is left unread.
        if result.is_ok() {
            *kept = Some((namespace, socket));
        }
        result
    }

    fn exchange(&self, socket: &Socket, errno: Option<i32>) -> Result<(), String> {
        socket
            .send_to(&self.buffer, &SocketAddr::new(0, 0), 0)
            .map_err(failed("send the nf_tables batch"))?;
        let mut acknowledged = 0;
        let mut buffer = vec![0u8; 8192];
        while acknowledged < self.steps.len() {
            let received = socket
                .recv(&mut &mut buffer[..], 0)
                .map_err(failed("read the kernel's answer"))?;
            for (sequence, error) in acknowledgements(&buffer[..received]) {
                if error != 0 && Some(error.saturating_neg()) != errno {
                    let step = usize::try_from(sequence)
                        .ok()
                        .and_then(|s| self.steps.get(s.wrapping_sub(1)))
                        .copied()
                        .unwrap_or("an unknown step");
                    return Err(format!(
                        "{step}: {}",
                        io::Error::from_raw_os_error(error.saturating_neg())
                    ));
                }
                acknowledged += 1;
            }
        }
        Ok(())
    }
}

/// The nf_tables socket of the last transaction, with the namespace it is in (its inode).
///
/// Why one socket kept open rather than one per transaction: the kernel frees what a
/// transaction replaced or deleted later, after an RCU grace period, in a work item; but
/// when any nf_tables socket of the namespace is closed it waits for that work first
/// (`nft_rcv_nl_event` on `NETLINK_URELEASE`). Closing the socket right after the pod's
/// rules were flushed made the pod's teardown wait a grace period, about 10 ms on the
/// benchmark machine. Kept open, nothing waits.
static KEPT_SOCKET: std::sync::Mutex<Option<(u64, Socket)>> = std::sync::Mutex::new(None);

fn current_namespace() -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net").map(|metadata| metadata.ino())
}

fn open_socket() -> Result<Socket, String> {
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(failed("open a netlink socket"))?;
    socket
        .bind_auto()
        .map_err(failed("bind the netlink socket"))?;
    // Refusals then carry the header of the refused message only.
    socket
        .set_cap_ack(true)
        .map_err(failed("set NETLINK_CAP_ACK"))?;
    Ok(socket)
}

fn failed(action: &str) -> impl FnOnce(io::Error) -> String {
    let action = action.to_string();
    move |error| format!("{action}: {error}")
}

/// Each `NLMSG_ERROR` of a datagram: the sequence number it answers and its error (0 for
/// an acknowledgement, −errno for a refusal).
fn acknowledgements(datagram: &[u8]) -> Vec<(u32, i32)> {
    let read_u32 = |at: usize| {
        datagram
            .get(at..at + 4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(length) = read_u32(at) {
        let length = length as usize;
        if length < 16 {
            break;
        }
        let kind = datagram
            .get(at + 4..at + 6)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]));
        if kind == Some(NLMSG_ERROR)
            && let (Some(sequence), Some(error)) = (read_u32(at + 8), read_u32(at + 16))
        {
            found.push((sequence, error as i32));
        }
        at += (length + 3) & !3;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (type, flags, sequence) of each message of a batch, walked by its length fields.
    fn messages(buffer: &[u8]) -> Vec<(u16, u16, u32)> {
        let mut found = Vec::new();
        let mut at = 0;
        while at < buffer.len() {
            let field = |offset: usize, width: usize| &buffer[at + offset..at + offset + width];
            let length = u32::from_ne_bytes(field(0, 4).try_into().unwrap()) as usize;
            assert_eq!(length % 4, 0, "messages stay 4-byte aligned");
            found.push((
                u16::from_ne_bytes(field(4, 2).try_into().unwrap()),
                u16::from_ne_bytes(field(6, 2).try_into().unwrap()),
                u32::from_ne_bytes(field(8, 4).try_into().unwrap()),
            ));
            at += length;
        }
        assert_eq!(at, buffer.len(), "the lengths add up to the batch");
        found
    }

    #[test]
    fn the_table_is_replaced_in_one_transaction() {
        let mut batch = isolation_table();
        batch.message(NFNL_MSG_BATCH_END, AF_UNSPEC, 0, 0, &[]);
        let kind = |kind| (NFNL_SUBSYS_NFTABLES << 8) | kind;
        let acked = NLM_F_REQUEST | NLM_F_ACK;
        assert_eq!(
            messages(&batch.buffer),
            [
                (NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0),
                (kind(NFT_MSG_NEWTABLE), acked | NLM_F_CREATE, 1),
                (kind(NFT_MSG_DELTABLE), acked, 2),
                (kind(NFT_MSG_NEWTABLE), acked | NLM_F_CREATE, 3),
                (kind(NFT_MSG_NEWCHAIN), acked | NLM_F_CREATE, 4),
                (kind(NFT_MSG_NEWCHAIN), acked | NLM_F_CREATE, 5),
                (
                    kind(NFT_MSG_NEWRULE),
                    acked | NLM_F_CREATE | NLM_F_APPEND,
                    6
                ),
                (
                    kind(NFT_MSG_NEWRULE),
                    acked | NLM_F_CREATE | NLM_F_APPEND,
                    7
                ),
                (NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0),
            ]
        );
    }

    #[test]
    fn attributes_are_padded_and_strings_terminated() {
        let mut attributes = Attributes(Vec::new());
        attributes.string(NFTA_TABLE_NAME, "abc");
        attributes.nested(NFTA_CHAIN_HOOK, |hook| hook.u32_be(NFTA_HOOK_HOOKNUM, 1));
        assert_eq!(
            attributes.0,
            [
                [8, 0, 1, 0, b'a', b'b', b'c', 0].as_slice(),
                &[12, 0, 4, 0x80, 8, 0, 1, 0, 0, 0, 0, 1],
            ]
            .concat()
        );
    }

    #[test]
    fn acknowledgements_carry_sequence_and_error() {
        let mut datagram = Vec::new();
        for (sequence, error) in [(1u32, 0i32), (2, -libc_enoent())] {
            datagram.extend_from_slice(&36u32.to_ne_bytes());
            datagram.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            datagram.extend_from_slice(&0u16.to_ne_bytes());
            datagram.extend_from_slice(&sequence.to_ne_bytes());
            datagram.extend_from_slice(&0u32.to_ne_bytes());
            datagram.extend_from_slice(&error.to_ne_bytes());
            datagram.extend_from_slice(&[0; 16]);
        }
        assert_eq!(acknowledgements(&datagram), [(1, 0), (2, -libc_enoent())]);
    }

    fn libc_enoent() -> i32 {
        nix::libc::ENOENT
    }
}

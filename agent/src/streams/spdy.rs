//! SPDY/3.1 framing, the server's share: what `kubectl port-forward` sends inside its
//! WebSocket tunnel (`SPDY/3.1+portforward.k8s.io`), as the draft 3.1 specification lays
//! out frames and header blocks.
//!
//! Written here rather than taken from a crate: the one maintained Rust SPDY crate found
//! (spdy-mux) is a client multiplexer that opens stream pairs over fastwebsockets; a
//! port-forward server must accept the client's streams instead. What is needed is small:
//! parse frames, inflate header blocks (one zlib stream per direction, the draft's preset
//! dictionary), and write `SYN_REPLY`, data, `PING` and `RST_STREAM`. Flow control is left
//! out, as by Kubernetes' own peer (moby/spdystream), which never sends `WINDOW_UPDATE`.

use bytes::{Buf, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

/// The zlib dictionary of SPDY/3 header blocks (draft 3, section 2.6.10.1), 1423 bytes.
const DICTIONARY: &[u8] = include_bytes!("spdy3.dictionary");
/// The largest frame accepted; port-forward frames carry at most a few KiB.
const MAX_FRAME: usize = 1 << 20;
/// The largest inflated header block accepted.
const MAX_HEADERS: usize = 64 * 1024;

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const FLAG_FIN: u8 = 0x01;

/// A frame of the client, as far as a port-forward server cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        id: u32,
        fin: bool,
        headers: Vec<(String, String)>,
    },
    Data {
        id: u32,
        fin: bool,
        data: Bytes,
    },
    RstStream {
        id: u32,
    },
    Ping(u32),
    GoAway,
    /// SETTINGS, WINDOW_UPDATE, HEADERS and the rest: nothing to do.
    Ignored,
}

/// A frame that breaks the protocol.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpdyError {
    #[error("SPDY version {0} is not 3")]
    Version(u16),
    #[error("SPDY frame of {0} bytes is larger than {MAX_FRAME}")]
    TooLarge(usize),
    #[error("SPDY control frame type {kind} is too short ({length} bytes)")]
    Short { kind: u16, length: usize },
    #[error("SPDY header block does not inflate: {0}")]
    Inflate(String),
    #[error("SPDY header block is malformed")]
    Headers,
}

/// One side of a session: the bytes received so far and both header compressors.
pub struct Codec {
    buffer: BytesMut,
    inflate: Decompress,
    deflate: Compress,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("buffered", &self.buffer.len())
            .finish_non_exhaustive()
    }
}

impl Default for Codec {
    fn default() -> Self {
        Codec::new()
    }
}

impl Codec {
    pub fn new() -> Codec {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(DICTIONARY)
            .expect("a fresh deflate stream takes a dictionary");
        Codec {
            buffer: BytesMut::new(),
            inflate: Decompress::new(true),
            deflate,
        }
    }

    /// Bytes received from the client (frames may span messages).
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SpdyError> {
        if self.buffer.len() < 8 {
            return Ok(None);
        }
        let length =
            u32::from_be_bytes([0, self.buffer[5], self.buffer[6], self.buffer[7]]) as usize;
        if length > MAX_FRAME {
            return Err(SpdyError::TooLarge(length));
        }
        if self.buffer.len() < 8 + length {
            return Ok(None);
        }
        let mut frame = self.buffer.split_to(8 + length).freeze();
        let first = frame.get_u32();
        let flags = frame.get_u8();
        frame.advance(3);
        if first & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data {
                id: first & 0x7fff_ffff,
                fin: flags & FLAG_FIN != 0,
                data: frame,
            }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let kind = (first & 0xffff) as u16;
        let short = |needed: usize| {
            if length < needed {
                Err(SpdyError::Short { kind, length })
            } else {
                Ok(())
            }
        };
        Ok(Some(match kind {
            SYN_STREAM => {
                short(10)?;
                let id = frame.get_u32() & 0x7fff_ffff;
                // Associated-To-Stream-ID, priority and slot.
                frame.advance(6);
                Frame::SynStream {
                    id,
                    fin: flags & FLAG_FIN != 0,
                    headers: self.headers(&frame)?,
                }
            }
            SYN_REPLY | HEADERS => {
                // Inflated all the same: the zlib stream spans every header block.
                short(4)?;
                frame.advance(4);
                self.headers(&frame)?;
                Frame::Ignored
            }
            RST_STREAM => {
                short(8)?;
                Frame::RstStream {
                    id: frame.get_u32() & 0x7fff_ffff,
                }
            }
            PING => {
                short(4)?;
                Frame::Ping(frame.get_u32())
            }
            GOAWAY => Frame::GoAway,
            _ => Frame::Ignored,
        }))
    }

    /// Inflate and read one header block: a count, then length-prefixed names and values.
    fn headers(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
        let inflate_error = |e: flate2::DecompressError| SpdyError::Inflate(e.to_string());
        let mut plain = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            plain.reserve(1024);
            let before = self.inflate.total_in();
            match self
                .inflate
                .decompress_vec(input, &mut plain, FlushDecompress::Sync)
            {
                Ok(_) => {}
                Err(error) if error.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(DICTIONARY)
                        .map_err(inflate_error)?;
                }
                Err(error) => return Err(inflate_error(error)),
            }
            input = &input[(self.inflate.total_in() - before) as usize..];
            if input.is_empty() && plain.len() < plain.capacity() {
                break;
            }
            if plain.len() > MAX_HEADERS {
                return Err(SpdyError::Inflate("header block too large".into()));
            }
        }
        let mut plain = Bytes::from(plain);
        let text = |plain: &mut Bytes| -> Result<String, SpdyError> {
            if plain.remaining() < 4 {
                return Err(SpdyError::Headers);
            }
            let length = plain.get_u32() as usize;
            if plain.remaining() < length {
                return Err(SpdyError::Headers);
            }
            String::from_utf8(plain.split_to(length).to_vec()).map_err(|_| SpdyError::Headers)
        };
        if plain.remaining() < 4 {
            return Err(SpdyError::Headers);
        }
        let count = plain.get_u32();
        let mut headers = Vec::new();
        for _ in 0..count {
            let name = text(&mut plain)?.to_ascii_lowercase();
            let value = text(&mut plain)?;
            headers.push((name, value));
        }
        Ok(headers)
    }

    /// `SYN_REPLY` for stream `id`, with no headers: the stream is accepted.
    pub fn syn_reply(&mut self, id: u32) -> Bytes {
        let block = self.deflate_block(&0u32.to_be_bytes());
        let mut frame = control(SYN_REPLY, 0, 4 + block.len());
        frame.extend_from_slice(&id.to_be_bytes());
        frame.extend_from_slice(&block);
        frame.freeze()
    }

    fn deflate_block(&mut self, plain: &[u8]) -> Vec<u8> {
        let mut block = Vec::with_capacity(64);
        let mut input = plain;
        loop {
            block.reserve(64);
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut block, FlushCompress::Sync)
                .expect("deflating into a growing buffer cannot fail");
            input = &input[(self.deflate.total_in() - before) as usize..];
            if input.is_empty() && block.len() < block.capacity() {
                return block;
            }
        }
    }
}

fn control(kind: u16, flags: u8, length: usize) -> BytesMut {
    let mut frame = BytesMut::with_capacity(8 + length);
    frame.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    frame.extend_from_slice(&kind.to_be_bytes());
    frame.extend_from_slice(&((u32::from(flags) << 24) | length as u32).to_be_bytes());
    frame
}

/// A data frame on stream `id`; `fin` closes the server's side of it.
pub fn data(id: u32, payload: &[u8], fin: bool) -> Bytes {
    let mut frame = BytesMut::with_capacity(8 + payload.len());
    frame.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
    let flags = if fin { FLAG_FIN } else { 0 };
    frame.extend_from_slice(&((u32::from(flags) << 24) | payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame.freeze()
}

/// The answer to the client's `PING` `id`.
pub fn ping(id: u32) -> Bytes {
    let mut frame = control(PING, 0, 4);
    frame.extend_from_slice(&id.to_be_bytes());
    frame.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's `SYN_STREAM`, made with a second codec's deflate side (the same zlib
    /// stream and dictionary a client uses).
    fn syn_stream(client: &mut Codec, id: u32, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut plain = (headers.len() as u32).to_be_bytes().to_vec();
        for (name, value) in headers {
            for text in [name, value] {
                plain.extend_from_slice(&(text.len() as u32).to_be_bytes());
                plain.extend_from_slice(text.as_bytes());
            }
        }
        let block = client.deflate_block(&plain);
        let mut frame = control(SYN_STREAM, 0, 10 + block.len());
        frame.extend_from_slice(&id.to_be_bytes());
        frame.extend_from_slice(&[0; 6]);
        frame.extend_from_slice(&block);
        frame.to_vec()
    }

    #[test]
    fn streams_and_data_are_read_across_message_boundaries() {
        let (mut client, mut server) = (Codec::new(), Codec::new());
        let mut wire = syn_stream(
            &mut client,
            1,
            &[("streamType", "error"), ("port", "80"), ("requestID", "0")],
        );
        wire.extend(syn_stream(
            &mut client,
            3,
            &[("streamType", "data"), ("port", "80"), ("requestID", "0")],
        ));
        wire.extend_from_slice(&data(3, b"GET /", true));
        wire.extend_from_slice(&ping(7));
        let mut frames = Vec::new();
        for chunk in wire.chunks(5) {
            server.feed(chunk);
            while let Some(frame) = server.next_frame().unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(frames.len(), 4, "{frames:?}");
        assert_eq!(
            frames[1],
            Frame::SynStream {
                id: 3,
                fin: false,
                headers: vec![
                    ("streamtype".into(), "data".into()),
                    ("port".into(), "80".into()),
                    ("requestid".into(), "0".into()),
                ],
            }
        );
        assert_eq!(
            frames[2],
            Frame::Data {
                id: 3,
                fin: true,
                data: Bytes::from_static(b"GET /")
            }
        );
        assert_eq!(frames[3], Frame::Ping(7));
    }

    #[test]
    fn a_reply_inflates_on_the_other_side() {
        let (mut server, mut client) = (Codec::new(), Codec::new());
        client.feed(&server.syn_reply(5));
        client.feed(&server.syn_reply(7));
        assert_eq!(client.next_frame(), Ok(Some(Frame::Ignored)));
        assert_eq!(client.next_frame(), Ok(Some(Frame::Ignored)));
        assert_eq!(client.next_frame(), Ok(None));
    }

    #[test]
    fn other_versions_and_huge_frames_are_refused() {
        let mut codec = Codec::new();
        codec.feed(&[0x80, 0x02, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]);
        assert_eq!(codec.next_frame(), Err(SpdyError::Version(2)));
        let mut codec = Codec::new();
        codec.feed(&[0, 0, 0, 1, 0, 0xff, 0xff, 0xff]);
        assert!(matches!(codec.next_frame(), Err(SpdyError::TooLarge(_))));
    }
}

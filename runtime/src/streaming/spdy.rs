//! The SPDY/3.1 frame codec, as the Kubernetes streaming protocols (exec, attach,
//! port-forward over `Upgrade: SPDY/3.1`) use it.
//!
//! # Wire layout
//!
//! Every frame starts with an 8-byte header, all integers big-endian:
//!
//! * a **control frame** has the top bit of byte 0 set; the rest of bytes 0-1 is the
//!   protocol version (always 3), bytes 2-3 the frame type, byte 4 the flags and bytes
//!   5-7 the payload length (24 bits);
//! * a **data frame** has the top bit clear; bytes 0-3 are the 31-bit stream id, byte 4
//!   the flags (`FIN` = 1) and bytes 5-7 the payload length.
//!
//! The control payloads this module knows (ids are 31 bits, the top bit reserved):
//!
//! | type | name          | payload                                                       |
//! |------|---------------|---------------------------------------------------------------|
//! | 1    | SYN_STREAM    | stream id, associated stream id, priority (top 3 bits of one byte), slot byte, header block |
//! | 2    | SYN_REPLY     | stream id, header block                                       |
//! | 3    | RST_STREAM    | stream id, status code (32 bits)                              |
//! | 4    | SETTINGS      | entry count, then per entry: flags (8 bits), id (24 bits), value (32 bits) |
//! | 6    | PING          | ping id (32 bits)                                             |
//! | 7    | GOAWAY        | last good stream id, status code (32 bits)                    |
//! | 8    | HEADERS       | stream id, header block                                       |
//! | 9    | WINDOW_UPDATE | stream id (0: the whole session), window delta (31 bits)      |
//!
//! Unknown control types must be ignored by a receiver; they decode as [`Frame::Unknown`].
//!
//! A **header block** is, before compression: a 32-bit pair count, then for every pair a
//! 32-bit name length, the name, a 32-bit value length and the value. Names are lower
//! case and unique within a block; several values of one name are joined with NUL bytes.
//! All header blocks sent in one direction of a connection form a single zlib stream
//! (one compressor per direction, each block ending with a sync flush) primed with the
//! fixed SPDY/3 dictionary, so the codec is stateful: an [`Encoder`] and a [`Decoder`]
//! belong to one direction of one connection and must see every frame in order.
//!
//! Input is untrusted: the decoder refuses frames above a size limit before buffering
//! their payload and refuses header blocks that inflate beyond a limit.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

/// The protocol version in every control frame.
pub const VERSION: u16 = 3;
/// The size of a frame header.
pub const FRAME_HEADER_LEN: usize = 8;
/// The largest payload the 24-bit length field can describe.
pub const MAX_WIRE_PAYLOAD: usize = (1 << 24) - 1;
/// The default limit on a received frame's payload.
pub const DEFAULT_MAX_FRAME_LEN: usize = 1 << 20;
/// The default limit on a received header block once inflated.
pub const DEFAULT_MAX_HEADER_BLOCK: usize = 64 << 10;
/// The flow-control window every stream and the session start with.
pub const INITIAL_WINDOW: u32 = 64 << 10;

/// Frame flags.
pub mod flags {
    /// Data, SYN_STREAM, SYN_REPLY, HEADERS: the sender's last frame on this stream.
    pub const FIN: u8 = 0x01;
    /// SYN_STREAM: the recipient must not send on this stream.
    pub const UNIDIRECTIONAL: u8 = 0x02;
    /// SETTINGS: forget persisted settings.
    pub const CLEAR_SETTINGS: u8 = 0x01;
}

/// RST_STREAM status codes.
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const UNSUPPORTED_VERSION: u32 = 4;
    pub const CANCEL: u32 = 5;
    pub const INTERNAL_ERROR: u32 = 6;
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    pub const STREAM_IN_USE: u32 = 8;
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
    pub const FRAME_TOO_LARGE: u32 = 11;
}

/// GOAWAY status codes.
pub mod goaway {
    pub const OK: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INTERNAL_ERROR: u32 = 2;
}

/// SETTINGS ids this crate cares about.
pub mod settings {
    pub const MAX_CONCURRENT_STREAMS: u32 = 4;
    pub const INITIAL_WINDOW_SIZE: u32 = 7;
}

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

const ID_MASK: u32 = 0x7fff_ffff;

/// Header names and values: an ordered list of pairs, names in lower case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a pair; the name is stored in lower case.
    pub fn add(&mut self, name: &str, value: &str) {
        self.0.push((name.to_ascii_lowercase(), value.to_string()));
    }

    /// The first value of `name` (any case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_all(name).next()
    }

    /// Every value of `name` (any case), in order.
    pub fn get_all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let name = name.to_ascii_lowercase();
        self.0
            .iter()
            .filter(move |(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for Headers {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(iter: I) -> Self {
        let mut headers = Headers::new();
        for (name, value) in iter {
            headers.add(name, value);
        }
        headers
    }
}

/// One entry of a SETTINGS frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub flags: u8,
    /// 24 bits on the wire.
    pub id: u32,
    pub value: u32,
}

/// A decoded frame. Stream ids are 31-bit values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream_id: u32,
        fin: bool,
        data: Vec<u8>,
    },
    SynStream {
        stream_id: u32,
        associated_id: u32,
        /// 0 (highest) to 7.
        priority: u8,
        fin: bool,
        unidirectional: bool,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        clear: bool,
        entries: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    WindowUpdate {
        /// 0 for the session window.
        stream_id: u32,
        delta: u32,
    },
    /// A control frame of a type this codec does not know; receivers ignore it.
    Unknown {
        frame_type: u16,
    },
}

/// Why bytes could not be decoded into a frame, or a frame not encoded. Every one of
/// them ends the connection: the framing or the header compression state is lost.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("unsupported spdy version {0}")]
    Version(u16),
    #[error("{kind} frame has an invalid length of {len} bytes")]
    BadLength { kind: &'static str, len: usize },
    #[error("{kind} frame carries stream id 0")]
    ZeroStreamId { kind: &'static str },
    #[error("window update with a delta of 0")]
    ZeroWindowDelta,
    #[error("cannot inflate header block")]
    Inflate(#[source] flate2::DecompressError),
    #[error("cannot deflate header block")]
    Deflate(#[source] flate2::CompressError),
    #[error("header block inflates beyond {max} bytes")]
    HeaderBlockTooLarge { max: usize },
    #[error("malformed header block: {0}")]
    BadHeaderBlock(&'static str),
}

/// The zlib dictionary of SPDY/3 header compression: a list of words, each with a 32-bit
/// length prefix, followed by one run of raw text (1423 bytes in all).
fn dictionary() -> &'static [u8] {
    static DICT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &str = concat!(
            "100101201202205206300302303304305306307402405406407408409410411412413414415416",
            "417502504505203 Non-Authoritative Information204 No Content301 Moved ",
            "Permanently400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 ",
            "Internal Server Error501 Not Implemented503 Service UnavailableJan Feb Mar Apr ",
            "May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, ",
            "GMTchunked,text/html,image/png,image/jpg,image/gif,application/xml,",
            "application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
            "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
        );
        let mut dict = Vec::with_capacity(1423);
        for word in WORDS {
            dict.extend_from_slice(&(word.len() as u32).to_be_bytes());
            dict.extend_from_slice(word.as_bytes());
        }
        dict.extend_from_slice(TAIL.as_bytes());
        dict
    })
}

/// Encodes frames for one direction of a connection (it owns that direction's
/// header compressor).
pub struct Encoder {
    deflate: Compress,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    pub fn new() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(dictionary())
            .expect("a fresh deflate stream accepts a dictionary");
        Encoder { deflate }
    }

    /// Appends `frame` in wire format to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let start = out.len();
        match frame {
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                if data.len() > MAX_WIRE_PAYLOAD {
                    return Err(FrameError::TooLarge {
                        len: data.len(),
                        max: MAX_WIRE_PAYLOAD,
                    });
                }
                out.extend_from_slice(&(stream_id & ID_MASK).to_be_bytes());
                out.push(if *fin { flags::FIN } else { 0 });
                out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                out.extend_from_slice(data);
                return Ok(());
            }
            Frame::SynStream {
                stream_id,
                associated_id,
                priority,
                fin,
                unidirectional,
                headers,
            } => {
                let f = fin_flag(*fin)
                    | if *unidirectional {
                        flags::UNIDIRECTIONAL
                    } else {
                        0
                    };
                control_header(out, TYPE_SYN_STREAM, f);
                put_id(out, *stream_id);
                put_id(out, *associated_id);
                out.push((priority & 0x7) << 5);
                out.push(0); // credential slot: unused
                self.header_block(headers, out)?;
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            } => {
                control_header(out, TYPE_SYN_REPLY, fin_flag(*fin));
                put_id(out, *stream_id);
                self.header_block(headers, out)?;
            }
            Frame::Headers {
                stream_id,
                fin,
                headers,
            } => {
                control_header(out, TYPE_HEADERS, fin_flag(*fin));
                put_id(out, *stream_id);
                self.header_block(headers, out)?;
            }
            Frame::RstStream { stream_id, status } => {
                control_header(out, TYPE_RST_STREAM, 0);
                put_id(out, *stream_id);
                out.extend_from_slice(&status.to_be_bytes());
            }
            Frame::Settings { clear, entries } => {
                let f = if *clear { flags::CLEAR_SETTINGS } else { 0 };
                control_header(out, TYPE_SETTINGS, f);
                out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
                for s in entries {
                    out.push(s.flags);
                    out.extend_from_slice(&s.id.to_be_bytes()[1..]);
                    out.extend_from_slice(&s.value.to_be_bytes());
                }
            }
            Frame::Ping { id } => {
                control_header(out, TYPE_PING, 0);
                out.extend_from_slice(&id.to_be_bytes());
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                control_header(out, TYPE_GOAWAY, 0);
                put_id(out, *last_good_stream_id);
                out.extend_from_slice(&status.to_be_bytes());
            }
            Frame::WindowUpdate { stream_id, delta } => {
                control_header(out, TYPE_WINDOW_UPDATE, 0);
                put_id(out, *stream_id);
                out.extend_from_slice(&(delta & ID_MASK).to_be_bytes());
            }
            Frame::Unknown { frame_type } => control_header(out, *frame_type, 0),
        }
        let len = out.len() - start - FRAME_HEADER_LEN;
        if len > MAX_WIRE_PAYLOAD {
            out.truncate(start);
            return Err(FrameError::TooLarge {
                len,
                max: MAX_WIRE_PAYLOAD,
            });
        }
        out[start + 5..start + 8].copy_from_slice(&(len as u32).to_be_bytes()[1..]);
        Ok(())
    }

    /// Appends the compressed header block of `headers`: pairs of one name are merged,
    /// in the order of the name's first appearance, their values joined with NUL.
    fn header_block(&mut self, headers: &Headers, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let mut merged: Vec<(&str, String)> = Vec::new();
        for (name, value) in headers.iter() {
            match merged.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => {
                    v.push('\0');
                    v.push_str(value);
                }
                None => merged.push((name, value.to_string())),
            }
        }
        let mut plain = Vec::new();
        plain.extend_from_slice(&(merged.len() as u32).to_be_bytes());
        for (name, value) in &merged {
            for part in [name.as_bytes(), value.as_bytes()] {
                plain.extend_from_slice(&(part.len() as u32).to_be_bytes());
                plain.extend_from_slice(part);
            }
        }
        let mut consumed = 0;
        loop {
            out.reserve(plain.len() - consumed + 64);
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(&plain[consumed..], out, FlushCompress::Sync)
                .map_err(FrameError::Deflate)?;
            consumed += (self.deflate.total_in() - before) as usize;
            // Room left over means the sync flush is complete.
            if consumed == plain.len() && out.len() < out.capacity() {
                return Ok(());
            }
        }
    }
}

fn fin_flag(fin: bool) -> u8 {
    if fin { flags::FIN } else { 0 }
}

/// Writes a control frame header with a zero length (patched by `encode`).
fn control_header(out: &mut Vec<u8>, frame_type: u16, flags: u8) {
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&frame_type.to_be_bytes());
    out.extend_from_slice(&[flags, 0, 0, 0]);
}

fn put_id(out: &mut Vec<u8>, id: u32) {
    out.extend_from_slice(&(id & ID_MASK).to_be_bytes());
}

/// Decodes frames for one direction of a connection (it owns that direction's
/// header decompressor).
pub struct Decoder {
    inflate: Decompress,
    max_frame_len: usize,
    max_header_block: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self::with_limits(DEFAULT_MAX_FRAME_LEN, DEFAULT_MAX_HEADER_BLOCK)
    }

    /// A decoder refusing frame payloads above `max_frame_len` and header blocks that
    /// inflate beyond `max_header_block` bytes.
    pub fn with_limits(max_frame_len: usize, max_header_block: usize) -> Self {
        Decoder {
            inflate: Decompress::new(true),
            max_frame_len,
            max_header_block,
        }
    }

    /// Decodes the frame at the start of `buf`: `Ok(None)` if more bytes are needed,
    /// else the frame and how many bytes of `buf` it took. An oversized frame is refused
    /// as soon as its header is in.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        if buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let word = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let flag_bits = buf[4];
        let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        if len > self.max_frame_len {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        let control = word & 0x8000_0000 != 0;
        if control {
            let version = ((word >> 16) & 0x7fff) as u16;
            if version != VERSION {
                return Err(FrameError::Version(version));
            }
        }
        if buf.len() < FRAME_HEADER_LEN + len {
            return Ok(None);
        }
        let payload = &buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len];
        let frame = if control {
            self.control((word & 0xffff) as u16, flag_bits, payload)?
        } else {
            let stream_id = word & ID_MASK;
            if stream_id == 0 {
                return Err(FrameError::ZeroStreamId { kind: "data" });
            }
            Frame::Data {
                stream_id,
                fin: flag_bits & flags::FIN != 0,
                data: payload.to_vec(),
            }
        };
        Ok(Some((frame, FRAME_HEADER_LEN + len)))
    }

    fn control(&mut self, frame_type: u16, f: u8, p: &[u8]) -> Result<Frame, FrameError> {
        let fin = f & flags::FIN != 0;
        let bad = |kind| FrameError::BadLength { kind, len: p.len() };
        let frame = match frame_type {
            TYPE_SYN_STREAM => {
                if p.len() < 10 {
                    return Err(bad("SYN_STREAM"));
                }
                let stream_id = stream_id(p, "SYN_STREAM")?;
                Frame::SynStream {
                    stream_id,
                    associated_id: be32(&p[4..]) & ID_MASK,
                    priority: p[8] >> 5,
                    fin,
                    unidirectional: f & flags::UNIDIRECTIONAL != 0,
                    headers: self.headers(&p[10..])?,
                }
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                let kind = if frame_type == TYPE_HEADERS {
                    "HEADERS"
                } else {
                    "SYN_REPLY"
                };
                if p.len() < 4 {
                    return Err(bad(kind));
                }
                let stream_id = stream_id(p, kind)?;
                let headers = self.headers(&p[4..])?;
                if frame_type == TYPE_HEADERS {
                    Frame::Headers {
                        stream_id,
                        fin,
                        headers,
                    }
                } else {
                    Frame::SynReply {
                        stream_id,
                        fin,
                        headers,
                    }
                }
            }
            TYPE_RST_STREAM => {
                if p.len() != 8 {
                    return Err(bad("RST_STREAM"));
                }
                Frame::RstStream {
                    stream_id: stream_id(p, "RST_STREAM")?,
                    status: be32(&p[4..]),
                }
            }
            TYPE_SETTINGS => {
                if p.len() < 4
                    || (p.len() - 4) / 8 != be32(p) as usize
                    || !(p.len() - 4).is_multiple_of(8)
                {
                    return Err(bad("SETTINGS"));
                }
                let entries = p[4..]
                    .chunks_exact(8)
                    .map(|e| Setting {
                        flags: e[0],
                        id: be32(e) & 0x00ff_ffff,
                        value: be32(&e[4..]),
                    })
                    .collect();
                Frame::Settings {
                    clear: f & flags::CLEAR_SETTINGS != 0,
                    entries,
                }
            }
            TYPE_PING => {
                if p.len() != 4 {
                    return Err(bad("PING"));
                }
                Frame::Ping { id: be32(p) }
            }
            TYPE_GOAWAY => {
                if p.len() != 8 {
                    return Err(bad("GOAWAY"));
                }
                Frame::GoAway {
                    last_good_stream_id: be32(p) & ID_MASK,
                    status: be32(&p[4..]),
                }
            }
            TYPE_WINDOW_UPDATE => {
                if p.len() != 8 {
                    return Err(bad("WINDOW_UPDATE"));
                }
                let delta = be32(&p[4..]) & ID_MASK;
                if delta == 0 {
                    return Err(FrameError::ZeroWindowDelta);
                }
                Frame::WindowUpdate {
                    stream_id: be32(p) & ID_MASK,
                    delta,
                }
            }
            other => Frame::Unknown { frame_type: other },
        };
        Ok(frame)
    }

    /// Inflates and parses one header block.
    fn headers(&mut self, compressed: &[u8]) -> Result<Headers, FrameError> {
        let plain = self.inflate(compressed)?;
        parse_header_block(&plain)
    }

    fn inflate(&mut self, input: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::with_capacity(
            input
                .len()
                .saturating_mul(4)
                .clamp(256, self.max_header_block),
        );
        let mut consumed = 0;
        loop {
            let before = self.inflate.total_in();
            let result =
                self.inflate
                    .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync);
            consumed += (self.inflate.total_in() - before) as usize;
            match result {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(dictionary())
                        .map_err(FrameError::Inflate)?;
                    continue;
                }
                Err(e) => return Err(FrameError::Inflate(e)),
            }
            if out.len() > self.max_header_block {
                return Err(FrameError::HeaderBlockTooLarge {
                    max: self.max_header_block,
                });
            }
            if consumed == input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if out.len() == out.capacity() {
                // Grow past the limit by one byte at most, so a bomb is caught above.
                let room = (self.max_header_block + 1)
                    .saturating_sub(out.len())
                    .clamp(1, 16 << 10);
                out.reserve_exact(room);
            } else {
                // Input left and room left, yet nothing moved: the block is cut short.
                return Err(FrameError::BadHeaderBlock(
                    "compressed block does not inflate",
                ));
            }
        }
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn stream_id(p: &[u8], kind: &'static str) -> Result<u32, FrameError> {
    match be32(p) & ID_MASK {
        0 => Err(FrameError::ZeroStreamId { kind }),
        id => Ok(id),
    }
}

/// Parses an inflated header block (see the module doc).
fn parse_header_block(mut b: &[u8]) -> Result<Headers, FrameError> {
    fn take<'a>(b: &mut &'a [u8]) -> Result<&'a [u8], FrameError> {
        if b.len() < 4 {
            return Err(FrameError::BadHeaderBlock("truncated length"));
        }
        let len = be32(b) as usize;
        if b.len() - 4 < len {
            return Err(FrameError::BadHeaderBlock("length beyond the block"));
        }
        let (field, rest) = b[4..].split_at(len);
        *b = rest;
        Ok(field)
    }
    if b.len() < 4 {
        return Err(FrameError::BadHeaderBlock("missing pair count"));
    }
    let count = be32(b) as usize;
    b = &b[4..];
    // Every pair takes at least 8 bytes: this bounds the loop by the block size.
    if count > b.len() / 8 {
        return Err(FrameError::BadHeaderBlock("pair count beyond the block"));
    }
    let mut headers = Headers::new();
    let mut names: Vec<String> = Vec::with_capacity(count);
    for _ in 0..count {
        let name = take(&mut b)?;
        let value = take(&mut b)?;
        if name.is_empty() {
            return Err(FrameError::BadHeaderBlock("empty header name"));
        }
        let name = std::str::from_utf8(name)
            .map_err(|_| FrameError::BadHeaderBlock("header name is not utf-8"))?
            .to_ascii_lowercase();
        let value = std::str::from_utf8(value)
            .map_err(|_| FrameError::BadHeaderBlock("header value is not utf-8"))?;
        if names.contains(&name) {
            return Err(FrameError::BadHeaderBlock("duplicate header name"));
        }
        for part in value.split('\0') {
            headers.add(&name, part);
        }
        names.push(name);
    }
    if !b.is_empty() {
        return Err(FrameError::BadHeaderBlock("bytes after the last pair"));
    }
    Ok(headers)
}

#[cfg(test)]
#[path = "spdy_tests.rs"]
mod tests;

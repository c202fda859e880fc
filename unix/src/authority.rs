//! Any `:authority` on a Unix socket: an HTTP/2 adapter in front of `h2`.
//!
//! gRPC clients choose the `:authority` of a Unix-socket channel themselves:
//! gRPC C-core (Python, C++, Ruby, PHP) sends the socket path
//! percent-encoded, grpc-java and grpc-swift the raw path, grpc-go and tonic
//! `localhost`. The `h2` server under tonic resets every request whose
//! authority is not an RFC 3986 authority (PROTOCOL_ERROR) and has no option
//! to relax that. On a Unix socket the authority names nothing, so the
//! servers Signet runs on one read their connections through
//! [`AuthorityRewrite`]:
//!
//! - frames from the client are followed; every frame but HEADERS and its
//!   CONTINUATIONs passes unchanged (DATA, SETTINGS, flow control, unknown
//!   extension frames);
//! - every header block is decoded with the client's HPACK state (so the
//!   dynamic table stays in step with the client's encoder, including
//!   entries added by a request whose authority was rewritten), its
//!   `:authority` (if any) set to `localhost`, and the block re-encoded as
//!   literals that never touch the dynamic table, so `h2`'s decoder table
//!   stays empty whatever table size it announces;
//! - the re-encoded block is framed as HEADERS + CONTINUATION frames of at
//!   most 16,384 bytes, the smallest maximum a peer may announce (RFC 9113
//!   §4.2), keeping END_STREAM and the priority fields and dropping padding.
//!
//! Frames from the server to the client are not touched. A connection that
//! does not start with the HTTP/2 preface is passed through unchanged (the
//! server refuses it as it would without the adapter). Malformed framing or
//! HPACK ends the connection, as `h2` itself would with a connection error.
//! TCP listeners never use this adapter: their authority rules are `h2`'s.

use std::borrow::Cow;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;

const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;

const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// The payload of every frame this adapter writes is at most this long.
const MAX_OUT_PAYLOAD: usize = 16_384;
/// The largest encoded header block (all its frames) accepted from a client.
const MAX_BLOCK: usize = 256 * 1024;
/// The largest decoded header list accepted, counted as RFC 9113 §6.5.2
/// does (name + value + 32 per field).
const MAX_HEADER_LIST: usize = 256 * 1024;
/// The largest HPACK dynamic table a client may ask for.
const MAX_TABLE_SIZE: usize = 64 * 1024;
/// How much is read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// The authority every request is given.
pub const AUTHORITY: &[u8] = b"localhost";

/// A connection that has not sent a complete first request (preface and
/// header block) by then is closed: idle connections cannot hold the
/// server's descriptors.
pub const FIRST_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A connection whose client-to-server HTTP/2 header blocks carry
/// `:authority: localhost`, whatever the client sent.
#[derive(Debug)]
pub struct AuthorityRewrite<S> {
    inner: S,
    rewriter: Rewriter,
    eof: bool,
    /// Until the first header block arrives.
    first_request: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> AuthorityRewrite<S> {
    /// Wraps `inner`, which must send its first request within
    /// [`FIRST_REQUEST_TIMEOUT`] (call inside a Tokio runtime).
    pub fn new(inner: S) -> Self {
        Self::with_deadline(inner, FIRST_REQUEST_TIMEOUT)
    }

    /// Wraps `inner`, which must send its first request within `deadline`.
    pub fn with_deadline(inner: S, deadline: std::time::Duration) -> Self {
        AuthorityRewrite {
            inner,
            rewriter: Rewriter::default(),
            eof: false,
            first_request: Some(Box::pin(tokio::time::sleep(deadline))),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityRewrite<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.rewriter.blocks > 0 {
            this.first_request = None;
        } else if let Some(deadline) = this.first_request.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            tracing::debug!("closing a Unix-socket connection that sent no request in time");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 request within the first-request deadline",
            )));
        }
        loop {
            if this.rewriter.output.has_remaining() {
                let n = this.rewriter.output.len().min(buf.remaining());
                buf.put_slice(&this.rewriter.output[..n]);
                this.rewriter.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            this.rewriter.input.reserve(READ_CHUNK);
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.inner),
                cx,
                &mut this.rewriter.input
            ))?;
            if n == 0 {
                // What is left is an incomplete frame; h2 sees the end of
                // the stream either way.
                this.eof = true;
                continue;
            }
            this.rewriter.process().map_err(|e| {
                tracing::debug!(error = %e, "closing a Unix-socket HTTP/2 connection");
                io::Error::new(io::ErrorKind::InvalidData, e)
            })?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityRewrite<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityRewrite<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Why a client's byte stream could not be rewritten.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("expected a CONTINUATION frame of stream {stream}, got frame type {got:#x}")]
    ExpectedContinuation { stream: u32, got: u8 },
    #[error("a header block of stream {stream} exceeds {MAX_BLOCK} bytes")]
    BlockTooLarge { stream: u32 },
    #[error("the header list of stream {stream} exceeds {MAX_HEADER_LIST} bytes")]
    HeaderListTooLarge { stream: u32 },
    #[error("a HEADERS frame of stream {stream} is shorter than its padding and priority")]
    BadPadding { stream: u32 },
    #[error("HPACK decoding failed on stream {stream}: {reason}")]
    Hpack { stream: u32, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the connection preface.
    Preface,
    /// Not HTTP/2 with prior knowledge: everything passes unchanged.
    Raw,
    /// Waiting for a frame header.
    FrameHeader,
    /// Passing this many payload bytes of the current frame unchanged.
    Forward(usize),
    /// Waiting for the whole payload of a HEADERS (or CONTINUATION) frame.
    BlockPayload { len: usize, flags: u8, first: bool },
}

/// A header block being collected across HEADERS and CONTINUATION frames.
#[derive(Debug)]
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// The byte-level state machine behind [`AuthorityRewrite`], independent
/// of I/O: bytes from the client go into `input`, `process` moves what it
/// can to `output`.
struct Rewriter {
    phase: Phase,
    /// Header blocks rewritten so far.
    blocks: u64,
    input: BytesMut,
    output: BytesMut,
    decoder: loona_hpack::Decoder<'static>,
    block: Option<Block>,
}

impl std::fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewriter")
            .field("phase", &self.phase)
            .field("input", &self.input.len())
            .field("output", &self.output.len())
            .finish_non_exhaustive()
    }
}

impl Default for Rewriter {
    fn default() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(MAX_TABLE_SIZE);
        Rewriter {
            phase: Phase::Preface,
            blocks: 0,
            input: BytesMut::new(),
            output: BytesMut::new(),
            decoder,
            block: None,
        }
    }
}

impl Rewriter {
    /// Moves everything that can be handled from `input` to `output`.
    fn process(&mut self) -> Result<(), FrameError> {
        loop {
            match self.phase {
                Phase::Preface => {
                    let n = self.input.len().min(PREFACE.len());
                    if self.input[..n] != PREFACE[..n] {
                        self.phase = Phase::Raw;
                        continue;
                    }
                    if n < PREFACE.len() {
                        return Ok(());
                    }
                    self.output.extend_from_slice(&self.input.split_to(n));
                    self.phase = Phase::FrameHeader;
                }
                Phase::Raw => {
                    let all = self.input.split();
                    self.output.extend_from_slice(&all);
                    return Ok(());
                }
                Phase::FrameHeader => {
                    let Some(header) = self.input.get(..FRAME_HEADER_LEN) else {
                        return Ok(());
                    };
                    let len = usize::from(header[0]) << 16
                        | usize::from(header[1]) << 8
                        | usize::from(header[2]);
                    let (kind, flags) = (header[3], header[4]);
                    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]])
                        & 0x7fff_ffff;
                    match (&self.block, kind) {
                        (Some(block), TYPE_CONTINUATION) if block.stream == stream => {
                            if block.fragment.len() + len > MAX_BLOCK {
                                return Err(FrameError::BlockTooLarge { stream });
                            }
                            self.input.advance(FRAME_HEADER_LEN);
                            self.phase = Phase::BlockPayload {
                                len,
                                flags,
                                first: false,
                            };
                        }
                        (Some(block), got) => {
                            return Err(FrameError::ExpectedContinuation {
                                stream: block.stream,
                                got,
                            });
                        }
                        (None, TYPE_HEADERS) => {
                            if len > MAX_BLOCK {
                                return Err(FrameError::BlockTooLarge { stream });
                            }
                            self.input.advance(FRAME_HEADER_LEN);
                            self.block = Some(Block {
                                stream,
                                end_stream: flags & FLAG_END_STREAM != 0,
                                priority: None,
                                fragment: Vec::new(),
                            });
                            self.phase = Phase::BlockPayload {
                                len,
                                flags,
                                first: true,
                            };
                        }
                        // Everything else, including a stray CONTINUATION
                        // (h2 refuses it), passes as it is.
                        (None, _) => {
                            let header = self.input.split_to(FRAME_HEADER_LEN);
                            self.output.extend_from_slice(&header);
                            self.phase = Phase::Forward(len);
                        }
                    }
                }
                Phase::Forward(0) => self.phase = Phase::FrameHeader,
                Phase::Forward(remaining) => {
                    if self.input.is_empty() {
                        return Ok(());
                    }
                    let n = remaining.min(self.input.len());
                    let chunk = self.input.split_to(n);
                    self.output.extend_from_slice(&chunk);
                    self.phase = Phase::Forward(remaining - n);
                }
                Phase::BlockPayload { len, flags, first } => {
                    if self.input.len() < len {
                        return Ok(());
                    }
                    let payload = self.input.split_to(len);
                    let Some(block) = self.block.as_mut() else {
                        // Unreachable: BlockPayload is entered with a block.
                        self.phase = Phase::FrameHeader;
                        continue;
                    };
                    let fragment = if first {
                        let (priority, fragment) =
                            headers_fragment(&payload, flags).ok_or(FrameError::BadPadding {
                                stream: block.stream,
                            })?;
                        block.priority = priority;
                        fragment
                    } else {
                        &payload[..]
                    };
                    block.fragment.extend_from_slice(fragment);
                    self.phase = Phase::FrameHeader;
                    if flags & FLAG_END_HEADERS != 0
                        && let Some(block) = self.block.take()
                    {
                        self.rewrite_block(block)?;
                    }
                }
            }
        }
    }

    /// Decodes `block`, sets its authority, and writes it out as frames.
    fn rewrite_block(&mut self, block: Block) -> Result<(), FrameError> {
        let stream = block.stream;
        let mut encoded = Vec::with_capacity(block.fragment.len() + 16);
        let mut list_size = 0usize;
        self.decoder
            .decode_with_cb(&block.fragment, |name: Cow<[u8]>, value: Cow<[u8]>| {
                list_size = list_size.saturating_add(name.len() + value.len() + 32);
                if list_size > MAX_HEADER_LIST {
                    return;
                }
                let value: &[u8] = if &*name == b":authority" {
                    AUTHORITY
                } else {
                    &value
                };
                encode_literal(&name, value, &mut encoded);
            })
            .map_err(|e| FrameError::Hpack {
                stream,
                reason: format!("{e:?}"),
            })?;
        if list_size > MAX_HEADER_LIST {
            return Err(FrameError::HeaderListTooLarge { stream });
        }
        self.write_block(&block, &encoded);
        self.blocks += 1;
        Ok(())
    }

    /// Frames an encoded header block as HEADERS + CONTINUATION frames.
    fn write_block(&mut self, block: &Block, encoded: &[u8]) {
        let priority_len = if block.priority.is_some() { 5 } else { 0 };
        let first_len = encoded.len().min(MAX_OUT_PAYLOAD - priority_len);
        let (first, mut rest) = encoded.split_at(first_len);
        let mut flags = 0;
        if block.end_stream {
            flags |= FLAG_END_STREAM;
        }
        if block.priority.is_some() {
            flags |= FLAG_PRIORITY;
        }
        if rest.is_empty() {
            flags |= FLAG_END_HEADERS;
        }
        self.frame_header(
            first.len() + priority_len,
            TYPE_HEADERS,
            flags,
            block.stream,
        );
        if let Some(priority) = &block.priority {
            self.output.extend_from_slice(priority);
        }
        self.output.extend_from_slice(first);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_OUT_PAYLOAD));
            rest = tail;
            let flags = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
            self.frame_header(chunk.len(), TYPE_CONTINUATION, flags, block.stream);
            self.output.extend_from_slice(chunk);
        }
    }

    fn frame_header(&mut self, len: usize, kind: u8, flags: u8, stream: u32) {
        // len <= MAX_OUT_PAYLOAD, which fits the 24-bit length field.
        let len = len as u32;
        self.output.extend_from_slice(&[
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
        ]);
        self.output.put_u32(stream);
    }
}

/// The priority fields and the header block fragment of a HEADERS frame's
/// payload, without its padding; `None` when the payload is too short.
fn headers_fragment(payload: &[u8], flags: u8) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut rest = payload;
    let mut pad = 0usize;
    if flags & FLAG_PADDED != 0 {
        let (&n, tail) = rest.split_first()?;
        pad = usize::from(n);
        rest = tail;
    }
    let mut priority = None;
    if flags & FLAG_PRIORITY != 0 {
        let (fields, tail) = rest.split_at_checked(5)?;
        priority = Some(fields.try_into().ok()?);
        rest = tail;
    }
    let end = rest.len().checked_sub(pad)?;
    rest.get(..end).map(|fragment| (priority, fragment))
}

/// A literal header field without indexing, new name (RFC 7541 §6.2.2),
/// with raw (not Huffman-coded) strings.
fn encode_literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    for s in [name, value] {
        // Writing to a Vec cannot fail.
        let _ = loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, out);
        out.extend_from_slice(s);
    }
}

#[cfg(test)]
mod tests;

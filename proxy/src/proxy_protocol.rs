//! PROXY protocol (HAProxy's, v1 text and v2 binary): headers read from a
//! load balancer in front of an inbound listener, and written to the app so
//! it sees the caller's address rather than the sidecar's. Parsing and
//! encoding are the `ppp` crate's.

use std::net::SocketAddr;

use ppp::v2;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::config::ProxyProtocol;

/// The longest header accepted: a v2 header with addresses and a few TLVs
/// (a v1 header is at most 107 bytes). Load balancers send a few hundred
/// bytes at most; more is refused rather than buffered.
const MAX_HEADER: usize = 4096;

/// What a received header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Received {
    /// The caller's address; `None` for a v2 LOCAL header (the load
    /// balancer's own health check) or an UNKNOWN / unspecified one: the
    /// connection's own addresses stand.
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
}

/// Why a connection's header was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeaderError {
    #[error("the connection closed before a complete PROXY protocol header")]
    Closed,
    #[error("no PROXY protocol header: the connection starts with {0:?}")]
    Missing(String),
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
    #[error("PROXY protocol header longer than {MAX_HEADER} bytes")]
    TooLong,
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one header from the start of `stream`. Returns it and the bytes
/// read past it (the start of the TLS handshake), which the caller must
/// serve before reading `stream` again.
pub(crate) async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Received, Vec<u8>), HeaderError> {
    let mut buf = Vec::with_capacity(256);
    loop {
        let mut chunk = [0u8; 512];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(HeaderError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(done) = parse(&buf)? {
            let (received, used) = done;
            return Ok((received, buf.split_off(used)));
        }
        if buf.len() > MAX_HEADER {
            return Err(HeaderError::TooLong);
        }
    }
}

/// `Some((header, its length))` once `buf` holds a whole header, `None`
/// while it may still become one.
fn parse(buf: &[u8]) -> Result<Option<(Received, usize)>, HeaderError> {
    const V1: &[u8] = b"PROXY ";
    const V2: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
    let could_be = |sig: &[u8]| {
        let n = buf.len().min(sig.len());
        buf[..n] == sig[..n]
    };
    if could_be(V2) {
        if buf.len() < 16 {
            return Ok(None);
        }
        let length = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if length > MAX_HEADER {
            return Err(HeaderError::TooLong);
        }
        if buf.len() < length {
            return Ok(None);
        }
        let header = v2::Header::try_from(&buf[..length])
            .map_err(|e| HeaderError::Malformed(e.to_string()))?;
        let (source, destination) = match (header.command, header.addresses) {
            (v2::Command::Local, _) => (None, None),
            (_, v2::Addresses::IPv4(a)) => (
                Some(SocketAddr::from((a.source_address, a.source_port))),
                Some(SocketAddr::from((
                    a.destination_address,
                    a.destination_port,
                ))),
            ),
            (_, v2::Addresses::IPv6(a)) => (
                Some(SocketAddr::from((a.source_address, a.source_port))),
                Some(SocketAddr::from((
                    a.destination_address,
                    a.destination_port,
                ))),
            ),
            (_, v2::Addresses::Unix(_) | v2::Addresses::Unspecified) => (None, None),
        };
        return Ok(Some((
            Received {
                source,
                destination,
            },
            length,
        )));
    }
    if could_be(V1) {
        let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
            // A v1 header is at most 107 bytes with its CRLF.
            if buf.len() >= 107 {
                return Err(HeaderError::Malformed(
                    "a v1 header longer than 107 bytes".into(),
                ));
            }
            return Ok(None);
        };
        let line = &buf[..end + 2];
        let header =
            ppp::v1::Header::try_from(line).map_err(|e| HeaderError::Malformed(e.to_string()))?;
        let (source, destination) = match header.addresses {
            ppp::v1::Addresses::Tcp4(a) => (
                Some(SocketAddr::from((a.source_address, a.source_port))),
                Some(SocketAddr::from((
                    a.destination_address,
                    a.destination_port,
                ))),
            ),
            ppp::v1::Addresses::Tcp6(a) => (
                Some(SocketAddr::from((a.source_address, a.source_port))),
                Some(SocketAddr::from((
                    a.destination_address,
                    a.destination_port,
                ))),
            ),
            ppp::v1::Addresses::Unknown => (None, None),
        };
        return Ok(Some((
            Received {
                source,
                destination,
            },
            end + 2,
        )));
    }
    let shown: String = buf
        .iter()
        .take(16)
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '.'
            }
        })
        .collect();
    Err(HeaderError::Missing(shown))
}

/// The header telling the app that `source` connected to `destination`
/// (`None`: not known, e.g. a Unix socket listener; sent as v1 UNKNOWN or
/// v2 with unspecified addresses).
pub(crate) fn encode(
    version: ProxyProtocol,
    source: Option<SocketAddr>,
    destination: Option<SocketAddr>,
) -> std::io::Result<Vec<u8>> {
    let pair = match (source, destination) {
        (Some(s), Some(d)) => Some(same_family(s, d)),
        _ => None,
    };
    match version {
        ProxyProtocol::V1 => Ok(match pair {
            Some(pair) => ppp::v1::Addresses::from(pair).to_string(),
            None => ppp::v1::Addresses::Unknown.to_string(),
        }
        .into_bytes()),
        ProxyProtocol::V2 => {
            let addresses = match pair {
                Some(pair) => v2::Addresses::from(pair),
                None => v2::Addresses::Unspecified,
            };
            v2::Builder::with_addresses(
                v2::Version::Two | v2::Command::Proxy,
                v2::Protocol::Stream,
                addresses,
            )
            .build()
        }
    }
}

/// Both addresses in one family (IPv4 as IPv4-mapped IPv6 if the other is
/// IPv6), as the protocol has no mixed form.
fn same_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => SocketAddr::from((v4.ip().to_ipv6_mapped(), v4.port())),
        v6 => v6,
    };
    if source.is_ipv4() == destination.is_ipv4() {
        (source, destination)
    } else {
        (v6(source), v6(destination))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn headers_round_trip_and_leave_what_follows() {
        for version in [ProxyProtocol::V1, ProxyProtocol::V2] {
            for (s, d) in [
                ("192.0.2.7:50000", "10.0.0.1:8443"),
                ("[2001:db8::7]:50000", "[2001:db8::1]:8443"),
            ] {
                let mut wire = encode(version, Some(addr(s)), Some(addr(d))).unwrap();
                wire.extend_from_slice(b"\x16\x03\x01rest of the handshake");
                let (got, rest) = read_header(&mut wire.as_slice()).await.unwrap();
                assert_eq!(got.source, Some(addr(s)), "{version:?}");
                assert_eq!(got.destination, Some(addr(d)));
                assert_eq!(rest, b"\x16\x03\x01rest of the handshake");
            }
            // Mixed families: IPv4 sent IPv4-mapped.
            let wire = encode(
                version,
                Some(addr("192.0.2.7:1")),
                Some(addr("[2001:db8::1]:2")),
            )
            .unwrap();
            let (got, _) = read_header(&mut wire.as_slice()).await.unwrap();
            assert_eq!(got.source, Some(addr("[::ffff:192.0.2.7]:1")));
            // Unknown addresses.
            let wire = encode(version, None, None).unwrap();
            let (got, rest) = read_header(&mut wire.as_slice()).await.unwrap();
            assert_eq!(got.source, None);
            assert!(rest.is_empty());
        }
    }

    #[tokio::test]
    async fn a_header_split_across_reads_is_read_whole() {
        let wire = encode(
            ProxyProtocol::V2,
            Some(addr("192.0.2.7:1")),
            Some(addr("10.0.0.1:2")),
        )
        .unwrap();
        let (mut a, mut b) = tokio::io::duplex(64);
        let sender = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for byte in wire {
                b.write_all(&[byte]).await.unwrap();
                b.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            b.write_all(b"TLS").await.unwrap();
            b
        });
        let (got, mut rest) = read_header(&mut a).await.unwrap();
        let _b = sender.await.unwrap();
        assert_eq!(got.source, Some(addr("192.0.2.7:1")));
        // What followed the header may come in this read or the next.
        while rest.len() < 3 {
            let mut more = [0u8; 3];
            let n = a.read(&mut more).await.unwrap();
            rest.extend_from_slice(&more[..n]);
        }
        assert_eq!(rest, b"TLS");
    }

    #[tokio::test]
    async fn crafted_headers_are_refused() {
        let cases: [(&[u8], &str); 5] = [
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "no PROXY protocol header"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "malformed"),
            (b"PROXY TCP4 999.2.3.4 5.6.7.8 1 2\r\n", "malformed"),
            (b"PROXY A", "closed before"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "longer than 107"),
        ];
        for (wire, want) in cases {
            let err = read_header(&mut &wire[..]).await.unwrap_err().to_string();
            assert!(err.contains(want), "{wire:?}: {err}");
        }
        // A v2 header announcing more than any load balancer sends.
        let mut wire = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff".to_vec();
        wire.extend_from_slice(&[0; 12]);
        let err = read_header(&mut wire.as_slice()).await.unwrap_err();
        assert!(matches!(err, HeaderError::TooLong), "{err}");
        // One announcing 12 address bytes and closing after 4.
        let mut wire = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
        wire.extend_from_slice(&[0; 4]);
        let err = read_header(&mut wire.as_slice()).await.unwrap_err();
        assert!(matches!(err, HeaderError::Closed), "{err}");
    }
}

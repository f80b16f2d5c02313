//! The native tunnel's preamble: the first bytes the source sends for each
//! connection it carries, naming the original destination.
//!
//! ```text
//! "ZTN" | version (1) | family (4 or 6) | port (u16, big endian) | address (4 or 16 bytes)
//! ```
//!
//! Fixed-size and versioned: a receiver refuses a version it does not know
//! with a clear error instead of guessing. The protocol itself is chosen by
//! ALPN (`ztunnel-native/2`; HBONE would be `h2`), so the preamble never has
//! to tell protocols apart.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

const MAGIC: &[u8; 3] = b"ZTN";
/// The only version this build speaks.
pub const VERSION: u8 = 1;
const HEADER: usize = MAGIC.len() + 1 + 1 + 2;
/// The longest preamble (IPv6).
pub const MAX_LEN: usize = HEADER + 16;

/// Why a preamble was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PreambleError {
    /// The bytes do not start with the magic: not a ztunnel peer.
    #[error("not a ztunnel tunnel preamble")]
    BadMagic,
    /// A version this build does not speak.
    #[error("tunnel preamble version {0} is not supported (this build speaks {VERSION})")]
    UnsupportedVersion(u8),
    /// An address family other than 4 or 6.
    #[error("tunnel preamble names address family {0}, not 4 or 6")]
    BadFamily(u8),
    /// Port 0 is no destination.
    #[error("tunnel preamble names port 0")]
    PortZero,
    /// The stream ended before the preamble did.
    #[error("the tunnel closed before the end of its preamble")]
    Truncated,
}

/// The preamble's content: where the connection was going.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preamble {
    /// The original destination.
    pub destination: SocketAddr,
}

impl Preamble {
    /// The encoded preamble.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_LEN);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        match self.destination.ip() {
            IpAddr::V4(ip) => {
                out.push(4);
                out.extend_from_slice(&self.destination.port().to_be_bytes());
                out.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                out.push(6);
                out.extend_from_slice(&self.destination.port().to_be_bytes());
                out.extend_from_slice(&ip.octets());
            }
        }
        out
    }

    /// Decodes a preamble from the start of `bytes`; returns it and its length.
    pub fn decode(bytes: &[u8]) -> Result<(Self, usize), PreambleError> {
        let header = bytes.get(..HEADER).ok_or(PreambleError::Truncated)?;
        let len = Self::check_header(header)?;
        let address = bytes.get(HEADER..len).ok_or(PreambleError::Truncated)?;
        Ok((Self::from_parts(header, address)?, len))
    }

    /// Reads exactly one preamble from `stream` (no byte past it).
    pub async fn read_from<R: AsyncRead + Unpin>(stream: &mut R) -> Result<Self, std::io::Error> {
        Self::read_next(stream)
            .await?
            .ok_or_else(|| invalid(PreambleError::Truncated))
    }

    /// Reads the next preamble from `stream` (no byte past it), or `None`
    /// when the stream ends before its first byte: at a connection boundary
    /// of a tunnel, the source closing it (with or without a TLS
    /// close_notify).
    pub async fn read_next<R: AsyncRead + Unpin>(
        stream: &mut R,
    ) -> Result<Option<Self>, std::io::Error> {
        let mut header = [0u8; HEADER];
        match stream.read(&mut header[..1]).await {
            Ok(0) => return Ok(None),
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(err) => return Err(err),
            Ok(_) => {}
        }
        let truncated = |err: std::io::Error| match err.kind() {
            std::io::ErrorKind::UnexpectedEof => invalid(PreambleError::Truncated),
            _ => err,
        };
        stream
            .read_exact(&mut header[1..])
            .await
            .map_err(truncated)?;
        let len = Self::check_header(&header).map_err(invalid)?;
        let mut address = [0u8; 16];
        let address = &mut address[..len - HEADER];
        stream.read_exact(address).await.map_err(truncated)?;
        Self::from_parts(&header, address)
            .map(Some)
            .map_err(invalid)
    }

    /// Checks magic, version and family; returns the full length.
    fn check_header(header: &[u8]) -> Result<usize, PreambleError> {
        if &header[..3] != MAGIC {
            return Err(PreambleError::BadMagic);
        }
        if header[3] != VERSION {
            return Err(PreambleError::UnsupportedVersion(header[3]));
        }
        match header[4] {
            4 => Ok(HEADER + 4),
            6 => Ok(HEADER + 16),
            other => Err(PreambleError::BadFamily(other)),
        }
    }

    fn from_parts(header: &[u8], address: &[u8]) -> Result<Self, PreambleError> {
        let port = u16::from_be_bytes([header[5], header[6]]);
        if port == 0 {
            return Err(PreambleError::PortZero);
        }
        let ip = match <[u8; 4]>::try_from(address) {
            Ok(v4) => IpAddr::V4(Ipv4Addr::from(v4)),
            Err(_) => IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(address).map_err(|_| PreambleError::Truncated)?,
            )),
        };
        Ok(Self {
            destination: SocketAddr::new(ip, port),
        })
    }
}

fn invalid(err: PreambleError) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Preamble {
        Preamble {
            destination: s.parse().unwrap(),
        }
    }

    #[test]
    fn round_trips_ipv4_and_ipv6() {
        for p in [
            at("10.244.2.2:8080"),
            at("[fd00:10:244:2::2]:443"),
            at("[::ffff:10.0.0.1]:1"),
        ] {
            let bytes = p.encode();
            assert!(bytes.len() <= MAX_LEN);
            assert_eq!(Preamble::decode(&bytes), Ok((p, bytes.len())));
        }
    }

    #[test]
    fn refuses_foreign_and_broken_preambles() {
        let good = at("10.244.2.2:8080").encode();
        let with = |i: usize, b: u8| {
            let mut v = good.clone();
            v[i] = b;
            v
        };
        assert_eq!(
            Preamble::decode(b"GET / HTTP/1.1\r\n").unwrap_err(),
            PreambleError::BadMagic
        );
        assert_eq!(
            Preamble::decode(&with(3, 2)).unwrap_err(),
            PreambleError::UnsupportedVersion(2)
        );
        assert_eq!(
            Preamble::decode(&with(4, 5)).unwrap_err(),
            PreambleError::BadFamily(5)
        );
        let mut port_zero = good.clone();
        port_zero[5..7].copy_from_slice(&[0, 0]);
        assert_eq!(
            Preamble::decode(&port_zero).unwrap_err(),
            PreambleError::PortZero
        );
        // Every truncation is an error, never a panic.
        let v6 = at("[fd00::1]:80").encode();
        for len in 0..v6.len() {
            assert_eq!(
                Preamble::decode(&v6[..len]).unwrap_err(),
                PreambleError::Truncated,
                "length {len}"
            );
        }
    }

    #[tokio::test]
    async fn reads_exactly_one_preamble_from_a_stream() {
        let p = at("[fd00:10:244:2::2]:8080");
        let mut bytes = p.encode();
        bytes.extend_from_slice(b"application bytes");
        let mut stream = &bytes[..];
        assert_eq!(Preamble::read_from(&mut stream).await.unwrap(), p);
        assert_eq!(
            stream, b"application bytes",
            "nothing past the preamble is consumed"
        );

        let mut short = &bytes[..10];
        let err = Preamble::read_from(&mut short).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("closed before the end"), "{err}");

        let mut empty: &[u8] = &[];
        assert!(
            Preamble::read_next(&mut empty).await.unwrap().is_none(),
            "a stream that ends at a boundary is no error"
        );
    }
}

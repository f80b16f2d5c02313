//! Deterministic test payloads: the server and the checker generate the same
//! bytes from the same length, so content can be verified by hash without
//! shipping the data.

use sha2::{Digest, Sha256};

/// A stream of `len` pseudo-random bytes determined by `len` alone. Byte `i`
/// depends only on `len` and `i`, so any chunking yields the same stream.
#[derive(Clone, Debug)]
pub struct Payload {
    len: u64,
    position: u64,
    seed: u64,
}

impl Payload {
    /// The payload of `len` bytes.
    pub fn new(len: u64) -> Self {
        Self {
            len,
            position: 0,
            // Payloads of different sizes differ from the first byte.
            seed: splitmix64(len),
        }
    }

    /// Fills `buf` with the next bytes; returns how many were written (0 at the end).
    pub fn fill(&mut self, buf: &mut [u8]) -> usize {
        let left = self.len - self.position;
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let mut word = [0u8; 8];
        for (i, byte) in buf[..n].iter_mut().enumerate() {
            let at = self.position + i as u64;
            if i == 0 || at.is_multiple_of(8) {
                word = splitmix64(self.seed ^ (at / 8)).to_le_bytes();
            }
            *byte = word[(at % 8) as usize];
        }
        self.position += n as u64;
        n
    }

    /// SHA-256 of the whole payload of `len` bytes, hex-encoded.
    pub fn sha256_hex(len: u64) -> String {
        let mut payload = Self::new(len);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = payload.fill(&mut buf);
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        sha256_hex_of_digest(hasher)
    }
}

/// SHA-256 of `bytes`, hex-encoded.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(bytes);
    sha256_hex_of_digest(hasher)
}

/// SplitMix64: a fast, well-mixed 64-bit hash of `x`.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn sha256_hex_of_digest(hasher: Sha256) -> String {
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunking_does_not_change_the_bytes() {
        let mut whole = vec![0u8; 1000];
        assert_eq!(Payload::new(1000).fill(&mut whole), 1000);
        let mut pieces = Vec::new();
        let mut payload = Payload::new(1000);
        let mut buf = [0u8; 13];
        loop {
            let n = payload.fill(&mut buf);
            if n == 0 {
                break;
            }
            pieces.extend_from_slice(&buf[..n]);
        }
        assert_eq!(pieces, whole);
        assert_eq!(Payload::sha256_hex(1000), Payload::sha256_hex(1000));
        assert_ne!(Payload::sha256_hex(1000), Payload::sha256_hex(1001));
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

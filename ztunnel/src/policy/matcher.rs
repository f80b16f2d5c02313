//! Istio's value matching: strings (exact, prefix, suffix, presence) and IP
//! blocks.

use std::net::IpAddr;

/// A string pattern as Istio writes them: `*` (any non-empty value), `abc*`
/// (prefix), `*abc` (suffix), otherwise exact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StringMatch {
    /// Any non-empty value.
    Presence,
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// Equal.
    Exact(String),
}

impl StringMatch {
    /// The pattern written as `pattern`.
    pub fn new(pattern: &str) -> Self {
        if pattern == "*" {
            Self::Presence
        } else if let Some(prefix) = pattern.strip_suffix('*') {
            Self::Prefix(prefix.to_owned())
        } else if let Some(suffix) = pattern.strip_prefix('*') {
            Self::Suffix(suffix.to_owned())
        } else {
            Self::Exact(pattern.to_owned())
        }
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Presence => !value.is_empty(),
            Self::Prefix(prefix) => value.starts_with(prefix.as_str()),
            Self::Suffix(suffix) => value.ends_with(suffix.as_str()),
            Self::Exact(exact) => value == exact,
        }
    }
}

/// An address block: a CIDR (`10.0.0.0/8`, `fd00::/8`) or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpBlock {
    network: IpAddr,
    prefix: u8,
}

impl IpBlock {
    /// Parses `text`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0-{max}"))?,
            None => max,
        };
        Ok(Self { network, prefix })
    }

    /// Whether `ip` is inside the block (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_patterns_follow_istio() {
        let cases = [
            ("*", "anything", true),
            ("*", "", false),
            (
                "cluster.local/ns/foo/*",
                "cluster.local/ns/foo/sa/bar",
                true,
            ),
            (
                "cluster.local/ns/foo/*",
                "cluster.local/ns/food/sa/bar",
                false,
            ),
            ("*/sa/bar", "cluster.local/ns/foo/sa/bar", true),
            ("*/sa/bar", "cluster.local/ns/foo/sa/baz", false),
            ("foo", "foo", true),
            ("foo", "foobar", false),
        ];
        for (pattern, value, want) in cases {
            assert_eq!(
                StringMatch::new(pattern).matches(value),
                want,
                "{pattern} ~ {value}"
            );
        }
    }

    #[test]
    fn ip_blocks_contain_their_addresses() {
        let cases = [
            ("10.244.0.0/16", "10.244.2.3", true),
            ("10.244.0.0/16", "10.245.0.1", false),
            ("10.244.1.4", "10.244.1.4", true),
            ("10.244.1.4", "10.244.1.5", false),
            ("0.0.0.0/0", "192.0.2.1", true),
            ("10.244.0.0/16", "::ffff:10.244.9.9", true),
            ("fd00:10:244::/48", "fd00:10:244:2::3", true),
            ("fd00:10:244::/48", "10.244.2.3", false),
        ];
        for (block, ip, want) in cases {
            let block = IpBlock::parse(block).unwrap();
            assert_eq!(
                block.contains(ip.parse().unwrap()),
                want,
                "{block:?} ∋ {ip}"
            );
        }
        for bad in ["10.0.0.0/33", "nonsense", "10.0.0.0/x", "fd00::/129"] {
            assert!(IpBlock::parse(bad).is_err(), "{bad}");
        }
    }
}

//! SPIFFE IDs of Kubernetes workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>`.
//!
//! Parsing follows the SPIFFE ID specification (SPIFFE-ID.md): scheme
//! `spiffe`, a trust domain of lowercase letters, digits, `.`, `-` and `_`
//! (at most 255 bytes), no userinfo or port, path segments of letters,
//! digits, `.`, `-` and `_` that are neither empty nor `.` or `..`, no query
//! or fragment, at most 2048 bytes in all. On top of that, a workload identity
//! has exactly Istio's path shape `/ns/<namespace>/sa/<serviceaccount>`.

use std::fmt;

/// Longest trust domain the SPIFFE spec allows, in bytes.
const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Longest SPIFFE ID the SPIFFE spec allows, in bytes.
const MAX_ID_LEN: usize = 2048;
const SCHEME: &str = "spiffe://";

/// Why a string is not a valid SPIFFE workload identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeError {
    /// It does not start with `spiffe://`.
    #[error("a SPIFFE ID starts with `spiffe://`")]
    Scheme,
    /// The trust domain is empty.
    #[error("the trust domain is empty")]
    EmptyTrustDomain,
    /// The trust domain has a character outside `a-z 0-9 . - _` (userinfo and ports included).
    #[error("trust domain {0:?}: only lowercase letters, digits, '.', '-' and '_' are allowed")]
    TrustDomainCharacter(String),
    /// The trust domain is longer than 255 bytes.
    #[error("the trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    /// The ID is longer than 2048 bytes.
    #[error("the SPIFFE ID is longer than {MAX_ID_LEN} bytes")]
    TooLong,
    /// The ID has a query (`?`) or fragment (`#`).
    #[error("a SPIFFE ID has no query or fragment")]
    QueryOrFragment,
    /// A path segment is empty, `.` or `..`, or has a character outside `A-Z a-z 0-9 . - _`.
    #[error(
        "path segment {0:?}: segments are non-empty, not '.' or '..', of letters, digits, '.', '-', '_'"
    )]
    Segment(String),
    /// The path is not `/ns/<namespace>/sa/<serviceaccount>`.
    #[error("a workload identity has the path /ns/<namespace>/sa/<serviceaccount>, got {0:?}")]
    WorkloadPath(String),
}

/// A SPIFFE trust domain, such as `cluster.local`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Validates `name` as a trust domain.
    pub fn new(name: &str) -> Result<Self, SpiffeError> {
        if name.is_empty() {
            return Err(SpiffeError::EmptyTrustDomain);
        }
        if name.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(SpiffeError::TrustDomainTooLong);
        }
        let allowed =
            |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_');
        if !name.bytes().all(allowed) {
            return Err(SpiffeError::TrustDomainCharacter(name.to_owned()));
        }
        Ok(Self(name.to_owned()))
    }

    /// The trust domain as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for TrustDomain {
    type Err = SpiffeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// The identity of a Kubernetes workload: its ServiceAccount in a trust domain.
///
/// Held as its principal, `<trust domain>/ns/<namespace>/sa/<service
/// account>`, with where the namespace and ServiceAccount are in it: policy
/// compares the principal with every principal rule of every applicable
/// policy on every connection, so it is built once, and an identity (held
/// by every tunnel and connection) is two allocations, not four.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity {
    trust_domain: TrustDomain,
    principal: String,
    /// The namespace's start and end in `principal`.
    namespace: (u16, u16),
    /// The ServiceAccount's start in `principal` (it runs to the end).
    service_account: u16,
}

impl Identity {
    /// The identity of ServiceAccount `service_account` in `namespace`.
    pub fn new(
        trust_domain: TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeError> {
        for segment in [namespace, service_account] {
            check_segment(segment)?;
        }
        let principal = format!("{trust_domain}/ns/{namespace}/sa/{service_account}");
        if SCHEME.len() + principal.len() > MAX_ID_LEN {
            return Err(SpiffeError::TooLong);
        }
        // Within MAX_ID_LEN (2,048): every offset fits in a u16.
        let offset = |at: usize| u16::try_from(at).map_err(|_| SpiffeError::TooLong);
        let namespace_start = trust_domain.as_str().len() + "/ns/".len();
        let namespace_end = namespace_start + namespace.len();
        Ok(Self {
            namespace: (offset(namespace_start)?, offset(namespace_end)?),
            service_account: offset(namespace_end + "/sa/".len())?,
            trust_domain,
            principal,
        })
    }

    /// Parses a SPIFFE ID of Istio's workload form.
    pub fn parse(id: &str) -> Result<Self, SpiffeError> {
        if id.len() > MAX_ID_LEN {
            return Err(SpiffeError::TooLong);
        }
        let rest = id.strip_prefix(SCHEME).ok_or(SpiffeError::Scheme)?;
        if rest.contains(['?', '#']) {
            return Err(SpiffeError::QueryOrFragment);
        }
        let (trust_domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        let trust_domain = TrustDomain::new(trust_domain)?;
        let segments: Vec<&str> = path.split('/').collect();
        for segment in &segments {
            check_segment(segment)?;
        }
        match segments.as_slice() {
            ["ns", namespace, "sa", service_account] => {
                Self::new(trust_domain, namespace, service_account)
            }
            _ => Err(SpiffeError::WorkloadPath(format!("/{path}"))),
        }
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        let (start, end) = self.namespace;
        &self.principal[usize::from(start)..usize::from(end)]
    }

    /// The ServiceAccount.
    pub fn service_account(&self) -> &str {
        &self.principal[usize::from(self.service_account)..]
    }

    /// The identity as Istio policies name it: without the `spiffe://` scheme
    /// (`cluster.local/ns/<ns>/sa/<sa>`).
    pub fn principal(&self) -> &str {
        &self.principal
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}", self.principal)
    }
}

impl std::str::FromStr for Identity {
    type Err = SpiffeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn check_segment(segment: &str) -> Result<(), SpiffeError> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_');
    if segment.is_empty() || segment == "." || segment == ".." || !segment.bytes().all(allowed) {
        return Err(SpiffeError::Segment(segment.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_istio_workload_ids() {
        let id = Identity::parse("spiffe://cluster.local/ns/demo/sa/web").unwrap();
        assert_eq!(id.trust_domain().as_str(), "cluster.local");
        assert_eq!((id.namespace(), id.service_account()), ("demo", "web"));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/demo/sa/web");
        let built =
            Identity::new(TrustDomain::new("td_1-x.io").unwrap(), "my-ns", "Sa.1_x").unwrap();
        assert_eq!(Identity::parse(&built.to_string()).unwrap(), built);
    }

    #[test]
    fn rejects_what_the_spiffe_spec_rejects() {
        let long_domain = format!("spiffe://{}/ns/a/sa/b", "a".repeat(256));
        let long_id = format!("spiffe://td/ns/{}/sa/b", "a".repeat(2048));
        let cases: &[(&str, SpiffeError)] = &[
            ("http://cluster.local/ns/a/sa/b", SpiffeError::Scheme),
            ("SPIFFE://cluster.local/ns/a/sa/b", SpiffeError::Scheme),
            ("spiffe:///ns/a/sa/b", SpiffeError::EmptyTrustDomain),
            (
                "spiffe://Cluster.local/ns/a/sa/b",
                SpiffeError::TrustDomainCharacter("Cluster.local".into()),
            ),
            (
                "spiffe://user@td/ns/a/sa/b",
                SpiffeError::TrustDomainCharacter("user@td".into()),
            ),
            (
                "spiffe://td:8080/ns/a/sa/b",
                SpiffeError::TrustDomainCharacter("td:8080".into()),
            ),
            (&long_domain, SpiffeError::TrustDomainTooLong),
            (&long_id, SpiffeError::TooLong),
            ("spiffe://td/ns/a/sa/b?x=1", SpiffeError::QueryOrFragment),
            ("spiffe://td/ns/a/sa/b#frag", SpiffeError::QueryOrFragment),
            ("spiffe://td/ns//sa/b", SpiffeError::Segment(String::new())),
            (
                "spiffe://td/ns/a/sa/b/",
                SpiffeError::Segment(String::new()),
            ),
            ("spiffe://td/ns/../sa/b", SpiffeError::Segment("..".into())),
            ("spiffe://td/ns/./sa/b", SpiffeError::Segment(".".into())),
            (
                "spiffe://td/ns/a%20b/sa/b",
                SpiffeError::Segment("a%20b".into()),
            ),
            (
                "spiffe://td/ns/a/sa/b/extra",
                SpiffeError::WorkloadPath("/ns/a/sa/b/extra".into()),
            ),
            (
                "spiffe://td/sa/b/ns/a",
                SpiffeError::WorkloadPath("/sa/b/ns/a".into()),
            ),
            ("spiffe://td", SpiffeError::Segment(String::new())),
        ];
        for (input, want) in cases {
            assert_eq!(Identity::parse(input).as_ref(), Err(want), "{input}");
        }
    }
}

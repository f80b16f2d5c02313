//! Istio's security resources as they are written in YAML
//! (`security.istio.io/v1` and `v1beta1`, which share a schema).
//!
//! Unknown fields in a `spec` are errors, so a typo never silently widens or
//! narrows a policy. `metadata` takes what Kubernetes puts there (uid, labels,
//! resourceVersion ...) and keeps only what matters here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::registry::Labels;

/// The fields every Kubernetes object starts with.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    /// `security.istio.io/v1` or `security.istio.io/v1beta1`.
    pub api_version: String,
    /// `PeerAuthentication` or `AuthorizationPolicy`.
    pub kind: String,
    /// Name, namespace, annotations.
    #[serde(default)]
    pub metadata: Metadata,
}

/// Object metadata: what policy needs of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Object name.
    #[serde(default)]
    pub name: String,
    /// Namespace; `default` when absent, as `kubectl apply` would do.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Annotations (`istio.io/dry-run: "true"`).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// When the API server created the object (RFC 3339). Of several
    /// PeerAuthentications at one level, Istio applies the oldest; objects
    /// written by hand have none and count as newer than any that has one.
    #[serde(default, rename = "creationTimestamp")]
    pub creation_timestamp: Option<String>,
}

fn default_namespace() -> String {
    "default".to_owned()
}

/// `kind: List` (what `kubectl get -o yaml` writes for several objects).
#[derive(Clone, Debug, Deserialize)]
pub struct List {
    /// The objects, each a whole resource.
    #[serde(default)]
    pub items: Vec<serde_json::Value>,
}

/// A whole resource: header fields plus its `spec`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource<S> {
    /// API version (checked by the loader).
    pub api_version: String,
    /// Kind (checked by the loader).
    pub kind: String,
    /// Name, namespace, annotations.
    #[serde(default)]
    pub metadata: Metadata,
    /// The kind's specification.
    #[serde(default)]
    pub spec: S,
}

/// Selects workloads of the policy's namespace by label.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// A workload matches when its labels contain all of these.
    #[serde(default)]
    pub match_labels: Labels,
}

/// `PeerAuthentication.spec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    /// Workloads it applies to; none: the whole namespace (or mesh, in the root namespace).
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// The mode for every port.
    #[serde(default)]
    pub mtls: Option<MutualTls>,
    /// Per-port modes (only with a selector, as in Istio).
    #[serde(default)]
    pub port_level_mtls: BTreeMap<u16, MutualTls>,
}

/// A mutual TLS setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MutualTls {
    /// The mode.
    #[serde(default)]
    pub mode: MtlsMode,
}

/// How a workload accepts connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent (namespace, then mesh); PERMISSIVE at the top.
    #[default]
    Unset,
    /// Mutual TLS only: plaintext into the pod is refused.
    Strict,
    /// Both mutual TLS and plaintext.
    Permissive,
    /// Plaintext accepted (the tunnel is still accepted: a daemon cannot
    /// make its peer send plaintext).
    Disable,
}

/// `AuthorizationPolicy.spec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// Workloads it applies to; none: the whole namespace (or mesh, in the root namespace).
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// Waypoint or gateway targets: such a policy is not for a node proxy
    /// (skipped, as Istio's ztunnel skips it).
    #[serde(default)]
    pub target_ref: Option<Present>,
    /// As above.
    #[serde(default)]
    pub target_refs: Option<Vec<Present>>,
    /// What a matching rule does (ALLOW by default).
    #[serde(default)]
    pub action: Action,
    /// The external authorizer of a CUSTOM policy (skipped, as by Istio's ztunnel).
    #[serde(default)]
    pub provider: Option<Present>,
    /// Rules; a connection matches the policy when it matches any rule.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// Any YAML value, for fields whose presence alone matters; its content is not kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Present;

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(deserializer).map(|_| Present)
    }
}

impl Serialize for Present {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_unit()
    }
}

/// `AuthorizationPolicy.spec.action`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    /// A connection must match one ALLOW policy, when any applies.
    #[default]
    Allow,
    /// A matching connection is refused (evaluated first).
    Deny,
    /// A matching connection is recorded, not decided.
    Audit,
    /// Delegated to an external authorizer (not supported here).
    Custom,
}

/// One rule: every present part must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Sources; any may match. Absent: any source.
    #[serde(default)]
    pub from: Vec<From>,
    /// Operations; any may match. Absent: any operation.
    #[serde(default)]
    pub to: Vec<To>,
    /// Conditions; all must match.
    #[serde(default)]
    pub when: Vec<Condition>,
}

/// `rules[].from[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct From {
    /// The source's attributes.
    #[serde(default)]
    pub source: Source,
}

/// A connection's source: every present field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Peer identities (`<trust domain>/ns/<ns>/sa/<sa>`), from mutual TLS.
    #[serde(default)]
    pub principals: Vec<String>,
    /// Peer identities that must not match.
    #[serde(default)]
    pub not_principals: Vec<String>,
    /// JWT principals (L7).
    #[serde(default)]
    pub request_principals: Vec<String>,
    /// JWT principals that must not match (L7).
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    /// Namespaces of the peer identity.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Namespaces that must not match.
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    /// Source IPs or CIDRs.
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    /// Source IPs or CIDRs that must not match.
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    /// Original client IPs, from HTTP headers (L7: Istio does not give
    /// them to its node proxy).
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    /// Original client IPs that must not match (L7).
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
    /// Peer ServiceAccounts, `<namespace>/<name>` or `<name>` (in the
    /// policy's namespace).
    #[serde(default)]
    pub service_accounts: Vec<String>,
    /// Peer ServiceAccounts that must not match.
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
}

/// `rules[].to[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct To {
    /// The operation's attributes.
    #[serde(default)]
    pub operation: Operation,
}

/// What the connection does: every present field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// Destination ports.
    #[serde(default)]
    pub ports: Vec<String>,
    /// Destination ports that must not match.
    #[serde(default)]
    pub not_ports: Vec<String>,
    /// HTTP hosts (L7).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// HTTP hosts that must not match (L7).
    #[serde(default)]
    pub not_hosts: Vec<String>,
    /// HTTP methods (L7).
    #[serde(default)]
    pub methods: Vec<String>,
    /// HTTP methods that must not match (L7).
    #[serde(default)]
    pub not_methods: Vec<String>,
    /// HTTP paths (L7).
    #[serde(default)]
    pub paths: Vec<String>,
    /// HTTP paths that must not match (L7).
    #[serde(default)]
    pub not_paths: Vec<String>,
}

/// `rules[].when[]`: a key and the values it must (not) have.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// The attribute (`source.ip`, `destination.port`, ...).
    pub key: String,
    /// It must match one of these.
    #[serde(default)]
    pub values: Vec<String>,
    /// It must match none of these.
    #[serde(default)]
    pub not_values: Vec<String>,
}

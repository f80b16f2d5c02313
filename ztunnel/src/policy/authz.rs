//! AuthorizationPolicy, compiled and evaluated with Istio's semantics at L4.
//!
//! - DENY policies are evaluated first: one matching rule refuses.
//! - When any ALLOW policy applies to the workload, the connection must match
//!   one of their rules; `spec: {}` (ALLOW, no rules) therefore allows nothing.
//! - A rule `{}` matches everything; within a rule every present part must
//!   match; `from` and `to` entries are alternatives; `when` conditions all hold.
//! - L7 attributes (paths, methods, hosts, JWT principals, request headers)
//!   cannot be seen here. As Istio's ztunnel does, an ALLOW rule using them
//!   matches nothing and a DENY rule using them is evaluated on its L4 parts
//!   alone (it denies as if the L7 parts matched): both fail closed.
//! - Dry-run policies (`istio.io/dry-run: "true"`) are evaluated on the side:
//!   their would-be decision is reported, never enforced.

use std::{collections::BTreeSet, net::IpAddr};

use super::{
    PolicyError,
    matcher::{IpBlock, StringMatch},
    model::{Action, AuthorizationPolicySpec, Condition, Metadata, Operation, Rule, Source},
};
use crate::{identity::Identity, registry::Labels};

/// A connection as policy sees it.
#[derive(Clone, Copy, Debug)]
pub struct Connection<'a> {
    /// The source address (the peer of the accepted connection).
    pub source_ip: IpAddr,
    /// The source workload's identity, proven by mutual TLS; `None` for plaintext.
    pub source_identity: Option<&'a Identity>,
    /// The destination address.
    pub destination_ip: IpAddr,
    /// The destination port.
    pub destination_port: u16,
}

/// The workload a connection is for.
#[derive(Clone, Copy, Debug)]
pub struct Workload<'a> {
    /// Its Kubernetes namespace.
    pub namespace: &'a str,
    /// Its pod labels.
    pub labels: &'a Labels,
}

/// An AuthorizationPolicy ready to evaluate.
#[derive(Clone, Debug)]
pub struct AuthorizationPolicy {
    /// `namespace/name`.
    pub id: String,
    namespace: String,
    selector: Option<Labels>,
    /// The action of a matching rule.
    pub action: Action,
    /// Evaluated and reported, never enforced.
    pub dry_run: bool,
    rules: Vec<CompiledRule>,
    /// The attributes its rules name that an L4 proxy cannot see (fields
    /// and `when` keys, as written).
    pub l7_attributes: BTreeSet<String>,
    /// The specification as written, for the config dump.
    pub spec: AuthorizationPolicySpec,
}

#[derive(Clone, Debug)]
struct CompiledRule {
    from: Vec<SourceMatch>,
    to: Vec<PortMatch>,
    when: Vec<WhenMatch>,
    l7: bool,
}

/// One `from` entry's L4 attributes. With none (its source named only
/// attributes an L4 proxy cannot see), it matches nothing, as in Istio's
/// ztunnel, which skips an empty match.
#[derive(Clone, Debug, Default)]
struct SourceMatch {
    principals: Vec<StringMatch>,
    not_principals: Vec<StringMatch>,
    namespaces: Vec<StringMatch>,
    not_namespaces: Vec<StringMatch>,
    service_accounts: Vec<(String, String)>,
    not_service_accounts: Vec<(String, String)>,
    ip_blocks: Vec<IpBlock>,
    not_ip_blocks: Vec<IpBlock>,
}

/// One `to` entry's L4 attributes; with none it matches nothing.
#[derive(Clone, Debug, Default)]
struct PortMatch {
    ports: Vec<u16>,
    not_ports: Vec<u16>,
}

#[derive(Clone, Debug)]
enum WhenMatch {
    Ip {
        destination: bool,
        values: Vec<IpBlock>,
        not_values: Vec<IpBlock>,
    },
    Port {
        values: Vec<u16>,
        not_values: Vec<u16>,
    },
    Text {
        attribute: TextAttribute,
        values: Vec<StringMatch>,
        not_values: Vec<StringMatch>,
    },
    /// A key Istio does not give its node proxy (`remote.ip`,
    /// `connection.sni`, `request.*`, ...): the condition never holds, with
    /// `values` or `notValues` alike, so the rule never matches.
    NotAtL4,
}

#[derive(Clone, Copy, Debug)]
enum TextAttribute {
    Principal,
    Namespace,
}

/// The annotation that makes a policy a trial: evaluated, never enforced.
const DRY_RUN: &str = "istio.io/dry-run";

/// A boolean as Go's `strconv.ParseBool` reads it, which is how Istio reads
/// its annotations (and its webhook refuses anything else).
fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

impl AuthorizationPolicy {
    /// Compiles `spec`; `field` names the document's location in errors.
    pub fn compile(
        metadata: &Metadata,
        spec: &AuthorizationPolicySpec,
    ) -> Result<Self, PolicyError> {
        let invalid = |field: String, message: String| PolicyError::Field { field, message };
        let unsupported = |field: &str, message: &str| PolicyError::Unsupported {
            field: field.to_owned(),
            message: message.to_owned(),
        };
        if spec.target_ref.is_some() || spec.target_refs.is_some() {
            return Err(unsupported(
                "spec.targetRefs",
                "the policy is attached to a waypoint or gateway, which enforces it; a node proxy does not",
            ));
        }
        if spec.action == Action::Custom || spec.provider.is_some() {
            return Err(unsupported(
                "spec.action",
                "CUSTOM (external authorization) is enforced by a waypoint, not by a node proxy",
            ));
        }
        let mut l7_attributes = BTreeSet::new();
        let rules = spec
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let at = format!("spec.rules[{i}]");
                compile_rule(rule, &at, &metadata.namespace, &mut l7_attributes)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            spec: spec.clone(),
            id: format!("{}/{}", metadata.namespace, metadata.name),
            namespace: metadata.namespace.clone(),
            selector: spec.selector.as_ref().map(|s| s.match_labels.clone()),
            action: spec.action,
            dry_run: match metadata.annotations.get(DRY_RUN) {
                None => false,
                Some(value) => parse_bool(value).ok_or_else(|| {
                    invalid(
                        format!("metadata.annotations[{DRY_RUN}]"),
                        format!(
                            "{value:?} is not a boolean (as Go's strconv.ParseBool reads it: 1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False)"
                        ),
                    )
                })?,
            },
            l7_attributes,
            rules,
        })
    }

    /// How many rules it has.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Its namespace and its selector's labels, if it has a selector.
    pub fn scope(&self) -> (&str, Option<&Labels>) {
        (&self.namespace, self.selector.as_ref())
    }

    /// Whether the policy applies to `workload` (`root`: the mesh-wide namespace).
    pub fn applies_to(&self, workload: &Workload<'_>, root: &str) -> bool {
        let in_scope = self.namespace == root || self.namespace == workload.namespace;
        in_scope
            && self
                .selector
                .as_ref()
                .is_none_or(|selector| workload.labels.contain_all(selector))
    }

    /// The rules that can never match here: an ALLOW rule naming an HTTP
    /// attribute, or a rule with a `from`, `to` or `when` part left with no
    /// attribute an L4 proxy sees. For a DENY policy these deny nothing.
    pub fn rules_without_effect(&self) -> Vec<usize> {
        (0..self.rules.len())
            .filter(|&i| {
                let rule = &self.rules[i];
                (rule.l7 && self.action == Action::Allow) || !rule.can_match()
            })
            .collect()
    }

    /// The index of the first rule `connection` matches, if any.
    pub fn matching_rule(&self, connection: &Connection<'_>) -> Option<usize> {
        self.rules
            .iter()
            .position(|rule| rule.matches(connection, self.action))
    }
}

impl CompiledRule {
    /// Istio's translation for its node proxy: an ALLOW rule naming any HTTP
    /// attribute is dropped (it never matches); a DENY rule keeps its L4
    /// attributes, and a `from`, `to` or `when` entry left with none matches
    /// nothing, so such a DENY rule may deny nothing at all (istio#61126).
    fn matches(&self, connection: &Connection<'_>, action: Action) -> bool {
        if self.l7 && action == Action::Allow {
            return false;
        }
        self.can_match()
            && (self.from.is_empty() || self.from.iter().any(|s| s.matches(connection)))
            && (self.to.is_empty() || self.to.iter().any(|p| p.matches(connection)))
            && self.when.iter().all(|w| w.matches(connection))
    }
}

impl CompiledRule {
    /// Whether any connection could match: every part it has keeps an L4
    /// attribute.
    fn can_match(&self) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| !s.is_empty()))
            && (self.to.is_empty() || self.to.iter().any(|p| !p.is_empty()))
            && !self.when.iter().any(|w| matches!(w, WhenMatch::NotAtL4))
    }
}

/// `values` empty or one matching, and none of `not_values` matching.
fn included<T>(values: &[T], not_values: &[T], matches: impl Fn(&T) -> bool) -> bool {
    (values.is_empty() || values.iter().any(&matches)) && !not_values.iter().any(matches)
}

impl SourceMatch {
    fn matches(&self, connection: &Connection<'_>) -> bool {
        let principal = connection.source_identity.map(Identity::principal);
        let namespace = connection.source_identity.map(Identity::namespace);
        // Without mutual TLS there is no principal: `principals` cannot match,
        // `notPrincipals` has nothing to exclude (as in Istio).
        let text = |value: Option<&str>, m: &StringMatch| value.is_some_and(|v| m.matches(v));
        let account = |(namespace, name): &(String, String)| {
            connection
                .source_identity
                .is_some_and(|id| id.namespace() == namespace && id.service_account() == name)
        };
        !self.is_empty()
            && included(&self.principals, &self.not_principals, |m| {
                text(principal, m)
            })
            && included(&self.namespaces, &self.not_namespaces, |m| {
                text(namespace, m)
            })
            && included(&self.service_accounts, &self.not_service_accounts, account)
            && included(&self.ip_blocks, &self.not_ip_blocks, |b| {
                b.contains(connection.source_ip)
            })
    }

    fn is_empty(&self) -> bool {
        self.principals.is_empty()
            && self.not_principals.is_empty()
            && self.namespaces.is_empty()
            && self.not_namespaces.is_empty()
            && self.service_accounts.is_empty()
            && self.not_service_accounts.is_empty()
            && self.ip_blocks.is_empty()
            && self.not_ip_blocks.is_empty()
    }
}

impl PortMatch {
    fn matches(&self, connection: &Connection<'_>) -> bool {
        !self.is_empty()
            && included(&self.ports, &self.not_ports, |p| {
                *p == connection.destination_port
            })
    }

    fn is_empty(&self) -> bool {
        self.ports.is_empty() && self.not_ports.is_empty()
    }
}

impl WhenMatch {
    fn matches(&self, connection: &Connection<'_>) -> bool {
        match self {
            Self::Ip {
                destination,
                values,
                not_values,
            } => {
                let ip = if *destination {
                    connection.destination_ip
                } else {
                    connection.source_ip
                };
                included(values, not_values, |b| b.contains(ip))
            }
            Self::Port { values, not_values } => {
                included(values, not_values, |p| *p == connection.destination_port)
            }
            Self::Text {
                attribute,
                values,
                not_values,
            } => {
                let value = match attribute {
                    TextAttribute::Principal => connection.source_identity.map(Identity::principal),
                    TextAttribute::Namespace => connection.source_identity.map(Identity::namespace),
                };
                included(values, not_values, |m| value.is_some_and(|v| m.matches(v)))
            }
            Self::NotAtL4 => false,
        }
    }
}

/// Compiles one rule; the HTTP attributes it names are added to `l7`.
fn compile_rule(
    rule: &Rule,
    at: &str,
    namespace: &str,
    l7: &mut BTreeSet<String>,
) -> Result<CompiledRule, PolicyError> {
    let mut found = Vec::new();
    let mut from = Vec::new();
    for (i, entry) in rule.from.iter().enumerate() {
        found.extend(source_l7_fields(&entry.source));
        from.push(compile_source(
            &entry.source,
            &format!("{at}.from[{i}].source"),
            namespace,
        )?);
    }
    let mut to = Vec::new();
    for (i, entry) in rule.to.iter().enumerate() {
        let at = format!("{at}.to[{i}].operation");
        found.extend(operation_l7_fields(&entry.operation));
        to.push(PortMatch {
            ports: ports(&entry.operation.ports, &format!("{at}.ports"))?,
            not_ports: ports(&entry.operation.not_ports, &format!("{at}.notPorts"))?,
        });
    }
    let mut when = Vec::new();
    for (i, condition) in rule.when.iter().enumerate() {
        let matcher = compile_condition(condition, &format!("{at}.when[{i}]"))?;
        if matches!(matcher, WhenMatch::NotAtL4) {
            found.push(condition.key.as_str());
        }
        when.push(matcher);
    }
    l7.extend(found.iter().map(|name| (*name).to_owned()));
    Ok(CompiledRule {
        from,
        to,
        when,
        l7: !found.is_empty(),
    })
}

/// The fields of `operation` Istio treats as HTTP-level.
fn operation_l7_fields(operation: &Operation) -> Vec<&'static str> {
    [
        ("hosts", &operation.hosts),
        ("notHosts", &operation.not_hosts),
        ("methods", &operation.methods),
        ("notMethods", &operation.not_methods),
        ("paths", &operation.paths),
        ("notPaths", &operation.not_paths),
    ]
    .into_iter()
    .filter(|(_, values)| !values.is_empty())
    .map(|(name, _)| name)
    .collect()
}

/// The fields of `source` Istio treats as HTTP-level.
fn source_l7_fields(source: &Source) -> Vec<&'static str> {
    [
        ("requestPrincipals", &source.request_principals),
        ("notRequestPrincipals", &source.not_request_principals),
        ("remoteIpBlocks", &source.remote_ip_blocks),
        ("notRemoteIpBlocks", &source.not_remote_ip_blocks),
    ]
    .into_iter()
    .filter(|(_, values)| !values.is_empty())
    .map(|(name, _)| name)
    .collect()
}

/// `namespace/name`, or `name` in the policy's `namespace`.
fn service_account(value: &str, namespace: &str) -> (String, String) {
    match value.split_once('/') {
        Some((namespace, name)) => (namespace.to_owned(), name.to_owned()),
        None => (namespace.to_owned(), value.to_owned()),
    }
}

fn compile_source(source: &Source, at: &str, namespace: &str) -> Result<SourceMatch, PolicyError> {
    let strings = |values: &[String]| values.iter().map(|v| StringMatch::new(v)).collect();
    let blocks = |values: &[String], field: &str| -> Result<Vec<IpBlock>, PolicyError> {
        values
            .iter()
            .map(|v| {
                IpBlock::parse(v).map_err(|message| PolicyError::Field {
                    field: format!("{at}.{field}"),
                    message,
                })
            })
            .collect()
    };
    // remoteIpBlocks come from HTTP headers (X-Forwarded-For): checked for
    // form only, never matched here (see `source_l7_fields`).
    blocks(&source.remote_ip_blocks, "remoteIpBlocks")?;
    blocks(&source.not_remote_ip_blocks, "notRemoteIpBlocks")?;
    let accounts = |values: &[String]| {
        values
            .iter()
            .map(|v| service_account(v, namespace))
            .collect()
    };
    Ok(SourceMatch {
        principals: strings(&source.principals),
        not_principals: strings(&source.not_principals),
        namespaces: strings(&source.namespaces),
        not_namespaces: strings(&source.not_namespaces),
        service_accounts: accounts(&source.service_accounts),
        not_service_accounts: accounts(&source.not_service_accounts),
        ip_blocks: blocks(&source.ip_blocks, "ipBlocks")?,
        not_ip_blocks: blocks(&source.not_ip_blocks, "notIpBlocks")?,
    })
}

/// A `when` condition. Only the keys Istio gives its node proxy are matched:
/// `source.ip`, `source.namespace`, `source.principal`, `destination.ip`,
/// `destination.port`; its other keys never hold here.
fn compile_condition(condition: &Condition, at: &str) -> Result<WhenMatch, PolicyError> {
    let field = |message: String| PolicyError::Field {
        field: format!("{at}.key"),
        message,
    };
    if condition.values.is_empty() && condition.not_values.is_empty() {
        return Err(PolicyError::Field {
            field: format!("{at}.values"),
            message: "a condition needs values or notValues".to_owned(),
        });
    }
    let ip = |destination| -> Result<WhenMatch, PolicyError> {
        let parse = |values: &[String], name: &str| {
            values
                .iter()
                .map(|v| {
                    IpBlock::parse(v).map_err(|message| PolicyError::Field {
                        field: format!("{at}.{name}"),
                        message,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(WhenMatch::Ip {
            destination,
            values: parse(&condition.values, "values")?,
            not_values: parse(&condition.not_values, "notValues")?,
        })
    };
    let text = |attribute| {
        Ok(WhenMatch::Text {
            attribute,
            values: condition
                .values
                .iter()
                .map(|v| StringMatch::new(v))
                .collect(),
            not_values: condition
                .not_values
                .iter()
                .map(|v| StringMatch::new(v))
                .collect(),
        })
    };
    match condition.key.as_str() {
        "source.ip" => ip(false),
        "destination.ip" => ip(true),
        "destination.port" => Ok(WhenMatch::Port {
            values: ports(&condition.values, &format!("{at}.values"))?,
            not_values: ports(&condition.not_values, &format!("{at}.notValues"))?,
        }),
        "source.principal" => text(TextAttribute::Principal),
        "source.namespace" => text(TextAttribute::Namespace),
        // Known to Istio, not given to its node proxy: the original client
        // from HTTP headers, the SNI of TLS it does not terminate, requests.
        "remote.ip" | "connection.sni" => Ok(WhenMatch::NotAtL4),
        key if key.starts_with("request.") || key.starts_with("experimental.") => {
            Ok(WhenMatch::NotAtL4)
        }
        key => Err(field(format!(
            "unknown condition key {key:?} (keys at L4: source.ip, source.namespace, source.principal, destination.ip, destination.port; remote.ip, connection.sni, request.* and experimental.* never match at L4)"
        ))),
    }
}

fn ports(values: &[String], at: &str) -> Result<Vec<u16>, PolicyError> {
    values
        .iter()
        .map(|v| {
            v.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| PolicyError::Field {
                    field: at.to_owned(),
                    message: format!("{v:?} is not a port (1-65535)"),
                })
        })
        .collect()
}

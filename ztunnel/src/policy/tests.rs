//! The evaluator against Istio's documented results, as a table: each case
//! is a policy set (YAML as users write it), a connection, and the decision.

use std::net::IpAddr;

use super::*;
use crate::{identity::Identity, registry::Labels};

const HEADER: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n";

/// A set from YAML documents (each an AuthorizationPolicy body after
/// `metadata`), panicking on load errors.
fn set(yaml: &str) -> PolicySet {
    let set = PolicySet::from_yaml(DEFAULT_ROOT_NAMESPACE, yaml);
    let not_applied: Vec<_> = set
        .objects
        .iter()
        .filter(|o| !o.in_force || !set.file_errors.is_empty())
        .collect();
    assert!(
        not_applied.is_empty() && set.file_errors.is_empty(),
        "{not_applied:#?} {:?}",
        set.file_errors
    );
    set
}

fn policy(namespace: &str, body: &str) -> String {
    format!("---\n{HEADER}metadata:\n  name: p\n  namespace: {namespace}\n{body}\n")
}

fn labels() -> Labels {
    Labels::from([("app".to_owned(), "web".to_owned())])
}

const CLIENT: Option<&str> = Some("cluster.local/ns/demo/sa/client");
const OTHER: Option<&str> = Some("cluster.local/ns/other/sa/default");
const PLAIN: Option<&str> = None;

// Where Istio's behaviour is written down (the `source` of each case).
const AP_DOC: &str = "istio.io reference/config/security/authorization-policy";
const CONCEPTS: &str =
    "istio.io docs/concepts/security (authorization: allow-nothing, deny-all, value matching)";
const L4_DOC: &str = "istio.io docs/ambient/usage/l4-policy";
const TRANSLATION: &str = "istio/istio pilot/pkg/serviceregistry/ambient/authorization.go (handleRule, httpSources, httpOperations)";
const TRANSLATION_TEST: &str =
    "istio/istio pilot/pkg/serviceregistry/ambient/authorization_test.go";
const ISTIO_61126: &str = "istio/istio#61126 (an empty match is skipped, not match-all)";
const RBAC: &str = "istio/ztunnel src/rbac.rs tests";
const ATTACHED: &str = "istio/istio pilot/pkg/serviceregistry/ambient/workloads.go (policies of the workload's namespace or the root namespace, by labels)";
const ASSERT_RBAC: &str =
    "istio/ztunnel src/state.rs assert_rbac (DENY, then ALLOW; dry-run apart)";

/// Policies in one line: `|`-separated `namespace[@v1beta1][@dry-run]: <spec
/// in flow YAML>`; each is an AuthorizationPolicy named `p<index>`.
fn authorization(policies: &str) -> PolicySet {
    let mut yaml = String::new();
    for (index, item) in policies.split(" | ").filter(|i| !i.is_empty()).enumerate() {
        let (head, spec) = item.split_once(": ").unwrap();
        let mut head = head.split('@');
        let namespace = head.next().unwrap();
        let flags: Vec<&str> = head.collect();
        let version = if flags.contains(&"v1beta1") {
            "v1beta1"
        } else {
            "v1"
        };
        let annotations = if flags.contains(&"dry-run") {
            ", annotations: {istio.io/dry-run: \"true\"}"
        } else {
            ""
        };
        yaml.push_str(&format!(
            "---\napiVersion: security.istio.io/{version}\nkind: AuthorizationPolicy\nmetadata: {{name: p{index}, namespace: {namespace}{annotations}}}\nspec: {spec}\n"
        ));
    }
    let set = PolicySet::from_yaml(DEFAULT_ROOT_NAMESPACE, &yaml);
    assert!(
        set.problems().is_empty(),
        "{policies}: {:?}",
        set.problems()
    );
    set
}

/// Evaluates a connection to the `app: web` pod of `demo` (10.244.2.2).
fn authorize(set: &PolicySet, from: Option<&str>, ip: &str, port: u16) -> Verdict {
    let identity = from.map(|p| Identity::parse(&format!("spiffe://{p}")).unwrap());
    let labels = labels();
    let workload = Workload {
        namespace: "demo",
        labels: &labels,
    };
    let connection = Connection {
        source_ip: ip.parse::<IpAddr>().unwrap(),
        source_identity: identity.as_ref(),
        destination_ip: "10.244.2.2".parse().unwrap(),
        destination_port: port,
    };
    set.decide(&workload, &connection)
}

/// (case, Istio source, policies, source principal, source IP, port, allowed)
type AuthorizationCase = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static str,
    u16,
    bool,
);

#[test]
fn authorization_follows_istio_semantics() {
    const IP: &str = "10.244.1.3";
    #[rustfmt::skip]
    let cases: &[AuthorizationCase] = &[
        ("no policy allows", CONCEPTS, "", CLIENT, IP, 8080, true),
        ("spec {} allows nothing", CONCEPTS, "demo: {}", CLIENT, IP, 8080, false),
        ("ALLOW without rules allows nothing, plaintext too", CONCEPTS, "demo: {action: ALLOW}", PLAIN, IP, 8080, false),
        ("rule {} allows all", CONCEPTS, "demo: {rules: [{}]}", PLAIN, IP, 8080, true),
        ("DENY with rule {} denies all", CONCEPTS, "demo: {action: DENY, rules: [{}]}", CLIENT, IP, 8080, false),
        ("DENY without rules denies nothing", AP_DOC, "demo: {action: DENY}", CLIENT, IP, 8080, true),
        ("principal exact", RBAC, "demo: {rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]}]}", CLIENT, IP, 8080, true),
        ("principal exact, another", RBAC, "demo: {rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]}]}", OTHER, IP, 8080, false),
        ("principal prefix", AP_DOC, "demo: {rules: [{from: [{source: {principals: [cluster.local/ns/demo/*]}}]}]}", CLIENT, IP, 8080, true),
        ("principal suffix", AP_DOC, "demo: {rules: [{from: [{source: {principals: [\"*/sa/client\"]}}]}]}", CLIENT, IP, 8080, true),
        ("principal presence, mTLS", AP_DOC, "demo: {rules: [{from: [{source: {principals: [\"*\"]}}]}]}", CLIENT, IP, 8080, true),
        ("principal presence, plaintext", AP_DOC, "demo: {rules: [{from: [{source: {principals: [\"*\"]}}]}]}", PLAIN, IP, 8080, false),
        ("notPrincipals excludes", RBAC, "demo: {rules: [{from: [{source: {notPrincipals: [cluster.local/ns/demo/sa/client]}}]}]}", CLIENT, IP, 8080, false),
        ("notPrincipals, another", RBAC, "demo: {rules: [{from: [{source: {notPrincipals: [cluster.local/ns/demo/sa/client]}}]}]}", OTHER, IP, 8080, true),
        ("notPrincipals *, plaintext has none to exclude", RBAC, "demo: {rules: [{from: [{source: {notPrincipals: [\"*\"]}}]}]}", PLAIN, IP, 8080, true),
        ("DENY notPrincipals * refuses plaintext", CONCEPTS, "demo: {action: DENY, rules: [{from: [{source: {notPrincipals: [\"*\"]}}]}]}", PLAIN, IP, 8080, false),
        ("namespaces", RBAC, "demo: {rules: [{from: [{source: {namespaces: [demo]}}]}]}", CLIENT, IP, 8080, true),
        ("namespaces, another", RBAC, "demo: {rules: [{from: [{source: {namespaces: [demo]}}]}]}", OTHER, IP, 8080, false),
        ("namespaces, plaintext has none", AP_DOC, "demo: {rules: [{from: [{source: {namespaces: [demo]}}]}]}", PLAIN, IP, 8080, false),
        ("namespaces prefix", AP_DOC, "demo: {rules: [{from: [{source: {namespaces: [\"de*\"]}}]}]}", CLIENT, IP, 8080, true),
        ("DENY notNamespaces", RBAC, "demo: {action: DENY, rules: [{from: [{source: {notNamespaces: [demo]}}]}]}", OTHER, IP, 8080, false),
        ("DENY notNamespaces, the same namespace", RBAC, "demo: {action: DENY, rules: [{from: [{source: {notNamespaces: [demo]}}]}]}", CLIENT, IP, 8080, true),
        ("ipBlocks", RBAC, "demo: {rules: [{from: [{source: {ipBlocks: [10.244.1.0/24]}}]}]}", PLAIN, "10.244.1.4", 8080, true),
        ("ipBlocks, outside", RBAC, "demo: {rules: [{from: [{source: {ipBlocks: [10.244.1.0/24]}}]}]}", PLAIN, "10.244.2.4", 8080, false),
        ("ipBlocks, one address", AP_DOC, "demo: {rules: [{from: [{source: {ipBlocks: [10.244.1.4]}}]}]}", PLAIN, "10.244.1.4", 8080, true),
        ("ipBlocks IPv6", AP_DOC, "demo: {rules: [{from: [{source: {ipBlocks: [\"fd00:10:244:1::/64\"]}}]}]}", PLAIN, "fd00:10:244:1::4", 8080, true),
        ("ipBlocks IPv4 does not hold an IPv6 source", AP_DOC, "demo: {rules: [{from: [{source: {ipBlocks: [0.0.0.0/0]}}]}]}", PLAIN, "fd00::4", 8080, false),
        ("notIpBlocks", RBAC, "demo: {rules: [{from: [{source: {notIpBlocks: [10.244.1.0/24]}}]}]}", PLAIN, "10.244.1.4", 8080, false),
        ("ALLOW remoteIpBlocks matches nothing", TRANSLATION, "demo: {rules: [{from: [{source: {remoteIpBlocks: [10.244.1.0/24]}}]}]}", PLAIN, "10.244.1.4", 8080, false),
        ("ALLOW notRemoteIpBlocks matches nothing", TRANSLATION, "demo: {rules: [{from: [{source: {notRemoteIpBlocks: [192.0.2.0/24]}}]}]}", PLAIN, "10.244.1.4", 8080, false),
        ("DENY notRemoteIpBlocks alone has no effect", ISTIO_61126, "demo: {action: DENY, rules: [{from: [{source: {notRemoteIpBlocks: [10.244.0.0/16]}}]}]}", PLAIN, "192.0.2.1", 8080, true),
        ("DENY ipBlocks beside remoteIpBlocks denies on ipBlocks", TRANSLATION, "demo: {action: DENY, rules: [{from: [{source: {ipBlocks: [10.244.1.0/24], remoteIpBlocks: [192.0.2.0/24]}}]}]}", PLAIN, "10.244.1.4", 8080, false),
        ("serviceAccounts, a name in the policy's namespace", RBAC, "demo: {rules: [{from: [{source: {serviceAccounts: [client]}}]}]}", CLIENT, IP, 8080, true),
        ("serviceAccounts, namespace/name", RBAC, "demo: {rules: [{from: [{source: {serviceAccounts: [other/default]}}]}]}", OTHER, IP, 8080, true),
        ("serviceAccounts, another account", RBAC, "demo: {rules: [{from: [{source: {serviceAccounts: [client]}}]}]}", OTHER, IP, 8080, false),
        ("serviceAccounts, plaintext has none", AP_DOC, "demo: {rules: [{from: [{source: {serviceAccounts: [client]}}]}]}", PLAIN, IP, 8080, false),
        ("DENY notServiceAccounts", RBAC, "demo: {action: DENY, rules: [{from: [{source: {notServiceAccounts: [client]}}]}]}", OTHER, IP, 8080, false),
        ("ports", RBAC, "demo: {rules: [{to: [{operation: {ports: [\"8080\"]}}]}]}", CLIENT, IP, 8080, true),
        ("ports, another", RBAC, "demo: {rules: [{to: [{operation: {ports: [\"8080\"]}}]}]}", CLIENT, IP, 9090, false),
        ("DENY notPorts", RBAC, "demo: {action: DENY, rules: [{to: [{operation: {notPorts: [\"8080\"]}}]}]}", CLIENT, IP, 9090, false),
        ("DENY notPorts, the port", RBAC, "demo: {action: DENY, rules: [{to: [{operation: {notPorts: [\"8080\"]}}]}]}", CLIENT, IP, 8080, true),
        ("when source.ip", AP_DOC, "demo: {rules: [{when: [{key: source.ip, values: [10.244.1.0/24]}]}]}", CLIENT, IP, 8080, true),
        ("when source.ip notValues", AP_DOC, "demo: {rules: [{when: [{key: source.ip, notValues: [10.244.1.0/24]}]}]}", CLIENT, IP, 8080, false),
        ("when source.namespace", AP_DOC, "demo: {rules: [{when: [{key: source.namespace, values: [demo]}]}]}", CLIENT, IP, 8080, true),
        ("when source.principal", AP_DOC, "demo: {rules: [{when: [{key: source.principal, values: [\"*/sa/client\"]}]}]}", OTHER, IP, 8080, false),
        ("when destination.ip", AP_DOC, "demo: {rules: [{when: [{key: destination.ip, values: [10.244.2.0/24]}]}]}", CLIENT, IP, 8080, true),
        ("when destination.port", AP_DOC, "demo: {rules: [{when: [{key: destination.port, values: [\"8080\"]}]}]}", CLIENT, IP, 9090, false),
        ("when destination.port notValues", AP_DOC, "demo: {rules: [{when: [{key: destination.port, notValues: [\"8080\"]}]}]}", CLIENT, IP, 9090, true),
        ("ALLOW when connection.sni matches nothing", TRANSLATION, "demo: {rules: [{when: [{key: connection.sni, values: [\"*\"]}]}]}", CLIENT, IP, 8080, false),
        ("ALLOW when connection.sni notValues matches nothing", TRANSLATION, "demo: {rules: [{when: [{key: connection.sni, notValues: [evil.example]}]}]}", CLIENT, IP, 8080, false),
        ("ALLOW when remote.ip matches nothing", TRANSLATION, "demo: {rules: [{when: [{key: remote.ip, values: [10.244.1.0/24]}]}]}", CLIENT, IP, 8080, false),
        ("ALLOW when request.auth.claims matches nothing", TRANSLATION, "demo: {rules: [{when: [{key: \"request.auth.claims[iss]\", values: [a]}]}]}", CLIENT, IP, 8080, false),
        ("ALLOW when request.headers matches nothing", TRANSLATION, "demo: {rules: [{when: [{key: \"request.headers[x-token]\", values: [a]}]}]}", CLIENT, IP, 8080, false),
        ("DENY when remote.ip has no effect", ISTIO_61126, "demo: {action: DENY, rules: [{when: [{key: remote.ip, values: [10.244.1.0/24]}]}]}", CLIENT, IP, 8080, true),
        ("DENY when connection.sni notValues has no effect", ISTIO_61126, "demo: {action: DENY, rules: [{when: [{key: connection.sni, notValues: [a.example]}]}]}", CLIENT, IP, 8080, true),
        ("DENY from L4 and when L7: the when part matches nothing", TRANSLATION_TEST, "demo: {action: DENY, rules: [{from: [{source: {namespaces: [demo]}}], when: [{key: \"request.headers[x]\", values: [a]}]}]}", CLIENT, IP, 8080, true),
        ("ALLOW with paths matches nothing", L4_DOC, "demo: {rules: [{to: [{operation: {paths: [/public]}}]}]}", CLIENT, IP, 8080, false),
        ("ALLOW with methods matches nothing", L4_DOC, "demo: {rules: [{to: [{operation: {methods: [GET]}}]}]}", CLIENT, IP, 8080, false),
        ("ALLOW with hosts matches nothing", TRANSLATION, "demo: {rules: [{to: [{operation: {hosts: [web.demo]}}]}]}", CLIENT, IP, 8080, false),
        ("ALLOW with ports and notPaths matches nothing", TRANSLATION, "demo: {rules: [{to: [{operation: {ports: [\"8080\"], notPaths: [/admin]}}]}]}", CLIENT, IP, 8080, false),
        ("ALLOW with requestPrincipals matches nothing", TRANSLATION, "demo: {rules: [{from: [{source: {requestPrincipals: [\"*\"]}}]}]}", CLIENT, IP, 8080, false),
        ("ALLOW: an L7 rule is dropped, an L4 rule beside it still allows", TRANSLATION_TEST, "demo: {rules: [{to: [{operation: {methods: [GET]}}]}, {from: [{source: {namespaces: [demo]}}]}]}", CLIENT, IP, 8080, true),
        ("DENY with paths alone has no effect", ISTIO_61126, "demo: {action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}]}", CLIENT, IP, 8080, true),
        ("DENY with methods alone has no effect", TRANSLATION_TEST, "demo: {action: DENY, rules: [{to: [{operation: {methods: [DELETE]}}]}]}", CLIENT, IP, 8080, true),
        ("DENY with ports and paths denies on the port", TRANSLATION_TEST, "demo: {action: DENY, rules: [{to: [{operation: {ports: [\"8080\"], paths: [/admin]}}]}]}", CLIENT, IP, 8080, false),
        ("DENY with requestPrincipals alone has no effect", ISTIO_61126, "demo: {action: DENY, rules: [{from: [{source: {requestPrincipals: [\"*\"]}}]}]}", CLIENT, IP, 8080, true),
        ("DENY principals beside requestPrincipals denies on principals", TRANSLATION, "demo: {action: DENY, rules: [{from: [{source: {principals: [\"*/sa/client\"], requestPrincipals: [\"*\"]}}]}]}", CLIENT, IP, 8080, false),
        ("DENY L7-only rule beside rule {} still denies", TRANSLATION_TEST, "demo: {action: DENY, rules: [{}, {to: [{operation: {paths: [/admin]}}]}]}", CLIENT, IP, 8080, false),
        ("DENY L4 from with L7-only to: no effect", TRANSLATION_TEST, "demo: {action: DENY, rules: [{from: [{source: {namespaces: [demo]}}], to: [{operation: {methods: [GET]}}]}]}", CLIENT, IP, 8080, true),
        ("DENY wins over ALLOW", ASSERT_RBAC, "demo: {rules: [{}]} | demo: {action: DENY, rules: [{from: [{source: {principals: [\"*/sa/client\"]}}]}]}", CLIENT, IP, 8080, false),
        ("DENY in the root namespace wins over a namespace ALLOW", CONCEPTS, "demo: {rules: [{}]} | istio-system: {action: DENY, rules: [{}]}", CLIENT, IP, 8080, false),
        ("two ALLOW policies, the second matches", ASSERT_RBAC, "demo: {rules: [{from: [{source: {namespaces: [nowhere]}}]}]} | demo: {rules: [{from: [{source: {namespaces: [demo]}}]}]}", CLIENT, IP, 8080, true),
        ("allow-all beside allow-nothing allows", CONCEPTS, "demo: {} | demo: {rules: [{}]}", PLAIN, IP, 8080, true),
        ("from and to must both match", RBAC, "demo: {rules: [{from: [{source: {namespaces: [demo]}}], to: [{operation: {ports: [\"9090\"]}}]}]}", CLIENT, IP, 8080, false),
        ("from entries are alternatives", RBAC, "demo: {rules: [{from: [{source: {namespaces: [nowhere]}}, {source: {namespaces: [demo]}}]}]}", CLIENT, IP, 8080, true),
        ("fields of one source all hold", RBAC, "demo: {rules: [{from: [{source: {namespaces: [demo], ipBlocks: [192.0.2.0/24]}}]}]}", CLIENT, IP, 8080, false),
        ("rules are alternatives", RBAC, "demo: {rules: [{to: [{operation: {ports: [\"1\"]}}]}, {to: [{operation: {ports: [\"8080\"]}}]}]}", CLIENT, IP, 8080, true),
        ("when conditions all hold", AP_DOC, "demo: {rules: [{when: [{key: source.namespace, values: [demo]}, {key: destination.port, values: [\"9090\"]}]}]}", CLIENT, IP, 8080, false),
        ("another namespace's policy does not apply", AP_DOC, "other: {}", CLIENT, IP, 8080, true),
        ("a root namespace policy applies mesh-wide", AP_DOC, "istio-system: {}", CLIENT, IP, 8080, false),
        ("a root namespace selector selects in every namespace", ATTACHED, "istio-system: {selector: {matchLabels: {app: web}}}", CLIENT, IP, 8080, false),
        ("selector not matching: not applied", AP_DOC, "demo: {selector: {matchLabels: {app: db}}}", CLIENT, IP, 8080, true),
        ("selector matching: applied", AP_DOC, "demo: {selector: {matchLabels: {app: web}}}", CLIENT, IP, 8080, false),
        ("v1beta1 reads as v1", AP_DOC, "demo@v1beta1: {action: DENY, rules: [{to: [{operation: {ports: [\"8080\"]}}]}]}", CLIENT, IP, 8080, false),
        ("AUDIT decides nothing", AP_DOC, "demo: {action: AUDIT, rules: [{}]}", CLIENT, IP, 8080, true),
        ("AUDIT beside allow-nothing: still denied", AP_DOC, "demo: {action: AUDIT, rules: [{}]} | demo: {}", CLIENT, IP, 8080, false),
        ("a dry-run DENY is not enforced", ASSERT_RBAC, "demo@dry-run: {action: DENY, rules: [{}]}", CLIENT, IP, 8080, true),
        ("a dry-run ALLOW does not make allow-nothing", ASSERT_RBAC, "demo@dry-run: {}", CLIENT, IP, 8080, true),
        ("CUSTOM is skipped, the DENY beside it enforced", TRANSLATION_TEST, "demo: {action: CUSTOM, provider: {name: ext}, rules: [{}]} | demo: {action: DENY, rules: [{to: [{operation: {ports: [\"8080\"]}}]}]}", CLIENT, IP, 8080, false),
        ("targetRefs (a waypoint's) is skipped", TRANSLATION_TEST, "demo: {targetRefs: [{kind: Service, group: \"\", name: web}]}", CLIENT, IP, 8080, true),
    ];
    assert!(cases.len() >= 80, "{} cases", cases.len());
    for (what, source, policies, from, ip, port, allowed) in cases {
        let verdict = authorize(&authorization(policies), *from, ip, *port);
        let got = matches!(verdict.decision, Decision::Allow { .. });
        assert_eq!(got, *allowed, "{what} ({source}): {verdict:?}");
    }
}

#[test]
fn denials_name_the_policy_and_rule_and_audits_are_recorded() {
    let policies = format!(
        "{}{}",
        policy(
            "demo",
            "spec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n        namespaces: [\"nowhere\"]\n  - from:\n    - source:\n        namespaces: [\"other\"]"
        ),
        "---\napiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata:\n  name: audit\n  namespace: demo\nspec:\n  action: AUDIT\n  rules:\n  - {}\n"
    );
    let verdict = authorize(&set(&policies), OTHER, "10.244.1.3", 8080);
    assert_eq!(
        verdict.decision,
        Decision::Deny {
            policy: "demo/p".to_owned(),
            reason: "denied by DENY policy demo/p rule 1".to_owned()
        }
    );
    assert_eq!(verdict.audited, ["demo/audit"]);
}

#[test]
fn dry_run_policies_report_without_enforcing() {
    let policies = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: trial\n  namespace: demo\n  annotations:\n    istio.io/dry-run: \"true\"\nspec:\n  action: DENY\n  rules:\n  - {}\n".to_owned();
    let verdict = authorize(&set(&policies), CLIENT, "10.244.1.3", 8080);
    assert_eq!(verdict.decision, Decision::Allow { by: None });
    assert_eq!(
        verdict.dry_run,
        Some(Decision::Deny {
            policy: "demo/trial".to_owned(),
            reason: "denied by DENY policy demo/trial rule 0".to_owned()
        })
    );
}

/// Where Istio's ambient PeerAuthentication semantics are written down.
const AMBIENT_PA: &str = "istio/istio pilot/pkg/serviceregistry/ambient/authorization.go (convertedSelectorPeerAuthentications, convertPeerAuthentication)";
const AMBIENT_PA_TEST: &str =
    "istio/istio pilot/pkg/serviceregistry/ambient/ambientindex_test.go TestAmbientIndex_Policy";
const PA_DOC: &str = "istio.io reference/config/security/peer_authentication";
/// Cases where this proxy is deliberately stricter than Istio's ztunnel
/// (`Layers::istio_relaxes`, reported by analyze).
const STRICTER: &str = "deliberate difference, safer: Istio's translation drops STRICT here";

/// A PeerAuthentication level as one line: `-` for none, else a mode and
/// `port=MODE` overrides (`UNSET 8080=PERMISSIVE`).
fn pa_level(namespace: &str, name: &str, selector: bool, level: &str) -> String {
    if level == "-" {
        return String::new();
    }
    let mut words = level.split(' ');
    let mode = words.next().unwrap();
    let ports: Vec<String> = words
        .map(|w| {
            let (port, mode) = w.split_once('=').unwrap();
            format!("{port}: {{mode: {mode}}}")
        })
        .collect();
    let selector = if selector {
        "selector: {matchLabels: {app: web}}, "
    } else {
        ""
    };
    let ports = if ports.is_empty() {
        String::new()
    } else {
        format!(", portLevelMtls: {{{}}}", ports.join(", "))
    };
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {{{selector}mtls: {{mode: {mode}}}{ports}}}\n"
    )
}

/// (case, Istio source, mesh, namespace, workload (selects app=web), port, mode)
type PeerAuthenticationCase = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    u16,
    MtlsMode,
);

#[test]
fn peer_authentication_follows_the_ambient_translation() {
    use MtlsMode::{Permissive as P, Strict as S};
    #[rustfmt::skip]
    let cases: &[PeerAuthenticationCase] = &[
        ("no policy: PERMISSIVE", PA_DOC, "-", "-", "-", 8080, P),
        ("mesh STRICT", AMBIENT_PA_TEST, "STRICT", "-", "-", 8080, S),
        ("namespace PERMISSIVE over mesh STRICT", AMBIENT_PA_TEST, "STRICT", "PERMISSIVE", "-", 8080, P),
        ("namespace UNSET inherits mesh STRICT", AMBIENT_PA, "STRICT", "UNSET", "-", 8080, S),
        ("namespace STRICT over mesh PERMISSIVE", AMBIENT_PA_TEST, "PERMISSIVE", "STRICT", "-", 8080, S),
        ("namespace DISABLE over mesh STRICT", AMBIENT_PA, "STRICT", "DISABLE", "-", 8080, P),
        ("workload STRICT alone", AMBIENT_PA_TEST, "-", "-", "STRICT", 8080, S),
        ("workload PERMISSIVE over mesh STRICT", AMBIENT_PA_TEST, "STRICT", "-", "PERMISSIVE", 8080, P),
        ("workload DISABLE over namespace STRICT", AMBIENT_PA_TEST, "-", "STRICT", "DISABLE", 8080, P),
        ("workload UNSET inherits namespace STRICT", AMBIENT_PA, "-", "STRICT", "UNSET", 8080, S),
        ("workload UNSET inherits namespace PERMISSIVE", AMBIENT_PA, "STRICT", "PERMISSIVE", "UNSET", 8080, P),
        ("STRICT with a PERMISSIVE port: that port", AMBIENT_PA_TEST, "-", "-", "STRICT 8080=PERMISSIVE", 8080, P),
        ("STRICT with a PERMISSIVE port: other ports", AMBIENT_PA_TEST, "-", "-", "STRICT 8080=PERMISSIVE", 9090, S),
        ("STRICT with a DISABLE port: that port", AMBIENT_PA, "-", "-", "STRICT 8080=DISABLE", 8080, P),
        ("STRICT with a STRICT port", AMBIENT_PA, "-", "-", "STRICT 8080=STRICT", 8080, S),
        ("STRICT with an UNSET port inherits STRICT", AMBIENT_PA, "-", "-", "STRICT 8080=UNSET", 8080, S),
        ("PERMISSIVE with a STRICT port: that port", AMBIENT_PA_TEST, "-", "-", "PERMISSIVE 8080=STRICT", 8080, S),
        ("PERMISSIVE with a STRICT port: other ports", AMBIENT_PA_TEST, "-", "-", "PERMISSIVE 8080=STRICT", 9090, P),
        ("DISABLE with a STRICT port: that port", AMBIENT_PA, "-", "PERMISSIVE", "DISABLE 8080=STRICT", 8080, S),
        ("UNSET with a STRICT port under PERMISSIVE namespace", AMBIENT_PA_TEST, "-", "PERMISSIVE", "UNSET 8080=STRICT", 8080, S),
        ("UNSET with a STRICT port under PERMISSIVE namespace: other ports", AMBIENT_PA_TEST, "-", "PERMISSIVE", "UNSET 8080=STRICT", 9090, P),
        ("UNSET with a STRICT port and no parent", AMBIENT_PA, "-", "-", "UNSET 8080=STRICT", 8080, S),
        ("UNSET with a PERMISSIVE port under STRICT namespace: that port", AMBIENT_PA_TEST, "-", "STRICT", "UNSET 8080=PERMISSIVE", 8080, P),
        ("UNSET with a PERMISSIVE port under STRICT namespace: other ports stay STRICT", AMBIENT_PA_TEST, "-", "STRICT", "UNSET 8080=PERMISSIVE", 9090, S),
        ("UNSET with a PERMISSIVE port under STRICT mesh", AMBIENT_PA, "STRICT", "-", "UNSET 8080=PERMISSIVE", 8080, P),
        ("UNSET with a DISABLE port alone under STRICT: stays STRICT", AMBIENT_PA, "STRICT", "-", "UNSET 8080=DISABLE", 8080, S),
        ("UNSET with DISABLE next to a PERMISSIVE port: exempt too", AMBIENT_PA, "STRICT", "-", "UNSET 8080=PERMISSIVE 9090=DISABLE", 9090, P),
        ("UNSET with a PERMISSIVE port under PERMISSIVE mesh: nothing to exempt", "ambientindex_test.go TestAmbientIndex_PeerAuthenticationNamespacePolicyChange", "PERMISSIVE", "-", "UNSET 8080=PERMISSIVE", 9090, P),
        ("PERMISSIVE with a STRICT port, mesh STRICT, namespace silent", STRICTER, "STRICT", "-", "PERMISSIVE 8080=STRICT", 8080, S),
        ("UNSET with a PERMISSIVE port, mesh STRICT, namespace UNSET: other ports", STRICTER, "STRICT", "UNSET", "UNSET 8080=PERMISSIVE", 9090, S),
    ];
    let web = labels();
    let workload = Workload {
        namespace: "demo",
        labels: &web,
    };
    for (what, source, mesh, namespace, selected, port, want) in cases {
        let yaml = [
            pa_level("istio-system", "mesh", false, mesh),
            pa_level("demo", "namespace", false, namespace),
            pa_level("demo", "web", true, selected),
        ]
        .concat();
        let set = set(&yaml);
        assert_eq!(set.mtls_mode(&workload, *port), *want, "{what} ({source})");
        let plaintext = Connection {
            source_ip: "10.244.1.3".parse().unwrap(),
            source_identity: None,
            destination_ip: "10.244.2.2".parse().unwrap(),
            destination_port: *port,
        };
        let verdict = set.decide(&workload, &plaintext);
        assert_eq!(
            verdict.decision.allowed(),
            *want != MtlsMode::Strict,
            "{what}: plaintext"
        );
        let layers = peer_auth::layers(&set.peer_authentication, &workload, DEFAULT_ROOT_NAMESPACE);
        assert_eq!(
            layers.istio_relaxes().is_some(),
            *source == STRICTER,
            "{what}: analyze reports exactly the deliberate differences"
        );
    }
}

#[test]
fn of_several_peer_authentications_at_one_level_the_oldest_decides() {
    let pa = |name: &str, created: Option<&str>, mode: &str| {
        let created = created.map_or(String::new(), |t| format!(", creationTimestamp: \"{t}\""));
        format!(
            "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: demo{created}}}\nspec: {{selector: {{matchLabels: {{app: web}}}}, mtls: {{mode: {mode}}}}}\n"
        )
    };
    let web = labels();
    let workload = Workload {
        namespace: "demo",
        labels: &web,
    };
    // (case, policies, mode)
    let cases = [
        (
            "the older by creation time, whatever the names",
            [
                pa("a", Some("2026-02-01T00:00:00Z"), "PERMISSIVE"),
                pa("b", Some("2026-01-01T00:00:00Z"), "STRICT"),
            ],
            MtlsMode::Strict,
        ),
        (
            "dated before undated (written by hand)",
            [
                pa("a", None, "PERMISSIVE"),
                pa("b", Some("2026-01-01T00:00:00Z"), "STRICT"),
            ],
            MtlsMode::Strict,
        ),
        (
            "undated: by name",
            [pa("a", None, "STRICT"), pa("b", None, "PERMISSIVE")],
            MtlsMode::Strict,
        ),
    ];
    for (what, policies, want) in cases {
        let set = set(&policies.concat());
        assert_eq!(set.mtls_mode(&workload, 80), want, "{what}");
        let mut registry = crate::registry::Registry::default();
        registry.pods.push(
            crate::registry::Pod {
                name: "web-1".to_owned(),
                namespace: "demo".to_owned(),
                service_account: "web".to_owned(),
                node: "node1".to_owned(),
                ips: vec![],
                netns: None,
                labels: labels(),
                workload: None,
            }
            .into(),
        );
        let findings = set.analyze(&registry);
        assert!(
            findings
                .iter()
                .any(|f| f.contains("several workload policies select pod demo/web-1")),
            "{what}: {findings:#?}"
        );
    }
}

#[test]
fn peer_authentication_scopes_as_ambient_does() {
    let web = labels();
    let workload = Workload {
        namespace: "demo",
        labels: &web,
    };
    // A selector policy in the root namespace selects nothing in ambient
    // (ambientindex_test.go: "PeerAuthentication doesn't support global mesh
    // wide selectors"): skipped and reported.
    let root_selector = PolicySet::from_yaml(
        DEFAULT_ROOT_NAMESPACE,
        &pa_level("istio-system", "global", true, "STRICT"),
    );
    assert_eq!(root_selector.mtls_mode(&workload, 80), MtlsMode::Permissive);
    assert_eq!(root_selector.objects[0].state, ObjectState::Skipped);
    // An empty matchLabels is namespace-wide (convertedSelectorPeerAuthentications).
    let empty = set(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: x, namespace: demo}\nspec: {selector: {matchLabels: {}}, mtls: {mode: STRICT}}\n",
    );
    let other = Labels::new();
    assert_eq!(
        empty.mtls_mode(
            &Workload {
                namespace: "demo",
                labels: &other
            },
            80
        ),
        MtlsMode::Strict
    );
}

#[test]
fn bad_documents_are_refused_naming_document_and_field() {
    let cases = [
        (
            format!("{HEADER}metadata:\n  name: x\nspec:\n  rules:\n  - from:\n    - source:\n        principles: [\"a\"]\n"),
            "principles",
        ),
        (
            format!("{HEADER}metadata:\n  name: x\nspec:\n  rules:\n  - from:\n    - source:\n        ipBlocks: [\"10.0.0.0/40\"]\n"),
            "spec.rules[0].from[0].source.ipBlocks",
        ),
        (
            format!("{HEADER}metadata:\n  name: x\nspec:\n  rules:\n  - to:\n    - operation:\n        ports: [\"http\"]\n"),
            "spec.rules[0].to[0].operation.ports",
        ),
        (
            format!("{HEADER}metadata:\n  name: x\nspec:\n  rules:\n  - when:\n    - key: source.nonsense\n      values: [\"a\"]\n"),
            "unknown condition key",
        ),
        (
            "apiVersion: security.istio.io/v2\nkind: AuthorizationPolicy\nmetadata:\n  name: x\n".to_owned(),
            "is not security.istio.io/v1",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: x\nspec:\n  portLevelMtls:\n    80:\n      mode: STRICT\n".to_owned(),
            "port-level modes need a workload selector",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: x\nspec:\n  mtls:\n    mode: STRICTEST\n".to_owned(),
            "STRICTEST",
        ),
    ];
    for (yaml, want) in cases {
        let text = format!("{}---\n{yaml}", policy("demo", "spec: {}"));
        let set = PolicySet::from_yaml(DEFAULT_ROOT_NAMESPACE, &text);
        let refused: Vec<_> = set
            .objects
            .iter()
            .filter(|o| o.state == ObjectState::Refused)
            .collect();
        assert_eq!(refused.len(), 1, "{yaml}: {:#?}", set.objects);
        assert!(
            refused[0].origin.starts_with("inline document 2 (line "),
            "{:?}",
            refused[0]
        );
        let reason = refused[0].reason.as_deref().unwrap();
        assert!(reason.contains(want), "want {want:?} in {reason}");
        assert!(reason.ends_with("it is not enforced"), "{reason}");
        assert_eq!(
            set.authorization.len(),
            1,
            "the good object next to it is applied"
        );
    }
}

#[test]
fn objects_a_node_proxy_does_not_enforce_are_skipped_or_ignored_and_the_rest_applies() {
    let text = [
        policy("demo", "spec:\n  action: CUSTOM\n  provider:\n    name: ext"),
        format!("---\n{HEADER}metadata: {{name: waypoint, namespace: demo}}\nspec:\n  targetRefs:\n  - {{kind: Service, group: \"\", name: web}}\n  action: DENY\n  rules: [{{}}]\n"),
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs, namespace: demo}\nspec: {hosts: [web]}\n".to_owned(),
        "---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: demo}\nspec: {}\n".to_owned(),
        format!("---\n{HEADER}metadata: {{name: deny, namespace: demo}}\nspec: {{action: DENY, rules: [{{to: [{{operation: {{ports: [\"9090\"], paths: [\"/admin\"]}}}}]}}]}}\n"),
    ]
    .concat();
    let set = PolicySet::from_yaml(DEFAULT_ROOT_NAMESPACE, &text);
    let states: Vec<_> = set
        .objects
        .iter()
        .map(|o| (o.kind.as_str(), o.id.as_str(), o.state, o.in_force))
        .collect();
    assert_eq!(
        states,
        [
            (
                "AuthorizationPolicy",
                "demo/deny",
                ObjectState::AppliedL4Only,
                true
            ),
            ("AuthorizationPolicy", "demo/p", ObjectState::Skipped, false),
            (
                "AuthorizationPolicy",
                "demo/waypoint",
                ObjectState::Skipped,
                false
            ),
            (
                "RequestAuthentication",
                "demo/jwt",
                ObjectState::Ignored,
                false
            ),
            ("VirtualService", "demo/vs", ObjectState::Ignored, false),
        ]
    );
    assert!(
        set.problems().is_empty(),
        "skipping is not a problem: {:?}",
        set.problems()
    );
    let reason = |id: &str| {
        set.objects
            .iter()
            .find(|o| o.id == id)
            .unwrap()
            .reason
            .clone()
            .unwrap()
    };
    assert!(reason("demo/p").contains("CUSTOM"), "{}", reason("demo/p"));
    assert!(
        reason("demo/waypoint").contains("waypoint"),
        "{}",
        reason("demo/waypoint")
    );
    assert!(
        reason("demo/deny").contains("found: paths"),
        "{}",
        reason("demo/deny")
    );
    // The DENY next to them is enforced on its port.
    let web = labels();
    let workload = Workload {
        namespace: "demo",
        labels: &web,
    };
    let connection = |port| Connection {
        source_ip: "10.0.0.1".parse().unwrap(),
        source_identity: None,
        destination_ip: "10.0.0.2".parse().unwrap(),
        destination_port: port,
    };
    assert!(matches!(
        set.decide(&workload, &connection(9090)).decision,
        Decision::Deny { .. }
    ));
    assert!(matches!(
        set.decide(&workload, &connection(8080)).decision,
        Decision::Allow { .. }
    ));
}

#[test]
fn list_exports_load_like_their_items() {
    let kubectl = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: security.istio.io/v1\n  kind: AuthorizationPolicy\n  metadata: {name: a, namespace: demo}\n  spec: {action: DENY, rules: [{}]}\n- apiVersion: security.istio.io/v1\n  kind: PeerAuthentication\n  metadata: {name: default, namespace: demo}\n  spec: {mtls: {mode: STRICT}}\n";
    let set = set(kubectl);
    assert_eq!(set.authorization.len(), 1);
    assert_eq!(set.peer_authentication.len(), 1);
    assert!(
        set.objects[0].origin.contains("document 1 (line 1) item 1"),
        "{:?}",
        set.objects
    );
    // The API's own list type omits each item's kind and apiVersion.
    let api = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicyList\nitems:\n- metadata: {name: b, namespace: demo}\n  spec: {}\n";
    let set = self::set(api);
    assert_eq!(set.authorization[0].id, "demo/b");
}

#[test]
fn a_file_that_does_not_parse_keeps_its_last_good_objects_and_the_others_move_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut loader = Loader::new(DEFAULT_ROOT_NAMESPACE);
    let write = |file: &str, text: &str| std::fs::write(dir.path().join(file), text).unwrap();
    write(
        "a.yaml",
        &policy("demo", "spec: {action: DENY, rules: [{}]}"),
    );
    write(
        "b.yaml",
        &format!("{HEADER}metadata: {{name: b, namespace: demo}}\nspec: {{}}\n"),
    );
    write("notes.txt", "not a policy");
    let set = loader.load_dir(dir.path()).unwrap();
    assert_eq!(set.authorization.len(), 2);
    assert_eq!((set.loads, set.loads_with_problems), (1, 0));

    // a.yaml breaks (not YAML at all); b.yaml changes at the same time.
    write("a.yaml", "kind: [");
    write(
        "b.yaml",
        &format!(
            "{HEADER}metadata: {{name: b, namespace: demo}}\nspec: {{action: DENY, rules: [{{}}]}}\n"
        ),
    );
    let set = loader.load_dir(dir.path()).unwrap();
    let ids: Vec<_> = set
        .authorization
        .iter()
        .map(|p| (p.id.as_str(), p.action))
        .collect();
    assert_eq!(ids, [("demo/b", Action::Deny), ("demo/p", Action::Deny)]);
    assert_eq!(set.file_errors.len(), 1, "{:?}", set.file_errors);
    assert!(
        set.file_errors[0].contains("a.yaml: document 1 (line 1)"),
        "{:?}",
        set.file_errors
    );
    assert!(
        set.file_errors[0].ends_with("stay in force"),
        "{:?}",
        set.file_errors
    );
    assert!(!set.file_errors[0].contains("notes.txt"));
    assert_eq!((set.loads, set.loads_with_problems), (2, 1));

    // An invalid edit of one object keeps that object's last accepted version.
    write(
        "a.yaml",
        &policy(
            "demo",
            "spec: {action: DENY, rules: [{to: [{operation: {ports: [\"http\"]}}]}]}",
        ),
    );
    let set = loader.load_dir(dir.path()).unwrap();
    assert_eq!(set.authorization.len(), 2);
    let p = set.objects.iter().find(|o| o.id == "demo/p").unwrap();
    assert_eq!((p.state, p.in_force), (ObjectState::Refused, true));
    assert!(
        p.reason
            .as_deref()
            .unwrap()
            .ends_with("its previous version stays in force")
    );

    // Fixed: the new version applies; deleted: it goes.
    write("a.yaml", &policy("demo", "spec: {}"));
    assert_eq!(
        loader.load_dir(dir.path()).unwrap().authorization[1].action,
        Action::Allow
    );
    std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
    assert_eq!(loader.load_dir(dir.path()).unwrap().authorization.len(), 1);
}

/// The examples in `docs/policy-examples`, each with the documented outcome.
#[test]
fn documented_examples_behave_as_documented() {
    let load = set;
    let examples = [
        (
            "allow-nothing",
            include_str!("../../../docs/policy-examples/allow-nothing.yaml"),
        ),
        (
            "deny-all",
            include_str!("../../../docs/policy-examples/deny-all.yaml"),
        ),
        (
            "allow-all-over-allow-nothing",
            include_str!("../../../docs/policy-examples/allow-all-over-allow-nothing.yaml"),
        ),
        (
            "httpbin-l7",
            include_str!("../../../docs/policy-examples/httpbin-l7.yaml"),
        ),
        (
            "httpbin-l4",
            include_str!("../../../docs/policy-examples/httpbin-l4.yaml"),
        ),
        (
            "ip-allowlist",
            include_str!("../../../docs/policy-examples/ip-allowlist.yaml"),
        ),
        (
            "dry-run-deny",
            include_str!("../../../docs/policy-examples/dry-run-deny.yaml"),
        ),
    ];
    const SLEEP: Option<&str> = Some("cluster.local/ns/foo/sa/sleep");
    const BAR: Option<&str> = Some("cluster.local/ns/bar/sa/sleep");
    // (example, source principal, source IP, port, allowed)
    let cases: [(&str, Option<&str>, &str, u16, bool); 17] = [
        ("allow-nothing", SLEEP, "10.0.0.1", 8000, false),
        ("allow-nothing", PLAIN, "10.0.0.1", 8000, false),
        ("deny-all", SLEEP, "10.0.0.1", 8000, false),
        (
            "allow-all-over-allow-nothing",
            SLEEP,
            "10.0.0.1",
            8000,
            true,
        ),
        (
            "allow-all-over-allow-nothing",
            PLAIN,
            "10.0.0.1",
            8000,
            true,
        ),
        ("httpbin-l7", SLEEP, "10.0.0.1", 8000, false),
        ("httpbin-l7", BAR, "10.0.0.1", 8000, false),
        ("httpbin-l4", SLEEP, "10.0.0.1", 8000, true),
        ("httpbin-l4", SLEEP, "10.0.0.1", 9000, false),
        ("httpbin-l4", BAR, "10.0.0.1", 8000, false),
        ("httpbin-l4", PLAIN, "10.0.0.1", 8000, false),
        ("ip-allowlist", PLAIN, "203.0.113.7", 8000, true),
        ("ip-allowlist", PLAIN, "198.51.100.200", 8000, true),
        ("ip-allowlist", SLEEP, "203.0.113.8", 8000, false),
        ("ip-allowlist", PLAIN, "2001:db8::1", 8000, false),
        ("dry-run-deny", SLEEP, "10.0.0.1", 8000, true),
        ("dry-run-deny", PLAIN, "10.0.0.1", 9000, true),
    ];
    let httpbin = Labels::from([("app".to_owned(), "httpbin".to_owned())]);
    let workload = Workload {
        namespace: "foo",
        labels: &httpbin,
    };
    for (example, from, ip, port, allowed) in cases {
        let text = examples
            .iter()
            .find(|(name, _)| *name == example)
            .unwrap()
            .1;
        let identity = from.map(|p| Identity::parse(&format!("spiffe://{p}")).unwrap());
        let verdict = load(text).decide(
            &workload,
            &Connection {
                source_ip: ip.parse().unwrap(),
                source_identity: identity.as_ref(),
                destination_ip: "10.0.0.9".parse().unwrap(),
                destination_port: port,
            },
        );
        let got = matches!(verdict.decision, Decision::Allow { .. });
        assert_eq!(got, allowed, "{example} {from:?} {ip} :{port}: {verdict:?}");
        if example == "dry-run-deny" && port == 8000 {
            assert!(
                verdict.dry_run.is_some(),
                "the trial reports its would-be denial"
            );
        }
    }

    let mtls = load(include_str!(
        "../../../docs/policy-examples/mtls-layers.yaml"
    ));
    let other = Labels::new();
    let at = |namespace, labels, port| mtls.mtls_mode(&Workload { namespace, labels }, port);
    assert_eq!(at("foo", &httpbin, 8080), MtlsMode::Permissive);
    assert_eq!(
        at("foo", &httpbin, 8000),
        MtlsMode::Strict,
        "UNSET inherits the mesh's"
    );
    assert_eq!(at("foo", &other, 8080), MtlsMode::Strict);
    assert_eq!(at("bar", &other, 8080), MtlsMode::Permissive);
}

#[test]
fn an_object_defined_twice_keeps_its_first_definition() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        policy("demo", "spec: {action: DENY, rules: [{}]}"),
    )
    .unwrap();
    std::fs::write(dir.path().join("b.yaml"), policy("demo", "spec: {}")).unwrap();
    let set = Loader::new(DEFAULT_ROOT_NAMESPACE)
        .load_dir(dir.path())
        .unwrap();
    assert_eq!(set.authorization.len(), 1);
    assert_eq!(set.authorization[0].action, Action::Deny);
    let second = &set.objects[1];
    assert_eq!(second.state, ObjectState::Refused);
    assert!(second.origin.contains("b.yaml"), "{second:?}");
    assert!(
        second
            .reason
            .as_deref()
            .unwrap()
            .contains("defined more than once"),
        "{second:?}"
    );
}

#[test]
fn analyze_names_deny_rules_that_deny_nothing_at_l4() {
    let deny = |rules: &str| policy("demo", &format!("spec:\n  action: DENY\n  rules:\n{rules}"));
    let set = set(&deny(
        "  - to:\n    - operation:\n        paths: [\"/admin\"]\n  - to:\n    - operation:\n        ports: [\"8080\"]\n        paths: [\"/admin\"]\n  - when:\n    - key: connection.sni\n      notValues: [\"a.example\"]",
    ));
    let findings = set.analyze(&crate::registry::Registry::default());
    let without_effect: Vec<&String> = findings
        .iter()
        .filter(|finding| finding.contains("denies nothing at L4"))
        .collect();
    assert_eq!(without_effect.len(), 2, "{findings:#?}");
    assert!(without_effect[0].contains("DENY rule 0 "), "{findings:#?}");
    assert!(
        without_effect[1].contains("DENY rule 2 "),
        "rule 1 still denies on its port: {findings:#?}"
    );
}

#[test]
fn the_dry_run_annotation_is_read_as_go_reads_booleans() {
    let trial = |value: &str| {
        policy(
            "demo",
            &format!("  annotations:\n    istio.io/dry-run: \"{value}\"\nspec: {{}}"),
        )
    };
    for (value, dry_run) in [
        ("true", true),
        ("True", true),
        ("1", true),
        ("t", true),
        ("false", false),
        ("0", false),
        ("F", false),
    ] {
        let set = set(&trial(value));
        assert_eq!(set.authorization[0].dry_run, dry_run, "{value}");
    }
    for value in ["yes", "on", "TRUE "] {
        let set = PolicySet::from_yaml(DEFAULT_ROOT_NAMESPACE, &trial(value));
        let reason = set.objects[0].reason.as_deref().unwrap_or_default();
        assert!(reason.contains("is not a boolean"), "{value}: {reason}");
        assert_eq!(set.objects[0].state, ObjectState::Refused);
    }
}

//! The evaluator against Istio's documented results, as a table: each case
//! is a policy set (YAML as users write it), a connection, and the decision.

use std::net::IpAddr;

use super::*;
use crate::{identity::Identity, registry::Labels};

const HEADER: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n";

/// A set from YAML documents (each an AuthorizationPolicy body after
/// `metadata`), panicking on load errors.
fn set(yaml: &str) -> PolicySet {
    let mut set = PolicySet {
        root_namespace: DEFAULT_ROOT_NAMESPACE.to_owned(),
        ..PolicySet::default()
    };
    let problems = set.add_documents(yaml);
    assert!(problems.is_empty(), "{problems:?}");
    set
}

fn policy(namespace: &str, body: &str) -> String {
    format!("---\n{HEADER}metadata:\n  name: p\n  namespace: {namespace}\n{body}\n")
}

struct Case {
    what: &'static str,
    policies: String,
    /// Source principal (None: plaintext), source IP, destination port.
    from: Option<&'static str>,
    ip: &'static str,
    port: u16,
    allowed: bool,
}

fn labels() -> Labels {
    Labels::from([("app".to_owned(), "web".to_owned())])
}

fn evaluate(case: &Case) -> Verdict {
    let set = set(&case.policies);
    let identity = case
        .from
        .map(|p| Identity::parse(&format!("spiffe://{p}")).unwrap());
    let labels = labels();
    let workload = Workload {
        namespace: "demo",
        labels: &labels,
    };
    let connection = Connection {
        source_ip: case.ip.parse::<IpAddr>().unwrap(),
        source_identity: identity.as_ref(),
        destination_ip: "10.244.2.2".parse().unwrap(),
        destination_port: case.port,
    };
    set.authorize(&workload, &connection)
}

const CLIENT: Option<&str> = Some("cluster.local/ns/demo/sa/client");
const OTHER: Option<&str> = Some("cluster.local/ns/other/sa/default");
const PLAIN: Option<&str> = None;

#[test]
fn authorization_follows_istio_semantics() {
    let allow = |rules: &str| {
        policy(
            "demo",
            &format!("spec:\n  action: ALLOW\n  rules:\n{rules}"),
        )
    };
    let deny = |rules: &str| policy("demo", &format!("spec:\n  action: DENY\n  rules:\n{rules}"));
    let from = |field: &str, values: &str| {
        format!("  - from:\n    - source:\n        {field}: [{values}]")
    };
    let to = |field: &str, values: &str| {
        format!("  - to:\n    - operation:\n        {field}: [{values}]")
    };
    let when = |key: &str, field: &str, values: &str| {
        format!("  - when:\n    - key: {key}\n      {field}: [{values}]")
    };
    let case = |what, policies: String, from, ip, port, allowed| Case {
        what,
        policies,
        from,
        ip,
        port,
        allowed,
    };
    let cases = [
        // No policy: allowed.
        case(
            "no policy allows",
            String::new(),
            CLIENT,
            "10.244.1.3",
            8080,
            true,
        ),
        // `spec: {}` is an ALLOW policy with no rules: nothing is allowed.
        case(
            "spec {} allows nothing",
            policy("demo", "spec: {}"),
            CLIENT,
            "10.244.1.3",
            8080,
            false,
        ),
        // A rule {} matches everything.
        case(
            "rule {} allows all",
            allow("  - {}"),
            PLAIN,
            "10.244.1.4",
            8080,
            true,
        ),
        case(
            "DENY with rule {} denies all",
            deny("  - {}"),
            CLIENT,
            "10.244.1.3",
            8080,
            false,
        ),
        // DENY with no rules matches nothing.
        case(
            "DENY without rules denies nothing",
            policy("demo", "spec:\n  action: DENY"),
            CLIENT,
            "10.244.1.3",
            8080,
            true,
        ),
        // principals / notPrincipals, with the matchers.
        case(
            "principal exact",
            allow(&from("principals", "\"cluster.local/ns/demo/sa/client\"")),
            CLIENT,
            "10.244.1.3",
            8080,
            true,
        ),
        case(
            "principal exact, other",
            allow(&from("principals", "\"cluster.local/ns/demo/sa/client\"")),
            OTHER,
            "10.244.1.3",
            8080,
            false,
        ),
        case(
            "principal prefix",
            allow(&from("principals", "\"cluster.local/ns/demo/*\"")),
            CLIENT,
            "10.244.1.3",
            8080,
            true,
        ),
        case(
            "principal suffix",
            allow(&from("principals", "\"*/sa/client\"")),
            CLIENT,
            "10.244.1.3",
            8080,
            true,
        ),
        case(
            "principal presence, mTLS",
            allow(&from("principals", "\"*\"")),
            CLIENT,
            "10.244.1.3",
            8080,
            true,
        ),
        case(
            "principal presence, plaintext",
            allow(&from("principals", "\"*\"")),
            PLAIN,
            "10.244.1.4",
            8080,
            false,
        ),
        case(
            "notPrincipals excludes",
            allow(&from(
                "notPrincipals",
                "\"cluster.local/ns/demo/sa/client\"",
            )),
            CLIENT,
            "10.244.1.3",
            8080,
            false,
        ),
        case(
            "notPrincipals, another",
            allow(&from(
                "notPrincipals",
                "\"cluster.local/ns/demo/sa/client\"",
            )),
            OTHER,
            "10.244.1.3",
            8080,
            true,
        ),
        case(
            "notPrincipals, plaintext has none to exclude",
            allow(&from("notPrincipals", "\"*\"")),
            PLAIN,
            "10.244.1.4",
            8080,
            true,
        ),
        // namespaces / notNamespaces.
        case(
            "namespaces",
            allow(&from("namespaces", "\"demo\"")),
            CLIENT,
            "10.244.1.3",
            8080,
            true,
        ),
        case(
            "namespaces, other",
            allow(&from("namespaces", "\"demo\"")),
            OTHER,
            "10.244.1.3",
            8080,
            false,
        ),
        case(
            "namespaces, plaintext",
            allow(&from("namespaces", "\"demo\"")),
            PLAIN,
            "10.244.1.3",
            8080,
            false,
        ),
        case(
            "DENY notNamespaces",
            deny(&from("notNamespaces", "\"demo\"")),
            OTHER,
            "10.244.1.3",
            8080,
            false,
        ),
        case(
            "DENY notNamespaces, same namespace",
            deny(&from("notNamespaces", "\"demo\"")),
            CLIENT,
            "10.244.1.3",
            8080,
            true,
        ),
        // ipBlocks and the remote variants (the source address at L4).
        case(
            "ipBlocks",
            allow(&from("ipBlocks", "\"10.244.1.0/24\"")),
            PLAIN,
            "10.244.1.4",
            8080,
            true,
        ),
        case(
            "ipBlocks, outside",
            allow(&from("ipBlocks", "\"10.244.1.0/24\"")),
            PLAIN,
            "10.244.2.4",
            8080,
            false,
        ),
        case(
            "ipBlocks, one address",
            allow(&from("ipBlocks", "\"10.244.1.4\"")),
            PLAIN,
            "10.244.1.4",
            8080,
            true,
        ),
        case(
            "notIpBlocks",
            allow(&from("notIpBlocks", "\"10.244.1.0/24\"")),
            PLAIN,
            "10.244.1.4",
            8080,
            false,
        ),
        // remoteIpBlocks come from HTTP headers: Istio's translation for
        // ztunnel (ambient/authorization.go, httpSources) drops an ALLOW rule
        // using them and the fields from a DENY rule, whose empty match then
        // matches nothing (ztunnel rbac.rs skips empty matches; istio#61126).
        case(
            "ALLOW remoteIpBlocks is dropped (was: matched the source address)",
            allow(&from("remoteIpBlocks", "\"10.244.1.0/24\"")),
            PLAIN,
            "10.244.1.4",
            8080,
            false,
        ),
        case(
            "DENY notRemoteIpBlocks alone has no effect",
            deny(&from("notRemoteIpBlocks", "\"10.244.0.0/16\"")),
            PLAIN,
            "192.0.2.1",
            8080,
            true,
        ),
        case(
            "DENY ipBlocks beside remoteIpBlocks denies on ipBlocks",
            deny(&format!(
                "{}\n        remoteIpBlocks: [\"192.0.2.0/24\"]",
                from("ipBlocks", "\"10.244.1.0/24\"")
            )),
            PLAIN,
            "10.244.1.4",
            8080,
            false,
        ),
        // serviceAccounts (security.istio.io/v1): `name` in the policy's
        // namespace, or `namespace/name` (authorization.go,
        // stringToServiceAccountMatch).
        case(
            "serviceAccounts, a name in the policy's namespace",
            allow(&from("serviceAccounts", "\"client\"")),
            CLIENT,
            "10.244.1.3",
            8080,
            true,
        ),
        case(
            "serviceAccounts, namespace/name",
            allow(&from("serviceAccounts", "\"other/default\"")),
            OTHER,
            "10.244.1.3",
            8080,
            true,
        ),
        case(
            "serviceAccounts, another account",
            allow(&from("serviceAccounts", "\"client\"")),
            OTHER,
            "10.244.1.3",
            8080,
            false,
        ),
        case(
            "serviceAccounts, plaintext has none",
            allow(&from("serviceAccounts", "\"client\"")),
            PLAIN,
            "10.244.1.3",
            8080,
            false,
        ),
        case(
            "DENY notServiceAccounts",
            deny(&from("notServiceAccounts", "\"client\"")),
            OTHER,
            "10.244.1.3",
            8080,
            false,
        ),
        case(
            "ipBlocks IPv6",
            allow(&from("ipBlocks", "\"fd00:10:244:1::/64\"")),
            PLAIN,
            "fd00:10:244:1::4",
            8080,
            true,
        ),
        // ports / notPorts.
        case(
            "ports",
            allow(&to("ports", "\"8080\"")),
            CLIENT,
            "10.244.1.3",
            8080,
            true,
        ),
        case(
            "ports, other",
            allow(&to("ports", "\"8080\"")),
            CLIENT,
            "10.244.1.3",
            9090,
            false,
        ),
        case(
            "DENY notPorts",
            deny(&to("notPorts", "\"8080\"")),
            CLIENT,
            "10.244.1.3",
            9090,
            false,
        ),
        case(
            "DENY notPorts, the port",
            deny(&to("notPorts", "\"8080\"")),
            CLIENT,
            "10.244.1.3",
            8080,
            true,
        ),
        // when on L4 keys.
        case(
            "when source.ip",
            allow(&when("source.ip", "values", "\"10.244.1.0/24\"")),
            CLIENT,
            "10.244.1.3",
            8080,
            true,
        ),
        case(
            "when source.ip notValues",
            allow(&when("source.ip", "notValues", "\"10.244.1.0/24\"")),
            CLIENT,
            "10.244.1.3",
            8080,
            false,
        ),
        case(
            "when source.namespace",
            allow(&when("source.namespace", "values", "\"demo\"")),
            CLIENT,
            "10.244.1.3",
            8080,
            true,
        ),
        case(
            "when source.principal",
            allow(&when("source.principal", "values", "\"*/sa/client\"")),
            OTHER,
            "10.244.1.3",
            8080,
            false,
        ),
        case(
            "when destination.ip",
            allow(&when("destination.ip", "values", "\"10.244.2.0/24\"")),
            CLIENT,
            "10.244.1.3",
            8080,
            true,
        ),
        case(
            "when destination.port",
            allow(&when("destination.port", "values", "\"8080\"")),
            CLIENT,
            "10.244.1.3",
            9090,
            false,
        ),
        // Keys Istio does not give ztunnel (authorization.go,
        // l4WhenAttributes): the condition never holds, with values or
        // notValues, in either action.
        case(
            "when connection.sni (none at L4)",
            allow(&when("connection.sni", "values", "\"*\"")),
            CLIENT,
            "10.244.1.3",
            8080,
            false,
        ),
        case(
            "ALLOW when connection.sni notValues (was: fail open)",
            allow(&when("connection.sni", "notValues", "\"evil.example\"")),
            CLIENT,
            "10.244.1.3",
            8080,
            false,
        ),
        case(
            "ALLOW when remote.ip (was: the source address)",
            allow(&when("remote.ip", "values", "\"10.244.1.0/24\"")),
            CLIENT,
            "10.244.1.3",
            8080,
            false,
        ),
        case(
            "DENY when remote.ip has no effect",
            deny(&when("remote.ip", "values", "\"10.244.1.0/24\"")),
            CLIENT,
            "10.244.1.3",
            8080,
            true,
        ),
        case(
            "DENY when connection.sni notValues has no effect",
            deny(&when("connection.sni", "notValues", "\"a.example\"")),
            CLIENT,
            "10.244.1.3",
            8080,
            true,
        ),
        // L7 attributes: ALLOW matches nothing, DENY denies on its L4 parts.
        case(
            "ALLOW with paths matches nothing",
            allow(&to("paths", "\"/public\"")),
            CLIENT,
            "10.244.1.3",
            8080,
            false,
        ),
        case(
            "ALLOW with methods matches nothing",
            allow(&to("methods", "\"GET\"")),
            CLIENT,
            "10.244.1.3",
            8080,
            false,
        ),
        case(
            "ALLOW with a request header condition",
            allow(&when("request.headers[x-token]", "values", "\"a\"")),
            CLIENT,
            "10.244.1.3",
            8080,
            false,
        ),
        // DENY keeps only its L4 attributes; a `to` or `from` left with
        // none matches nothing, so the rule has no effect (istio#61126).
        case(
            "DENY with paths alone has no effect",
            deny(&to("paths", "\"/admin\"")),
            CLIENT,
            "10.244.1.3",
            8080,
            true,
        ),
        case(
            "DENY with ports and paths denies on the port",
            deny(&format!(
                "{}\n        paths: [\"/admin\"]",
                to("ports", "\"8080\"")
            )),
            CLIENT,
            "10.244.1.3",
            8080,
            false,
        ),
        case(
            "DENY with requestPrincipals alone has no effect",
            deny(&from("requestPrincipals", "\"*\"")),
            CLIENT,
            "10.244.1.3",
            8080,
            true,
        ),
        case(
            "DENY principals beside requestPrincipals denies on principals",
            deny(&format!(
                "{}\n        requestPrincipals: [\"*\"]",
                from("principals", "\"*/sa/client\"")
            )),
            CLIENT,
            "10.244.1.3",
            8080,
            false,
        ),
        // Precedence: DENY before ALLOW.
        case(
            "DENY wins over ALLOW",
            format!(
                "{}{}",
                allow("  - {}"),
                policy(
                    "demo",
                    &format!(
                        "spec:\n  action: DENY\n  rules:\n{}",
                        from("principals", "\"*/sa/client\"")
                    )
                )
            ),
            CLIENT,
            "10.244.1.3",
            8080,
            false,
        ),
        // Any ALLOW policy matching is enough.
        case(
            "two ALLOW policies, the second matches",
            format!(
                "{}{}",
                allow(&from("namespaces", "\"nowhere\"")),
                allow(&from("namespaces", "\"demo\""))
            ),
            CLIENT,
            "10.244.1.3",
            8080,
            true,
        ),
        // Within a rule every part must match; across from entries any.
        case(
            "from and to must both match",
            allow(&format!(
                "{}\n    to:\n    - operation:\n        ports: [\"9090\"]",
                from("namespaces", "\"demo\"")
            )),
            CLIENT,
            "10.244.1.3",
            8080,
            false,
        ),
        case(
            "from entries are alternatives",
            allow(
                "  - from:\n    - source:\n        namespaces: [\"nowhere\"]\n    - source:\n        namespaces: [\"demo\"]",
            ),
            CLIENT,
            "10.244.1.3",
            8080,
            true,
        ),
        // Scope: selector, namespace, root namespace.
        case(
            "another namespace's policy does not apply",
            policy("other", "spec: {}"),
            CLIENT,
            "10.244.1.3",
            8080,
            true,
        ),
        case(
            "root namespace policy applies mesh-wide",
            policy("istio-system", "spec: {}"),
            CLIENT,
            "10.244.1.3",
            8080,
            false,
        ),
        case(
            "selector not matching: not applied",
            policy(
                "demo",
                "spec:\n  selector:\n    matchLabels:\n      app: db",
            ),
            CLIENT,
            "10.244.1.3",
            8080,
            true,
        ),
        case(
            "selector matching: applied",
            policy(
                "demo",
                "spec:\n  selector:\n    matchLabels:\n      app: web",
            ),
            CLIENT,
            "10.244.1.3",
            8080,
            false,
        ),
        // AUDIT decides nothing.
        case(
            "AUDIT decides nothing",
            policy("demo", "spec:\n  action: AUDIT\n  rules:\n  - {}"),
            CLIENT,
            "10.244.1.3",
            8080,
            true,
        ),
    ];
    for case in &cases {
        let verdict = evaluate(case);
        let allowed = matches!(verdict.decision, Decision::Allow { .. });
        assert_eq!(allowed, case.allowed, "{}: {verdict:?}", case.what);
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
    let verdict = evaluate(&Case {
        what: "",
        policies,
        from: OTHER,
        ip: "10.244.1.3",
        port: 8080,
        allowed: false,
    });
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
    let verdict = evaluate(&Case {
        what: "",
        policies,
        from: CLIENT,
        ip: "10.244.1.3",
        port: 8080,
        allowed: true,
    });
    assert_eq!(verdict.decision, Decision::Allow { by: None });
    assert_eq!(
        verdict.dry_run,
        Some(Decision::Deny {
            policy: "demo/trial".to_owned(),
            reason: "denied by DENY policy demo/trial rule 0".to_owned()
        })
    );
}

#[test]
fn peer_authentication_follows_istio_precedence() {
    let pa = |namespace: &str, name: &str, body: &str| {
        format!(
            "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{body}\n"
        )
    };
    let web = labels();
    let workload = Workload {
        namespace: "demo",
        labels: &web,
    };
    let cases: [(&str, String, u16, MtlsMode); 7] = [
        (
            "nothing: PERMISSIVE",
            String::new(),
            8080,
            MtlsMode::Permissive,
        ),
        (
            "mesh STRICT",
            pa("istio-system", "default", "  mtls:\n    mode: STRICT"),
            8080,
            MtlsMode::Strict,
        ),
        (
            "namespace over mesh",
            format!(
                "{}{}",
                pa("istio-system", "default", "  mtls:\n    mode: STRICT"),
                pa("demo", "default", "  mtls:\n    mode: PERMISSIVE")
            ),
            8080,
            MtlsMode::Permissive,
        ),
        (
            "UNSET inherits",
            format!(
                "{}{}",
                pa("istio-system", "default", "  mtls:\n    mode: STRICT"),
                pa("demo", "default", "  mtls:\n    mode: UNSET")
            ),
            8080,
            MtlsMode::Strict,
        ),
        (
            "workload over namespace",
            format!(
                "{}{}",
                pa("demo", "default", "  mtls:\n    mode: STRICT"),
                pa(
                    "demo",
                    "web",
                    "  selector:\n    matchLabels:\n      app: web\n  mtls:\n    mode: DISABLE"
                )
            ),
            8080,
            MtlsMode::Disable,
        ),
        (
            "port level over workload",
            pa(
                "demo",
                "web",
                "  selector:\n    matchLabels:\n      app: web\n  mtls:\n    mode: STRICT\n  portLevelMtls:\n    8080:\n      mode: PERMISSIVE",
            ),
            8080,
            MtlsMode::Permissive,
        ),
        (
            "port level only for its port",
            pa(
                "demo",
                "web",
                "  selector:\n    matchLabels:\n      app: web\n  mtls:\n    mode: STRICT\n  portLevelMtls:\n    8080:\n      mode: PERMISSIVE",
            ),
            9090,
            MtlsMode::Strict,
        ),
    ];
    for (what, yaml, port, want) in cases {
        let set = set(&yaml);
        assert_eq!(set.mtls_mode(&workload, port), want, "{what}");
    }
}

#[test]
fn bad_documents_are_refused_naming_document_and_field() {
    let cases = [
        (
            format!("{HEADER}metadata:\n  name: x\nspec:\n  rules:\n  - from:\n    - source:\n        principles: [\"a\"]\n"),
            "principles",
        ),
        (
            format!("{HEADER}metadata:\n  name: x\nspec:\n  action: CUSTOM\n  provider:\n    name: ext\n"),
            "CUSTOM (external authorization) is not supported",
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
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: x\n".to_owned(),
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
        let mut set = PolicySet::default();
        let problems = set.add_documents(&text);
        assert_eq!(problems.len(), 1, "{yaml}: {problems:?}");
        assert!(
            problems[0].starts_with("document 2 (line "),
            "{}",
            problems[0]
        );
        assert!(
            problems[0].contains(want),
            "want {want:?} in {}",
            problems[0]
        );
    }
}

#[test]
fn a_directory_with_one_bad_file_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("good.yaml"), policy("demo", "spec: {}")).unwrap();
    let set = PolicySet::load_dir(dir.path(), DEFAULT_ROOT_NAMESPACE).unwrap();
    assert_eq!(set.authorization.len(), 1);
    std::fs::write(dir.path().join("bad.yml"), "kind: [").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a policy").unwrap();
    let err = PolicySet::load_dir(dir.path(), DEFAULT_ROOT_NAMESPACE).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("bad.yml: document 1 (line 1)"),
        "{message}"
    );
    assert!(!message.contains("notes.txt"), "{message}");
}

/// The examples in `docs/policy-examples`, each with the documented outcome.
#[test]
fn documented_examples_behave_as_documented() {
    let load = |text: &str| {
        let mut set = PolicySet {
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_owned(),
            ..PolicySet::default()
        };
        let problems = set.add_documents(text);
        assert!(problems.is_empty(), "{problems:?}");
        set
    };
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
        let verdict = load(text).authorize(
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
    assert_eq!(at("foo", &httpbin, 8080), MtlsMode::Disable);
    assert_eq!(
        at("foo", &httpbin, 8000),
        MtlsMode::Strict,
        "UNSET inherits the mesh's"
    );
    assert_eq!(at("foo", &other, 8080), MtlsMode::Strict);
    assert_eq!(at("bar", &other, 8080), MtlsMode::Permissive);
}

#[test]
fn an_object_defined_twice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["a.yaml", "b.yaml"] {
        std::fs::write(dir.path().join(file), policy("demo", "spec: {}")).unwrap();
    }
    let err = PolicySet::load_dir(dir.path(), DEFAULT_ROOT_NAMESPACE).unwrap_err();
    assert!(
        err.to_string().contains("demo/p is defined more than once"),
        "{err}"
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
        let mut set = PolicySet::default();
        let problems = set.add_documents(&trial(value));
        assert!(problems.is_empty(), "{value}: {problems:?}");
        assert_eq!(set.authorization[0].dry_run, dry_run, "{value}");
    }
    for value in ["yes", "on", "TRUE "] {
        let mut set = PolicySet::default();
        let problems = set.add_documents(&trial(value));
        assert!(
            problems.iter().any(|p| p.contains("is not a boolean")),
            "{value}: {problems:?}"
        );
    }
}

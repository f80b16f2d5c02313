//! Workload identity against the real CA process (`ztunnel ca`): issued
//! chains, plugged-in intermediates, refusals, renewal, and a CA outage.

use std::{
    collections::BTreeSet,
    os::unix::fs::PermissionsExt,
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use rcgen::{CertificateParams, KeyPair, SanType};
use ztunnel::identity::{
    CaClient, CaClientConfig, CaClientError, CaToken, CertManager, Identity, ManagerConfig,
    ca_client::Code, manager::RequestObserver,
};
use ztunnel_cluster::ca_process::CaProcess;

const NODE1_TOKEN: &str = "node1-token-aaaaaaaaaaaaaaaaaaaaaaaa";
const NODE2_TOKEN: &str = "node2-token-bbbbbbbbbbbbbbbbbbbbbbbb";
const WEB: &str = "spiffe://cluster.local/ns/demo/sa/web";
const CLIENT: &str = "spiffe://cluster.local/ns/demo/sa/client";

/// A directory with the CA's inputs: node1 runs demo/web, node2 runs demo/client.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("registry.yaml"),
            "nodes: [{name: node1}, {name: node2}]\nnamespaces: [{name: demo}]\npods:\n\
             - {name: web-1, namespace: demo, serviceAccount: web, node: node1, ips: [10.244.1.2], netns: /run/netns/x1}\n\
             - {name: client-2, namespace: demo, serviceAccount: client, node: node2, ips: [10.244.2.2], netns: /run/netns/x2}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("tokens.yaml"),
            format!("node1: {NODE1_TOKEN}\nnode2: {NODE2_TOKEN}\n"),
        )
        .unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }

    /// Starts the CA on a free loopback port with a generated root in
    /// `state/`, plus `extra` arguments.
    fn start_ca(&self, extra: &[&str]) -> CaProcess {
        self.start_ca_on("127.0.0.1:0", extra)
    }

    fn start_ca_on(&self, listen: &str, extra: &[&str]) -> CaProcess {
        let mut args = vec![
            "--state-dir".to_owned(),
            self.path("state"),
            "--registry".to_owned(),
            self.path("registry.yaml"),
            "--node-tokens".to_owned(),
            self.path("tokens.yaml"),
            "--publish-root".to_owned(),
            self.path("root.pem"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        CaProcess::start(
            &ztunnel_e2e::bin("ztunnel"),
            listen,
            &args,
            self.dir.path().join(format!("ca-{listen}.log")),
        )
        .unwrap()
    }

    fn client(&self, ca: &CaProcess, token: &str) -> CaClient {
        CaClient::new(&self.client_config(ca, CaToken::Fixed(token.to_owned()))).unwrap()
    }

    /// How a node daemon of cluster `Kubernetes` reaches `ca` with `token`.
    fn client_config(&self, ca: &CaProcess, token: CaToken) -> CaClientConfig {
        CaClientConfig {
            address: ca.address.to_string(),
            server_name: "127.0.0.1".to_owned(),
            root_cert: self.dir.path().join("root.pem"),
            token,
            cluster_id: "Kubernetes".to_owned(),
        }
    }

    /// The stand-in API server, seeded with the registry and knowing
    /// `tokens`, and a CA in Kubernetes mode against it with `extra` flags.
    fn kubernetes_ca(
        &self,
        tokens: Vec<(&str, ztunnel_cluster::kube_api::TokenInfo)>,
        extra: &[&str],
    ) -> (ztunnel_cluster::kube_api::ApiServer, CaProcess) {
        use ztunnel_cluster::kube_api::ApiServer;
        let api = ApiServer::serve(std::net::TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
        api.seed(
            &ztunnel::registry::Registry::load(&self.dir.path().join("registry.yaml")).unwrap(),
        );
        for (token, info) in tokens {
            api.add_token(token, info);
        }
        let kubeconfig = self.path("kubeconfig.yaml");
        api.write_kubeconfig(kubeconfig.as_ref()).unwrap();
        let mut args = vec!["--kubernetes", "--kubeconfig", &kubeconfig, "--state-dir"];
        let (state, root) = (self.path("state"), self.path("root.pem"));
        args.extend([state.as_str(), "--publish-root", &root]);
        args.extend_from_slice(extra);
        let log = self.dir.path().join("ca-kubernetes.log");
        let ca = CaProcess::start(&ztunnel_e2e::bin("ztunnel"), "127.0.0.1:0", &args, log);
        (api, ca.unwrap())
    }

    /// node1 asks for a one-minute certificate of demo/web, which it runs.
    async fn web_chain(&self, ca: &CaProcess) -> Vec<String> {
        let csr = csr(&p256(), vec![uri(WEB)]);
        let web = Identity::parse(WEB).unwrap();
        self.client(ca, NODE1_TOKEN)
            .create_certificate(csr, Duration::from_secs(60), &web)
            .await
            .unwrap()
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn csr(key: &KeyPair, sans: Vec<SanType>) -> String {
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

fn p256() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

fn openssl(args: &[&str]) -> String {
    ztunnel_cluster::netns::output(Command::new("openssl").args(args)).unwrap()
}

fn validity_secs(pem: &str) -> i64 {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let cert = block.parse_x509().unwrap();
    cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()
}

#[tokio::test(flavor = "multi_thread")]
async fn issued_chains_verify_with_openssl_and_carry_exactly_the_identity() {
    let fx = Fixture::new();
    let ca = fx.start_ca(&["--max-validity-secs", "600"]);
    let client = fx.client(&ca, NODE1_TOKEN);
    let web = Identity::parse(WEB).unwrap();

    let chain = client
        .create_certificate(csr(&p256(), vec![uri(WEB)]), Duration::from_secs(120), &web)
        .await
        .unwrap();
    assert_eq!(chain.len(), 2, "leaf and root");
    assert_eq!(
        chain[1],
        std::fs::read_to_string(fx.path("root.pem")).unwrap(),
        "the chain ends at the published root"
    );
    let leaf = fx.write("leaf.pem", &chain[0]);
    let root = fx.path("root.pem");
    for purpose in ["sslclient", "sslserver"] {
        let verdict = openssl(&["verify", "-purpose", purpose, "-CAfile", &root, &leaf]);
        assert_eq!(verdict.trim(), format!("{leaf}: OK"));
    }
    let san = openssl(&["x509", "-in", &leaf, "-noout", "-ext", "subjectAltName"]);
    assert_eq!(
        san.lines().map(str::trim).collect::<Vec<_>>(),
        [
            "X509v3 Subject Alternative Name: critical",
            &format!("URI:{WEB}")
        ]
    );
    let eku = openssl(&["x509", "-in", &leaf, "-noout", "-ext", "extendedKeyUsage"]);
    assert!(
        eku.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{eku}"
    );
    let text = openssl(&["x509", "-in", &leaf, "-noout", "-text"]);
    assert!(text.contains("CA:FALSE"), "{text}");
    assert_eq!(
        validity_secs(&chain[0]),
        120,
        "granted as asked, under the cap"
    );

    // Asking for more than the cap gets the cap; asking for nothing gets the cap.
    for asked in [Duration::from_secs(48 * 3600), Duration::ZERO] {
        let chain = client
            .create_certificate(csr(&p256(), vec![uri(WEB)]), asked, &web)
            .await
            .unwrap();
        assert_eq!(validity_secs(&chain[0]), 600);
    }
    // Serial numbers are random 128-bit values: two leaves never share one.
    let mut serials = BTreeSet::new();
    for _ in 0..3 {
        let chain = client
            .create_certificate(csr(&p256(), vec![uri(WEB)]), Duration::from_secs(60), &web)
            .await
            .unwrap();
        let path = fx.write("s.pem", &chain[0]);
        let serial = openssl(&["x509", "-in", &path, "-noout", "-serial"]);
        assert!(
            serial.trim().len() >= "serial=".len() + 30,
            "a 128-bit serial: {serial}"
        );
        serials.insert(serial);
    }
    assert_eq!(serials.len(), 3);
}

/// A CA that cannot start says why in one line, without a backtrace even
/// with `RUST_BACKTRACE` set (as Istio's chart sets it), and exits 1.
#[test]
fn a_token_file_without_tokens_stops_the_ca_with_one_line() {
    let fx = Fixture::new();
    let empty = fx.write("empty-tokens.yaml", "# no node yet\n");
    let out = Command::new(ztunnel_e2e::bin("ztunnel"))
        .args([
            "ca",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            &fx.path("state"),
        ])
        .args([
            "--registry",
            &fx.path("registry.yaml"),
            "--node-tokens",
            &empty,
        ])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let error: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(error.len(), 1, "{stderr}");
    assert!(error[0].contains("no node token in it"), "{stderr}");
    assert!(!stderr.contains("lang_start"), "a backtrace:\n{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_generated_root_is_private_and_reused_across_restarts() {
    let fx = Fixture::new();
    let ca = fx.start_ca(&[]);
    let first_root = std::fs::read_to_string(fx.path("root.pem")).unwrap();
    let generated = "generated a new self-signed root";
    assert!(ca.log().contains(generated), "said loudly:\n{}", ca.log());
    ca.kill();
    let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&fx.path("state")), 0o700);
    assert_eq!(mode(&fx.path("state/ca-key.pem")), 0o600);

    let ca = fx.start_ca(&[]);
    assert_eq!(
        std::fs::read_to_string(fx.path("root.pem")).unwrap(),
        first_root,
        "a restart keeps the root"
    );
    assert!(!ca.log().contains(generated), "{}", ca.log());
    let chain = fx.web_chain(&ca).await;
    assert_eq!(chain.last().unwrap(), &first_root);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugged_in_intermediate_signs_and_appears_in_the_chain() {
    let fx = Fixture::new();
    let dir = fx.dir.path().join("cacerts");
    std::fs::create_dir(&dir).unwrap();
    let p = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    // An operator's PKI, made with openssl: a root and an intermediate, in Istio's cacerts layout.
    let ec = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
    openssl(&[&["genpkey"][..], &ec, &["-out", &p("root-key.pem")]].concat());
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        &p("root-key.pem"),
        "-subj",
        "/O=corp/CN=corp root",
        "-days",
        "30",
        "-out",
        &p("root-cert.pem"),
    ]);
    openssl(&[&["genpkey"][..], &ec, &["-out", &p("ca-key.pem")]].concat());
    openssl(&[
        "req",
        "-new",
        "-key",
        &p("ca-key.pem"),
        "-subj",
        "/O=corp/CN=mesh intermediate",
        "-out",
        &p("ca.csr"),
    ]);
    let ext = fx.write("ext.cnf", "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\n");
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p("ca.csr"),
        "-CA",
        &p("root-cert.pem"),
        "-CAkey",
        &p("root-key.pem"),
        "-CAcreateserial",
        "-days",
        "10",
        "-extfile",
        &ext,
        "-out",
        &p("ca-cert.pem"),
    ]);
    let chain_text = std::fs::read_to_string(p("ca-cert.pem")).unwrap()
        + &std::fs::read_to_string(p("root-cert.pem")).unwrap();
    std::fs::write(p("cert-chain.pem"), chain_text).unwrap();

    let ca = fx.start_ca(&["--cacerts", &p("")]);
    assert_eq!(
        std::fs::read_to_string(fx.path("root.pem")).unwrap(),
        std::fs::read_to_string(p("root-cert.pem")).unwrap()
    );
    let chain = fx.web_chain(&ca).await;
    assert_eq!(chain.len(), 3, "leaf, intermediate, root");
    let leaf = fx.write("leaf.pem", &chain[0]);
    let intermediate = fx.write("intermediate.pem", &chain[1]);
    let issuer = openssl(&["x509", "-in", &leaf, "-noout", "-issuer"]);
    assert!(issuer.contains("mesh intermediate"), "{issuer}");
    let verdict = openssl(&[
        "verify",
        "-CAfile",
        &p("root-cert.pem"),
        "-untrusted",
        &intermediate,
        &leaf,
    ]);
    assert_eq!(verdict.trim(), format!("{leaf}: OK"));
    assert_eq!(
        chain[2],
        std::fs::read_to_string(p("root-cert.pem")).unwrap()
    );
    assert!(
        chain.iter().all(|pem| !pem.contains('\r')),
        "one line-ending style across the chain"
    );
}

fn code(result: Result<Vec<String>, CaClientError>) -> (Code, String) {
    match result {
        Err(CaClientError::Status { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_are_clear_and_the_ca_keeps_serving() {
    let fx = Fixture::new();
    let ca = fx.start_ca(&[]);
    let node1 = fx.client(&ca, NODE1_TOKEN);
    let web = Identity::parse(WEB).unwrap();
    let minute = Duration::from_secs(60);

    let stranger = fx.client(&ca, "not-a-node-token-cccccccccccccccccc");
    let (c, m) = code(
        stranger
            .create_certificate(csr(&p256(), vec![uri(WEB)]), minute, &web)
            .await,
    );
    assert_eq!(
        (c, m.as_str()),
        (Code::PermissionDenied, "unknown node token")
    );

    // node1 runs no pod of demo/client (node2 does).
    let client_id = Identity::parse(CLIENT).unwrap();
    let (c, m) = code(
        node1
            .create_certificate(csr(&p256(), vec![uri(CLIENT)]), minute, &client_id)
            .await,
    );
    assert_eq!(c, Code::PermissionDenied);
    assert!(
        m.contains("node node1 runs no pod of ServiceAccount demo/client"),
        "{m}"
    );

    let foreign = "spiffe://other.domain/ns/demo/sa/web";
    let (c, m) = code(
        node1
            .create_certificate(
                csr(&p256(), vec![uri(foreign)]),
                minute,
                &Identity::parse(foreign).unwrap(),
            )
            .await,
    );
    assert_eq!(c, Code::PermissionDenied);
    assert!(m.contains("outside this CA's trust domain"), "{m}");

    // Asking on behalf of one identity with a CSR for another.
    let (c, _) = code(
        node1
            .create_certificate(csr(&p256(), vec![uri(WEB)]), minute, &client_id)
            .await,
    );
    assert_eq!(c, Code::InvalidArgument);

    // Hostile CSRs: each an INVALID_ARGUMENT that says what is wrong.
    let mut tampered = rcgen::CertificateParams::default();
    tampered.subject_alt_names = vec![uri(WEB)];
    let mut der = tampered.serialize_request(&p256()).unwrap().der().to_vec();
    *der.last_mut().unwrap() ^= 1;
    let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
    let openssl_csr = |name: &str, newkey: &[&str]| {
        let out = fx.path(name);
        openssl(
            &[
                &[
                    "req",
                    "-new",
                    "-nodes",
                    "-keyout",
                    &fx.path(&format!("{name}.key")),
                    "-subj",
                    "/",
                    "-addext",
                    &format!("subjectAltName=URI:{WEB}"),
                    "-out",
                    &out,
                ][..],
                newkey,
            ]
            .concat(),
        );
        std::fs::read_to_string(out).unwrap()
    };
    let hostile = [
        ("garbage", "hello".to_owned(), "malformed CSR"),
        ("tampered signature", tampered, "signature does not verify"),
        (
            "two SANs",
            csr(&p256(), vec![uri(WEB), uri(CLIENT)]),
            "exactly one SAN",
        ),
        (
            "a DNS SAN",
            csr(
                &p256(),
                vec![SanType::DnsName("web.demo".try_into().unwrap())],
            ),
            "exactly one SAN",
        ),
        ("no SAN", csr(&p256(), vec![]), "exactly one SAN"),
        (
            "RSA 1024",
            openssl_csr("rsa1024.csr", &["-newkey", "rsa:1024"]),
            "unsupported key",
        ),
        (
            "P-521",
            openssl_csr(
                "p521.csr",
                &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521"],
            ),
            "unsupported key",
        ),
        (
            "Ed25519",
            openssl_csr("ed25519.csr", &["-newkey", "ed25519"]),
            "unsupported key",
        ),
    ];
    for (what, csr_pem, expected) in hostile {
        let (c, m) = code(node1.create_certificate(csr_pem, minute, &web).await);
        assert_eq!(c, Code::InvalidArgument, "{what}: {m}");
        assert!(m.contains(expected), "{what}: {m}");
    }

    // After all that, honest requests from both nodes still succeed.
    assert!(
        node1
            .create_certificate(csr(&p256(), vec![uri(WEB)]), minute, &web)
            .await
            .is_ok()
    );
    let node2 = fx.client(&ca, NODE2_TOKEN);
    assert!(
        node2
            .create_certificate(csr(&p256(), vec![uri(CLIENT)]), minute, &client_id)
            .await
            .is_ok()
    );
    let refusals = ca.log().matches("refused certificate request").count();
    assert_eq!(refusals, 4 + 8, "every refusal is logged:\n{}", ca.log());
}

/// Each entry: when it was first seen, its serial, its notAfter.
type Issued = Vec<(SystemTime, String, SystemTime)>;

async fn observe(
    manager: &CertManager,
    identity: &Identity,
    period: Duration,
) -> (Issued, Vec<Instant>) {
    let mut issued: Issued = Vec::new();
    let mut gaps = Vec::new();
    let deadline = Instant::now() + period;
    while Instant::now() < deadline {
        match manager.get(identity) {
            Some(cert) => {
                if issued
                    .last()
                    .is_none_or(|(_, serial, _)| serial != cert.serial())
                {
                    issued.push((
                        SystemTime::now(),
                        cert.serial().to_owned(),
                        cert.not_after(),
                    ));
                }
            }
            None => gaps.push(Instant::now()),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (issued, gaps)
}

async fn first_certificate(manager: &CertManager, identity: &Identity) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while manager.get(identity).is_none() {
        assert!(Instant::now() < deadline, "no certificate within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Each request's span, as reported.
#[derive(Default)]
struct Spans(std::sync::Mutex<Vec<(Instant, Instant)>>);

impl RequestObserver for Spans {
    fn requested(&self, _identity: &Identity, elapsed: Duration, _ok: bool) {
        let end = Instant::now();
        self.0.lock().unwrap().push((end - elapsed, end));
    }
}

/// A node with many identities asks for at most its concurrency of them at
/// a time (Istio's ztunnel: 8), so a cold start queues at the node rather
/// than at the CA.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_has_no_more_requests_in_flight_than_its_concurrency() {
    let fx = Fixture::new();
    let ca = fx.start_ca(&[]);
    let spans = std::sync::Arc::new(Spans::default());
    let config = ManagerConfig {
        concurrency: 2,
        ..ManagerConfig::default()
    };
    let mut manager =
        CertManager::new(fx.client(&ca, NODE1_TOKEN), config).observed_by(spans.clone());
    // node1 runs web; the other ServiceAccounts are refused, and a refusal
    // is a request in flight too.
    let identities: BTreeSet<Identity> = (0..15)
        .map(|i| Identity::parse(&format!("spiffe://cluster.local/ns/demo/sa/sa-{i}")).unwrap())
        .chain([Identity::parse(WEB).unwrap()])
        .collect();
    manager.set_identities(&identities);
    let mut pending = manager.subscribe_pending();
    tokio::time::timeout(Duration::from_secs(10), pending.wait_for(|p| p.is_empty()))
        .await
        .expect("every identity answered within 10 s")
        .unwrap();
    let spans = spans.0.lock().unwrap().clone();
    assert!(spans.len() >= identities.len(), "{} requests", spans.len());
    let most = spans
        .iter()
        .map(|(start, _)| {
            spans
                .iter()
                .filter(|(s, e)| s <= start && start < e)
                .count()
        })
        .max()
        .unwrap();
    assert!(most <= 2, "{most} requests in flight at once");
    assert!(manager.get(&Identity::parse(WEB).unwrap()).is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn short_lived_certificates_renew_at_half_life_many_times_without_a_gap() {
    let fx = Fixture::new();
    let ca = fx.start_ca(&["--max-validity-secs", "6"]);
    let config = ManagerConfig {
        validity: Duration::from_secs(6),
        ..ManagerConfig::default()
    };
    let mut manager = CertManager::new(fx.client(&ca, NODE1_TOKEN), config);
    let web = Identity::parse(WEB).unwrap();
    manager.set_identities(&BTreeSet::from([web.clone()]));
    first_certificate(&manager, &web).await;

    let (issued, gaps) = observe(&manager, &web, Duration::from_secs(17)).await;
    assert!(
        gaps.is_empty(),
        "{} moments without a valid certificate",
        gaps.len()
    );
    assert!(
        issued.len() >= 5,
        "only {} certificates in 17 s of 6-second lifetimes",
        issued.len()
    );
    for pair in issued.windows(2) {
        let interval = pair[1].0.duration_since(pair[0].0).unwrap();
        // Half of 6 s, spread 45-55%, less up to 1 s as X.509 times are whole seconds.
        assert!(
            interval >= Duration::from_millis(1500) && interval <= Duration::from_millis(3600),
            "renewed after {interval:?}, not about half of 6 s"
        );
        assert!(
            pair[1].0 < pair[0].2,
            "the successor arrived after its predecessor expired"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn valid_certificates_outlive_a_ca_outage_expired_ones_are_withdrawn_and_renewal_resumes() {
    let fx = Fixture::new();
    let ca = fx.start_ca(&["--max-validity-secs", "4"]);
    let address = ca.address;
    let config = ManagerConfig {
        validity: Duration::from_secs(4),
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_millis(400),
        ..ManagerConfig::default()
    };
    let mut manager = CertManager::new(fx.client(&ca, NODE1_TOKEN), config);
    let web = Identity::parse(WEB).unwrap();
    manager.set_identities(&BTreeSet::from([web.clone()]));
    first_certificate(&manager, &web).await;
    let held = manager.get(&web).unwrap();
    ca.kill();

    // Down: the held certificate serves until it expires, and not a moment longer.
    while SystemTime::now() < held.not_after() - Duration::from_millis(300) {
        let now = manager.get(&web);
        assert!(
            now.is_some(),
            "a valid certificate was dropped while the CA was down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        manager.get(&web).is_none(),
        "an expired certificate is still in use"
    );

    // Back (same state, same address): renewal resumes by itself.
    let _ca = fx.start_ca_on(&address.to_string(), &["--max-validity-secs", "4"]);
    first_certificate(&manager, &web).await;
    assert_ne!(manager.get(&web).unwrap().serial(), held.serial());

    // Dropping the identity drops its certificate.
    manager.set_identities(&BTreeSet::new());
    assert!(manager.get(&web).is_none());
}

/// In Kubernetes the CA authenticates daemons by TokenReview (here against
/// the stand-in API server) and binds each to the node its token names.
#[tokio::test(flavor = "multi_thread")]
async fn the_kubernetes_ca_binds_each_token_to_its_node() {
    let fx = Fixture::new();
    let hour = Instant::now() + Duration::from_secs(3600);
    let daemon = |node: &str, audience: &str, expires: Instant| {
        token_of("ztunnel-system/ztunnel", node, audience, expires)
    };
    let (api, ca) = fx.kubernetes_ca(
        vec![
            ("node1-projected", daemon("node1", "ztunnel-ca", hour)),
            ("node2-projected", daemon("node2", "ztunnel-ca", hour)),
            (
                "node1-expired",
                daemon("node1", "ztunnel-ca", Instant::now()),
            ),
            (
                "node1-apiserver-audience",
                daemon("node1", "https://kubernetes.default.svc", hour),
            ),
            (
                "web-pod-token",
                token_of("demo/web", "node1", "ztunnel-ca", hour),
            ),
        ],
        &[],
    );
    let (web, client) = (
        Identity::parse(WEB).unwrap(),
        Identity::parse(CLIENT).unwrap(),
    );
    let ask = |token: &str, identity: &Identity| {
        let uri = uri(&identity.to_string());
        let (client, identity) = (fx.client(&ca, token), identity.clone());
        async move {
            client
                .create_certificate(csr(&p256(), vec![uri]), Duration::from_secs(60), &identity)
                .await
        }
    };

    // node1 runs demo/web, node2 demo/client: each gets its own.
    assert_eq!(ask("node1-projected", &web).await.unwrap().len(), 2);
    assert_eq!(ask("node2-projected", &client).await.unwrap().len(), 2);

    // A daemon on another node, an expired token, the wrong audience, a
    // workload's own token: all refused, each saying why.
    for (token, identity, why) in [
        (
            "node2-projected",
            &web,
            "node node2 runs no pod of ServiceAccount demo/web",
        ),
        ("node1-expired", &web, "has expired"),
        ("node1-apiserver-audience", &web, "audiences don't match"),
        (
            "web-pod-token",
            &web,
            "not to a node proxy's system:serviceaccount:ztunnel-system:ztunnel",
        ),
        ("no-such-token", &web, "invalid bearer token"),
    ] {
        let (c, m) = code(ask(token, identity).await);
        assert_eq!(c, Code::PermissionDenied, "{token}: {m}");
        assert!(m.contains(why), "{token}: {m}");
    }
    let reviews = api
        .requests()
        .iter()
        .filter(|r| r.starts_with("POST /apis/authentication.k8s.io/v1/tokenreviews"))
        .count();
    assert_eq!(reviews, 7, "one TokenReview per request");
}

/// A projected token of ServiceAccount `account` (`namespace/name`) for
/// `audience`, bound to a pod on `node`, as TokenReview describes it.
fn token_of(
    account: &str,
    node: &str,
    audience: &str,
    expires: Instant,
) -> ztunnel_cluster::kube_api::TokenInfo {
    let (namespace, name) = account.split_once('/').unwrap();
    ztunnel_cluster::kube_api::TokenInfo {
        username: format!("system:serviceaccount:{namespace}:{name}"),
        audiences: vec![audience.to_owned()],
        pod: Some((format!("{name}-{node}"), format!("uid-{name}-{node}"))),
        node: Some(node.to_owned()),
        expires,
    }
}

/// One CA serves this project's daemons and Istio's ztunnel at once, as a
/// cluster migrating node by node needs: ztunnel's ServiceAccount and
/// audience (`istio-system/ztunnel`, `istio-ca`) are trusted beside the
/// daemons'. A request for another cluster is refused, as istiod does.
#[tokio::test(flavor = "multi_thread")]
async fn the_kubernetes_ca_serves_istios_ztunnel_beside_the_daemons() {
    let fx = Fixture::new();
    let hour = Instant::now() + Duration::from_secs(3600);
    let (_api, ca) = fx.kubernetes_ca(
        vec![
            (
                "daemon-node1",
                token_of("ztunnel-system/ztunnel", "node1", "ztunnel-ca", hour),
            ),
            (
                "istio-ztunnel-node1",
                token_of("istio-system/ztunnel", "node1", "istio-ca", hour),
            ),
            (
                "istiod",
                token_of("istio-system/istiod", "node1", "istio-ca", hour),
            ),
        ],
        &[
            "--token-audience",
            "ztunnel-ca",
            "--token-audience",
            "istio-ca",
            "--node-service-account",
            "ztunnel-system/ztunnel",
            "--node-service-account",
            "istio-system/ztunnel",
        ],
    );
    let web = Identity::parse(WEB).unwrap();
    let ask = |config: CaClientConfig| {
        let web = web.clone();
        async move {
            CaClient::new(&config)
                .unwrap()
                .create_certificate(csr(&p256(), vec![uri(WEB)]), Duration::from_secs(60), &web)
                .await
        }
    };
    let token = |token: &str| fx.client_config(&ca, CaToken::Fixed(token.to_owned()));
    assert_eq!(ask(token("daemon-node1")).await.unwrap().len(), 2);
    assert_eq!(ask(token("istio-ztunnel-node1")).await.unwrap().len(), 2);

    let (c, m) = code(ask(token("istiod")).await);
    assert_eq!(c, Code::PermissionDenied, "{m}");
    assert!(
        m.contains("not to a node proxy's system:serviceaccount:ztunnel-system:ztunnel or system:serviceaccount:istio-system:ztunnel"),
        "{m}"
    );
    let mut elsewhere = token("daemon-node1");
    elsewhere.cluster_id = "cluster-2".to_owned();
    let (c, m) = code(ask(elsewhere).await);
    assert_eq!(c, Code::PermissionDenied, "{m}");
    assert!(
        m.contains(r#"the request is for cluster "cluster-2"; this CA serves "Kubernetes""#),
        "{m}"
    );
}

/// The token file is read for every request: a projected token the kubelet
/// replaced is the one sent next.
#[tokio::test(flavor = "multi_thread")]
async fn the_token_file_is_read_again_for_every_request() {
    let fx = Fixture::new();
    let ca = fx.start_ca(&[]);
    let token_file = fx.write("node-token", &format!("{NODE1_TOKEN}\n"));
    let client =
        CaClient::new(&fx.client_config(&ca, CaToken::File(token_file.clone().into()))).unwrap();
    let web = Identity::parse(WEB).unwrap();
    let ask =
        || client.create_certificate(csr(&p256(), vec![uri(WEB)]), Duration::from_secs(60), &web);
    assert_eq!(ask().await.unwrap().len(), 2);
    fx.write("node-token", "replaced-by-a-token-the-ca-does-not-know");
    let (c, m) = code(ask().await);
    assert_eq!(
        (c, m.as_str()),
        (Code::PermissionDenied, "unknown node token")
    );
    fx.write("node-token", NODE1_TOKEN);
    assert_eq!(ask().await.unwrap().len(), 2);
    std::fs::remove_file(&token_file).unwrap();
    let err = ask().await.unwrap_err().to_string();
    assert!(err.contains("reading the CA token"), "{err}");
}

/// `ztunnel ca-init` makes a root in Istio's `cacerts` layout that the CA
/// signs with as is (as a Kubernetes Secret would hold it), and never
/// overwrites an existing key.
#[tokio::test(flavor = "multi_thread")]
async fn ca_init_writes_a_cacerts_directory_the_ca_signs_with() {
    let fx = Fixture::new();
    let cacerts = fx.path("cacerts");
    let init = || {
        Command::new(ztunnel_e2e::bin("ztunnel"))
            .args(["ca-init", "--out", &cacerts])
            .output()
            .unwrap()
    };
    assert!(init().status.success());
    let key = std::fs::read(fx.dir.path().join("cacerts/ca-key.pem")).unwrap();
    let mode = std::fs::metadata(fx.dir.path().join("cacerts/ca-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the key is private");
    let again = init();
    assert!(!again.status.success(), "a second init must refuse");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("ca-key.pem"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        std::fs::read(fx.dir.path().join("cacerts/ca-key.pem")).unwrap(),
        key,
        "the key is untouched"
    );

    let ca = fx.start_ca(&["--cacerts", &cacerts]);
    let chain = fx.web_chain(&ca).await;
    let root = std::fs::read_to_string(fx.dir.path().join("cacerts/root-cert.pem")).unwrap();
    assert_eq!(chain.len(), 2, "leaf and root");
    assert_eq!(chain[1], root);
    assert_eq!(
        std::fs::read_to_string(fx.path("root.pem")).unwrap(),
        root,
        "the published root is the plugged-in one"
    );
}

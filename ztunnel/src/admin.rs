//! The admin endpoint (localhost by default): readiness and what the daemon
//! holds, for operators and probes. It never exposes a private key.
//!
//! | path | answer |
//! |---|---|
//! | `/healthz/live` | 200 `alive` while the daemon answers (not ready is not dead) |
//! | `/healthz/ready` | 200 `ready` when the daemon can serve its pods, else 503 with the reasons |
//! | `/certs` | the certificates held (identity, serial, validity, issuer), identities still waiting for one, and the trusted roots |
//! | `/config_dump` | the registry, the pods captured on this node, the policies in force |
//! | `/logging` | GET: the log filter; POST `?level=<filter>`: change it at run time |
//! | `/check?src=<pod>&dst=<pod or service>&port=<n>` | what policy decides for that connection, and why (pods and Services by name, `namespace/name` or address) |
//! | `/analyze` | likely policy mistakes |

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::SystemTime};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::{identity::WorkloadCertificate, metrics::Metrics};

/// What the admin endpoint reports on; implemented by the node daemon.
pub trait AdminState: Send + Sync + 'static {
    /// Why the daemon is not ready (empty when it is).
    fn not_ready(&self) -> Vec<String>;
    /// The certificates held now.
    fn certificates(&self) -> Vec<Arc<WorkloadCertificate>>;
    /// Identities the daemon needs but holds no valid certificate for.
    fn pending_identities(&self) -> Vec<String>;
    /// The roots peers are verified against (subject and serial of each).
    fn trust_bundle(&self) -> Vec<String>;
    /// The configuration in force: registry, captured pods, policies.
    fn config_dump(&self) -> serde_json::Value;
    /// The current log filter.
    fn log_level(&self) -> String;
    /// Replaces the log filter (tracing's `RUST_LOG` syntax).
    fn set_log_level(&self, filter: &str) -> Result<(), String>;
    /// What policy decides for a connection from pod `source` to port
    /// `port` of pod `destination` (pods as `name` or `namespace/name`), and why.
    fn check(
        &self,
        source: &str,
        destination: &str,
        port: u16,
    ) -> Result<serde_json::Value, String>;
    /// Likely policy mistakes.
    fn analyze(&self) -> Vec<String>;
}

/// Reads and changes the daemon's log filter at run time.
pub trait LogControl: Send + Sync + 'static {
    /// The current filter.
    fn current(&self) -> String;
    /// Replaces the filter; an invalid one is refused with the reason.
    fn set(&self, filter: &str) -> Result<(), String>;
}

/// Serves the admin endpoint on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<dyn AdminState>) {
    serve_http(listener, "admin", move |request| {
        route(request, state.as_ref())
    })
    .await
}

/// Serves Prometheus metrics on `listener` until the task is dropped, at
/// `/metrics` and at Istio's `/stats/prometheus` (so existing scrape
/// configurations work unchanged).
pub async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>) {
    serve_http(listener, "metrics", move |request| {
        if !matches!(request.uri().path(), "/metrics" | "/stats/prometheus") {
            let endpoints = "endpoints: /metrics, /stats/prometheus\n";
            return text(StatusCode::NOT_FOUND, endpoints.to_owned());
        }
        let mut response = text(StatusCode::OK, metrics.encode());
        response.headers_mut().insert(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
                .parse()
                .expect("a valid header"),
        );
        response
    })
    .await
}

/// Serves readiness (`/healthz/ready`, as on the admin endpoint) on
/// `listener`, Istio's probe port, until the task is dropped.
pub async fn serve_readiness(listener: TcpListener, state: Arc<dyn AdminState>) {
    serve_http(listener, "readiness", move |request| {
        match request.uri().path() {
            "/healthz/ready" => readiness(state.as_ref()),
            _ => text(
                StatusCode::NOT_FOUND,
                "endpoint: /healthz/ready\n".to_owned(),
            ),
        }
    })
    .await
}

/// 200 when the daemon is ready, else 503 with the reasons.
fn readiness(state: &dyn AdminState) -> Response<Full<Bytes>> {
    let reasons = state.not_ready();
    if reasons.is_empty() {
        text(StatusCode::OK, "ready\n".to_owned())
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", reasons.join("; ")),
        )
    }
}

/// HTTP/1 on `listener`, answering each request with `answer`.
async fn serve_http<F>(listener: TcpListener, what: &'static str, answer: F)
where
    F: Fn(&Request<hyper::body::Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let answer = Arc::new(answer);
    let mut acceptor = crate::accept::Acceptor::new(listener);
    loop {
        let (stream, _) = acceptor
            .accept(|err, backoff| {
                tracing::warn!("{what} accept failed, retrying in {backoff:?}: {err}")
            })
            .await;
        let answer = answer.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let answer = answer.clone();
                async move { Ok::<_, Infallible>(answer(&request)) }
            });
            if let Err(err) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("{what} connection: {err}");
            }
        });
    }
}

/// Binds the admin listener (a separate step so a bad address fails at start).
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

fn route(
    request: &Request<hyper::body::Incoming>,
    state: &dyn AdminState,
) -> Response<Full<Bytes>> {
    match request.uri().path() {
        // Liveness: the daemon answers. (Not ready is not dead: a daemon
        // waiting for the CA must not be restarted for it.)
        "/healthz/live" => text(StatusCode::OK, "alive\n".to_owned()),
        "/healthz/ready" => readiness(state),
        "/certs" => {
            let now = SystemTime::now();
            let certificates: Vec<_> = state
                .certificates()
                .iter()
                .map(|cert| {
                    json!({
                        "identity": cert.identity().to_string(),
                        "serial": cert.serial(),
                        "issuer": cert.issuer(),
                        "not_before": rfc3339(cert.not_before()),
                        "not_after": rfc3339(cert.not_after()),
                        "valid": cert.is_valid_at(now),
                        "chain_length": cert.chain().len(),
                    })
                })
                .collect();
            json_response(&json!({
                "certificates": certificates,
                "pending": state.pending_identities(),
                "trust_bundle": state.trust_bundle(),
            }))
        }
        "/config_dump" => json_response(&state.config_dump()),
        "/analyze" => json_response(&json!({ "findings": state.analyze() })),
        "/check" => {
            let query = request.uri().query().unwrap_or_default();
            let param = |name: &str| {
                query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            };
            let port = param("port").and_then(|p| p.parse::<u16>().ok());
            match (param("src"), param("dst"), port) {
                (Some(src), Some(dst), Some(port)) => match state.check(src, dst, port) {
                    Ok(answer) => json_response(&answer),
                    Err(err) => text(StatusCode::NOT_FOUND, format!("{err}\n")),
                },
                _ => text(
                    StatusCode::BAD_REQUEST,
                    "GET /check?src=<pod>&dst=<pod>&port=<port>\n".to_owned(),
                ),
            }
        }
        "/logging" => {
            let level = request.uri().query().and_then(|query| {
                query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("level="))
            });
            match (request.method() == hyper::Method::POST, level) {
                (true, Some(level)) => match state.set_log_level(level) {
                    Ok(()) => {
                        tracing::info!(filter = level, "log level changed");
                        text(StatusCode::OK, format!("log level: {level}\n"))
                    }
                    Err(err) => text(StatusCode::BAD_REQUEST, format!("{err}\n")),
                },
                (true, None) => text(
                    StatusCode::BAD_REQUEST,
                    "POST /logging?level=<filter>, for example level=debug or level=info,ztunnel::proxy=debug\n".to_owned(),
                ),
                (false, _) => text(StatusCode::OK, format!("log level: {}\n", state.log_level())),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "endpoints: /healthz/live /healthz/ready /certs /config_dump /logging /check /analyze\n"
                .to_owned(),
        ),
    }
}

fn json_response(body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = text(StatusCode::OK, format!("{body:#}\n"));
    response.headers_mut().insert(
        "content-type",
        "application/json".parse().expect("a valid header"),
    );
    response
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

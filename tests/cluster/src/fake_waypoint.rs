//! A stand-in for an Istio waypoint, for tests: an HBONE server (mutual TLS
//! 1.3 with ALPN `h2`, written against `h2` directly, sharing nothing with the
//! daemon's HBONE code) that answers every `CONNECT` with 200 and then plays
//! an HTTP/1.1 server on the stream, whose body says which waypoint took the
//! connection, the `:authority` it was asked for, the client's proven
//! identity and its `baggage`: `via waypoint <name> to <authority> from
//! <spiffe id> baggage <baggage or ->`.
//!
//! A real waypoint would forward the connection to its destination after
//! its L7 policy; the test only needs to see what reached it.

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Response, StatusCode};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use ztunnel::{identity::TrustDomain, tls::TunnelTls};

use crate::credentials::{Credentials, Loaded};

/// Serves on `listen` until the process ends, as waypoint `name`.
pub async fn serve(listen: SocketAddr, name: String, credentials: &Credentials) -> Result<()> {
    let Loaded { chain, key, roots } = credentials.load()?;
    let trust_domain: TrustDomain = "cluster.local".parse().context("the trust domain")?;
    let config = ztunnel::tls::tunnel_server_config(
        chain,
        key,
        &roots,
        trust_domain,
        TunnelTls {
            hbone_only: true,
            ..TunnelTls::default()
        },
    )?;
    let acceptor = TlsAcceptor::from(config);
    let listener = TcpListener::bind(listen).await?;
    let name = Arc::new(name);
    loop {
        let (tcp, _) = listener.accept().await?;
        let (acceptor, name) = (acceptor.clone(), name.clone());
        tokio::spawn(async move {
            if let Err(err) = connection(acceptor, tcp, &name).await {
                eprintln!("waypoint {name}: {err:#}");
            }
        });
    }
}

/// One HBONE connection: every stream answered on its own.
async fn connection(acceptor: TlsAcceptor, tcp: tokio::net::TcpStream, name: &str) -> Result<()> {
    let tls = acceptor.accept(tcp).await.context("the TLS handshake")?;
    let client = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(ztunnel::tls::verifier::identity_of)
        .transpose()?
        .map_or_else(|| "unknown".to_owned(), |identity| identity.to_string());
    let mut h2 = h2::server::handshake(tls).await?;
    while let Some(request) = h2.accept().await {
        let (request, respond) = request?;
        let body = format!(
            "via waypoint {name} to {} from {client} baggage {}\n",
            request
                .uri()
                .authority()
                .map_or("-", |authority| authority.as_str()),
            request
                .headers()
                .get("baggage")
                .and_then(|value| value.to_str().ok())
                .unwrap_or("-")
        );
        tokio::spawn(async move {
            if let Err(err) = stream(request.into_body(), respond, body).await {
                eprintln!("a stream: {err:#}");
            }
        });
    }
    Ok(())
}

/// One `CONNECT` stream: 200, then an HTTP/1.1 answer to the request the
/// client sends on it, then the end of the stream.
async fn stream(
    mut request: h2::RecvStream,
    mut respond: h2::server::SendResponse<Bytes>,
    body: String,
) -> Result<()> {
    let mut sending = respond.send_response(Response::new(()), false)?;
    // The client's request head, up to its blank line.
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let Some(data) = request.data().await else {
            break;
        };
        let data = data?;
        request
            .flow_control()
            .release_capacity(data.len())
            .context("releasing capacity")?;
        head.extend_from_slice(&data);
    }
    let answer = format!(
        "HTTP/1.1 {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        StatusCode::OK,
        body.len()
    );
    sending.send_data(Bytes::from(answer), true)?;
    Ok(())
}

//! An HBONE client for tests, as Istio's ztunnel would connect to a node
//! daemon: mutual TLS 1.3 with ALPN `h2` (the TLS configuration is
//! `ztunnel::tls`'s, which checks the server's SPIFFE identity), then one
//! HTTP/2 `CONNECT` stream per connection, written against `h2` directly so
//! that it shares nothing with the daemon's HBONE code.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use h2::{RecvStream, SendStream, client::SendRequest};
use http::{Method, Request};
use rustls::pki_types::ServerName;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use ztunnel::{identity::Identity, tls::TunnelTls};

use crate::{
    credentials::{Credentials, Loaded},
    payload::Payload,
};

/// A `CONNECT` stream answered 200: its halves and the answer's `baggage`.
type Opened = (SendStream<Bytes>, RecvStream, String);

/// One HTTP/2 connection to a daemon's tunnel port.
pub struct Client {
    requests: SendRequest<Bytes>,
}

/// How one `CONNECT` stream went.
#[derive(Debug)]
pub enum Outcome {
    /// Answered with a status other than 200.
    Refused(u16),
    /// 200, then the payload was sent and the stream half-closed; the reply
    /// was read to its end.
    Echoed {
        /// Bytes received.
        received: u64,
        /// SHA-256 of what was received, hex.
        sha256: String,
        /// The `baggage` header of the 200, or `-`.
        baggage: String,
    },
    /// 200, then the stream was reset.
    Reset,
    /// 200, then sending stalled for a second with `sent` bytes out: the
    /// destination does not read, and flow control holds the sender.
    Stalled {
        /// Bytes the stream took before it stalled.
        sent: u64,
    },
}

impl Client {
    /// Connects to `daemon` (`<pod ip>:15008`), which must prove `server`.
    pub async fn connect(
        daemon: SocketAddr,
        credentials: &Credentials,
        server: &str,
    ) -> Result<Self> {
        let Loaded { chain, key, roots } = credentials.load()?;
        let server = Identity::parse(server).context("the server's identity")?;
        let config =
            ztunnel::tls::tunnel_client_config(chain, key, &roots, server, TunnelTls::default())?;
        let mut config = (*config).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = TcpStream::connect(daemon).await?;
        let tls = TlsConnector::from(Arc::new(config))
            .connect(ServerName::IpAddress(daemon.ip().into()), tcp)
            .await
            .context("TLS handshake")?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            bail!("the server did not select ALPN h2");
        }
        let (requests, connection) = h2::client::Builder::new()
            .initial_window_size(1024 * 1024)
            .handshake::<_, Bytes>(tls)
            .await
            .context("HTTP/2 handshake")?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { requests })
    }

    /// Opens a `CONNECT` stream to `authority`: its two halves and the
    /// 200's `baggage` once answered 200, or the status it was answered with.
    async fn open(&self, authority: &str) -> Result<Result<Opened, u16>> {
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri(authority)
            .body(())?;
        let mut requests = self.requests.clone().ready().await?;
        let (response, send) = requests.send_request(request, false)?;
        let response = response.await.context("waiting for the response")?;
        if response.status() != http::StatusCode::OK {
            return Ok(Err(response.status().as_u16()));
        }
        let baggage = response
            .headers()
            .get("baggage")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        Ok(Ok((send, response.into_body(), baggage)))
    }

    /// Opens a `CONNECT` stream to `authority`, sends a payload of `len`
    /// bytes, half-closes it and reads the reply to its end.
    pub async fn echo(&self, authority: &str, len: u64) -> Result<Outcome> {
        let (mut send, mut recv, baggage) = match self.open(authority).await? {
            Ok(stream) => stream,
            Err(status) => return Ok(Outcome::Refused(status)),
        };
        let writer = async {
            let mut payload = Payload::new(len);
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = payload.fill(&mut buf);
                if n == 0 {
                    break;
                }
                let mut from = 0;
                while from < n {
                    send.reserve_capacity(n - from);
                    let room = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                        Some(Ok(room)) => room,
                        _ => return false,
                    };
                    let to = from + room.min(n - from);
                    if send
                        .send_data(Bytes::copy_from_slice(&buf[from..to]), false)
                        .is_err()
                    {
                        return false;
                    }
                    from = to;
                }
            }
            send.send_data(Bytes::new(), true).is_ok()
        };
        let reader = async {
            let mut hasher = Sha256::new();
            let mut received = 0u64;
            while let Some(data) = recv.data().await {
                match data {
                    Ok(data) => {
                        let _ = recv.flow_control().release_capacity(data.len());
                        received += data.len() as u64;
                        hasher.update(&data);
                    }
                    Err(err) if ends_normally(&err) => break,
                    Err(_) => return None,
                }
            }
            let sha256 = hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            Some((received, sha256))
        };
        let (_, read) = tokio::join!(writer, reader);
        Ok(match read {
            Some((received, sha256)) => Outcome::Echoed {
                received,
                sha256,
                baggage,
            },
            None => Outcome::Reset,
        })
    }

    /// Opens a `CONNECT` stream to `authority` and sends into it, never
    /// reading, until flow control holds it for a second (or `limit` bytes
    /// went out, an error: nothing held the sender back).
    pub async fn flood(&self, authority: &str, limit: u64) -> Result<Outcome> {
        let (mut send, _recv, _) = match self.open(authority).await? {
            Ok(stream) => stream,
            Err(status) => return Ok(Outcome::Refused(status)),
        };
        let chunk = Bytes::from(vec![7u8; 64 * 1024]);
        let mut sent = 0u64;
        while sent < limit {
            send.reserve_capacity(chunk.len());
            let room = std::future::poll_fn(|cx| send.poll_capacity(cx));
            match tokio::time::timeout(Duration::from_secs(1), room).await {
                Err(_) => return Ok(Outcome::Stalled { sent }),
                Ok(Some(Ok(room))) => {
                    send.send_data(chunk.slice(..room.min(chunk.len())), false)?;
                    sent += room.min(chunk.len()) as u64;
                }
                Ok(_) => return Ok(Outcome::Reset),
            }
        }
        bail!("{sent} bytes went out and nothing held the sender back")
    }
}

/// Whether `err` ends a stream normally (`NO_ERROR`, `CANCEL`).
fn ends_normally(err: &h2::Error) -> bool {
    matches!(
        err.reason(),
        Some(h2::Reason::NO_ERROR | h2::Reason::CANCEL)
    )
}

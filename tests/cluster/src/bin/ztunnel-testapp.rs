//! A small application for pods: an HTTP/1.1 server whose responses can be
//! verified byte for byte.
//!
//! - `GET /` answers `hello from <name>`.
//! - `GET /bytes/<n>` answers the `n`-byte [`Payload`], whose SHA-256 the
//!   checker computes on its side.
//!
//! It prints `listening on <addr>` once bound, and serves until killed.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use ztunnel_cluster::payload::Payload;

#[derive(Parser)]
#[command(
    name = "ztunnel-testapp",
    about = "Test application for pods of the local cluster"
)]
struct Cli {
    #[command(subcommand)]
    app: App,
}

#[derive(Subcommand)]
enum App {
    /// HTTP/1.1 server (`GET /`, `GET /bytes/<n>`).
    Http {
        /// Address to listen on; `[::]` accepts IPv4 and IPv6.
        #[arg(long, default_value = "[::]:8080")]
        listen: SocketAddr,
        /// Name to answer `GET /` with.
        #[arg(long, default_value = "testapp")]
        name: String,
    },
}

/// Largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let App::Http { listen, name } = Cli::parse().app;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    println!("listening on {}", listener.local_addr()?);
    let name: &'static str = Box::leak(name.into_boxed_str());
    loop {
        let (stream, peer) = listener.accept().await?;
        tokio::spawn(async move {
            if let Err(err) = serve(stream, name).await {
                eprintln!("{peer}: {err:#}");
            }
        });
    }
}

async fn serve(mut stream: TcpStream, name: &str) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        anyhow::ensure!(
            head.len() < MAX_HEAD,
            "request head larger than {MAX_HEAD} bytes"
        );
        let n = stream.read(&mut buf).await?;
        anyhow::ensure!(
            n > 0,
            "connection closed before the end of the request head"
        );
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut request_line = head.lines().next().unwrap_or_default().split(' ');
    let (method, path) = (request_line.next(), request_line.next().unwrap_or_default());

    if method != Some("GET") {
        return respond(&mut stream, "405 Method Not Allowed", b"only GET\n").await;
    }
    if path == "/" {
        return respond(
            &mut stream,
            "200 OK",
            format!("hello from {name}\n").as_bytes(),
        )
        .await;
    }
    let Some(len) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<u64>().ok())
    else {
        return respond(&mut stream, "404 Not Found", b"try / or /bytes/<n>\n").await;
    };
    let header = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(header.as_bytes()).await?;
    let mut payload = Payload::new(len);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = payload.fill(&mut chunk);
        if n == 0 {
            break;
        }
        stream.write_all(&chunk[..n]).await?;
    }
    stream.shutdown().await?;
    Ok(())
}

async fn respond(stream: &mut TcpStream, status: &str, body: &[u8]) -> Result<()> {
    let header = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await?;
    Ok(())
}

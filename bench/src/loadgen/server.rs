//! The server: on each connection, reads requests of `size` bytes and
//! answers each with `size` bytes, until the client closes.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Serves on `listen` until the process ends.
pub async fn serve(listen: SocketAddr, size: usize) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    eprintln!("listening on {listen}");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of file descriptors or a connection reset before accept:
            // keep serving the others.
            Err(err) => {
                eprintln!("accept: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::spawn(answer(stream, size));
    }
}

/// Answers requests on one connection until EOF or an error.
async fn answer(mut stream: TcpStream, size: usize) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; size];
    loop {
        match stream.read_exact(&mut buf).await {
            Ok(_) => {}
            Err(_) => return,
        }
        if stream.write_all(&buf).await.is_err() {
            return;
        }
    }
}

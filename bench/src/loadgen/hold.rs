//! Many idle connections: each opened and proven end to end by one
//! exchange, then held without traffic until told to let go.

use std::net::SocketAddr;

use super::{connect, exchange};

/// Opens `count` connections to `target` (at most `parallel` opening at
/// once), each with one exchange of `size` bytes; returns them open.
pub async fn open(
    target: SocketAddr,
    count: usize,
    parallel: usize,
    size: usize,
) -> std::io::Result<Vec<tokio::net::TcpStream>> {
    let mut held = Vec::with_capacity(count);
    while held.len() < count {
        let batch = parallel.min(count - held.len());
        let opening: Vec<_> = (0..batch)
            .map(|_| {
                tokio::spawn(async move {
                    let mut stream = connect(target).await?;
                    exchange(&mut stream, &mut vec![0u8; size]).await?;
                    Ok::<_, std::io::Error>(stream)
                })
            })
            .collect();
        for task in opening {
            held.push(task.await.map_err(std::io::Error::other)??);
        }
    }
    Ok(held)
}

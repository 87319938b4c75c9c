//! The metrics endpoint: one HTTP/1.0 answer per connection, whatever the path. A client can
//! neither stall the agent nor make it hold memory: at most MAX_CLIENTS are served at once
//! (more are closed at once and counted), each has a few seconds to send its request (of
//! which at most 8 KiB are read) and to take the answer, and the answer is rendered once per
//! connection inside the event loop while the slow part runs beside it.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    time::timeout,
};

/// Connections served at once; Prometheus needs one.
const MAX_CLIENTS: usize = 8;
/// How much of a request is read (the path is not looked at).
const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request, and then to read the answer.
const CLIENT_TIME: Duration = Duration::from_secs(3);

pub struct Endpoint {
    listener: TcpListener,
    busy: Arc<AtomicUsize>,
    /// Connections closed unanswered because MAX_CLIENTS were being served.
    pub refused: u64,
}

impl Endpoint {
    pub async fn bind(addr: SocketAddr) -> io::Result<Endpoint> {
        Ok(Endpoint {
            listener: TcpListener::bind(addr).await?,
            busy: Arc::new(AtomicUsize::new(0)),
            refused: 0,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next client to answer; a client over the limit is closed here and counted.
    pub async fn accept(&mut self) -> io::Result<Client> {
        loop {
            let (stream, _) = self.listener.accept().await?;
            if self.busy.load(Ordering::Relaxed) >= MAX_CLIENTS {
                self.refused += 1;
                drop(stream);
                continue;
            }
            self.busy.fetch_add(1, Ordering::Relaxed);
            return Ok(Client {
                stream,
                busy: Arc::clone(&self.busy),
            });
        }
    }
}

/// An accepted connection, counted as busy until it is dropped.
pub struct Client {
    stream: TcpStream,
    busy: Arc<AtomicUsize>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Client {
    /// Reads the request (until its blank line, 8 KiB or the deadline) and sends `body`.
    pub async fn answer(mut self, body: String) {
        let mut request = Vec::with_capacity(1024);
        let read = async {
            let mut buf = [0u8; 1024];
            while request.len() < MAX_REQUEST && !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match self.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
        };
        if timeout(CLIENT_TIME, read).await.is_err() {
            return;
        }
        let head = format!(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        let write = async {
            self.stream.write_all(head.as_bytes()).await?;
            self.stream.write_all(body.as_bytes()).await?;
            self.stream.shutdown().await
        };
        let _ = timeout(CLIENT_TIME, write).await;
    }
}

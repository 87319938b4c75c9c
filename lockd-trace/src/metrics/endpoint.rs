//! The metrics endpoint: one HTTP answer per connection (hyper), GET /metrics. A client can
//! neither stall the agent nor make it hold memory: at most MAX_CLIENTS are served at once
//! (more are closed at once and counted), each has a few seconds to send its request (of
//! which at most 8 KiB are read) and to take the answer, and the answer is rendered once per
//! connection inside the event loop while the slow part runs beside it.

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    time::timeout,
};

/// Connections served at once; Prometheus needs one.
const MAX_CLIENTS: usize = 8;
/// The most of a request head that is buffered (hyper's smallest allowed buffer).
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
                _busy: Busy(Arc::clone(&self.busy)),
            });
        }
    }
}

/// An accepted connection, counted as busy until it is dropped.
pub struct Client {
    stream: TcpStream,
    _busy: Busy,
}

/// One place among MAX_CLIENTS, given back when the connection is done.
struct Busy(Arc<AtomicUsize>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Client {
    /// Serves one request on this connection with hyper: `body` for GET /metrics, 404
    /// elsewhere. The request head must arrive within CLIENT_TIME and fit MAX_REQUEST; the
    /// whole exchange is cut off after twice that.
    pub async fn answer(self, body: String) {
        let Client { stream, _busy } = self;
        let body = Bytes::from(body);
        let service = service_fn(move |req: Request<Incoming>| {
            let body = body.clone();
            async move { Ok::<_, Infallible>(respond(&req, body)) }
        });
        let conn = http1::Builder::new()
            .keep_alive(false)
            .timer(TokioTimer::new())
            .header_read_timeout(CLIENT_TIME)
            .max_buf_size(MAX_REQUEST)
            .serve_connection(TokioIo::new(stream), service);
        let _ = timeout(2 * CLIENT_TIME, conn).await;
    }
}

/// OpenMetrics' content type (Prometheus asks for it and parses `# EOF`).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn respond(req: &Request<Incoming>, body: Bytes) -> Response<Full<Bytes>> {
    let (status, kind, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => (StatusCode::OK, OPENMETRICS, body),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"lockd-trace serves GET /metrics only\n"),
        ),
    };
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    r
}

//! The server skeleton of the fast loopback endpoints ([`super::FastSns`],
//! [`super::FastLogs`]): an HTTP/1.1 server on `127.0.0.1:<free port>`, on
//! its own thread and single-threaded runtime (so it does not compete with
//! the code under test for its runtime), answering every request after a
//! configurable latency with what the endpoint's answer function says, and
//! counting requests and the most in progress at once. Dropping it stops it.
//!
//! In *capacity mode* ([`LoopbackServer::set_workers`]) it serves like a
//! real service with a fixed number of workers: each request waits for a
//! free worker, then takes the latency; beyond that many in flight, latency
//! grows with the queue and throughput stays at `workers / latency`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// What an endpoint answers to one request (its headers and whole body).
pub(crate) type Answer = Box<dyn Fn(&HeaderMap, &[u8]) -> Response<Full<Bytes>> + Send + Sync>;

struct Shared {
    answer: Answer,
    latency_micros: AtomicU64,
    requests: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    /// Capacity mode: the workers.
    workers: std::sync::Mutex<Option<Arc<Semaphore>>>,
    stop: watch::Sender<bool>,
}

/// A running loopback server.
pub(crate) struct LoopbackServer {
    url: String,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LoopbackServer {
    /// Starts serving; `name` names the thread (`{name}-{port}`).
    pub(crate) fn start(name: &str, latency: Duration, answer: Answer) -> LoopbackServer {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback endpoint");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            answer,
            latency_micros: AtomicU64::new(latency.as_micros() as u64),
            requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            workers: std::sync::Mutex::new(None),
            stop: watch::Sender::new(false),
        });
        let task_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("{name}-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("loopback endpoint runtime");
                runtime.block_on(serve(listener, task_shared));
            })
            .expect("spawn the loopback endpoint thread");
        LoopbackServer {
            url: format!("http://{addr}"),
            shared,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>`, to use as the SDK's endpoint URL.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Changes the answer latency.
    pub(crate) fn set_latency(&self, latency: Duration) {
        self.shared
            .latency_micros
            .store(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// Capacity mode with `workers` workers (`None`: every request at once).
    pub(crate) fn set_workers(&self, workers: Option<usize>) {
        *self
            .shared
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner()) =
            workers.map(|n| Arc::new(Semaphore::new(n.max(1))));
    }

    /// Requests answered or being answered.
    pub(crate) fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// The most requests in progress at one moment.
    pub(crate) fn max_concurrent(&self) -> u64 {
        self.shared.max_in_flight.load(Ordering::Relaxed)
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        self.shared.stop.send_replace(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(listener: std::net::TcpListener, shared: Arc<Shared>) {
    let listener = TcpListener::from_std(listener).expect("tokio listener");
    let mut stop = shared.stop.subscribe();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                tokio::spawn(async move {
                    let mut stop = shared.stop.subscribe();
                    let service = service_fn(move |req| handle(req, shared.clone()));
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                });
            }
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let now = shared.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
    shared.max_in_flight.fetch_max(now, Ordering::Relaxed);
    let workers = shared
        .workers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let _worker = match &workers {
        Some(workers) => Some(workers.acquire().await.expect("never closed")),
        None => None,
    };
    let latency = Duration::from_micros(shared.latency_micros.load(Ordering::Relaxed));
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let answer = (shared.answer)(&parts.headers, &body);
    shared.in_flight.fetch_sub(1, Ordering::Relaxed);
    Ok(answer)
}

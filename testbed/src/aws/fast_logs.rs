//! A fast loopback CloudWatch Logs endpoint for benchmarks.
//!
//! moto serves a few hundred requests per second (SPEC §8, §10): enough to
//! check behaviour, far too slow to measure a log sink aiming at 100,000
//! lines/s. [`FastLogs`] speaks just enough awsJson1.1 (`X-Amz-Target:
//! Logs_20140328.<Op>`) for the AWS SDK: `CreateLogGroup`,
//! `CreateLogStream`, `PutRetentionPolicy` and `PutLogEvents` answer success
//! after a configurable latency; `PutLogEvents` counts the request's events
//! (decoded without keeping them). It checks nothing else (no signature, no
//! limits: the strict proxy's job) and keeps nothing but counters.
//!
//! It runs on its own thread and single-threaded runtime, like the strict
//! proxy and [`super::FastSns`], so it does not compete with the code under
//! test for its runtime; dropping it stops it.
//!
//! ```no_run
//! use std::time::Duration;
//! use kubeherald_testbed::aws::{FastLogs, TestSdk};
//! let logs = FastLogs::start(Duration::from_millis(20));
//! let client = TestSdk::new(logs.url()).logs();
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde::de::IgnoredAny;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The awsJson1.1 target prefix of CloudWatch Logs.
const TARGET_PREFIX: &str = "Logs_20140328.";
const JSON: &str = "application/x-amz-json-1.1";

struct Shared {
    latency_micros: AtomicU64,
    requests: AtomicU64,
    puts: AtomicU64,
    events: AtomicU64,
    creates: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    stop: watch::Sender<bool>,
}

/// The fast CloudWatch Logs endpoint. See the module docs.
pub struct FastLogs {
    url: String,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for FastLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastLogs").field("url", &self.url).finish()
    }
}

impl FastLogs {
    /// Starts an endpoint on `127.0.0.1:<free port>` answering after `latency`.
    pub fn start(latency: Duration) -> FastLogs {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind the fast logs endpoint");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            latency_micros: AtomicU64::new(latency.as_micros() as u64),
            requests: AtomicU64::new(0),
            puts: AtomicU64::new(0),
            events: AtomicU64::new(0),
            creates: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            stop: watch::Sender::new(false),
        });
        let task_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fast-logs-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("fast logs runtime");
                runtime.block_on(serve(listener, task_shared));
            })
            .expect("spawn the fast logs thread");
        FastLogs {
            url: format!("http://{addr}"),
            shared,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>`, to use as the SDK's endpoint URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Changes the answer latency.
    pub fn set_latency(&self, latency: Duration) {
        self.shared
            .latency_micros
            .store(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// Requests answered or being answered.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// `PutLogEvents` requests answered.
    pub fn puts(&self) -> u64 {
        self.shared.puts.load(Ordering::Relaxed)
    }

    /// Log events accepted by `PutLogEvents`.
    pub fn events(&self) -> u64 {
        self.shared.events.load(Ordering::Relaxed)
    }

    /// `CreateLogGroup` and `CreateLogStream` requests answered.
    pub fn creates(&self) -> u64 {
        self.shared.creates.load(Ordering::Relaxed)
    }

    /// The most requests in progress at one moment.
    pub fn max_concurrent(&self) -> u64 {
        self.shared.max_in_flight.load(Ordering::Relaxed)
    }
}

impl Drop for FastLogs {
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
    let operation = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix(TARGET_PREFIX))
        .map(str::to_owned);
    let body = req.into_body().collect().await?.to_bytes();
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let now = shared.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
    shared.max_in_flight.fetch_max(now, Ordering::Relaxed);
    let latency = Duration::from_micros(shared.latency_micros.load(Ordering::Relaxed));
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let answer = answer(operation.as_deref(), &body, &shared);
    shared.in_flight.fetch_sub(1, Ordering::Relaxed);
    Ok(answer)
}

/// Only the event count of a `PutLogEvents` body is read; messages are
/// skipped without being copied.
#[derive(Deserialize)]
struct PutLogEvents {
    #[serde(rename = "logEvents")]
    log_events: Vec<IgnoredAny>,
}

/// The answer to one awsJson1.1 request.
fn answer(operation: Option<&str>, body: &[u8], shared: &Shared) -> Response<Full<Bytes>> {
    let json = match operation {
        Some("PutLogEvents") => match serde_json::from_slice::<PutLogEvents>(body) {
            Ok(put) => {
                shared.puts.fetch_add(1, Ordering::Relaxed);
                shared
                    .events
                    .fetch_add(put.log_events.len() as u64, Ordering::Relaxed);
                "{}".to_owned()
            }
            Err(error) => {
                return error_answer(
                    "SerializationException",
                    &format!("the fast logs endpoint cannot read this PutLogEvents: {error}"),
                );
            }
        },
        Some("CreateLogGroup" | "CreateLogStream") => {
            shared.creates.fetch_add(1, Ordering::Relaxed);
            "{}".to_owned()
        }
        Some("PutRetentionPolicy") => "{}".to_owned(),
        other => {
            return error_answer(
                "UnknownOperationException",
                &format!(
                    "the fast logs endpoint does not serve {}",
                    other.unwrap_or("a request without X-Amz-Target")
                ),
            );
        }
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, JSON)
        .body(Full::new(Bytes::from(json)))
        .expect("answer")
}

fn error_answer(code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"__type": code, "message": message}).to_string();
    Response::builder()
        .status(StatusCode::BAD_REQUEST)
        .header(CONTENT_TYPE, JSON)
        .body(Full::new(Bytes::from(body)))
        .expect("error answer")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::TestSdk;
    use aws_sdk_cloudwatchlogs::types::InputLogEvent;

    #[tokio::test]
    async fn the_sdk_creates_and_puts() {
        let logs = FastLogs::start(Duration::from_millis(5));
        let client = TestSdk::new(logs.url()).max_attempts(1).logs();
        client
            .create_log_group()
            .log_group_name("/g")
            .send()
            .await
            .unwrap();
        client
            .create_log_stream()
            .log_group_name("/g")
            .log_stream_name("ns/p/c/0")
            .send()
            .await
            .unwrap();
        client
            .put_retention_policy()
            .log_group_name("/g")
            .retention_in_days(30)
            .send()
            .await
            .unwrap();
        let events: Vec<_> = (0..7)
            .map(|i| {
                InputLogEvent::builder()
                    .timestamp(1_750_000_000_000 + i)
                    .message(format!("line {i} \"quoted\" é"))
                    .build()
                    .unwrap()
            })
            .collect();
        let answer = client
            .put_log_events()
            .log_group_name("/g")
            .log_stream_name("ns/p/c/0")
            .set_log_events(Some(events))
            .send()
            .await
            .unwrap();
        assert!(answer.rejected_log_events_info().is_none());
        assert_eq!((logs.puts(), logs.events(), logs.creates()), (1, 7, 2));
        let unknown = client.describe_log_groups().send().await;
        assert!(unknown.is_err(), "only the sink's operations are served");
    }
}

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

use super::loopback::LoopbackServer;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::CONTENT_TYPE;
use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde::de::IgnoredAny;

/// The awsJson1.1 target prefix of CloudWatch Logs.
const TARGET_PREFIX: &str = "Logs_20140328.";
const JSON: &str = "application/x-amz-json-1.1";

/// What the CloudWatch Logs endpoint counts beyond requests.
#[derive(Default)]
struct Counters {
    puts: AtomicU64,
    events: AtomicU64,
    creates: AtomicU64,
    /// The oldest event's age at its put, worst since the last reset.
    max_lag_ms: AtomicU64,
}

/// The fast CloudWatch Logs endpoint. See the module docs.
pub struct FastLogs {
    server: LoopbackServer,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for FastLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastLogs")
            .field("url", &self.url())
            .finish()
    }
}

impl FastLogs {
    /// Starts an endpoint on `127.0.0.1:<free port>` answering after `latency`.
    pub fn start(latency: Duration) -> FastLogs {
        let counters = Arc::new(Counters::default());
        let answering = counters.clone();
        let server = LoopbackServer::start(
            "fast-logs",
            latency,
            Box::new(move |headers, body| {
                let operation = headers
                    .get("x-amz-target")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix(TARGET_PREFIX));
                answer(operation, body, &answering)
            }),
        );
        FastLogs { server, counters }
    }

    /// `http://127.0.0.1:<port>`, to use as the SDK's endpoint URL.
    pub fn url(&self) -> &str {
        self.server.url()
    }

    /// Changes the answer latency.
    pub fn set_latency(&self, latency: Duration) {
        self.server.set_latency(latency);
    }

    /// Capacity mode: `workers` requests served at once, the others queue
    /// (latency grows with the requests in flight); `None` ends it.
    pub fn set_workers(&self, workers: Option<usize>) {
        self.server.set_workers(workers);
    }

    /// Requests answered or being answered.
    pub fn requests(&self) -> u64 {
        self.server.requests()
    }

    /// `PutLogEvents` requests answered.
    pub fn puts(&self) -> u64 {
        self.counters.puts.load(Ordering::Relaxed)
    }

    /// Log events accepted by `PutLogEvents`.
    pub fn events(&self) -> u64 {
        self.counters.events.load(Ordering::Relaxed)
    }

    /// `CreateLogGroup` and `CreateLogStream` requests answered.
    pub fn creates(&self) -> u64 {
        self.counters.creates.load(Ordering::Relaxed)
    }

    /// The worst age of an event (its timestamp to its put's arrival) since
    /// the start or [`FastLogs::reset_lag`]: how far behind the sink is,
    /// when the lines are stamped as they are written.
    pub fn max_lag(&self) -> Duration {
        Duration::from_millis(self.counters.max_lag_ms.load(Ordering::Relaxed))
    }

    /// Starts measuring [`FastLogs::max_lag`] afresh.
    pub fn reset_lag(&self) {
        self.counters.max_lag_ms.store(0, Ordering::Relaxed);
    }

    /// The most requests in progress at one moment.
    pub fn max_concurrent(&self) -> u64 {
        self.server.max_concurrent()
    }
}

/// Only the events' timestamps of a `PutLogEvents` body are read; messages
/// are skipped without being copied.
#[derive(Deserialize)]
struct PutLogEvents {
    #[serde(rename = "logEvents")]
    log_events: Vec<PutEvent>,
}

#[derive(Deserialize)]
struct PutEvent {
    /// Milliseconds since the epoch.
    timestamp: i64,
    #[serde(rename = "message")]
    _message: IgnoredAny,
}

/// The answer to one awsJson1.1 request.
fn answer(operation: Option<&str>, body: &[u8], shared: &Counters) -> Response<Full<Bytes>> {
    let json = match operation {
        Some("PutLogEvents") => match serde_json::from_slice::<PutLogEvents>(body) {
            Ok(put) => {
                let now_ms = jiff::Timestamp::now().as_millisecond();
                if let Some(oldest) = put.log_events.iter().map(|e| e.timestamp).min() {
                    let lag = now_ms.saturating_sub(oldest).max(0) as u64;
                    shared.max_lag_ms.fetch_max(lag, Ordering::Relaxed);
                }
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
        // Every stream is empty: a follower without a checkpoint starts
        // from the container's first line.
        Some("GetLogEvents") => {
            r#"{"events":[],"nextForwardToken":"f/0","nextBackwardToken":"b/0"}"#.to_owned()
        }
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

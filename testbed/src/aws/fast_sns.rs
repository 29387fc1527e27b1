//! A fast loopback SNS endpoint for benchmarks.
//!
//! moto serves a few hundred requests per second (SPEC §8, §10): enough to
//! check behaviour, far too slow to measure a publisher aiming at 10,000
//! events/s. [`FastSns`] speaks just enough awsQuery for the AWS SDK's
//! `PublishBatch` (and `Publish`): it reads the entry ids of the form body
//! and answers, after a configurable latency (SPEC §9 uses 150 ms), with a
//! valid `PublishBatchResponse` listing every entry as `Successful`. It
//! checks nothing else (no signature, no limits: the strict proxy's job) and
//! keeps nothing but counters and, for FIFO batches, the message group ids
//! of each request in the order they were answered ([`FastSns::fifo_arrivals`]).
//!
//! It runs on its own thread and single-threaded runtime, like the strict
//! proxy, so it does not compete with the code under test for its runtime;
//! dropping it stops it.
//!
//! ```no_run
//! use std::time::Duration;
//! use kubeherald_testbed::aws::{FastSns, TestSdk};
//! let sns = FastSns::start(Duration::from_millis(150));
//! let client = TestSdk::new(sns.url()).sns();
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::loopback::LoopbackServer;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::CONTENT_TYPE;
use hyper::{Response, StatusCode};

/// Prefix of a `PublishBatch` entry's fields in the form body.
const BATCH_MEMBER: &str = "PublishBatchRequestEntries.member.";

/// What the SNS endpoint counts beyond requests.
#[derive(Default)]
struct Counters {
    entries: AtomicU64,
    message_ids: AtomicU64,
    /// Per FIFO request, in arrival order: its entries' message group ids.
    fifo_arrivals: Mutex<Vec<Vec<String>>>,
}

/// The fast SNS endpoint. See the module docs.
pub struct FastSns {
    server: LoopbackServer,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for FastSns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastSns").field("url", &self.url()).finish()
    }
}

impl FastSns {
    /// Starts an endpoint on `127.0.0.1:<free port>` answering after `latency`.
    pub fn start(latency: Duration) -> FastSns {
        let counters = Arc::new(Counters::default());
        let answering = counters.clone();
        let server = LoopbackServer::start(
            "fast-sns",
            latency,
            Box::new(move |_, body| answer(body, &answering)),
        );
        FastSns { server, counters }
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

    /// Messages accepted (batch entries plus single publishes).
    pub fn messages(&self) -> u64 {
        self.counters.entries.load(Ordering::Relaxed)
    }

    /// The message group ids of every `PublishBatch` that carried any, one
    /// list per request, in the order they were answered (with a fixed
    /// latency, the order they arrived).
    pub fn fifo_arrivals(&self) -> Vec<Vec<String>> {
        self.counters
            .fifo_arrivals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The most requests in progress at one moment.
    pub fn max_concurrent(&self) -> u64 {
        self.server.max_concurrent()
    }
}

/// The answer to one awsQuery request.
fn answer(body: &[u8], shared: &Counters) -> Response<Full<Bytes>> {
    let mut action = None;
    let mut ids = Vec::new();
    let mut groups = Vec::new();
    for (key, value) in form_urlencoded::parse(body) {
        if key == "Action" {
            action = Some(value.into_owned());
        } else if let Some(rest) = key.strip_prefix(BATCH_MEMBER)
            && rest.split('.').count() == 2
        {
            if rest.ends_with(".Id") {
                ids.push(value.into_owned());
            } else if rest.ends_with(".MessageGroupId") {
                groups.push(value.into_owned());
            }
        }
    }
    if !groups.is_empty() {
        shared
            .fifo_arrivals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(groups);
    }
    let request_id = shared.entries.load(Ordering::Relaxed);
    let xml = match action.as_deref() {
        Some("PublishBatch") => {
            shared
                .entries
                .fetch_add(ids.len() as u64, Ordering::Relaxed);
            let first = shared
                .message_ids
                .fetch_add(ids.len() as u64, Ordering::Relaxed);
            let members: String = ids
                .iter()
                .zip(first..)
                .map(|(id, n)| {
                    format!(
                        "<member><Id>{}</Id><MessageId>00000000-0000-4000-8000-{n:012x}</MessageId></member>",
                        escape(id)
                    )
                })
                .collect();
            format!(
                "<PublishBatchResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\">\
                 <PublishBatchResult><Successful>{members}</Successful><Failed/></PublishBatchResult>\
                 <ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></PublishBatchResponse>"
            )
        }
        Some("Publish") => {
            shared.entries.fetch_add(1, Ordering::Relaxed);
            let n = shared.message_ids.fetch_add(1, Ordering::Relaxed);
            format!(
                "<PublishResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\">\
                 <PublishResult><MessageId>00000000-0000-4000-8000-{n:012x}</MessageId></PublishResult>\
                 <ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></PublishResponse>"
            )
        }
        other => {
            return Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .header(CONTENT_TYPE, "text/xml")
                .body(Full::new(Bytes::from(format!(
                    "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidAction</Code>\
                     <Message>the fast SNS endpoint does not serve {}</Message></Error>\
                     <RequestId>{request_id}</RequestId></ErrorResponse>",
                    escape(other.unwrap_or("a request without Action"))
                ))))
                .expect("error answer");
        }
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "text/xml")
        .body(Full::new(Bytes::from(xml)))
        .expect("answer")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::TestSdk;
    use aws_sdk_sns::types::PublishBatchRequestEntry;

    #[tokio::test]
    async fn the_sdk_reads_every_entry_as_successful() {
        let sns = FastSns::start(Duration::from_millis(5));
        let client = TestSdk::new(sns.url()).max_attempts(1).sns();
        let entries: Vec<_> = (0..10)
            .map(|i| {
                PublishBatchRequestEntry::builder()
                    .id(format!("e-{i}"))
                    .message(format!("m{i} & <x>"))
                    .build()
                    .unwrap()
            })
            .collect();
        let answer = client
            .publish_batch()
            .topic_arn("arn:aws:sns:us-east-1:123456789012:bench")
            .set_publish_batch_request_entries(Some(entries))
            .send()
            .await
            .unwrap();
        let ids: Vec<&str> = answer.successful().iter().filter_map(|s| s.id()).collect();
        assert_eq!(ids, (0..10).map(|i| format!("e-{i}")).collect::<Vec<_>>());
        assert!(answer.failed().is_empty());
        assert_eq!((sns.requests(), sns.messages()), (1, 10));
    }
}

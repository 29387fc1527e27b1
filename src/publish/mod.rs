//! Talking to AWS: SNS for resource events, CloudWatch Logs for pod logs,
//! and stdout when neither is configured. One folder per sink, each split
//! like Vector's sinks: configuration, request builder (service limits
//! enforced while a request is built, STYLE 5, each a named constant with
//! its source), service, retry classification.
//!
//! ```text
//! publish/
//! ├── mod.rs          this map; re-exports the publisher thread
//! ├── thread.rs       the one publisher thread (binary and tests): SNS + log sink on one runtime
//! ├── aws/
//! │   ├── mod.rs      SDK configuration shared by every AWS client
//! │   └── error.rs    the one reading of AWS SDK errors (throttling, 5xx, network, codes)
//! ├── sns/
//! │   ├── mod.rs      the events publisher: flow, shutdown, `run`
//! │   ├── config.rs   `Sink` (SNS or stdout), `PublisherOptions`
//! │   ├── message.rs  one event → one message: body, attributes, 256 KiB rule
//! │   ├── batch.rs    PublishBatch: ≤ 10 entries, ≤ 262,144 bytes, FIFO lanes
//! │   ├── service.rs  spool reads, in-flight window, batch tasks, acknowledgements
//! │   ├── retry.rs    PublishBatch failures and `Failed` entries: retry, split, reject
//! │   └── report.rs   counting and logging
//! ├── cloudwatch/
//! │   ├── mod.rs      the log sink: flow, shutdown, `run_log_publisher`
//! │   ├── config.rs   `LogTarget` (CloudWatch or stdout), `LogPublisherOptions`, `LogSinkConfig`
//! │   ├── batch.rs    PutLogEvents: 10,000 events, 1,048,576 bytes, 24 h, order; parts
//! │   ├── scheduler.rs which stream sends next: due, one put per stream, in-flight limit, draining
//! │   ├── life.rs     stream life: ensure group → create stream → put; acknowledgement
//! │   ├── service.rs  spool reads, put tasks, checkpoint commits, shutdown
//! │   ├── retry.rs    what is retried, recreated or given up
//! │   ├── lookup.rs   the last event of a stream, for followers without a checkpoint
//! │   └── report.rs   counting and logging
//! ├── dead_letter.rs  events SNS will not take: kept beside the spool, replayed on request
//! ├── stdout.rs       both stdout sinks (events, log lines), sharing `pacing::read_batch`
//! └── pacing.rs       sleeps that end at shutdown, rate-limited warnings, spool gauges
//! ```
//!
//! What may import what: `aws` imports only the SDK; each sink's modules
//! import `aws`, `pacing` and their own siblings; `stdout` imports the two
//! sinks' configuration and counters; `thread` imports both sinks. Outside
//! `publish`, only `app` imports it (it hands [`cloudwatch::CloudWatchLookup`]
//! to the log followers as a `logs::LastEventLookup`); `publish` imports
//! `spool`, `record`, `config`, `metrics`, `names`, `backoff`,
//! `kube_api::error_chain` (to print an error with its causes), and from
//! `logs` only the checkpoint store and the lookup interface.

pub mod aws;
pub mod cloudwatch;
pub mod concurrency;
pub mod dead_letter;
pub mod pacing;
pub mod sns;
pub mod stdout;
mod thread;

pub use self::thread::{PublisherError, PublisherThread, spawn_publisher_thread};

//! The AWS half of the test bed: moto, a strict limits proxy in front of it,
//! and helpers to talk to both.
//!
//! - [`Moto`]: a moto server (SNS, SQS, CloudWatch Logs) in a Python child
//!   process on a free loopback port; [`Moto::shared`] for one per test process.
//! - [`StrictProxy`]: forwards to moto but answers, with AWS's own error,
//!   every request real AWS would refuse and moto accepts ([`rules`]); injects
//!   faults, latency and outages; counts requests and refusals.
//! - [`TestSdk`]: SDK configuration with static credentials, region, endpoint,
//!   retries and timeouts, plus the same as environment for child processes.
//! - [`SqsSubscription`]: a queue subscribed to a topic with a filter policy,
//!   drained into [`Delivered`] messages.
//! - [`FastSns`]: a fast loopback SNS endpoint (every `PublishBatch` entry
//!   successful after a set latency) for benchmarks, where moto is too slow.
//! - [`stored_events`]: a CloudWatch stream read back, for assertions.
//! - [`FastLogs`]: the same for CloudWatch Logs (creates, retention and
//!   `PutLogEvents` answered after a set latency, events counted).
//!
//! A typical test:
//!
//! ```no_run
//! # async fn demo() {
//! use kubeherald_testbed::aws::{unique_name, Moto, StrictProxy, TestSdk};
//! let moto = Moto::shared();
//! let proxy = StrictProxy::start(moto.url());
//! let sns = TestSdk::new(proxy.url()).sns();
//! let topic = sns.create_topic().name(unique_name("events")).send().await.unwrap();
//! // … run the code under test against proxy.url() …
//! proxy.assert_nothing_refused();
//! # }
//! ```

pub mod fast_logs;
pub mod fast_sns;
pub mod logs;
pub(crate) mod loopback;
pub mod moto;
pub mod rules;
pub mod sdk;
pub mod sqs;
pub mod strict;

pub use fast_logs::FastLogs;
pub use fast_sns::FastSns;
pub use logs::{stored_events, stored_messages};
pub use moto::Moto;
pub use rules::{Refusal, Rule};
pub use sdk::{TestSdk, sdk_config};
pub use sqs::{Delivered, SqsSubscription, SubscribeOptions};
pub use strict::{Fault, StrictConfig, StrictProxy};

/// A resource name unique to this process and call (`{prefix}-{pid}-{n}-{time}`),
/// valid for SNS topics, SQS queues and CloudWatch groups and streams. Tests
/// sharing one moto use it to stay apart.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = jiff::Timestamp::now().as_millisecond() % 1_000_000_000;
    format!("{prefix}-{}-{n}-{t}", std::process::id())
}

//! What the SNS publisher is configured with: where events go ([`Sink`])
//! and its tuning ([`PublisherOptions`]). May import `publish::aws` and the
//! configuration types of [`crate::config`].

use std::io::Write;
use std::time::Duration;

use aws_config::SdkConfig;

use crate::config::{SnsConfig, SnsRoute, TopicArn};
use crate::publish::aws::AwsOptions;
#[cfg(doc)]
use crate::publish::aws::load_sdk_config;
use crate::publish::dead_letter::DeadLetters;

/// Where events go.
pub enum Sink {
    /// `PublishBatch` to this topic. With `sdk: None` the SDK configuration
    /// is loaded from the environment by [`load_sdk_config`] (default region:
    /// the topic's) on the publisher's thread.
    Sns {
        topic: TopicArn,
        /// The route topics' own accounts and regions (`sns.routes`): a
        /// route whose [`SnsRoute::access`] is not the process's own gets
        /// its own client.
        routes: Vec<SnsRoute>,
        sdk: Option<Box<SdkConfig>>,
    },
    /// One JSON line per event (`{"attributes":{…},"object":…}`), flushed
    /// before the records are acknowledged. Used when no topic is configured.
    Stdout(Box<dyn Write + Send>),
}

impl Sink {
    /// SNS when a topic is configured, else the process's stdout.
    pub fn from_config(sns: Option<&SnsConfig>) -> Sink {
        match sns {
            Some(sns) => Sink::Sns {
                topic: sns.topic_arn.clone(),
                routes: sns.routes.clone(),
                sdk: None,
            },
            None => Sink::Stdout(Box::new(std::io::stdout())),
        }
    }
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sink::Sns { topic, .. } => f.debug_struct("Sns").field("topic", topic).finish(),
            Sink::Stdout(_) => f.write_str("Stdout"),
        }
    }
}

/// Tuning of the publisher.
#[derive(Debug, Clone)]
pub struct PublisherOptions {
    /// `PublishBatch` requests in flight at most: the ceiling of the
    /// adaptive limit ([`crate::publish::concurrency`]). Throughput is about
    /// `in flight × 10 / latency`: 20,000 events/s at SPEC §9's 150 ms
    /// needs 300; the default leaves room for partly filled batches.
    pub max_in_flight: usize,
    /// Bytes the batches outstanding may hold (as
    /// `Entry::buffered_bytes` counts them): the publisher's memory bound.
    /// 20,000 events/s of 2 KiB objects (messages of about 1.8 KiB) at
    /// 150 ms hold about 16 MiB.
    pub max_buffered_bytes: usize,
    /// Records taken from the spool per read.
    pub read_batch: usize,
    /// How long one read waits for a first record (also the idle period of
    /// the spool gauges).
    pub read_wait: Duration,
    /// First and largest delay of the publisher's own retries.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// How long shutdown awaits requests in flight.
    pub shutdown_deadline: Duration,
    /// How often the spool gauges are refreshed.
    pub stats_interval: Duration,
    /// SDK timeouts and retries (used when the SDK config is loaded here).
    pub aws: AwsOptions,
    /// Attempts of a batch the topic keeps refusing (authorization, KMS,
    /// unknown topic) before its events become dead letters: refusals an
    /// operator must fix must not pin the spool forever.
    pub refused_attempts: u32,
    /// Where events SNS will not take go ([`DeadLetters`]).
    pub dead_letters: DeadLetters,
}

impl Default for PublisherOptions {
    fn default() -> Self {
        PublisherOptions {
            max_in_flight: 512,
            max_buffered_bytes: crate::config::MemoryConfig::default().sns_in_flight as usize,
            read_batch: 500,
            read_wait: Duration::from_millis(500),
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(10),
            shutdown_deadline: Duration::from_secs(10),
            stats_interval: Duration::from_secs(1),
            aws: AwsOptions::default(),
            // With retry_max 10 s: about a minute and a half of refusals.
            refused_attempts: 12,
            dead_letters: DeadLetters::default(),
        }
    }
}

//! What the log sink is configured with: where lines go ([`LogTarget`]),
//! its tuning ([`LogPublisherOptions`]), the checkpoint store it advances
//! ([`LogSinkConfig`]), and why it can stop ([`LogPublisherError`]). May
//! import `publish::aws`, `cloudwatch::batch`'s limits, the configuration
//! and the checkpoint store.

use std::io::Write;
use std::time::Duration;

use aws_config::SdkConfig;

#[cfg(doc)]
use super::batch::MAX_BATCH_BYTES;
use super::batch::MAX_EVENT_BYTES;
use crate::config::{LogRoute, LogSink, LogsConfig};
use crate::logs::CheckpointStore;
use crate::publish::aws::AwsOptions;
#[cfg(doc)]
use crate::publish::aws::load_sdk_config;
use crate::spool::SpoolError;

/// Where log lines go.
// Built once per process: the size of the CloudWatch variant (an SdkConfig)
// costs nothing, boxing it would only burden callers.
#[allow(clippy::large_enum_variant)]
pub enum LogTarget {
    /// CloudWatch Logs, groups `/{prefix}-{cluster}` with `retention_days`
    /// for the default route, and the tenant `routes` (`logs.routes`) each
    /// in its own groups and account. With `sdk: None` the SDK
    /// configuration is loaded from the environment by [`load_sdk_config`]
    /// (default region `region`) when the sink starts.
    CloudWatch {
        prefix: String,
        retention_days: u32,
        routes: Vec<LogRoute>,
        region: String,
        sdk: Option<SdkConfig>,
    },
    /// One JSON line per log line (`{"cluster":…,"namespace":…,"pod":…,
    /// "container":…,"restart_count":…,"timestamp":RFC 3339,"message":…}`),
    /// flushed before the records are acknowledged. Used when no CloudWatch
    /// is configured.
    Stdout(Box<dyn Write + Send>),
}

impl LogTarget {
    /// CloudWatch when a `logs` section is configured (region from the
    /// environment, else `default_region`), else the process's stdout.
    pub fn from_config(logs: Option<&LogsConfig>, default_region: &str) -> LogTarget {
        match logs {
            Some(logs) if logs.sink == LogSink::CloudWatch => LogTarget::CloudWatch {
                prefix: logs.prefix.clone(),
                retention_days: logs.retention_days,
                routes: logs.routes.clone(),
                region: default_region.to_owned(),
                sdk: None,
            },
            Some(_) | None => LogTarget::Stdout(Box::new(std::io::stdout())),
        }
    }
}

impl std::fmt::Debug for LogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogTarget::CloudWatch {
                prefix,
                retention_days,
                routes,
                region,
                ..
            } => f
                .debug_struct("CloudWatch")
                .field("prefix", prefix)
                .field("retention_days", retention_days)
                .field(
                    "routes",
                    &routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
                )
                .field("region", region)
                .finish_non_exhaustive(),
            LogTarget::Stdout(_) => f.write_str("Stdout"),
        }
    }
}

/// Tuning of the log sink.
#[derive(Debug, Clone)]
pub struct LogPublisherOptions {
    /// `PutLogEvents` (and create) requests in flight at most, across streams.
    pub max_in_flight: usize,
    /// Records taken from the spool per read.
    pub read_batch: usize,
    /// How long one read waits for a first record.
    pub read_wait: Duration,
    /// How long a line may wait for more lines of its stream before its batch
    /// is sent anyway.
    pub linger: Duration,
    /// Bound on lines read and not yet acknowledged, counted as record plus
    /// message bytes plus a fixed overhead per line.
    pub max_buffered_bytes: usize,
    /// CloudWatch's per-event limit, message + 26 bytes; longer lines are
    /// split. At most [`MAX_BATCH_BYTES`].
    pub max_event_bytes: usize,
    /// First and largest delay of the sink's own retries.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// How long shutdown awaits requests in flight.
    pub shutdown_deadline: Duration,
    /// How often gauges are refreshed, idle streams forgotten and checkpoints
    /// considered for a commit.
    pub stats_interval: Duration,
    /// A stream without lines for this long is forgotten (it is created
    /// again, `AlreadyExists`, if lines come back).
    pub idle_stream_expiry: Duration,
    /// How long a parked log group waits before it is tried again (a group
    /// that refused a request for a reason retrying will not heal).
    pub park_duration: Duration,
    /// Paces the recovery's `GetLogEvents` after an unclean stop: give it
    /// the followers' limiter, the quota (about 25 a second) is per account.
    pub lookups: super::LookupLimiter,
    /// SDK timeouts and retries (used when the SDK config is loaded here).
    pub aws: AwsOptions,
}

impl Default for LogPublisherOptions {
    fn default() -> Self {
        LogPublisherOptions {
            max_in_flight: 256,
            read_batch: 2_000,
            read_wait: Duration::from_millis(200),
            linger: Duration::from_secs(1),
            max_buffered_bytes: crate::config::MemoryConfig::default().logs_in_flight as usize,
            max_event_bytes: MAX_EVENT_BYTES,
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(10),
            shutdown_deadline: Duration::from_secs(10),
            stats_interval: Duration::from_secs(1),
            idle_stream_expiry: Duration::from_secs(600),
            lookups: super::LookupLimiter::new(10),
            park_duration: Duration::from_secs(300),
            aws: AwsOptions::default(),
        }
    }
}

/// Everything the sink needs besides its spool reader and shutdown token.
#[derive(Debug)]
pub struct LogSinkConfig {
    pub target: LogTarget,
    /// Advanced after each accepted put; the followers read it.
    pub checkpoints: CheckpointStore,
    pub options: LogPublisherOptions,
}

/// Why the log sink stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum LogPublisherError {
    /// Reading the logs spool failed in a way retrying cannot fix.
    #[error("reading the logs spool")]
    Spool {
        #[source]
        source: SpoolError,
    },
}

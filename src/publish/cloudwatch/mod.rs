//! The log sink: takes [`LogLine`](crate::record::LogLine)s from the logs
//! spool and ships them to CloudWatch Logs with many `PutLogEvents` in flight
//! across streams, or hands them to the stdout sink
//! ([`crate::publish::stdout`]) when no CloudWatch is configured (SPEC §4).
//! It runs on the publisher thread ([`crate::publish::spawn_publisher_thread`]).
//!
//! | module | owns |
//! |---|---|
//! | [`config`](LogTarget) | where lines go, the tuning, the checkpoint store, [`LogPublisherError`] |
//! | `destination` | each route's group naming, retention and client (`logs.routes`, another account by STS AssumeRole) |
//! | [`batch`] | PutLogEvents limits (10,000 events, 1,048,576 bytes, 24 h, order), parts, batch assembly |
//! | `scheduler` | which stream sends next: due by size, linger or urgency; one put per stream; in-flight limit; draining |
//! | `life` | the stream life: ensure group → create stream → put, then the checkpoint advance |
//! | `commit` | acknowledgements only after the checkpoints that cover them are durable |
//! | `recovery` | after an unclean stop: a stream's events after its checkpoint, paced |
//! | `service` | the loop: spool reads, put tasks, checkpoint commits, shutdown |
//! | [`retry`] | what is retried, recreated or given up (on [`crate::publish::aws::error`]) |
//! | [`lookup`](last_shipped_from_cloudwatch) | the last event of a stream, for followers without a checkpoint |
//! | `report` | counting and logging, one function per condition |
//!
//! May import `publish::{aws, pacing, stdout}`, the spool, the record types,
//! the configuration, the metrics and `crate::logs`' checkpoint types
//! ([`Checkpoint`](crate::logs::Checkpoint), [`CheckpointStore`](crate::logs::CheckpointStore),
//! [`ContainerKey`](crate::logs::ContainerKey)).
//!
//! # Flow
//!
//! ```text
//! logs SpoolReader ──▶ decode, split long lines ──▶ per-stream pending queue
//!       ▲                (undecodable: count, log, ack)        │ linger / full batch
//!       │                                                      ▼
//!       │                          ready streams (FIFO) ──▶ put task (≤ max_in_flight)
//!       │                                                      │ batch_len(): CloudWatch's limits
//!       └──── ack, then checkpoint advance ◀── PutLogEvents accepted
//! ```
//!
//! - Streams: one per container instance ([`ContainerKey`](crate::logs::ContainerKey)), group
//!   `/{prefix}-{cluster}` and stream `{namespace}/{pod}/{container}/{restart}`
//!   from [`crate::names`]. A stream has at most one put in flight, so its
//!   lines reach CloudWatch in the log's order and its checkpoint only moves
//!   forward; puts of different streams run concurrently, up to
//!   [`LogPublisherOptions::max_in_flight`].
//! - Batching: a stream's pending lines are sent when a full batch is
//!   waiting or its oldest line has waited [`LogPublisherOptions::linger`];
//!   1,000 streams at 100 lines/s then make about 1,000 puts/s of about 100
//!   events, far inside CloudWatch's per-account PutLogEvents quota, where a
//!   put per line would not be. Limits are enforced while a batch is built
//!   ([`batch`]).
//! - Stream life (`life::Phase`): make sure the group exists (once per group in
//!   this process, with its retention policy) → create the stream → put;
//!   `ResourceAlreadyExistsException` is success, `ResourceNotFoundException`
//!   on a put goes back to creating the stream, and on CreateLogStream back
//!   to creating the group.
//! - Acknowledgement: when the put carrying a line's last part succeeded,
//!   the checkpoint of its container instance advances to it; its spool
//!   record is acknowledged after the next durable commit of the
//!   checkpoints (at most `sync_interval`, one fsync for every stream).
//! - Exactly once across `kill -9` (SPEC §4): a line at or before its
//!   stream's position is a duplicate and is not sent; after an unclean stop
//!   (no clean-shutdown mark in the checkpoint store) the stream's events
//!   after its durable checkpoint are read back once, paced at
//!   [`LogPublisherOptions::lookups`] (the process's one [`LookupLimiter`]), and the lines the
//!   spool delivers again that equal them are not sent again. Events CloudWatch rejects as too old,
//!   too new or expired (`rejectedLogEventsInfo`) are counted and logged, not
//!   retried; the rest of the batch counts as shipped.
//! - Failures: classified in [`retry`]; retried with
//!   [`Backoff`](crate::backoff::Backoff) forever while the spool holds the backlog, except invalid
//!   requests (a bug), which are counted, logged and acknowledged.
//! - Memory: lines read but not yet acknowledged are bounded by
//!   [`LogPublisherOptions::max_buffered_bytes`]; at the bound reading stops
//!   until half of it is acknowledged, the backlog waits in the spool, and
//!   every stream sends what it has without lingering (with a backlog,
//!   batches cannot get fuller by waiting).
//!
//! # Shutdown (SPEC §6, STYLE 9)
//!
//! On cancellation the sink stops reading, sends every pending line at once
//! (no linger), awaits the puts until [`LogPublisherOptions::shutdown_deadline`]
//! (a put that fails is not retried any more), aborts what is left, commits
//! the checkpoints and returns. Lines not acknowledged by then are delivered
//! again on the next start.

pub mod batch;
mod commit;
mod config;
mod destination;
mod life;
mod lookup;
mod recovery;
pub(crate) mod report;
pub mod retry;
mod scheduler;
mod service;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info};

use self::commit::Commits;
pub use self::config::{LogPublisherError, LogPublisherOptions, LogSinkConfig, LogTarget};
pub use self::destination::{Destination, LogDestinations};
use self::life::Shared;
pub use self::lookup::{
    CloudWatchLookup, LastShipped, LookupLimiter, last_shipped_from_cloudwatch, last_shipped_paced,
    logs_client, logs_destinations,
};
use self::service::CloudWatchSink;
use crate::config::LogRoute;
use crate::publish::aws::load_sdk_config;
use crate::publish::concurrency::AdaptiveConcurrency;
use crate::publish::pacing::WarningLimiter;
use crate::publish::stdout;
use crate::spool::SpoolReader;

/// Runs the log sink on the current runtime (it spawns its put tasks there)
/// until `shutdown` is cancelled; see the module docs.
pub async fn run_log_publisher(
    reader: SpoolReader,
    config: LogSinkConfig,
    shutdown: CancellationToken,
) -> Result<(), LogPublisherError> {
    let LogSinkConfig {
        target,
        checkpoints,
        options,
    } = config;
    match target {
        LogTarget::CloudWatch {
            prefix,
            retention_days,
            routes,
            region,
            sdk,
        } => {
            let span = tracing::info_span!("log_sink", sink = "cloudwatch", prefix = %prefix);
            async move {
                let sdk = match sdk {
                    Some(sdk) => sdk,
                    None => load_sdk_config(&region, &options.aws).await,
                };
                info!(
                    retention_days,
                    routes = routes.len(),
                    max_in_flight = options.max_in_flight,
                    "shipping pod logs to CloudWatch Logs"
                );
                let all = LogRoute::with_default(&prefix, retention_days, &routes);
                let shared = Arc::new(Shared {
                    destinations: LogDestinations::load(&all, &sdk).await,
                    lookups: options.lookups.clone(),
                    shutdown,
                    concurrency: AdaptiveConcurrency::new("cloudwatch", options.max_in_flight),
                    commits: Commits::new(checkpoints),
                    warnings: WarningLimiter::new(),
                    options,
                });
                CloudWatchSink::new(shared).run(reader).await
            }
            .instrument(span)
            .await
        }
        LogTarget::Stdout(writer) => {
            let span = tracing::info_span!("log_sink", sink = "stdout");
            stdout::run_logs(reader, writer, checkpoints, options, shutdown)
                .instrument(span)
                .await
        }
    }
}

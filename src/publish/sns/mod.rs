//! The SNS publisher: takes resource events from the spool and publishes
//! them to SNS with many `PublishBatch` requests in flight, or hands them to
//! the stdout sink ([`crate::publish::stdout`]) when no topic is configured
//! (SPEC §1, §3). It runs on the publisher thread
//! ([`crate::publish::spawn_publisher_thread`]).
//!
//! | module | owns |
//! |---|---|
//! | [`config`](Sink) | where events go ([`Sink`]) and the tuning ([`PublisherOptions`]) |
//! | [`message`] | one event → one SNS message: body, attributes, FIFO ids, the 256 KiB rule |
//! | [`batch`] | `PublishBatch` requests: ≤ 10 entries, ≤ 262,144 bytes, FIFO lanes |
//! | `service` | the loop: spool reads, in-flight window, per-batch tasks, acknowledgements |
//! | [`retry`] | what is retried, split or rejected (on [`crate::publish::aws::error`]) |
//! | `report` | counting and logging, one function per condition |
//!
//! May import `publish::{aws, pacing, stdout}`, the spool, the record types,
//! the configuration and the metrics.
//!
//! # Flow
//!
//! ```text
//! SpoolReader ──records──▶ decode + message::build ──▶ BatchBuilder
//!     ▲                       (undecodable: count, log, ack)      │ ≤ 10 entries, ≤ 262,144 bytes
//!     │                                                           ▼
//!     └──── ack after SNS accepted ◀── batch task (one per batch, ≤ max_in_flight)
//! ```
//!
//! - A record is acknowledged in the spool only once SNS listed it as
//!   `Successful` (or rejected it for good, counted and logged). Until then
//!   its [`Delivery`](crate::spool::Delivery) travels with the batch;
//!   dropped (shutdown, abort), the record is delivered again.
//! - Reading stops while `max_in_flight` batches are outstanding: the
//!   backlog stays in the spool, not in memory.
//! - Failures are classified in [`retry`]; every retry waits on a
//!   [`Backoff`](crate::backoff::Backoff) and retries go on forever while the
//!   spool holds the backlog.
//! - FIFO topics: SNS keeps a message group in order only if the publisher
//!   sends it in order. A group is therefore pinned to one *lane* (a hash of
//!   the group id), a lane's batches run one after another (each waits for
//!   the previous one, retries included), and a batch holds at most one
//!   message per group, so a failed entry can never be overtaken by a later
//!   change of the same object.
//!
//! # Shutdown (SPEC §6, STYLE 9)
//!
//! On cancellation the publisher stops reading, drops batches still being
//! built and batches waiting in a backoff (their records stay in the spool),
//! awaits the requests in flight until [`PublisherOptions::shutdown_deadline`],
//! aborts what is left, and returns. Records not acknowledged by then are
//! delivered again on the next start.

pub mod batch;
mod config;
pub mod message;
pub(crate) mod report;
pub mod retry;
mod service;

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info};

pub use self::batch::{MAX_BATCH_BYTES, MAX_BATCH_ENTRIES};
pub use self::config::{PublisherOptions, Sink};
use self::service::{SnsPublisher, TopicClients};
use crate::publish::aws::load_sdk_config;
use crate::publish::stdout;
pub use crate::publish::{PublisherError, PublisherThread as PublisherHandle};
use crate::spool::SpoolReader;

/// Starts the events publisher alone on its own OS thread: the publisher
/// thread of [`crate::publish::spawn_publisher_thread`] without a log sink.
/// It runs until `shutdown` is cancelled (see the module docs for what
/// happens then).
pub fn spawn_publisher(
    reader: SpoolReader,
    sink: Sink,
    options: PublisherOptions,
    shutdown: CancellationToken,
) -> Result<PublisherHandle, PublisherError> {
    crate::publish::spawn_publisher_thread(reader, sink, None, options, shutdown)
        .map_err(|source| PublisherError::Start { source })
}

/// The publisher's loop, for a caller that has a runtime already. Spawns
/// tasks on the current runtime.
pub async fn run(
    reader: SpoolReader,
    sink: Sink,
    options: PublisherOptions,
    shutdown: CancellationToken,
) -> Result<(), PublisherError> {
    match sink {
        Sink::Sns { topic, routes, sdk } => {
            let span = tracing::info_span!("publisher", topic = %topic);
            async move {
                let sdk = match sdk {
                    Some(sdk) => *sdk,
                    None => load_sdk_config(topic.region(), &options.aws).await,
                };
                let clients = TopicClients::new(&sdk, &routes).await;
                info!(
                    fifo = topic.is_fifo(),
                    max_in_flight = options.max_in_flight,
                    "publishing to SNS"
                );
                SnsPublisher::new(clients, &topic, options, shutdown)
                    .run(reader)
                    .await
            }
            .instrument(span)
            .await
        }
        Sink::Stdout(writer) => {
            let span = tracing::info_span!("publisher", sink = "stdout");
            stdout::run_events(reader, writer, options, shutdown)
                .instrument(span)
                .await
        }
    }
}

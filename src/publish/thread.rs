//! The publisher thread (SPEC §1): one OS thread, one single-threaded tokio
//! runtime, the SNS publisher and the log sink side by side with their
//! requests in flight. The binary ([`crate::app`]) and the tests start the
//! same thread through [`spawn_publisher_thread`].
//!
//! May import `publish::{sns, cloudwatch}` and the spool.

use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::publish::cloudwatch::{self, LogPublisherError, LogSinkConfig};
use crate::publish::sns::{self, PublisherOptions, Sink};
use crate::spool::{SpoolError, SpoolReader};

/// Why the publisher thread stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum PublisherError {
    /// The publisher's thread or runtime could not be started. Not retryable.
    #[error("starting the publisher")]
    Start {
        #[source]
        source: std::io::Error,
    },
    /// Reading the events spool failed in a way retrying cannot fix.
    #[error("reading the spool")]
    Spool {
        #[source]
        source: SpoolError,
    },
    /// The log sink stopped (its spool failed in a way retrying cannot fix);
    /// the events publisher ran on until shutdown.
    #[error("the log sink stopped")]
    Logs {
        #[source]
        source: LogPublisherError,
    },
    /// The publisher's thread panicked.
    #[error("the publisher thread panicked")]
    Panicked,
}

/// The running publisher thread.
#[derive(Debug)]
pub struct PublisherThread {
    thread: std::thread::JoinHandle<Result<(), PublisherError>>,
}

impl PublisherThread {
    /// Waits for the thread to return (after the shutdown token fired). An
    /// error has been logged by the thread when it happened.
    pub fn join(self) -> Result<(), PublisherError> {
        self.thread.join().unwrap_or(Err(PublisherError::Panicked))
    }

    /// Whether the thread has returned.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

/// Starts the publisher thread: resource events from `events` to `sink`
/// (tuned by `options`) and, with `logs`, log lines from its reader to its
/// sink, until `stop` is cancelled; then each drains as its module docs say.
/// An error of either is logged when it happens and the other runs on; the
/// first one (events before logs) is what [`PublisherThread::join`] returns.
/// `Err` only if the OS thread cannot be started.
pub fn spawn_publisher_thread(
    events: SpoolReader,
    sink: Sink,
    logs: Option<(SpoolReader, LogSinkConfig)>,
    options: PublisherOptions,
    stop: CancellationToken,
) -> std::io::Result<PublisherThread> {
    let thread = std::thread::Builder::new()
        .name("publisher".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(source) => {
                    error!(error = %source, "cannot start the publisher's runtime; nothing will be published");
                    return Err(PublisherError::Start { source });
                }
            };
            runtime.block_on(run(events, sink, logs, options, stop))
        })?;
    Ok(PublisherThread { thread })
}

/// What the publisher thread runs, on the current runtime.
async fn run(
    events: SpoolReader,
    sink: Sink,
    logs: Option<(SpoolReader, LogSinkConfig)>,
    options: PublisherOptions,
    stop: CancellationToken,
) -> Result<(), PublisherError> {
    let events = async {
        let result = sns::run(events, sink, options, stop.clone()).await;
        if let Err(err) = &result {
            error!(error = %err, "the SNS publisher stopped");
        }
        result
    };
    let logs = async {
        let Some((reader, config)) = logs else {
            return Ok(());
        };
        cloudwatch::run_log_publisher(reader, config, stop.clone())
            .await
            .map_err(|source| {
                error!(error = %source, "the CloudWatch Logs publisher stopped");
                PublisherError::Logs { source }
            })
    };
    let (events, logs) = tokio::join!(events, logs);
    events.and(logs)
}

//! The CloudWatch Logs service: the sink's loop. It reads the logs spool
//! into the [`Scheduler`], starts one task per [`Put`] the scheduler hands
//! out ([`ship`] steps the stream's life), reports each task's end back, and
//! commits checkpoints on the blocking pool. Shutdown: stop reading, send
//! everything pending, await the puts until the deadline, abort the rest,
//! commit the checkpoints.
//!
//! May import every other `cloudwatch` module, `publish::pacing`, the spool
//! and the metrics.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{Instrument, error, warn};

use super::LogPublisherError;
use super::life::{Done, Shared, ship};
use super::report::count_error;
use super::scheduler::{Put, Scheduler};
use crate::backoff::Backoff;
use crate::metrics::metrics;
use crate::publish::pacing::{SpoolGauges, sleep_or_cancel};
use crate::spool::SpoolReader;

pub(super) struct CloudWatchSink {
    shared: Arc<Shared>,
    scheduler: Scheduler,
    tasks: JoinSet<Done>,
    /// Per running task: its stream and the buffered bytes it holds.
    task_streams: HashMap<tokio::task::Id, (u64, usize)>,
    /// A checkpoint commit running on the blocking pool.
    committing: Option<tokio::task::JoinHandle<()>>,
    gauges: SpoolGauges,
}

impl CloudWatchSink {
    pub(super) fn new(shared: Arc<Shared>, prefix: String) -> Self {
        CloudWatchSink {
            gauges: SpoolGauges::new(
                shared.options.stats_interval,
                &metrics().log_spool_bytes,
                &metrics().log_spool_records,
                &metrics().log_oldest_unshipped_seconds,
            ),
            scheduler: Scheduler::new(prefix, &shared.options),
            shared,
            tasks: JoinSet::new(),
            task_streams: HashMap::new(),
            committing: None,
        }
    }

    pub(super) async fn run(mut self, mut reader: SpoolReader) -> Result<(), LogPublisherError> {
        let options = self.shared.options.clone();
        let shutdown = self.shared.shutdown.clone();
        let mut spool_backoff = Backoff::new(options.retry_initial, options.retry_max);
        let mut tick = tokio::time::interval(options.stats_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drain_deadline = None;
        let outcome = loop {
            self.dispatch();
            if self.scheduler.is_drained() {
                break Ok(());
            }
            if self.scheduler.apply_memory_bound() {
                continue;
            }
            let can_read = self.scheduler.can_read();
            let next_timer = self.scheduler.next_timer();
            tokio::select! {
                // Draining began exactly when the deadline was set.
                _ = shutdown.cancelled(), if drain_deadline.is_none() => {
                    self.scheduler.start_draining();
                    drain_deadline = Some(Instant::now() + options.shutdown_deadline);
                }
                _ = sleep_until_opt(drain_deadline), if drain_deadline.is_some() => break Ok(()),
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => self.finish(done),
                read = reader.next_batch_async(options.read_batch, options.read_wait), if can_read => {
                    match read {
                        Ok(deliveries) => {
                            spool_backoff.reset();
                            self.scheduler.ingest(deliveries, Instant::now());
                        }
                        Err(source) if source.is_retryable() => {
                            count_error("spool");
                            warn!(error = %source, "reading the logs spool failed; retrying");
                            // Cancelled, the next turn starts the shutdown.
                            sleep_or_cancel(spool_backoff.next_delay(), &shutdown).await;
                        }
                        Err(source) => break Err(LogPublisherError::Spool { source }),
                    }
                }
                _ = sleep_until_opt(next_timer), if next_timer.is_some() => self.scheduler.fire_timers(Instant::now()),
                _ = tick.tick() => {
                    self.gauges.update(&reader, false);
                    self.scheduler.expire_idle_streams(Instant::now());
                    self.commit_checkpoints_if_due();
                }
            }
        };
        if !self.tasks.is_empty() {
            warn!(
                puts = self.tasks.len(),
                "shutdown deadline reached; lines still in flight are left in the logs spool"
            );
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
        // Pending lines are dropped here: their records stay in the spool.
        self.scheduler.clear();
        if let Some(commit) = self.committing.take() {
            let _ = commit.await;
        }
        if let Err(error) = self.shared.checkpoints.flush() {
            warn!(error = %error, "committing log checkpoints failed");
        }
        self.gauges.update(&reader, true);
        outcome
    }

    /// Starts a task for every put the scheduler hands out.
    fn dispatch(&mut self) {
        while let Some(Put {
            stream,
            group,
            name,
            phase,
            batch,
            cost,
        }) = self.scheduler.next_put()
        {
            let task = ship(self.shared.clone(), group, name, phase, batch);
            let handle = self.tasks.spawn(task.in_current_span());
            self.task_streams.insert(handle.id(), (stream, cost));
        }
    }

    /// A put task ended: the scheduler learns how.
    fn finish(&mut self, done: Result<(tokio::task::Id, Done), tokio::task::JoinError>) {
        let (task, done) = match done {
            Ok((task, done)) => (task, Some(done)),
            Err(error) => {
                // A panic is a bug: the batch's records went back to the
                // spool and come again (after newer lines of the stream).
                if error.is_panic() {
                    error!(error = %error, "a log put task panicked; its lines will be sent again");
                }
                (error.id(), None)
            }
        };
        let Some((stream, cost)) = self.task_streams.remove(&task) else {
            return;
        };
        self.scheduler.finished(stream, cost, done, Instant::now());
    }

    /// Commits checkpoints on the blocking pool (a durable commit waits for
    /// the disk), one commit at a time.
    fn commit_checkpoints_if_due(&mut self) {
        if self.committing.as_ref().is_some_and(|c| !c.is_finished()) {
            return;
        }
        let checkpoints = self.shared.checkpoints.clone();
        self.committing = Some(tokio::task::spawn_blocking(move || {
            if let Err(error) = checkpoints.flush_if_due() {
                warn!(error = %error, "committing log checkpoints failed; retrying later");
            }
        }));
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

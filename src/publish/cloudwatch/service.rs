//! The CloudWatch Logs service: the sink's loop. It reads the logs spool
//! into the [`Scheduler`], starts one task per [`Put`] the scheduler hands
//! out ([`ship`] steps the stream's life) and one per recovery lookup,
//! reports each task's end back, and commits checkpoints (then acknowledges
//! their lines) on the blocking pool. Shutdown: stop reading, send
//! everything pending, await the puts until the deadline, abort the rest,
//! commit the checkpoints, and mark the stop clean when no put was cut off.
//!
//! May import every other `cloudwatch` module, `publish::pacing`, the spool
//! and the metrics.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{Instrument, error, warn};

use super::LogPublisherError;
use super::life::{Done, Shared, ship};
use super::recovery::{StoredEvent, recover};
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
    /// Recovery lookups running: stream and what CloudWatch holds after its
    /// checkpoint (`None` at shutdown).
    lookups: JoinSet<(u64, Option<VecDeque<StoredEvent>>)>,
    /// A checkpoint commit running on the blocking pool.
    committing: Option<tokio::task::JoinHandle<()>>,
    gauges: SpoolGauges,
}

impl CloudWatchSink {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        CloudWatchSink {
            gauges: SpoolGauges::new(
                shared.options.stats_interval,
                &metrics().log_spool_bytes,
                &metrics().log_spool_records,
                &metrics().log_oldest_unshipped_seconds,
            ),
            scheduler: Scheduler::new(
                shared.destinations.clone(),
                &shared.options,
                shared.commits.clone(),
            ),
            shared,
            tasks: JoinSet::new(),
            lookups: JoinSet::new(),
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
        if !self
            .shared
            .commits
            .checkpoints()
            .previous_run_ended_cleanly()
        {
            warn!(
                "the last run did not stop cleanly: streams whose lines the spool delivers again are checked against CloudWatch before sending"
            );
        }
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
                Some(found) = self.lookups.join_next(), if !self.lookups.is_empty() => match found {
                    Ok((stream, Some(events))) => self.scheduler.lookup_done(stream, events, Instant::now()),
                    Ok((_, None)) => {}
                    Err(error) => error!(error = %error, "a recovery lookup task failed; its stream's lines wait for the next start"),
                },
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
                    self.scheduler.unpark_due(Instant::now());
                    self.commit_checkpoints_if_due();
                }
            }
        };
        // A put aborted in flight may still have been accepted: then this
        // stop is not clean, and the next start checks CloudWatch.
        let every_put_ended = self.tasks.is_empty();
        if !every_put_ended {
            warn!(
                puts = self.tasks.len(),
                "shutdown deadline reached; lines still in flight are left in the logs spool"
            );
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
        self.lookups.abort_all();
        while self.lookups.join_next().await.is_some() {}
        // Pending lines are dropped here: their records stay in the spool.
        self.scheduler.clear();
        if let Some(commit) = self.committing.take()
            && let Err(error) = commit.await
        {
            error!(error = %error, "a checkpoint commit task failed");
        }
        let commits = self.shared.commits.clone();
        let clean = every_put_ended && outcome.is_ok();
        self.gauges.update(&reader, true);
        let finished = tokio::task::spawn_blocking(move || {
            commits.finish(clean, || reader.previous_run_settled());
        })
        .await;
        if let Err(error) = finished {
            error!(error = %error, "the last checkpoint commit failed");
        }
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
        for lookup in self.scheduler.take_lookups() {
            let task = recover(self.shared.clone(), lookup);
            self.lookups.spawn(task.in_current_span());
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
        let commits = self.shared.commits.clone();
        self.committing = Some(tokio::task::spawn_blocking(move || commits.commit(false)));
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

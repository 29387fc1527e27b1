//! The SNS service: the publisher's loop that reads the spool, fills
//! batches ([`super::batch`]) and hands each to a task of its own, which
//! sends it as [`crate::publish::concurrency`] allows (`PublishBatch`
//! requests in flight adapt to the endpoint, up to `max_in_flight`),
//! retries it as [`super::retry`] decides and acknowledges it entry by
//! entry. May import the other `sns` modules, `publish::{concurrency,
//! pacing}`, the spool and the metrics.
//!
//! Records carry their topic (`sns.routes`, decided when spooled): each
//! topic has its own batches (a `PublishBatch` names one topic) and, when it
//! is FIFO, its own lanes; the request limit and the memory bound are
//! shared.
//!
//! Two bounds, taken in this order:
//! - **bytes**: a batch is only started while the batches outstanding
//!   (waiting, in flight, in a retry backoff) hold less than
//!   `max_buffered_bytes` of records and messages; past it reading stops and
//!   the backlog stays in the spool. This, not a count of batches, bounds
//!   the publisher's memory whatever the size of the objects;
//! - **requests**: a batch takes a request slot for each attempt, once its
//!   FIFO lane is free (its predecessor done), and gives it back during its
//!   retry backoff, so a burst on one object's lane or a batch waiting out a
//!   throttle cannot hold the slots every other batch needs.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, warn};

use super::PublisherOptions;
use super::batch::{Batch, BatchBuilder, Entry, MAX_BATCH_BYTES, prepare};
use super::report::{count_error, dead_letter, note_error, note_retry, reason};
use super::retry::{self, Action, EntryAction, PublishError};
use crate::backoff::Backoff;
use aws_config::SdkConfig;

use crate::config::{SnsRoute, TopicArn};
use crate::metrics::metrics;
use crate::publish::PublisherError;
use crate::publish::aws::sdk_config_for;
use crate::publish::concurrency::{AdaptiveConcurrency, Signal};
use crate::publish::dead_letter::DeadLetters;
use crate::publish::pacing::{SpoolGauges, WarningLimiter, sleep_or_cancel};
use crate::record::seconds_since;
use crate::spool::{Receipt, SpoolReader};

/// The SNS client of each topic: the default one, and one of their own for
/// route topics in another account (a role) or another region.
pub(super) struct TopicClients {
    default: aws_sdk_sns::Client,
    own: HashMap<String, aws_sdk_sns::Client>,
}

impl TopicClients {
    pub(super) async fn new(sdk: &SdkConfig, routes: &[SnsRoute]) -> TopicClients {
        let mut own = HashMap::new();
        for route in routes {
            // SNS refuses a Publish to a topic of another region: the client
            // is in the topic's (the default one's region may come from
            // AWS_REGION rather than sns.topic_arn).
            let mut access = route.access.clone();
            if sdk.region().map(|r| r.as_ref()) != Some(route.topic_arn.region()) {
                access.region = Some(route.topic_arn.region().to_owned());
            }
            if access.is_own() {
                continue;
            }
            let config = sdk_config_for(sdk, &access).await;
            own.insert(
                route.topic_arn.as_str().to_owned(),
                aws_sdk_sns::Client::new(&config),
            );
        }
        TopicClients {
            default: aws_sdk_sns::Client::new(sdk),
            own,
        }
    }

    fn for_topic(&self, topic: &str) -> &aws_sdk_sns::Client {
        self.own.get(topic).unwrap_or(&self.default)
    }
}

/// What every batch task shares.
struct Shared {
    clients: TopicClients,
    options: PublisherOptions,
    shutdown: CancellationToken,
    /// One retry warning a second, however many requests fail at once.
    warnings: WarningLimiter,
    /// The requests allowed in flight.
    concurrency: Arc<AdaptiveConcurrency>,
}

pub(super) struct SnsPublisher {
    shared: Arc<Shared>,
    /// `sns.topic_arn`: records without a route topic go here.
    default_topic: Arc<str>,
    /// Bytes of the batches outstanding, at most `max_buffered_bytes`.
    budget: Arc<Semaphore>,
    budget_bytes: usize,
    tasks: JoinSet<()>,
    /// Per topic seen so far: its batches being built and lanes.
    topics: HashMap<Arc<str>, TopicLanes>,
    gauges: SpoolGauges,
}

/// The batches of one topic.
struct TopicLanes {
    builder: BatchBuilder,
    /// FIFO: per lane, the completion of its last batch (the sender is
    /// dropped when that batch's task ends, however it ends).
    lane_tails: Vec<Option<oneshot::Receiver<()>>>,
}

impl TopicLanes {
    fn new(topic: &str, lanes: usize) -> TopicLanes {
        let fifo = topic.ends_with(".fifo");
        let lanes = if fifo { lanes } else { 0 };
        TopicLanes {
            builder: BatchBuilder::new(fifo, lanes),
            lane_tails: (0..lanes).map(|_| None).collect(),
        }
    }
}

impl SnsPublisher {
    pub(super) fn new(
        clients: TopicClients,
        topic: &TopicArn,
        options: PublisherOptions,
        shutdown: CancellationToken,
    ) -> Self {
        let max_in_flight = options.max_in_flight.max(1);
        // One batch always fits, whatever the setting.
        let budget_bytes = options
            .max_buffered_bytes
            .clamp(MAX_BATCH_BYTES * 2, u32::MAX as usize);
        SnsPublisher {
            default_topic: Arc::from(topic.as_str()),
            gauges: SpoolGauges::new(
                options.stats_interval,
                &metrics().spool_bytes,
                &metrics().spool_records,
                &metrics().oldest_unpublished_seconds,
            ),
            shared: Arc::new(Shared {
                clients,
                options,
                shutdown,
                warnings: WarningLimiter::new(),
                concurrency: AdaptiveConcurrency::new("sns", max_in_flight),
            }),
            budget: Arc::new(Semaphore::new(budget_bytes)),
            budget_bytes,
            tasks: JoinSet::new(),
            topics: HashMap::new(),
        }
    }

    pub(super) async fn run(mut self, mut reader: SpoolReader) -> Result<(), PublisherError> {
        let options = self.shared.options.clone();
        let shutdown = self.shared.shutdown.clone();
        let max_in_flight = options.max_in_flight.max(1);
        let mut spool_backoff = Backoff::new(options.retry_initial, options.retry_max);
        let outcome = 'reading: loop {
            self.reap();
            self.gauges.update(&reader, false);
            let read = tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                read = reader.next_batch_async(options.read_batch, options.read_wait) => read,
            };
            let deliveries = match read {
                Ok(deliveries) => {
                    spool_backoff.reset();
                    deliveries
                }
                Err(source) if source.is_retryable() => {
                    count_error("spool");
                    warn!(error = %source, "reading the spool failed; retrying");
                    if !sleep_or_cancel(spool_backoff.next_delay(), &shutdown).await {
                        break Ok(());
                    }
                    continue;
                }
                Err(source) => break Err(PublisherError::Spool { source }),
            };
            for delivery in deliveries {
                let Some((entry, _)) = prepare(delivery, &self.default_topic) else {
                    continue;
                };
                let topic = Arc::clone(&entry.topic);
                let closed = self
                    .topics
                    .entry(Arc::clone(&topic))
                    .or_insert_with(|| TopicLanes::new(&topic, max_in_flight))
                    .builder
                    .push(entry);
                if let Some(batch) = closed
                    && !self.dispatch(&topic, batch, &reader).await
                {
                    break 'reading Ok(());
                }
            }
            // What the read brought is sent now rather than held for more:
            // under load reads are full and so are the batches; at a trickle
            // an event leaves at once (SPEC §9: under 50 ms to the publisher).
            let open: Vec<(Arc<str>, Batch)> = self
                .topics
                .iter_mut()
                .flat_map(|(topic, lanes)| {
                    lanes
                        .builder
                        .flush()
                        .into_iter()
                        .map(|batch| (Arc::clone(topic), batch))
                })
                .collect();
            for (topic, batch) in open {
                if !self.dispatch(&topic, batch, &reader).await {
                    break 'reading Ok(());
                }
            }
        };
        // Batches still being built are dropped: their records stay.
        self.topics.clear();
        self.drain().await;
        self.gauges.update(&reader, true);
        outcome
    }

    /// Starts a task for `batch` once the bytes outstanding leave room for
    /// it. Returns false if shutdown came first (the batch is dropped, its
    /// records stay).
    async fn dispatch(&mut self, topic: &Arc<str>, batch: Batch, reader: &SpoolReader) -> bool {
        let bytes = batch
            .entries
            .iter()
            .map(Entry::buffered_bytes)
            .sum::<usize>()
            .min(self.budget_bytes) as u32;
        let budget = loop {
            tokio::select! {
                permit = self.budget.clone().acquire_many_owned(bytes) => {
                    break permit.expect("the semaphore is never closed");
                }
                _ = self.shared.shutdown.cancelled() => return false,
                // Backpressure can last (an outage): keep the gauges fresh.
                _ = tokio::time::sleep(self.gauges.interval()) => {
                    self.gauges.update(reader, false);
                    self.reap();
                }
            }
        };
        let lanes = self.topics.get_mut(topic);
        let (after, done) = match (batch.lane, lanes) {
            (Some(lane), Some(lanes)) => {
                let (done, tail) = oneshot::channel();
                (lanes.lane_tails[lane].replace(tail), Some(done))
            }
            _ => (None, None),
        };
        let shared = self.shared.clone();
        self.tasks.spawn(
            publish_batch(
                shared,
                Arc::clone(topic),
                batch.entries,
                after,
                done,
                budget,
            )
            .in_current_span(),
        );
        true
    }

    /// Collects finished tasks, reporting a panic (a bug: its records are
    /// delivered again).
    fn reap(&mut self) {
        while let Some(result) = self.tasks.try_join_next() {
            if let Err(error) = result
                && error.is_panic()
            {
                error!(error = %error, "a publish task panicked; its records will be sent again");
            }
        }
    }

    /// Awaits the tasks until the shutdown deadline, then aborts the rest.
    async fn drain(&mut self) {
        if self.tasks.is_empty() {
            return;
        }
        let deadline = tokio::time::Instant::now() + self.shared.options.shutdown_deadline;
        info!(batches = self.tasks.len(), "awaiting batches in flight");
        loop {
            tokio::select! {
                next = self.tasks.join_next() => if next.is_none() { return },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        warn!(
            batches = self.tasks.len(),
            "shutdown deadline reached; batches still in flight are left in the spool"
        );
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Publishes one batch until every entry is accepted or rejected for good.
/// Holds `budget` (its bytes) throughout and, on a FIFO lane, waits for the
/// lane's previous batch first and signals the next one by dropping `done`.
async fn publish_batch(
    shared: Arc<Shared>,
    topic: Arc<str>,
    entries: Vec<Entry>,
    after: Option<oneshot::Receiver<()>>,
    done: Option<oneshot::Sender<()>>,
    budget: OwnedSemaphorePermit,
) {
    let _budget = budget;
    let _done = done;
    if let Some(previous) = after {
        // An error only means the previous task ended without sending.
        let _ = previous.await;
    }
    let mut backoff = Backoff::new(shared.options.retry_initial, shared.options.retry_max);
    // Sub-batches to send, in order: the batch, or its entries one by one
    // after SNS refused it for an invalid message.
    let mut queue = VecDeque::from([entries]);
    // Refusals in a row (authorization, KMS, unknown topic).
    let mut refusals = 0;
    while let Some(mut batch) = queue.pop_front() {
        loop {
            let Some(answer) = send(&shared, &topic, &batch).await else {
                // Shutdown: the records of this batch stay in the spool.
                return;
            };
            let error = match answer {
                Ok(output) => {
                    refusals = 0;
                    batch = settle(batch, &output, &shared.options.dead_letters);
                    if batch.is_empty() {
                        backoff.reset();
                        break;
                    }
                    // Only the entries SNS listed as failed go again.
                    metrics()
                        .publish_errors
                        .get_or_create(&reason("entry-failed"))
                        .inc_by(batch.len() as u64);
                    note_retry(
                        &shared.warnings,
                        "PublishBatch entries failed",
                        batch.len(),
                        backoff.failures(),
                    );
                    None
                }
                Err(error) => Some(error),
            };
            if let Some(error) = error {
                match error.action() {
                    Action::Isolate if batch.len() > 1 => {
                        debug!(error = %error, entries = batch.len(), "splitting the batch to find the invalid message");
                        for entry in batch.into_iter().rev() {
                            queue.push_front(vec![entry]);
                        }
                        break;
                    }
                    Action::Isolate => {
                        for entry in batch {
                            dead_letter(
                                &shared.options.dead_letters,
                                entry,
                                "invalid",
                                &error.to_string(),
                            );
                        }
                        break;
                    }
                    Action::Retry => {
                        count_error(error.metric_label());
                        note_error(&shared.warnings, &error, batch.len(), backoff.failures());
                        if let PublishError::Refused { .. } = error {
                            refusals += 1;
                            if refusals >= shared.options.refused_attempts {
                                // Retrying has not healed it: keep the
                                // events aside for a replay, free the spool.
                                for entry in batch {
                                    dead_letter(
                                        &shared.options.dead_letters,
                                        entry,
                                        "refused",
                                        &error.to_string(),
                                    );
                                }
                                break;
                            }
                        }
                    }
                }
            }
            if !sleep_or_cancel(backoff.next_delay(), &shared.shutdown).await {
                // Shutdown: the records of this batch stay in the spool.
                return;
            }
        }
    }
}

/// One attempt, in a request slot of its own (`None`: shutdown came first).
async fn send(
    shared: &Shared,
    topic: &str,
    batch: &[Entry],
) -> Option<Result<aws_sdk_sns::operation::publish_batch::PublishBatchOutput, PublishError>> {
    let entries = match batch
        .iter()
        .enumerate()
        .map(|(id, entry)| entry.request_entry(id))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(entries) => entries,
        Err(error) => return Some(Err(error)),
    };
    let _slot = tokio::select! {
        slot = shared.concurrency.acquire() => slot,
        _ = shared.shutdown.cancelled() => return None,
    };
    let sent = Instant::now();
    let answer = shared
        .clients
        .for_topic(topic)
        .publish_batch()
        .topic_arn(topic)
        .set_publish_batch_request_entries(Some(entries))
        .send()
        .await
        .map_err(retry::classify);
    let signal = Signal::of_failure(answer.as_ref().err().map(PublishError::metric_label));
    shared.concurrency.observe(sent.elapsed(), signal);
    Some(answer)
}

/// Acknowledges what SNS accepted, rejects what it will never accept, and
/// returns the entries to send again, in their order. An entry SNS listed
/// neither as successful nor as failed is sent again (at-least-once).
fn settle(
    batch: Vec<Entry>,
    output: &aws_sdk_sns::operation::publish_batch::PublishBatchOutput,
    letters: &DeadLetters,
) -> Vec<Entry> {
    #[derive(Clone, Copy, PartialEq)]
    enum Outcome {
        Unknown,
        Accepted,
        Rejected,
    }
    let mut outcomes = vec![Outcome::Unknown; batch.len()];
    let mut rejections = Vec::new();
    let index = |id: Option<&str>| {
        id.and_then(|id| id.parse::<usize>().ok())
            .filter(|&i| i < batch.len())
    };
    for ok in output.successful() {
        if let Some(i) = index(ok.id()) {
            outcomes[i] = Outcome::Accepted;
        }
    }
    for failed in output.failed() {
        if let Some(i) = index(Some(failed.id()))
            && outcomes[i] == Outcome::Unknown
            && retry::entry_action(failed.code(), failed.sender_fault()) == EntryAction::Reject
        {
            outcomes[i] = Outcome::Rejected;
            rejections.push((
                i,
                failed.code().to_owned(),
                failed.message().unwrap_or("").to_owned(),
            ));
        }
    }
    let mut accepted = Vec::new();
    let mut again = Vec::new();
    for (i, entry) in batch.into_iter().enumerate() {
        match outcomes[i] {
            Outcome::Accepted => {
                let m = metrics();
                m.events_published.get_or_create(&entry.labels).inc();
                if let Some(observed) = entry.observed_at_us {
                    m.event_publish_delay_seconds
                        .observe(seconds_since(observed));
                }
                accepted.push(entry.receipt);
            }
            Outcome::Rejected => {
                let (_, code, message) = rejections
                    .iter()
                    .find(|(j, ..)| *j == i)
                    .expect("recorded above");
                dead_letter(letters, entry, "invalid", &format!("{code}: {message}"));
            }
            Outcome::Unknown => again.push(entry),
        }
    }
    Receipt::ack_all(accepted);
    again
}

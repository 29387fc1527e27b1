//! The publisher: one OS thread that takes resource events from the spool and
//! publishes them to SNS with many `PublishBatch` requests in flight, or
//! writes them to stdout when no topic is configured (SPEC §1, §3).
//!
//! # Flow
//!
//! ```text
//! SpoolReader ──records──▶ decode + sns_message::build ──▶ BatchBuilder
//!     ▲                       (undecodable: count, log, ack)      │ ≤ 10 entries, ≤ 262,144 bytes
//!     │                                                           ▼
//!     └──── ack after SNS accepted ◀── batch task (one per batch, ≤ max_in_flight)
//! ```
//!
//! - A record is acknowledged in the spool only once SNS listed it as
//!   `Successful` (or rejected it for good, counted and logged). Until then
//!   its [`Delivery`] travels with the batch; dropped (shutdown, abort), the
//!   record is delivered again.
//! - Reading stops while `max_in_flight` batches are outstanding: the
//!   backlog stays in the spool, not in memory.
//! - Failures are classified in [`super::retry`]; every retry waits on a
//!   [`Backoff`] and retries go on forever while the spool holds the backlog.
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

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};
use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::value::RawValue;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, warn};

use super::aws::{AwsOptions, load_sdk_config};
use super::pacing::{SpoolGauges, WarningLimiter, read_batch, sleep_or_cancel};
use super::retry::{self, Action, EntryAction, PublishError};
use super::sns_message::{
    self, ATTRIBUTE_DATA_TYPE, Degradation, SNS_MAX_MESSAGE_BYTES, SnsMessage,
};
use crate::backoff::Backoff;
use crate::config::{SnsConfig, TopicArn};
use crate::metrics::{EventLabels, ReasonLabels, WatchReasonLabels, metrics};
use crate::record::ResourceEvent;
use crate::spool::{Delivery, SpoolError, SpoolReader};

/// PublishBatch: "The batch request contains more entries than permissible"
/// above 10 entries (`TooManyEntriesInBatchRequest`).
pub const MAX_BATCH_ENTRIES: usize = 10;

/// PublishBatch: "the total aggregate size of all messages in a single
/// PublishBatch call can't exceed 262,144 bytes" (`BatchRequestTooLong`),
/// counted as [`SnsMessage::size`] counts one message.
pub const MAX_BATCH_BYTES: usize = 262_144;

// One message always fits a batch on its own.
const _: () = assert!(SNS_MAX_MESSAGE_BYTES <= MAX_BATCH_BYTES);

/// Where events go.
pub enum Sink {
    /// `PublishBatch` to this topic. With `sdk: None` the SDK configuration
    /// is loaded from the environment by [`load_sdk_config`] (default region:
    /// the topic's) on the publisher's thread.
    Sns {
        topic: TopicArn,
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
    /// `PublishBatch` requests in flight at most. Throughput is about
    /// `max_in_flight × 10 / latency`: 10,000 events/s at SPEC §9's 150 ms
    /// needs 150; the default leaves room for partly filled batches.
    pub max_in_flight: usize,
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
}

impl Default for PublisherOptions {
    fn default() -> Self {
        PublisherOptions {
            max_in_flight: 256,
            read_batch: 500,
            read_wait: Duration::from_millis(500),
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(10),
            shutdown_deadline: Duration::from_secs(10),
            stats_interval: Duration::from_secs(1),
            aws: AwsOptions::default(),
        }
    }
}

/// Why the publisher stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum PublisherError {
    /// The publisher's thread or runtime could not be started. Not retryable.
    #[error("starting the publisher")]
    Start {
        #[source]
        source: std::io::Error,
    },
    /// Reading the spool failed in a way retrying cannot fix.
    #[error("reading the spool")]
    Spool {
        #[source]
        source: SpoolError,
    },
    /// The publisher's thread panicked.
    #[error("the publisher thread panicked")]
    Panicked,
}

/// The running publisher thread.
#[derive(Debug)]
pub struct PublisherHandle {
    thread: std::thread::JoinHandle<Result<(), PublisherError>>,
}

impl PublisherHandle {
    /// Waits for the thread to return (after the shutdown token fired).
    pub fn join(self) -> Result<(), PublisherError> {
        self.thread.join().unwrap_or(Err(PublisherError::Panicked))
    }

    /// Whether the thread has returned.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

/// Starts the publisher on its own OS thread with its own single-threaded
/// tokio runtime. It runs until `shutdown` is cancelled (see the module docs
/// for what happens then).
pub fn spawn_publisher(
    reader: SpoolReader,
    sink: Sink,
    options: PublisherOptions,
    shutdown: CancellationToken,
) -> Result<PublisherHandle, PublisherError> {
    let thread = std::thread::Builder::new()
        .name("publisher".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| PublisherError::Start { source })?;
            runtime.block_on(run(reader, sink, options, shutdown))
        })
        .map_err(|source| PublisherError::Start { source })?;
    Ok(PublisherHandle { thread })
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
        Sink::Sns { topic, sdk } => {
            let span = tracing::info_span!("publisher", topic = %topic);
            async move {
                let sdk = match sdk {
                    Some(sdk) => *sdk,
                    None => load_sdk_config(topic.region(), &options.aws).await,
                };
                let client = aws_sdk_sns::Client::new(&sdk);
                info!(
                    fifo = topic.is_fifo(),
                    max_in_flight = options.max_in_flight,
                    "publishing to SNS"
                );
                SnsPublisher::new(client, &topic, options, shutdown)
                    .run(reader)
                    .await
            }
            .instrument(span)
            .await
        }
        Sink::Stdout(writer) => {
            let span = tracing::info_span!("publisher", sink = "stdout");
            run_stdout(reader, writer, options, shutdown)
                .instrument(span)
                .await
        }
    }
}

// ---------------------------------------------------------------------------
// Entries and batches.

/// One event on its way: the spool record (acknowledged once published) and
/// the message built from it.
struct Entry {
    delivery: Delivery,
    message: SnsMessage,
    labels: EventLabels,
    namespace: String,
    name: String,
}

impl Entry {
    /// The entry of a `PublishBatch` request, with id `id` (unique in the
    /// request: the entry's position).
    fn request_entry(&self, id: usize) -> Result<PublishBatchRequestEntry, PublishError> {
        let construction = |e: aws_sdk_sns::error::BuildError| PublishError::Construction {
            source: Box::new(e),
        };
        let mut builder = PublishBatchRequestEntry::builder()
            .id(id.to_string())
            .message(self.message.body.clone())
            .set_message_group_id(self.message.group_id.clone())
            .set_message_deduplication_id(self.message.deduplication_id.clone());
        for (name, value) in &self.message.attributes {
            let value = MessageAttributeValue::builder()
                .data_type(ATTRIBUTE_DATA_TYPE)
                .string_value(value)
                .build()
                .map_err(construction)?;
            builder = builder.message_attributes(*name, value);
        }
        builder.build().map_err(construction)
    }
}

/// Decodes a record and builds its message. An undecodable record is counted,
/// logged and acknowledged here: it can never be published.
fn prepare(delivery: Delivery, fifo: bool) -> Option<(Entry, ResourceEvent)> {
    let event = match ResourceEvent::from_record(delivery.payload()) {
        Ok(event) => event,
        Err(error) => {
            count_error("undecodable");
            error!(record = delivery.id(), error = %error, "spool record is not a resource event; dropped");
            delivery.ack();
            return None;
        }
    };
    let message = sns_message::build(&event, fifo);
    note_degraded(&event, message.degradation);
    let entry = Entry {
        delivery,
        message,
        labels: EventLabels {
            context: event.context.clone(),
            kind: event.kind.clone(),
            event_type: event.event_type.as_str().to_owned(),
        },
        namespace: event.namespace.clone(),
        name: event.name.clone(),
    };
    Some((entry, event))
}

/// A batch ready to send: ≤ [`MAX_BATCH_ENTRIES`] entries of ≤
/// [`MAX_BATCH_BYTES`] in total, and the FIFO lane it belongs to.
struct Batch {
    lane: Option<usize>,
    entries: Vec<Entry>,
}

/// A batch being filled.
#[derive(Default)]
struct OpenBatch {
    entries: Vec<Entry>,
    bytes: usize,
}

impl OpenBatch {
    fn fits(&self, entry: &Entry) -> bool {
        self.entries.len() < MAX_BATCH_ENTRIES
            && self.bytes + entry.message.size() <= MAX_BATCH_BYTES
    }

    fn has_group(&self, group: Option<&str>) -> bool {
        group.is_some_and(|g| {
            self.entries
                .iter()
                .any(|e| e.message.group_id.as_deref() == Some(g))
        })
    }

    fn push(&mut self, entry: Entry) {
        self.bytes += entry.message.size();
        self.entries.push(entry);
    }

    fn take(&mut self) -> Vec<Entry> {
        self.bytes = 0;
        std::mem::take(&mut self.entries)
    }
}

/// Packs entries into batches, enforcing SNS's batch limits while building
/// (STYLE 5). Standard topics: one open batch. FIFO topics: one open batch
/// per lane, at most one message of a group per batch.
struct BatchBuilder {
    open: Vec<OpenBatch>,
    fifo: bool,
}

impl BatchBuilder {
    fn new(fifo: bool, lanes: usize) -> Self {
        let lanes = if fifo { lanes.max(1) } else { 1 };
        BatchBuilder {
            open: (0..lanes).map(|_| OpenBatch::default()).collect(),
            fifo,
        }
    }

    fn lane_of(&self, entry: &Entry) -> usize {
        match (&entry.message.group_id, self.fifo) {
            (Some(group), true) => {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                group.hash(&mut hasher);
                (hasher.finish() % self.open.len() as u64) as usize
            }
            _ => 0,
        }
    }

    /// Adds `entry`; returns the batch it closed, if any.
    fn push(&mut self, entry: Entry) -> Option<Batch> {
        let lane = self.lane_of(&entry);
        let open = &mut self.open[lane];
        let closed = if !open.fits(&entry) || open.has_group(entry.message.group_id.as_deref()) {
            Some(self.batch(lane))
        } else {
            None
        };
        self.open[lane].push(entry);
        closed
    }

    fn batch(&mut self, lane: usize) -> Batch {
        Batch {
            lane: self.fifo.then_some(lane),
            entries: self.open[lane].take(),
        }
    }

    /// Every non-empty open batch.
    fn flush(&mut self) -> Vec<Batch> {
        let lanes: Vec<usize> = (0..self.open.len())
            .filter(|&lane| !self.open[lane].entries.is_empty())
            .collect();
        lanes.into_iter().map(|lane| self.batch(lane)).collect()
    }
}

// ---------------------------------------------------------------------------
// The SNS publisher.

/// What every batch task shares.
struct Shared {
    client: aws_sdk_sns::Client,
    topic_arn: String,
    options: PublisherOptions,
    shutdown: CancellationToken,
    /// One retry warning a second, however many requests fail at once.
    warnings: WarningLimiter,
}

struct SnsPublisher {
    shared: Arc<Shared>,
    fifo: bool,
    permits: Arc<Semaphore>,
    tasks: JoinSet<()>,
    /// FIFO: per lane, the completion of its last batch (the sender is
    /// dropped when that batch's task ends, however it ends).
    lane_tails: Vec<Option<oneshot::Receiver<()>>>,
    gauges: SpoolGauges,
}

impl SnsPublisher {
    fn new(
        client: aws_sdk_sns::Client,
        topic: &TopicArn,
        options: PublisherOptions,
        shutdown: CancellationToken,
    ) -> Self {
        let max_in_flight = options.max_in_flight.max(1);
        let fifo = topic.is_fifo();
        SnsPublisher {
            gauges: SpoolGauges::new(
                options.stats_interval,
                &metrics().spool_bytes,
                &metrics().spool_records,
                &metrics().oldest_unpublished_seconds,
            ),
            shared: Arc::new(Shared {
                client,
                topic_arn: topic.as_str().to_owned(),
                options,
                shutdown,
                warnings: WarningLimiter::new(),
            }),
            fifo,
            permits: Arc::new(Semaphore::new(max_in_flight)),
            tasks: JoinSet::new(),
            lane_tails: (0..if fifo { max_in_flight } else { 0 })
                .map(|_| None)
                .collect(),
        }
    }

    async fn run(mut self, mut reader: SpoolReader) -> Result<(), PublisherError> {
        let options = self.shared.options.clone();
        let shutdown = self.shared.shutdown.clone();
        let mut builder = BatchBuilder::new(self.fifo, self.lane_tails.len());
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
                let Some((entry, _)) = prepare(delivery, self.fifo) else {
                    continue;
                };
                if let Some(batch) = builder.push(entry)
                    && !self.dispatch(batch, &reader).await
                {
                    break 'reading Ok(());
                }
            }
            // What the read brought is sent now rather than held for more:
            // under load reads are full and so are the batches; at a trickle
            // an event leaves at once (SPEC §9: under 50 ms to the publisher).
            for batch in builder.flush() {
                if !self.dispatch(batch, &reader).await {
                    break 'reading Ok(());
                }
            }
        };
        // Batches still being built are dropped: their records stay.
        drop(builder);
        self.drain().await;
        self.gauges.update(&reader, true);
        outcome
    }

    /// Starts a task for `batch` once a permit is free. Returns false if
    /// shutdown came first (the batch is dropped, its records stay).
    async fn dispatch(&mut self, batch: Batch, reader: &SpoolReader) -> bool {
        let permit = loop {
            tokio::select! {
                permit = self.permits.clone().acquire_owned() => {
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
        let (after, done) = match batch.lane {
            Some(lane) => {
                let (done, tail) = oneshot::channel();
                (self.lane_tails[lane].replace(tail), Some(done))
            }
            None => (None, None),
        };
        let shared = self.shared.clone();
        self.tasks
            .spawn(publish_batch(shared, batch.entries, after, done, permit).in_current_span());
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
/// Holds `permit` (one request in flight) and, on a FIFO lane, waits for the
/// lane's previous batch first and signals the next one by dropping `done`.
async fn publish_batch(
    shared: Arc<Shared>,
    entries: Vec<Entry>,
    after: Option<oneshot::Receiver<()>>,
    done: Option<oneshot::Sender<()>>,
    permit: OwnedSemaphorePermit,
) {
    let _permit = permit;
    let _done = done;
    if let Some(previous) = after {
        // An error only means the previous task ended without sending.
        let _ = previous.await;
    }
    let mut backoff = Backoff::new(shared.options.retry_initial, shared.options.retry_max);
    // Sub-batches to send, in order: the batch, or its entries one by one
    // after SNS refused it for an invalid message.
    let mut queue = VecDeque::from([entries]);
    while let Some(mut batch) = queue.pop_front() {
        loop {
            let error = match send(&shared, &batch).await {
                Ok(output) => {
                    batch = settle(batch, &output);
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
                        &shared,
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
                            reject(entry, "rejected", &error.to_string());
                        }
                        break;
                    }
                    Action::Retry => {
                        count_error(error.metric_label());
                        note_error(&shared, &error, batch.len(), backoff.failures());
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

async fn send(
    shared: &Shared,
    batch: &[Entry],
) -> Result<aws_sdk_sns::operation::publish_batch::PublishBatchOutput, PublishError> {
    let entries = batch
        .iter()
        .enumerate()
        .map(|(id, entry)| entry.request_entry(id))
        .collect::<Result<Vec<_>, _>>()?;
    shared
        .client
        .publish_batch()
        .topic_arn(&shared.topic_arn)
        .set_publish_batch_request_entries(Some(entries))
        .send()
        .await
        .map_err(retry::classify)
}

/// Acknowledges what SNS accepted, rejects what it will never accept, and
/// returns the entries to send again, in their order. An entry SNS listed
/// neither as successful nor as failed is sent again (at-least-once).
fn settle(
    batch: Vec<Entry>,
    output: &aws_sdk_sns::operation::publish_batch::PublishBatchOutput,
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
                metrics()
                    .events_published
                    .get_or_create(&entry.labels)
                    .inc();
                accepted.push(entry.delivery);
            }
            Outcome::Rejected => {
                let (_, code, message) = rejections
                    .iter()
                    .find(|(j, ..)| *j == i)
                    .expect("recorded above");
                reject(entry, "rejected", &format!("{code}: {message}"));
            }
            Outcome::Unknown => again.push(entry),
        }
    }
    Delivery::ack_all(accepted);
    again
}

// ---------------------------------------------------------------------------
// The stdout sink.

/// The attributes as a JSON object, in SPEC §3's order.
struct Attributes<'a>(&'a [(&'static str, String)]);

impl Serialize for Attributes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// One stdout line: the attributes SNS would carry and the object as the
/// API server sent it (raw, not re-serialised).
#[derive(Serialize)]
struct Line<'a> {
    attributes: Attributes<'a>,
    object: &'a RawValue,
}

/// Appends the JSON line of `event` to `out`.
pub fn stdout_line(event: &ResourceEvent, out: &mut Vec<u8>) {
    let attributes = sns_message::plain_attributes(event);
    let line = Line {
        attributes: Attributes(&attributes),
        object: &event.object,
    };
    // Strings and an already valid RawValue into a Vec cannot fail.
    serde_json::to_writer(&mut *out, &line).expect("a stdout line serialises");
    out.push(b'\n');
}

async fn run_stdout(
    mut reader: SpoolReader,
    mut writer: Box<dyn Write + Send>,
    options: PublisherOptions,
    shutdown: CancellationToken,
) -> Result<(), PublisherError> {
    info!("no SNS topic configured: events go to stdout as JSON lines");
    let mut gauges = SpoolGauges::new(
        options.stats_interval,
        &metrics().spool_bytes,
        &metrics().spool_records,
        &metrics().oldest_unpublished_seconds,
    );
    let mut backoff = Backoff::new(options.retry_initial, options.retry_max);
    let mut lines = Vec::new();
    loop {
        gauges.update(&reader, false);
        let read = read_batch(
            &mut reader,
            options.read_batch,
            options.read_wait,
            &mut backoff,
            &shutdown,
            |err| {
                count_error("spool");
                warn!(error = %err, "reading the spool failed; retrying");
            },
        );
        let deliveries = match read.await {
            Ok(Some(deliveries)) => deliveries,
            Ok(None) => break,
            Err(source) => return Err(PublisherError::Spool { source }),
        };
        lines.clear();
        let mut written = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            match ResourceEvent::from_record(delivery.payload()) {
                Ok(event) => {
                    stdout_line(&event, &mut lines);
                    let labels = EventLabels {
                        context: event.context,
                        kind: event.kind,
                        event_type: event.event_type.as_str().to_owned(),
                    };
                    written.push((delivery, labels));
                }
                Err(error) => {
                    count_error("undecodable");
                    error!(record = delivery.id(), error = %error, "spool record is not a resource event; dropped");
                    delivery.ack();
                }
            }
        }
        if written.is_empty() {
            continue;
        }
        // Written and flushed, then acknowledged. A failed write is retried
        // whole: a reader of stdout may see a line twice, never lose one.
        loop {
            match writer.write_all(&lines).and_then(|()| writer.flush()) {
                Ok(()) => {
                    backoff.reset();
                    break;
                }
                Err(source) => {
                    let error = PublishError::Write { source };
                    count_error(error.metric_label());
                    warn!(error = %error, cause = %std::error::Error::source(&error).map(ToString::to_string).unwrap_or_default(), "retrying");
                    if !sleep_or_cancel(backoff.next_delay(), &shutdown).await {
                        return Ok(());
                    }
                }
            }
        }
        for (_, labels) in &written {
            metrics().events_published.get_or_create(labels).inc();
        }
        Delivery::ack_all(written.into_iter().map(|(delivery, _)| delivery));
    }
    gauges.update(&reader, true);
    Ok(())
}

// ---------------------------------------------------------------------------
// Counting and logging, one function per condition (STYLE 8).

fn reason(reason: &str) -> ReasonLabels {
    ReasonLabels {
        reason: reason.to_owned(),
    }
}

fn count_error(label: &str) {
    metrics().publish_errors.get_or_create(&reason(label)).inc();
}

/// An event SNS will never accept: counted, logged with its identity (never
/// its body), and acknowledged so it does not come back forever (SPEC §7).
fn reject(entry: Entry, label: &str, why: &str) {
    count_error(label);
    error!(
        context = %entry.labels.context,
        kind = %entry.labels.kind,
        namespace = %entry.namespace,
        name = %entry.name,
        event_type = %entry.labels.event_type,
        error = why,
        "SNS rejected the event; it is dropped"
    );
    entry.delivery.ack();
}

/// A body reduced to fit SNS's 256 KiB: counted and logged once per event.
fn note_degraded(event: &ResourceEvent, degradation: Degradation) {
    let label = match degradation {
        Degradation::Full => return,
        Degradation::Trimmed => "trimmed",
        Degradation::MetadataOnly => "metadata-only",
        Degradation::Identity => "identity",
    };
    metrics()
        .events_degraded
        .get_or_create(&WatchReasonLabels {
            context: event.context.clone(),
            kind: event.kind.clone(),
            reason: label.to_owned(),
        })
        .inc();
    warn!(
        context = %event.context,
        kind = %event.kind,
        namespace = %event.namespace,
        name = %event.name,
        degradation = label,
        "object too large for SNS's 256 KiB; body reduced"
    );
}

fn note_error(shared: &Shared, error: &PublishError, entries: usize, failures: u32) {
    let cause = std::error::Error::source(error).map(|s| format!("{s:?}"));
    if shared.warnings.should_warn() {
        warn!(error = %error, cause = cause.as_deref().unwrap_or(""), entries, failures, "PublishBatch failed; retrying with backoff");
    } else {
        debug!(error = %error, entries, failures, "PublishBatch failed; retrying with backoff");
    }
}

fn note_retry(shared: &Shared, what: &str, entries: usize, failures: u32) {
    if shared.warnings.should_warn() {
        warn!(entries, failures, "{what}; retrying them with backoff");
    } else {
        debug!(entries, failures, "{what}; retrying them with backoff");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::EventType;
    use crate::spool::Spool;

    fn event(name: &str, object: &str) -> ResourceEvent {
        ResourceEvent {
            cluster: "https://api:6443".into(),
            context: "unit-ctx".into(),
            namespace: "ns".into(),
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            event_type: EventType::Added,
            name: name.into(),
            uid: format!("uid-{name}"),
            resource_version: "1".into(),
            resync: false,
            object: RawValue::from_string(object.into()).unwrap(),
        }
    }

    /// Entries of `sizes` bytes of body each (through a real spool, since a
    /// Delivery only comes from one).
    fn entries(spool: &Spool, names: &[(&str, usize)], fifo: bool) -> Vec<Entry> {
        let writer = spool.writer();
        for (name, _) in names {
            writer.append(&event(name, "{}").to_record()).unwrap();
        }
        let mut reader = spool.reader().unwrap();
        let deliveries = reader
            .next_batch(names.len(), Duration::from_secs(1))
            .unwrap();
        deliveries
            .into_iter()
            .zip(names)
            .map(|(delivery, (_, size))| {
                let (mut entry, _) = prepare(delivery, fifo).unwrap();
                entry.message.body = "x".repeat(*size);
                entry
            })
            .collect()
    }

    #[test]
    fn batches_hold_at_most_ten_entries_and_262144_bytes() {
        let spool = Spool::in_memory(1 << 20);
        let names: Vec<(String, usize)> = (0..25)
            .map(|i| (format!("o{i}"), if i < 12 { 100 } else { 100_000 }))
            .collect();
        let names: Vec<(&str, usize)> = names.iter().map(|(n, s)| (n.as_str(), *s)).collect();
        let mut builder = BatchBuilder::new(false, 4);
        let mut batches = Vec::new();
        for entry in entries(&spool, &names, false) {
            batches.extend(builder.push(entry));
        }
        batches.extend(builder.flush());
        let sizes: Vec<usize> = batches.iter().map(|b| b.entries.len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 25);
        for batch in &batches {
            assert!(batch.entries.len() <= MAX_BATCH_ENTRIES);
            assert!(
                batch
                    .entries
                    .iter()
                    .map(|e| e.message.size())
                    .sum::<usize>()
                    <= MAX_BATCH_BYTES
            );
            assert_eq!(batch.lane, None);
        }
        assert_eq!(sizes[0], 10, "{sizes:?}");
        assert!(
            sizes[2..].iter().all(|&n| n <= 2),
            "100 kB bodies: two per batch: {sizes:?}"
        );
    }

    #[test]
    fn fifo_batches_hold_one_message_per_group_and_keep_a_group_on_its_lane() {
        let spool = Spool::in_memory(1 << 20);
        let names = [("a", 10), ("b", 10), ("a", 10), ("a", 10), ("b", 10)];
        let mut builder = BatchBuilder::new(true, 1);
        let mut batches = Vec::new();
        for entry in entries(&spool, &names, true) {
            batches.extend(builder.push(entry));
        }
        batches.extend(builder.flush());
        let names: Vec<Vec<&str>> = batches
            .iter()
            .map(|b| b.entries.iter().map(|e| e.name.as_str()).collect())
            .collect();
        assert_eq!(names, [vec!["a", "b"], vec!["a"], vec!["a", "b"]]);
        assert!(batches.iter().all(|b| b.lane == Some(0)));

        let builder = BatchBuilder::new(true, 8);
        let spool = Spool::in_memory(1 << 20);
        let lanes: Vec<usize> = entries(&spool, &[("a", 1), ("a", 1)], true)
            .iter()
            .map(|e| builder.lane_of(e))
            .collect();
        assert_eq!(lanes[0], lanes[1]);
    }

    #[test]
    fn stdout_line_has_the_attributes_in_order_and_the_raw_object() {
        let mut event = event(
            "settings",
            r#"{"kind":"ConfigMap",  "metadata":{"name":"settings"}}"#,
        );
        event.resync = true;
        let mut out = Vec::new();
        stdout_line(&event, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("}\n") && text.matches('\n').count() == 1);
        assert!(
            text.starts_with(r#"{"attributes":{"source":"kubernetes","cluster":"https://api:6443","context":"unit-ctx","#),
            "{text}"
        );
        assert!(
            text.contains(r#""flags":"resync"},"object":{"kind":"ConfigMap",  "metadata":{"name":"settings"}}}"#),
            "{text}"
        );
    }
}

//! The log sink: takes [`LogLine`]s from the logs spool and ships them to
//! CloudWatch Logs with many `PutLogEvents` in flight across streams, or
//! writes them to stdout as JSON lines when no CloudWatch is configured
//! (SPEC §4).
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
//! - Streams: one per container instance ([`ContainerKey`]), group
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
//!   ([`super::cloudwatch_batch`]).
//! - Stream life ([`Phase`]): make sure the group exists (once per group in
//!   this process, with its retention policy) → create the stream → put;
//!   `ResourceAlreadyExistsException` is success, `ResourceNotFoundException`
//!   on a put goes back to creating the stream, and on CreateLogStream back
//!   to creating the group.
//! - Acknowledgement: a line's spool record is acknowledged only after the
//!   put carrying its last part succeeded; then the checkpoint of its
//!   container instance advances to it. Events CloudWatch rejects as too old,
//!   too new or expired (`rejectedLogEventsInfo`) are counted and logged, not
//!   retried; the rest of the batch counts as shipped.
//! - Failures: classified in [`super::cloudwatch_retry`]; retried with
//!   [`Backoff`] forever while the spool holds the backlog, except invalid
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

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, warn};

use super::aws::{AwsOptions, load_sdk_config};
use super::cloudwatch_batch::{
    EVENT_OVERHEAD_BYTES, MAX_BATCH_BYTES, MAX_BATCH_EVENTS, MAX_EVENT_BYTES, batch_len,
    split_message, timestamp_ms,
};
use super::cloudwatch_retry::{Action, LogsError, classify};
use super::pacing::{SpoolGauges, WarningLimiter, read_batch, sleep_or_cancel};
use crate::backoff::Backoff;
use crate::config::LogsConfig;
use crate::logs::{Checkpoint, CheckpointStore, ContainerKey};
use crate::metrics::{ClusterLabels, ClusterReasonLabels, ReasonLabels, metrics};
use crate::names::log_group_name;
use crate::record::LogLine;
use crate::spool::{Delivery, SpoolError, SpoolReader};

/// Where log lines go.
// Built once per process: the size of the CloudWatch variant (an SdkConfig)
// costs nothing, boxing it would only burden callers.
#[allow(clippy::large_enum_variant)]
pub enum LogTarget {
    /// CloudWatch Logs, groups `/{prefix}-{cluster}` with `retention_days`.
    /// With `sdk: None` the SDK configuration is loaded from the environment
    /// by [`load_sdk_config`] (default region `region`) when the sink starts.
    CloudWatch {
        prefix: String,
        retention_days: u32,
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
            Some(logs) => LogTarget::CloudWatch {
                prefix: logs.prefix.clone(),
                retention_days: logs.retention_days,
                region: default_region.to_owned(),
                sdk: None,
            },
            None => LogTarget::Stdout(Box::new(std::io::stdout())),
        }
    }
}

impl std::fmt::Debug for LogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogTarget::CloudWatch {
                prefix,
                retention_days,
                region,
                ..
            } => f
                .debug_struct("CloudWatch")
                .field("prefix", prefix)
                .field("retention_days", retention_days)
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
            max_buffered_bytes: 64 << 20,
            max_event_bytes: MAX_EVENT_BYTES,
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(10),
            shutdown_deadline: Duration::from_secs(10),
            stats_interval: Duration::from_secs(1),
            idle_stream_expiry: Duration::from_secs(600),
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
                    max_in_flight = options.max_in_flight,
                    "shipping pod logs to CloudWatch Logs"
                );
                let shared = Arc::new(Shared {
                    client: aws_sdk_cloudwatchlogs::Client::new(&sdk),
                    retention_days,
                    options,
                    shutdown,
                    checkpoints,
                    warnings: WarningLimiter::new(),
                });
                CloudWatchSink::new(shared, prefix).run(reader).await
            }
            .instrument(span)
            .await
        }
        LogTarget::Stdout(writer) => {
            let span = tracing::info_span!("log_sink", sink = "stdout");
            run_stdout(reader, writer, checkpoints, options, shutdown)
                .instrument(span)
                .await
        }
    }
}

/// A CloudWatch Logs client from the environment (region default
/// `default_region`), configured like the sink's: for
/// [`last_shipped_from_cloudwatch`].
pub async fn logs_client(
    default_region: &str,
    options: &AwsOptions,
) -> aws_sdk_cloudwatchlogs::Client {
    aws_sdk_cloudwatchlogs::Client::new(&load_sdk_config(default_region, options).await)
}

/// The last event of a stream, as CloudWatch stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastShipped {
    /// Event timestamp, milliseconds since the epoch.
    pub timestamp_ms: i64,
    /// Its message (the last part, for a line shipped in parts; a single
    /// space for an empty line).
    pub message: String,
    /// When CloudWatch ingested it, milliseconds since the epoch.
    pub ingestion_time_ms: Option<i64>,
}

/// Pages `GetLogEvents` may answer empty before reaching an event.
const MAX_EMPTY_PAGES: usize = 10;

/// The last event of `stream` in `group`, for a follower that has no
/// checkpoint (SPEC §4): `GetLogEvents` with `startFromHead=false, limit=1`,
/// which reads the stored events, rather than the stream's
/// `lastEventTimestamp`, which is only eventually consistent (up to an hour,
/// SPEC §10). `None` when the group, the stream or any event is missing.
///
/// The follower resumes from `sinceTime = timestamp_ms / 1000` and skips
/// lines older than `timestamp_ms`; lines of that very millisecond are
/// ambiguous without a checkpoint (the message helps tell them apart).
pub async fn last_shipped_from_cloudwatch(
    client: &aws_sdk_cloudwatchlogs::Client,
    group: &str,
    stream: &str,
) -> Result<Option<LastShipped>, LogsError> {
    let mut token: Option<String> = None;
    // GetLogEvents may answer a page without events while older ones exist;
    // following the backward token reaches them.
    for _ in 0..MAX_EMPTY_PAGES {
        let answer = client
            .get_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .start_from_head(false)
            .limit(1)
            .set_next_token(token.clone())
            .send()
            .await
            .map_err(|e| classify("GetLogEvents", e));
        let page = match answer {
            Ok(page) => page,
            Err(error) if error.action() == Action::Recreate => return Ok(None),
            Err(error) => return Err(error),
        };
        if let Some(event) = page.events().last() {
            return Ok(Some(LastShipped {
                timestamp_ms: event.timestamp().unwrap_or_default(),
                message: event.message().unwrap_or_default().to_owned(),
                ingestion_time_ms: event.ingestion_time(),
            }));
        }
        let next = page.next_backward_token().map(str::to_owned);
        if next.is_none() || next == token {
            return Ok(None);
        }
        token = next;
    }
    Ok(None)
}

// ---------------------------------------------------------------------------
// Streams, parts and batches.

/// Fixed bytes counted per buffered part and per buffered line (their
/// structs, queue slots and allocation headers), on top of the bytes they
/// hold.
const PART_OVERHEAD: usize = 64;
const LINE_OVERHEAD: usize = 128;

/// One event waiting to be sent: a whole line, or one part of a long line.
struct Part {
    timestamp_ms: i64,
    message: String,
    /// When it was read from the spool: linger counts from here.
    arrived: Instant,
    /// Bytes it counts toward `max_buffered_bytes`.
    cost: usize,
    /// Set on a line's last part: what completes when this part is shipped.
    line: Option<LineEnd>,
}

/// A line whose last part is in a batch.
struct LineEnd {
    delivery: Delivery,
    checkpoint: Checkpoint,
    message_bytes: usize,
    /// Index of its last part in the batch (set when the batch is built).
    event_index: usize,
}

/// Where a stream's next request starts: the CloudWatch stream life as a
/// state machine, stepped by [`ship`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Make sure the group exists and has its retention. Entered for a
    /// stream new to this process, and after CreateLogStream answered
    /// `ResourceNotFoundException` (the group was deleted); then `failed`
    /// is the group generation that turned out to be gone. Shared by the
    /// group's streams: one creates, the others wait and reuse it. Left for
    /// `CreateStream`.
    EnsureGroup { failed: Option<u64> },
    /// The group exists (as of `generation`); create the stream
    /// (`AlreadyExists` is success). Entered after `EnsureGroup` and after a
    /// put answered `ResourceNotFoundException`. Left for `Put`, or for
    /// `EnsureGroup` if the group is gone.
    CreateStream { generation: u64 },
    /// The stream exists: `PutLogEvents`. Left only when the stream or group
    /// was deleted.
    Put { generation: u64 },
}

/// A log group of this process: created once, shared by its streams.
struct Group {
    name: String,
    cluster: String,
    slot: tokio::sync::Mutex<GroupSlot>,
}

#[derive(Default)]
struct GroupSlot {
    /// Created (or found) and retention applied in this process.
    ready: bool,
    /// Bumped at each creation, so that many streams finding the group gone
    /// create it once.
    generation: u64,
}

struct Stream {
    key: ContainerKey,
    group: Arc<Group>,
    name: String,
    phase: Phase,
    pending: VecDeque<Part>,
    pending_bytes: usize,
    in_flight: bool,
    /// In the ready queue.
    queued: bool,
    /// A put was abandoned at shutdown: nothing more is sent for it.
    stopped: bool,
    last_active: Instant,
}

impl Stream {
    /// Whether a batch should be sent now: a full one is waiting, or the
    /// oldest line has lingered long enough, or `urgent` (shutdown, or the
    /// memory bound reached) wants everything.
    fn due(&self, now: Instant, linger: Duration, urgent: bool) -> bool {
        match self.pending.front() {
            None => false,
            Some(oldest) => {
                urgent
                    || self.pending.len() >= MAX_BATCH_EVENTS
                    || self.pending_bytes >= MAX_BATCH_BYTES
                    || oldest.arrived + linger <= now
            }
        }
    }
}

/// One `PutLogEvents` worth of a stream.
struct Batch {
    events: Vec<InputLogEvent>,
    lines: Vec<LineEnd>,
    key: ContainerKey,
}

/// What a put task reports back.
struct Done {
    phase: Phase,
    /// Shutdown came before the put succeeded: its lines stay in the spool.
    abandoned: bool,
}

/// What every put task shares.
struct Shared {
    client: aws_sdk_cloudwatchlogs::Client,
    retention_days: u32,
    options: LogPublisherOptions,
    shutdown: CancellationToken,
    checkpoints: CheckpointStore,
    /// One retry warning a second, however many requests fail at once.
    warnings: WarningLimiter,
}

struct CloudWatchSink {
    shared: Arc<Shared>,
    prefix: String,
    streams: HashMap<u64, Stream>,
    ids: HashMap<ContainerKey, u64>,
    next_id: u64,
    groups: HashMap<String, Arc<Group>>,
    /// Streams with a batch due, in the order they became due (fairness).
    ready: VecDeque<u64>,
    /// When a stream's oldest line has lingered enough (may be stale).
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    tasks: JoinSet<Done>,
    /// Per running task: its stream and the buffered bytes it holds.
    task_streams: HashMap<tokio::task::Id, (u64, usize)>,
    /// Bytes of lines read and not yet done.
    buffered: usize,
    draining: bool,
    /// The memory bound was reached and the buffer has not yet fallen to
    /// half of it: reading waits, every stream sends what it has.
    pressure: bool,
    /// A checkpoint commit running on the blocking pool.
    committing: Option<tokio::task::JoinHandle<()>>,
    gauges: SpoolGauges,
}

impl CloudWatchSink {
    fn new(shared: Arc<Shared>, prefix: String) -> Self {
        CloudWatchSink {
            gauges: SpoolGauges::new(
                shared.options.stats_interval,
                &metrics().log_spool_bytes,
                &metrics().log_spool_records,
                &metrics().log_oldest_unshipped_seconds,
            ),
            shared,
            prefix,
            streams: HashMap::new(),
            ids: HashMap::new(),
            next_id: 0,
            groups: HashMap::new(),
            ready: VecDeque::new(),
            timers: BinaryHeap::new(),
            tasks: JoinSet::new(),
            task_streams: HashMap::new(),
            buffered: 0,
            draining: false,
            pressure: false,
            committing: None,
        }
    }

    async fn run(mut self, mut reader: SpoolReader) -> Result<(), LogPublisherError> {
        let options = self.shared.options.clone();
        let shutdown = self.shared.shutdown.clone();
        let mut spool_backoff = Backoff::new(options.retry_initial, options.retry_max);
        let mut tick = tokio::time::interval(options.stats_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drain_deadline = None;
        let outcome = loop {
            self.dispatch();
            if self.draining && self.tasks.is_empty() && self.ready.is_empty() {
                break Ok(());
            }
            if !self.pressure && self.buffered >= options.max_buffered_bytes {
                // A backlog: waiting for fuller batches gains nothing.
                self.pressure = true;
                self.queue_all_pending();
                continue;
            }
            // Reading resumes at half the bound, so that each read-and-flush
            // cycle moves many lines per stream, not one.
            self.pressure &= self.buffered >= options.max_buffered_bytes / 2;
            let can_read = !self.draining && !self.pressure;
            let next_timer = self.timers.peek().map(|Reverse((at, _))| *at);
            tokio::select! {
                _ = shutdown.cancelled(), if !self.draining => {
                    self.start_draining();
                    drain_deadline = Some(Instant::now() + options.shutdown_deadline);
                }
                _ = sleep_until_opt(drain_deadline), if drain_deadline.is_some() => break Ok(()),
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => self.finish(done),
                read = reader.next_batch_async(options.read_batch, options.read_wait), if can_read => {
                    match read {
                        Ok(deliveries) => {
                            spool_backoff.reset();
                            self.ingest(deliveries);
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
                _ = sleep_until_opt(next_timer), if next_timer.is_some() => self.fire_timers(),
                _ = tick.tick() => {
                    self.gauges.update(&reader, false);
                    self.expire_idle_streams();
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
        self.streams.clear();
        if let Some(commit) = self.committing.take() {
            let _ = commit.await;
        }
        if let Err(error) = self.shared.checkpoints.flush() {
            warn!(error = %error, "committing log checkpoints failed");
        }
        self.gauges.update(&reader, true);
        outcome
    }

    /// Splits the lines into parts and queues them on their streams.
    fn ingest(&mut self, deliveries: Vec<Delivery>) {
        let now = Instant::now();
        let max_part = self
            .shared
            .options
            .max_event_bytes
            .clamp(EVENT_OVERHEAD_BYTES + 4, MAX_BATCH_BYTES)
            - EVENT_OVERHEAD_BYTES;
        let linger = self.shared.options.linger;
        let urgent = self.urgent();
        let mut split: HashMap<String, u64> = HashMap::new();
        for delivery in deliveries {
            let line = match LogLine::from_record(delivery.payload()) {
                Ok(line) => line,
                Err(error) => {
                    reject_line("", "undecodable", 1);
                    error!(record = delivery.id(), error = %error, "logs spool record is not a log line; dropped");
                    delivery.ack();
                    continue;
                }
            };
            let checkpoint = Checkpoint::of(&line);
            let timestamp = timestamp_ms(line.timestamp);
            let message_bytes = line.message.len();
            let id = self.stream_id(
                line.cluster_name,
                line.namespace,
                line.pod,
                line.container,
                line.restart_count,
            );
            let parts: Vec<String> = if !line.message.is_empty() && line.message.len() <= max_part {
                vec![line.message]
            } else {
                split_message(&line.message, max_part)
                    .into_iter()
                    .map(str::to_owned)
                    .collect()
            };
            let stream = self.streams.get_mut(&id).expect("stream_id inserts");
            if parts.len() > 1 {
                *split.entry(stream.key.cluster.clone()).or_default() += 1;
            }
            let was_empty = stream.pending.is_empty();
            let count = parts.len();
            for (i, message) in parts.into_iter().enumerate() {
                let last = i + 1 == count;
                let mut cost = message.len() + PART_OVERHEAD;
                if last {
                    cost += delivery_cost(&delivery);
                }
                stream.pending_bytes += message.len() + EVENT_OVERHEAD_BYTES;
                self.buffered += cost;
                stream.pending.push_back(Part {
                    timestamp_ms: timestamp,
                    message,
                    arrived: now,
                    cost,
                    line: None,
                });
            }
            stream.pending.back_mut().expect("at least one part").line = Some(LineEnd {
                delivery,
                checkpoint,
                message_bytes,
                event_index: 0,
            });
            stream.last_active = now;
            if stream.in_flight || stream.queued || stream.stopped {
                continue;
            }
            if stream.due(now, linger, urgent) {
                stream.queued = true;
                self.ready.push_back(id);
            } else if was_empty {
                self.timers.push(Reverse((now + linger, id)));
            }
        }
        for (cluster, n) in split {
            metrics()
                .log_lines_split
                .get_or_create(&ClusterLabels { cluster })
                .inc_by(n);
        }
    }

    /// The id of a container instance's stream, created on first use.
    fn stream_id(
        &mut self,
        cluster: String,
        namespace: String,
        pod: String,
        container: String,
        restart_count: u32,
    ) -> u64 {
        let key = ContainerKey {
            cluster,
            namespace,
            pod,
            container,
            restart_count,
        };
        if let Some(id) = self.ids.get(&key) {
            return *id;
        }
        let id = self.next_id;
        self.next_id += 1;
        let group = self
            .groups
            .entry(key.cluster.clone())
            .or_insert_with(|| {
                Arc::new(Group {
                    name: log_group_name(&self.prefix, &key.cluster),
                    cluster: key.cluster.clone(),
                    slot: tokio::sync::Mutex::new(GroupSlot::default()),
                })
            })
            .clone();
        let stream = Stream {
            name: key.log_stream_name(),
            key: key.clone(),
            group,
            phase: Phase::EnsureGroup { failed: None },
            pending: VecDeque::new(),
            pending_bytes: 0,
            in_flight: false,
            queued: false,
            stopped: false,
            last_active: Instant::now(),
        };
        self.streams.insert(id, stream);
        self.ids.insert(key, id);
        id
    }

    /// Starts a put for ready streams while fewer than `max_in_flight` run.
    fn dispatch(&mut self) {
        let max_in_flight = self.shared.options.max_in_flight.max(1);
        while self.tasks.len() < max_in_flight {
            let Some(id) = self.ready.pop_front() else {
                return;
            };
            let Some(stream) = self.streams.get_mut(&id) else {
                continue;
            };
            stream.queued = false;
            if stream.in_flight || stream.stopped || stream.pending.is_empty() {
                continue;
            }
            let n = batch_len(
                stream
                    .pending
                    .iter()
                    .map(|p| (p.timestamp_ms, p.message.len())),
            );
            let mut events = Vec::with_capacity(n);
            let mut lines = Vec::new();
            let mut cost = 0;
            for (index, part) in stream.pending.drain(..n).enumerate() {
                stream.pending_bytes -= part.message.len() + EVENT_OVERHEAD_BYTES;
                cost += part.cost;
                if let Some(mut line) = part.line {
                    line.event_index = index;
                    lines.push(line);
                }
                events.push(
                    InputLogEvent::builder()
                        .timestamp(part.timestamp_ms)
                        .message(part.message)
                        .build()
                        // Both required fields are set just above.
                        .expect("an InputLogEvent with timestamp and message"),
                );
            }
            stream.in_flight = true;
            let batch = Batch {
                events,
                lines,
                key: stream.key.clone(),
            };
            let task = ship(
                self.shared.clone(),
                stream.group.clone(),
                stream.name.clone(),
                stream.phase,
                batch,
            );
            let handle = self.tasks.spawn(task.in_current_span());
            self.task_streams.insert(handle.id(), (id, cost));
        }
    }

    /// A put task ended: the stream may send its next batch.
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
        let Some((id, cost)) = self.task_streams.remove(&task) else {
            return;
        };
        self.buffered = self.buffered.saturating_sub(cost);
        let now = Instant::now();
        let linger = self.shared.options.linger;
        let urgent = self.urgent();
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        stream.in_flight = false;
        if let Some(done) = done {
            stream.phase = done.phase;
            stream.stopped |= done.abandoned;
        }
        stream.last_active = now;
        if stream.stopped || stream.queued {
            return;
        }
        if stream.due(now, linger, urgent) {
            stream.queued = true;
            self.ready.push_back(id);
        } else if let Some(oldest) = stream.pending.front() {
            self.timers.push(Reverse((oldest.arrived + linger, id)));
        }
    }

    /// Queues the streams whose oldest line has lingered enough.
    fn fire_timers(&mut self) {
        let now = Instant::now();
        let linger = self.shared.options.linger;
        let urgent = self.urgent();
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now {
                return;
            }
            self.timers.pop();
            let Some(stream) = self.streams.get_mut(&id) else {
                continue;
            };
            if stream.in_flight || stream.queued || stream.stopped {
                continue;
            }
            if stream.due(now, linger, urgent) {
                stream.queued = true;
                self.ready.push_back(id);
            } else if let Some(oldest) = stream.pending.front() {
                self.timers.push(Reverse((oldest.arrived + linger, id)));
            }
        }
    }

    /// Shutdown: stop reading, send everything pending now.
    fn start_draining(&mut self) {
        self.draining = true;
        let pending: usize = self.streams.values().map(|s| s.pending.len()).sum();
        info!(
            puts_in_flight = self.tasks.len(),
            pending_events = pending,
            "shutting down: sending pending log lines"
        );
        self.queue_all_pending();
    }

    /// Whether lines are sent at once rather than after their linger.
    fn urgent(&self) -> bool {
        self.draining || self.pressure
    }

    /// Queues every stream that has pending lines and no put in flight.
    fn queue_all_pending(&mut self) {
        for (id, stream) in &mut self.streams {
            if !stream.pending.is_empty() && !stream.in_flight && !stream.queued && !stream.stopped
            {
                stream.queued = true;
                self.ready.push_back(*id);
            }
        }
    }

    /// Forgets streams without lines for `idle_stream_expiry`.
    fn expire_idle_streams(&mut self) {
        let expiry = self.shared.options.idle_stream_expiry;
        let now = Instant::now();
        let idle: Vec<u64> = self
            .streams
            .iter()
            .filter(|(_, s)| {
                !s.in_flight
                    && !s.queued
                    && s.pending.is_empty()
                    && now.duration_since(s.last_active) >= expiry
            })
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            if let Some(stream) = self.streams.remove(&id) {
                self.ids.remove(&stream.key);
            }
        }
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

fn delivery_cost(delivery: &Delivery) -> usize {
    delivery.payload().len() + LINE_OVERHEAD
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Sends one batch of a stream: steps its [`Phase`] until the put is
/// accepted (or given up), retrying with backoff. Returns the phase the
/// stream's next batch starts from.
async fn ship(
    shared: Arc<Shared>,
    group: Arc<Group>,
    stream: String,
    mut phase: Phase,
    batch: Batch,
) -> Done {
    let mut backoff = Backoff::new(shared.options.retry_initial, shared.options.retry_max);
    let mut recreations = 0u32;
    let done = |phase, abandoned| Done { phase, abandoned };
    loop {
        let step = match phase {
            Phase::EnsureGroup { failed } => ensure_group(&shared, &group, failed)
                .await
                .map(|generation| Phase::CreateStream { generation }),
            Phase::CreateStream { generation } => {
                let created = shared
                    .client
                    .create_log_stream()
                    .log_group_name(&group.name)
                    .log_stream_name(&stream)
                    .send()
                    .await
                    .map_err(|e| classify("CreateLogStream", e));
                match created {
                    Ok(_) => Ok(Phase::Put { generation }),
                    Err(error) if error.action() == Action::Done => Ok(Phase::Put { generation }),
                    Err(error) if error.action() == Action::Recreate => {
                        debug!(group = %group.name, "log group is gone; creating it again");
                        Ok(Phase::EnsureGroup {
                            failed: Some(generation),
                        })
                    }
                    Err(error) => Err(error),
                }
            }
            Phase::Put { generation } => {
                let put = shared
                    .client
                    .put_log_events()
                    .log_group_name(&group.name)
                    .log_stream_name(&stream)
                    .set_log_events(Some(batch.events.clone()))
                    .send()
                    .await
                    .map_err(|e| classify("PutLogEvents", e));
                match put {
                    Ok(output) => {
                        settle(
                            &shared,
                            &group,
                            &stream,
                            batch,
                            output.rejected_log_events_info(),
                        );
                        return done(phase, false);
                    }
                    Err(error) if error.action() == Action::Done => {
                        settle(&shared, &group, &stream, batch, None);
                        return done(phase, false);
                    }
                    Err(error) if error.action() == Action::Recreate => {
                        debug!(group = %group.name, stream = %stream, "log stream is gone; creating it again");
                        Ok(Phase::CreateStream { generation })
                    }
                    Err(error) => Err(error),
                }
            }
        };
        match step {
            Ok(next) => {
                let recreating = matches!(
                    (phase, next),
                    (Phase::Put { .. }, Phase::CreateStream { .. })
                        | (Phase::CreateStream { .. }, Phase::EnsureGroup { .. })
                );
                phase = next;
                if !recreating {
                    continue;
                }
                count_error("not-found");
                recreations += 1;
                // Deleted once is a retry at once; deleted again and again
                // (or an endpoint that never keeps what it creates) backs off.
                if recreations == 1 {
                    continue;
                }
            }
            Err(error) if error.action() == Action::GiveUp => {
                give_up(&shared, &group, &stream, batch, &error);
                return done(phase, false);
            }
            Err(error) => {
                count_error(error.metric_label());
                note_retry(
                    &shared,
                    &error,
                    &group,
                    &stream,
                    batch.events.len(),
                    backoff.failures(),
                );
            }
        }
        if !sleep_or_cancel(backoff.next_delay(), &shared.shutdown).await {
            // Shutdown: the batch's records stay in the spool.
            return done(phase, true);
        }
    }
}

/// Makes sure `group` exists with its retention policy; returns the group's
/// generation. One stream of the group does it, the others wait for it;
/// `failed` is the generation a stream found deleted (then it is created
/// again unless another stream did so meanwhile).
async fn ensure_group(
    shared: &Shared,
    group: &Group,
    failed: Option<u64>,
) -> Result<u64, LogsError> {
    let mut slot = group.slot.lock().await;
    if slot.ready && Some(slot.generation) != failed {
        return Ok(slot.generation);
    }
    let created = shared
        .client
        .create_log_group()
        .log_group_name(&group.name)
        .send()
        .await
        .map_err(|e| classify("CreateLogGroup", e));
    match created {
        Ok(_) => info!(group = %group.name, cluster = %group.cluster, "created log group"),
        Err(error) if error.action() == Action::Done => {}
        Err(error) => return Err(error),
    }
    let retention = shared
        .client
        .put_retention_policy()
        .log_group_name(&group.name)
        .retention_in_days(i32::try_from(shared.retention_days).unwrap_or(i32::MAX))
        .send()
        .await
        .map_err(|e| classify("PutRetentionPolicy", e));
    match retention {
        Ok(_) => {}
        Err(
            error @ (LogsError::Throttled { .. }
            | LogsError::Server { .. }
            | LogsError::Network { .. }),
        ) => {
            return Err(error);
        }
        // Shipping matters more than retention: refused (permissions) or
        // invalid, it is reported and the group used as it is.
        Err(error) => {
            count_error("retention");
            error!(group = %group.name, error = %error, "setting the log group's retention failed; shipping without it");
        }
    }
    slot.ready = true;
    slot.generation += 1;
    Ok(slot.generation)
}

/// The put was accepted: counts what CloudWatch rejected (too old, too new,
/// expired: not retried), acknowledges every line of the batch and advances
/// the checkpoint to its last line.
fn settle(
    shared: &Shared,
    group: &Group,
    stream: &str,
    batch: Batch,
    rejected: Option<&aws_sdk_cloudwatchlogs::types::RejectedLogEventsInfo>,
) {
    let events = batch.events.len();
    let index = |i: Option<i32>| {
        i.and_then(|i| usize::try_from(i).ok())
            .map(|i| i.min(events))
    };
    let too_old_end = rejected
        .and_then(|r| index(r.too_old_log_event_end_index()))
        .unwrap_or(0);
    let expired_end = rejected
        .and_then(|r| index(r.expired_log_event_end_index()))
        .unwrap_or(0);
    let too_new_start = rejected
        .and_then(|r| index(r.too_new_log_event_start_index()))
        .unwrap_or(events);
    let (mut too_old, mut expired, mut too_new) = (0u64, 0u64, 0u64);
    let (mut shipped, mut bytes) = (0u64, 0u64);
    let last = batch.lines.last().map(|line| line.checkpoint);
    let mut deliveries = Vec::with_capacity(batch.lines.len());
    for line in batch.lines {
        // A line counts by its last part.
        let i = line.event_index;
        if i < too_old_end {
            too_old += 1;
        } else if i < expired_end {
            expired += 1;
        } else if i >= too_new_start {
            too_new += 1;
        } else {
            shipped += 1;
            bytes += line.message_bytes as u64;
        }
        deliveries.push(line.delivery);
    }
    let cluster = &batch.key.cluster;
    let m = metrics();
    let labels = ClusterLabels {
        cluster: cluster.clone(),
    };
    if shipped > 0 {
        m.log_lines_shipped.get_or_create(&labels).inc_by(shipped);
        m.log_bytes_shipped.get_or_create(&labels).inc_by(bytes);
    }
    for (reason, n) in [
        ("too-old", too_old),
        ("too-new", too_new),
        ("expired", expired),
    ] {
        if n > 0 {
            reject_line(cluster, reason, n);
        }
    }
    if too_old + too_new + expired > 0 {
        warn!(
            cluster = %cluster,
            group = %group.name,
            stream,
            too_old,
            too_new,
            expired,
            "CloudWatch rejected log lines outside its time window (14 days back, 2 hours ahead, retention); not retried"
        );
    }
    Delivery::ack_all(deliveries);
    if let Some(checkpoint) = last {
        shared.checkpoints.advance(batch.key, checkpoint);
    }
}

/// CloudWatch refused the batch as invalid (a bug: the builder keeps every
/// limit): counted, logged, acknowledged, never retried forever (SPEC §7).
/// The checkpoint advances too: the follower must not fetch these lines again.
fn give_up(shared: &Shared, group: &Group, stream: &str, batch: Batch, error: &LogsError) {
    count_error(error.metric_label());
    let lines = batch.lines.len() as u64;
    reject_line(&batch.key.cluster, "invalid", lines);
    error!(
        cluster = %batch.key.cluster,
        group = %group.name,
        stream,
        lines,
        events = batch.events.len(),
        error = %error,
        "CloudWatch refused a batch of log lines; they are dropped"
    );
    let last = batch.lines.last().map(|line| line.checkpoint);
    Delivery::ack_all(batch.lines.into_iter().map(|line| line.delivery));
    if let Some(checkpoint) = last {
        shared.checkpoints.advance(batch.key, checkpoint);
    }
}

// ---------------------------------------------------------------------------
// The stdout sink.

/// One stdout line.
#[derive(Serialize)]
struct StdoutLine<'a> {
    cluster: &'a str,
    namespace: &'a str,
    pod: &'a str,
    container: &'a str,
    restart_count: u32,
    /// RFC 3339, UTC, nanoseconds.
    timestamp: String,
    message: &'a str,
}

/// Appends the JSON line of `line` to `out`.
pub fn stdout_line(line: &LogLine, out: &mut Vec<u8>) {
    let timestamp = k8s_openapi::jiff::Timestamp::from_nanosecond(i128::from(line.timestamp))
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    let json = StdoutLine {
        cluster: &line.cluster_name,
        namespace: &line.namespace,
        pod: &line.pod,
        container: &line.container,
        restart_count: line.restart_count,
        timestamp: timestamp.to_string(),
        message: &line.message,
    };
    // Strings and integers into a Vec cannot fail.
    serde_json::to_writer(&mut *out, &json).expect("a stdout log line serialises");
    out.push(b'\n');
}

async fn run_stdout(
    mut reader: SpoolReader,
    mut writer: Box<dyn Write + Send>,
    checkpoints: CheckpointStore,
    options: LogPublisherOptions,
    shutdown: CancellationToken,
) -> Result<(), LogPublisherError> {
    info!("no CloudWatch Logs configured: log lines go to stdout as JSON lines");
    let mut gauges = SpoolGauges::new(
        options.stats_interval,
        &metrics().log_spool_bytes,
        &metrics().log_spool_records,
        &metrics().log_oldest_unshipped_seconds,
    );
    let mut backoff = Backoff::new(options.retry_initial, options.retry_max);
    let mut out = Vec::new();
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
                warn!(error = %err, "reading the logs spool failed; retrying");
            },
        );
        let deliveries = match read.await {
            Ok(Some(deliveries)) => deliveries,
            Ok(None) => break,
            Err(source) => return Err(LogPublisherError::Spool { source }),
        };
        out.clear();
        let mut written = Vec::with_capacity(deliveries.len());
        let mut last: HashMap<ContainerKey, Checkpoint> = HashMap::new();
        let mut shipped: HashMap<String, (u64, u64)> = HashMap::new();
        for delivery in deliveries {
            match LogLine::from_record(delivery.payload()) {
                Ok(line) => {
                    stdout_line(&line, &mut out);
                    let counts = shipped.entry(line.cluster_name.clone()).or_default();
                    counts.0 += 1;
                    counts.1 += line.message.len() as u64;
                    last.insert(ContainerKey::of(&line), Checkpoint::of(&line));
                    written.push(delivery);
                }
                Err(error) => {
                    reject_line("", "undecodable", 1);
                    error!(record = delivery.id(), error = %error, "logs spool record is not a log line; dropped");
                    delivery.ack();
                }
            }
        }
        if written.is_empty() {
            continue;
        }
        // Written and flushed, then acknowledged and checkpointed. A failed
        // write is retried whole: a reader may see a line twice, never lose one.
        loop {
            match writer.write_all(&out).and_then(|()| writer.flush()) {
                Ok(()) => {
                    backoff.reset();
                    break;
                }
                Err(error) => {
                    count_error("write");
                    warn!(error = %error, "writing log lines to stdout failed; retrying");
                    if !sleep_or_cancel(backoff.next_delay(), &shutdown).await {
                        return Ok(());
                    }
                }
            }
        }
        for (cluster, (lines, bytes)) in shipped {
            let labels = ClusterLabels { cluster };
            metrics()
                .log_lines_shipped
                .get_or_create(&labels)
                .inc_by(lines);
            metrics()
                .log_bytes_shipped
                .get_or_create(&labels)
                .inc_by(bytes);
        }
        Delivery::ack_all(written);
        for (key, checkpoint) in last {
            checkpoints.advance(key, checkpoint);
        }
        if let Err(error) = checkpoints.flush_if_due() {
            warn!(error = %error, "committing log checkpoints failed; retrying later");
        }
    }
    if let Err(error) = checkpoints.flush() {
        warn!(error = %error, "committing log checkpoints failed");
    }
    gauges.update(&reader, true);
    Ok(())
}

// ---------------------------------------------------------------------------
// Counting and logging, one function per condition (STYLE 8).

fn count_error(reason: &str) {
    metrics()
        .log_put_errors
        .get_or_create(&ReasonLabels {
            reason: reason.to_owned(),
        })
        .inc();
}

fn reject_line(cluster: &str, reason: &str, n: u64) {
    metrics()
        .log_lines_rejected
        .get_or_create(&ClusterReasonLabels {
            cluster: cluster.to_owned(),
            reason: reason.to_owned(),
        })
        .inc_by(n);
}

fn note_retry(
    shared: &Shared,
    error: &LogsError,
    group: &Group,
    stream: &str,
    events: usize,
    failures: u32,
) {
    let cause = std::error::Error::source(error).map(|s| format!("{s:?}"));
    if shared.warnings.should_warn() {
        warn!(error = %error, cause = cause.as_deref().unwrap_or(""), group = %group.name, stream, events, failures, "CloudWatch Logs request failed; retrying with backoff");
    } else {
        debug!(error = %error, group = %group.name, stream, events, failures, "CloudWatch Logs request failed; retrying with backoff");
    }
}

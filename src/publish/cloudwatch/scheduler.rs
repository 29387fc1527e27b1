//! Which stream sends next: the sink's decisions without any I/O and
//! without reading the clock (every step is given its `now`), so they are
//! tested on their own with instants the test chooses.
//!
//! - A stream is *due* when a full batch is waiting (10,000 events or
//!   1,048,576 bytes pending), when its oldest line has waited `linger`, or
//!   when the sink is *urgent*: draining at shutdown, or the memory bound
//!   reached (with a backlog, batches cannot get fuller by waiting).
//! - Due streams wait in a FIFO ready queue (fairness across streams); a
//!   stream not yet due has a timer at its oldest line's `arrived + linger`.
//! - A stream has at most one put in flight, so its lines reach CloudWatch in
//!   the log's order and its checkpoint only moves forward; puts of
//!   different streams run concurrently, at most `max_in_flight`.
//! - Memory: lines read and not yet done count toward `max_buffered_bytes`;
//!   at the bound reading stops until half of it is done.
//! - A stream whose put was abandoned at shutdown is *stopped*: nothing more
//!   is sent for it. A stream idle for `idle_stream_expiry` is forgotten.
//! - Exactly once (SPEC §4): a stream starts from its checkpoint; a line at
//!   or before the last line it accepted (its *high water*) is a duplicate
//!   — delivered again by the spool, or appended again by a follower that
//!   resumed from an older position — and is acknowledged without being
//!   sent. After an unclean stop, a stream whose first line is a record of
//!   the previous run is *held* while its events after the checkpoint are
//!   looked up ([`Lookup`], [`super::recovery`]); its lines equal to those
//!   events, in order, are settled as shipped, and sending resumes at the
//!   first line that differs.
//! - Parking (SPEC §4, "One bad log group never stops the others"): a put
//!   refused for a reason retrying will not heal parks its log group for
//!   `park_duration`. The group's lines — the refused batch, what its
//!   streams hold, what comes meanwhile — are *set aside* in the spool
//!   ([`SetAside`]: id and place kept, bytes freed), outside the in-flight
//!   limit and the memory bound, so other groups flow. When the pause ends
//!   they are taken back in order, as the memory bound allows, and sent;
//!   refused again, the group parks again.
//!
//! The service ([`super::service`]) asks [`Scheduler::next_put`] for work,
//! runs each [`Put`] as a task, and reports its end to [`Scheduler::finished`].
//! May import `cloudwatch::{batch, config, life, report}` (types only from
//! `life`), the checkpoint types and the metrics.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{error, info};

use super::LogPublisherOptions;
use super::batch::{
    Batch, EVENT_OVERHEAD_BYTES, LineEnd, MAX_BATCH_BYTES, MAX_BATCH_EVENTS, PART_OVERHEAD, Part,
    line_parts, max_part_bytes, receipt_cost, take_batch, timestamp_ms,
};
use super::commit::Commits;
use super::destination::LogDestinations;
use super::life::{Done, Group, GroupKey, Parked, Phase};
use super::recovery::StoredEvent;
use super::report::{count_duplicates, reject_line};
use crate::logs::{Checkpoint, ContainerKey, Shipped};
use crate::metrics::{ClusterLabels, LogGroupLabels, LogGroupReasonLabels, metrics};
use crate::record::LogLine;
use crate::spool::{Delivery, SetAside};

/// One container instance's stream, as the sink knows it.
struct Stream {
    key: ContainerKey,
    group: Arc<Group>,
    name: String,
    /// Where its next put starts (the life of [`super::life`]).
    phase: Phase,
    pending: VecDeque<Part>,
    pending_bytes: usize,
    in_flight: bool,
    /// In the ready queue.
    queued: bool,
    /// A put was abandoned at shutdown: nothing more is sent for it.
    stopped: bool,
    last_active: Instant,
    /// The last line accepted (queued, found in CloudWatch or shipped): a
    /// line at or before it is a duplicate.
    high_water: Option<Checkpoint>,
    /// The CloudWatch millisecond of that line, and how many of the
    /// stream's events carry it up to and including that line.
    at_ms: Option<(i64, u32)>,
    /// The checkpoint the stream started from (for a recovery lookup).
    resumed_from: Option<Shipped>,
    recovery: Recovery,
    /// Lines set aside while the group is parked (and until they are all
    /// taken back), oldest first, with their events-at-millisecond count.
    aside: VecDeque<(SetAside, u32)>,
}

/// Where a stream is in the recovery after an unclean stop.
enum Recovery {
    /// Unclean stop, no line seen yet: a first line of the previous run
    /// starts a lookup, a first line of this run needs none.
    Unchecked,
    /// The lookup runs: the stream's lines wait.
    Looking,
    /// CloudWatch's events after the checkpoint not yet matched by a line.
    Matching(VecDeque<StoredEvent>),
    /// Lines are sent as they come.
    Settled,
}

impl Stream {
    /// Lines wait for the recovery lookup, or for being matched to it.
    fn held(&self) -> bool {
        matches!(self.recovery, Recovery::Looking | Recovery::Matching(_))
    }

    /// Queues the parts of one line read at `now`, its end (a receipt of
    /// `delivery`, not its bytes) on the last part. Returns the bytes they
    /// count toward the sink's buffer.
    fn queue_line(
        &mut self,
        parts: Vec<String>,
        timestamp_ms: i64,
        delivery: Delivery,
        shipped: Shipped,
        message_bytes: usize,
        now: Instant,
    ) -> usize {
        let receipt = delivery.into_rereadable_receipt();
        let count = parts.len();
        let mut queued = 0;
        for (i, message) in parts.into_iter().enumerate() {
            let mut cost = message.len() + PART_OVERHEAD;
            if i + 1 == count {
                cost += receipt_cost(&receipt);
            }
            self.pending_bytes += message.len() + EVENT_OVERHEAD_BYTES;
            queued += cost;
            self.pending.push_back(Part {
                timestamp_ms,
                message,
                arrived: now,
                cost,
                line: None,
            });
        }
        self.pending
            .back_mut()
            .expect("a line has at least one part")
            .line = Some(Box::new(LineEnd {
            receipt,
            shipped,
            message_bytes,
            event_index: 0,
        }));
        queued
    }

    /// Whether the line at `position` was accepted already.
    fn is_duplicate(&self, position: Checkpoint) -> bool {
        self.high_water
            .is_some_and(|hw| hw.already_shipped(position.timestamp_ns, position.seq_at_timestamp))
    }

    /// Settles the lines at the front that equal the looked-up events, in
    /// order; the recovery ends at the first that differs or when the
    /// events are used up. Returns the settled lines and the buffered bytes
    /// they held.
    fn match_recovered(&mut self) -> (Vec<LineEnd>, usize) {
        let (mut found, mut cost) = (Vec::new(), 0);
        let Recovery::Matching(events) = &mut self.recovery else {
            return (found, cost);
        };
        while let Some(last) = self.pending.iter().position(|p| p.line.is_some()) {
            let parts = last + 1;
            let equal = events.len() >= parts
                && self
                    .pending
                    .iter()
                    .zip(events.iter())
                    .take(parts)
                    .all(|(p, e)| p.timestamp_ms == e.timestamp_ms && p.message == e.message);
            if !equal {
                self.recovery = Recovery::Settled;
                break;
            }
            for part in self.pending.drain(..parts) {
                events.pop_front();
                cost += part.cost;
                self.pending_bytes -= part.message.len() + EVENT_OVERHEAD_BYTES;
                found.extend(part.line.map(|line| *line));
            }
        }
        if matches!(&self.recovery, Recovery::Matching(events) if events.is_empty()) {
            self.recovery = Recovery::Settled;
        }
        (found, cost)
    }

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

/// A put to start: one batch of one stream.
pub(super) struct Put {
    /// The stream, for [`Scheduler::finished`].
    pub(super) stream: u64,
    pub(super) group: Arc<Group>,
    /// The CloudWatch stream name.
    pub(super) name: String,
    pub(super) phase: Phase,
    pub(super) batch: Batch,
    /// Buffered bytes the batch holds, released when the put ends.
    pub(super) cost: usize,
}

/// A recovery lookup to start: the events of a stream after the checkpoint
/// it started from.
pub(super) struct Lookup {
    pub(super) stream: u64,
    pub(super) group: Arc<Group>,
    pub(super) name: String,
    pub(super) after: Option<Shipped>,
}

/// The streams, their pending lines and the order they send in.
pub(super) struct Scheduler {
    /// Where streams start from, and what settles lines found in CloudWatch.
    commits: Commits,
    /// The last run did not stop cleanly: streams start [`Recovery::Unchecked`].
    recovering: bool,
    /// Lookups to start.
    lookups: Vec<Lookup>,
    /// Parked groups and when they are tried again.
    parked: HashMap<GroupKey, Instant>,
    park_duration: Duration,
    /// Each route's group naming and client.
    destinations: LogDestinations,
    linger: Duration,
    max_event_bytes: usize,
    max_in_flight: usize,
    max_buffered_bytes: usize,
    idle_stream_expiry: Duration,
    streams: HashMap<u64, Stream>,
    ids: HashMap<ContainerKey, u64>,
    next_id: u64,
    groups: HashMap<GroupKey, Arc<Group>>,
    /// Streams with a batch due, in the order they became due (fairness).
    ready: VecDeque<u64>,
    /// When a stream's oldest line has lingered enough (may be stale).
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Puts started and not yet finished.
    in_flight: usize,
    /// Bytes of lines read and not yet done.
    buffered: usize,
    draining: bool,
    /// The memory bound was reached and the buffer has not yet fallen to
    /// half of it: reading waits, every stream sends what it has.
    pressure: bool,
}

impl Scheduler {
    /// Streams of the groups `destinations` name, tuned by `options`.
    pub(super) fn new(
        destinations: LogDestinations,
        options: &LogPublisherOptions,
        commits: Commits,
    ) -> Self {
        Scheduler {
            recovering: !commits.checkpoints().previous_run_ended_cleanly(),
            commits,
            lookups: Vec::new(),
            parked: HashMap::new(),
            park_duration: options.park_duration,
            destinations,
            linger: options.linger,
            max_event_bytes: options.max_event_bytes,
            max_in_flight: options.max_in_flight.max(1),
            max_buffered_bytes: options.max_buffered_bytes,
            idle_stream_expiry: options.idle_stream_expiry,
            streams: HashMap::new(),
            ids: HashMap::new(),
            next_id: 0,
            groups: HashMap::new(),
            ready: VecDeque::new(),
            timers: BinaryHeap::new(),
            in_flight: 0,
            buffered: 0,
            draining: false,
            pressure: false,
        }
    }

    /// Splits the lines, read at `now`, into parts and queues them on their
    /// streams.
    pub(super) fn ingest(&mut self, deliveries: Vec<Delivery>, now: Instant) {
        let max_part = max_part_bytes(self.max_event_bytes);
        let linger = self.linger;
        let urgent = self.urgent();
        let mut split: HashMap<String, u64> = HashMap::new();
        let mut duplicates: HashMap<String, u64> = HashMap::new();
        for delivery in deliveries {
            let mut line = match LogLine::from_record(delivery.payload()) {
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
            let route = std::mem::take(&mut line.route);
            let (key, message) = line.into_key_and_message();
            let id = self.stream_id(key, &route, now);
            let stream = self.streams.get_mut(&id).expect("stream_id inserts");
            if stream.is_duplicate(checkpoint) {
                *duplicates.entry(stream.key.cluster.clone()).or_default() += 1;
                delivery.ack();
                continue;
            }
            if matches!(stream.recovery, Recovery::Unchecked) {
                stream.recovery = if delivery.from_previous_run() {
                    self.lookups.push(Lookup {
                        stream: id,
                        group: stream.group.clone(),
                        name: stream.name.clone(),
                        after: stream.resumed_from,
                    });
                    Recovery::Looking
                } else {
                    Recovery::Settled
                };
            }
            let parts = line_parts(message, max_part);
            let events_at_ms = match stream.at_ms {
                Some((ms, n)) if ms == timestamp => n + parts.len() as u32,
                _ => parts.len() as u32,
            };
            stream.at_ms = Some((timestamp, events_at_ms));
            stream.high_water = Some(checkpoint);
            if !stream.held() && (stream.group.is_parked() || !stream.aside.is_empty()) {
                // Behind the lines already set aside, in the log's order.
                stream.aside.push_back((delivery.set_aside(), events_at_ms));
                stream.last_active = now;
                continue;
            }
            if parts.len() > 1 {
                *split.entry(stream.key.cluster.clone()).or_default() += 1;
            }
            let was_empty = stream.pending.is_empty();
            let shipped = Shipped {
                checkpoint,
                events_at_ms: Some(events_at_ms),
            };
            self.buffered +=
                stream.queue_line(parts, timestamp, delivery, shipped, message_bytes, now);
            stream.last_active = now;
            if matches!(stream.recovery, Recovery::Matching(_)) {
                self.settle_recovered(id, now);
                continue;
            }
            if stream.in_flight
                || stream.queued
                || stream.stopped
                || stream.held()
                || stream.group.is_parked()
            {
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
        for (cluster, n) in duplicates {
            count_duplicates(&cluster, "checkpoint", n);
        }
    }

    /// Recovery lookups to start (each stream's once).
    pub(super) fn take_lookups(&mut self) -> Vec<Lookup> {
        std::mem::take(&mut self.lookups)
    }

    /// The lookup of `stream` answered `events` (CloudWatch's events after
    /// its checkpoint, oldest first) at `now`: its lines are matched to
    /// them, then sending resumes.
    pub(super) fn lookup_done(&mut self, stream: u64, events: VecDeque<StoredEvent>, now: Instant) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        if !matches!(s.recovery, Recovery::Looking) {
            return;
        }
        info!(
            cluster = %s.key.cluster,
            stream = %s.name,
            events_after_checkpoint = events.len(),
            "unclean stop: lines of the previous run already in CloudWatch are not sent again"
        );
        s.recovery = if events.is_empty() {
            Recovery::Settled
        } else {
            Recovery::Matching(events)
        };
        self.settle_recovered(stream, now);
    }

    /// Settles the lines of `id` found in CloudWatch as shipped (checkpoint
    /// advanced, acknowledged after the next commit) and schedules the
    /// stream once its recovery ended.
    fn settle_recovered(&mut self, id: u64, now: Instant) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let (found, cost) = stream.match_recovered();
        self.buffered = self.buffered.saturating_sub(cost);
        if !found.is_empty() {
            count_duplicates(&stream.key.cluster, "cloudwatch", found.len() as u64);
            let last = found.last().map(|line| line.shipped);
            self.commits.shipped(
                stream.key.clone(),
                last,
                found.into_iter().map(|line| line.receipt),
            );
        }
        if stream.held() {
            return;
        }
        self.schedule(id, now);
    }

    /// The put of `id` was refused for a reason retrying will not heal:
    /// its group parks (if it is not already) and every stream of the group
    /// sets its lines aside, the refused batch first.
    fn park(&mut self, id: u64, parked: Parked, now: Instant) {
        let Parked { error, batch } = parked;
        let Some(group) = self.streams.get(&id).map(|s| Arc::clone(&s.group)) else {
            return;
        };
        if !self.parked.contains_key(&group.key) {
            let until = now + self.park_duration;
            self.parked.insert(group.key.clone(), until);
            group.set_parked(true);
            error!(
                route = %group.destination.route,
                cluster = %group.cluster,
                group = %group.name,
                error = %error,
                retry_in = ?self.park_duration,
                "log group parked: its lines wait in the spool, other groups go on"
            );
            report_park(&group, &error);
        }
        let mut freed = 0;
        let mut returned = Some(batch.lines);
        for (stream_id, stream) in self.streams.iter_mut() {
            if stream.group.key != group.key || stream.held() {
                continue;
            }
            let first = if *stream_id == id {
                returned.take()
            } else {
                None
            };
            freed += set_aside_pending(stream, first.unwrap_or_default());
        }
        self.buffered = self.buffered.saturating_sub(freed);
    }

    /// Unparks the groups whose pause has ended at `now`, and takes lines
    /// set aside back into their streams while the memory bound allows.
    pub(super) fn unpark_due(&mut self, now: Instant) {
        let due: Vec<GroupKey> = self
            .parked
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(key, _)| key.clone())
            .collect();
        for key in due {
            self.parked.remove(&key);
            if let Some(group) = self.groups.get(&key) {
                group.set_parked(false);
                info!(route = %group.destination.route, group = %group.name, "log group unparked: sending its lines again");
                metrics()
                    .log_group_parked
                    .get_or_create(&group_labels(group))
                    .set(0);
            }
        }
        let ids: Vec<u64> = self
            .streams
            .iter()
            .filter(|(_, s)| !s.aside.is_empty() && !s.group.is_parked())
            .map(|(id, _)| *id)
            .collect();
        let max_part = max_part_bytes(self.max_event_bytes);
        let bound = self.max_buffered_bytes / 2;
        for id in ids {
            if self.buffered >= bound {
                return;
            }
            let Some(stream) = self.streams.get_mut(&id) else {
                continue;
            };
            self.buffered += take_back(stream, bound, self.buffered, max_part, now);
            self.schedule(id, now);
        }
    }

    /// Queues `id` if it is due, else sets its linger timer.
    fn schedule(&mut self, id: u64, now: Instant) {
        let (linger, urgent) = (self.linger, self.urgent());
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        if stream.in_flight
            || stream.queued
            || stream.stopped
            || stream.held()
            || stream.group.is_parked()
        {
            return;
        }
        if stream.due(now, linger, urgent) {
            stream.queued = true;
            self.ready.push_back(id);
        } else if let Some(oldest) = stream.pending.front() {
            self.timers.push(Reverse((oldest.arrived + linger, id)));
        }
    }

    /// The id of a container instance's stream, created on first use.
    /// Its group is the one `route` names for the container's cluster (a
    /// stream's route is fixed: its pod's, chosen when the pod was first
    /// seen).
    fn stream_id(&mut self, key: ContainerKey, route: &str, now: Instant) -> u64 {
        if let Some(id) = self.ids.get(&key) {
            return *id;
        }
        let id = self.next_id;
        self.next_id += 1;
        let (index, destination) = self.destinations.for_route(route);
        let group_key: GroupKey = (index, destination.naming.group(&key.cluster));
        let group = self
            .groups
            .entry(group_key)
            .or_insert_with(|| {
                Arc::new(Group::new(
                    key.cluster.clone(),
                    index,
                    Arc::clone(destination),
                ))
            })
            .clone();
        let resumed_from = self.commits.checkpoints().shipped(&key);
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
            last_active: now,
            high_water: resumed_from.map(|s| s.checkpoint),
            at_ms: resumed_from
                .and_then(|s| Some((timestamp_ms(s.checkpoint.timestamp_ns), s.events_at_ms?))),
            resumed_from,
            aside: VecDeque::new(),
            recovery: if self.recovering {
                Recovery::Unchecked
            } else {
                Recovery::Settled
            },
        };
        self.streams.insert(id, stream);
        self.ids.insert(key, id);
        id
    }

    /// The next put to start: the first ready stream's next batch, while
    /// fewer than `max_in_flight` puts run. The stream counts as in flight
    /// until [`Scheduler::finished`].
    pub(super) fn next_put(&mut self) -> Option<Put> {
        while self.in_flight < self.max_in_flight {
            let id = self.ready.pop_front()?;
            let Some(stream) = self.streams.get_mut(&id) else {
                continue;
            };
            stream.queued = false;
            if stream.in_flight
                || stream.stopped
                || stream.held()
                || stream.group.is_parked()
                || stream.pending.is_empty()
            {
                continue;
            }
            let (batch, cost, bytes) = take_batch(&mut stream.pending, stream.key.clone());
            stream.pending_bytes -= bytes;
            stream.in_flight = true;
            self.in_flight += 1;
            return Some(Put {
                stream: id,
                group: stream.group.clone(),
                name: stream.name.clone(),
                phase: stream.phase,
                batch,
                cost,
            });
        }
        None
    }

    /// A put of `stream` ended at `now`, holding `cost` buffered bytes: the
    /// stream may send its next batch. `done` is `None` when the task
    /// panicked (its records went back to the spool and come again, after
    /// newer lines).
    pub(super) fn finished(&mut self, stream: u64, cost: usize, done: Option<Done>, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.buffered = self.buffered.saturating_sub(cost);
        let id = stream;
        let Some(done) = done else {
            // Its lines went back to the spool and come again first; the
            // stream starts over from its checkpoint, or the duplicate filter
            // would take them for lines already accepted. Its pending lines
            // go back too (dropped deliveries), to keep the log's order.
            if let Some(stream) = self.streams.remove(&id) {
                let held: usize = stream.pending.iter().map(|p| p.cost).sum();
                self.buffered = self.buffered.saturating_sub(held);
                self.ids.remove(&stream.key);
            }
            return;
        };
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        stream.in_flight = false;
        stream.phase = done.phase;
        stream.stopped |= done.abandoned;
        if let Some(parked) = done.parked {
            stream.last_active = now;
            self.park(id, parked, now);
            return;
        }
        stream.last_active = now;
        self.schedule(id, now);
    }

    /// When the next linger timer fires, if any.
    pub(super) fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Queues the streams whose oldest line has lingered enough at `now`.
    pub(super) fn fire_timers(&mut self, now: Instant) {
        let linger = self.linger;
        let urgent = self.urgent();
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now {
                return;
            }
            self.timers.pop();
            let Some(stream) = self.streams.get_mut(&id) else {
                continue;
            };
            if stream.in_flight
                || stream.queued
                || stream.stopped
                || stream.held()
                || stream.group.is_parked()
            {
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

    /// Applies the memory bound. True when it was just reached: every stream
    /// with lines was queued (the caller starts their puts before reading
    /// on). Reading resumes at half the bound, so that each read-and-flush
    /// cycle moves many lines per stream, not one.
    pub(super) fn apply_memory_bound(&mut self) -> bool {
        if !self.pressure && self.buffered >= self.max_buffered_bytes {
            // A backlog: waiting for fuller batches gains nothing.
            self.pressure = true;
            self.queue_all_pending();
            return true;
        }
        self.pressure &= self.buffered >= self.max_buffered_bytes / 2;
        false
    }

    /// Whether the spool may be read: not draining, not at the memory bound.
    pub(super) fn can_read(&self) -> bool {
        !self.draining && !self.pressure
    }

    /// Shutdown: stop reading, send everything pending now.
    pub(super) fn start_draining(&mut self) {
        self.draining = true;
        let pending: usize = self.streams.values().map(|s| s.pending.len()).sum();
        info!(
            puts_in_flight = self.in_flight,
            pending_events = pending,
            "shutting down: sending pending log lines"
        );
        self.queue_all_pending();
    }

    /// Draining, and nothing left to start or to await.
    pub(super) fn is_drained(&self) -> bool {
        self.draining && self.in_flight == 0 && self.ready.is_empty()
    }

    /// Whether lines are sent at once rather than after their linger.
    fn urgent(&self) -> bool {
        self.draining || self.pressure
    }

    /// Queues every stream that has pending lines and no put in flight.
    fn queue_all_pending(&mut self) {
        for (id, stream) in &mut self.streams {
            if !stream.pending.is_empty()
                && !stream.in_flight
                && !stream.queued
                && !stream.stopped
                && !stream.held()
                && !stream.group.is_parked()
            {
                stream.queued = true;
                self.ready.push_back(*id);
            }
        }
    }

    /// Forgets streams without lines for `idle_stream_expiry` at `now`.
    pub(super) fn expire_idle_streams(&mut self, now: Instant) {
        let expiry = self.idle_stream_expiry;
        let idle: Vec<u64> = self
            .streams
            .iter()
            .filter(|(_, s)| {
                !s.in_flight
                    && !s.queued
                    && s.pending.is_empty()
                    && s.aside.is_empty()
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

    /// Drops every stream and its pending lines (their records stay in the
    /// spool): the end of a shutdown.
    pub(super) fn clear(&mut self) {
        self.streams.clear();
    }
}

/// Sets aside `returned` (a refused batch's lines) and then every pending
/// line of `stream`, in front of what is already set aside. Returns the
/// buffered bytes freed.
fn set_aside_pending(stream: &mut Stream, returned: Vec<LineEnd>) -> usize {
    let mut freed = 0;
    let mut front: Vec<(SetAside, u32)> = Vec::new();
    let mut keep = |line: LineEnd| {
        let n = line.shipped.events_at_ms.unwrap_or(0);
        front.push((line.receipt.set_aside(), n));
    };
    returned.into_iter().for_each(&mut keep);
    for part in stream.pending.drain(..) {
        freed += part.cost;
        part.line.into_iter().for_each(|line| keep(*line));
    }
    stream.pending_bytes = 0;
    for item in front.into_iter().rev() {
        stream.aside.push_front(item);
    }
    freed
}

/// Takes lines set aside back into `stream`'s pending queue, oldest first,
/// until the buffer (at `buffered`) reaches `bound`. Returns the bytes they
/// now hold. A line that cannot be read back stays set aside (logged).
fn take_back(
    stream: &mut Stream,
    bound: usize,
    mut buffered: usize,
    max_part: usize,
    now: Instant,
) -> usize {
    let start = buffered;
    while buffered < bound {
        let Some((aside, events_at_ms)) = stream.aside.pop_front() else {
            break;
        };
        let delivery = match aside.take_back() {
            Ok(delivery) => delivery,
            Err(failed) => {
                let (aside, error) = *failed;
                error!(stream = %stream.name, error = %error, "a log line set aside cannot be read back from the spool; it waits for the next start");
                stream.aside.push_front((aside, events_at_ms));
                break;
            }
        };
        let line = match LogLine::from_record(delivery.payload()) {
            Ok(line) => line,
            // Decoded once before it was set aside: the same bytes decode.
            Err(error) => {
                error!(record = delivery.id(), error = %error, "a log line read back from the spool is not a log line; dropped");
                reject_line(&stream.key.cluster, "undecodable", 1);
                delivery.ack();
                continue;
            }
        };
        let checkpoint = Checkpoint::of(&line);
        let timestamp = timestamp_ms(line.timestamp);
        let message_bytes = line.message.len();
        let (_, message) = line.into_key_and_message();
        let parts = line_parts(message, max_part);
        let shipped = Shipped {
            checkpoint,
            events_at_ms: Some(events_at_ms),
        };
        buffered += stream.queue_line(parts, timestamp, delivery, shipped, message_bytes, now);
    }
    buffered - start
}

/// The labels of `group`'s series: its route and name.
fn group_labels(group: &Group) -> LogGroupLabels {
    LogGroupLabels {
        route: group.destination.route.clone(),
        group: group.name.clone(),
    }
}

/// Counts a park of `group` by its error code, and sets the gauge.
fn report_park(group: &Group, error: &super::retry::LogsError) {
    let m = metrics();
    let code = match error {
        super::retry::LogsError::GroupRefused { code, .. } => code.clone(),
        other => other.metric_label().to_owned(),
    };
    m.log_group_parks
        .get_or_create(&LogGroupReasonLabels {
            route: group.destination.route.clone(),
            group: group.name.clone(),
            reason: code,
        })
        .inc();
    m.log_group_parked
        .get_or_create(&group_labels(group))
        .set(1);
}

#[cfg(test)]
mod tests {
    use super::super::batch::LINE_OVERHEAD;
    use super::*;
    use crate::config::GroupNaming;
    use crate::names::log_group_name;

    /// The default route only: groups `/{prefix}-{cluster}`.
    fn destinations(prefix: &str) -> LogDestinations {
        routed(&[(
            crate::config::DEFAULT_LOG_ROUTE,
            GroupNaming::Prefix(prefix.into()),
        )])
    }

    /// Destinations of `routes`, with a client that is never asked (the
    /// scheduler does no I/O).
    fn routed(routes: &[(&str, GroupNaming)]) -> LogDestinations {
        let config = aws_sdk_cloudwatchlogs::Config::builder()
            .behavior_version(aws_sdk_cloudwatchlogs::config::BehaviorVersion::latest())
            .region(aws_sdk_cloudwatchlogs::config::Region::new("us-east-1"))
            .build();
        LogDestinations::for_tests(routes, aws_sdk_cloudwatchlogs::Client::from_conf(config))
    }
    use crate::spool::{Spool, SpoolReader};

    const LINGER: Duration = Duration::from_secs(1);

    fn options(max_in_flight: usize) -> LogPublisherOptions {
        LogPublisherOptions {
            max_in_flight,
            linger: LINGER,
            ..LogPublisherOptions::default()
        }
    }

    /// A line of `pod`, each a nanosecond after the one before (lines at
    /// one position are duplicates to the sink).
    fn line(pod: &str, message: &str) -> LogLine {
        static CLOCK: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
        let tick = CLOCK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        LogLine {
            cluster_name: "unit".into(),
            namespace: "ns".into(),
            pod: pod.into(),
            container: "app".into(),
            restart_count: 0,
            timestamp: 1_750_000_000_000_000_000 + tick,
            seq_at_timestamp: 1,
            message: message.into(),
            route: crate::config::DEFAULT_LOG_ROUTE.into(),
        }
    }

    /// Lines through a real spool (in memory unless made `on_disk`): a
    /// Delivery only comes from one.
    struct Feed {
        spool: Spool,
        reader: SpoolReader,
        _dir: Option<tempfile::TempDir>,
    }

    impl Feed {
        fn new() -> Feed {
            let spool = Spool::in_memory(64 << 20);
            let reader = spool.reader().unwrap();
            Feed {
                spool,
                reader,
                _dir: None,
            }
        }

        fn on_disk() -> Feed {
            let dir = tempfile::tempdir().unwrap();
            let spool = Spool::open(
                dir.path(),
                crate::spool::SpoolOptions::with_max_bytes(64 << 20),
            )
            .unwrap();
            let reader = spool.reader().unwrap();
            Feed {
                spool,
                reader,
                _dir: Some(dir),
            }
        }

        fn lines(&mut self, lines: &[LogLine]) -> Vec<Delivery> {
            let writer = self.spool.writer();
            for line in lines {
                writer.append(&line.to_record()).unwrap();
            }
            self.reader
                .next_batch(lines.len(), Duration::from_secs(1))
                .unwrap()
        }

        fn one(&mut self, pod: &str) -> Vec<Delivery> {
            self.lines(&[line(pod, "hello")])
        }
    }

    fn commits() -> Commits {
        Commits::new(crate::logs::CheckpointStore::in_memory().unwrap())
    }

    fn done() -> Option<Done> {
        Some(Done {
            phase: Phase::Put { generation: 1 },
            abandoned: false,
            parked: None,
        })
    }

    #[test]
    fn a_stream_is_due_after_its_linger_not_before() {
        let (mut feed, t0) = (Feed::new(), Instant::now());
        let mut scheduler = Scheduler::new(destinations("p"), &options(4), commits());
        scheduler.ingest(feed.one("a"), t0);
        assert!(scheduler.next_put().is_none(), "a lone line lingers");
        assert_eq!(scheduler.next_timer(), Some(t0 + LINGER));

        scheduler.fire_timers(t0 + LINGER - Duration::from_millis(1));
        assert!(scheduler.next_put().is_none(), "not before its linger");

        scheduler.fire_timers(t0 + LINGER);
        let put = scheduler.next_put().expect("due once it lingered");
        assert_eq!(put.batch.events.len(), 1);
        assert_eq!(put.batch.lines.len(), 1);
        assert_eq!(put.name, "ns/a/app/0");
        assert_eq!(put.group.name, log_group_name("p", "unit"));
        assert_eq!(put.phase, Phase::EnsureGroup { failed: None });
    }

    #[test]
    fn a_full_batch_is_due_at_once_by_count_and_by_bytes() {
        let (mut feed, t0) = (Feed::new(), Instant::now());
        let mut scheduler = Scheduler::new(destinations("p"), &options(4), commits());
        let lines: Vec<LogLine> = (0..MAX_BATCH_EVENTS).map(|_| line("count", "x")).collect();
        scheduler.ingest(feed.lines(&lines), t0);
        let put = scheduler
            .next_put()
            .expect("10,000 events are a full batch");
        assert_eq!(put.batch.events.len(), MAX_BATCH_EVENTS);

        // Five 200 kB lines fit 1,048,576 bytes; the sixth makes the stream due.
        let big = "y".repeat(200_000);
        let lines: Vec<LogLine> = (0..5).map(|_| line("bytes", &big)).collect();
        scheduler.ingest(feed.lines(&lines), t0);
        assert!(
            scheduler.next_put().is_none(),
            "under 1 MiB pending: lingers"
        );
        scheduler.ingest(feed.lines(&[line("bytes", &big)]), t0);
        let put = scheduler.next_put().expect("over 1 MiB pending: due");
        assert_eq!(
            put.batch.events.len(),
            5,
            "a batch stays within 1,048,576 bytes"
        );
    }

    #[test]
    fn urgency_sends_without_linger_at_the_memory_bound() {
        let (mut feed, t0) = (Feed::new(), Instant::now());
        let options = LogPublisherOptions {
            max_buffered_bytes: 1,
            ..options(4)
        };
        let mut scheduler = Scheduler::new(destinations("p"), &options, commits());
        scheduler.ingest(feed.one("a"), t0);
        assert!(scheduler.can_read());
        assert!(scheduler.apply_memory_bound(), "the bound is reached");
        assert!(!scheduler.can_read(), "reading waits at the bound");
        let put = scheduler.next_put().expect("sent without lingering");
        // Lines arriving under pressure are due at once too.
        scheduler.ingest(feed.one("b"), t0);
        assert!(scheduler.next_put().is_some());
        scheduler.finished(put.stream, put.cost, done(), t0);
        assert!(!scheduler.apply_memory_bound());
    }

    #[test]
    fn a_queued_line_holds_its_message_and_a_receipt_not_its_record() {
        let t0 = Instant::now();
        let one = line("a", "hello");
        let record = one.to_record().len();
        let queued = "hello".len() + PART_OVERHEAD + LINE_OVERHEAD;
        for (mut feed, held) in [(Feed::on_disk(), 0), (Feed::new(), record)] {
            let mut scheduler = Scheduler::new(destinations("p"), &options(4), commits());
            scheduler.ingest(feed.lines(std::slice::from_ref(&one)), t0);
            // On disk the record can be read again: only the message stays
            // in memory. In memory its bytes live nowhere else.
            assert_eq!(scheduler.buffered, queued + held);
        }
    }

    #[test]
    fn a_routes_lines_go_to_its_group_and_its_park_leaves_the_default_flowing() {
        // On disk the lines set aside are read back from their segments.
        a_park_leaves_the_default_flowing(Feed::new());
        a_park_leaves_the_default_flowing(Feed::on_disk());
    }

    fn a_park_leaves_the_default_flowing(mut feed: Feed) {
        let t0 = Instant::now();
        let options = options(4);
        let mut scheduler = Scheduler::new(
            routed(&[
                (
                    crate::config::DEFAULT_LOG_ROUTE,
                    GroupNaming::Prefix("p".into()),
                ),
                ("tenant", GroupNaming::Fixed("/tenants/t".into())),
            ]),
            &options,
            commits(),
        );
        let tenant_line = |message: &str| LogLine {
            route: "tenant".into(),
            ..line("t", message)
        };
        scheduler.ingest(feed.lines(&[line("a", "own 1"), tenant_line("t 1")]), t0);
        scheduler.fire_timers(t0 + LINGER);
        let mut puts: Vec<Put> = std::iter::from_fn(|| scheduler.next_put()).collect();
        puts.sort_by_key(|put| put.group.name.clone());
        let groups: Vec<(&str, &str)> = puts
            .iter()
            .map(|put| {
                (
                    put.group.destination.route.as_str(),
                    put.group.name.as_str(),
                )
            })
            .collect();
        assert_eq!(
            groups,
            [("default", "/p-unit"), ("tenant", "/tenants/t")],
            "each line in its route's group"
        );

        // The tenant's role is refused: its group parks.
        let (own, tenant) = (puts.remove(0), puts.remove(0));
        let t1 = t0 + LINGER;
        let refused = Done {
            phase: Phase::EnsureGroup { failed: None },
            abandoned: false,
            parked: Some(Parked {
                error: super::super::retry::LogsError::GroupRefused {
                    op: "CreateLogGroup",
                    code: "AssumeRole:AccessDenied".into(),
                    message: "not authorized".into(),
                },
                batch: tenant.batch,
            }),
        };
        scheduler.finished(tenant.stream, tenant.cost, Some(refused), t1);
        scheduler.finished(own.stream, own.cost, done(), t1);
        scheduler.ingest(feed.lines(&[line("a", "own 2"), tenant_line("t 2")]), t1);
        scheduler.fire_timers(t1 + LINGER);
        let flowing: Vec<Put> = std::iter::from_fn(|| scheduler.next_put()).collect();
        assert_eq!(flowing.len(), 1, "only the default route sends");
        assert_eq!(flowing[0].group.name, "/p-unit");
        assert!(!flowing[0].group.is_parked());

        // The pause over, the tenant's lines come back, the refused first.
        let t2 = t1 + options.park_duration;
        scheduler.unpark_due(t2);
        scheduler.fire_timers(t2 + LINGER);
        let back = scheduler
            .next_put()
            .expect("the tenant's group sends again");
        assert_eq!(back.group.name, "/tenants/t");
        assert_eq!(back.batch.lines.len(), 2, "t 1 and t 2, none lost");
        let messages: Vec<&str> = back.batch.events.iter().map(|e| e.message()).collect();
        assert_eq!(messages, ["t 1", "t 2"], "in the log's order");
    }

    #[test]
    fn one_put_in_flight_per_stream() {
        let (mut feed, t0) = (Feed::new(), Instant::now());
        let mut scheduler = Scheduler::new(destinations("p"), &options(4), commits());
        scheduler.ingest(feed.one("a"), t0);
        scheduler.fire_timers(t0 + LINGER);
        let first = scheduler.next_put().expect("due");

        let t1 = t0 + LINGER;
        scheduler.ingest(feed.one("a"), t1);
        scheduler.fire_timers(t1 + LINGER);
        assert!(
            scheduler.next_put().is_none(),
            "the stream's next batch waits for its put in flight"
        );

        scheduler.finished(first.stream, first.cost, done(), t1 + LINGER);
        let second = scheduler.next_put().expect("due once the first put ended");
        assert_eq!(second.stream, first.stream);
        assert_eq!(
            second.phase,
            Phase::Put { generation: 1 },
            "the next put starts where the last one ended"
        );
    }

    #[test]
    fn at_most_max_in_flight_puts_across_streams() {
        let (mut feed, t0) = (Feed::new(), Instant::now());
        let mut scheduler = Scheduler::new(destinations("p"), &options(2), commits());
        for pod in ["a", "b", "c"] {
            scheduler.ingest(feed.one(pod), t0);
        }
        scheduler.fire_timers(t0 + LINGER);
        let a = scheduler.next_put().expect("first");
        let b = scheduler.next_put().expect("second");
        assert!(scheduler.next_put().is_none(), "two in flight at most");
        assert_eq!(
            [a.name.as_str(), b.name.as_str()],
            ["ns/a/app/0", "ns/b/app/0"],
            "in the order they became due"
        );
        scheduler.finished(a.stream, a.cost, done(), t0 + LINGER);
        let c = scheduler.next_put().expect("a slot freed");
        assert_eq!(c.name, "ns/c/app/0");
    }

    #[test]
    fn draining_sends_everything_then_reports_drained() {
        let (mut feed, t0) = (Feed::new(), Instant::now());
        let mut scheduler = Scheduler::new(destinations("p"), &options(4), commits());
        scheduler.ingest(feed.one("a"), t0);
        scheduler.ingest(feed.one("b"), t0);
        assert!(scheduler.next_put().is_none());
        assert!(!scheduler.is_drained(), "not draining yet");

        scheduler.start_draining();
        assert!(!scheduler.can_read(), "no reading while draining");
        let a = scheduler.next_put().expect("sent at once");
        let b = scheduler.next_put().expect("sent at once");
        assert!(!scheduler.is_drained(), "puts in flight");
        scheduler.finished(a.stream, a.cost, done(), t0);
        // A put abandoned at shutdown stops its stream.
        let abandoned = Done {
            phase: b.phase,
            abandoned: true,
            parked: None,
        };
        scheduler.finished(b.stream, b.cost, Some(abandoned), t0);
        assert!(scheduler.is_drained());
    }

    #[test]
    fn an_abandoned_stream_sends_nothing_more() {
        let (mut feed, t0) = (Feed::new(), Instant::now());
        let mut scheduler = Scheduler::new(destinations("p"), &options(4), commits());
        scheduler.ingest(feed.one("a"), t0);
        scheduler.fire_timers(t0 + LINGER);
        let put = scheduler.next_put().expect("due");
        scheduler.ingest(feed.one("a"), t0 + LINGER);
        let abandoned = Done {
            phase: put.phase,
            abandoned: true,
            parked: None,
        };
        scheduler.finished(put.stream, put.cost, Some(abandoned), t0 + 3 * LINGER);
        scheduler.fire_timers(t0 + 3 * LINGER);
        scheduler.start_draining();
        assert!(scheduler.next_put().is_none());
        assert!(scheduler.is_drained());
    }

    #[test]
    fn idle_streams_are_forgotten_busy_ones_kept() {
        let (mut feed, t0) = (Feed::new(), Instant::now());
        let options = LogPublisherOptions {
            idle_stream_expiry: Duration::from_secs(60),
            ..options(4)
        };
        let mut scheduler = Scheduler::new(destinations("p"), &options, commits());
        scheduler.ingest(feed.one("a"), t0);
        scheduler.fire_timers(t0 + LINGER);
        let put = scheduler.next_put().unwrap();
        scheduler.finished(put.stream, put.cost, done(), t0 + LINGER);
        scheduler.ingest(feed.one("b"), t0 + LINGER);

        scheduler.expire_idle_streams(t0 + Duration::from_secs(120));
        assert_eq!(scheduler.streams.len(), 1, "b has a pending line");
        scheduler.ingest(feed.one("a"), t0 + Duration::from_secs(120));
        assert_eq!(scheduler.streams.len(), 2);
        let id = scheduler.ids[&ContainerKey::of(&line("a", ""))];
        assert_eq!(
            scheduler.streams[&id].phase,
            Phase::EnsureGroup { failed: None },
            "a forgotten stream is created again"
        );
    }

    fn at(line: &LogLine, seq: u32, message: &str) -> LogLine {
        LogLine {
            seq_at_timestamp: seq,
            message: message.into(),
            ..line.clone()
        }
    }

    #[test]
    fn lines_at_or_before_the_high_water_are_not_sent_again() {
        let (mut feed, t0) = (Feed::new(), Instant::now());
        let commits = commits();
        let base = line("a", "one");
        // Shipped before: the stream starts from this checkpoint.
        commits.checkpoints().advance_shipped(
            ContainerKey::of(&base),
            Shipped {
                checkpoint: Checkpoint {
                    timestamp_ns: base.timestamp,
                    seq_at_timestamp: 1,
                },
                events_at_ms: Some(1),
            },
        );
        let mut scheduler = Scheduler::new(destinations("p"), &options(4), commits);
        let lines = [
            at(&base, 1, "one"),
            at(&base, 2, "two"),
            at(&base, 2, "two"),
            at(&base, 3, "three"),
        ];
        scheduler.ingest(feed.lines(&lines), t0);
        scheduler.fire_timers(t0 + LINGER);
        let put = scheduler.next_put().expect("due");
        let messages: Vec<_> = put.batch.events.iter().map(|e| e.message()).collect();
        assert_eq!(
            messages,
            ["two", "three"],
            "the checkpointed line and the second copy of a queued one are dropped"
        );
        assert_eq!(
            put.batch.lines.last().map(|l| l.shipped.events_at_ms),
            Some(Some(3)),
            "three events of that millisecond through the last line, counting the shipped one"
        );
    }

    /// A spool and a checkpoint store left by a run that was killed: the
    /// spool holds `lines` from that run, the store has no clean mark.
    fn after_a_crash(dir: &std::path::Path, lines: &[LogLine]) -> (Spool, Commits) {
        let spool_dir = dir.join("spool");
        {
            let spool = Spool::open(&spool_dir, crate::spool::SpoolOptions::default()).unwrap();
            for line in lines {
                spool.writer().append(&line.to_record()).unwrap();
            }
            spool.sync().unwrap();
        }
        drop(crate::logs::CheckpointStore::open(&dir.join("checkpoints"), LINGER).unwrap());
        let store = crate::logs::CheckpointStore::open(&dir.join("checkpoints"), LINGER).unwrap();
        assert!(!store.previous_run_ended_cleanly());
        let spool = Spool::open(&spool_dir, crate::spool::SpoolOptions::default()).unwrap();
        (spool, Commits::new(store))
    }

    #[test]
    fn after_an_unclean_stop_lines_found_in_cloudwatch_are_settled_not_sent() {
        let dir = tempfile::tempdir().unwrap();
        let base = line("a", "");
        let lines = [
            at(&base, 1, "one"),
            at(&base, 2, "two"),
            at(&base, 3, "three"),
        ];
        let (spool, commits) = after_a_crash(dir.path(), &lines);
        let mut reader = spool.reader().unwrap();
        let t0 = Instant::now();
        let mut scheduler = Scheduler::new(destinations("p"), &options(4), commits.clone());
        let deliveries = reader.next_batch(10, Duration::from_secs(1)).unwrap();
        assert!(deliveries.iter().all(Delivery::from_previous_run));
        scheduler.ingest(deliveries, t0);
        let lookups = scheduler.take_lookups();
        assert_eq!(lookups.len(), 1, "one lookup for the stream");
        assert_eq!(lookups[0].after, None, "no checkpoint: the whole stream");
        scheduler.fire_timers(t0 + LINGER);
        assert!(scheduler.next_put().is_none(), "held while the lookup runs");

        // CloudWatch holds the first two lines: the put that carried them
        // was accepted just before the kill.
        let stored = |m: &str| StoredEvent {
            timestamp_ms: timestamp_ms(base.timestamp),
            message: m.into(),
        };
        let found = VecDeque::from([stored("one"), stored("two")]);
        scheduler.lookup_done(lookups[0].stream, found, t0 + LINGER);
        let put = scheduler.next_put().expect("the rest is due");
        let messages: Vec<_> = put.batch.events.iter().map(|e| e.message()).collect();
        assert_eq!(messages, ["three"]);
        let key = ContainerKey::of(&base);
        assert_eq!(
            commits
                .checkpoints()
                .shipped(&key)
                .map(|s| (s.checkpoint.seq_at_timestamp, s.events_at_ms)),
            Some((2, Some(2))),
            "the lines found advance the checkpoint"
        );
        assert_eq!(
            spool.stats().in_flight,
            3,
            "nothing acknowledged before the commit"
        );
        commits.commit(true);
        assert_eq!(
            spool.stats().in_flight,
            1,
            "the lines found are acknowledged after the commit; the one in the put is not"
        );
        drop(put);
    }

    #[test]
    fn a_line_that_differs_ends_the_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let base = line("a", "");
        let lines = [at(&base, 1, "one"), at(&base, 2, "two")];
        let (spool, commits) = after_a_crash(dir.path(), &lines);
        let mut reader = spool.reader().unwrap();
        let t0 = Instant::now();
        let mut scheduler = Scheduler::new(destinations("p"), &options(4), commits);
        scheduler.ingest(reader.next_batch(10, Duration::from_secs(1)).unwrap(), t0);
        let lookup = scheduler.take_lookups().pop().unwrap();
        let other = StoredEvent {
            timestamp_ms: timestamp_ms(base.timestamp),
            message: "someone else's".into(),
        };
        scheduler.lookup_done(lookup.stream, VecDeque::from([other]), t0 + LINGER);
        let put = scheduler.next_put().expect("due");
        assert_eq!(
            put.batch.events.len(),
            2,
            "nothing matched: everything is sent"
        );
    }
}

//! The life of a CloudWatch stream, as a state machine (STYLE 3): make
//! sure the group exists (with its retention) → create the stream → put.
//! [`ship`] steps one stream's [`Phase`] until its batch is accepted (or
//! given up), retrying with backoff as [`super::retry`] decides, then
//! advances the checkpoint to the batch's last line and hands its lines to
//! [`super::commit`], which acknowledges them after the durable commit.
//!
//! `ResourceAlreadyExistsException` is success; `ResourceNotFoundException`
//! on a put goes back to creating the stream, and on CreateLogStream back to
//! creating the group. A group is created once per process and shared by its
//! streams ([`Group`]).
//!
//! May import `cloudwatch::{batch, config, retry, report}`,
//! `publish::{concurrency, pacing}` and the checkpoint store.

use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::LogPublisherOptions;
use super::batch::Batch;
use super::commit::Commits;
use super::destination::{Destination, LogDestinations};
use super::report::{count_error, note_retry, reject_line};
use super::retry::{Action, LogsError, classify};
use crate::backoff::Backoff;
use crate::metrics::{ClusterLabels, metrics};
use crate::publish::concurrency::{AdaptiveConcurrency, Signal};
use crate::publish::pacing::{WarningLimiter, sleep_or_cancel};

/// Where a stream's next request starts: the CloudWatch stream life as a
/// state machine, stepped by [`ship`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
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
pub(super) struct Group {
    pub(super) name: String,
    pub(super) cluster: String,
    /// The route it belongs to: its account (client) and retention.
    pub(super) destination: Arc<Destination>,
    /// The destination's index and the name: one group of one account.
    pub(super) key: GroupKey,
    pub(super) slot: tokio::sync::Mutex<GroupSlot>,
    /// Parked by the scheduler: nothing is sent until it is unparked.
    parked: std::sync::atomic::AtomicBool,
}

impl Group {
    /// `cluster`'s group at `destination` (index `index`), not yet created
    /// in this process.
    pub(super) fn new(cluster: String, index: usize, destination: Arc<Destination>) -> Self {
        let name = destination.naming.group(&cluster);
        Group {
            key: (index, name.clone()),
            name,
            cluster,
            destination,
            slot: tokio::sync::Mutex::new(GroupSlot::default()),
            parked: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(super) fn is_parked(&self) -> bool {
        self.parked.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn set_parked(&self, parked: bool) {
        self.parked
            .store(parked, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A group's identity in the sink: its destination's index and its name
/// (two routes may name the same group in two accounts).
pub(super) type GroupKey = (usize, String);

#[derive(Default)]
pub(super) struct GroupSlot {
    /// Created (or found) and retention applied in this process.
    ready: bool,
    /// Bumped at each creation, so that many streams finding the group gone
    /// create it once.
    generation: u64,
}

/// What a put task reports back.
pub(super) struct Done {
    pub(super) phase: Phase,
    /// Shutdown came before the put succeeded: its lines stay in the spool.
    pub(super) abandoned: bool,
    /// The group refused the batch for a reason retrying will not heal: the
    /// batch comes back, for its lines to wait in the spool.
    pub(super) parked: Option<Parked>,
}

/// A batch refused by its log group ([`super::retry::Action::Park`]).
pub(super) struct Parked {
    pub(super) error: LogsError,
    pub(super) batch: Batch,
}

/// What every put task shares.
pub(super) struct Shared {
    /// Each route's groups, retention and client.
    pub(super) destinations: LogDestinations,
    pub(super) options: LogPublisherOptions,
    pub(super) shutdown: CancellationToken,
    /// Checkpoint advances, and acknowledgements after their durable commit.
    pub(super) commits: Commits,
    /// One retry warning a second, however many requests fail at once.
    pub(super) warnings: WarningLimiter,
    /// Paces the recovery lookups (shared with the followers' lookups).
    pub(super) lookups: super::LookupLimiter,
    /// The `PutLogEvents` requests allowed in flight.
    pub(super) concurrency: Arc<AdaptiveConcurrency>,
}

/// Sends one batch of a stream: steps its [`Phase`] until the put is
/// accepted (or given up), retrying with backoff. Returns the phase the
/// stream's next batch starts from.
pub(super) async fn ship(
    shared: Arc<Shared>,
    group: Arc<Group>,
    stream: String,
    mut phase: Phase,
    batch: Batch,
) -> Done {
    let mut backoff = Backoff::new(shared.options.retry_initial, shared.options.retry_max);
    let mut recreations = 0u32;
    let done = |phase, abandoned| Done {
        phase,
        abandoned,
        parked: None,
    };
    loop {
        let step = match phase {
            Phase::EnsureGroup { failed } => ensure_group(&group, failed)
                .await
                .map(|generation| Phase::CreateStream { generation }),
            Phase::CreateStream { generation } => {
                let created = group
                    .destination
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
                // A slot per attempt, none during the backoff. Not given up
                // at shutdown: draining sends what is pending, and the
                // deadline aborts what is left.
                let slot = shared.concurrency.acquire().await;
                let sent = Instant::now();
                let put = group
                    .destination
                    .client
                    .put_log_events()
                    .log_group_name(&group.name)
                    .log_stream_name(&stream)
                    .set_log_events(Some(batch.events.clone()))
                    .send()
                    .await
                    .map_err(|e| classify("PutLogEvents", e));
                let signal = Signal::of_failure(put.as_ref().err().map(LogsError::metric_label));
                shared.concurrency.observe(sent.elapsed(), signal);
                drop(slot);
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
            Err(error) if error.action() == Action::Park => {
                count_error(error.metric_label());
                return Done {
                    phase,
                    abandoned: false,
                    parked: Some(Parked { error, batch }),
                };
            }
            Err(error) => {
                count_error(error.metric_label());
                note_retry(
                    &shared.warnings,
                    &error,
                    &group.name,
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
async fn ensure_group(group: &Group, failed: Option<u64>) -> Result<u64, LogsError> {
    let mut slot = group.slot.lock().await;
    if slot.ready && Some(slot.generation) != failed {
        return Ok(slot.generation);
    }
    let created = group
        .destination
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
    let retention = group
        .destination
        .client
        .put_retention_policy()
        .log_group_name(&group.name)
        .retention_in_days(i32::try_from(group.destination.retention_days).unwrap_or(i32::MAX))
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
    let last = batch.lines.last().map(|line| line.shipped);
    let mut receipts = Vec::with_capacity(batch.lines.len());
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
        receipts.push(line.receipt);
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
    shared.commits.shipped(batch.key, last, receipts);
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
    let last = batch.lines.last().map(|line| line.shipped);
    let receipts = batch.lines.into_iter().map(|line| line.receipt);
    shared.commits.shipped(batch.key, last, receipts);
}

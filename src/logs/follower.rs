//! The pod-log follower of one context (SPEC §4): one OS thread with its own
//! current-thread tokio runtime, which LISTs and WATCHes the namespace's
//! pods ([`super::pods`]) and runs one follow task per container, init
//! containers included ([`super::follow`]), appending every line to the
//! logs spool as a [`LogLine`](crate::record::LogLine).
//!
//! ```text
//!  pods LIST+WATCH ──▶ pod view ──▶ per container: watch::channel(ContainerView)
//!  (watch::api)        exclusions            │
//!                                             ▼
//!                 follow task: wait for a slot (FollowLimit) ─▶ GET pods/log?follow
//!                   ─▶ lines: timestamp, seq, skip what was appended ─▶ logs spool
//! ```
//!
//! # Resume rule (no gaps, no duplicates)
//!
//! Every request after the first of an instance asks for `sinceTime` = the
//! whole second of the last line appended and skips through that line's
//! (timestamp, seq) position ([`super::line`]). Where the first request of
//! a container instance starts:
//!
//! 1. in this process: the follower's own last-appended position;
//! 2. on a fresh start with an on-disk spool
//!    ([`LogFollowOptions::resume_from_appended`]): the *appended* position
//!    the follower persisted in the checkpoint store after each append
//!    returned (lines appended but not yet shipped are still in the spool:
//!    resuming from the shipped checkpoint would append them twice), or the
//!    shipped checkpoint if it is later;
//! 3. otherwise (in-memory spool, or no appended position): the *shipped*
//!    checkpoint the sink wrote after CloudWatch accepted the line;
//! 4. no checkpoint at all: CloudWatch's last event of the stream
//!    ([`crate::publish::cloudwatch::last_shipped_from_cloudwatch`]) when a
//!    lookup is configured;
//! 5. failing that, the container's first line.
//!
//! A restart (`restartCount` up by one) ends the old instance's follow, reads
//! its rest with `previous=true` (same resume rule) into the old stream,
//! then follows the new instance into its own stream.
//!
//! # Bound
//!
//! At most `max_streams_per_cluster` log streams are open at once per
//! [`FollowLimit`]; excess waits in FIFO order. A follow holding a slot
//! while others wait gives it up after [`LogFollowOptions::fair_share`] and
//! queues again (resuming without gap), so every container is read even
//! when there are more running containers than slots.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info_span};

use crate::config::LogsConfig;
use crate::contexts::ClusterTarget;
use crate::logs::CheckpointStore;
use crate::metrics::{ClusterLabels, ClusterReasonLabels, metrics};
use crate::spool::SpoolWriter;
use crate::watch::WatchOptions;

/// Tunables of a log follower. `Default` gives production values; tests
/// shorten them.
#[derive(Clone)]
pub struct LogFollowOptions {
    /// LIST/WATCH timings of the pods watch (page size, watch timeout,
    /// idle deadline, request timeout, backoff).
    pub watch: WatchOptions,
    /// A log stream that sends no byte for this long is taken for a
    /// silently dropped connection (a load balancer's idle drop, SPEC §10)
    /// and reopened from the last position. A quiet container costs one
    /// cheap request per period.
    pub idle_timeout: Duration,
    /// Deadline of the response headers of a log request and of a pod GET.
    pub request_timeout: Duration,
    /// First reconnect delay (exponential, jittered, reset after a stream
    /// that delivered lines).
    pub backoff_initial: Duration,
    /// Cap of reconnect delays.
    pub backoff_max: Duration,
    /// A follow that has held its slot this long gives it up when other
    /// containers wait for one.
    pub fair_share: Duration,
    /// How long the open stream of a deleted (or newly excluded) pod may
    /// still run to deliver its last lines.
    pub finish_grace: Duration,
    /// Lines appended to the spool in one batch at most.
    pub max_batch_lines: usize,
    /// Message bytes appended in one batch at most.
    pub max_batch_bytes: usize,
    /// The logs spool is on disk: persist each instance's appended position
    /// in the checkpoint store and resume from it after a restart. Leave
    /// `false` with an in-memory spool (whose lines die with the process):
    /// the shipped checkpoint is then the resume point.
    pub resume_from_appended: bool,
    /// Where to look for the last shipped event of a stream without a
    /// checkpoint; `None`: resume from the container's start.
    pub cloudwatch: Option<CloudWatchLookup>,
    /// The bound of open streams shared by every context of one cluster;
    /// `None`: a bound of this follower's own, of
    /// `LogsConfig::max_streams_per_cluster`.
    pub limit: Option<FollowLimit>,
}

impl Default for LogFollowOptions {
    fn default() -> Self {
        LogFollowOptions {
            watch: WatchOptions::default(),
            idle_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            fair_share: Duration::from_secs(30),
            finish_grace: Duration::from_secs(10),
            max_batch_lines: 1000,
            max_batch_bytes: 512 * 1024,
            resume_from_appended: false,
            cloudwatch: None,
            limit: None,
        }
    }
}

impl std::fmt::Debug for LogFollowOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogFollowOptions")
            .field("idle_timeout", &self.idle_timeout)
            .field("fair_share", &self.fair_share)
            .field("resume_from_appended", &self.resume_from_appended)
            .field("cloudwatch", &self.cloudwatch.is_some())
            .finish_non_exhaustive()
    }
}

/// The CloudWatch lookup of a stream's last event, for instances without
/// a checkpoint.
#[derive(Clone)]
pub struct CloudWatchLookup {
    /// A client like the sink's ([`crate::publish::cloudwatch::logs_client`]).
    pub client: aws_sdk_cloudwatchlogs::Client,
    /// `LogsConfig::prefix`: groups are `/{prefix}-{cluster}`.
    pub prefix: String,
}

/// The bound of open log streams of one cluster: a FIFO semaphore plus a
/// count of waiters (which makes long follows yield their slot). Cloning
/// shares it: give one to every context of the same cluster.
#[derive(Clone, Debug)]
pub struct FollowLimit {
    semaphore: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    max: usize,
}

impl FollowLimit {
    /// At most `max` streams at once (at least one).
    pub fn new(max: usize) -> FollowLimit {
        let max = max.max(1);
        FollowLimit {
            semaphore: Arc::new(Semaphore::new(max)),
            waiting: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// The bound.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.max - self.semaphore.available_permits()
    }

    /// Containers waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Waits (FIFO) for a slot; released when the permit drops.
    pub(crate) async fn acquire(&self, labels: &ClusterLabels) -> OwnedSemaphorePermit {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let gauge = metrics().log_follows_waiting.get_or_create(labels).clone();
        gauge.inc();
        // Decrements even when the wait is cancelled (shutdown, restart).
        struct Waiting<'a>(&'a AtomicUsize, prometheus_client::metrics::gauge::Gauge);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
                self.1.dec();
            }
        }
        let _waiting = Waiting(&self.waiting, gauge);
        // The semaphore is never closed.
        Arc::clone(&self.semaphore)
            .acquire_owned()
            .await
            .expect("the follow semaphore is never closed")
    }
}

/// Where a follower stands, for health and readiness.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FollowerStatus {
    /// `starting`, `listing`, `watching`, `waiting`, `stopped`.
    pub phase: &'static str,
    /// A LIST of the pods completed in this process.
    pub synced: bool,
    /// Pods followed now (not excluded).
    pub pods: usize,
    /// Container follow tasks alive now.
    pub containers: usize,
    /// The last failure of the pods watch, cleared when a LIST completes.
    pub last_error: Option<String>,
}

/// The running thread of one context's log follower.
pub struct LogFollowerHandle {
    pub context: String,
    pub namespace: String,
    status: Arc<Mutex<FollowerStatus>>,
    alive: Arc<AtomicUsize>,
    thread: JoinHandle<()>,
}

impl LogFollowerHandle {
    pub fn status(&self) -> FollowerStatus {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        status.containers = self.alive.load(Ordering::Relaxed);
        status
    }

    /// Whether the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the thread to end (after `shutdown` was cancelled). A panic
    /// inside it is reported as an error of this context only.
    pub fn join(self) -> Result<(), String> {
        self.thread
            .join()
            .map_err(|_| format!("the log follower thread of {} panicked", self.context))
    }
}

/// What every task of one follower shares.
pub(crate) struct Shared {
    pub client: kube::Client,
    pub context: String,
    pub cluster_name: String,
    pub namespace: String,
    pub logs: LogsConfig,
    pub spool: SpoolWriter,
    pub checkpoints: CheckpointStore,
    pub options: LogFollowOptions,
    pub limit: FollowLimit,
    pub labels: ClusterLabels,
    /// Container follow tasks alive.
    pub alive: Arc<AtomicUsize>,
}

impl Shared {
    pub fn reason(&self, reason: &str) -> ClusterReasonLabels {
        ClusterReasonLabels {
            cluster: self.cluster_name.clone(),
            reason: reason.to_owned(),
        }
    }
}

/// Starts the log follower of `target`'s namespace on its own thread.
///
/// - `logs`: exclusions (`exclude_labels`) and the stream bound
///   (`max_streams_per_cluster`, unless `options.limit` shares one).
/// - `spool`: the *logs* spool's writer; a full spool makes follows wait.
/// - `checkpoints`: the store the CloudWatch sink advances; the follower
///   reads it to resume, writes appended positions to it (with
///   `options.resume_from_appended`) and forgets the instances of pods that
///   are gone.
/// - `shutdown`: cancelling it ends every follow promptly (lines read but
///   not appended are read again next time); join with
///   [`LogFollowerHandle::join`].
///
/// Fails only if the thread cannot be spawned; everything else is retried
/// inside, reported through logs, metrics and [`LogFollowerHandle::status`].
pub fn spawn_log_follower(
    target: ClusterTarget,
    logs: LogsConfig,
    spool: SpoolWriter,
    checkpoints: CheckpointStore,
    options: LogFollowOptions,
    shutdown: CancellationToken,
) -> std::io::Result<LogFollowerHandle> {
    let status = Arc::new(Mutex::new(FollowerStatus {
        phase: "starting",
        ..FollowerStatus::default()
    }));
    let handle_status = Arc::clone(&status);
    let alive = Arc::new(AtomicUsize::new(0));
    let thread_alive = Arc::clone(&alive);
    let context = target.context.clone();
    let namespace = target.namespace.clone();
    let thread = std::thread::Builder::new()
        .name(format!("logs-{}", target.context))
        .spawn(move || {
            let span = info_span!(
                "logs",
                context = %target.context,
                namespace = %target.namespace,
            );
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    let _enter = span.enter();
                    error!(error = %err, "cannot start the runtime of this log follower");
                    return;
                }
            };
            let inputs = Inputs {
                target,
                logs,
                spool,
                checkpoints,
                options,
            };
            let run = run(inputs, Arc::clone(&status), thread_alive, shutdown);
            runtime.block_on(run.instrument(span));
            status
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .phase = "stopped";
        })?;
    Ok(LogFollowerHandle {
        context,
        namespace,
        status: handle_status,
        alive,
        thread,
    })
}

/// What [`spawn_log_follower`] was given, moved into its thread.
struct Inputs {
    target: ClusterTarget,
    logs: LogsConfig,
    spool: SpoolWriter,
    checkpoints: CheckpointStore,
    options: LogFollowOptions,
}

async fn run(
    inputs: Inputs,
    status: Arc<Mutex<FollowerStatus>>,
    alive: Arc<AtomicUsize>,
    shutdown: CancellationToken,
) {
    let Inputs {
        target,
        logs,
        spool,
        checkpoints,
        options,
    } = inputs;
    let mut config = target.client_config.clone();
    // Retries are decided (and counted) by the follower, not hidden in kube.
    config.default_retry = false;
    let client = match kube::Client::try_from(config) {
        Ok(client) => client,
        Err(err) => {
            // Only local problems (a bad CA or client certificate): no retry helps.
            let err = crate::watch::WatchError::Client(err);
            error!(error = %crate::watch::error_chain(&err), "cannot build a client; pod logs of this context stay unfollowed");
            status
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .last_error = Some(crate::watch::error_chain(&err));
            shutdown.cancelled().await;
            return;
        }
    };
    let limit = options
        .limit
        .clone()
        .unwrap_or_else(|| FollowLimit::new(logs.max_streams_per_cluster));
    let shared = Arc::new(Shared {
        client,
        context: target.context.clone(),
        labels: ClusterLabels {
            cluster: target.cluster_name.clone(),
        },
        cluster_name: target.cluster_name,
        namespace: target.namespace,
        logs,
        spool,
        checkpoints,
        options,
        limit,
        alive,
    });
    super::pods::PodWatch::new(Arc::clone(&shared), status)
        .run(shutdown)
        .await;
    if let Err(err) = shared.checkpoints.flush() {
        tracing::warn!(error = %err, "cannot commit log positions at shutdown");
    }
}

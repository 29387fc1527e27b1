//! The pod-log follower of one context (SPEC §4): one OS thread with its own
//! current-thread tokio runtime, which LISTs and WATCHes the namespace's
//! pods (the watch engine driving `super::pods`) and runs one follow task
//! per container, init containers included (`super::follow`), appending
//! every line to the logs spool as a [`LogLine`](crate::record::LogLine).
//!
//! ```text
//!  pods LIST+WATCH ──▶ pod view ──▶ per container: watch::channel(ContainerView)
//!  (watch::engine)     exclusions            │
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
//! 4. no checkpoint at all: the sink's last event of the stream
//!    ([`LogFollowOptions::last_event`], given by `app`: CloudWatch's
//!    lookup) when one is configured;
//! 5. failing that, the container's first line.
//!
//! A restart (`restartCount` up by one) ends the old instance's follow, reads
//! its rest with `previous=true` (same resume rule) into the old stream,
//! then follows the new instance into its own stream.
//!
//! Short-lived instances: one seen only terminated is read once (a follow
//! of a terminated container serves its whole log and ends); when
//! `restartCount` jumped by more than one, the instance before the current
//! one is read with `previous=true` and the ones between, which the API no
//! longer serves, are gaps; a pod first seen after the first LIST with
//! `restartCount` above 0 has its previous instance read first. Whatever
//! cannot be read any more is a gap: counted, logged, marked in the stream
//! (`follow`).
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

use tokio_util::sync::CancellationToken;
use tracing::info_span;

use crate::config::LogsConfig;
use crate::contexts::ClusterTarget;
use crate::metrics::{ClusterLabels, WatchLabels};
use crate::spool::SpoolWriter;
use crate::watch::WatchStatus;
use crate::watch::engine::{Engine, Source};

use super::checkpoint::CheckpointStore;
use super::options::{FollowLimit, LogFollowOptions, Shared};
use super::pods::{self, Reconciler};

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
    /// Where the pods watch stands.
    watch: Arc<Mutex<WatchStatus>>,
    /// Pods followed now.
    pods: Arc<AtomicUsize>,
    /// Container follow tasks alive now.
    alive: Arc<AtomicUsize>,
    thread: JoinHandle<()>,
}

impl LogFollowerHandle {
    pub fn status(&self) -> FollowerStatus {
        let watch = self
            .watch
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        FollowerStatus {
            phase: watch.phase,
            synced: watch.synced,
            pods: self.pods.load(Ordering::Relaxed),
            containers: self.alive.load(Ordering::Relaxed),
            last_error: watch.last_error,
        }
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
    let watch = Arc::new(Mutex::new(WatchStatus {
        phase: "starting",
        ..WatchStatus::default()
    }));
    let pods = Arc::new(AtomicUsize::new(0));
    let alive = Arc::new(AtomicUsize::new(0));
    let context = target.context.clone();
    let namespace = target.namespace.clone();
    let counters = Counters {
        watch: Arc::clone(&watch),
        pods: Arc::clone(&pods),
        alive: Arc::clone(&alive),
    };
    let name = format!("logs-{}", target.context);
    let span = info_span!(
        "logs",
        context = %target.context,
        namespace = %target.namespace,
    );
    let inputs = Inputs {
        target,
        logs,
        spool,
        checkpoints,
        options,
    };
    let thread =
        crate::runtime::spawn_with_runtime(name, span, move || run(inputs, counters, shutdown))?;
    Ok(LogFollowerHandle {
        context,
        namespace,
        watch,
        pods,
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

/// Where the thread reports to its handle.
struct Counters {
    watch: Arc<Mutex<WatchStatus>>,
    pods: Arc<AtomicUsize>,
    alive: Arc<AtomicUsize>,
}

async fn run(inputs: Inputs, counters: Counters, shutdown: CancellationToken) {
    let Inputs {
        target,
        logs,
        spool,
        checkpoints,
        options,
    } = inputs;
    let labels = WatchLabels {
        context: target.context.clone(),
        namespace: target.namespace.clone(),
        kind: pods::METRICS_KIND.into(),
    };
    crate::telemetry::tag_thread(&[
        ("context", &target.context),
        ("cluster", &target.server_url),
        ("kind", pods::METRICS_KIND),
    ]);
    let Some(client) = crate::watch::engine::connect(
        &target.client_config,
        &options.watch,
        &labels,
        &counters.watch,
        &shutdown,
    )
    .await
    else {
        return;
    };
    let limit = options
        .limit
        .clone()
        .unwrap_or_else(|| FollowLimit::new(logs.max_streams_per_cluster));
    let watch_options = options.watch.clone();
    let resource = Arc::new(pods::pods_resource(&target.namespace));
    let shared = Arc::new(Shared {
        client: client.clone(),
        labels: ClusterLabels {
            cluster: target.cluster_name.clone(),
        },
        context: target.context.clone(),
        cluster_name: target.cluster_name,
        namespace: target.namespace,
        logs,
        spool,
        checkpoints,
        options,
        limit,
        alive: counters.alive,
    });
    let reconciler = Reconciler::new(Arc::clone(&shared), counters.pods, labels.clone());
    let engine = Engine::new(
        client,
        Source::Fixed(resource),
        watch_options,
        labels,
        counters.watch,
        reconciler,
    );
    let mut reconciler = engine.run(shutdown).await;
    reconciler.stop_follows().await;
    if let Err(err) = shared.checkpoints.flush() {
        tracing::warn!(error = %err, "cannot commit log positions at shutdown");
    }
    tracing::debug!("log follower stopped");
}

//! What configures one log follower and what all its tasks share: the
//! tunables ([`LogFollowOptions`]), the per-cluster bound of open streams
//! ([`FollowLimit`]) and the shared handles (client, spool, checkpoints).
//! A leaf of `logs`: the pods watch, the follows and the thread import it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::LogsConfig;
use crate::metrics::{ClusterLabels, ClusterReasonLabels, metrics};
use crate::record::ContainerKey;
use crate::spool::SpoolWriter;
use crate::watch::WatchOptions;

use super::checkpoint::CheckpointStore;

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
    pub last_event: Option<Arc<dyn LastEventLookup>>,
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
            last_event: None,
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
            .field("last_event", &self.last_event.is_some())
            .finish_non_exhaustive()
    }
}

/// The last event a sink stored for a container instance's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastEvent {
    /// Event timestamp, milliseconds since the epoch.
    pub timestamp_ms: i64,
    /// Its message (the last part, for a line shipped in parts).
    pub message: String,
}

/// Why a [`LastEventLookup`] could not answer, and whether asking again
/// can help: the follower waits and retries a transient failure for as long
/// as the pod lives (never falling back to the container's first line, a
/// duplicate flood), and after a permanent one starts from now and counts
/// the gap (SPEC §4, "Gaps are said").
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// Throttled, a server error, no answer: retried after a backoff.
    #[error("the last-event lookup failed; retrying")]
    Transient(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Refused for a reason retrying will not heal (permissions, a key,
    /// credentials, an invalid request).
    #[error("the last-event lookup was refused")]
    Permanent(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Where the follower asks for the last shipped event of a stream that has
/// no checkpoint (SPEC §4: "fall back to CloudWatch"). Owned by `logs`, so
/// the follower never imports a sink: `app` hands it the CloudWatch sink's
/// implementation ([`crate::publish::cloudwatch`]).
pub trait LastEventLookup: Send + Sync {
    /// The last event of `key`'s stream at the destination of `route`
    /// (`logs.routes`); `Ok(None)` when there is none (no group, no stream,
    /// no event).
    fn last_event<'a>(
        &'a self,
        key: &'a ContainerKey,
        route: &'a str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Option<LastEvent>, LookupError>> + Send + 'a>,
    >;
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

/// What every task of one follower shares.
pub(crate) struct Shared {
    pub client: kube::Client,
    /// The kubeconfig context: what `logs.routes` match.
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

    /// The identity of instance `restart_count` of `container` in `pod`.
    pub fn key(&self, pod: &str, container: &str, restart_count: u32) -> ContainerKey {
        ContainerKey {
            cluster: self.cluster_name.clone(),
            namespace: self.namespace.clone(),
            pod: pod.to_owned(),
            container: container.to_owned(),
            restart_count,
        }
    }
}

//! The follow of one container (all its instances): an enum state machine
//! stepped by one function ([`Follow::step`]), fed by the pod view through
//! a `watch` channel of [`ContainerView`].
//!
//! ```text
//!            view: started                 slot + 200
//!   Idle ───────────────────▶ Opening ───────────────▶ Following ──┐ lines → spool
//!    ▲  ▲                        ▲  ▲                    │  │  │   ◀┘
//!    │  │ instance ended         │  └─ Reconnecting ◀────┘  │  │ EOF (still running),
//!    │  └────────────────────────┼──── (EOF + pod GET) ─────┘  │ broken, idle, yield
//!    │                           │                             │ restartCount up
//!    └──── Draining (previous=true of the old instance) ◀──────┘
//!            ▲  │ failed: DrainWaiting (backoff), then Draining again
//!            └──┘
//!   pod gone: the open stream may run `finish_grace` for its last lines → Done
//! ```
//!
//! The instance being read travels in the phase (`current`), and every wait
//! (a reconnect delay, a drain retry) is a phase of its own: one `step`
//! does one unit of work and says what comes next.
//!
//! Every request of an instance after its first resumes from the last line
//! appended (`sinceTime` = its whole second; lines through its position
//! skipped); see [`super::follower`] for where the first one starts.
//!
//! After a follow ends cleanly, a GET of the pod tells what ended it: a
//! restart (read the old instance's rest, then follow the new one), a
//! terminated container (its log is complete), a deleted pod, or nothing
//! (the kubelet's stream timeout, log rotation: reconnect). Before each
//! follow request the view must still show the instance: the kubelet
//! serves the *current* instance, and a request that raced a restart would
//! file the new instance's lines under the old one (a window of one request;
//! the pod view and the GET close it as far as the API allows).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::backoff::Backoff;
use crate::kube_api::{self, ApiError, LineStream, Read, error_chain};
use crate::metrics::metrics;
use crate::record::{ContainerKey, LogLine};
use crate::spool::SpoolError;

use super::checkpoint::Checkpoint;
use super::line::{Counter, GAP_MARKER_PREFIX, Parsed, SkipRule, Verdict, since_time};
use super::options::{LookupError, Shared};
use super::view::{self, ContainerView, RunState};

/// How long lines of CloudWatch's last millisecond are held when the
/// stream goes quiet before they are decided.
const SETTLE_AFTER: Duration = Duration::from_secs(1);
/// Tries to read a previous instance before its rest is given up.
const DRAIN_ATTEMPTS: u32 = 5;

/// The pod a follow belongs to.
pub(crate) struct PodIdentity {
    pub name: String,
    pub uid: String,
    /// The `logs.routes` entry of its lines.
    pub route: Arc<str>,
}

/// Runs the follow of `container` in `pod` until the pod is gone (then its
/// checkpoints are forgotten) or `stop` is cancelled.
pub(crate) fn run(
    shared: Arc<Shared>,
    pod: PodIdentity,
    container: String,
    new_pod: bool,
    view: watch::Receiver<ContainerView>,
    stop: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    /// Counts this task in the follower's status while it lives.
    struct Alive(Arc<std::sync::atomic::AtomicUsize>);
    impl Drop for Alive {
        fn drop(&mut self) {
            self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    shared
        .alive
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let alive = Alive(Arc::clone(&shared.alive));
    // Created here, at spawn, so it is a child of the follower's span
    // (context, namespace): a spawned task does not inherit it.
    let span = info_span!("follow", pod = %pod.name, container = %container);
    async move {
        let _alive = alive;
        let backoff = Backoff::new(
            shared.options.backoff_initial,
            shared
                .options
                .backoff_max
                .max(shared.options.backoff_initial),
        );
        let mut follow = Follow {
            shared,
            pod: pod.name,
            uid: pod.uid,
            route: pod.route,
            container,
            view,
            view_closed: false,
            first_sight: true,
            new_pod,
            highest_instance: 0,
            backoff,
        };
        let mut phase = follow.decide(None);
        loop {
            match phase {
                Phase::Done => {
                    follow.release();
                    return;
                }
                Phase::Stopped => {
                    stop.cancelled().await;
                    return;
                }
                _ => {}
            }
            phase = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                next = follow.step(phase) => next,
            };
        }
    }
    .instrument(span)
}

/// One container instance (one log stream).
struct Instance {
    n: u32,
    key: ContainerKey,
    /// The record every line of it is written into.
    template: LogLine,
    /// The last line appended in this process (the highest position).
    appended: Option<Checkpoint>,
    /// Where its first request starts; resolved once, when first needed.
    start: Option<SkipRule>,
    /// Every line was read: its follow ended after it terminated, or its
    /// previous-instance log was read.
    finished: bool,
    /// When it started, if the view said (the start of a gap before any line).
    started_at: Option<i64>,
    /// Its lines appended in this process, for estimating a gap's lines.
    observed: Option<Observed>,
    /// A gap of it was logged (SPEC §4: logged once per container).
    gap_logged: bool,
    /// Its last stream ended cleanly while it ran (the kubelet's stream
    /// timeout, a rotation): that stream was read to its end, so the next
    /// one is not checked for a rotation gap (see `line`, "Rotated away").
    clean_end: bool,
}

/// The lines of an instance appended in this process: its line rate.
#[derive(Debug, Clone, Copy)]
struct Observed {
    first_ns: i64,
    last_ns: i64,
    lines: u64,
}

impl Observed {
    fn add(observed: Option<Observed>, timestamp_ns: i64) -> Observed {
        match observed {
            None => Observed {
                first_ns: timestamp_ns,
                last_ns: timestamp_ns,
                lines: 1,
            },
            Some(o) => Observed {
                first_ns: o.first_ns.min(timestamp_ns),
                last_ns: o.last_ns.max(timestamp_ns),
                lines: o.lines + 1,
            },
        }
    }

    /// Lines expected strictly between two lines `span_ns` apart at the
    /// observed rate; `None` when the rate is unknown (fewer than two
    /// lines, or all at one instant).
    fn estimate(&self, span_ns: i64) -> Option<u64> {
        let observed_ns = self.last_ns - self.first_ns;
        if self.lines < 2 || observed_ns <= 0 || span_ns <= 0 {
            return None;
        }
        let rate = (self.lines - 1) as f64 / observed_ns as f64;
        Some(((rate * span_ns as f64).round() as u64).saturating_sub(1))
    }
}

/// Why lines of an instance were not read: the `reason` of
/// `kubeherald_log_gaps_total` and the words of its marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GapReason {
    /// The resume point's line is no longer served (`line`, "Rotated away").
    Rotated,
    /// The pod went away before the instance was read to its end.
    PodDeleted,
    /// `previous=true` no longer serves the instance's rest.
    PreviousUnavailable,
    /// The container restarted more than once between two looks: the
    /// kubelet serves the current and the previous instance only.
    InstanceSkipped,
    /// CloudWatch refused the last-event lookup for good: read from now.
    LookupRefused,
}

impl GapReason {
    fn label(self) -> &'static str {
        match self {
            GapReason::Rotated => "rotated",
            GapReason::PodDeleted => "pod-deleted",
            GapReason::PreviousUnavailable => "previous-unavailable",
            GapReason::InstanceSkipped => "instance-skipped",
            GapReason::LookupRefused => "lookup-refused",
        }
    }

    fn words(self) -> &'static str {
        match self {
            GapReason::Rotated => "the log rotated away while kubeherald was not reading it",
            GapReason::PodDeleted => "the pod was deleted before its log was read to the end",
            GapReason::PreviousUnavailable => {
                "the rest of this container instance's log is no longer served"
            }
            GapReason::InstanceSkipped => {
                "the container restarted again before this instance's log could be read"
            }
            GapReason::LookupRefused => {
                "CloudWatch refused to say where this stream ends, so reading starts from now"
            }
        }
    }
}

/// The message of a gap marker (SPEC §4: "the stream gets one marker event").
fn gap_message(reason: GapReason, from_ns: i64, to_ns: i64) -> String {
    format!(
        "{GAP_MARKER_PREFIX}{}, lines from {} to {} were not read",
        reason.words(),
        rfc3339(from_ns),
        rfc3339(to_ns)
    )
}

fn rfc3339(ns: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_nanosecond(i128::from(ns))
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
        .to_string()
}

/// What resolving an instance's start came to.
enum Resolved {
    Ready,
    /// The pod went away meanwhile.
    Gone,
    /// The spool is closed.
    Closed,
}

impl Instance {
    /// What a request for this instance skips.
    fn rule(&self) -> SkipRule {
        match self.appended {
            Some(position) => SkipRule::Through(position),
            None => self.start.clone().unwrap_or(SkipRule::Nothing),
        }
    }

    /// The last position known read (appended, or where it starts), in
    /// nanoseconds.
    fn last_known_ns(&self) -> Option<i64> {
        match self.rule() {
            SkipRule::Through(position) => Some(position.timestamp_ns),
            SkipRule::CloudWatch { timestamp_ms, .. } => {
                Some(timestamp_ms.saturating_mul(1_000_000))
            }
            SkipRule::Nothing => None,
        }
    }
}

/// A log stream being read with its slot.
struct Open {
    stream: LineStream,
    counter: Counter,
    _slot: Slot,
    opened: Instant,
    last_byte: Instant,
    lines: u64,
    /// The pod is gone: read what is left until this deadline, no reconnect.
    finish_by: Option<Instant>,
}

/// A slot under the cluster's bound, counted as an open stream.
struct Slot {
    _permit: OwnedSemaphorePermit,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Where a container's follow stands. The instance being read is part of
/// the state: `current` in the variants that have one.
enum Phase {
    /// Nothing to read: the instance has not started, or it ended (its log
    /// is complete) and no restart is seen yet. Left when the view changes.
    Idle { current: Option<Instance> },
    /// `current` is to be followed: its start is resolved, a slot awaited,
    /// the request opened. Left to `Following`, to `Reconnecting` on an
    /// error, to `Draining` if a restart shows meanwhile.
    Opening { current: Instance },
    /// Reading `current`'s follow.
    Following { current: Instance, open: Box<Open> },
    /// A reconnect delay (jittered, growing) before `current` is looked at
    /// again. Left when `until` passes, earlier when the view changes.
    Reconnecting {
        current: Option<Instance>,
        until: Instant,
    },
    /// Reading the rest of `old` with `previous=true` after a restart (or,
    /// at first sight, of the instance before the current one when a
    /// position of it was stored); then `next` (the current instance, when
    /// already known) is decided on.
    Draining {
        old: Box<Instance>,
        attempt: u32,
        next: Option<Instance>,
    },
    /// A delay before the next try (`attempt`) of reading `old`.
    DrainWaiting {
        old: Box<Instance>,
        attempt: u32,
        next: Option<Instance>,
        until: Instant,
    },
    /// The pod is gone with `unread` instances not read to their end: each
    /// is a gap (counted, logged, marked), then `Done`. Excluded pods leave
    /// their lines on purpose: no gap.
    Gone { unread: Vec<Instance> },
    /// The spool is closed (shutdown): wait for `stop`.
    Stopped,
    /// The pod is gone; release it.
    Done,
}

impl Phase {
    #[cfg(test)]
    fn name(&self) -> &'static str {
        match self {
            Phase::Idle { .. } => "idle",
            Phase::Opening { .. } => "opening",
            Phase::Following { .. } => "following",
            Phase::Reconnecting { .. } => "reconnecting",
            Phase::Draining { .. } => "draining",
            Phase::DrainWaiting { .. } => "drain-waiting",
            Phase::Gone { .. } => "gone",
            Phase::Stopped => "stopped",
            Phase::Done => "done",
        }
    }
}

/// What a GET of the pod says about an instance whose follow ended.
enum Fate {
    Gone,
    Restarted,
    Ended,
    Running,
    Unknown,
}

/// The spool is closed: the follow stops.
struct Closed;

struct Follow {
    shared: Arc<Shared>,
    pod: String,
    uid: String,
    route: Arc<str>,
    container: String,
    view: watch::Receiver<ContainerView>,
    /// The view's sender is gone (the pod entry was dropped).
    view_closed: bool,
    /// No instance was looked at yet in this process.
    first_sight: bool,
    /// The pod was first seen after the follower's first LIST (a watch
    /// event, a later re-list): instances before the one first seen ran
    /// unseen, so the previous one is read at first sight.
    new_pod: bool,
    highest_instance: u32,
    backoff: Backoff,
}

impl Follow {
    fn view(&self) -> ContainerView {
        let mut view = *self.view.borrow();
        view.gone |= self.view_closed;
        view
    }

    /// Waits for the next change of the view (never returns once closed).
    async fn view_changed(&mut self) {
        if self.view_closed {
            return std::future::pending().await;
        }
        if self.view.changed().await.is_err() {
            self.view_closed = true;
        }
    }

    fn instance(&mut self, n: u32) -> Instance {
        self.highest_instance = self.highest_instance.max(n);
        let key = self.shared.key(&self.pod, &self.container, n);
        let view = self.view();
        let mut template = LogLine::of_container(&key);
        template.route = self.route.to_string();
        Instance {
            n,
            template,
            key,
            appended: None,
            start: None,
            finished: false,
            started_at: view.started_at.filter(|_| view.restart_count == n),
            observed: None,
            gap_logged: false,
            clean_end: false,
        }
    }

    /// The pod is gone: `Gone` with the instances not read to their end.
    fn gone(&self, instances: impl IntoIterator<Item = Instance>) -> Phase {
        let unread: Vec<Instance> = instances.into_iter().filter(|i| !i.finished).collect();
        if unread.is_empty() {
            return Phase::Done;
        }
        Phase::Gone { unread }
    }

    /// The next phase from the view and the instance known (no request).
    fn decide(&mut self, current: Option<Instance>) -> Phase {
        let view = self.view();
        self.highest_instance = self.highest_instance.max(view.restart_count);
        if view.gone {
            return self.gone(current);
        }
        if let Some(current) = current {
            if view.restart_count > current.n {
                if !current.finished {
                    return Phase::Draining {
                        old: Box::new(current),
                        attempt: 0,
                        next: None,
                    };
                }
            } else if view.restart_count == current.n {
                return if !current.finished && view.started() {
                    Phase::Opening { current }
                } else {
                    Phase::Idle {
                        current: Some(current),
                    }
                };
            }
            // Else a lower count: not the instance we knew (a replaced pod).
        }
        if !view.started() || view.restart_count < self.highest_instance {
            // Not started, or a view behind what a fresh GET showed: wait
            // for the watch to catch up.
            return Phase::Idle { current: None };
        }
        let n = view.restart_count;
        let current = self.instance(n);
        if std::mem::take(&mut self.first_sight) && n > 0 {
            // A restart while kubeherald was not running (a position of the
            // instance before is stored), or before the pod was ever seen
            // (it started and exited between two pod events): the instance
            // before may have lines not read yet. At the first LIST without
            // a position it may have been read by an earlier run, which
            // left no trace: not read again.
            let before = self.instance(n - 1);
            if self.new_pod || self.stored_position(&before.key).is_some() {
                return Phase::Draining {
                    old: Box::new(before),
                    attempt: 0,
                    next: Some(current),
                };
            }
        }
        Phase::Opening { current }
    }

    async fn step(&mut self, phase: Phase) -> Phase {
        match phase {
            Phase::Idle { current } => {
                self.view_changed().await;
                self.decide(current)
            }
            Phase::Opening { current } => self.open(current).await,
            Phase::Following { current, open } => self.follow(current, open).await,
            Phase::Reconnecting { current, until } => {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = self.view_changed() => {}
                }
                self.decide(current)
            }
            Phase::Draining { old, attempt, next } => self.drain(old, attempt, next).await,
            Phase::Gone { unread } => {
                if !self.view().excluded {
                    for mut instance in unread {
                        let detail = "the pod is gone";
                        if self
                            .end_gap(&mut instance, GapReason::PodDeleted, detail, None)
                            .await
                            .is_err()
                        {
                            return Phase::Stopped;
                        }
                    }
                }
                Phase::Done
            }
            Phase::DrainWaiting {
                old,
                attempt,
                next,
                until,
            } => {
                tokio::time::sleep_until(until).await;
                Phase::Draining { old, attempt, next }
            }
            Phase::Stopped | Phase::Done => phase,
        }
    }

    /// The highest stored position of an instance (appended or shipped).
    fn stored_position(&self, key: &ContainerKey) -> Option<Checkpoint> {
        let appended = if self.shared.options.resume_from_appended {
            self.shared.checkpoints.appended(key)
        } else {
            None
        };
        let shipped = self.shared.checkpoints.get(key);
        match (appended, shipped) {
            (Some(a), Some(s)) => Some(later(a, s)),
            (a, s) => a.or(s),
        }
    }

    /// Where the first request of an instance starts (see the resume rule
    /// in [`super::follower`]), into `instance.start`. Called with a stream
    /// slot held, so lookups are bounded per cluster like streams, and
    /// paced by the lookup's own rate limiter for the whole process.
    ///
    /// A lookup that fails for a reason that heals (throttling, 5xx, no
    /// answer) is retried with backoff for as long as the pod lives:
    /// reading the container from its first line instead would put lines
    /// CloudWatch may already hold again (a duplicate flood when many
    /// containers are throttled at once). One that cannot heal starts the
    /// instance from now and says so with a gap.
    async fn resolve_start(&mut self, instance: &mut Instance) -> Resolved {
        if let Some(position) = self.stored_position(&instance.key) {
            debug!(
                restart_count = instance.n,
                timestamp_ns = position.timestamp_ns,
                seq = position.seq_at_timestamp,
                "resuming from a stored position"
            );
            instance.start = Some(SkipRule::Through(position));
            return Resolved::Ready;
        }
        let Some(lookup) = self.shared.options.last_event.clone() else {
            instance.start = Some(SkipRule::Nothing);
            return Resolved::Ready;
        };
        let mut backoff = Backoff::new(
            self.shared.options.backoff_initial,
            self.shared
                .options
                .backoff_max
                .max(self.shared.options.backoff_initial),
        );
        loop {
            let answer = lookup.last_event(&instance.key, &self.route).await;
            match answer {
                Ok(Some(last)) => {
                    info!(
                        restart_count = instance.n,
                        timestamp_ms = last.timestamp_ms,
                        "no checkpoint; resuming after CloudWatch's last event"
                    );
                    instance.start = Some(SkipRule::CloudWatch {
                        timestamp_ms: last.timestamp_ms,
                        message: last.message,
                    });
                    return Resolved::Ready;
                }
                Ok(None) => {
                    instance.start = Some(SkipRule::Nothing);
                    return Resolved::Ready;
                }
                Err(err @ LookupError::Transient(_)) => {
                    metrics()
                        .log_follow_errors
                        .get_or_create(&self.shared.reason("cloudwatch-lookup"))
                        .inc();
                    let delay = backoff.next_delay();
                    if backoff.failures() == 1 {
                        warn!(restart_count = instance.n, error = %error_chain(&err), retry_in = ?delay, "cannot read the stream's last event from CloudWatch; waiting, then asking again");
                    } else {
                        debug!(restart_count = instance.n, error = %error_chain(&err), retry_in = ?delay, "CloudWatch lookup failed again");
                    }
                    let until = Instant::now() + delay;
                    while Instant::now() < until && !self.view().gone {
                        tokio::select! {
                            _ = tokio::time::sleep_until(until) => {}
                            _ = self.view_changed() => {}
                        }
                    }
                    if self.view().gone {
                        return Resolved::Gone;
                    }
                }
                Err(err @ LookupError::Permanent(_)) => {
                    metrics()
                        .log_follow_errors
                        .get_or_create(&self.shared.reason("cloudwatch-lookup"))
                        .inc();
                    // Position 0 of now sorts before every line read from
                    // here on and is skipped through (`line`, "Positions").
                    let now = now_ns();
                    let from = instance.started_at.unwrap_or(now).min(now);
                    let detail = error_chain(&err);
                    let message =
                        self.say_gap(instance, GapReason::LookupRefused, from, now, &detail);
                    instance.start = Some(SkipRule::Through(Checkpoint {
                        timestamp_ns: now,
                        seq_at_timestamp: 0,
                    }));
                    let marker = Parsed {
                        timestamp: now,
                        seq: 0,
                        message,
                    };
                    if self.append(instance, vec![marker]).await.is_err() {
                        return Resolved::Closed;
                    }
                    return Resolved::Ready;
                }
            }
        }
    }

    fn log_path(&self, previous: bool, rule: &SkipRule) -> String {
        let mut path = format!(
            "/api/v1/namespaces/{}/pods/{}/log?container={}&timestamps=true",
            self.shared.namespace, self.pod, self.container
        );
        path.push_str(if previous {
            "&previous=true"
        } else {
            "&follow=true"
        });
        if let Some(seconds) = rule.since_seconds() {
            path.push_str("&sinceTime=");
            path.push_str(&since_time(seconds));
        }
        path
    }

    /// `Opening`: wait for a slot, resolve the start, open the follow.
    async fn open(&mut self, mut current: Instance) -> Phase {
        let shared = Arc::clone(&self.shared);
        let slot = tokio::select! {
            slot = slot(&shared) => slot,
            _ = self.view_changed() => return self.decide(Some(current)),
        };
        if current.start.is_none() && current.appended.is_none() {
            match self.resolve_start(&mut current).await {
                Resolved::Ready => {}
                Resolved::Gone => return self.gone([current]),
                Resolved::Closed => return Phase::Stopped,
            }
        }
        // The kubelet serves the *current* instance: it must still be ours.
        // The watch view may lag (its connection may have dropped with
        // ours), so the pod is read afresh first.
        let view = self.view();
        let n = current.n;
        if view.gone || view.restart_count != n || !view.started() {
            return self.decide(Some(current));
        }
        match self.fresh_view().await {
            Ok(None) => return self.gone([current]),
            Ok(Some(fresh)) if fresh.restart_count > n => {
                drop(slot);
                return self.decide_after_restart(current);
            }
            Ok(Some(fresh)) if !fresh.started() || fresh.restart_count < n => {
                drop(slot);
                return self.reconnect_later(Some(current));
            }
            // A failed GET: the view is all there is.
            Ok(Some(_)) | Err(()) => {}
        }
        let rule = current.rule();
        let path = self.log_path(false, &rule);
        let check_rotation = !std::mem::take(&mut current.clean_end);
        match kube_api::open_log(
            &self.shared.client,
            &path,
            self.shared.options.request_timeout,
        )
        .await
        {
            Ok(stream) => {
                let now = Instant::now();
                let open = Box::new(Open {
                    stream,
                    counter: Counter::new(rule).checking_rotation(check_rotation),
                    _slot: slot,
                    opened: now,
                    last_byte: now,
                    lines: 0,
                    finish_by: None,
                });
                Phase::Following { current, open }
            }
            Err(err) => {
                drop(slot);
                // Nothing was read: the next request still checks.
                current.clean_end = !check_rotation;
                self.open_failed(current, err).await
            }
        }
    }

    /// A log request failed: count, log, and back off (or finish, when the
    /// pod is gone).
    async fn open_failed(&mut self, current: Instance, err: ApiError) -> Phase {
        let label = err.metric_label();
        metrics()
            .log_follow_errors
            .get_or_create(&self.shared.reason(label))
            .inc();
        if let ApiError::Status { code: 404, .. } = err
            && let Fate::Gone = self.fate(0).await
        {
            return self.gone([current]);
        }
        let delay = self
            .backoff
            .delay_with_retry_after(err.retry_after(), self.shared.options.backoff_max);
        // 400 is the kubelet's "waiting to start" / "not found" for a
        // container that is not running yet: expected, quieter.
        if matches!(err, ApiError::Status { code: 400, .. }) {
            debug!(error = %error_chain(&err), retry_in = ?delay, "container log not available yet");
        } else {
            warn!(reason = label, error = %error_chain(&err), retry_in = ?delay, "log request failed; retrying");
        }
        Phase::Reconnecting {
            current: Some(current),
            until: Instant::now() + delay,
        }
    }

    /// `Following`: one read of the stream, or a view change.
    async fn follow(&mut self, mut current: Instance, mut open: Box<Open>) -> Phase {
        let shared = Arc::clone(&self.shared);
        let options = &shared.options;
        // Wake up for whichever comes first: the idle deadline, settling
        // held lines, or a look at whether others wait for the slot.
        let mut timeout = options
            .idle_timeout
            .saturating_sub(open.last_byte.elapsed())
            .max(Duration::from_millis(1));
        if open.counter.is_holding() {
            timeout = timeout.min(SETTLE_AFTER);
        }
        if !options.fair_share.is_zero() {
            timeout = timeout.min(options.fair_share);
        }
        let finishing = open.finish_by.is_some();
        let finish_by = open.finish_by.unwrap_or_else(Instant::now);
        enum Event {
            Read(Read),
            ViewChanged,
            FinishDeadline,
        }
        let event = tokio::select! {
            read = open.stream.read(timeout) => Event::Read(read),
            _ = self.view_changed(), if !finishing => Event::ViewChanged,
            _ = tokio::time::sleep_until(finish_by), if finishing => Event::FinishDeadline,
        };
        match event {
            Event::ViewChanged => {
                let view = self.view();
                if view.gone {
                    open.finish_by = Some(Instant::now() + options.finish_grace);
                    return Phase::Following { current, open };
                }
                if view.restart_count > current.n + 1 {
                    // Restarted more than once: previous=true serves a later
                    // instance, so this stream is read to its end (the
                    // kubelet ends it when the instance exits), within
                    // finish_grace, before it is given up.
                    let deadline = Instant::now() + options.finish_grace;
                    loop {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        let Open {
                            stream,
                            counter,
                            lines,
                            ..
                        } = &mut *open;
                        match stream.read(left).await {
                            Read::Lines(bytes) => {
                                if self
                                    .take_lines(&mut current, counter, &bytes, lines)
                                    .await
                                    .is_err()
                                {
                                    return Phase::Stopped;
                                }
                            }
                            Read::End => {
                                let partial = stream.take_partial();
                                if self
                                    .flush_partial(&mut current, counter, partial)
                                    .await
                                    .is_err()
                                {
                                    return Phase::Stopped;
                                }
                                let settled = counter.settle();
                                if self.append(&mut current, settled).await.is_err() {
                                    return Phase::Stopped;
                                }
                                current.clean_end = true;
                                break;
                            }
                            Read::Idle | Read::Broken(_) => break,
                        }
                    }
                }
                if view.restart_count > current.n {
                    // The old instance's follow ends by itself, but its rest
                    // is read with previous=true either way: one rule.
                    drop(open);
                    return self.decide(Some(current));
                }
                Phase::Following { current, open }
            }
            Event::FinishDeadline => {
                // The stream still ran when the grace ended: what it had
                // not sent yet is lost with the pod.
                let settled = open.counter.settle();
                if self.append(&mut current, settled).await.is_err() {
                    return Phase::Stopped;
                }
                debug!(grace = ?options.finish_grace, "pod gone; its log stream outlived the grace");
                self.gone([current])
            }
            Event::Read(Read::Lines(bytes)) => {
                open.last_byte = Instant::now();
                let Open { counter, lines, .. } = &mut *open;
                if self
                    .take_lines(&mut current, counter, &bytes, lines)
                    .await
                    .is_err()
                {
                    return Phase::Stopped;
                }
                if !finishing && self.should_yield(&open) {
                    return Phase::Opening { current };
                }
                Phase::Following { current, open }
            }
            Event::Read(Read::End) => {
                let settled = open.counter.settle();
                if self.append(&mut current, settled).await.is_err() {
                    return Phase::Stopped;
                }
                if open.lines > 0 || open.opened.elapsed() > Duration::from_secs(10) {
                    self.backoff.reset();
                }
                let n = current.n;
                let fate = if finishing {
                    Fate::Gone
                } else {
                    self.fate(n).await
                };
                match fate {
                    Fate::Gone | Fate::Ended => {
                        // The instance's log is complete: a last line
                        // without newline is a line.
                        let partial = open.stream.take_partial();
                        if self
                            .flush_partial(&mut current, &mut open.counter, partial)
                            .await
                            .is_err()
                        {
                            return Phase::Stopped;
                        }
                        current.finished = true;
                        if let Fate::Gone = fate {
                            return Phase::Done;
                        }
                        debug!(
                            restart_count = n,
                            lines = open.lines,
                            "container instance ended; its log is complete"
                        );
                        drop(open);
                        self.decide(Some(current))
                    }
                    Fate::Restarted => {
                        drop(open);
                        current.clean_end = true;
                        self.decide_after_restart(current)
                    }
                    Fate::Running | Fate::Unknown => {
                        // The kubelet's stream timeout or a log rotation; a
                        // partial line comes again in full after the resume.
                        self.count_reconnect("eof");
                        drop(open);
                        current.clean_end = true;
                        self.reconnect_later(Some(current))
                    }
                }
            }
            Event::Read(Read::Idle) => {
                let silent = open.last_byte.elapsed() >= options.idle_timeout;
                if finishing {
                    return if silent {
                        self.gone([current])
                    } else {
                        Phase::Following { current, open }
                    };
                }
                if open.counter.is_holding() {
                    let settled = open.counter.settle();
                    if self.append(&mut current, settled).await.is_err() {
                        return Phase::Stopped;
                    }
                }
                if self.should_yield(&open) {
                    return Phase::Opening { current };
                }
                if silent {
                    self.count_reconnect("idle");
                    warn!(idle = ?options.idle_timeout, "no byte from the log stream within its idle deadline; reconnecting");
                    return Phase::Opening { current };
                }
                Phase::Following { current, open }
            }
            Event::Read(Read::Broken(err)) => {
                if finishing {
                    debug!(error = %error_chain(&err), "pod gone; its log stream broke before its end");
                    return self.gone([current]);
                }
                self.count_reconnect("broken");
                drop(open);
                let phase = self.reconnect_later(Some(current));
                if let Phase::Reconnecting { until, .. } = &phase {
                    warn!(error = %error_chain(&err), retry_in = ?until.saturating_duration_since(Instant::now()), "log stream broke; resuming");
                }
                phase
            }
        }
    }

    /// Whether to give the slot up: others wait and this follow had its
    /// share. It queues again (FIFO) and resumes from its position.
    fn should_yield(&mut self, open: &Open) -> bool {
        let yields = self.shared.limit.waiting() > 0
            && open.opened.elapsed() >= self.shared.options.fair_share;
        if yields {
            self.count_reconnect("yield");
            self.backoff.reset();
        }
        yields
    }

    /// After a GET showed a restart the view may not show yet: drain the
    /// old instance now rather than wait for the watch.
    fn decide_after_restart(&mut self, current: Instance) -> Phase {
        if current.finished {
            return self.decide(Some(current));
        }
        Phase::Draining {
            old: Box::new(current),
            attempt: 0,
            next: None,
        }
    }

    fn reconnect_later(&mut self, current: Option<Instance>) -> Phase {
        Phase::Reconnecting {
            current,
            until: Instant::now() + self.backoff.next_delay(),
        }
    }

    fn count_reconnect(&self, reason: &str) {
        metrics()
            .log_follow_reconnects
            .get_or_create(&self.shared.reason(reason))
            .inc();
    }

    /// The container as a fresh GET of the pod shows it; `Ok(None)` when
    /// the pod (this uid) or the container is gone, `Err` when the GET
    /// failed (counted and logged).
    async fn fresh_view(&mut self) -> Result<Option<ContainerView>, ()> {
        let answer = kube_api::get_pod(
            &self.shared.client,
            &self.shared.namespace,
            &self.pod,
            self.shared.options.request_timeout,
        )
        .await;
        let pod = match answer {
            Ok(Some(pod)) => pod,
            Ok(None) => return Ok(None),
            Err(err) => {
                let reason = match err {
                    ApiError::Timeout { .. } => "timeout",
                    _ => "get-pod",
                };
                metrics()
                    .log_follow_errors
                    .get_or_create(&self.shared.reason(reason))
                    .inc();
                warn!(error = %error_chain(&err), "cannot read the pod");
                return Err(());
            }
        };
        if pod.metadata.uid.as_deref() != Some(self.uid.as_str()) {
            return Ok(None);
        }
        let view = view::container_view(&pod, &self.container);
        if let Some(view) = &view {
            // Fresher than the watch view, which may lag behind it.
            self.highest_instance = self.highest_instance.max(view.restart_count);
        }
        Ok(view)
    }

    /// What ended the follow of instance `n`, from a fresh GET of the pod.
    async fn fate(&mut self, n: u32) -> Fate {
        match self.fresh_view().await {
            Err(()) => Fate::Unknown,
            Ok(None) => Fate::Gone,
            Ok(Some(view)) if view.restart_count > n => Fate::Restarted,
            Ok(Some(view)) => match view.state {
                RunState::Running => Fate::Running,
                RunState::Terminated | RunState::NotStarted => Fate::Ended,
            },
        }
    }

    /// `Draining`: reads the rest of `old` with `previous=true`.
    async fn drain(
        &mut self,
        mut old: Box<Instance>,
        attempt: u32,
        next: Option<Instance>,
    ) -> Phase {
        let view = self.view();
        if view.gone {
            return self.gone(std::iter::once(*old).chain(next));
        }
        let mut latest = view.restart_count.max(self.highest_instance);
        if latest != old.n + 1 {
            // The watch view may lag: ask the pod itself.
            match self.fresh_view().await {
                Ok(None) => return self.gone(std::iter::once(*old).chain(next)),
                Ok(Some(fresh)) => latest = fresh.restart_count,
                Err(()) => {}
            }
        }
        if latest > old.n + 1 {
            return self.restarted_past(*old, next, latest).await;
        }
        if latest <= old.n {
            let detail = "the pod shows no later instance";
            if self
                .end_gap(&mut old, GapReason::PreviousUnavailable, detail, None)
                .await
                .is_err()
            {
                return Phase::Stopped;
            }
            return self.decide(next);
        }
        let slot = slot(&self.shared).await;
        if old.start.is_none() && old.appended.is_none() {
            match self.resolve_start(&mut old).await {
                Resolved::Ready => {}
                Resolved::Gone => return self.gone(std::iter::once(*old).chain(next)),
                Resolved::Closed => return Phase::Stopped,
            }
        }
        let rule = old.rule();
        let path = self.log_path(true, &rule);
        self.count_reconnect("restart");
        let mut stream = match kube_api::open_log(
            &self.shared.client,
            &path,
            self.shared.options.request_timeout,
        )
        .await
        {
            Ok(stream) => stream,
            Err(err) => {
                drop(slot);
                metrics()
                    .log_follow_errors
                    .get_or_create(&self.shared.reason(err.metric_label()))
                    .inc();
                if matches!(
                    err,
                    ApiError::Status {
                        code: 400 | 404,
                        ..
                    }
                ) || attempt + 1 >= DRAIN_ATTEMPTS
                {
                    let detail = error_chain(&err);
                    if self
                        .end_gap(&mut old, GapReason::PreviousUnavailable, &detail, None)
                        .await
                        .is_err()
                    {
                        return Phase::Stopped;
                    }
                    return self.decide(next);
                }
                let delay = self.backoff.next_delay();
                warn!(restart_count = old.n, error = %error_chain(&err), retry_in = ?delay, "reading the previous instance's log failed; retrying");
                return Phase::DrainWaiting {
                    old,
                    attempt: attempt + 1,
                    next,
                    until: Instant::now() + delay,
                };
            }
        };
        let mut counter = Counter::new(rule).checking_rotation(!std::mem::take(&mut old.clean_end));
        let mut lines = 0;
        loop {
            match stream.read(self.shared.options.idle_timeout).await {
                Read::Lines(bytes) => {
                    if self
                        .take_lines(&mut old, &mut counter, &bytes, &mut lines)
                        .await
                        .is_err()
                    {
                        return Phase::Stopped;
                    }
                }
                Read::End => {
                    let mut held = counter.settle();
                    let partial = stream.take_partial();
                    if !partial.is_empty() {
                        let mut with_newline = partial;
                        with_newline.push(b'\n');
                        if self
                            .take_lines(&mut old, &mut counter, &with_newline, &mut lines)
                            .await
                            .is_err()
                        {
                            return Phase::Stopped;
                        }
                    }
                    held.extend(counter.settle());
                    if self.append(&mut old, held).await.is_err() {
                        return Phase::Stopped;
                    }
                    debug!(
                        restart_count = old.n,
                        lines, "previous instance read to its end"
                    );
                    old.finished = true;
                    return self.decide(next);
                }
                Read::Idle | Read::Broken(_) => {
                    drop(slot);
                    self.count_reconnect("broken");
                    if attempt + 1 >= DRAIN_ATTEMPTS {
                        let detail = "reading it keeps failing";
                        if self
                            .end_gap(&mut old, GapReason::PreviousUnavailable, detail, None)
                            .await
                            .is_err()
                        {
                            return Phase::Stopped;
                        }
                        return self.decide(next);
                    }
                    return Phase::DrainWaiting {
                        old,
                        attempt: attempt + 1,
                        next,
                        until: Instant::now() + self.backoff.next_delay(),
                    };
                }
            }
        }
    }

    /// A last line without newline, at the end of an instance's log: a line.
    async fn flush_partial(
        &mut self,
        instance: &mut Instance,
        counter: &mut Counter,
        partial: Vec<u8>,
    ) -> Result<(), Closed> {
        if partial.is_empty() {
            return Ok(());
        }
        let mut line = partial;
        line.push(b'\n');
        let mut count = 0;
        self.take_lines(instance, counter, &line, &mut count)
            .await?;
        let settled = counter.settle();
        self.append(instance, settled).await
    }

    /// Complete lines (each ending with `\n`) of `instance`: positions
    /// counted, already appended ones skipped, new ones appended.
    async fn take_lines(
        &mut self,
        instance: &mut Instance,
        counter: &mut Counter,
        bytes: &[u8],
        lines: &mut u64,
    ) -> Result<(), Closed> {
        let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let fallback = instance.appended.map_or_else(now_ns, |p| p.timestamp_ns);
        let unparsable_before = counter.unparsable;
        let mut keep = Vec::new();
        let mut read = 0u64;
        let mut skipped = 0u64;
        for line in bytes.split(|&b| b == b'\n') {
            read += 1;
            match counter.push(line, fallback) {
                Verdict::Keep(parsed) => {
                    if counter.is_holding() {
                        keep.extend(counter.settle());
                    }
                    if let Some((from, to)) = counter.take_gap() {
                        // Position 0 of the first line after the gap: after
                        // the resume point, before that line (seq 1).
                        let detail = "the first line served is later than the resume point";
                        let message = self.say_gap(instance, GapReason::Rotated, from, to, detail);
                        keep.push(Parsed {
                            timestamp: to,
                            seq: 0,
                            message,
                        });
                    }
                    keep.push(parsed);
                }
                Verdict::Skip => skipped += 1,
                Verdict::Held => {}
            }
        }
        *lines += read;
        let labels = &self.shared.labels;
        metrics().log_lines_read.get_or_create(labels).inc_by(read);
        if skipped > 0 {
            metrics()
                .log_lines_skipped
                .get_or_create(labels)
                .inc_by(skipped);
        }
        let unparsable = counter.unparsable - unparsable_before;
        if unparsable > 0 {
            metrics()
                .log_lines_unparsable_timestamp
                .get_or_create(labels)
                .inc_by(unparsable);
            debug!(
                lines = unparsable,
                "log lines without a kubelet timestamp; kept with the previous line's"
            );
        }
        self.append(instance, keep).await
    }

    /// Appends lines to the spool in batches, then records the position.
    async fn append(&mut self, instance: &mut Instance, lines: Vec<Parsed>) -> Result<(), Closed> {
        let shared = Arc::clone(&self.shared);
        let options = &shared.options;
        let mut lines = lines.into_iter().peekable();
        while lines.peek().is_some() {
            let mut records = Vec::new();
            let mut bytes = 0;
            let mut last = None;
            while let Some(line) = lines.next_if(|_| {
                records.len() < options.max_batch_lines && bytes < options.max_batch_bytes
            }) {
                bytes += line.message.len();
                last = Some(Checkpoint {
                    timestamp_ns: line.timestamp,
                    seq_at_timestamp: line.seq,
                });
                if line.seq > 0 {
                    instance.observed = Some(Observed::add(instance.observed, line.timestamp));
                }
                let template = &mut instance.template;
                template.timestamp = line.timestamp;
                template.seq_at_timestamp = line.seq;
                template.message = line.message;
                records.push(template.to_record());
            }
            self.append_records(&records).await?;
            let Some(last) = last else { continue };
            let position = instance.appended.map_or(last, |p| later(p, last));
            instance.appended = Some(position);
            if self.shared.options.resume_from_appended {
                // After the append returned: the lines are in the spool.
                self.shared
                    .checkpoints
                    .record_appended(instance.key.clone(), position);
            }
            metrics()
                .log_lines_appended
                .get_or_create(&self.shared.labels)
                .inc_by(records.len() as u64);
        }
        Ok(())
    }

    /// Appends one batch, waiting while the spool is full and retrying
    /// write failures with backoff. A record larger than the spool can
    /// hold is counted and logged, never retried.
    async fn append_records(&mut self, records: &[Vec<u8>]) -> Result<(), Closed> {
        if records.is_empty() {
            return Ok(());
        }
        loop {
            match self.shared.spool.append_all_async(records).await {
                Ok(appended) => {
                    for refused in &appended.refused {
                        metrics()
                            .log_lines_lost
                            .get_or_create(&self.shared.reason("too-large"))
                            .inc();
                        warn!(
                            bytes = refused.size,
                            max_record = refused.max_record,
                            "a log line is larger than the spool can hold; dropped"
                        );
                    }
                    return Ok(());
                }
                Err(SpoolError::Closed) => return Err(Closed),
                Err(err) => {
                    // A failed write appended none of its batch's records;
                    // earlier batches of this call may be in: retrying them
                    // can duplicate lines, never lose one.
                    metrics()
                        .log_follow_errors
                        .get_or_create(&self.shared.reason("spool"))
                        .inc();
                    let delay = self.backoff.next_delay();
                    warn!(error = %error_chain(&err), retry_in = ?delay, "cannot append log lines to the spool; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// The container restarted more than once since `old` was read
    /// (`latest` is its current instance): `previous=true` serves only the
    /// instance before the current one (the kubelet keeps the last
    /// terminated container), so the rest of `old` and every instance
    /// between are gaps, and instance `latest - 1` is still read.
    async fn restarted_past(
        &mut self,
        mut old: Instance,
        mut next: Option<Instance>,
        latest: u32,
    ) -> Phase {
        let detail = format!("restartCount went from {} to {latest}", old.n);
        let since = old.last_known_ns().or(old.started_at);
        // A follow that ended cleanly read the instance to its end (the
        // kubelet ends it when the container exits): nothing of it is lost.
        if !old.clean_end
            && self
                .end_gap(&mut old, GapReason::InstanceSkipped, &detail, None)
                .await
                .is_err()
        {
            return Phase::Stopped;
        }
        let mut take = |follow: &mut Follow, n: u32| match next.take() {
            Some(instance) if instance.n == n => instance,
            other => {
                next = other;
                follow.instance(n)
            }
        };
        for n in old.n + 1..latest - 1 {
            let mut skipped = take(self, n);
            if self
                .end_gap(&mut skipped, GapReason::InstanceSkipped, &detail, since)
                .await
                .is_err()
            {
                return Phase::Stopped;
            }
        }
        let before = take(self, latest - 1);
        Phase::Draining {
            old: Box::new(before),
            attempt: 0,
            next: None,
        }
    }

    /// Counts, logs (once per instance) and words a gap of `instance` from
    /// `from_ns` to `to_ns`; returns the marker's message. Its lines are
    /// estimated only for a gap between two lines read (a rotation), from
    /// the instance's observed rate; other gaps count as events only
    /// (`kubeherald_log_gaps_total`), since their end is not known.
    fn say_gap(
        &self,
        instance: &mut Instance,
        reason: GapReason,
        from_ns: i64,
        to_ns: i64,
        detail: &str,
    ) -> String {
        let labels = self.shared.reason(reason.label());
        metrics().log_gaps.get_or_create(&labels).inc();
        let estimate = match reason {
            GapReason::Rotated => instance.observed.and_then(|o| o.estimate(to_ns - from_ns)),
            _ => None,
        };
        if let Some(lines) = estimate {
            metrics()
                .log_lines_lost
                .get_or_create(&labels)
                .inc_by(lines);
        }
        let (from, to) = (rfc3339(from_ns), rfc3339(to_ns));
        if !std::mem::replace(&mut instance.gap_logged, true) {
            warn!(
                restart_count = instance.n,
                reason = reason.label(),
                from = %from,
                to = %to,
                lines_lost_estimate = ?estimate,
                detail,
                "log lines were not read; a gap marker goes into the stream"
            );
        } else {
            debug!(restart_count = instance.n, reason = reason.label(), from = %from, to = %to, detail, "another gap in this container instance's log");
        }
        gap_message(reason, from_ns, to_ns)
    }

    /// A gap at the end of what was read of `instance` (the rest of its log
    /// cannot be read): said, and its marker appended after the last line
    /// read. The gap runs from that line (else the instance's start, else
    /// `since`) to now.
    async fn end_gap(
        &mut self,
        instance: &mut Instance,
        reason: GapReason,
        detail: &str,
        since: Option<i64>,
    ) -> Result<(), Closed> {
        let now = now_ns();
        let last = instance.last_known_ns();
        let from = last.or(instance.started_at).or(since).unwrap_or(now);
        let to = now.max(from);
        let message = self.say_gap(instance, reason, from, to, detail);
        // Position 0 of a time after the last line read: after every line
        // appended, so the sink never takes it for a duplicate.
        let timestamp = last.map_or(to, |last| to.max(last + 1));
        let marker = Parsed {
            timestamp,
            seq: 0,
            message,
        };
        instance.finished = true;
        self.append(instance, vec![marker]).await
    }

    /// The pod is gone: forget the positions of its instances.
    fn release(&mut self) {
        for n in 0..=self.highest_instance {
            self.shared
                .checkpoints
                .forget(&self.shared.key(&self.pod, &self.container, n));
        }
        debug!("container released");
    }
}

/// Waits for a slot under the cluster's bound.
async fn slot(shared: &Shared) -> Slot {
    let permit = shared.limit.acquire(&shared.labels).await;
    let gauge = metrics()
        .log_follows_open
        .get_or_create(&shared.labels)
        .clone();
    gauge.inc();
    Slot {
        _permit: permit,
        gauge,
    }
}

/// The later of two positions.
fn later(a: Checkpoint, b: Checkpoint) -> Checkpoint {
    if (a.timestamp_ns, a.seq_at_timestamp) >= (b.timestamp_ns, b.seq_at_timestamp) {
        a
    } else {
        b
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::config::LogsConfig;
    use crate::logs::checkpoint::CheckpointStore;
    use crate::logs::options::{FollowLimit, LogFollowOptions};
    use crate::metrics::ClusterLabels;
    use crate::spool::Spool;

    const BACKOFF: Duration = Duration::from_millis(100);

    /// A follow of container `app` in pod `web`, with a client that is
    /// never asked anything: the steps tested here make no request.
    fn follow(
        view: watch::Receiver<ContainerView>,
        checkpoints: CheckpointStore,
    ) -> (Follow, Spool) {
        let spool = Spool::in_memory(1024 * 1024);
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let options = LogFollowOptions {
            backoff_initial: BACKOFF,
            backoff_max: BACKOFF * 8,
            ..LogFollowOptions::default()
        };
        let shared = Arc::new(Shared {
            client: kube::Client::try_from(config).unwrap(),
            context: "ctx".into(),
            cluster_name: "c1".into(),
            namespace: "ns".into(),
            logs: LogsConfig {
                prefix: "p".into(),
                retention_days: 30,
                exclude_labels: Vec::new(),
                max_streams_per_cluster: 4,
                lookup_rate_per_second: 10,
                sink: crate::config::LogSink::CloudWatch,
                routes: Vec::new(),
            },
            spool: spool.writer(),
            checkpoints,
            options,
            limit: FollowLimit::new(4),
            labels: ClusterLabels {
                cluster: "c1".into(),
            },
            alive: Arc::new(AtomicUsize::new(0)),
        });
        let backoff = Backoff::new(BACKOFF, BACKOFF * 8);
        let follow = Follow {
            shared,
            pod: "web".into(),
            uid: "u1".into(),
            route: Arc::from(crate::config::DEFAULT_LOG_ROUTE),
            container: "app".into(),
            view,
            view_closed: false,
            first_sight: true,
            new_pod: false,
            highest_instance: 0,
            backoff,
        };
        (follow, spool)
    }

    fn view(restart_count: u32, state: RunState) -> ContainerView {
        ContainerView {
            restart_count,
            state,
            started_at: None,
            gone: false,
            excluded: false,
        }
    }

    fn current(phase: &Phase) -> Option<u32> {
        match phase {
            Phase::Idle { current } | Phase::Reconnecting { current, .. } => {
                current.as_ref().map(|c| c.n)
            }
            Phase::Opening { current } | Phase::Following { current, .. } => Some(current.n),
            Phase::Draining { old, .. } | Phase::DrainWaiting { old, .. } => Some(old.n),
            Phase::Gone { .. } | Phase::Stopped | Phase::Done => None,
        }
    }

    #[tokio::test]
    async fn decide_follows_the_view() {
        let (tx, rx) = watch::channel(view(0, RunState::NotStarted));
        let (mut follow, _spool) = follow(rx, CheckpointStore::in_memory().unwrap());
        let phase = follow.decide(None);
        assert_eq!((phase.name(), current(&phase)), ("idle", None));

        tx.send_replace(view(0, RunState::Running));
        let phase = follow.decide(None);
        assert_eq!((phase.name(), current(&phase)), ("opening", Some(0)));
        let Phase::Opening { current: zero } = phase else {
            unreachable!()
        };

        // A restart while instance 0 was not read to its end: drain it.
        tx.send_replace(view(1, RunState::Running));
        let phase = follow.decide(Some(zero));
        assert_eq!((phase.name(), current(&phase)), ("draining", Some(0)));
        let Phase::Draining { mut old, next, .. } = phase else {
            unreachable!()
        };
        assert!(
            next.is_none(),
            "the new instance is decided after the drain"
        );

        // Instance 0 complete: the new one is followed.
        old.finished = true;
        let phase = follow.decide(Some(*old));
        assert_eq!((phase.name(), current(&phase)), ("opening", Some(1)));
        let Phase::Opening { current: mut one } = phase else {
            unreachable!()
        };

        // Ended and read to its end, no restart yet: nothing to do.
        one.finished = true;
        tx.send_replace(view(1, RunState::Terminated));
        let phase = follow.decide(Some(one));
        assert_eq!((phase.name(), current(&phase)), ("idle", Some(1)));

        tx.send_modify(|v| v.gone = true);
        assert_eq!(follow.decide(None).name(), "done");
    }

    #[tokio::test]
    async fn first_sight_of_a_restarted_container_drains_the_instance_with_a_stored_position() {
        let checkpoints = CheckpointStore::in_memory().unwrap();
        let (_tx, rx) = watch::channel(view(2, RunState::Running));
        let (mut follow_a, _spool_a) = follow(rx.clone(), checkpoints.clone());
        // No position of instance 1: the current instance only.
        let phase = follow_a.decide(None);
        assert_eq!((phase.name(), current(&phase)), ("opening", Some(2)));

        let before = follow_a.shared.key("web", "app", 1);
        checkpoints.advance(
            before,
            Checkpoint {
                timestamp_ns: 1_000,
                seq_at_timestamp: 1,
            },
        );
        let (mut follow_b, _spool_b) = follow(rx, checkpoints);
        let phase = follow_b.decide(None);
        assert_eq!((phase.name(), current(&phase)), ("draining", Some(1)));
        let Phase::Draining { next, .. } = phase else {
            unreachable!()
        };
        assert_eq!(next.map(|n| n.n), Some(2), "then instance 2");
        // Only the first sight looks back.
        assert_eq!(follow_b.decide(None).name(), "opening");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconnect_waits_its_delay_then_decides_again() {
        let (_tx, rx) = watch::channel(view(0, RunState::Running));
        let (mut follow, _spool) = follow(rx, CheckpointStore::in_memory().unwrap());
        let Phase::Opening { current } = follow.decide(None) else {
            panic!("a running container is opened");
        };
        let phase = follow.reconnect_later(Some(current));
        let Phase::Reconnecting { until, .. } = &phase else {
            panic!("a reconnect is a phase of its own");
        };
        let (start, until) = (Instant::now(), *until);
        assert!(until - start >= BACKOFF / 2 && until - start <= BACKOFF);
        let next = follow.step(phase).await;
        assert!(Instant::now() >= until, "left before its delay");
        assert_eq!((next.name(), current_of(&next)), ("opening", Some(0)));

        // The next reconnect in a row waits longer (the backoff grows).
        let Phase::Opening { current } = next else {
            unreachable!()
        };
        let Phase::Reconnecting { until, .. } = follow.reconnect_later(Some(current)) else {
            unreachable!()
        };
        assert!(until - Instant::now() >= BACKOFF);
    }

    fn current_of(phase: &Phase) -> Option<u32> {
        current(phase)
    }

    #[tokio::test(start_paused = true)]
    async fn a_view_change_ends_a_reconnect_early() {
        let (tx, rx) = watch::channel(view(0, RunState::Running));
        let (mut follow, _spool) = follow(rx, CheckpointStore::in_memory().unwrap());
        let Phase::Opening { current } = follow.decide(None) else {
            panic!("a running container is opened");
        };
        let phase = Phase::Reconnecting {
            current: Some(current),
            until: Instant::now() + Duration::from_secs(3600),
        };
        let start = Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            tx.send_replace(view(1, RunState::Running));
            // Keep the sender: a closed view means "pod gone".
            tokio::time::sleep(Duration::from_secs(7200)).await;
        });
        let next = follow.step(phase).await;
        assert!(Instant::now() - start < Duration::from_secs(1));
        assert_eq!((next.name(), current_of(&next)), ("draining", Some(0)));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_waits_for_the_view_and_a_drain_retry_waits_as_a_phase() {
        let (tx, rx) = watch::channel(view(0, RunState::NotStarted));
        let (mut follow, _spool) = follow(rx, CheckpointStore::in_memory().unwrap());
        let idle = follow.decide(None);
        assert_eq!(idle.name(), "idle");
        // Nothing changes: Idle stays (the step does not return).
        let waited = tokio::time::timeout(Duration::from_secs(3600), follow.step(idle)).await;
        assert!(waited.is_err(), "idle returned without a view change");

        tx.send_replace(view(0, RunState::Running));
        let next = follow.step(Phase::Idle { current: None }).await;
        assert_eq!(next.name(), "opening");

        let Phase::Opening { current } = next else {
            unreachable!()
        };
        let until = Instant::now() + Duration::from_secs(5);
        let retry = Phase::DrainWaiting {
            old: Box::new(current),
            attempt: 2,
            next: None,
            until,
        };
        let next = follow.step(retry).await;
        assert!(Instant::now() >= until);
        let Phase::Draining { attempt, old, .. } = next else {
            panic!("a drain retry leads to the drain");
        };
        assert_eq!((attempt, old.n), (2, 0));
    }
}

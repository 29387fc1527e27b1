//! The one list/watch engine: discovery, paginated LIST, WATCH from the
//! LIST's resourceVersion with bookmarks, server timeouts, 410, the idle
//! deadline, backoff, status and metrics — an enum state machine stepped by
//! one function ([`Engine::step`]), in the manner of kube-runtime's
//! `watcher.rs`, with every failure routed through one function
//! ([`recovery`]) that decides how it is retried.
//!
//! What the objects *mean* is a [`Handler`]'s business: the kind watchers
//! ([`super::kind`]) spool every change and diff re-lists against their
//! on-disk state; the log followers' pods watch ([`crate::logs`]) keeps a
//! pod view and starts follows. Both get the same LIST/WATCH rules.
//!
//! ```text
//!            ┌──────────── not served / cluster-scoped (slow) ─────────────┐
//!            ▼                                                              │
//!   Resolving ──► Listing ──(last page)──► Sweeping ──► Watching ◄─┐        │
//!        ▲          │  ▲                                   │  │    │ timeout, close,
//!        │ 404      │  └──── 410 / unusable RV ────────────┘  │    │ idle, broken
//!        └──────────┴─────── any error: Waiting (backoff) ────┴────┘
//! ```
//!
//! Rules (SPEC §3; client-go `tools/cache/reflector.go` and kube-runtime
//! `watcher.rs` behave the same way):
//!
//! - LIST pages are consistent reads of the latest state (no
//!   `resourceVersion`, never `0`: its answer may come from a stale cache and
//!   its watch from synthetic ADDED events); the WATCH starts from the LIST's
//!   `metadata.resourceVersion`.
//! - A server-side timeout or a clean close resumes the WATCH from the last
//!   resourceVersion (event or BOOKMARK) with no re-list; so does a broken
//!   connection or an idle one (no byte within `timeoutSeconds` + margin: a
//!   load balancer dropped it silently).
//! - `410 Gone` (HTTP, or an ERROR event with code 410), an expired continue
//!   token, an undecodable answer or a failed state store make the
//!   resourceVersion unusable: a fresh LIST, handed to the handler to diff.
//! - Transient errors (unreachable, timeouts, 5xx, 429, 401/403) wait with
//!   jittered exponential backoff (`Retry-After` honoured up to the cap),
//!   then retry the same step.
//! - **The backoff resets only when a watch proved healthy**: it delivered
//!   an event or a bookmark, or stayed open for its whole `timeoutSeconds`.
//!   A successful LIST alone never resets it, so a server that answers every
//!   WATCH with 410 (or 500) right after a good LIST sees LISTs (or WATCHes)
//!   spaced by a growing delay, never back to back (SPEC §3, §7). The first
//!   re-list after a healthy watch comes at once; the next in a row waits.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, trace, warn};

use crate::backoff::Backoff;
use crate::config::ResourceKind;
use crate::kube_api::{self, ApiError, LineStream, Op, Read, Resource, Selectors, error_chain};
use crate::metrics::{WatchLabels, metrics};
use crate::record::EventType;
use crate::spool::SpoolError;

use super::error::WatchError;
use super::{WatchOptions, WatchStatus};

/// What the engine watches.
pub(crate) enum Source {
    /// A configured kind, resolved by discovery in this namespace (and again
    /// after a 404: it may have been removed).
    Discover {
        kind: ResourceKind,
        namespace: String,
    },
    /// A collection whose path is known (the pods of a namespace).
    Fixed(Arc<Resource>),
}

/// One event of a WATCH, as the server sent it.
pub(crate) struct WatchEvent<'a> {
    pub event_type: EventType,
    pub object: &'a RawValue,
}

/// What to do with what a list/watch reads. Each call is one step of the
/// engine: an error is handled by [`recovery`] like any failed request.
pub(crate) trait Handler {
    /// A new LIST begins: its first page is about to be read.
    fn begin_list(&mut self) -> Result<(), WatchError>;

    /// The items of one LIST page, in the server's order.
    async fn list_page(
        &mut self,
        resource: &Resource,
        items: Vec<&RawValue>,
    ) -> Result<(), WatchError>;

    /// After the last page: one bounded step of handling what the LIST did
    /// not show (the kind watcher's DELETED sweep), resumed after `after`;
    /// returns where to resume, `None` when nothing is left.
    async fn sweep(
        &mut self,
        resource: &Resource,
        after: Option<String>,
    ) -> Result<Option<String>, WatchError>;

    /// The LIST is complete; the WATCH starts from `resource_version`.
    fn list_done(&mut self, resource_version: &str) -> Result<(), WatchError>;

    /// Events of the WATCH in order (possibly none), and the version of a
    /// BOOKMARK that came after the last of them. Returns the version the
    /// batch reaches: the bookmark's, else the last event's
    /// `metadata.resourceVersion`.
    async fn events(
        &mut self,
        resource: &Resource,
        events: Vec<WatchEvent<'_>>,
        trailing_bookmark: Option<&str>,
    ) -> Result<Option<String>, WatchError>;

    /// Between steps: housekeeping (reaping tasks).
    fn tick(&mut self) {}

    /// Where a WATCH can resume without a LIST, once, at start: the
    /// version a previous process persisted. `None`: LIST first.
    fn resume_from(&mut self) -> Option<String> {
        None
    }

    /// When what the handler committed must be made durable although no
    /// event comes to carry it (a quiet watch); `None`: nothing pending.
    fn flush_due(&self) -> Option<std::time::Instant> {
        None
    }

    /// Makes what the handler committed durable (called at `flush_due`).
    fn flush(&mut self) -> Result<(), WatchError> {
        Ok(())
    }

    /// Shutdown: make what the handler holds durable.
    fn stop(&mut self) {}
}

/// Where a watch stands. Each variant carries what its step needs.
pub(crate) enum Phase {
    /// Resolving the kind by discovery.
    ///
    /// Entered at start (a [`Source::Discover`]), after a 404 from a LIST or
    /// WATCH (the kind may have been removed), and after the slow wait that
    /// follows a kind not served or cluster-scoped. Left to `Listing` once
    /// resolved, to `Waiting` on an error.
    Resolving,
    /// Reading the pages of a LIST; `continue_token` is `None` before the
    /// first page, which tells the handler a new LIST begins.
    ///
    /// Entered after `Resolving`, and when the resourceVersion became
    /// unusable (410, undecodable answer, state failure), or the continue
    /// token expired. Left to the next page, to `Sweeping` after the last
    /// one, to `Waiting` on an error.
    Listing {
        resource: Arc<Resource>,
        continue_token: Option<String>,
    },
    /// The handler's sweep of what the LIST did not show, a batch at a time
    /// after `after`.
    ///
    /// Entered after the last LIST page. Left to `Watching` from the LIST's
    /// `resource_version` once nothing is left, to `Waiting` on an error.
    Sweeping {
        resource: Arc<Resource>,
        resource_version: String,
        after: Option<String>,
    },
    /// A WATCH from `resource_version`; `stream` is `None` until it is
    /// (re)opened.
    ///
    /// Entered after `Sweeping`, and (stream `None`) after the server ended
    /// the stream, the connection broke or went idle. Stays while events
    /// arrive, advancing `resource_version` with every event and bookmark.
    /// Left to `Listing` on 410 or an unusable answer, to `Waiting` on a
    /// transient error, to `Resolving` (via `Waiting`) on 404.
    Watching {
        resource: Arc<Resource>,
        resource_version: String,
        stream: Option<LineStream>,
    },
    /// Waiting out a delay before `next`.
    ///
    /// Entered on every retried error, with the delay [`recovery`] and the
    /// backoff chose. Left to `next` when `until` passes.
    Waiting { until: Instant, next: Box<Phase> },
    /// Nothing more to do until shutdown: an error no retry can fix (a
    /// closed spool, a request that cannot be built). Never left.
    Stopped,
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Resolving => "resolving",
            Phase::Listing { .. } => "listing",
            Phase::Sweeping { .. } => "sweeping",
            Phase::Watching { .. } => "watching",
            Phase::Waiting { .. } => "waiting",
            Phase::Stopped => "stopped",
        }
    }

    fn resource(&self) -> Option<Arc<Resource>> {
        match self {
            Phase::Listing { resource, .. }
            | Phase::Sweeping { resource, .. }
            | Phase::Watching { resource, .. } => Some(Arc::clone(resource)),
            Phase::Waiting { next, .. } => next.resource(),
            Phase::Resolving | Phase::Stopped => None,
        }
    }

    /// A fresh LIST of `resource`.
    fn list(resource: Arc<Resource>) -> Phase {
        Phase::Listing {
            resource,
            continue_token: None,
        }
    }
}

/// How a failure is retried: decided by [`recovery`] alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// After a backoff, the same step again (same page, same resourceVersion).
    Retry,
    /// A fresh LIST (counted as a re-list with this reason).
    Relist(&'static str),
    /// Discovery again, after a backoff (the kind may have gone).
    Resolve,
    /// Discovery again after the slow `unserved_retry` wait.
    ResolveSlowly,
    /// Give up until shutdown.
    Stop,
}

/// The one place that decides what a failure leads to.
pub(crate) fn recovery(err: &WatchError) -> Recovery {
    let api = match err {
        _ if !err.is_retryable() => return Recovery::Stop,
        WatchError::State(_) => return Recovery::Relist("error"),
        WatchError::Spool { .. } => return Recovery::Retry,
        WatchError::Api(api) => api,
    };
    match api {
        ApiError::Expired { .. } => Recovery::Relist("expired"),
        ApiError::NotServed { .. } | ApiError::ClusterScoped { .. } => Recovery::ResolveSlowly,
        ApiError::Status { code: 404, .. } => Recovery::Resolve,
        // client-go: 429 and 5xx re-watch from the same version; any other
        // status of a WATCH (400 "bad resourceVersion", ...) means the
        // version cannot be used: re-list.
        ApiError::Status {
            op: Op::Watch,
            code,
            ..
        } if !matches!(code, 401 | 403 | 429 | 500..=599) => Recovery::Relist("error"),
        ApiError::Undecodable { .. } => Recovery::Relist("error"),
        _ => Recovery::Retry,
    }
}

/// A LIST answer: its metadata and the items' raw bytes.
#[derive(Deserialize)]
struct ListBody<'a> {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(borrow, default)]
    items: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize, Default)]
struct ListMeta {
    #[serde(rename = "resourceVersion", default)]
    resource_version: Option<String>,
    #[serde(rename = "continue", default)]
    continue_token: Option<String>,
}

/// One line of a WATCH stream.
#[derive(Deserialize)]
struct WatchLine<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    #[serde(borrow)]
    object: &'a RawValue,
}

/// The `metadata.resourceVersion` of a BOOKMARK's object (which has nothing else).
fn bookmark_version(raw: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct Bookmark {
        metadata: BookmarkMeta,
    }
    #[derive(Deserialize)]
    struct BookmarkMeta {
        #[serde(rename = "resourceVersion")]
        resource_version: Option<String>,
    }
    let bookmark: Bookmark = serde_json::from_str(raw.get()).ok()?;
    bookmark
        .metadata
        .resource_version
        .filter(|rv| !rv.is_empty())
}

/// Objects a watch could not read: each is counted
/// (`objects_skipped{reason}`), logged once (context, kind and name when it
/// has one — never its body) and skipped, so one bad object never stops a
/// watch nor makes it re-list forever (SPEC §3, §7).
pub(crate) struct Skipped {
    labels: WatchLabels,
    /// Hashes of the objects already logged; bounded, forgotten when full.
    logged: HashSet<u64>,
}

/// Objects remembered as logged before the memory is cleared.
const SKIPPED_LOGGED_MAX: usize = 4096;

impl Skipped {
    pub fn new(labels: WatchLabels) -> Skipped {
        Skipped {
            labels,
            logged: HashSet::new(),
        }
    }

    /// Counts and (once per object) logs `raw`, skipped for `reason`.
    pub fn skip(
        &mut self,
        op: Op,
        reason: &'static str,
        raw: &[u8],
        error: &dyn std::error::Error,
    ) {
        metrics()
            .objects_skipped
            .get_or_create(&self.labels.reason(reason))
            .inc();
        let name = object_name(raw);
        let key = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            raw.hash(&mut hasher);
            hasher.finish()
        };
        if self.logged.len() >= SKIPPED_LOGGED_MAX {
            self.logged.clear();
        }
        if self.logged.insert(key) {
            warn!(
                %op,
                reason,
                name = name.as_deref().unwrap_or(""),
                bytes = raw.len(),
                error = %error_chain(error),
                "an object cannot be read; it is skipped"
            );
        }
    }
}

/// `metadata.name` of an object, if it has one that can be read.
fn object_name(raw: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Named {
        metadata: NamedMeta,
    }
    #[derive(Deserialize)]
    struct NamedMeta {
        name: Option<String>,
    }
    let named: Named = serde_json::from_slice(raw).ok()?;
    named.metadata.name.filter(|name| !name.is_empty())
}

/// Builds the client of a context, retried with backoff until it works or
/// `shutdown`: an exec credential plugin or token file that fails is
/// transient (SSO, STS, a rotated file; SPEC §6). Each try waits
/// `request_timeout` for the plugin (a run still going from the last try is
/// waited for, not started again: [`kube_api::Connector`]); each failure is
/// counted (`watch_errors`), logged
/// without the plugin's environment, arguments or output, and shown in the
/// status. `None` at shutdown.
pub(crate) async fn connect(
    config: &kube::Config,
    options: &WatchOptions,
    labels: &WatchLabels,
    status: &Mutex<WatchStatus>,
    shutdown: &CancellationToken,
) -> Option<kube::Client> {
    let mut backoff = options.backoff();
    let mut reported = false;
    let mut connector = kube_api::Connector::new(config);
    loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return None,
            attempt = connector.connect(options.request_timeout) => attempt,
        };
        let err = match attempt {
            Ok(client) => return Some(client),
            Err(err) => err,
        };
        let label = err.metric_label();
        let delay = backoff.next_delay();
        metrics()
            .watch_errors
            .get_or_create(&labels.reason(label))
            .inc();
        if std::mem::replace(&mut reported, true) {
            warn!(reason = label, error = %error_chain(&err), retry_in = ?delay, "cannot connect to this context; retrying");
        } else {
            // Once at ERROR (to Sentry), then quietly: SSO or STS may be
            // down for hours.
            error!(reason = label, error = %error_chain(&err), retry_in = ?delay, "cannot connect to this context; retrying with backoff");
        }
        status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .last_error = Some(format!("{label}: {}", error_chain(&err)));
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// The running list/watch of one collection.
pub(crate) struct Engine<H> {
    pub client: kube::Client,
    pub source: Source,
    pub options: WatchOptions,
    pub labels: WatchLabels,
    pub status: Arc<Mutex<WatchStatus>>,
    pub handler: H,
    /// Sent on every LIST and WATCH ([`Engine::with_selectors`]).
    selectors: Selectors,
    backoff: Backoff,
    skipped: Skipped,
    /// The first collection resolved may resume from the handler's version.
    may_resume: bool,
    /// Lasting failures already reported (at ERROR: to Sentry) since the
    /// watch last synced: each is reported once, not once per retry.
    reported: HashSet<&'static str>,
    /// This watch's `kubeherald_watch_up`, looked up once (it is set at
    /// every step).
    up: prometheus_client::metrics::gauge::Gauge,
    /// `limit` of the next LIST page ([`next_page_limit`]).
    page_limit: u32,
}

/// `limit` of the first LIST page a watch asks for, before it knows how
/// large its objects are.
const FIRST_PAGE_LIMIT: u32 = 50;

/// The `limit` of the next LIST page, after one of `items` items in `bytes`
/// bytes: as many items of that average size as fit `max_bytes`, between 1
/// and `max_items`. The API server takes a different `limit` on each
/// request of one paginated LIST (the continue token holds the position).
pub(crate) fn next_page_limit(max_items: u32, items: usize, bytes: usize, max_bytes: usize) -> u32 {
    if items == 0 {
        return max_items.max(1);
    }
    let average = (bytes / items).max(1);
    ((max_bytes / average).min(max_items as usize) as u32).max(1)
}

/// Failures that retrying may not heal (an operator has to act): reported
/// once at ERROR, then retried quietly at WARN (SPEC §6).
fn is_lasting(label: &str) -> bool {
    matches!(
        label,
        "forbidden" | "unauthorized" | "not-served" | "cluster-scoped" | "credentials" | "client"
    )
}

impl<H: Handler> Engine<H> {
    pub fn new(
        client: kube::Client,
        source: Source,
        options: WatchOptions,
        labels: WatchLabels,
        status: Arc<Mutex<WatchStatus>>,
        handler: H,
    ) -> Self {
        Engine {
            client,
            source,
            skipped: Skipped::new(labels.clone()),
            may_resume: true,
            reported: HashSet::new(),
            up: metrics().watch_up.get_or_create(&labels).clone(),
            backoff: options.backoff(),
            // The first page of the first LIST is small: nothing is known
            // yet of the objects' size.
            page_limit: options.page_size.clamp(1, FIRST_PAGE_LIMIT),
            selectors: Selectors::default(),
            options,
            labels,
            status,
            handler,
        }
    }

    /// Filters every LIST and WATCH with `selectors`.
    pub fn with_selectors(mut self, selectors: Selectors) -> Self {
        self.selectors = selectors;
        self
    }

    /// Runs the loop until `shutdown`, then lets the handler make its state
    /// durable.
    pub async fn run(mut self, shutdown: CancellationToken) -> H {
        let mut phase = match &self.source {
            Source::Discover { .. } => Phase::Resolving,
            Source::Fixed(resource) => {
                let resource = Arc::clone(resource);
                self.first_phase(resource)
            }
        };
        loop {
            self.report(&phase);
            if let Phase::Stopped = phase {
                shutdown.cancelled().await;
                break;
            }
            phase = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                next = self.step(phase) => next,
            };
            self.handler.tick();
        }
        self.handler.stop();
        self.status_mut(|status| status.phase = "stopped");
        debug!("watch stopped");
        self.handler
    }

    /// Does one unit of work (a discovery request, a LIST page, a sweep
    /// batch, a chunk of watch lines, a wait) and returns the next phase.
    pub async fn step(&mut self, phase: Phase) -> Phase {
        match phase {
            Phase::Resolving => match self.resolve().await {
                Ok(resource) => {
                    info!(path = %resource.path, "kind resolved");
                    self.first_phase(resource)
                }
                Err(err) => self.recover(err, Phase::Resolving),
            },
            Phase::Listing {
                resource,
                continue_token,
            } => match self.list_page(&resource, continue_token.as_deref()).await {
                Ok(ListProgress::Next(next_token)) => Phase::Listing {
                    resource,
                    continue_token: Some(next_token),
                },
                Ok(ListProgress::Done(resource_version)) => Phase::Sweeping {
                    resource,
                    resource_version,
                    after: None,
                },
                Err(err) => {
                    // A page is retried from its token; an expired token
                    // restarts the LIST (recovery turns 410 into a re-list).
                    let retry = Phase::Listing {
                        resource,
                        continue_token,
                    };
                    self.recover(err, retry)
                }
            },
            Phase::Sweeping {
                resource,
                resource_version,
                after,
            } => match self.handler.sweep(&resource, after.clone()).await {
                Ok(Some(last)) => Phase::Sweeping {
                    resource,
                    resource_version,
                    after: Some(last),
                },
                Ok(None) => match self.handler.list_done(&resource_version) {
                    Ok(()) => {
                        // Healed: a failure from now on is news again.
                        self.reported.clear();
                        self.status_mut(|status| {
                            status.synced = true;
                            status.last_error = None;
                        });
                        Phase::Watching {
                            resource,
                            resource_version,
                            stream: None,
                        }
                    }
                    Err(err) => self.recover(err, Phase::list(resource)),
                },
                Err(err) => {
                    let retry = Phase::Sweeping {
                        resource,
                        resource_version,
                        after,
                    };
                    self.recover(err, retry)
                }
            },
            Phase::Watching {
                resource,
                resource_version,
                stream: None,
            } => {
                let opened = kube_api::open_watch(
                    &self.client,
                    &resource,
                    &self.selectors,
                    &resource_version,
                    self.options.watch_timeout,
                    self.options.request_timeout,
                )
                .await;
                match opened {
                    Ok(stream) => {
                        trace!(resource_version = %resource_version, "watch opened");
                        // A watch resumed from a persisted version is in
                        // sync as soon as the server accepts it.
                        self.status_mut(|status| status.synced = true);
                        Phase::Watching {
                            resource,
                            resource_version,
                            stream: Some(stream),
                        }
                    }
                    Err(err) => {
                        let retry = Phase::Watching {
                            resource,
                            resource_version,
                            stream: None,
                        };
                        self.recover(err.into(), retry)
                    }
                }
            }
            Phase::Watching {
                resource,
                mut resource_version,
                stream: Some(mut stream),
            } => {
                let idle = self.options.idle_deadline();
                let idle_left = idle.saturating_sub(stream.last_byte.elapsed());
                let read_for = match self.flush_in() {
                    Some(flush_in) => idle_left.min(flush_in),
                    None => idle_left,
                };
                match stream.read(read_for).await {
                    Read::Idle if stream.last_byte.elapsed() < idle => {
                        // Not idle: the handler's commits are due to be durable.
                        let next = Phase::Watching {
                            resource,
                            resource_version,
                            stream: Some(stream),
                        };
                        match self.flush() {
                            Ok(()) => next,
                            Err(err) => {
                                let Phase::Watching {
                                    resource,
                                    resource_version,
                                    ..
                                } = next
                                else {
                                    return next;
                                };
                                let retry = Phase::Watching {
                                    resource,
                                    resource_version,
                                    stream: None,
                                };
                                self.recover(err, retry)
                            }
                        }
                    }
                    Read::Lines(lines) => {
                        let outcome = self
                            .watch_lines(&resource, &mut resource_version, &lines)
                            .await;
                        if outcome.delivered {
                            // The watch works: only now may failures start over.
                            self.backoff.reset();
                        }
                        match outcome.failure {
                            None => Phase::Watching {
                                resource,
                                resource_version,
                                stream: Some(stream),
                            },
                            Some(err) => {
                                let retry = Phase::Watching {
                                    resource,
                                    resource_version,
                                    stream: None,
                                };
                                self.recover(err, retry)
                            }
                        }
                    }
                    Read::End => {
                        let lasted = stream.opened.elapsed();
                        // The server's `timeoutSeconds` ended it, or it closed early.
                        let full_term =
                            lasted + Duration::from_secs(1) >= self.options.watch_timeout;
                        let reason = if full_term { "timeout" } else { "closed" };
                        self.count_restart(reason);
                        debug!(reason, resource_version = %resource_version, lasted = ?lasted, "watch ended; resuming");
                        let next = Phase::Watching {
                            resource,
                            resource_version,
                            stream: None,
                        };
                        if full_term {
                            // Open for its whole term: a healthy, quiet watch.
                            self.backoff.reset();
                            next
                        } else if stream.bytes == 0 && lasted < Duration::from_secs(1) {
                            // A server that ends every watch at once (an empty
                            // 200) must not make us spin.
                            let delay = self.backoff.next_delay();
                            wait(delay, next)
                        } else {
                            next
                        }
                    }
                    Read::Idle => {
                        self.count_restart("idle");
                        warn!(
                            idle = ?self.options.idle_deadline(),
                            resource_version = %resource_version,
                            "no byte from the watch within its idle deadline; reconnecting"
                        );
                        Phase::Watching {
                            resource,
                            resource_version,
                            stream: None,
                        }
                    }
                    Read::Broken(err) => {
                        self.count_restart("error");
                        let delay = self.backoff.next_delay();
                        warn!(error = %error_chain(&err), resource_version = %resource_version, retry_in = ?delay, "watch connection broke; resuming");
                        let next = Phase::Watching {
                            resource,
                            resource_version,
                            stream: None,
                        };
                        wait(delay, next)
                    }
                }
            }
            Phase::Waiting { until, next } => {
                if let Some(flush_in) = self.flush_in()
                    && Instant::now() + flush_in < until
                {
                    tokio::time::sleep(flush_in).await;
                    if let Err(err) = self.flush() {
                        warn!(error = %error_chain(&err), "cannot make the watch state durable; trying again");
                    }
                    return Phase::Waiting { until, next };
                }
                tokio::time::sleep_until(until).await;
                *next
            }
            Phase::Stopped => Phase::Stopped,
        }
    }

    /// Where a resolved collection starts: the WATCH from a persisted
    /// version (a restart, SPEC §3: no LIST, no event for what did not
    /// change; a 410 then leads to LIST + diff), else a LIST. Only the
    /// first time: later resolutions follow a failure and LIST.
    fn first_phase(&mut self, resource: Arc<Resource>) -> Phase {
        if !std::mem::take(&mut self.may_resume) {
            return Phase::list(resource);
        }
        match self.handler.resume_from() {
            Some(resource_version) => {
                info!(resource_version = %resource_version, "resuming the watch from the persisted resourceVersion");
                Phase::Watching {
                    resource,
                    resource_version,
                    stream: None,
                }
            }
            None => Phase::list(resource),
        }
    }

    /// How long a wait may last before the handler's pending commits are
    /// due to be made durable.
    fn flush_in(&self) -> Option<Duration> {
        self.handler
            .flush_due()
            .map(|due| due.saturating_duration_since(std::time::Instant::now()))
    }

    /// Makes the handler's pending commits durable; a failure is the
    /// handler's storage failing, recovered like any.
    fn flush(&mut self) -> Result<(), WatchError> {
        self.handler.flush()
    }

    async fn resolve(&self) -> Result<Arc<Resource>, WatchError> {
        match &self.source {
            Source::Fixed(resource) => Ok(Arc::clone(resource)),
            Source::Discover { kind, namespace } => {
                let resource =
                    kube_api::resolve(&self.client, kind, namespace, self.options.request_timeout)
                        .await?;
                Ok(Arc::new(resource))
            }
        }
    }

    /// Reads one LIST page and hands its items to the handler.
    async fn list_page(
        &mut self,
        resource: &Resource,
        continue_token: Option<&str>,
    ) -> Result<ListProgress, WatchError> {
        if continue_token.is_none() {
            self.handler.begin_list()?;
        }
        let body = kube_api::list_page(
            &self.client,
            resource,
            &self.selectors,
            self.page_limit,
            continue_token,
            self.options.request_timeout,
        )
        .await?;
        let list: ListBody<'_> =
            serde_json::from_slice(&body).map_err(|e| WatchError::undecodable(Op::List, e))?;
        let items = list.items.as_ref().map_or(0, Vec::len);
        self.page_limit = next_page_limit(
            self.options.page_size,
            items,
            body.len(),
            self.options.max_page_bytes,
        );
        self.handler
            .list_page(resource, list.items.unwrap_or_default())
            .await?;
        if let Some(token) = list.metadata.continue_token.filter(|t| !t.is_empty()) {
            return Ok(ListProgress::Next(token));
        }
        match list.metadata.resource_version.filter(|rv| !rv.is_empty()) {
            Some(resource_version) => Ok(ListProgress::Done(resource_version)),
            None => Err(WatchError::undecodable(
                Op::List,
                std::io::Error::other("a LIST without metadata.resourceVersion"),
            )),
        }
    }

    /// Hands complete watch lines to the handler in one batch, with the
    /// version they reach. An ERROR event (or a bad line) ends the batch:
    /// what came before it is still handled.
    async fn watch_lines(
        &mut self,
        resource: &Resource,
        resource_version: &mut String,
        lines: &[u8],
    ) -> WatchOutcome {
        let mut events = Vec::new();
        // A bookmark after the last event: the version the batch reaches.
        let mut trailing_bookmark: Option<String> = None;
        let mut failure = None;
        for line in lines.split(|&b| b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let event: WatchLine<'_> = match serde_json::from_slice(line) {
                Ok(event) => event,
                Err(err) => {
                    // Framing is by line: the next one is still readable.
                    self.skipped.skip(Op::Watch, "bad-line", line, &err);
                    continue;
                }
            };
            let event_type = match event.event_type {
                "ADDED" => EventType::Added,
                "MODIFIED" => EventType::Modified,
                "DELETED" => EventType::Deleted,
                "BOOKMARK" => {
                    // A bookmark only moves the version on (its object is
                    // empty but for metadata.resourceVersion).
                    if let Some(rv) = bookmark_version(event.object) {
                        trace!(resource_version = %rv, "bookmark");
                        trailing_bookmark = Some(rv);
                    }
                    continue;
                }
                "ERROR" => {
                    let status: kube::core::Status =
                        serde_json::from_str(event.object.get()).unwrap_or_default();
                    failure = Some(ApiError::from_status(Op::Watch, &status, None).into());
                    break;
                }
                other => {
                    let err = std::io::Error::other(format!("unknown watch event type {other:?}"));
                    self.skipped.skip(Op::Watch, "unknown-type", line, &err);
                    continue;
                }
            };
            trailing_bookmark = None;
            events.push(WatchEvent {
                event_type,
                object: event.object,
            });
        }
        if events.is_empty() && trailing_bookmark.is_none() {
            return WatchOutcome {
                delivered: false,
                failure,
            };
        }
        match self
            .handler
            .events(resource, events, trailing_bookmark.as_deref())
            .await
        {
            Ok(reached) => {
                if let Some(rv) = reached.or(trailing_bookmark) {
                    *resource_version = rv;
                }
                WatchOutcome {
                    delivered: true,
                    failure,
                }
            }
            Err(err) => WatchOutcome {
                delivered: false,
                failure: Some(err),
            },
        }
    }

    /// Logs and counts a failure and returns the phase that retries it.
    fn recover(&mut self, err: WatchError, retry: Phase) -> Phase {
        let label = err.metric_label();
        let recovery = recovery(&err);
        if is_lasting(label) && self.reported.insert(label) {
            error!(reason = label, error = %error_chain(&err), "this watch fails for a reason retrying may not heal; it is retried with backoff, and reported once");
        }
        self.status_mut(|status| {
            status.last_error = Some(format!("{label}: {}", error_chain(&err)))
        });
        if recovery == Recovery::Relist("expired") {
            // Not an error: history moved on (compaction, a long gap).
            metrics()
                .relists
                .get_or_create(&self.labels.reason("expired"))
                .inc();
        } else {
            metrics()
                .watch_errors
                .get_or_create(&self.labels.reason(label))
                .inc();
        }
        let resource = retry.resource();
        match (recovery, resource) {
            (Recovery::Stop, _) => {
                if matches!(
                    &err,
                    WatchError::Spool {
                        source: SpoolError::Closed,
                        ..
                    }
                ) {
                    info!("spool closed; watch stops");
                } else {
                    error!(reason = label, error = %error_chain(&err), "watch failed and cannot be retried; it stops until restart");
                }
                Phase::Stopped
            }
            (Recovery::ResolveSlowly, _) => {
                let delay = self.options.unserved_retry;
                warn!(reason = label, error = %error_chain(&err), retry_in = ?delay, "kind cannot be watched in this cluster");
                wait(delay, Phase::Resolving)
            }
            (Recovery::Relist(reason), Some(resource)) => {
                // The first re-list after a healthy watch comes at once;
                // more in a row back off (the backoff is reset only by a
                // watch that delivered, never by a LIST).
                let failures = self.backoff.failures();
                let delay = self.backoff.next_delay();
                if reason == "expired" {
                    info!(error = %error_chain(&err), "resourceVersion expired; re-listing");
                } else {
                    metrics()
                        .relists
                        .get_or_create(&self.labels.reason(reason))
                        .inc();
                    warn!(reason = label, error = %error_chain(&err), retry_in = ?delay, "watch state unusable; re-listing");
                }
                if failures == 0 {
                    Phase::list(resource)
                } else {
                    wait(delay, Phase::list(resource))
                }
            }
            (Recovery::Resolve, _) | (Recovery::Relist(_), None) => {
                let delay = self.backoff.next_delay();
                let next = match &self.source {
                    Source::Discover { .. } => Phase::Resolving,
                    // A fixed collection has nothing to resolve: list it again.
                    Source::Fixed(resource) => Phase::list(Arc::clone(resource)),
                };
                warn!(reason = label, error = %error_chain(&err), retry_in = ?delay, "collection not found; trying again");
                wait(delay, next)
            }
            (Recovery::Retry, _) => {
                let delay = self
                    .backoff
                    .delay_with_retry_after(retry_after(&err), self.options.backoff_max);
                warn!(
                    reason = label,
                    error = %error_chain(&err),
                    retry_in = ?delay,
                    failures = self.backoff.failures(),
                    "watch request failed; retrying"
                );
                wait(delay, retry)
            }
        }
    }

    fn count_restart(&self, reason: &str) {
        metrics()
            .watch_restarts
            .get_or_create(&self.labels.reason(reason))
            .inc();
    }

    fn status_mut(&self, change: impl FnOnce(&mut WatchStatus)) {
        change(
            &mut self
                .status
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
    }

    fn report(&self, phase: &Phase) {
        let up = matches!(
            phase,
            Phase::Watching {
                stream: Some(_),
                ..
            }
        );
        self.up.set(i64::from(up));
        self.status_mut(|status| {
            status.phase = phase.name();
            if let Phase::Watching {
                resource_version, ..
            } = phase
            {
                status.resource_version = Some(resource_version.clone());
            }
        });
    }
}

/// `Retry-After` of the failed answer, if it said one.
fn retry_after(err: &WatchError) -> Option<Duration> {
    match err {
        WatchError::Api(api) => api.retry_after(),
        _ => None,
    }
}

/// What a LIST page leads to.
enum ListProgress {
    /// More pages follow, from this continue token.
    Next(String),
    /// That was the last page; the LIST is at this resourceVersion.
    Done(String),
}

/// What handing watch lines to the handler gave.
struct WatchOutcome {
    /// At least one event or bookmark was handled: the watch works.
    delivered: bool,
    /// The error that ended the batch, if any.
    failure: Option<WatchError>,
}

fn wait(delay: Duration, next: Phase) -> Phase {
    Phase::Waiting {
        until: Instant::now() + delay,
        next: Box::new(next),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(op: Op, code: u16) -> WatchError {
        WatchError::Api(ApiError::Status {
            op,
            code,
            reason: String::new(),
            message: String::new(),
            retry_after: None,
        })
    }

    #[test]
    fn page_limits_follow_the_objects_size() {
        // 2 KiB objects: 256 fit 512 KiB.
        assert_eq!(next_page_limit(500, 50, 50 * 2048, 512 * 1024), 256);
        // Small ones: the item limit holds.
        assert_eq!(next_page_limit(500, 50, 50 * 100, 512 * 1024), 500);
        // An object larger than the budget: one at a time.
        assert_eq!(next_page_limit(500, 3, 3 * 1024 * 1024, 512 * 1024), 1);
        // An empty page says nothing.
        assert_eq!(next_page_limit(500, 0, 40, 512 * 1024), 500);
    }

    #[test]
    fn recovery_follows_the_reflector_rules() {
        let expired = WatchError::Api(ApiError::Expired {
            op: Op::Watch,
            message: String::new(),
        });
        assert_eq!(recovery(&expired), Recovery::Relist("expired"));
        assert_eq!(recovery(&status(Op::Watch, 500)), Recovery::Retry);
        assert_eq!(recovery(&status(Op::Watch, 429)), Recovery::Retry);
        assert_eq!(recovery(&status(Op::Watch, 403)), Recovery::Retry);
        assert_eq!(recovery(&status(Op::List, 401)), Recovery::Retry);
        assert_eq!(recovery(&status(Op::Watch, 400)), Recovery::Relist("error"));
        assert_eq!(recovery(&status(Op::List, 400)), Recovery::Retry);
        assert_eq!(recovery(&status(Op::List, 404)), Recovery::Resolve);
        let unserved = WatchError::Api(ApiError::NotServed {
            api_version: "example.com/v1".into(),
            kind: "Widget".into(),
        });
        assert_eq!(recovery(&unserved), Recovery::ResolveSlowly);
        let bad = WatchError::undecodable(Op::Watch, std::io::Error::other("x"));
        assert_eq!(recovery(&bad), Recovery::Relist("error"));
        let closed = WatchError::Spool {
            op: Op::List,
            source: SpoolError::Closed,
        };
        assert_eq!(recovery(&closed), Recovery::Stop);
    }

    #[test]
    fn bookmark_version_is_read() {
        let raw = |text: &str| RawValue::from_string(text.to_owned()).unwrap();
        let bookmark = r#"{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"1234","creationTimestamp":null}}"#;
        assert_eq!(bookmark_version(&raw(bookmark)).as_deref(), Some("1234"));
        assert_eq!(bookmark_version(&raw(r#"{"metadata":{}}"#)), None);
    }

    /// A handler that records what it was given.
    #[derive(Default)]
    struct Recorder {
        events: Vec<(EventType, String)>,
    }

    impl Handler for Recorder {
        fn begin_list(&mut self) -> Result<(), WatchError> {
            Ok(())
        }
        async fn list_page(&mut self, _: &Resource, _: Vec<&RawValue>) -> Result<(), WatchError> {
            Ok(())
        }
        async fn sweep(
            &mut self,
            _: &Resource,
            _: Option<String>,
        ) -> Result<Option<String>, WatchError> {
            Ok(None)
        }
        fn list_done(&mut self, _: &str) -> Result<(), WatchError> {
            Ok(())
        }
        async fn events(
            &mut self,
            _: &Resource,
            events: Vec<WatchEvent<'_>>,
            trailing_bookmark: Option<&str>,
        ) -> Result<Option<String>, WatchError> {
            let mut reached = None;
            for event in events {
                reached = bookmark_version(event.object);
                self.events
                    .push((event.event_type, event.object.get().to_owned()));
            }
            Ok(trailing_bookmark.map(str::to_owned).or(reached))
        }
    }

    #[tokio::test]
    async fn unreadable_watch_lines_are_skipped_and_the_stream_goes_on() {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let labels = WatchLabels {
            context: "poison-lines".into(),
            namespace: "ns".into(),
            kind: "ConfigMap".into(),
        };
        let mut engine = Engine::new(
            kube::Client::try_from(config).unwrap(),
            Source::Fixed(Arc::new(Resource {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                path: "/api/v1/namespaces/ns/configmaps".into(),
            })),
            WatchOptions::default(),
            labels,
            Arc::new(Mutex::new(WatchStatus::default())),
            Recorder::default(),
        );
        let resource = Resource {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            path: String::new(),
        };
        let lines = concat!(
            "not json at all\n",
            r#"{"type":"ADDED","object":{"metadata":{"name":"a","resourceVersion":"3"}}}"#,
            "\n",
            r#"{"type":"SURPRISE","object":{}}"#,
            "\n",
            r#"[1,2,3]"#,
            "\n",
            r#"{"type":"MODIFIED","object":{"metadata":{"name":"a","resourceVersion":"4"}}}"#,
            "\n",
        );
        let mut rv = "1".to_owned();
        let outcome = engine
            .watch_lines(&resource, &mut rv, lines.as_bytes())
            .await;
        assert!(outcome.failure.is_none(), "no bad line fails the watch");
        assert!(outcome.delivered);
        assert_eq!(rv, "4");
        let types: Vec<EventType> = engine.handler.events.iter().map(|(t, _)| *t).collect();
        assert_eq!(types, [EventType::Added, EventType::Modified]);
        let text = metrics().encode();
        for reason in ["bad-line", "unknown-type"] {
            assert!(
                text.contains(&format!(
                    "kubeherald_objects_skipped_total{{context=\"poison-lines\",namespace=\"ns\",kind=\"ConfigMap\",reason=\"{reason}\"}}"
                )),
                "{reason} counted"
            );
        }
    }
}

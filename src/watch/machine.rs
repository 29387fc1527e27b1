//! The watch loop of one (context, kind): an enum state machine stepped by
//! one function ([`Watcher::step`]), in the manner of kube-runtime's
//! `watcher.rs`, with every failure routed through one function
//! ([`Watcher::recover`]) that decides how it is retried.
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
//!   resourceVersion unusable: a fresh LIST, diffed against the state.
//! - Transient errors (unreachable, timeouts, 5xx, 429, 401/403) wait with
//!   jittered exponential backoff (`Retry-After` honoured up to the cap),
//!   then retry the same step; nothing retries without a delay except the
//!   first reconnect after a stream that was working.
//!
//! **Deletions across a gap**: a watch that falls behind sees no DELETED for
//! what went away meanwhile. The re-list's sweep synthesises them from the
//! state store (marked `resync`), with the last known copy as body; the
//! intermediate states of an object changed several times in a gap are lost
//! (one MODIFIED for the latest), as with any re-list.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, trace, warn};

use crate::backoff::Backoff;
use crate::config::ResourceKind;
use crate::metrics::{WatchLabels, metrics};
use crate::record::{EventType, ResourceEvent};
use crate::spool::{SpoolError, SpoolWriter};

use super::api::{self, Read, Resource, WatchStream};
use super::error::{Op, WatchError, chain};
use super::object::{self, ParsedObject};
use super::state::{Change, KindState, Seen};
use super::{WatchOptions, WatchStatus};

/// Where a watch stands. Each variant carries what its step needs.
pub(crate) enum Phase {
    /// Resolving the kind by discovery.
    ///
    /// Entered at start, after a 404 from a LIST or WATCH (the kind may have
    /// been removed), and after the slow wait that follows a kind not served
    /// or cluster-scoped. Left to `Listing` once resolved, to `Waiting` on
    /// an error.
    Resolving,
    /// Reading the pages of a LIST; `continue_token` is `None` before the
    /// first page, which takes a new state generation.
    ///
    /// Entered after `Resolving`, and when the resourceVersion became
    /// unusable (410, undecodable answer, state failure), or the continue
    /// token expired. Left to the next page, to `Sweeping` after the last
    /// one, to `Waiting` on an error.
    Listing {
        resource: Arc<Resource>,
        continue_token: Option<String>,
        /// Events are diffs marked `resync`: the state had completed a LIST
        /// before (earlier in this process or before a restart). Decided at
        /// the first page.
        resync: bool,
    },
    /// Emitting DELETED (resync) for the stored objects the LIST did not
    /// show, a batch at a time in uid order after `after`.
    ///
    /// Entered after the last LIST page. Left to `Watching` from the LIST's
    /// `resource_version` once no stale entry is left, to `Waiting` on an error.
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
        stream: Option<WatchStream>,
    },
    /// Waiting out a delay before `next`.
    ///
    /// Entered on every retried error, with the delay `recover` chose.
    /// Left to `next` when `until` passes.
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
            resync: false,
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

/// The one place that decides what a failure of `op` leads to.
pub(crate) fn recovery(err: &WatchError) -> Recovery {
    match err {
        _ if !err.is_retryable() => Recovery::Stop,
        WatchError::Expired { .. } => Recovery::Relist("expired"),
        WatchError::NotServed { .. } | WatchError::ClusterScoped { .. } => Recovery::ResolveSlowly,
        WatchError::Status { code: 404, .. } => Recovery::Resolve,
        // client-go: 429 and 5xx re-watch from the same version; any other
        // status of a WATCH (400 "bad resourceVersion", ...) means the
        // version cannot be used: re-list.
        WatchError::Status {
            op: Op::Watch,
            code,
            ..
        } if !matches!(code, 401 | 403 | 429 | 500..=599) => Recovery::Relist("error"),
        WatchError::Undecodable { .. } | WatchError::State(_) => Recovery::Relist("error"),
        _ => Recovery::Retry,
    }
}

/// The running watch of one (context, kind).
pub(crate) struct Watcher {
    pub client: kube::Client,
    pub context: String,
    pub namespace: String,
    /// The API server URL: the `cluster` of every record.
    pub cluster: String,
    pub kind: ResourceKind,
    pub options: WatchOptions,
    pub sink: SpoolWriter,
    pub state: KindState,
    pub backoff: Backoff,
    pub labels: WatchLabels,
    pub status: Arc<Mutex<WatchStatus>>,
    /// Counts of the LIST in progress, for its summary log line.
    pub list_counts: ListCounts,
    /// No LIST completed yet in this process.
    pub first_list: bool,
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ListCounts {
    objects: u64,
    added: u64,
    modified: u64,
    deleted: u64,
    pages: u64,
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

impl Watcher {
    /// Runs the loop until `shutdown`, then makes the state durable.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut phase = Phase::Resolving;
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
        }
        if let Err(err) = self.state.flush() {
            warn!(error = %chain(&err), "cannot make the watch state durable at shutdown");
        }
        self.status_mut(|status| status.phase = "stopped");
        debug!("watch stopped");
    }

    /// Does one unit of work (a discovery request, a LIST page, a sweep
    /// batch, a chunk of watch lines, a wait) and returns the next phase.
    pub async fn step(&mut self, phase: Phase) -> Phase {
        match phase {
            Phase::Resolving => match api::resolve(
                &self.client,
                &self.kind,
                &self.namespace,
                self.options.request_timeout,
            )
            .await
            {
                Ok(resource) => {
                    info!(path = %resource.path, "kind resolved");
                    Phase::list(Arc::new(resource))
                }
                Err(err) => self.recover(err, Phase::Resolving),
            },
            Phase::Listing {
                resource,
                continue_token,
                resync,
            } => match self
                .list_page(&resource, continue_token.as_deref(), resync)
                .await
            {
                Ok(ListStep::Next {
                    continue_token,
                    resync,
                }) => Phase::Listing {
                    resource,
                    continue_token: Some(continue_token),
                    resync,
                },
                Ok(ListStep::Done { resource_version }) => Phase::Sweeping {
                    resource,
                    resource_version,
                    after: None,
                },
                Err(err) => {
                    // A page is retried from its token; an expired token
                    // restarts the LIST (recover turns 410 into a re-list).
                    let retry = Phase::Listing {
                        resource,
                        continue_token,
                        resync,
                    };
                    self.recover(err, retry)
                }
            },
            Phase::Sweeping {
                resource,
                resource_version,
                after,
            } => match self.sweep_batch(&resource, after.as_deref()).await {
                Ok(Some(last_uid)) => Phase::Sweeping {
                    resource,
                    resource_version,
                    after: Some(last_uid),
                },
                Ok(None) => match self.finish_list(&resource_version) {
                    Ok(()) => Phase::Watching {
                        resource,
                        resource_version,
                        stream: None,
                    },
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
                let opened = api::open_watch(
                    &self.client,
                    &resource,
                    &resource_version,
                    self.options.watch_timeout,
                    self.options.request_timeout,
                )
                .await;
                match opened {
                    Ok(stream) => {
                        trace!(resource_version = %resource_version, "watch opened");
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
                        self.recover(err, retry)
                    }
                }
            }
            Phase::Watching {
                resource,
                mut resource_version,
                stream: Some(mut stream),
            } => match stream.read(self.options.idle_deadline()).await {
                Read::Lines(lines) => match self
                    .watch_lines(&resource, &mut resource_version, &lines)
                    .await
                {
                    Ok(()) => {
                        self.backoff.reset();
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
                        self.recover(err, retry)
                    }
                },
                Read::End => {
                    let lasted = stream.opened.elapsed();
                    // The server's `timeoutSeconds` ended it, or it closed early.
                    let reason = if lasted + Duration::from_secs(1) >= self.options.watch_timeout {
                        "timeout"
                    } else {
                        "closed"
                    };
                    self.count_restart(reason);
                    debug!(reason, resource_version = %resource_version, lasted = ?lasted, "watch ended; resuming");
                    let next = Phase::Watching {
                        resource,
                        resource_version,
                        stream: None,
                    };
                    // A server that ends every watch at once (an empty 200)
                    // must not make us spin.
                    if stream.bytes == 0 && lasted < Duration::from_secs(1) {
                        let delay = self.backoff.next_delay();
                        self.wait(delay, next)
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
                    warn!(error = %chain(&err), resource_version = %resource_version, retry_in = ?delay, "watch connection broke; resuming");
                    let next = Phase::Watching {
                        resource,
                        resource_version,
                        stream: None,
                    };
                    self.wait(delay, next)
                }
            },
            Phase::Waiting { until, next } => {
                tokio::time::sleep_until(until).await;
                *next
            }
            Phase::Stopped => Phase::Stopped,
        }
    }

    /// Logs and counts a failure and returns the phase that retries it.
    fn recover(&mut self, err: WatchError, retry: Phase) -> Phase {
        let label = err.metric_label();
        let recovery = recovery(&err);
        self.status_mut(|status| status.last_error = Some(format!("{label}: {}", chain(&err))));
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
                    error!(reason = label, error = %chain(&err), "watch failed and cannot be retried; it stops until restart");
                }
                Phase::Stopped
            }
            (Recovery::ResolveSlowly, _) => {
                let delay = self.options.unserved_retry;
                warn!(reason = label, error = %chain(&err), retry_in = ?delay, "kind cannot be watched in this cluster");
                self.wait(delay, Phase::Resolving)
            }
            (Recovery::Relist(reason), Some(resource)) => {
                // The first re-list comes at once; more in a row back off.
                let failures = self.backoff.failures();
                let delay = self.backoff.next_delay();
                if reason == "expired" {
                    info!(error = %chain(&err), "resourceVersion expired; re-listing");
                } else {
                    metrics()
                        .relists
                        .get_or_create(&self.labels.reason(reason))
                        .inc();
                    warn!(reason = label, error = %chain(&err), retry_in = ?delay, "watch state unusable; re-listing");
                }
                if failures == 0 {
                    Phase::list(resource)
                } else {
                    self.wait(delay, Phase::list(resource))
                }
            }
            (Recovery::Resolve, _) | (Recovery::Relist(_), None) => {
                let delay = self.backoff.next_delay();
                warn!(reason = label, error = %chain(&err), retry_in = ?delay, "kind not found; resolving it again");
                self.wait(delay, Phase::Resolving)
            }
            (Recovery::Retry, _) => {
                let mut delay = self.backoff.next_delay();
                if let WatchError::Status {
                    retry_after: Some(after),
                    ..
                } = &err
                {
                    // Retry-After is honoured, within the backoff's cap.
                    delay = delay.max(*after).min(self.options.backoff_max);
                }
                warn!(
                    reason = label,
                    error = %chain(&err),
                    retry_in = ?delay,
                    failures = self.backoff.failures(),
                    "watch request failed; retrying"
                );
                self.wait(delay, retry)
            }
        }
    }

    fn wait(&self, delay: Duration, next: Phase) -> Phase {
        Phase::Waiting {
            until: Instant::now() + delay,
            next: Box::new(next),
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
        let name = match phase {
            Phase::Waiting { .. } => "waiting",
            other => other.name(),
        };
        self.status_mut(|status| {
            status.phase = name;
            if let Phase::Watching {
                resource_version, ..
            } = phase
            {
                status.resource_version = Some(resource_version.clone());
            }
        });
    }

    /// Reads one LIST page, spools its diff and records it in the state.
    async fn list_page(
        &mut self,
        resource: &Resource,
        continue_token: Option<&str>,
        resync: bool,
    ) -> Result<ListStep, WatchError> {
        let first = continue_token.is_none();
        let resync = if first {
            let resync = self.state.listed_once().map_err(WatchError::State)?;
            if self.first_list && resync {
                // A restart: the state of the previous process is diffed.
                metrics()
                    .relists
                    .get_or_create(&self.labels.reason("restart"))
                    .inc();
            }
            self.state.begin_list().map_err(WatchError::State)?;
            self.list_counts = ListCounts::default();
            debug!(generation = self.state.generation(), resync, "listing");
            resync
        } else {
            resync
        };
        let body = api::list_page(
            &self.client,
            resource,
            self.options.page_size,
            continue_token,
            self.options.request_timeout,
        )
        .await?;
        let list: ListBody<'_> =
            serde_json::from_slice(&body).map_err(|e| WatchError::undecodable(Op::List, e))?;
        let items = list
            .items
            .unwrap_or_default()
            .into_iter()
            .map(|raw| object::parse(raw, &resource.api_version, &resource.kind))
            .collect::<Result<Vec<ParsedObject>, _>>()
            .map_err(|e| WatchError::undecodable(Op::List, e))?;
        let seen = self
            .state
            .compare(
                items
                    .iter()
                    .map(|o| (o.uid.as_str(), o.resource_version.as_str())),
            )
            .map_err(WatchError::State)?;

        let mut records = Vec::new();
        let mut counted = Vec::new();
        for (object, seen) in items.iter().zip(&seen) {
            let event_type = match seen {
                Seen::New => EventType::Added,
                Seen::Changed => EventType::Modified,
                Seen::Unchanged => continue,
            };
            // The first LIST ever emits plain ADDED (what the seed does); a
            // MODIFIED can only come from a diff.
            let marked = resync || event_type != EventType::Added;
            records.push(self.event(resource, event_type, object, marked).to_record());
            counted.push(event_type);
        }
        self.append(Op::List, &records, &counted).await?;
        let changes: Vec<Change<'_>> = items
            .iter()
            .map(|o| Change::Upsert {
                uid: &o.uid,
                rv: &o.resource_version,
                tombstone: &o.tombstone,
            })
            .collect();
        self.state
            .commit(&changes, None)
            .map_err(WatchError::State)?;
        self.backoff.reset();

        let counts = &mut self.list_counts;
        counts.pages += 1;
        counts.objects += items.len() as u64;
        counts.added += counted.iter().filter(|t| **t == EventType::Added).count() as u64;
        counts.modified += counted
            .iter()
            .filter(|t| **t == EventType::Modified)
            .count() as u64;

        match list
            .metadata
            .continue_token
            .filter(|token| !token.is_empty())
        {
            Some(continue_token) => Ok(ListStep::Next {
                continue_token,
                resync,
            }),
            None => match list.metadata.resource_version.filter(|rv| !rv.is_empty()) {
                Some(resource_version) => Ok(ListStep::Done { resource_version }),
                None => Err(WatchError::undecodable(
                    Op::List,
                    std::io::Error::other("a LIST without metadata.resourceVersion"),
                )),
            },
        }
    }

    /// Spools DELETED (resync) for up to one page of stale entries and
    /// removes them; returns the last uid handled, `None` when none was left.
    async fn sweep_batch(
        &mut self,
        resource: &Resource,
        after: Option<&str>,
    ) -> Result<Option<String>, WatchError> {
        let batch_size = self.options.page_size.max(1) as usize;
        let stale = self
            .state
            .stale(after, batch_size)
            .map_err(WatchError::State)?;
        if stale.is_empty() {
            return Ok(None);
        }
        let mut records = Vec::with_capacity(stale.len());
        for entry in &stale {
            let tombstone = String::from_utf8(entry.tombstone.clone())
                .ok()
                .and_then(|text| RawValue::from_string(text).ok());
            let parsed = tombstone
                .as_deref()
                .and_then(|raw| object::parse(raw, &resource.api_version, &resource.kind).ok());
            let event = match parsed {
                Some(mut object) => {
                    object.resource_version.clone_from(&entry.resource_version);
                    self.event(resource, EventType::Deleted, &object, true)
                }
                None => {
                    // A damaged entry still says what vanished, by uid.
                    let raw = serde_json::json!({
                        "apiVersion": resource.api_version,
                        "kind": resource.kind,
                        "metadata": {"uid": entry.uid, "resourceVersion": entry.resource_version, "namespace": self.namespace},
                    });
                    let object = ParsedObject {
                        name: entry.uid.clone(),
                        namespace: self.namespace.clone(),
                        uid: entry.uid.clone(),
                        resource_version: entry.resource_version.clone(),
                        raw: RawValue::from_string(raw.to_string())
                            .expect("serialised JSON is valid"),
                        tombstone: Vec::new(),
                    };
                    self.event(resource, EventType::Deleted, &object, true)
                }
            };
            records.push(event.to_record());
        }
        let counted = vec![EventType::Deleted; records.len()];
        self.append(Op::List, &records, &counted).await?;
        let removes: Vec<Change<'_>> = stale
            .iter()
            .map(|e| Change::Remove { uid: &e.uid })
            .collect();
        self.state
            .commit(&removes, None)
            .map_err(WatchError::State)?;
        self.list_counts.deleted += stale.len() as u64;
        Ok((stale.len() == batch_size)
            .then(|| stale.last().map(|e| e.uid.clone()))
            .flatten())
    }

    fn finish_list(&mut self, resource_version: &str) -> Result<(), WatchError> {
        self.state
            .finish_list(resource_version)
            .map_err(WatchError::State)?;
        let counts = self.list_counts;
        info!(
            resource_version,
            objects = counts.objects,
            pages = counts.pages,
            added = counts.added,
            modified = counts.modified,
            deleted = counts.deleted,
            "list complete; watching"
        );
        self.first_list = false;
        self.status_mut(|status| {
            status.synced = true;
            status.last_error = None;
        });
        Ok(())
    }

    /// Handles complete watch lines: spools their events in one batch, then
    /// records them and the version reached. An ERROR event (or a bad line)
    /// ends the batch: what came before it is still spooled.
    async fn watch_lines(
        &mut self,
        resource: &Resource,
        resource_version: &mut String,
        lines: &[u8],
    ) -> Result<(), WatchError> {
        let mut objects: Vec<(EventType, ParsedObject)> = Vec::new();
        let mut reached: Option<String> = None;
        let mut failure = None;
        for line in lines.split(|&b| b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let event: WatchLine<'_> = match serde_json::from_slice(line) {
                Ok(event) => event,
                Err(err) => {
                    failure = Some(WatchError::undecodable(Op::Watch, err));
                    break;
                }
            };
            let event_type = match event.event_type {
                "ADDED" => EventType::Added,
                "MODIFIED" => EventType::Modified,
                "DELETED" => EventType::Deleted,
                "BOOKMARK" => {
                    // A bookmark only moves the version on (its object is
                    // empty but for metadata.resourceVersion).
                    if let Some(rv) = object::bookmark_version(event.object) {
                        trace!(resource_version = %rv, "bookmark");
                        reached = Some(rv);
                    }
                    continue;
                }
                "ERROR" => {
                    let status: kube::core::Status =
                        serde_json::from_str(event.object.get()).unwrap_or_default();
                    failure = Some(WatchError::from_status(Op::Watch, &status, None));
                    break;
                }
                other => {
                    failure = Some(WatchError::undecodable(
                        Op::Watch,
                        std::io::Error::other(format!("unknown watch event type {other:?}")),
                    ));
                    break;
                }
            };
            match object::parse(event.object, &resource.api_version, &resource.kind) {
                Ok(object) => {
                    reached = Some(object.resource_version.clone());
                    objects.push((event_type, object));
                }
                Err(err) => {
                    failure = Some(WatchError::undecodable(Op::Watch, err));
                    break;
                }
            }
        }
        let records: Vec<Vec<u8>> = objects
            .iter()
            .map(|(event_type, object)| {
                self.event(resource, *event_type, object, false).to_record()
            })
            .collect();
        let counted: Vec<EventType> = objects.iter().map(|(t, _)| *t).collect();
        self.append(Op::Watch, &records, &counted).await?;
        if !objects.is_empty() || reached.is_some() {
            let changes: Vec<Change<'_>> = objects
                .iter()
                .map(|(event_type, o)| match event_type {
                    EventType::Deleted => Change::Remove { uid: &o.uid },
                    _ => Change::Upsert {
                        uid: &o.uid,
                        rv: &o.resource_version,
                        tombstone: &o.tombstone,
                    },
                })
                .collect();
            self.state
                .commit(&changes, reached.as_deref())
                .map_err(WatchError::State)?;
        }
        if let Some(rv) = reached {
            *resource_version = rv;
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    fn event(
        &self,
        resource: &Resource,
        event_type: EventType,
        object: &ParsedObject,
        resync: bool,
    ) -> ResourceEvent {
        ResourceEvent {
            cluster: self.cluster.clone(),
            context: self.context.clone(),
            namespace: if object.namespace.is_empty() {
                self.namespace.clone()
            } else {
                object.namespace.clone()
            },
            api_version: resource.api_version.clone(),
            kind: resource.kind.clone(),
            event_type,
            name: object.name.clone(),
            uid: object.uid.clone(),
            resource_version: object.resource_version.clone(),
            resync,
            object: object.raw.clone(),
        }
    }

    /// Appends records in order, in batches of at most [`APPEND_BATCH_BYTES`]
    /// (waiting while the spool is full), and counts them.
    async fn append(
        &self,
        op: Op,
        records: &[Vec<u8>],
        event_types: &[EventType],
    ) -> Result<(), WatchError> {
        let mut start = 0;
        while start < records.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < records.len()
                && (end == start || bytes + records[end].len() <= APPEND_BATCH_BYTES)
            {
                bytes += records[end].len();
                end += 1;
            }
            match self.sink.append_batch_async(&records[start..end]).await {
                Ok(_) => {}
                Err(SpoolError::TooLarge { .. }) if end - start > 1 => {
                    // A spool smaller than the batch: one record at a time.
                    for (record, event_type) in
                        records[start..end].iter().zip(&event_types[start..end])
                    {
                        Box::pin(self.append(
                            op,
                            std::slice::from_ref(record),
                            std::slice::from_ref(event_type),
                        ))
                        .await?;
                    }
                    start = end;
                    continue;
                }
                Err(SpoolError::TooLarge {
                    size, max_record, ..
                }) => {
                    // One record larger than the spool can ever hold: said
                    // and counted (SPEC §7), and the watch goes on.
                    metrics()
                        .watch_errors
                        .get_or_create(&self.labels.reason("too-large"))
                        .inc();
                    error!(
                        size,
                        max_record,
                        "a resource event is larger than the spool can hold; it is dropped"
                    );
                    start = end;
                    continue;
                }
                Err(source) => return Err(WatchError::Spool { op, source }),
            }
            for event_type in &event_types[start..end] {
                metrics()
                    .events_observed
                    .get_or_create(&self.labels.event(event_type.as_str()))
                    .inc();
            }
            start = end;
        }
        Ok(())
    }
}

/// The largest batch appended at once: keeps one LIST page of big objects
/// from needing more free spool space than a small spool ever has.
const APPEND_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// What a LIST page leads to.
enum ListStep {
    Next {
        continue_token: String,
        resync: bool,
    },
    Done {
        resource_version: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(op: Op, code: u16) -> WatchError {
        WatchError::Status {
            op,
            code,
            reason: String::new(),
            message: String::new(),
            retry_after: None,
        }
    }

    #[test]
    fn recovery_follows_the_reflector_rules() {
        let expired = WatchError::Expired {
            op: Op::Watch,
            message: String::new(),
        };
        assert_eq!(recovery(&expired), Recovery::Relist("expired"));
        assert_eq!(recovery(&status(Op::Watch, 500)), Recovery::Retry);
        assert_eq!(recovery(&status(Op::Watch, 429)), Recovery::Retry);
        assert_eq!(recovery(&status(Op::Watch, 403)), Recovery::Retry);
        assert_eq!(recovery(&status(Op::List, 401)), Recovery::Retry);
        assert_eq!(recovery(&status(Op::Watch, 400)), Recovery::Relist("error"));
        assert_eq!(recovery(&status(Op::List, 400)), Recovery::Retry);
        assert_eq!(recovery(&status(Op::List, 404)), Recovery::Resolve);
        let unserved = WatchError::NotServed {
            api_version: "example.com/v1".into(),
            kind: "Widget".into(),
        };
        assert_eq!(recovery(&unserved), Recovery::ResolveSlowly);
        let bad = WatchError::undecodable(Op::Watch, std::io::Error::other("x"));
        assert_eq!(recovery(&bad), Recovery::Relist("error"));
        let closed = WatchError::Spool {
            op: Op::List,
            source: crate::spool::SpoolError::Closed,
        };
        assert_eq!(recovery(&closed), Recovery::Stop);
    }
}

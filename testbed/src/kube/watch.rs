//! WATCH: `GET .../PLURAL?watch=1`.
//!
//! Rules reproduced (Kubernetes "API Concepts": "Efficient detection of
//! changes", "Watch bookmarks"; apiserver `storage/cacher/cacher.go`,
//! `cache_watcher.go`, `endpoints/handlers/watch.go`, `get.go`):
//!
//! - the answer is HTTP 200 with newline-delimited JSON
//!   `{"type":"ADDED|MODIFIED|DELETED","object":{…}}` over chunked encoding;
//!   objects carry `apiVersion`/`kind`;
//! - from `resourceVersion=N`: every change after N, in order, of this kind
//!   in this namespace (or all namespaces), and nothing else;
//! - `resourceVersion` unset or `0`: first a synthetic ADDED for every
//!   current object, then changes after the current version;
//! - N older than the compaction point: still HTTP 200 (authn, authz and RV
//!   parsing passed), then exactly one `ERROR` event with a 410 `Expired`
//!   Status `too old resource version: N (C)`, and the stream ends
//!   (cacher.Watch returns `newErrWatcher` for this);
//! - with selectors an object that stops matching arrives as DELETED (its
//!   previous state at the new version) and one that starts matching as ADDED
//!   (`cacheWatcher.convertToWatchEvent`);
//! - `allowWatchBookmarks=true`: a `BOOKMARK` whose object is an empty object
//!   of the kind with only `metadata.resourceVersion`, sent every bookmark
//!   interval (real: about every minute) and once 2 s before the watch's
//!   deadline (`cacheWatcher.nextBookmarkTime`). Its version is the last
//!   version the watch cache of this resource type has processed (any
//!   namespace), and it is only sent when that version is newer than the
//!   version the watch started from: a watch of a type nobody changed since
//!   gets no bookmark (`cacheWatcher.process` drops events with
//!   `ResourceVersion <= resourceVersion`). Real etcd progress notifications
//!   also advance that version every few minutes on a quiet type; this server
//!   does not model them;
//! - a version newer than the current one simply waits for it (etcd's
//!   semantics; the real watch cache answers 504 "Too large resource
//!   version" after 3 s instead — not modelled);
//! - `timeoutSeconds=N`: the stream ends cleanly (terminating chunk, no ERROR
//!   event) after N seconds; without it the server picks its default (real:
//!   a random value between `--min-request-timeout` (1800 s) and twice that).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::flood::{self, FloodStream};
use super::kinds::{KindSpec, TypeKey};
use super::routes::{Query, Reply, stream_channel};
use super::selector::{FieldSelector, LabelSelector};
use super::server::{Shared, lock};
use super::status::ApiError;
use super::store::{Event, EventType, Stored};

/// Lead of the pre-timeout bookmark before the deadline (cache_watcher.go: 2 s).
pub const BOOKMARK_BEFORE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a watch selects.
struct Filter {
    key: TypeKey,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, obj: &Stored) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| ns == obj.key.namespace)
            && self.labels.matches(&obj.labels)
            && self.fields.matches(&obj.fields)
    }

    /// The event this watcher sees for a change, if any.
    fn convert(&self, event: &Event) -> Option<(EventType, Arc<Stored>)> {
        if event.type_key != self.key {
            return None;
        }
        let now = self.matches(&event.object);
        let before = event.prev.as_ref().is_some_and(|p| self.matches(p));
        match (event.kind, before, now) {
            (EventType::Added, _, true) => Some((EventType::Added, event.object.clone())),
            (EventType::Modified, true, true) => Some((EventType::Modified, event.object.clone())),
            (EventType::Modified, false, true) => Some((EventType::Added, event.object.clone())),
            (EventType::Modified, true, false) => {
                let prev = event.prev.as_ref()?;
                Some((EventType::Deleted, Arc::new(prev.with_rv(event.rv))))
            }
            // cacheWatcher.convertToWatchEvent: a deletion is seen by the
            // watchers its previous state matched.
            (EventType::Deleted, true, _) => Some((EventType::Deleted, event.object.clone())),
            _ => None,
        }
    }
}

/// Where the watch starts.
enum Start {
    /// `resourceVersion` unset or `0`: synthetic ADDED for the current state first.
    Current,
    /// After this version.
    After(u64),
}

/// Serves a WATCH of `spec` in `namespace` (or across all namespaces).
pub(crate) fn watch(
    shared: &Arc<Shared>,
    spec: &KindSpec,
    namespace: Option<String>,
    q: &Query,
) -> Result<Reply, ApiError> {
    let filter = Filter {
        key: spec.type_key(),
        namespace,
        labels: LabelSelector::parse(q.get("labelSelector").unwrap_or(""))?,
        fields: FieldSelector::parse(q.get("fieldSelector").unwrap_or(""), &spec.kind)?,
    };
    let start = match q.get("resourceVersion") {
        None | Some("") | Some("0") => Start::Current,
        Some(rv) => Start::After(rv.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "resourceVersion: Invalid value: \"{rv}\": must be an unsigned integer"
            ))
        })?),
    };
    if let Some(code) = shared.faults.take_watch_failure(&spec.kind) {
        if code != 410 {
            return Err(ApiError::with_code(code));
        }
        let requested = match start {
            Start::After(rv) => rv,
            Start::Current => 0,
        };
        let compacted = lock(&shared.store).compacted().max(requested + 1);
        let status = ApiError::too_old(requested, compacted).to_status();
        let (tx, rx) = stream_channel();
        tokio::spawn(async move {
            let _ = tx
                .send(Bytes::from(event_line("ERROR", &status.to_string())))
                .await;
        });
        return Ok(Reply::Stream {
            content_type: "application/json",
            rx,
        });
    }
    let timeout = match q.int("timeoutSeconds")? {
        Some(n) if n > 0 => Duration::from_secs(n as u64),
        _ => shared.options.default_watch_timeout,
    };
    let bookmarks = q.flag("allowWatchBookmarks")?;
    let (tx, rx) = stream_channel();
    let shared = shared.clone();
    tokio::spawn(async move {
        run(&shared, filter, start, timeout, bookmarks, &tx).await;
    });
    Ok(Reply::Stream {
        content_type: "application/json",
        rx,
    })
}

fn event_line(kind: &str, object: &str) -> String {
    format!("{{\"type\":\"{kind}\",\"object\":{object}}}\n")
}

fn bookmark_line(key: &TypeKey, rv: u64) -> String {
    let object = json!({
        "kind": key.kind,
        "apiVersion": key.api_version,
        "metadata": {"resourceVersion": rv.to_string(), "creationTimestamp": Value::Null},
    });
    event_line("BOOKMARK", &object.to_string())
}

/// The next bookmark time after `now` (cacheWatcher.nextBookmarkTime): one
/// interval away, or the pre-timeout point if that is earlier; none once the
/// pre-timeout point has passed.
fn next_bookmark(
    now: Instant,
    interval: Duration,
    deadline: Instant,
    lead: Duration,
) -> Option<Instant> {
    let heartbeat = now + interval;
    let pre_timeout = deadline.checked_sub(lead).unwrap_or(now);
    let at = heartbeat.min(pre_timeout);
    (at >= now).then_some(at)
}

async fn run(
    shared: &Shared,
    filter: Filter,
    start: Start,
    timeout: Duration,
    bookmarks: bool,
    tx: &mpsc::Sender<Bytes>,
) {
    let deadline = Instant::now() + timeout;
    let mut changes = shared.changes.subscribe();
    changes.borrow_and_update();
    // Decided under the store lock, sent after it is released.
    let begin: Result<(String, u64), Value> = {
        let store = lock(&shared.store);
        match start {
            Start::Current => {
                let accept = |obj: &Stored| filter.matches(obj);
                let page = store.page(
                    &filter.key,
                    store.rv(),
                    filter.namespace.as_deref(),
                    None,
                    &accept,
                    None,
                );
                let lines: String = page
                    .map(|p| p.items)
                    .unwrap_or_default()
                    .iter()
                    .map(|obj| event_line("ADDED", &obj.json_with_type(&filter.key)))
                    .collect();
                Ok((lines, store.rv()))
            }
            Start::After(rv) if rv < store.compacted() => {
                Err(ApiError::too_old(rv, store.compacted()).to_status())
            }
            Start::After(rv) => Ok((String::new(), rv)),
        }
    };
    let (initial, mut cursor) = match begin {
        Ok(begin) => begin,
        Err(status) => {
            let _ = tx
                .send(Bytes::from(event_line("ERROR", &status.to_string())))
                .await;
            return;
        }
    };
    let started_at = cursor;
    if !initial.is_empty() && tx.send(Bytes::from(initial)).await.is_err() {
        return;
    }
    let (interval, lead) = (
        shared.options.bookmark_interval,
        shared.options.bookmark_before_timeout,
    );
    let mut bookmark_at = if bookmarks {
        next_bookmark(Instant::now(), interval, deadline, lead)
    } else {
        None
    };
    let mut flood = filter.namespace.as_ref().and_then(|ns| {
        let flood = lock(&shared.floods)
            .get(&(filter.key.clone(), ns.clone()))
            .cloned()?;
        Some(FloodStream::new(
            flood,
            &filter.key.api_version,
            &filter.key.kind,
            ns,
        ))
    });
    let mut flood_tick = tokio::time::interval(flood::TICK);
    loop {
        changes.borrow_and_update();
        let batch: Result<(String, u64), Value> = {
            let store = lock(&shared.store);
            match store.events_after(cursor) {
                Ok(events) => {
                    let lines = events
                        .filter_map(|e| filter.convert(e))
                        .map(|(kind, obj)| {
                            event_line(kind.as_str(), &obj.json_with_type(&filter.key))
                        })
                        .collect();
                    cursor = cursor.max(store.rv());
                    Ok((lines, store.last_rv_of(&filter.key).unwrap_or(0)))
                }
                // The watcher fell behind the retained history.
                Err(compacted) => Err(ApiError::too_old(cursor, compacted).to_status()),
            }
        };
        let (lines, type_rv) = match batch {
            Ok(batch) => batch,
            Err(status) => {
                let _ = tx
                    .send(Bytes::from(event_line("ERROR", &status.to_string())))
                    .await;
                return;
            }
        };
        if !lines.is_empty() && tx.send(Bytes::from(lines)).await.is_err() {
            return;
        }
        tokio::select! {
            biased;
            _ = tx.closed() => return,
            _ = tokio::time::sleep_until(deadline) => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = flood_tick.tick(), if flood.is_some() => {
                let stream = flood.as_mut().expect("checked by the guard");
                let due = stream.due(Instant::now());
                if due > 0 {
                    // The history's cursor stays: generated events are not
                    // in it (see the module docs of `flood`).
                    let first = lock(&shared.store).take_versions(due);
                    if tx.send(Bytes::from(stream.lines(first, due))).await.is_err() {
                        return;
                    }
                }
            }
            _ = sleep_until_opt(bookmark_at) => {
                // Only a version newer than the watch's start is worth a bookmark.
                if type_rv > started_at && tx.send(Bytes::from(bookmark_line(&filter.key, type_rv))).await.is_err() {
                    return;
                }
                bookmark_at = next_bookmark(Instant::now(), interval, deadline, lead);
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookmark_schedule_follows_the_cacher() {
        let now = Instant::now();
        let minute = Duration::from_secs(60);
        // Long watch: every interval.
        assert_eq!(
            next_bookmark(now, minute, now + 10 * minute, BOOKMARK_BEFORE_TIMEOUT),
            Some(now + minute)
        );
        // Short watch: 2 s before the deadline.
        let deadline = now + Duration::from_secs(30);
        assert_eq!(
            next_bookmark(now, minute, deadline, BOOKMARK_BEFORE_TIMEOUT),
            Some(deadline - Duration::from_secs(2))
        );
        // Past the pre-timeout point: no more bookmarks.
        assert_eq!(
            next_bookmark(
                now,
                minute,
                now + Duration::from_secs(1),
                BOOKMARK_BEFORE_TIMEOUT
            ),
            None
        );
    }
}

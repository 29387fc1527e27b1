//! The handler of a configured kind (SPEC §3): every change goes to the
//! events spool as a [`ResourceEvent`], and the on-disk state
//! ([`super::state`]) makes re-lists and restarts diffs instead of floods.
//!
//! - A LIST page: items compared with the state; new uids are ADDED,
//!   changed resourceVersions MODIFIED (marked `resync` when the state had
//!   completed a LIST before: a restart or a re-list after a gap), unchanged
//!   ones nothing. The first LIST ever emits plain ADDED (what the seed does).
//! - The sweep: stored uids the LIST did not show vanished during the gap;
//!   each becomes a DELETED (`resync`) whose body is the last known copy.
//! - Watch events are spooled as they come, byte for byte.
//!
//! **Deletions across a gap**: a watch that falls behind sees no DELETED for
//! what went away meanwhile; the sweep synthesises them. The intermediate
//! states of an object changed several times in a gap are lost (one
//! MODIFIED for the latest), as with any re-list.
//!
//! **Selecting** (the kind's `resources:` entry): the label and field
//! selectors filter on the server, LIST and WATCH alike, so an object that
//! leaves them is a DELETED on the watch, or — when it left during a gap —
//! missing from the re-list and swept as a DELETED `resync`. An event whose
//! type is not in `event_types`, and a MODIFIED whose fingerprint
//! ([`crate::redact::fingerprint`]) equals the last published one
//! (`ignore_changes_in`), is not spooled but counted in
//! `events_suppressed`; the state records it all the same, so the diff stays
//! exact (a re-list compares with what the object became, not with what was
//! last published).
//!
//! Durability order: a change is appended to the spool first and recorded
//! in the state after, so a crash can only re-emit a change, never lose one.

use serde_json::value::RawValue;
use tracing::{debug, error, info};

use crate::config::{EventTypes, SnsConfig};
use crate::kube_api::{Op, Resource};
use crate::metrics::{WatchLabels, metrics};
use crate::record::{EventType, ResourceEvent};
use crate::spool::SpoolWriter;

use super::engine::{Handler, Skipped, WatchEvent};
use super::error::WatchError;
use super::object::{self, ObjectRules, ParsedObject};
use super::state::{Change, KindState, Seen};

/// The watch of one configured kind in one (context, namespace).
pub(crate) struct KindHandler {
    pub context: String,
    pub namespace: String,
    /// The API server URL: the `cluster` of every record.
    pub cluster: String,
    pub sink: SpoolWriter,
    pub state: KindState,
    pub labels: WatchLabels,
    /// Stale entries swept (DELETED) per step.
    pub sweep_batch: usize,
    /// Counts of the LIST in progress, for its summary log line.
    pub list_counts: ListCounts,
    /// The LIST in progress is a diff (events marked `resync`): the state
    /// had completed a LIST before. Decided when it begins.
    pub resync: bool,
    /// No LIST completed yet in this process.
    pub first_list: bool,
    /// Objects that could not be read: counted, logged once, skipped.
    skipped: Skipped,
    /// The event types published.
    event_types: EventTypes,
    /// Redaction and the `ignore_changes_in` fingerprint.
    rules: ObjectRules,
    /// `sns.routes`: which topics each event goes to (`None`: one record,
    /// for the default topic or stdout).
    routes: Option<std::sync::Arc<SnsConfig>>,
}

/// Why a change is not published (the `reason` of `events_suppressed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Suppressed {
    /// Not one of the kind's `event_types`.
    EventType,
    /// A MODIFIED changing only `ignore_changes_in` paths.
    IgnoredChanges,
}

impl Suppressed {
    fn label(self) -> &'static str {
        match self {
            Suppressed::EventType => "event_type",
            Suppressed::IgnoredChanges => "ignored_changes",
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ListCounts {
    objects: u64,
    added: u64,
    modified: u64,
    deleted: u64,
    pages: u64,
}

impl KindHandler {
    pub fn new(
        context: String,
        namespace: String,
        cluster: String,
        sink: SpoolWriter,
        state: KindState,
        labels: WatchLabels,
        sweep_batch: usize,
    ) -> KindHandler {
        KindHandler {
            event_types: EventTypes::ALL,
            rules: ObjectRules::default(),
            routes: None,
            labels: labels.clone(),
            context,
            namespace,
            cluster,
            sink,
            state,
            sweep_batch: sweep_batch.max(1),
            list_counts: ListCounts::default(),
            resync: false,
            first_list: true,
            skipped: Skipped::new(labels),
        }
    }
}

impl KindHandler {
    /// Applies a `resources:` entry's `event_types` and object rules
    /// (redaction, `ignore_changes_in`); without, everything is published
    /// as the server sent it.
    pub fn with_rules(mut self, event_types: EventTypes, rules: ObjectRules) -> KindHandler {
        self.event_types = event_types;
        self.rules = rules;
        self
    }

    /// Spools one record per topic of `sns.routes` an event goes to.
    pub fn with_routes(mut self, routes: Option<std::sync::Arc<SnsConfig>>) -> KindHandler {
        self.routes = routes;
        self
    }
}

impl Handler for KindHandler {
    fn begin_list(&mut self) -> Result<(), WatchError> {
        // Every storage failure leads here (a re-list, after the backoff).
        if self.state.reopen_if_broken().map_err(WatchError::State)? {
            metrics().state_reopens.get_or_create(&self.labels).inc();
            tracing::warn!(location = %self.state.location(), "watch state reopened after a storage error");
        }
        let resync = self.state.listed_once().map_err(WatchError::State)?;
        if self.first_list && resync {
            // A restart: the state of the previous process is diffed.
            metrics()
                .relists
                .get_or_create(&self.labels.reason("restart"))
                .inc();
        }
        self.sync_spool_before_durable_write(Op::List)?;
        self.state.begin_list().map_err(WatchError::State)?;
        self.list_counts = ListCounts::default();
        self.resync = resync;
        debug!(generation = self.state.generation(), resync, "listing");
        Ok(())
    }

    /// Spools the page's diff and records it in the state.
    async fn list_page(
        &mut self,
        resource: &Resource,
        items: Vec<&RawValue>,
    ) -> Result<(), WatchError> {
        let mut parsed = Vec::with_capacity(items.len());
        for raw in items {
            match object::parse(raw, &resource.api_version, &resource.kind, &self.rules) {
                Ok(object) => parsed.push(object),
                Err(err) => {
                    self.skipped
                        .skip(Op::List, err.metric_label(), raw.get().as_bytes(), &err);
                }
            }
        }
        let items = parsed;
        let seen = self
            .state
            .compare(
                items
                    .iter()
                    .map(|o| (o.uid.as_str(), o.resource_version.as_str())),
            )
            .map_err(WatchError::State)?;
        let stored = self.stored_fingerprints(
            items
                .iter()
                .zip(&seen)
                .filter(|(_, seen)| **seen == Seen::Changed)
                .map(|(o, _)| o),
        )?;

        let mut records = Vec::new();
        let mut counted = Vec::new();
        for (object, seen) in items.iter().zip(&seen) {
            let event_type = match seen {
                Seen::New => EventType::Added,
                Seen::Changed => EventType::Modified,
                Seen::Unchanged => continue,
            };
            if let Some(reason) = self.suppressed(event_type, object, &stored) {
                self.count_suppressed(reason);
                continue;
            }
            // The first LIST ever emits plain ADDED (what the seed does); a
            // MODIFIED can only come from a diff.
            let marked = self.resync || event_type != EventType::Added;
            let event = self.event(resource, event_type, object, marked);
            self.route(event, &mut records, &mut counted);
        }
        self.append(Op::List, &records, &counted).await?;
        let changes: Vec<Change<'_>> = items
            .iter()
            .map(|o| Change::Upsert {
                uid: &o.uid,
                rv: &o.resource_version,
                tombstone: &o.tombstone,
                fingerprint: o.fingerprint.as_ref().map(|f| f.as_slice()),
            })
            .collect();
        self.sync_spool_before_durable_write(Op::List)?;
        self.state
            .commit(&changes, None)
            .map_err(WatchError::State)?;

        let counts = &mut self.list_counts;
        counts.pages += 1;
        counts.objects += items.len() as u64;
        counts.added += counted
            .iter()
            .filter(|t| **t == Some(EventType::Added))
            .count() as u64;
        counts.modified += counted
            .iter()
            .filter(|t| **t == Some(EventType::Modified))
            .count() as u64;
        Ok(())
    }

    /// Spools DELETED (resync) for up to one batch of stale entries and
    /// removes them; returns the last uid handled, `None` when none was left.
    async fn sweep(
        &mut self,
        resource: &Resource,
        after: Option<String>,
    ) -> Result<Option<String>, WatchError> {
        let batch_size = self.sweep_batch;
        let stale = self
            .state
            .stale(after.as_deref(), batch_size)
            .map_err(WatchError::State)?;
        if stale.is_empty() {
            return Ok(None);
        }
        let mut records = Vec::with_capacity(stale.len());
        let mut counted = Vec::with_capacity(stale.len());
        for entry in &stale {
            let tombstone = String::from_utf8(entry.tombstone.clone())
                .ok()
                .and_then(|text| RawValue::from_string(text).ok());
            // The stored copy was redacted when it was stored: read as it is.
            let parsed = tombstone.as_deref().and_then(|raw| {
                object::parse(
                    raw,
                    &resource.api_version,
                    &resource.kind,
                    &ObjectRules::default(),
                )
                .ok()
            });
            let event = match parsed {
                Some(mut object) => {
                    object.resource_version.clone_from(&entry.resource_version);
                    object.redacted = self.rules.redaction.is_some();
                    self.event(resource, EventType::Deleted, &object, true)
                }
                None => {
                    // A damaged entry still says what vanished, by uid.
                    let raw = serde_json::json!({
                        "apiVersion": resource.api_version,
                        "kind": resource.kind,
                        "metadata": {"uid": entry.uid, "resourceVersion": entry.resource_version, "namespace": self.namespace},
                    });
                    let Ok(raw) = serde_json::value::to_raw_value(&raw) else {
                        continue;
                    };
                    let object = ParsedObject {
                        name: entry.uid.clone(),
                        namespace: self.namespace.clone(),
                        uid: entry.uid.clone(),
                        resource_version: entry.resource_version.clone(),
                        raw,
                        tombstone: Vec::new(),
                        redacted: false,
                        fingerprint: None,
                    };
                    self.event(resource, EventType::Deleted, &object, true)
                }
            };
            if !self.event_types.deleted {
                self.count_suppressed(Suppressed::EventType);
                continue;
            }
            self.route(event, &mut records, &mut counted);
        }
        self.append(Op::List, &records, &counted).await?;
        let removes: Vec<Change<'_>> = stale
            .iter()
            .map(|e| Change::Remove { uid: &e.uid })
            .collect();
        self.sync_spool_before_durable_write(Op::List)?;
        self.state
            .commit(&removes, None)
            .map_err(WatchError::State)?;
        self.list_counts.deleted += stale.len() as u64;
        Ok((stale.len() == batch_size)
            .then(|| stale.last().map(|e| e.uid.clone()))
            .flatten())
    }

    fn list_done(&mut self, resource_version: &str) -> Result<(), WatchError> {
        self.state.request_durable();
        self.sync_spool_before_durable_write(Op::List)?;
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
        Ok(())
    }

    /// Spools the events in one batch, then records them and the version
    /// reached in the state.
    async fn events(
        &mut self,
        resource: &Resource,
        events: Vec<WatchEvent<'_>>,
        trailing_bookmark: Option<&str>,
    ) -> Result<Option<String>, WatchError> {
        let mut objects: Vec<(EventType, ParsedObject)> = Vec::with_capacity(events.len());
        for event in events {
            match object::parse(
                event.object,
                &resource.api_version,
                &resource.kind,
                &self.rules,
            ) {
                Ok(object) => objects.push((event.event_type, object)),
                Err(err) => {
                    let raw = event.object.get().as_bytes();
                    self.skipped.skip(Op::Watch, err.metric_label(), raw, &err);
                }
            }
        }
        let mut fingerprints = self.stored_fingerprints(
            objects
                .iter()
                .filter(|(t, _)| *t == EventType::Modified)
                .map(|(_, o)| o),
        )?;
        let mut records = Vec::with_capacity(objects.len());
        let mut counted = Vec::with_capacity(objects.len());
        for (event_type, object) in &objects {
            let suppressed = self.suppressed(*event_type, object, &fingerprints);
            // Later events of the same object in this batch compare with
            // this one's state, not with the stored one: a change reverted
            // within a batch is a change again.
            if let Some(fingerprint) = &object.fingerprint {
                fingerprints.insert(object.uid.clone(), fingerprint.to_vec());
            }
            if let Some(reason) = suppressed {
                self.count_suppressed(reason);
                continue;
            }
            let event = self.event(resource, *event_type, object, false);
            self.route(event, &mut records, &mut counted);
        }
        self.append(Op::Watch, &records, &counted).await?;
        // A skipped event carries no version we can trust: the batch
        // reaches the last good event's, or a later bookmark's.
        let reached = match trailing_bookmark {
            Some(bookmark) => Some(bookmark.to_owned()),
            None => objects.last().map(|(_, o)| o.resource_version.clone()),
        };
        if !objects.is_empty() || reached.is_some() {
            let changes: Vec<Change<'_>> = objects
                .iter()
                .map(|(event_type, o)| match event_type {
                    EventType::Deleted => Change::Remove { uid: &o.uid },
                    _ => Change::Upsert {
                        uid: &o.uid,
                        rv: &o.resource_version,
                        tombstone: &o.tombstone,
                        fingerprint: o.fingerprint.as_ref().map(|f| f.as_slice()),
                    },
                })
                .collect();
            self.sync_spool_before_durable_write(Op::Watch)?;
            self.state
                .commit(&changes, reached.as_deref())
                .map_err(WatchError::State)?;
        }
        Ok(reached)
    }

    /// After a restart: the version the previous process reached, when it
    /// had completed a LIST (otherwise its state is partial: LIST + diff).
    fn resume_from(&mut self) -> Option<String> {
        match (self.state.listed_once(), self.state.resource_version()) {
            (Ok(true), Ok(Some(resource_version))) => Some(resource_version),
            (Err(err), _) | (_, Err(err)) => {
                tracing::warn!(error = %crate::kube_api::error_chain(&err), "cannot read the persisted watch state; listing");
                None
            }
            _ => None,
        }
    }

    fn flush_due(&self) -> Option<std::time::Instant> {
        self.state.flush_due()
    }

    fn flush(&mut self) -> Result<(), WatchError> {
        self.state.request_durable();
        self.sync_spool_before_durable_write(Op::Watch)?;
        self.state.flush().map_err(WatchError::State)
    }

    fn stop(&mut self) {
        self.state.request_durable();
        if let Err(err) = self.sync_spool_before_durable_write(Op::Watch) {
            tracing::warn!(error = %crate::kube_api::error_chain(&err), "cannot make the spool durable at shutdown");
            return;
        }
        if let Err(err) = self.state.flush() {
            tracing::warn!(error = %crate::kube_api::error_chain(&err), "cannot make the watch state durable at shutdown");
        }
    }
}

impl KindHandler {
    /// The durability order of [`super::state`]: before the state's next
    /// write is a durable commit, the spool records it describes are made
    /// durable (one fsync shared with every watcher asking at once).
    fn sync_spool_before_durable_write(&self, op: Op) -> Result<(), WatchError> {
        if self.state.next_write_durable() {
            self.sink
                .sync_appends()
                .map_err(|source| WatchError::Spool { op, source })?;
        }
        Ok(())
    }

    /// The stored fingerprints of `objects`, by uid (none read when the
    /// kind keeps none).
    fn stored_fingerprints<'a>(
        &self,
        objects: impl Iterator<Item = &'a ParsedObject>,
    ) -> Result<std::collections::HashMap<String, Vec<u8>>, WatchError> {
        if self.rules.ignore_changes_in.is_empty() {
            return Ok(Default::default());
        }
        let uids: Vec<&str> = objects.map(|o| o.uid.as_str()).collect();
        let stored = self
            .state
            .fingerprints(uids.iter().copied())
            .map_err(WatchError::State)?;
        Ok(uids
            .into_iter()
            .zip(stored)
            .filter_map(|(uid, f)| f.map(|f| (uid.to_owned(), f)))
            .collect())
    }

    /// Whether a change of `event_type` to `object` stays unpublished.
    fn suppressed(
        &self,
        event_type: EventType,
        object: &ParsedObject,
        last_published: &std::collections::HashMap<String, Vec<u8>>,
    ) -> Option<Suppressed> {
        if !self.event_types.allows(event_type.as_str()) {
            return Some(Suppressed::EventType);
        }
        let unchanged = event_type == EventType::Modified
            && object.fingerprint.as_ref().is_some_and(|fingerprint| {
                last_published
                    .get(&object.uid)
                    .is_some_and(|last| last.as_slice() == fingerprint.as_slice())
            });
        unchanged.then_some(Suppressed::IgnoredChanges)
    }

    fn count_suppressed(&self, reason: Suppressed) {
        metrics()
            .events_suppressed
            .get_or_create(&self.labels.reason(reason.label()))
            .inc();
    }

    /// The records of `event`: one per SNS topic it goes to (`sns.routes`),
    /// each naming its route topic, so each copy is published, acknowledged
    /// and dead-lettered for its own topic. `counted` gets the event type
    /// for the first copy only: an event is observed once, whatever the
    /// number of topics.
    fn route(
        &self,
        mut event: ResourceEvent,
        records: &mut Vec<Vec<u8>>,
        counted: &mut Vec<Option<EventType>>,
    ) {
        let event_type = event.event_type;
        let Some(sns) = self.routes.as_deref().filter(|sns| !sns.routes.is_empty()) else {
            records.push(event.to_record());
            counted.push(Some(event_type));
            return;
        };
        let topics = sns.topics_for(
            &event.context,
            &event.namespace,
            &event.kind,
            event_type.as_str(),
        );
        for (i, topic) in topics.into_iter().enumerate() {
            event.topic_arn = (*topic != sns.topic_arn).then(|| topic.as_str().to_owned());
            records.push(event.to_record());
            counted.push((i == 0).then_some(event_type));
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
            redacted: object.redacted,
            topic_arn: None,
            observed_at_us: Some(crate::record::unix_micros_now()),
            object: object.raw.clone(),
        }
    }

    /// Appends records in order (the spool batches them and waits while
    /// it is full), and counts them. A record larger than the spool can
    /// ever hold is said and counted (SPEC §7), and the watch goes on.
    async fn append(
        &self,
        op: Op,
        records: &[Vec<u8>],
        event_types: &[Option<EventType>],
    ) -> Result<(), WatchError> {
        if records.is_empty() {
            return Ok(());
        }
        let appended = self
            .sink
            .append_all_async(records)
            .await
            .map_err(|source| WatchError::Spool { op, source })?;
        let mut refused = appended.refused.iter().map(|r| r.index).peekable();
        for (index, event_type) in event_types.iter().enumerate() {
            if refused.next_if_eq(&index).is_some() {
                continue;
            }
            let Some(event_type) = event_type else {
                continue;
            };
            metrics()
                .events_observed
                .get_or_create(&self.labels.event(event_type.as_str()))
                .inc();
        }
        for refused in &appended.refused {
            metrics()
                .watch_errors
                .get_or_create(&self.labels.reason("too-large"))
                .inc();
            error!(
                size = refused.size,
                max_record = refused.max_record,
                "a resource event is larger than the spool can hold; it is dropped"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::spool::Spool;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    fn handler(spool: &Spool, context: &str) -> KindHandler {
        KindHandler::new(
            context.into(),
            "ns".into(),
            "https://api:6443".into(),
            spool.writer(),
            KindState::in_memory(Duration::from_secs(1)).unwrap(),
            WatchLabels {
                context: context.into(),
                namespace: "ns".into(),
                kind: "ConfigMap".into(),
            },
            10,
        )
    }

    fn resource() -> Resource {
        Resource {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            path: "/api/v1/namespaces/ns/configmaps".into(),
        }
    }

    fn skipped(context: &str, reason: &str) -> u64 {
        let prefix = format!(
            "kubeherald_objects_skipped_total{{context=\"{context}\",namespace=\"ns\",kind=\"ConfigMap\",reason=\"{reason}\"}} "
        );
        crate::metrics::metrics()
            .encode()
            .lines()
            .find_map(|line| {
                line.strip_prefix(&prefix)
                    .map(|n| n.trim().parse().unwrap())
            })
            .unwrap_or(0)
    }

    fn spooled(spool: &Spool) -> Vec<ResourceEvent> {
        let mut reader = spool.reader().unwrap();
        let batch = reader.next_batch(100, Duration::from_millis(10)).unwrap();
        batch
            .into_iter()
            .map(|delivery| {
                let event = ResourceEvent::from_record(delivery.payload()).unwrap();
                delivery.ack();
                event
            })
            .collect()
    }

    #[tokio::test]
    async fn a_bad_list_item_is_skipped_and_counted_and_the_page_goes_on() {
        let spool = Spool::in_memory(1024 * 1024);
        let mut handler = handler(&spool, "poison-list");
        handler.begin_list().unwrap();
        let good = raw(r#"{"metadata":{"name":"a","uid":"u1","resourceVersion":"5"}}"#);
        let no_uid = raw(r#"{"metadata":{"name":"b","resourceVersion":"6"}}"#);
        let array = raw(r#"[1,2]"#);
        handler
            .list_page(&resource(), vec![&no_uid, &good, &array])
            .await
            .expect("a bad item does not fail the page");
        let events = spooled(&spool);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].name, "a");
        assert_eq!(skipped("poison-list", "no-uid"), 1);
        assert_eq!(skipped("poison-list", "undecodable"), 1);
    }

    #[tokio::test]
    async fn a_bad_watch_event_is_skipped_and_the_version_moves_with_the_good_ones() {
        let spool = Spool::in_memory(1024 * 1024);
        let mut handler = handler(&spool, "poison-watch");
        let good = raw(r#"{"metadata":{"name":"a","uid":"u1","resourceVersion":"8"}}"#);
        let bad = raw(r#"{"metadata":"nope"}"#);
        let events = vec![
            WatchEvent {
                event_type: EventType::Added,
                object: &good,
            },
            WatchEvent {
                event_type: EventType::Modified,
                object: &bad,
            },
        ];
        let reached = handler.events(&resource(), events, None).await.unwrap();
        assert_eq!(reached.as_deref(), Some("8"));
        assert_eq!(spooled(&spool).len(), 1);
        assert_eq!(skipped("poison-watch", "undecodable"), 1);
    }
}

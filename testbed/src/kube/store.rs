//! Objects, the cluster-wide resourceVersion and the bounded event history.
//!
//! This plays etcd behind the apiserver:
//!
//! - one counter for the whole cluster: every write (create, update, delete)
//!   of any object takes the next resourceVersion, so versions are unique and
//!   increase across kinds and namespaces (etcd's revision);
//! - a bounded history of changes: watches resume from it, and consistent
//!   paginated LISTs rebuild older snapshots from it;
//! - a compaction point: history at or below it is gone, so a watch, a
//!   continue token or an exact LIST from an older version gets 410 Expired.
//!   It moves on [`Store::compact`] (etcd's periodic compaction, every 5 min by
//!   default) and whenever the history exceeds its length limit (the watch
//!   cache's bounded capacity).
//!
//! Objects are held as serialized JSON without `apiVersion`/`kind` (the body
//! of a built-in typed list item), so 100,000 objects cost their JSON text
//! and a few small maps, not a `serde_json::Value` tree each.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use serde_json::{Value, json};

use super::kinds::TypeKey;
use super::selector;

/// Where an object lives: namespace (`""` for cluster-scoped) and name.
/// Ordered like etcd keys `/registry/<resource>/<namespace>/<name>`, which is
/// the order LIST returns.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjKey {
    /// Namespace, `""` for cluster-scoped objects.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
}

/// One stored version of an object.
#[derive(Debug)]
pub struct Stored {
    /// `metadata.resourceVersion` of this version.
    pub rv: u64,
    /// `metadata.uid`.
    pub uid: String,
    /// Namespace and name.
    pub key: ObjKey,
    /// `metadata.labels`, for label selectors.
    pub labels: BTreeMap<String, String>,
    /// Values of the fields field selectors may name for this kind.
    pub fields: BTreeMap<String, String>,
    /// The object JSON without `apiVersion` and `kind`.
    body: String,
}

impl Stored {
    /// The JSON of a built-in typed-list item: no `apiVersion`/`kind`.
    pub fn body_without_type(&self) -> &str {
        &self.body
    }

    /// The full object JSON, `apiVersion` and `kind` first, as GET and watch
    /// events carry it.
    pub fn json_with_type(&self, key: &TypeKey) -> String {
        let rest = self.body.strip_prefix('{').unwrap_or("}");
        let sep = if rest.trim_start().starts_with('}') {
            ""
        } else {
            ","
        };
        format!(
            "{{\"apiVersion\":{},\"kind\":{}{sep}{rest}",
            Value::from(key.api_version.as_str()),
            Value::from(key.kind.as_str())
        )
    }

    /// The full object as a value.
    pub fn value(&self, key: &TypeKey) -> Value {
        serde_json::from_str(&self.json_with_type(key)).unwrap_or(Value::Null)
    }

    /// This object re-stamped with another resourceVersion (a DELETED event
    /// carries the deleted object at the deletion's version).
    pub(crate) fn with_rv(&self, rv: u64) -> Stored {
        let mut value: Value = serde_json::from_str(&self.body).unwrap_or_else(|_| json!({}));
        value["metadata"]["resourceVersion"] = json!(rv.to_string());
        Stored {
            rv,
            uid: self.uid.clone(),
            key: self.key.clone(),
            labels: self.labels.clone(),
            fields: self.fields.clone(),
            body: value.to_string(),
        }
    }
}

/// Type of a change, as a watch event names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Object created.
    Added,
    /// Object replaced.
    Modified,
    /// Object deleted.
    Deleted,
}

impl EventType {
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change in the history.
#[derive(Debug, Clone)]
pub struct Event {
    /// Version of the change (for DELETED: the deletion's version).
    pub rv: u64,
    /// Type of the changed object.
    pub type_key: TypeKey,
    /// What happened.
    pub kind: EventType,
    /// The object after the change (for DELETED: the last state at `rv`).
    pub object: Arc<Stored>,
    /// The object before the change, if it existed.
    pub prev: Option<Arc<Stored>>,
}

/// Why an object could not be stored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// The JSON is not an object with `metadata.name` (and namespace where needed).
    #[error("invalid object: {0}")]
    Invalid(String),
}

/// One page of a LIST at a snapshot.
#[derive(Debug, Default)]
pub struct Page {
    /// Matching objects in key order.
    pub items: Vec<Arc<Stored>>,
    /// Key of the last item when more matching objects follow.
    pub next: Option<ObjKey>,
    /// How many matching objects follow this page.
    pub remaining: u64,
}

/// The cluster's objects and history.
#[derive(Debug)]
pub struct Store {
    rv: u64,
    compacted: u64,
    objects: HashMap<TypeKey, BTreeMap<ObjKey, Arc<Stored>>>,
    history: VecDeque<Event>,
    history_limit: usize,
    last_rv_by_type: HashMap<TypeKey, u64>,
    uid_seed: u64,
}

impl Store {
    /// An empty store whose first write gets `initial_rv + 1`; watches from
    /// below `initial_rv` are expired from the start.
    pub fn new(initial_rv: u64, history_limit: usize) -> Self {
        let uid_seed = {
            use std::hash::{BuildHasher, RandomState};
            RandomState::new().hash_one(initial_rv)
        };
        Store {
            rv: initial_rv,
            compacted: initial_rv,
            objects: HashMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            last_rv_by_type: HashMap::new(),
            uid_seed,
        }
    }

    /// The current resourceVersion (of the last write).
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// Takes `n` versions for writes kept outside the store (flood mode):
    /// the first of them.
    pub fn take_versions(&mut self, n: u64) -> u64 {
        let first = self.rv + 1;
        self.rv += n;
        first
    }

    /// The compaction point: versions below it are gone.
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// Version of the last change to any object of this type, anywhere in the
    /// cluster: what the watch cache of that type has processed (the RV its
    /// bookmarks carry).
    pub fn last_rv_of(&self, key: &TypeKey) -> Option<u64> {
        self.last_rv_by_type.get(key).copied()
    }

    /// Compacts everything up to the current version (etcd compaction).
    pub fn compact(&mut self) {
        self.compacted = self.rv;
        self.history.clear();
    }

    /// Number of stored objects of a type.
    pub fn count(&self, key: &TypeKey) -> usize {
        self.objects.get(key).map_or(0, BTreeMap::len)
    }

    /// The current version of an object.
    pub fn get(&self, key: &TypeKey, obj: &ObjKey) -> Option<Arc<Stored>> {
        self.objects.get(key)?.get(obj).cloned()
    }

    /// Creates or replaces an object. On create it gets a `uid` and a
    /// `creationTimestamp`; on replace both are kept, like an update. Every
    /// write gets the next cluster-wide `resourceVersion`.
    pub fn put(
        &mut self,
        key: &TypeKey,
        namespaced: bool,
        mut obj: Value,
    ) -> Result<(Arc<Stored>, EventType), StoreError> {
        let Some(map) = obj.as_object_mut() else {
            return Err(StoreError::Invalid("not a JSON object".into()));
        };
        map.remove("apiVersion");
        map.remove("kind");
        let meta = map.entry("metadata").or_insert_with(|| json!({}));
        let Some(meta) = meta.as_object_mut() else {
            return Err(StoreError::Invalid("metadata is not an object".into()));
        };
        let name = match meta.get("name").and_then(Value::as_str) {
            Some(name) if !name.is_empty() => name.to_string(),
            _ => return Err(StoreError::Invalid("metadata.name is required".into())),
        };
        let namespace = if namespaced {
            match meta.get("namespace").and_then(Value::as_str) {
                Some(ns) if !ns.is_empty() => ns.to_string(),
                _ => {
                    return Err(StoreError::Invalid(format!(
                        "{} {name}: metadata.namespace is required",
                        key.kind
                    )));
                }
            }
        } else {
            meta.remove("namespace");
            String::new()
        };
        let obj_key = ObjKey { namespace, name };
        let prev = self.get(key, &obj_key);
        let rv = self.rv + 1;
        let uid = match &prev {
            Some(prev) => prev.uid.clone(),
            None => self.new_uid(rv),
        };
        let created = prev
            .as_ref()
            .and_then(|p| serde_json::from_str::<Value>(&p.body).ok())
            .and_then(|v| {
                v["metadata"]["creationTimestamp"]
                    .as_str()
                    .map(str::to_string)
            })
            .unwrap_or_else(now_seconds);
        meta.insert("uid".into(), json!(uid));
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.insert("creationTimestamp".into(), json!(created));
        let labels = meta
            .get("labels")
            .and_then(Value::as_object)
            .map(|l| {
                l.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let fields = selector::field_values(&key.kind, &obj);
        let stored = Arc::new(Stored {
            rv,
            uid,
            key: obj_key.clone(),
            labels,
            fields,
            body: obj.to_string(),
        });
        self.objects
            .entry(key.clone())
            .or_default()
            .insert(obj_key, stored.clone());
        let kind = if prev.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(Event {
            rv,
            type_key: key.clone(),
            kind,
            object: stored.clone(),
            prev,
        });
        Ok((stored, kind))
    }

    /// Deletes an object; the DELETED event carries it at the deletion's
    /// version, as the apiserver does (no graceful deletion, no finalizers).
    pub fn remove(&mut self, key: &TypeKey, obj: &ObjKey) -> Option<Arc<Stored>> {
        let prev = self.objects.get_mut(key)?.remove(obj)?;
        let rv = self.rv + 1;
        let gone = Arc::new(prev.with_rv(rv));
        self.record(Event {
            rv,
            type_key: key.clone(),
            kind: EventType::Deleted,
            object: gone.clone(),
            prev: Some(prev),
        });
        Some(gone)
    }

    fn record(&mut self, event: Event) {
        self.rv = event.rv;
        self.last_rv_by_type
            .insert(event.type_key.clone(), event.rv);
        self.history.push_back(event);
        // The watch cache keeps a bounded window of events; older ones are
        // gone, exactly like after an etcd compaction.
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
    }

    /// Every change after `rv`, oldest first; `Err(compacted)` if changes
    /// after `rv` are no longer all known.
    pub fn events_after(&self, rv: u64) -> Result<impl Iterator<Item = &Event>, u64> {
        if rv < self.compacted {
            return Err(self.compacted);
        }
        let start = self.history.partition_point(|e| e.rv <= rv);
        Ok(self.history.range(start..))
    }

    /// One page of the objects of a type as they were at `at_rv`: objects in
    /// `namespace` (or all), after `after` in key order, accepted by `accept`,
    /// at most `limit` of them. `Err(compacted)` if `at_rv` was compacted.
    ///
    /// Real rule: a paginated LIST is served from one etcd revision, so all
    /// pages show the snapshot of the first one (API concepts, "Retrieving
    /// large results sets in chunks"). Here the snapshot is the current state
    /// with the history after `at_rv` undone.
    pub fn page(
        &self,
        key: &TypeKey,
        at_rv: u64,
        namespace: Option<&str>,
        after: Option<&ObjKey>,
        accept: &dyn Fn(&Stored) -> bool,
        limit: Option<usize>,
    ) -> Result<Page, u64> {
        if at_rv < self.compacted {
            return Err(self.compacted);
        }
        // Keys changed after the snapshot, with their state at the snapshot.
        let mut undo: BTreeMap<ObjKey, Option<Arc<Stored>>> = BTreeMap::new();
        for event in self.events_after(at_rv)?.filter(|e| &e.type_key == key) {
            undo.entry(event.object.key.clone())
                .or_insert_with(|| event.prev.clone());
        }
        let lower = match (after, namespace) {
            (Some(after), _) => Bound::Excluded(after.clone()),
            (None, Some(ns)) => Bound::Included(ObjKey {
                namespace: ns.to_string(),
                name: String::new(),
            }),
            (None, None) => Bound::Unbounded,
        };
        let empty = BTreeMap::new();
        let objects = self.objects.get(key).unwrap_or(&empty);
        let mut current = objects.range((lower.clone(), Bound::Unbounded)).peekable();
        let mut changed = undo.range((lower, Bound::Unbounded)).peekable();
        let mut page = Page::default();
        loop {
            // Merge the current objects with the undone changes, in key order;
            // where both have a key, the undone (snapshot) state wins.
            let order = match (current.peek(), changed.peek()) {
                (None, None) => break,
                (Some((ck, _)), Some((uk, _))) => ck.cmp(uk),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
            };
            if order == Ordering::Equal {
                current.next();
            }
            let (obj_key, state) = if order == Ordering::Less {
                let Some((k, v)) = current.next() else { break };
                (k, Some(v))
            } else {
                let Some((k, v)) = changed.next() else { break };
                (k, v.as_ref())
            };
            if namespace.is_some_and(|ns| ns != obj_key.namespace) {
                break;
            }
            let Some(obj) = state.filter(|obj| accept(obj)) else {
                continue;
            };
            if limit.is_some_and(|limit| page.items.len() >= limit) {
                page.remaining += 1;
                if page.next.is_none() {
                    page.next = page.items.last().map(|o| o.key.clone());
                }
            } else {
                page.items.push(obj.clone());
            }
        }
        Ok(page)
    }

    fn new_uid(&self, rv: u64) -> String {
        // splitmix64 over a per-server seed: unique within a server, random-looking.
        let mix = |mut z: u64| {
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
            z ^ (z >> 31)
        };
        let a = mix(self
            .uid_seed
            .wrapping_add(rv.wrapping_mul(0x9e3779b97f4a7c15)));
        let b = mix(a ^ rv);
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            b >> 52,
            b & 0xffff_ffff_ffff
        )
    }
}

/// Now as the apiserver writes `metav1.Time`: RFC 3339 with whole seconds.
pub fn now_seconds() -> String {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> TypeKey {
        TypeKey {
            api_version: "v1".into(),
            kind: "Pod".into(),
        }
    }

    fn pod(ns: &str, name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": ns, "name": name}})
    }

    #[test]
    fn page_rebuilds_the_snapshot_from_history() {
        let mut store = Store::new(100, 1000);
        store.put(&pods(), true, pod("a", "p1")).unwrap();
        store.put(&pods(), true, pod("a", "p2")).unwrap();
        let snapshot = store.rv();
        store.put(&pods(), true, pod("a", "p3")).unwrap();
        store.remove(
            &pods(),
            &ObjKey {
                namespace: "a".into(),
                name: "p1".into(),
            },
        );
        let all = |_: &Stored| true;
        let page = store
            .page(&pods(), snapshot, Some("a"), None, &all, None)
            .unwrap();
        let names: Vec<_> = page.items.iter().map(|o| o.key.name.as_str()).collect();
        assert_eq!(names, ["p1", "p2"]);
        let page = store
            .page(&pods(), store.rv(), Some("a"), None, &all, Some(1))
            .unwrap();
        assert_eq!(page.items[0].key.name, "p2");
        assert_eq!(page.remaining, 1);
        store.compact();
        assert_eq!(
            store
                .page(&pods(), snapshot, Some("a"), None, &all, None)
                .err(),
            Some(store.rv())
        );
    }

    #[test]
    fn history_limit_moves_the_compaction_point() {
        let mut store = Store::new(0, 2);
        for i in 0..5 {
            store
                .put(&pods(), true, pod("a", &format!("p{i}")))
                .unwrap();
        }
        assert_eq!(store.compacted(), 3);
        assert!(store.events_after(2).is_err());
        assert_eq!(store.events_after(3).unwrap().count(), 2);
    }

    #[test]
    fn full_json_puts_type_first() {
        let mut store = Store::new(0, 10);
        let (stored, _) = store.put(&pods(), true, pod("a", "p")).unwrap();
        let v: Value = serde_json::from_str(&stored.json_with_type(&pods())).unwrap();
        assert_eq!(v["kind"], "Pod");
        assert_eq!(v["metadata"]["resourceVersion"], "1");
        assert!(!stored.body_without_type().contains("\"kind\""));
    }
}

//! The pods of one namespace, as the log follower sees them: a handler of
//! the watch engine (`crate::watch::engine`) — the same LIST/WATCH rules
//! as the kind watchers — that keeps an in-memory view of the namespace's
//! pods and runs one follow task ([`super::follow`]) per container of every
//! pod not excluded.
//!
//! The view needs no diff state on disk: after a restart the first LIST
//! shows every pod, and the checkpoints of pods that vanished meanwhile are
//! forgotten then. After a complete LIST, pods it did not show are gone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::kube_api::{Op, Resource};
use crate::record::EventType;
use crate::watch::WatchError;
use crate::watch::engine::{Handler, Skipped, WatchEvent};

use super::follow;
use super::options::Shared;
use super::view::{ContainerView, is_excluded};

/// The `kind` label of the pods watch in the watch metrics: distinct from a
/// configured `Pod` resource watch of the same context.
pub(crate) const METRICS_KIND: &str = "Pod (logs)";

/// The collection the pods watch lists and watches.
pub(crate) fn pods_resource(namespace: &str) -> Resource {
    Resource {
        api_version: "v1".into(),
        kind: "Pod".into(),
        path: format!("/api/v1/namespaces/{namespace}/pods"),
    }
}

/// One followed pod.
struct PodEntry {
    uid: String,
    /// The `logs.routes` entry its lines go to, chosen when the pod is
    /// first seen: a stream never changes destination midway.
    route: Arc<str>,
    containers: HashMap<String, watch::Sender<ContainerView>>,
}

impl PodEntry {
    /// The pod is gone (deleted or replaced); `excluded`: it is left out
    /// on purpose, so its unread lines are no gap.
    fn finish(&self, excluded: bool) {
        for sender in self.containers.values() {
            sender.send_modify(|view| {
                view.gone = true;
                view.excluded = excluded;
            });
        }
    }
}

/// The pod view and the follow tasks it drives.
pub(crate) struct Reconciler {
    shared: Arc<Shared>,
    pods: HashMap<String, PodEntry>,
    tasks: JoinSet<()>,
    /// Cancels every follow task (shutdown).
    stop: CancellationToken,
    /// Pods followed now, for the follower's status.
    followed: Arc<AtomicUsize>,
    /// Names seen by the LIST in progress.
    listed: HashSet<String>,
    /// No LIST completed yet in this process.
    first_list: bool,
    /// Pods that could not be read: counted, logged once, skipped.
    skipped: Skipped,
}

impl Reconciler {
    pub fn new(
        shared: Arc<Shared>,
        followed: Arc<AtomicUsize>,
        labels: crate::metrics::WatchLabels,
    ) -> Reconciler {
        Reconciler {
            skipped: Skipped::new(labels),
            shared,
            pods: HashMap::new(),
            tasks: JoinSet::new(),
            stop: CancellationToken::new(),
            followed,
            listed: HashSet::new(),
            first_list: true,
        }
    }

    /// Stops every follow task and waits for them (shutdown).
    pub async fn stop_follows(&mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }

    /// A pod was listed, added or modified.
    fn apply(&mut self, pod: &Pod) {
        let meta = &pod.metadata;
        let (Some(name), Some(uid)) = (meta.name.clone(), meta.uid.clone()) else {
            return;
        };
        if is_excluded(
            meta.labels.as_ref(),
            meta.annotations.as_ref(),
            &self.shared.logs.exclude_labels,
        ) {
            if let Some(entry) = self.pods.remove(&name) {
                info!(pod = %name, "pod now excluded; its logs are no longer followed");
                entry.finish(true);
            }
            return;
        }
        if self.pods.get(&name).is_some_and(|e| e.uid != uid) {
            // Same name, new pod (a StatefulSet's): the old one is gone.
            self.remove(&name);
        }
        let spec_names: Vec<String> = pod
            .spec
            .iter()
            .flat_map(|spec| {
                spec.init_containers
                    .iter()
                    .flatten()
                    .chain(spec.containers.iter())
                    .map(|c| c.name.clone())
            })
            .collect();
        let status = pod.status.as_ref();
        let statuses: HashMap<&str, &ContainerStatus> = status
            .into_iter()
            .flat_map(|s| {
                s.init_container_statuses
                    .iter()
                    .flatten()
                    .chain(s.container_statuses.iter().flatten())
            })
            .map(|s| (s.name.as_str(), s))
            .collect();
        let shared = &self.shared;
        let entry = self.pods.entry(name.clone()).or_insert_with(|| PodEntry {
            uid: uid.clone(),
            route: Arc::from(shared.logs.route_for(
                &shared.context,
                &shared.namespace,
                meta.labels.as_ref().unwrap_or(&BTreeMap::new()),
            )),
            containers: HashMap::new(),
        });
        for container in spec_names {
            let view = ContainerView::of(statuses.get(container.as_str()).copied());
            match entry.containers.get(&container) {
                Some(sender) => {
                    sender.send_if_modified(|current| {
                        let changed = *current != view;
                        *current = view;
                        changed
                    });
                }
                None => {
                    let (sender, receiver) = watch::channel(view);
                    entry.containers.insert(container.clone(), sender);
                    debug!(pod = %name, container = %container, "container tracked");
                    self.tasks.spawn(follow::run(
                        Arc::clone(&self.shared),
                        follow::PodIdentity {
                            name: name.clone(),
                            uid: uid.clone(),
                            route: Arc::clone(&entry.route),
                        },
                        container,
                        !self.first_list,
                        receiver,
                        self.stop.child_token(),
                    ));
                }
            }
        }
    }

    /// A pod was deleted (or is absent from a LIST): its follows finish and
    /// its checkpoints are forgotten by them.
    fn remove(&mut self, name: &str) {
        if let Some(entry) = self.pods.remove(name) {
            debug!(pod = %name, "pod gone");
            entry.finish(false);
        }
        self.followed.store(self.pods.len(), Ordering::Relaxed);
    }

    /// After a complete LIST: pods not in it are gone.
    fn retain(&mut self, listed: &HashSet<String>) {
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|name| !listed.contains(*name))
            .cloned()
            .collect();
        for name in gone {
            self.remove(&name);
        }
    }

    /// Forgets the checkpoints of this namespace's pods that no longer
    /// exist (deleted while kubeherald was not running).
    fn forget_vanished(&self, listed: &HashSet<String>) {
        let shared = &self.shared;
        let mut forgotten = 0;
        for (key, _) in shared.checkpoints.containers_of(&shared.cluster_name) {
            if key.namespace == shared.namespace && !listed.contains(&key.pod) {
                shared.checkpoints.forget(&key);
                forgotten += 1;
            }
        }
        if forgotten > 0 {
            info!(
                forgotten,
                "forgot the log positions of pods that no longer exist"
            );
        }
    }

    /// Reaps finished follow tasks (a panic is logged, never spread).
    fn reap(&mut self) {
        while let Some(done) = self.tasks.try_join_next() {
            if let Err(err) = done
                && err.is_panic()
            {
                tracing::error!(error = %err, "a container follow task panicked");
            }
        }
    }
}

/// Reads a pod from the API's bytes; one that cannot be read is counted,
/// logged once and skipped.
fn pod(raw: &RawValue, op: Op, skipped: &mut Skipped) -> Option<Pod> {
    match serde_json::from_str::<Pod>(raw.get()) {
        Ok(pod) => Some(pod),
        Err(err) => {
            skipped.skip(op, "undecodable", raw.get().as_bytes(), &err);
            None
        }
    }
}

impl Handler for Reconciler {
    fn begin_list(&mut self) -> Result<(), WatchError> {
        self.listed.clear();
        Ok(())
    }

    async fn list_page(
        &mut self,
        _resource: &Resource,
        items: Vec<&RawValue>,
    ) -> Result<(), WatchError> {
        for raw in items {
            let Some(pod) = pod(raw, Op::List, &mut self.skipped) else {
                continue;
            };
            if let Some(name) = &pod.metadata.name {
                self.listed.insert(name.clone());
            }
            self.apply(&pod);
        }
        self.followed.store(self.pods.len(), Ordering::Relaxed);
        Ok(())
    }

    async fn sweep(
        &mut self,
        _resource: &Resource,
        _after: Option<String>,
    ) -> Result<Option<String>, WatchError> {
        let listed = std::mem::take(&mut self.listed);
        self.retain(&listed);
        if self.first_list {
            self.forget_vanished(&listed);
        }
        self.listed = listed;
        Ok(None)
    }

    fn list_done(&mut self, resource_version: &str) -> Result<(), WatchError> {
        info!(pods = self.listed.len(), resource_version = %resource_version, "pods listed; watching");
        self.first_list = false;
        self.listed = HashSet::new();
        Ok(())
    }

    async fn events(
        &mut self,
        _resource: &Resource,
        events: Vec<WatchEvent<'_>>,
        trailing_bookmark: Option<&str>,
    ) -> Result<Option<String>, WatchError> {
        let mut reached = None;
        for event in events {
            let Some(pod) = pod(event.object, Op::Watch, &mut self.skipped) else {
                continue;
            };
            match event.event_type {
                EventType::Added | EventType::Modified => self.apply(&pod),
                EventType::Deleted => {
                    if let Some(name) = &pod.metadata.name
                        && self
                            .pods
                            .get(name)
                            .is_some_and(|e| Some(&e.uid) == pod.metadata.uid.as_ref())
                    {
                        self.remove(name);
                    }
                }
            }
            if let Some(rv) = pod.metadata.resource_version.filter(|rv| !rv.is_empty()) {
                reached = Some(rv);
            }
        }
        self.followed.store(self.pods.len(), Ordering::Relaxed);
        Ok(trailing_bookmark.map(str::to_owned).or(reached))
    }

    fn tick(&mut self) {
        self.reap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pods_collection_is_the_namespaces() {
        let resource = pods_resource("team-a");
        assert_eq!(resource.path, "/api/v1/namespaces/team-a/pods");
        assert_eq!(
            (resource.api_version.as_str(), resource.kind.as_str()),
            ("v1", "Pod")
        );
    }
}

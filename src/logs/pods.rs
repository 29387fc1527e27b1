//! The pods of one namespace, as the log follower sees them: LIST, then
//! WATCH from the LIST's resourceVersion through the watcher's own request
//! code ([`crate::watch::api`]), into an in-memory view (one namespace's
//! pods), and one follow task per container of every pod not excluded.
//!
//! ```text
//!   Listing ──(last page: drop pods not listed)──▶ Watching ◀──┐ end, idle, broken
//!      ▲                                              │  └──────┘ (resume from rv)
//!      └──────────── 410 / undecodable ───────────────┘
//!   any other error: Waiting (backoff), then the same step
//! ```
//!
//! The view needs no diff state on disk: after a restart the first LIST
//! shows every pod, and the checkpoints of pods that vanished meanwhile are
//! forgotten then.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::core::{ObjectList, WatchEvent};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::logs::ContainerKey;
use crate::metrics::{WatchLabels, metrics};
use crate::watch::api::{self, Read, Resource, WatchStream};
use crate::watch::{Op, WatchError, error_chain};

use super::follow;
use super::follower::{FollowerStatus, Shared};

/// The annotation that opts a pod out of log collection (value `"false"`).
pub const LOGS_ANNOTATION: &str = "kubeherald.io/logs";

/// The `kind` label of the pods watch in the watch metrics: distinct from a
/// configured `Pod` resource watch of the same context.
const METRICS_KIND: &str = "Pod (logs)";

/// Whether a container instance has run: only then has it a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunState {
    /// Waiting (creating, pulling, crash-loop back-off) or no status yet.
    NotStarted,
    Running,
    /// Ended; its log is complete.
    Terminated,
}

/// What the follow task of a container knows from the pod view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ContainerView {
    /// `restartCount`: the instance the state is about.
    pub restart_count: u32,
    pub state: RunState,
    /// The pod was deleted, replaced (new uid) or excluded.
    pub gone: bool,
}

impl ContainerView {
    pub fn started(&self) -> bool {
        self.state != RunState::NotStarted
    }

    fn of(status: Option<&ContainerStatus>) -> ContainerView {
        let Some(status) = status else {
            return ContainerView {
                restart_count: 0,
                state: RunState::NotStarted,
                gone: false,
            };
        };
        let state = status.state.as_ref();
        let run_state = if state.is_some_and(|s| s.running.is_some()) {
            RunState::Running
        } else if state.is_some_and(|s| s.terminated.is_some()) {
            RunState::Terminated
        } else {
            RunState::NotStarted
        };
        ContainerView {
            restart_count: u32::try_from(status.restart_count).unwrap_or(0),
            state: run_state,
            gone: false,
        }
    }
}

/// The view of container `name` in `pod` (spec and status), `None` when
/// the pod has no such container.
pub(crate) fn container_view(pod: &Pod, name: &str) -> Option<ContainerView> {
    let spec = pod.spec.as_ref()?;
    let in_spec = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .any(|c| c.name == name);
    if !in_spec {
        return None;
    }
    let status = pod.status.as_ref().and_then(|s| {
        s.init_container_statuses
            .iter()
            .flatten()
            .chain(s.container_statuses.iter().flatten())
            .find(|c| c.name == name)
    });
    Some(ContainerView::of(status))
}

/// Whether `pod` is excluded: annotated `kubeherald.io/logs: "false"`, or
/// matching every key/value of one `exclude_labels` entry (an empty entry
/// matches nothing: it would exclude every pod).
pub fn is_excluded(
    labels: Option<&BTreeMap<String, String>>,
    annotations: Option<&BTreeMap<String, String>>,
    exclude_labels: &[BTreeMap<String, String>],
) -> bool {
    if annotations
        .and_then(|a| a.get(LOGS_ANNOTATION))
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("false"))
    {
        return true;
    }
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    exclude_labels
        .iter()
        .any(|entry| !entry.is_empty() && entry.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// One followed pod.
struct PodEntry {
    uid: String,
    containers: HashMap<String, watch::Sender<ContainerView>>,
}

impl PodEntry {
    fn finish(&self) {
        for sender in self.containers.values() {
            sender.send_modify(|view| view.gone = true);
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
}

impl Reconciler {
    fn new(shared: Arc<Shared>, stop: CancellationToken) -> Reconciler {
        Reconciler {
            shared,
            pods: HashMap::new(),
            tasks: JoinSet::new(),
            stop,
        }
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
                entry.finish();
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
        let entry = self.pods.entry(name.clone()).or_insert_with(|| PodEntry {
            uid: uid.clone(),
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
                        name.clone(),
                        uid.clone(),
                        container,
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
            entry.finish();
        }
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

/// Where the pods watch stands.
enum Phase {
    /// Reading LIST pages; `listed` collects the names seen.
    ///
    /// Entered at start and when the resourceVersion became unusable (410,
    /// an undecodable answer). Left to `Watching` after the last page
    /// (pods not listed are then gone), to `Waiting` on an error.
    Listing {
        continue_token: Option<String>,
        listed: HashSet<String>,
    },
    /// A WATCH from `resource_version`; `stream` is `None` until (re)opened.
    ///
    /// Stays while events arrive; a clean end, a broken or idle connection
    /// reopens it from the last version. Left to `Listing` on 410 or an
    /// unusable answer, to `Waiting` on other errors.
    Watching {
        resource_version: String,
        stream: Option<WatchStream>,
    },
    /// A retry delay before `next`.
    Waiting { until: Instant, next: Box<Phase> },
}

impl Phase {
    fn list() -> Phase {
        Phase::Listing {
            continue_token: None,
            listed: HashSet::new(),
        }
    }
}

/// The pods watch of one follower.
pub(crate) struct PodWatch {
    shared: Arc<Shared>,
    resource: Resource,
    reconciler: Reconciler,
    backoff: Backoff,
    labels: WatchLabels,
    status: Arc<Mutex<FollowerStatus>>,
    first_list: bool,
    stop: CancellationToken,
}

impl PodWatch {
    pub fn new(shared: Arc<Shared>, status: Arc<Mutex<FollowerStatus>>) -> PodWatch {
        let resource = Resource {
            api_version: "v1".into(),
            kind: "Pod".into(),
            path: format!("/api/v1/namespaces/{}/pods", shared.namespace),
        };
        let watch = &shared.options.watch;
        let backoff = Backoff::new(
            watch.backoff_initial,
            watch.backoff_max.max(watch.backoff_initial),
        );
        let labels = WatchLabels {
            context: shared.context.clone(),
            kind: METRICS_KIND.into(),
        };
        let stop = CancellationToken::new();
        PodWatch {
            reconciler: Reconciler::new(Arc::clone(&shared), stop.clone()),
            shared,
            resource,
            backoff,
            labels,
            status,
            first_list: true,
            stop,
        }
    }

    /// Runs until `shutdown`, then stops every follow task and waits for them.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut phase = Phase::list();
        loop {
            self.report(&phase);
            phase = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                next = self.step(phase) => next,
            };
            self.reconciler.reap();
        }
        self.stop.cancel();
        while self.reconciler.tasks.join_next().await.is_some() {}
        debug!("log follower stopped");
    }

    async fn step(&mut self, phase: Phase) -> Phase {
        let options = &self.shared.options.watch;
        match phase {
            Phase::Listing {
                continue_token,
                mut listed,
            } => {
                let page = api::list_page(
                    &self.shared.client,
                    &self.resource,
                    options.page_size,
                    continue_token.as_deref(),
                    options.request_timeout,
                )
                .await
                .and_then(|body| {
                    serde_json::from_slice::<ObjectList<Pod>>(&body)
                        .map_err(|e| WatchError::undecodable(Op::List, e))
                });
                let list = match page {
                    Ok(list) => list,
                    Err(err) => {
                        let retry = Phase::Listing {
                            continue_token,
                            listed,
                        };
                        return self.recover(err, retry);
                    }
                };
                for pod in &list.items {
                    if let Some(name) = &pod.metadata.name {
                        listed.insert(name.clone());
                    }
                    self.reconciler.apply(pod);
                }
                self.backoff.reset();
                if let Some(token) = list.metadata.continue_.filter(|t| !t.is_empty()) {
                    return Phase::Listing {
                        continue_token: Some(token),
                        listed,
                    };
                }
                let Some(resource_version) =
                    list.metadata.resource_version.filter(|rv| !rv.is_empty())
                else {
                    let err = WatchError::undecodable(
                        Op::List,
                        std::io::Error::other("a LIST without metadata.resourceVersion"),
                    );
                    return self.recover(err, Phase::list());
                };
                self.reconciler.retain(&listed);
                if self.first_list {
                    self.reconciler.forget_vanished(&listed);
                    self.first_list = false;
                }
                info!(pods = listed.len(), resource_version = %resource_version, "pods listed; watching");
                self.status_mut(|status| {
                    status.synced = true;
                    status.last_error = None;
                });
                Phase::Watching {
                    resource_version,
                    stream: None,
                }
            }
            Phase::Watching {
                resource_version,
                stream: None,
            } => {
                match api::open_watch(
                    &self.shared.client,
                    &self.resource,
                    &resource_version,
                    options.watch_timeout,
                    options.request_timeout,
                )
                .await
                {
                    Ok(stream) => Phase::Watching {
                        resource_version,
                        stream: Some(stream),
                    },
                    Err(err) => {
                        let retry = Phase::Watching {
                            resource_version,
                            stream: None,
                        };
                        self.recover(err, retry)
                    }
                }
            }
            Phase::Watching {
                mut resource_version,
                stream: Some(mut stream),
            } => match stream.read(options.idle_deadline()).await {
                Read::Lines(lines) => match self.watch_lines(&lines, &mut resource_version) {
                    Ok(()) => {
                        self.backoff.reset();
                        Phase::Watching {
                            resource_version,
                            stream: Some(stream),
                        }
                    }
                    Err(err) => {
                        let retry = Phase::Watching {
                            resource_version,
                            stream: None,
                        };
                        self.recover(err, retry)
                    }
                },
                Read::End => {
                    self.count_restart("closed");
                    let next = Phase::Watching {
                        resource_version,
                        stream: None,
                    };
                    // A server that ends every watch at once must not make us spin.
                    if stream.bytes == 0
                        && stream.opened.elapsed() < std::time::Duration::from_secs(1)
                    {
                        let delay = self.backoff.next_delay();
                        wait(delay, next)
                    } else {
                        next
                    }
                }
                Read::Idle => {
                    self.count_restart("idle");
                    warn!(idle = ?options.idle_deadline(), "no byte from the pods watch within its idle deadline; reconnecting");
                    Phase::Watching {
                        resource_version,
                        stream: None,
                    }
                }
                Read::Broken(err) => {
                    self.count_restart("error");
                    let delay = self.backoff.next_delay();
                    warn!(error = %error_chain(&err), retry_in = ?delay, "pods watch connection broke; resuming");
                    wait(
                        delay,
                        Phase::Watching {
                            resource_version,
                            stream: None,
                        },
                    )
                }
            },
            Phase::Waiting { until, next } => {
                tokio::time::sleep_until(until).await;
                *next
            }
        }
    }

    /// Applies complete watch lines to the view. An ERROR event or a bad
    /// line ends the batch with an error.
    fn watch_lines(
        &mut self,
        lines: &[u8],
        resource_version: &mut String,
    ) -> Result<(), WatchError> {
        for line in lines.split(|&b| b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let event: WatchEvent<Pod> =
                serde_json::from_slice(line).map_err(|e| WatchError::undecodable(Op::Watch, e))?;
            match event {
                WatchEvent::Added(pod) | WatchEvent::Modified(pod) => {
                    self.reconciler.apply(&pod);
                    advance(resource_version, pod.metadata.resource_version);
                }
                WatchEvent::Deleted(pod) => {
                    if let Some(name) = &pod.metadata.name
                        && self
                            .reconciler
                            .pods
                            .get(name)
                            .is_some_and(|e| Some(&e.uid) == pod.metadata.uid.as_ref())
                    {
                        self.reconciler.remove(name);
                    }
                    advance(resource_version, pod.metadata.resource_version);
                }
                WatchEvent::Bookmark(bookmark) => {
                    advance(resource_version, Some(bookmark.metadata.resource_version));
                }
                WatchEvent::Error(status) => {
                    let status = kube::core::Status {
                        code: status.code,
                        message: status.message,
                        reason: status.reason,
                        ..Default::default()
                    };
                    return Err(WatchError::from_status(Op::Watch, &status, None));
                }
            }
        }
        Ok(())
    }

    /// Logs and counts a failure; returns the phase that retries it.
    fn recover(&mut self, err: WatchError, retry: Phase) -> Phase {
        let label = err.metric_label();
        self.status_mut(|status| {
            status.last_error = Some(format!("{label}: {}", error_chain(&err)))
        });
        let relist = matches!(
            err,
            WatchError::Expired { .. } | WatchError::Undecodable { .. }
        ) || matches!(
            &err,
            WatchError::Status { op: Op::Watch, code, .. } if !matches!(code, 401 | 403 | 429 | 500..=599)
        );
        if relist {
            metrics()
                .relists
                .get_or_create(&self.labels.reason(if label == "expired" {
                    "expired"
                } else {
                    "error"
                }))
                .inc();
            let failures = self.backoff.failures();
            let delay = self.backoff.next_delay();
            info!(reason = label, error = %error_chain(&err), "pods watch version unusable; re-listing");
            return if failures == 0 {
                Phase::list()
            } else {
                wait(delay, Phase::list())
            };
        }
        metrics()
            .watch_errors
            .get_or_create(&self.labels.reason(label))
            .inc();
        let mut delay = self.backoff.next_delay();
        if let WatchError::Status {
            retry_after: Some(after),
            ..
        } = &err
        {
            delay = delay.max(*after).min(self.shared.options.watch.backoff_max);
        }
        warn!(reason = label, error = %error_chain(&err), retry_in = ?delay, "pods request failed; retrying");
        wait(delay, retry)
    }

    fn count_restart(&self, reason: &str) {
        metrics()
            .watch_restarts
            .get_or_create(&self.labels.reason(reason))
            .inc();
    }

    fn status_mut(&self, change: impl FnOnce(&mut FollowerStatus)) {
        change(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn report(&self, phase: &Phase) {
        let name = match phase {
            Phase::Listing { .. } => "listing",
            Phase::Watching { .. } => "watching",
            Phase::Waiting { .. } => "waiting",
        };
        let pods = self.reconciler.pods.len();
        self.status_mut(|status| {
            status.phase = name;
            status.pods = pods;
        });
    }
}

fn advance(resource_version: &mut String, reached: Option<String>) {
    if let Some(rv) = reached.filter(|rv| !rv.is_empty()) {
        *resource_version = rv;
    }
}

fn wait(delay: std::time::Duration, next: Phase) -> Phase {
    Phase::Waiting {
        until: Instant::now() + delay,
        next: Box::new(next),
    }
}

/// The checkpoint key of a container instance of this follower.
pub(crate) fn key(shared: &Shared, pod: &str, container: &str, restart_count: u32) -> ContainerKey {
    ContainerKey {
        cluster: shared.cluster_name.clone(),
        namespace: shared.namespace.clone(),
        pod: pod.to_owned(),
        container: container.to_owned(),
        restart_count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn exclusion_needs_every_key_of_one_entry_or_the_annotation() {
        let rules = vec![
            map(&[("app", "herald"), ("tier", "ops")]),
            map(&[("skip", "yes")]),
        ];
        let labels = map(&[("app", "herald"), ("tier", "ops"), ("x", "y")]);
        assert!(is_excluded(Some(&labels), None, &rules));
        assert!(!is_excluded(Some(&map(&[("app", "herald")])), None, &rules));
        assert!(is_excluded(Some(&map(&[("skip", "yes")])), None, &rules));
        assert!(!is_excluded(None, None, &rules));
        assert!(
            !is_excluded(Some(&labels), None, &[BTreeMap::new()]),
            "an empty entry matches nothing"
        );
        let opt_out = map(&[(LOGS_ANNOTATION, "false")]);
        assert!(is_excluded(None, Some(&opt_out), &[]));
        assert!(!is_excluded(
            None,
            Some(&map(&[(LOGS_ANNOTATION, "true")])),
            &[]
        ));
    }
}

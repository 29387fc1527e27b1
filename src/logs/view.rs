//! What the follows know of a pod: whether each container instance has run
//! ([`ContainerView`], from the pod's spec and status), and whether a pod is
//! excluded from log collection. Pure functions of a `Pod`; imports nothing
//! of the follower.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

/// The annotation that opts a pod out of log collection (value `"false"`).
pub const LOGS_ANNOTATION: &str = "kubeherald.io/logs";

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
    /// When the instance started (`state.running.startedAt` or
    /// `state.terminated.startedAt`), nanoseconds since the epoch: the
    /// earliest time of its log, for a gap that starts before any line.
    pub started_at: Option<i64>,
    /// The pod was deleted, replaced (new uid) or excluded.
    pub gone: bool,
    /// With `gone`: the pod was excluded, so its lines are left unread on
    /// purpose (no gap).
    pub excluded: bool,
}

impl ContainerView {
    pub fn started(&self) -> bool {
        self.state != RunState::NotStarted
    }

    pub(crate) fn of(status: Option<&ContainerStatus>) -> ContainerView {
        let Some(status) = status else {
            return ContainerView {
                restart_count: 0,
                state: RunState::NotStarted,
                started_at: None,
                gone: false,
                excluded: false,
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
        let started_at = state
            .and_then(|s| {
                s.running
                    .as_ref()
                    .and_then(|r| r.started_at.as_ref())
                    .or_else(|| s.terminated.as_ref().and_then(|t| t.started_at.as_ref()))
            })
            .and_then(|time| i64::try_from(time.0.as_nanosecond()).ok());
        ContainerView {
            restart_count: u32::try_from(status.restart_count).unwrap_or(0),
            state: run_state,
            started_at,
            gone: false,
            excluded: false,
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

//! Pod statuses as the kubelet would report them for the containers a test
//! declares, restarts and terminates.
//!
//! A pod applied without `status.containerStatuses` gets one entry per
//! container (and `initContainerStatuses` per init container) with
//! `restartCount: 0` and a `running` state, `status.phase: Running`. A test
//! that sets statuses itself keeps them. Restarting a container moves its
//! state to `lastState.terminated` and increments `restartCount`, as the
//! kubelet does; terminating it sets `state.terminated`.

use serde_json::{Map, Value, json};

/// Names of `spec.initContainers` then `spec.containers`, the order the
/// apiserver's `VisitContainers` lists them in error messages.
pub fn container_names(pod: &Value) -> (Vec<String>, Vec<String>) {
    let names = |field: &str| -> Vec<String> {
        pod["spec"][field]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    (names("initContainers"), names("containers"))
}

fn container_id(seed: &str) -> String {
    use std::hash::{BuildHasher, RandomState};
    let hash = RandomState::new().hash_one(seed);
    format!("containerd://{hash:016x}{:016x}", hash.rotate_left(17))
}

fn running_status(container: &Value, now: &str) -> Value {
    let name = container["name"].as_str().unwrap_or_default();
    json!({
        "name": name,
        "image": container["image"].as_str().unwrap_or("busybox"),
        "imageID": "",
        "containerID": container_id(&format!("{name}{now}")),
        "ready": true,
        "started": true,
        "restartCount": 0,
        "state": {"running": {"startedAt": now}},
    })
}

/// Fills the statuses of a pod being applied. `previous` is the stored
/// version on a replace: a pod applied without `status` keeps the stored
/// status, like an update of the main resource (status is a subresource).
pub fn fill_status(pod: &mut Value, previous: Option<&Value>, now: &str) {
    let has_status = pod
        .get("status")
        .is_some_and(|s| s.as_object().is_some_and(|m| !m.is_empty()));
    if !has_status && let Some(prev_status) = previous.and_then(|p| p.get("status")) {
        pod["status"] = prev_status.clone();
        return;
    }
    if !pod["status"].is_object() {
        pod["status"] = json!({});
    }
    for (spec_field, status_field) in [
        ("containers", "containerStatuses"),
        ("initContainers", "initContainerStatuses"),
    ] {
        let Some(containers) = pod["spec"][spec_field].as_array().cloned() else {
            continue;
        };
        if pod["status"].get(status_field).is_none() {
            let statuses: Vec<Value> = containers.iter().map(|c| running_status(c, now)).collect();
            pod["status"][status_field] = json!(statuses);
        }
    }
    if pod["status"].get("phase").is_none() {
        pod["status"]["phase"] = json!("Running");
    }
    if pod["status"].get("startTime").is_none() {
        pod["status"]["startTime"] = json!(now);
    }
}

fn status_of<'a>(pod: &'a mut Value, container: &str) -> Option<&'a mut Map<String, Value>> {
    for field in ["containerStatuses", "initContainerStatuses"] {
        let found = pod["status"][field]
            .as_array()
            .and_then(|a| a.iter().position(|s| s["name"] == container));
        if let Some(i) = found {
            return pod["status"][field][i].as_object_mut();
        }
    }
    None
}

/// The `restartCount` of a container, if it has a status.
pub fn restart_count(pod: &Value, container: &str) -> Option<u64> {
    ["containerStatuses", "initContainerStatuses"]
        .iter()
        .find_map(|field| {
            pod["status"][*field]
                .as_array()?
                .iter()
                .find(|s| s["name"] == container)?["restartCount"]
                .as_u64()
        })
}

/// Whether a container's status says it terminated.
pub fn is_terminated(pod: &Value, container: &str) -> bool {
    ["containerStatuses", "initContainerStatuses"]
        .iter()
        .any(|field| {
            pod["status"][*field]
                .as_array()
                .and_then(|a| a.iter().find(|s| s["name"] == container))
                .is_some_and(|s| s["state"].get("terminated").is_some())
        })
}

/// Restarts a container: the current state becomes `lastState.terminated`,
/// a new instance runs, `restartCount` + 1. `false` if it has no status.
pub fn restart(pod: &mut Value, container: &str, now: &str) -> bool {
    let Some(status) = status_of(pod, container) else {
        return false;
    };
    let started = status
        .get("state")
        .and_then(|s| s.get("running").or_else(|| s.get("terminated")))
        .and_then(|s| s.get("startedAt"))
        .cloned()
        .unwrap_or(json!(now));
    let old_id = status.get("containerID").cloned().unwrap_or(Value::Null);
    let count = status
        .get("restartCount")
        .and_then(Value::as_u64)
        .unwrap_or(0)
        + 1;
    status.insert(
        "lastState".into(),
        json!({"terminated": {"exitCode": 1, "reason": "Error", "startedAt": started, "finishedAt": now, "containerID": old_id}}),
    );
    status.insert("state".into(), json!({"running": {"startedAt": now}}));
    status.insert("restartCount".into(), json!(count));
    status.insert(
        "containerID".into(),
        json!(container_id(&format!("{container}{now}{count}"))),
    );
    status.insert("ready".into(), json!(true));
    status.insert("started".into(), json!(true));
    true
}

/// Terminates a container with exit code 0 (`Completed`). `false` if it has no status.
pub fn terminate(pod: &mut Value, container: &str, now: &str) -> bool {
    let Some(status) = status_of(pod, container) else {
        return false;
    };
    let started = status
        .get("state")
        .and_then(|s| s.get("running"))
        .and_then(|s| s.get("startedAt"))
        .cloned()
        .unwrap_or(json!(now));
    let id = status.get("containerID").cloned().unwrap_or(Value::Null);
    status.insert(
        "state".into(),
        json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": started, "finishedAt": now, "containerID": id}}),
    );
    status.insert("ready".into(), json!(false));
    status.insert("started".into(), json!(false));
    true
}

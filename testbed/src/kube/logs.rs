//! `pods/log`: container logs as the kubelet serves them through the apiserver.
//!
//! Rules reproduced (apiserver `pkg/registry/core/pod/rest/log.go` and
//! `strategy.go` `LogLocation`, `validation.ValidatePodLogOptions`; kubelet
//! `kuberuntime/logs/logs.go` `ReadLogs`):
//!
//! - plain text, one line per log entry; `timestamps=true` prefixes each line
//!   with the entry's time in RFC3339Nano (up to 9 fractional digits,
//!   trailing zeros trimmed, no fraction at all on a whole second) and a space;
//! - `container` may be omitted only for a pod with one container:
//!   otherwise 400 `a container name must be specified for pod p, choose one
//!   of: [a b]` (init containers first); an unknown name is 400 `container x
//!   is not valid for pod p`; init containers are addressable by name; an
//!   unknown pod is 404;
//! - `sinceTime` is a `metav1.Time`, which the apiserver passes on to the
//!   kubelet with whole-second precision: it is truncated to the second, so
//!   a resume re-delivers up to one second of lines. `sinceSeconds` means
//!   now minus that many seconds. Both at once is invalid (422);
//! - `tailLines` picks the last N lines first, then `sinceTime` filters them;
//!   `limitBytes` stops the stream after that many bytes (mid-line if need be);
//! - `previous=true` serves the previous instance of the container, or 400
//!   `previous terminated container "c" in pod "p" not found`;
//! - `follow=true` streams new lines as they are written and ends cleanly
//!   (EOF) when that container instance terminates or restarts.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use jiff::Timestamp;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::pods;
use super::routes::{Query, Reply, stream_channel};
use super::server::{Shared, lock};
use super::status::ApiError;
use super::store::ObjKey;

/// One log entry: the kubelet's timestamp and the text without newline.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// When the runtime wrote the line.
    pub timestamp: Timestamp,
    /// The line, without its trailing newline.
    pub text: String,
}

/// The lines of one container instance; older lines fall off the front
/// (log rotation), `first` is the absolute index of `lines[0]`.
#[derive(Debug, Default)]
struct Lines {
    first: u64,
    lines: VecDeque<LogLine>,
}

impl Lines {
    fn end(&self) -> u64 {
        self.first + self.lines.len() as u64
    }

    fn lines_from(&self, index: u64) -> impl Iterator<Item = &LogLine> {
        self.lines
            .iter()
            .skip(index.saturating_sub(self.first) as usize)
    }
}

#[derive(Debug)]
struct LogState {
    /// The current instance's number (its `restartCount`).
    instance: u64,
    current: Lines,
    previous: Option<Lines>,
    terminated: bool,
}

impl LogState {
    /// The lines of an instance and whether that instance has ended.
    fn instance(&self, instance: u64) -> Option<(&Lines, bool)> {
        if instance == self.instance {
            Some((&self.current, self.terminated))
        } else if instance + 1 == self.instance {
            self.previous.as_ref().map(|p| (p, true))
        } else {
            None
        }
    }
}

/// The log of one container across its current and previous instance.
#[derive(Debug)]
pub(crate) struct ContainerLog {
    state: Mutex<LogState>,
    changed: watch::Sender<()>,
}

/// (namespace, pod, container).
pub(crate) type ContainerKey = (String, String, String);

/// Every container's log.
#[derive(Debug)]
pub(crate) struct LogStore {
    containers: HashMap<ContainerKey, Arc<ContainerLog>>,
    max_lines: usize,
}

impl LogStore {
    pub(crate) fn new(max_lines: usize) -> Self {
        LogStore {
            containers: HashMap::new(),
            max_lines: max_lines.max(1),
        }
    }

    /// Registers a container (if new) with its instance number and state.
    pub(crate) fn ensure(&mut self, key: ContainerKey, instance: u64, terminated: bool) {
        self.containers.entry(key).or_insert_with(|| {
            Arc::new(ContainerLog {
                state: Mutex::new(LogState {
                    instance,
                    current: Lines::default(),
                    previous: None,
                    terminated,
                }),
                changed: watch::Sender::new(()),
            })
        });
    }

    pub(crate) fn get(&self, key: &ContainerKey) -> Option<Arc<ContainerLog>> {
        self.containers.get(key).cloned()
    }

    /// Appends lines to the current instance; `false` if the container is unknown.
    pub(crate) fn append(
        &self,
        key: &ContainerKey,
        lines: impl IntoIterator<Item = LogLine>,
    ) -> bool {
        let Some(log) = self.containers.get(key) else {
            return false;
        };
        {
            let mut state = lock(&log.state);
            for line in lines {
                state.current.lines.push_back(line);
            }
            while state.current.lines.len() > self.max_lines {
                state.current.lines.pop_front();
                state.current.first += 1;
            }
        }
        log.changed.send_replace(());
        true
    }

    /// A restart: the current instance becomes the previous one, a new one starts.
    pub(crate) fn restart(&self, key: &ContainerKey) -> bool {
        let Some(log) = self.containers.get(key) else {
            return false;
        };
        {
            let mut state = lock(&log.state);
            let current = std::mem::take(&mut state.current);
            state.previous = Some(current);
            state.instance += 1;
            state.terminated = false;
        }
        log.changed.send_replace(());
        true
    }

    /// The current instance terminated.
    pub(crate) fn terminate(&self, key: &ContainerKey) -> bool {
        let Some(log) = self.containers.get(key) else {
            return false;
        };
        lock(&log.state).terminated = true;
        log.changed.send_replace(());
        true
    }

    /// A deleted pod: its containers stop (follows end) and their logs go.
    pub(crate) fn remove_pod(&mut self, namespace: &str, pod: &str) {
        self.containers.retain(|(ns, p, _), log| {
            if ns == namespace && p == pod {
                lock(&log.state).terminated = true;
                log.changed.send_replace(());
                false
            } else {
                true
            }
        });
    }
}

/// The kubelet's timestamp format: RFC3339Nano, trailing zeros trimmed.
pub fn format_timestamp(ts: Timestamp) -> String {
    // jiff prints a Timestamp in UTC with `Z` and the shortest fraction that
    // keeps its nanoseconds, which is Go's time.RFC3339Nano.
    ts.to_string()
}

/// Parsed `PodLogOptions`.
#[derive(Debug)]
struct LogOptions {
    container: Option<String>,
    follow: bool,
    previous: bool,
    timestamps: bool,
    since: Option<Timestamp>,
    tail: Option<u64>,
    limit_bytes: Option<u64>,
}

impl LogOptions {
    fn parse(q: &Query, pod: &str) -> Result<Self, ApiError> {
        let invalid = |causes: String| ApiError::invalid("PodLogOptions", pod, &causes);
        let since_seconds = q.int("sinceSeconds")?;
        let since_time = match q.get("sinceTime").filter(|t| !t.is_empty()) {
            None => None,
            Some(text) => Some(text.parse::<Timestamp>().map_err(|_| {
                ApiError::bad_request(format!(
                    "parsing time \"{text}\" as \"2006-01-02T15:04:05Z07:00\": cannot parse \"{text}\" as RFC3339"
                ))
            })?),
        };
        if since_seconds.is_some() && since_time.is_some() {
            return Err(invalid(
                "[]: Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified"
                    .into(),
            ));
        }
        let since = match (since_time, since_seconds) {
            // metav1.Time reaches the kubelet with second precision.
            (Some(t), _) => Some(Timestamp::from_second(t.as_second()).unwrap_or(t)),
            (None, Some(s)) if s < 1 => {
                return Err(invalid(format!(
                    "sinceSeconds: Invalid value: {s}: must be greater than 0"
                )));
            }
            (None, Some(s)) => Some(Timestamp::now() - Duration::from_secs(s as u64)),
            (None, None) => None,
        };
        let tail = match q.int("tailLines")? {
            Some(n) if n < 0 => {
                return Err(invalid(format!(
                    "tailLines: Invalid value: {n}: must be greater than or equal to 0"
                )));
            }
            other => other.map(|n| n as u64),
        };
        let limit_bytes = match q.int("limitBytes")? {
            Some(n) if n < 1 => {
                return Err(invalid(format!(
                    "limitBytes: Invalid value: {n}: must be greater than 0"
                )));
            }
            other => other.map(|n| n as u64),
        };
        Ok(LogOptions {
            container: q
                .get("container")
                .filter(|c| !c.is_empty())
                .map(str::to_string),
            follow: q.flag("follow")?,
            previous: q.flag("previous")?,
            timestamps: q.flag("timestamps")?,
            since,
            tail,
            limit_bytes,
        })
    }
}

/// Picks the container a log request names (strategy.go `LogLocation`).
fn resolve_container(
    pod: &Value,
    pod_name: &str,
    requested: Option<&str>,
) -> Result<String, ApiError> {
    let (init, main) = pods::container_names(pod);
    match requested {
        Some(c) if init.iter().chain(&main).any(|n| n == c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {pod_name}"
        ))),
        None if main.len() == 1 => Ok(main[0].clone()),
        None if main.is_empty() => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {pod_name}"
        ))),
        None => {
            let all: Vec<String> = init.into_iter().chain(main).collect();
            Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                all.join(" ")
            )))
        }
    }
}

/// Serves `GET /api/v1/namespaces/NS/pods/NAME/log`.
pub(crate) fn pod_log(
    shared: &Arc<Shared>,
    namespace: &str,
    pod: &str,
    q: &Query,
) -> Result<Reply, ApiError> {
    let opts = LogOptions::parse(q, pod)?;
    let pods_key = super::kinds::TypeKey {
        api_version: "v1".into(),
        kind: "Pod".into(),
    };
    let obj_key = ObjKey {
        namespace: namespace.to_string(),
        name: pod.to_string(),
    };
    let pod_value = lock(&shared.store)
        .get(&pods_key, &obj_key)
        .map(|p| p.value(&pods_key))
        .ok_or_else(|| ApiError::not_found("", "pods", pod))?;
    let container = resolve_container(&pod_value, pod, opts.container.as_deref())?;
    let key = (namespace.to_string(), pod.to_string(), container.clone());
    let log = {
        let mut logs = lock(&shared.logs);
        let instance = pods::restart_count(&pod_value, &container).unwrap_or(0);
        logs.ensure(
            key.clone(),
            instance,
            pods::is_terminated(&pod_value, &container),
        );
        logs.get(&key)
            .ok_or_else(|| ApiError::internal("container log vanished"))?
    };
    let instance = {
        let state = lock(&log.state);
        if opts.previous {
            if state.previous.is_none() {
                return Err(ApiError::bad_request(format!(
                    "previous terminated container \"{container}\" in pod \"{pod}\" not found"
                )));
            }
            state.instance - 1
        } else {
            state.instance
        }
    };
    let (tx, rx) = stream_channel();
    tokio::spawn(async move { stream(log, instance, opts, tx).await });
    Ok(Reply::Stream {
        content_type: "text/plain",
        rx,
    })
}

/// Writes lines until the instance ends (follow) or its current end, within `limitBytes`.
async fn stream(log: Arc<ContainerLog>, instance: u64, opts: LogOptions, tx: mpsc::Sender<Bytes>) {
    let mut changes = log.changed.subscribe();
    changes.borrow_and_update();
    let mut budget = opts.limit_bytes.unwrap_or(u64::MAX);
    let mut cursor: Option<u64> = None;
    loop {
        let (chunk, ended) = {
            let state = lock(&log.state);
            let Some((lines, ended)) = state.instance(instance) else {
                return;
            };
            let start = match cursor {
                Some(c) => c.max(lines.first),
                // tailLines first, from the end of what is written now.
                None => match opts.tail {
                    Some(n) => lines.end().saturating_sub(n).max(lines.first),
                    None => lines.first,
                },
            };
            let mut chunk = String::new();
            for line in lines.lines_from(start) {
                if opts.since.is_some_and(|since| line.timestamp < since) {
                    continue;
                }
                if opts.timestamps {
                    chunk.push_str(&format_timestamp(line.timestamp));
                    chunk.push(' ');
                }
                chunk.push_str(&line.text);
                chunk.push('\n');
            }
            cursor = Some(lines.end());
            (chunk, ended)
        };
        if !chunk.is_empty() {
            let mut bytes = Bytes::from(chunk);
            let over = bytes.len() as u64 >= budget;
            if over {
                bytes.truncate(budget as usize);
            }
            budget -= bytes.len() as u64;
            if tx.send(bytes).await.is_err() || over {
                return;
            }
        }
        if ended || !opts.follow {
            return;
        }
        tokio::select! {
            _ = tx.closed() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339nano() {
        let t = |s: i64, n: i32| Timestamp::new(s, n).unwrap();
        assert_eq!(
            format_timestamp(t(1_767_323_045, 316_760)),
            "2026-01-02T03:04:05.00031676Z"
        );
        assert_eq!(
            format_timestamp(t(1_767_323_045, 0)),
            "2026-01-02T03:04:05Z"
        );
        assert_eq!(
            format_timestamp(t(1_767_323_045, 120_000_000)),
            "2026-01-02T03:04:05.12Z"
        );
    }

    #[test]
    fn container_must_be_named_on_multi_container_pods() {
        let pod = serde_json::json!({"spec": {
            "initContainers": [{"name": "init"}],
            "containers": [{"name": "a"}, {"name": "b"}],
        }});
        assert_eq!(
            resolve_container(&pod, "p", None).unwrap_err().message,
            "a container name must be specified for pod p, choose one of: [init a b]"
        );
        assert_eq!(
            resolve_container(&pod, "p", Some("x")).unwrap_err().message,
            "container x is not valid for pod p"
        );
        assert_eq!(resolve_container(&pod, "p", Some("init")).unwrap(), "init");
    }
}

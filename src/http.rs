//! The HTTP endpoint on `http.listen` (SPEC §6): `/metrics` (the registry
//! of [`crate::metrics`] in the Prometheus/OpenMetrics text format),
//! `/healthz` (200 while every watcher, follower and publisher thread is
//! alive and the spool is writable; 503 naming what is not) and `/readyz`
//! (200 once every (context, kind) watch and every log follower completed
//! its first LIST or was reported failed; 503 before; a JSON body lists each
//! context with its state and last error, so an unreachable context is
//! named, not waited on).
//!
//! hyper's own server rather than a web framework: three fixed GET routes
//! need no router, and hyper 1 with hyper-util is in the tree already (kube's
//! client stack), so the endpoint adds no crate.
//!
//! May import `watch`, `logs` and `publish` (their handles' status),
//! `metrics`. Only `app` imports it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::logs::LogFollowerHandle;
use crate::metrics::metrics;
use crate::publish::PublisherThread;
use crate::watch::{WatchStatus, WatcherHandle};

/// What the probes look at: the running threads and the spool directory.
/// `app` owns it and takes the handles back out at shutdown.
#[derive(Default)]
pub struct Probes {
    pub watchers: Vec<WatcherHandle>,
    pub followers: Vec<LogFollowerHandle>,
    pub publisher: Option<PublisherThread>,
    /// `None`: the spool is in memory (always writable).
    pub spool_dir: Option<PathBuf>,
}

pub type SharedProbes = Arc<Mutex<Probes>>;

/// Serves until `shutdown`.
pub async fn serve(listener: TcpListener, probes: SharedProbes, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                warn!(error = %err, "the HTTP endpoint cannot accept a connection");
                continue;
            }
        };
        let probes = Arc::clone(&probes);
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let probes = Arc::clone(&probes);
                async move { Ok::<_, std::convert::Infallible>(answer(request.uri().path(), &probes)) }
            });
            if let Err(err) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %err, "an HTTP connection ended with an error");
            }
        });
    }
}

fn answer(path: &str, probes: &Mutex<Probes>) -> Response<Full<Bytes>> {
    let probes = probes
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    match path {
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics().encode(),
        ),
        "/healthz" => {
            let problems = health(&probes);
            if problems.is_empty() {
                reply(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    problems.join("\n") + "\n",
                )
            }
        }
        "/readyz" => {
            let (ready, body) = readiness(&probes);
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let text = serde_json::to_string_pretty(&body).unwrap_or_default() + "\n";
            reply(status, "application/json", text)
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: kubeherald serves /metrics, /healthz and /readyz\n".into(),
        ),
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// What is not healthy, one line each; empty when all is.
fn health(probes: &Probes) -> Vec<String> {
    let mut problems = Vec::new();
    for watcher in &probes.watchers {
        if watcher.is_finished() {
            problems.push(format!(
                "the watch thread of {} {} {} has ended",
                watcher.context, watcher.namespace, watcher.kind
            ));
        }
    }
    for follower in &probes.followers {
        if follower.is_finished() {
            problems.push(format!(
                "the log follower thread of {} {} has ended",
                follower.context, follower.namespace
            ));
        }
    }
    if probes
        .publisher
        .as_ref()
        .is_some_and(PublisherThread::is_finished)
    {
        problems.push("the publisher thread has ended".into());
    }
    if let Some(dir) = &probes.spool_dir {
        // A file created and removed: the check a full or read-only
        // volume fails.
        let probe = dir.join(".healthz");
        if let Err(err) = std::fs::write(&probe, b"ok").and_then(|()| std::fs::remove_file(&probe))
        {
            problems.push(format!(
                "the spool directory {} is not writable: {err}",
                dir.display()
            ));
        }
    }
    problems
}

/// `synced`, `failed` (an error was reported and no LIST completed) or
/// `starting`.
fn state(synced: bool, last_error: Option<&String>) -> &'static str {
    match (synced, last_error) {
        (true, _) => "synced",
        (false, Some(_)) => "failed",
        (false, None) => "starting",
    }
}

/// Whether every watch and follower is synced or failed, and the body.
fn readiness(probes: &Probes) -> (bool, Value) {
    let mut ready = true;
    let mut contexts: BTreeMap<(String, String), Value> = BTreeMap::new();
    fn context<'a>(
        contexts: &'a mut BTreeMap<(String, String), Value>,
        context: &str,
        namespace: &str,
    ) -> &'a mut Value {
        contexts
            .entry((context.to_owned(), namespace.to_owned()))
            .or_insert_with(|| json!({"context": context, "namespace": namespace, "watches": []}))
    }
    for watcher in &probes.watchers {
        let WatchStatus {
            phase,
            synced,
            last_error,
            resource_version: _,
        } = watcher.status();
        let state = state(synced, last_error.as_ref());
        ready &= state != "starting";
        let watch = json!({
            "kind": watcher.kind.to_string(),
            "state": state,
            "phase": phase,
            "last_error": last_error,
        });
        if let Some(watches) =
            context(&mut contexts, &watcher.context, &watcher.namespace)["watches"].as_array_mut()
        {
            watches.push(watch);
        }
    }
    for follower in &probes.followers {
        let status = follower.status();
        let state = state(status.synced, status.last_error.as_ref());
        ready &= state != "starting";
        context(&mut contexts, &follower.context, &follower.namespace)["logs"] = json!({
            "state": state,
            "phase": status.phase,
            "pods": status.pods,
            "containers": status.containers,
            "last_error": status.last_error,
        });
    }
    let body = json!({
        "ready": ready,
        "contexts": contexts.into_values().collect::<Vec<_>>(),
    });
    (ready, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_is_starting_until_it_synced_or_failed() {
        assert_eq!(state(false, None), "starting");
        assert_eq!(
            state(false, Some(&"unreachable: refused".to_owned())),
            "failed"
        );
        assert_eq!(state(true, Some(&"old".to_owned())), "synced");
    }

    #[test]
    fn without_threads_all_is_healthy_and_ready_and_unknown_paths_are_404() {
        let probes = Mutex::new(Probes::default());
        assert_eq!(answer("/healthz", &probes).status(), StatusCode::OK);
        assert_eq!(answer("/readyz", &probes).status(), StatusCode::OK);
        assert_eq!(answer("/nope", &probes).status(), StatusCode::NOT_FOUND);
        let metrics = answer("/metrics", &probes);
        assert_eq!(metrics.status(), StatusCode::OK);
    }

    #[test]
    fn an_unwritable_spool_is_unhealthy() {
        let dir = tempfile::tempdir().unwrap();
        let probes = Mutex::new(Probes {
            spool_dir: Some(dir.path().join("missing/dir")),
            ..Probes::default()
        });
        let response = answer("/healthz", &probes);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}

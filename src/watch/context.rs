//! The thread of one context.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::backoff::Backoff;
use crate::contexts::ClusterTarget;

/// How long one reachability probe may take before it counts as a failure.
/// The API server answers `/version` from memory; seconds mean trouble.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a context stands, for logs now and health/readiness later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextState {
    /// Not yet answered; `failures` probes failed so far.
    Connecting {
        failures: u32,
        last_error: Option<String>,
    },
    /// The API server answered with its version.
    Reachable { server_version: String },
    /// The thread ended (shutdown).
    Stopped,
}

/// The running thread of one context.
pub struct ContextHandle {
    pub context: String,
    pub namespace: String,
    state: Arc<Mutex<ContextState>>,
    thread: JoinHandle<()>,
}

impl ContextHandle {
    pub fn state(&self) -> ContextState {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Waits for the thread to end. A panic inside it is reported as an error
    /// of this context only.
    pub fn join(self) -> Result<(), String> {
        self.thread
            .join()
            .map_err(|_| format!("the thread of context {} panicked", self.context))
    }
}

/// Starts the thread of one context. It returns when `shutdown` is cancelled.
pub fn spawn_context(
    target: ClusterTarget,
    shutdown: CancellationToken,
) -> std::io::Result<ContextHandle> {
    let state = Arc::new(Mutex::new(ContextState::Connecting {
        failures: 0,
        last_error: None,
    }));
    let thread_state = Arc::clone(&state);
    let context = target.context.clone();
    let namespace = target.namespace.clone();
    let thread = std::thread::Builder::new()
        .name(format!("ctx-{}", target.context))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(err) => {
                    warn!(context = %target.context, error = %err, "cannot start the runtime of this context");
                    return;
                }
            };
            let span = info_span!("context", context = %target.context, namespace = %target.namespace);
            runtime.block_on(run_context(target, Arc::clone(&thread_state), shutdown).instrument(span));
            set_state(&thread_state, ContextState::Stopped);
        })?;
    Ok(ContextHandle {
        context,
        namespace,
        state,
        thread,
    })
}

fn set_state(state: &Mutex<ContextState>, next: ContextState) {
    *state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = next;
}

async fn run_context(
    target: ClusterTarget,
    state: Arc<Mutex<ContextState>>,
    shutdown: CancellationToken,
) {
    info!(cluster = %target.server_url, cluster_name = %target.cluster_name, "context resolved");
    let client = match kube::Client::try_from(target.client_config.clone()) {
        Ok(client) => client,
        Err(err) => {
            // Building a client fails only on local problems (a bad CA or
            // client certificate): no retry can fix it, so say it once.
            warn!(cluster = %target.server_url, error = %err, "cannot build a client for this context");
            set_state(
                &state,
                ContextState::Connecting {
                    failures: 1,
                    last_error: Some(err.to_string()),
                },
            );
            shutdown.cancelled().await;
            return;
        }
    };
    let mut backoff = Backoff::for_api_server();
    loop {
        let probe = tokio::time::timeout(PROBE_TIMEOUT, client.apiserver_version());
        let outcome = tokio::select! {
            outcome = probe => outcome,
            _ = shutdown.cancelled() => return,
        };
        let error = match outcome {
            Ok(Ok(version)) => {
                info!(cluster = %target.server_url, server_version = %version.git_version, "context reachable");
                set_state(
                    &state,
                    ContextState::Reachable {
                        server_version: version.git_version,
                    },
                );
                backoff.reset();
                break;
            }
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("no answer within {PROBE_TIMEOUT:?}"),
        };
        let delay = backoff.next_delay();
        warn!(cluster = %target.server_url, error = %error, retry_in = ?delay, failures = backoff.failures(), "context unreachable");
        set_state(
            &state,
            ContextState::Connecting {
                failures: backoff.failures(),
                last_error: Some(error),
            },
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return,
        }
    }
    shutdown.cancelled().await;
}

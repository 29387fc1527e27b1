//! The Kubernetes API client of kubeherald: the raw requests the watch
//! engine and the log follows make (discovery, LIST, WATCH, GET of a pod,
//! `pods/log`), the line stream their bodies are read as, and the one error
//! type of them all ([`ApiError`]).
//!
//! Raw requests (`kube::core::Request` + `Client::send`) rather than
//! `Api::list`/`Api::watch` or kube's `watcher`: kubeherald needs the exact
//! bytes of each object, ADDED and MODIFIED kept apart (kube's `watcher`
//! merges them), and the HTTP status, `Retry-After` and ERROR events as they
//! are (SPEC §3, §10). Every request has a deadline, every stream an idle
//! deadline: kube has none by default.
//!
//! May import: `config` (the kind to resolve). Imported by: `watch`, `logs`.
//! Deciding *how* a failure is retried is not done here: the watch engine
//! (`watch::engine`) and the log follow own their recovery rules.

pub mod credentials;
mod error;
mod requests;
mod stream;

pub use error::{ApiError, Op, chain as error_chain};
pub use requests::{Resource, Selectors, get_pod, list_page, open_log, open_watch, resolve};
pub use stream::{LineStream, MAX_LOG_LINE_BYTES, Read};

use std::time::Duration;

use tokio::sync::oneshot;

/// A client for one context, with kube's own retry of 429/503/504 turned
/// off: those answers must reach the caller's retry loop, the one place that
/// decides retries, counts them and honours `Retry-After`. One attempt of a
/// [`Connector`], for a caller that does not retry.
pub async fn connect(config: &kube::Config, timeout: Duration) -> Result<kube::Client, ApiError> {
    Connector::new(config).connect(timeout).await
}

/// Builds the client of one context, attempt after attempt.
///
/// Building it runs the context's exec credential plugin, if any, which may
/// hang (an SSO prompt, a stuck STS call): it runs on a thread of its own
/// and an attempt gives up waiting after its `timeout`. A build still
/// running is not started again: the next attempt waits for the same run,
/// so a hung plugin holds one thread and one process, not one per retry.
/// The thread is detached and ends with its build (tokio's
/// `spawn_blocking` would keep the last one of each watch's runtime, its
/// stack mapped, for as long as the watch runs: SPEC §9's scale target
/// counts 1,000 of them).
///
/// Fails for credentials that do not work ([`ApiError::Credentials`], said
/// without their secrets) and for local problems (a bad CA or client
/// certificate, [`ApiError::Client`]).
pub struct Connector {
    config: kube::Config,
    /// The build an attempt gave up waiting for, still running.
    running: Option<oneshot::Receiver<Result<kube::Client, kube::Error>>>,
}

impl Connector {
    pub fn new(config: &kube::Config) -> Connector {
        let mut config = config.clone();
        config.default_retry = false;
        Connector {
            config,
            running: None,
        }
    }

    /// One attempt: waits at most `timeout` for the build (started now, or
    /// the one an earlier attempt left running).
    pub async fn connect(&mut self, timeout: Duration) -> Result<kube::Client, ApiError> {
        let mut build = match self.running.take() {
            Some(build) => build,
            None => self.start()?,
        };
        let built = match tokio::time::timeout(timeout, &mut build).await {
            Ok(built) => built,
            Err(_) => {
                self.running = Some(build);
                return Err(ApiError::Credentials {
                    op: Op::Connect,
                    reason: format!("the credential provider did not answer within {timeout:?}"),
                });
            }
        };
        match built {
            Err(_) => Err(ApiError::Client {
                reason: "building the client failed: its thread ended without an answer".into(),
            }),
            Ok(Err(kube::Error::Auth(auth))) => Err(ApiError::Credentials {
                op: Op::Connect,
                reason: credentials::describe(&auth),
            }),
            Ok(Err(other)) => Err(ApiError::Client {
                reason: credentials::describe_kube(&other),
            }),
            Ok(Ok(client)) => Ok(client),
        }
    }

    fn start(&self) -> Result<oneshot::Receiver<Result<kube::Client, kube::Error>>, ApiError> {
        let (built_tx, built_rx) = oneshot::channel();
        let config = self.config.clone();
        // The client's background task goes on the caller's runtime.
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("kube-connect".into())
            .spawn(move || {
                let _runtime = runtime.enter();
                // Nobody waiting any more (shutdown): nobody to tell.
                let _ = built_tx.send(kube::Client::try_from(config));
            })
            .map_err(|error| ApiError::Client {
                reason: format!("cannot start a thread to build the client: {error}"),
            })?;
        Ok(built_rx)
    }
}

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

/// A client for one context, with kube's own retry of 429/503/504 turned
/// off: those answers must reach the caller's retry loop, the one place that
/// decides retries, counts them and honours `Retry-After`.
///
/// Building it runs the context's exec credential plugin, if any, which may
/// hang (an SSO prompt, a stuck STS call): it runs on a blocking thread and
/// is given up after `timeout`. Fails for credentials that do not work
/// ([`ApiError::Credentials`], said without their secrets) and for local
/// problems (a bad CA or client certificate, [`ApiError::Client`]).
pub async fn connect(config: &kube::Config, timeout: Duration) -> Result<kube::Client, ApiError> {
    let mut config = config.clone();
    config.default_retry = false;
    let built = tokio::time::timeout(
        timeout,
        tokio::task::spawn_blocking(move || kube::Client::try_from(config)),
    )
    .await;
    match built {
        Err(_) => Err(ApiError::Credentials {
            op: Op::Connect,
            reason: format!("the credential provider did not answer within {timeout:?}"),
        }),
        Ok(Err(join)) => Err(ApiError::Client {
            reason: format!("building the client failed: {join}"),
        }),
        Ok(Ok(Err(kube::Error::Auth(auth)))) => Err(ApiError::Credentials {
            op: Op::Connect,
            reason: credentials::describe(&auth),
        }),
        Ok(Ok(Err(other))) => Err(ApiError::Client {
            reason: credentials::describe_kube(&other),
        }),
        Ok(Ok(Ok(client))) => Ok(client),
    }
}

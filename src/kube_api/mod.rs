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

mod error;
mod requests;
mod stream;

pub use error::{ApiError, Op, chain as error_chain};
pub use requests::{Resource, get_pod, list_page, open_log, open_watch, resolve};
pub use stream::{LineStream, MAX_LOG_LINE_BYTES, Read};

/// A client for one context, with kube's own retry of 429/503/504 turned
/// off: those answers must reach the caller's retry loop, the one place that
/// decides retries, counts them and honours `Retry-After`.
///
/// Fails only for local problems (a bad CA or client certificate).
pub fn client(config: &kube::Config) -> Result<kube::Client, ApiError> {
    let mut config = config.clone();
    config.default_retry = false;
    kube::Client::try_from(config).map_err(ApiError::Client)
}

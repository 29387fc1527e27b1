//! Faults a test can switch on: what real networks and apiservers do to a
//! long-lived client.
//!
//! - cut every open connection without a clean end (a load balancer or an
//!   apiserver crash): the client sees a chunked body end mid-stream;
//! - stall: connections stay open but no more bytes flow, new requests get no
//!   answer (a silently dropped connection); only a client-side idle deadline
//!   notices;
//! - fail the next requests with a Status (500, or 429 with `Retry-After`
//!   as API priority and fairness answers).

use std::sync::Mutex;

use tokio::sync::watch;

use super::status::ApiError;

#[derive(Debug)]
struct FailRule {
    remaining: usize,
    code: u16,
    path_contains: Option<String>,
}

/// Switchable faults, shared by every connection of one server.
#[derive(Debug)]
pub(crate) struct Faults {
    stalled: watch::Sender<bool>,
    kill: watch::Sender<u64>,
    fail: Mutex<Vec<FailRule>>,
    /// (kind, status, remaining) for WATCH requests only.
    fail_watches: Mutex<Vec<(String, u16, usize)>>,
}

impl Faults {
    pub(crate) fn new() -> Self {
        Faults {
            stalled: watch::Sender::new(false),
            kill: watch::Sender::new(0),
            fail: Mutex::new(Vec::new()),
            fail_watches: Mutex::new(Vec::new()),
        }
    }

    /// Cuts every open connection (they end without a terminating chunk).
    pub(crate) fn kill_connections(&self) {
        self.kill.send_modify(|generation| *generation += 1);
    }

    /// A receiver that changes when connections must be cut.
    pub(crate) fn kill_signal(&self) -> watch::Receiver<u64> {
        self.kill.subscribe()
    }

    pub(crate) fn set_stalled(&self, stalled: bool) {
        self.stalled.send_replace(stalled);
    }

    /// Returns once the server is not stalled.
    pub(crate) async fn wait_unstalled(&self) {
        let mut rx = self.stalled.subscribe();
        // An error means the sender is gone: the server is shutting down.
        let _ = rx.wait_for(|stalled| !stalled).await;
    }

    pub(crate) fn fail_next(&self, n: usize, code: u16, path_contains: Option<String>) {
        if let Ok(mut rules) = self.fail.lock() {
            rules.push(FailRule {
                remaining: n,
                code,
                path_contains,
            });
        }
    }

    pub(crate) fn fail_watches(&self, kind: &str, code: u16, n: usize) {
        if let Ok(mut rules) = self.fail_watches.lock() {
            rules.push((kind.to_owned(), code, n));
        }
    }

    /// The status a WATCH of `kind` must fail with, if one is due; consumes it.
    pub(crate) fn take_watch_failure(&self, kind: &str) -> Option<u16> {
        let mut rules = self.fail_watches.lock().ok()?;
        let rule = rules.iter_mut().find(|r| r.2 > 0 && r.0 == kind)?;
        rule.2 -= 1;
        let code = rule.1;
        rules.retain(|r| r.2 > 0);
        Some(code)
    }

    /// The injected error for a request to `path`, if one is due; consumes it.
    pub(crate) fn take_failure(&self, path: &str) -> Option<ApiError> {
        let mut rules = self.fail.lock().ok()?;
        let rule = rules.iter_mut().find(|r| {
            r.remaining > 0 && r.path_contains.as_deref().is_none_or(|p| path.contains(p))
        })?;
        rule.remaining -= 1;
        let code = rule.code;
        rules.retain(|r| r.remaining > 0);
        Some(ApiError::with_code(code))
    }
}

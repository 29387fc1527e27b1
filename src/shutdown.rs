//! Turning SIGTERM and SIGINT into a cancellation every part can watch.
//!
//! Order on shutdown (SPEC §6, STYLE 9): the token is cancelled, watchers stop
//! taking new work and return, then `run` joins them within the grace period
//! and exits 0. Kubernetes sends SIGTERM and waits
//! `terminationGracePeriodSeconds` (30 s by default) before SIGKILL.
//!
//! Imports nothing of kubeherald; `main` and `app` use it.

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// SIGTERM and SIGINT handlers, installed: from [`Signals::install`] on, a
/// signal is queued for [`Signals::cancel_on_signal`] instead of killing
/// the process with the default action. Install them before anything that
/// takes time (configuration, kubeconfig, spool recovery), so a SIGTERM
/// during start-up is a clean stop, not a kill.
pub struct Signals {
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    /// Installs the handlers. Must be called inside a tokio runtime context
    /// (`Runtime::enter`); fails only if the OS refuses them.
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the first SIGTERM or SIGINT (also one that came before
    /// this was polled).
    pub async fn recv(mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }

    /// Cancels `token` on the first SIGTERM or SIGINT, or returns when the
    /// token is cancelled otherwise.
    pub async fn cancel_on_signal(self, token: CancellationToken) {
        tokio::select! {
            name = self.recv() => tracing::info!(signal = name, "shutting down"),
            _ = token.cancelled() => {}
        }
        token.cancel();
    }
}

//! Turning SIGTERM and SIGINT into a cancellation every part can watch.
//!
//! Order on shutdown (SPEC §6, STYLE 9): the token is cancelled, watchers stop
//! taking new work and return, then `run` joins them within the grace period
//! and exits 0. Kubernetes sends SIGTERM and waits
//! `terminationGracePeriodSeconds` (30 s by default) before SIGKILL.
//!
//! Imports nothing of kubeherald; `main` and `app` use it.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Resolves on the first SIGTERM or SIGINT. Must be called inside a tokio
/// runtime; registering the handlers fails only if the OS refuses them.
pub async fn signalled() -> std::io::Result<&'static str> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    Ok(name)
}

/// Cancels `token` on the first SIGTERM or SIGINT. If the handlers cannot be
/// installed the token is cancelled too: a process that could not be stopped
/// cleanly must not start.
pub async fn cancel_on_signal(token: CancellationToken) -> std::io::Result<()> {
    let outcome = tokio::select! {
        signal = signalled() => signal.map(|name| tracing::info!(signal = name, "shutting down")),
        _ = token.cancelled() => Ok(()),
    };
    token.cancel();
    outcome
}

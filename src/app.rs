//! Start-up and shutdown: the order in which the parts are built and stopped.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{Config, ConfigError};
use crate::contexts::{self, ClusterTarget, Surroundings};
use crate::watch::{self, ContextHandle};

/// How long shutdown waits for the context threads. Kubernetes' default
/// `terminationGracePeriodSeconds` is 30; leave room for the rest.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Why `run` could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is wrong: fix it and start again (exit code 2).
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// The process could not set itself up (threads, signal handlers).
    #[error("start-up failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Resolves every context of `config` and checks what can only be checked
/// against the kubeconfig (unknown contexts, log group collisions).
pub async fn resolve_targets(
    config: &Config,
    surroundings: &Surroundings,
) -> Result<Vec<ClusterTarget>, ConfigError> {
    let targets = contexts::resolve(&config.clusters, surroundings).await?;
    if let Some(logs) = &config.logs {
        contexts::check_distinct_log_groups(&targets, &logs.prefix)?;
    }
    Ok(targets)
}

/// Runs kubeherald until `shutdown` is cancelled, then stops every context
/// thread and returns. Must be called inside a tokio runtime.
pub async fn run(
    config: Config,
    surroundings: Surroundings,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let targets = resolve_targets(&config, &surroundings).await?;
    info!(
        contexts = targets.len(),
        kinds = config.resources.len(),
        sns_topic = config.sns.as_ref().map(|s| s.topic_arn.as_str()),
        log_prefix = config.logs.as_ref().map(|l| l.prefix.as_str()),
        "configuration loaded"
    );
    if !config.resources.is_empty() || config.logs.is_some() {
        // Said plainly so nobody takes silence for forwarding.
        warn!(
            "this build resolves and connects to every context but does not yet forward events or logs"
        );
    }

    let mut handles: Vec<ContextHandle> = Vec::with_capacity(targets.len());
    for target in targets {
        handles.push(watch::spawn_context(target, shutdown.child_token())?);
    }

    shutdown.cancelled().await;
    info!(contexts = handles.len(), "stopping context threads");
    let joined = tokio::task::spawn_blocking(move || {
        for handle in handles {
            let context = handle.context.clone();
            if let Err(err) = handle.join() {
                error!(context = %context, error = %err, "context thread failed");
            }
        }
    });
    match tokio::time::timeout(SHUTDOWN_GRACE, joined).await {
        Ok(Ok(())) => info!("stopped"),
        Ok(Err(err)) => error!(error = %err, "joining context threads failed"),
        Err(_) => {
            warn!(grace = ?SHUTDOWN_GRACE, "context threads did not stop within the grace period")
        }
    }
    Ok(())
}

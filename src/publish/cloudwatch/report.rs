//! Counting and logging of the log sink, one function per condition
//! (STYLE 8). May import the metrics, `cloudwatch::retry` and
//! `publish::pacing`.

use tracing::{debug, warn};

use super::retry::LogsError;
use crate::metrics::{ClusterReasonLabels, ReasonLabels, metrics};
use crate::publish::pacing::WarningLimiter;

pub(crate) fn count_error(reason: &str) {
    metrics()
        .log_put_errors
        .get_or_create(&ReasonLabels {
            reason: reason.to_owned(),
        })
        .inc();
}

pub(crate) fn reject_line(cluster: &str, reason: &str, n: u64) {
    metrics()
        .log_lines_rejected
        .get_or_create(&ClusterReasonLabels {
            cluster: cluster.to_owned(),
            reason: reason.to_owned(),
        })
        .inc_by(n);
}

/// `n` lines of `cluster` were already shipped; known by `how`.
pub(super) fn count_duplicates(cluster: &str, how: &str, n: u64) {
    metrics()
        .log_lines_deduplicated
        .get_or_create(&ClusterReasonLabels {
            cluster: cluster.to_owned(),
            reason: how.to_owned(),
        })
        .inc_by(n);
}

pub(super) fn note_retry(
    warnings: &WarningLimiter,
    error: &LogsError,
    group: &str,
    stream: &str,
    events: usize,
    failures: u32,
) {
    let cause = std::error::Error::source(error).map(|s| format!("{s:?}"));
    if warnings.should_warn() {
        warn!(error = %error, cause = cause.as_deref().unwrap_or(""), group = %group, stream, events, failures, "CloudWatch Logs request failed; retrying with backoff");
    } else {
        debug!(error = %error, group = %group, stream, events, failures, "CloudWatch Logs request failed; retrying with backoff");
    }
}

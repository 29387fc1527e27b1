//! Counting and logging of the SNS publisher, one function per condition
//! (STYLE 8). May import the metrics, the record types and `publish::pacing`.

use tracing::{debug, error, warn};

use super::batch::Entry;
use super::message::Degradation;
use super::retry::PublishError;
use crate::metrics::{ReasonLabels, WatchReasonLabels, metrics};
use crate::publish::pacing::WarningLimiter;
use crate::record::ResourceEvent;

pub(super) fn reason(reason: &str) -> ReasonLabels {
    ReasonLabels {
        reason: reason.to_owned(),
    }
}

pub(crate) fn count_error(label: &str) {
    metrics().publish_errors.get_or_create(&reason(label)).inc();
}

/// An event SNS will never accept: counted, logged with its identity (never
/// its body), and acknowledged so it does not come back forever (SPEC §7).
pub(super) fn reject(entry: Entry, label: &str, why: &str) {
    count_error(label);
    error!(
        context = %entry.labels.context,
        kind = %entry.labels.kind,
        namespace = %entry.namespace,
        name = %entry.name,
        event_type = %entry.labels.event_type,
        error = why,
        "SNS rejected the event; it is dropped"
    );
    entry.delivery.ack();
}

/// A body reduced to fit SNS's 256 KiB: counted and logged once per event.
pub(super) fn note_degraded(event: &ResourceEvent, degradation: Degradation) {
    let label = match degradation {
        Degradation::Full => return,
        Degradation::Trimmed => "trimmed",
        Degradation::MetadataOnly => "metadata-only",
        Degradation::Identity => "identity",
    };
    metrics()
        .events_degraded
        .get_or_create(&WatchReasonLabels {
            context: event.context.clone(),
            kind: event.kind.clone(),
            reason: label.to_owned(),
        })
        .inc();
    warn!(
        context = %event.context,
        kind = %event.kind,
        namespace = %event.namespace,
        name = %event.name,
        degradation = label,
        "object too large for SNS's 256 KiB; body reduced"
    );
}

pub(super) fn note_error(
    warnings: &WarningLimiter,
    error: &PublishError,
    entries: usize,
    failures: u32,
) {
    let cause = std::error::Error::source(error).map(|s| format!("{s:?}"));
    if warnings.should_warn() {
        warn!(error = %error, cause = cause.as_deref().unwrap_or(""), entries, failures, "PublishBatch failed; retrying with backoff");
    } else {
        debug!(error = %error, entries, failures, "PublishBatch failed; retrying with backoff");
    }
}

pub(super) fn note_retry(warnings: &WarningLimiter, what: &str, entries: usize, failures: u32) {
    if warnings.should_warn() {
        warn!(entries, failures, "{what}; retrying them with backoff");
    } else {
        debug!(entries, failures, "{what}; retrying them with backoff");
    }
}

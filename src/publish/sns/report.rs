//! Counting and logging of the SNS publisher, one function per condition
//! (STYLE 8). May import the metrics, the record types and `publish::pacing`.

use tracing::{debug, error, warn};

use super::batch::Entry;
use super::message::Degradation;
use super::retry::PublishError;
use crate::metrics::{ReasonLabels, WatchReasonLabels, metrics};
use crate::publish::dead_letter::DeadLetters;
use crate::publish::pacing::WarningLimiter;
use crate::record::ResourceEvent;
use crate::spool::Receipt;

pub(super) fn reason(reason: &str) -> ReasonLabels {
    ReasonLabels {
        reason: reason.to_owned(),
    }
}

pub(crate) fn count_error(label: &str) {
    metrics().publish_errors.get_or_create(&reason(label)).inc();
}

/// An event SNS will not take (`reason`: `invalid` after every degradation
/// step, `refused` after the topic kept refusing): written to the dead
/// letters, counted, logged with its identity (never its body), and
/// acknowledged so it does not pin the spool (SPEC §7). If the letter cannot
/// be written the record stays in the spool (not acknowledged) and comes
/// back later: nothing is lost silently.
pub(super) fn dead_letter(letters: &DeadLetters, entry: Entry, reason: &'static str, why: &str) {
    count_error(if reason == "invalid" {
        "rejected"
    } else {
        reason
    });
    let written = entry
        .receipt
        .read_back()
        .map_err(std::io::Error::other)
        .and_then(|record| letters.write(&record, reason, why));
    let kept = match written {
        Ok(kept) => kept,
        Err(err) => {
            error!(
                context = %entry.labels.context,
                kind = %entry.labels.kind,
                name = %entry.name,
                error = %err,
                "cannot write a dead letter; the event stays in the spool"
            );
            return;
        }
    };
    metrics()
        .events_dead_lettered
        .get_or_create(&ReasonLabels {
            reason: reason.to_owned(),
        })
        .inc();
    error!(
        context = %entry.labels.context,
        kind = %entry.labels.kind,
        namespace = %entry.namespace,
        name = %entry.name,
        event_type = %entry.labels.event_type,
        reason,
        error = why,
        dead_letters = %letters.dir().map_or_else(|| "(none: no spool directory; the event is dropped)".to_owned(), |d| d.display().to_string()),
        kept,
        "SNS does not take the event; it is a dead letter"
    );
    Receipt::ack_all([entry.receipt]);
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
            namespace: event.namespace.clone(),
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

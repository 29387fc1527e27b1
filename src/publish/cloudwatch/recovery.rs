//! After an unclean stop: which of the lines the spool delivers again are
//! already in CloudWatch (SPEC §4, "Exactly once, even across kill -9").
//!
//! A put accepted within the last commit interval before a `kill -9` has no
//! durable checkpoint, so its lines come again from the spool. For a stream
//! with such lines the sink reads, once, the stream's events after its
//! durable checkpoint ([`events_after`]) and drops the re-delivered lines
//! that equal them, in order, by timestamp and message
//! ([`super::scheduler`]). Since a stream has one put in flight at a time
//! and its batches go in the log's order, what CloudWatch holds after the
//! checkpoint is a prefix of what the spool delivers again: the first line
//! that differs, and every line after it, was never accepted.
//!
//! CloudWatch keeps milliseconds: the events of the checkpoint's own
//! millisecond are told apart by the count stored with the checkpoint
//! ([`Shipped::events_at_ms`]).
//!
//! May import `cloudwatch::retry` and the checkpoint types.

use std::collections::VecDeque;
use std::sync::Arc;

use tracing::warn;

use super::batch::timestamp_ms;
use super::life::Shared;
use super::report::{count_error, note_retry};
use super::retry::{Action, LogsError, classify};
use super::scheduler::Lookup;
use crate::backoff::Backoff;
use crate::logs::Shipped;
use crate::publish::pacing::sleep_or_cancel;

/// Runs one recovery lookup until it answers: throttling, 5xx and network
/// errors wait and try again (a stream held a little longer is better than
/// lines sent twice). An error retrying cannot heal answers "nothing
/// found": the lines are sent again, and may be duplicates (logged).
/// `None` at shutdown.
pub(super) async fn recover(
    shared: Arc<Shared>,
    lookup: Lookup,
) -> (u64, Option<VecDeque<StoredEvent>>) {
    let mut backoff = Backoff::new(shared.options.retry_initial, shared.options.retry_max);
    loop {
        tokio::select! {
            _ = shared.lookups.wait() => {}
            _ = shared.shutdown.cancelled() => return (lookup.stream, None),
        }
        let answer = events_after(
            &lookup.group.destination.client,
            &lookup.group.name,
            &lookup.name,
            lookup.after,
        )
        .await;
        let error = match answer {
            Ok(events) => return (lookup.stream, Some(events)),
            Err(error) => error,
        };
        // A parked group's lookup waits like its lines.
        if !matches!(error.action(), Action::Retry | Action::Park) {
            count_error(error.metric_label());
            warn!(group = %lookup.group.name, stream = %lookup.name, error = %error, "cannot read the stream back after an unclean stop; its lines are sent again and may be duplicates");
            return (lookup.stream, Some(VecDeque::new()));
        }
        count_error(error.metric_label());
        note_retry(
            &shared.warnings,
            &error,
            &lookup.group.name,
            &lookup.name,
            0,
            backoff.failures(),
        );
        if !sleep_or_cancel(backoff.next_delay(), &shared.shutdown).await {
            return (lookup.stream, None);
        }
    }
}

/// One event as CloudWatch stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StoredEvent {
    pub(super) timestamp_ms: i64,
    pub(super) message: String,
}

/// Events per `GetLogEvents` page (the API's maximum).
const PAGE_EVENTS: i32 = 10_000;

/// Pages read at most: lines accepted after the last durable checkpoint are
/// about one commit interval's worth; a stream whose store was lost is read
/// this far back and no further.
const MAX_PAGES: usize = 20;

/// The events of `stream` after `after` (every event when `None`), oldest
/// first; empty when the group or stream does not exist. Reads backward
/// from the newest page with `startTime` at the checkpoint's millisecond,
/// so only what came after it is transferred.
pub(super) async fn events_after(
    client: &aws_sdk_cloudwatchlogs::Client,
    group: &str,
    stream: &str,
    after: Option<Shipped>,
) -> Result<VecDeque<StoredEvent>, LogsError> {
    let start_ms = after.map(|a| timestamp_ms(a.checkpoint.timestamp_ns));
    let mut pages: Vec<Vec<StoredEvent>> = Vec::new();
    let mut token: Option<String> = None;
    let mut complete = false;
    for _ in 0..MAX_PAGES {
        let answer = client
            .get_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .start_from_head(false)
            .limit(PAGE_EVENTS)
            .set_start_time(start_ms)
            .set_next_token(token.clone())
            .send()
            .await
            .map_err(|e| classify("GetLogEvents", e));
        let page = match answer {
            Ok(page) => page,
            Err(error) if error.action() == Action::Recreate => return Ok(VecDeque::new()),
            Err(error) => return Err(error),
        };
        pages.push(
            page.events()
                .iter()
                .map(|e| StoredEvent {
                    timestamp_ms: e.timestamp().unwrap_or_default(),
                    message: e.message().unwrap_or_default().to_owned(),
                })
                .collect(),
        );
        // The backward token comes back unchanged at the stream's start.
        let next = page.next_backward_token().map(str::to_owned);
        if next.is_none() || next == token {
            complete = true;
            break;
        }
        token = next;
    }
    if !complete {
        tracing::warn!(
            group,
            stream,
            pages = MAX_PAGES,
            "the stream holds more events after its checkpoint than the sink reads back; lines beyond them may be sent twice"
        );
    }
    let mut events: VecDeque<StoredEvent> = pages.into_iter().rev().flatten().collect();
    if let Some(after) = after {
        let at = timestamp_ms(after.checkpoint.timestamp_ns);
        // Events of the checkpoint's millisecond up to the checkpoint itself
        // come first; without a count, all of that millisecond counts as
        // shipped before (duplicates rather than a gap).
        while events.front().is_some_and(|e| e.timestamp_ms < at) {
            events.pop_front();
        }
        let mut skip = after.events_at_ms.map_or(usize::MAX, |n| n as usize);
        while skip > 0 && events.front().is_some_and(|e| e.timestamp_ms == at) {
            events.pop_front();
            skip -= 1;
        }
    }
    Ok(events)
}

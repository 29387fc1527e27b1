//! Building `PutLogEvents` requests: CloudWatch Logs' limits enforced while a
//! batch is built (STYLE 5), so a request CloudWatch would refuse is never
//! sent.
//!
//! Source of every limit: the PutLogEvents API reference
//! (<https://docs.aws.amazon.com/AmazonCloudWatchLogs/latest/APIReference/API_PutLogEvents.html>),
//! as carried in `aws-sdk-cloudwatchlogs` 1.162
//! (`operation/put_log_events/builders.rs`), and the `InputLogEvent` model
//! (`message` length ≥ 1).
//!
//! - A line is split into parts of at most [`MAX_EVENT_MESSAGE_BYTES`] on
//!   UTF-8 character boundaries, each part an event with the line's
//!   timestamp ([`split_message`]); a line is never dropped for its size.
//! - An empty line becomes one event with the message [`EMPTY_MESSAGE`] (a
//!   single space): CloudWatch refuses an empty message, and dropping the
//!   line would lose the fact that the container wrote it.
//! - [`batch_len`] takes the longest prefix of a stream's pending events that
//!   respects [`MAX_BATCH_EVENTS`], [`MAX_BATCH_BYTES`], chronological order
//!   and [`MAX_SPAN_MS`]. An event older than the one before it (kubelet
//!   timestamps of stdout and stderr can interleave) starts a new batch
//!   rather than being re-timed or re-ordered: CloudWatch keeps the
//!   kubelet's timestamps and, per stream, the log's order.
//! - `take_batch` assembles one request from a stream's pending parts, and
//!   is the only place the sink builds one.
//!
//! May import the spool's [`Receipt`] and the checkpoint types (a batch
//! carries what to acknowledge and checkpoint once it is accepted).

use std::collections::VecDeque;

use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use tokio::time::Instant;

use crate::logs::{ContainerKey, Shipped};
use crate::spool::Receipt;

/// "This size is calculated as the sum of all event messages in UTF-8, plus
/// 26 bytes for each log event."
pub const EVENT_OVERHEAD_BYTES: usize = 26;

/// "The maximum batch size is 1,048,576 bytes" (messages + 26 per event).
pub const MAX_BATCH_BYTES: usize = 1_048_576;

/// "The maximum number of log events in a batch is 10,000."
pub const MAX_BATCH_EVENTS: usize = 10_000;

/// Per-event limit, message bytes + 26. The reference said "Each log event
/// can be no larger than 256 KB" and CloudWatch answers "Log event too large:
/// N bytes exceeds limit of 262144"; since 2025 the reference says 1 MB. 256
/// KiB fits both generations and every region (and is what the test bed's
/// strict proxy enforces); [`super::LogPublisherOptions::max_event_bytes`]
/// can raise it.
pub const MAX_EVENT_BYTES: usize = 262_144;

/// The longest message of one event at [`MAX_EVENT_BYTES`].
pub const MAX_EVENT_MESSAGE_BYTES: usize = MAX_EVENT_BYTES - EVENT_OVERHEAD_BYTES;

/// "the time span in a single batch cannot exceed 24 hours", in the event
/// timestamps' unit (milliseconds).
pub const MAX_SPAN_MS: i64 = 24 * 60 * 60 * 1000;

/// The message sent for an empty line: `InputLogEvent.message` has a minimum
/// length of 1 (an empty one is refused with `InvalidParameterException`).
pub const EMPTY_MESSAGE: &str = " ";

/// The size one event counts toward [`MAX_BATCH_BYTES`].
pub fn event_bytes(message_len: usize) -> usize {
    message_len + EVENT_OVERHEAD_BYTES
}

/// A kubelet timestamp (nanoseconds) as a CloudWatch event timestamp
/// (milliseconds since the epoch), rounded down.
pub fn timestamp_ms(timestamp_ns: i64) -> i64 {
    timestamp_ns.div_euclid(1_000_000)
}

/// The messages of the events that carry `message`: itself when it fits
/// `max_bytes` (≥ 4, one UTF-8 character), else parts of at most `max_bytes`
/// cut on character boundaries, in order; [`EMPTY_MESSAGE`] for an empty
/// line. Every part is non-empty.
pub fn split_message(message: &str, max_bytes: usize) -> Vec<&str> {
    let max_bytes = max_bytes.max(4);
    if message.is_empty() {
        return vec![EMPTY_MESSAGE];
    }
    let mut parts = Vec::with_capacity(message.len().div_ceil(max_bytes));
    let mut rest = message;
    while rest.len() > max_bytes {
        let mut end = max_bytes;
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        parts.push(&rest[..end]);
        rest = &rest[end..];
    }
    parts.push(rest);
    parts
}

/// How many leading events of a stream's pending events, given as
/// (timestamp ms, message bytes) in the stream's order, one `PutLogEvents`
/// carries: the longest prefix within [`MAX_BATCH_EVENTS`],
/// [`MAX_BATCH_BYTES`], in chronological order and spanning at most
/// [`MAX_SPAN_MS`]. At least 1 when `events` is not empty (every event fits
/// a batch alone: its message is at most [`MAX_EVENT_MESSAGE_BYTES`]).
pub fn batch_len(events: impl IntoIterator<Item = (i64, usize)>) -> usize {
    let mut count = 0;
    let mut bytes = 0;
    let mut first = None;
    let mut last = i64::MIN;
    for (timestamp, message_len) in events {
        let size = event_bytes(message_len);
        if count > 0
            && (count == MAX_BATCH_EVENTS
                || bytes + size > MAX_BATCH_BYTES
                || timestamp < last
                || first.is_some_and(|first: i64| timestamp.saturating_sub(first) > MAX_SPAN_MS))
        {
            break;
        }
        first.get_or_insert(timestamp);
        last = timestamp;
        bytes += size;
        count += 1;
    }
    count
}

// ---------------------------------------------------------------------------
// Parts and batches of the sink: what a stream holds between the spool and
// CloudWatch, and the one place a `PutLogEvents` request is assembled.

/// Fixed bytes counted per buffered part and per buffered line (their
/// structs, queue slots and allocation headers), on top of the bytes they
/// hold.
pub(super) const PART_OVERHEAD: usize = 64;
pub(super) const LINE_OVERHEAD: usize = 128;

/// One event waiting to be sent: a whole line, or one part of a long line.
pub(super) struct Part {
    pub(super) timestamp_ms: i64,
    pub(super) message: String,
    /// When it was read from the spool: linger counts from here.
    pub(super) arrived: Instant,
    /// Bytes it counts toward `max_buffered_bytes`.
    pub(super) cost: usize,
    /// Set on a line's last part: what completes when this part is shipped.
    /// Boxed: a stream holds a second of lines in its queue (100,000 parts
    /// at SPEC §9's log rate), and most parts are whole lines, so the queue
    /// slot stays small and the line's end is allocated once, at its size.
    pub(super) line: Option<Box<LineEnd>>,
}

/// A line whose last part is in a batch.
pub(super) struct LineEnd {
    /// Its spool record, by id: the bytes are read again only if the line
    /// has to be set aside (its group parked), not kept beside the message.
    pub(super) receipt: Receipt,
    pub(super) shipped: Shipped,
    pub(super) message_bytes: usize,
    /// Index of its last part in the batch (set when the batch is built).
    pub(super) event_index: usize,
}

/// One `PutLogEvents` worth of a stream.
pub(super) struct Batch {
    pub(super) events: Vec<InputLogEvent>,
    pub(super) lines: Vec<LineEnd>,
    pub(super) key: ContainerKey,
}

/// What a line's spool record counts toward `max_buffered_bytes` once it
/// is queued: the bytes its receipt holds (none on disk).
pub(super) fn receipt_cost(receipt: &Receipt) -> usize {
    receipt.bytes_held() + LINE_OVERHEAD
}

/// The longest message of one part at `max_event_bytes` (the sink's option,
/// kept within one UTF-8 character and [`MAX_BATCH_BYTES`]).
pub(super) fn max_part_bytes(max_event_bytes: usize) -> usize {
    max_event_bytes.clamp(EVENT_OVERHEAD_BYTES + 4, MAX_BATCH_BYTES) - EVENT_OVERHEAD_BYTES
}

/// The messages of a line's parts ([`split_message`]), owned; the line's
/// own message when it fits (no copy).
pub(super) fn line_parts(message: String, max_part: usize) -> Vec<String> {
    if !message.is_empty() && message.len() <= max_part {
        vec![message]
    } else {
        split_message(&message, max_part)
            .into_iter()
            .map(str::to_owned)
            .collect()
    }
}

/// Takes the next batch off the front of a stream's `pending` parts
/// ([`batch_len`] decides how many). Returns it with the buffered bytes its
/// parts cost and the bytes they counted toward the stream's pending size
/// ([`event_bytes`] each).
pub(super) fn take_batch(pending: &mut VecDeque<Part>, key: ContainerKey) -> (Batch, usize, usize) {
    let n = batch_len(pending.iter().map(|p| (p.timestamp_ms, p.message.len())));
    let mut events = Vec::with_capacity(n);
    let mut lines = Vec::new();
    let (mut cost, mut bytes) = (0, 0);
    for (index, part) in pending.drain(..n).enumerate() {
        bytes += event_bytes(part.message.len());
        cost += part.cost;
        if let Some(mut line) = part.line {
            line.event_index = index;
            lines.push(*line);
        }
        events.push(
            InputLogEvent::builder()
                .timestamp(part.timestamp_ms)
                .message(part.message)
                .build()
                // Both required fields are set just above.
                .expect("an InputLogEvent with timestamp and message"),
        );
    }
    (Batch { events, lines, key }, cost, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_750_000_000_000;

    #[test]
    fn a_line_that_fits_is_one_event() {
        assert_eq!(split_message("hello", MAX_EVENT_MESSAGE_BYTES), ["hello"]);
        let exact = "x".repeat(MAX_EVENT_MESSAGE_BYTES);
        assert_eq!(
            split_message(&exact, MAX_EVENT_MESSAGE_BYTES),
            [exact.as_str()]
        );
    }

    #[test]
    fn an_empty_line_is_a_single_space() {
        assert_eq!(split_message("", MAX_EVENT_MESSAGE_BYTES), [EMPTY_MESSAGE]);
    }

    #[test]
    fn long_lines_split_on_character_boundaries() {
        // 300 KiB of two-, three- and four-byte characters: no cut may fall
        // inside one, and the parts put back together are the line.
        let line: String = "é€😀a".repeat(300 * 1024 / 10);
        let parts = split_message(&line, MAX_EVENT_MESSAGE_BYTES);
        assert_eq!(parts.len(), 2);
        assert!(
            parts
                .iter()
                .all(|p| !p.is_empty() && event_bytes(p.len()) <= MAX_EVENT_BYTES)
        );
        assert!(parts[0].len() > MAX_EVENT_MESSAGE_BYTES - 4);
        assert_eq!(parts.concat(), line);

        let parts = split_message("ééé", 5);
        assert_eq!(parts, ["éé", "é"]);
        assert_eq!(
            split_message("😀😀", 1),
            ["😀", "😀"],
            "at least one character per part"
        );
    }

    #[test]
    fn batches_stop_at_ten_thousand_events() {
        let events = (0..25_000).map(|i| (T + i, 10));
        assert_eq!(batch_len(events), MAX_BATCH_EVENTS);
        assert_eq!(batch_len((0..10).map(|i| (T + i, 10))), 10);
        assert_eq!(batch_len(std::iter::empty()), 0);
    }

    #[test]
    fn batches_stop_at_one_mebibyte_counting_26_per_event() {
        // Four events of exactly 262,144 bytes fill a batch to the byte.
        let full = MAX_EVENT_MESSAGE_BYTES;
        assert_eq!(batch_len([(T, full); 5]), 4);
        assert_eq!(
            batch_len([(T, full), (T, full), (T, full), (T, full - 1), (T, 1)]),
            4
        );
        // 40,329 bytes + 26 = 40,355 per event: 25 fit (1,008,875), 26 do not.
        assert_eq!(batch_len([(T, 40_329); 30]), 25);
        // A message of 0 bytes still counts its 26.
        let small = MAX_BATCH_BYTES / EVENT_OVERHEAD_BYTES;
        assert_eq!(
            batch_len((0..small + 5).map(|_| (T, 0))),
            small.min(MAX_BATCH_EVENTS)
        );
    }

    #[test]
    fn batches_stay_chronological() {
        assert_eq!(
            batch_len([(T, 1), (T, 1), (T + 5, 1), (T + 4, 1), (T + 6, 1)]),
            3
        );
        assert_eq!(batch_len([(T + 4, 1), (T + 6, 1)]), 2);
    }

    #[test]
    fn batches_span_at_most_24_hours() {
        assert_eq!(
            batch_len([(T, 1), (T + MAX_SPAN_MS, 1), (T + MAX_SPAN_MS + 1, 1)]),
            2
        );
        assert_eq!(batch_len([(T, 1), (T + 1, 1), (T + MAX_SPAN_MS + 1, 1)]), 2);
    }

    #[test]
    fn timestamps_round_down_to_milliseconds() {
        assert_eq!(timestamp_ms(1_750_000_000_123_999_999), 1_750_000_000_123);
        assert_eq!(timestamp_ms(-1), -1);
    }
}

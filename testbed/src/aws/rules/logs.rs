//! CloudWatch Logs `PutLogEvents` limits (awsJson1.1).
//!
//! Source: the PutLogEvents API reference, as carried in `aws-sdk-cloudwatchlogs`
//! 1.162 (`operation/put_log_events/builders.rs`):
//! - "The maximum batch size is 1,048,576 bytes. This size is calculated as the
//!   sum of all event messages in UTF-8, plus 26 bytes for each log event."
//! - "Events more than 2 hours in the future are rejected while processing
//!   remaining valid events." / "Events older than 14 days or preceding the log
//!   group's retention period are rejected while processing remaining valid
//!   events." → HTTP 200 with `rejectedLogEventsInfo`: `tooOldLogEventEndIndex`
//!   (exclusive), `tooNewLogEventStartIndex` (inclusive), `expiredLogEventEndIndex`.
//! - "The log events in the batch must be in chronological order … Otherwise,
//!   the operation fails."
//! - "The maximum number of log events in a batch is 10,000."
//! - "For valid events (within 14 days in the past to 2 hours in future), the
//!   time span in a single batch cannot exceed 24 hours. Otherwise, the
//!   operation fails."
//! - "Each log event can be no larger than 1 MB." — see [`MAX_EVENT_BYTES`].
//! - `InputLogEvents` has length 1..=10,000 and `EventMessage` length ≥ 1 in
//!   the model; violations come back as model validation errors.
//!
//! Every refusal is HTTP 400 `{"__type":"InvalidParameterException","message":…}`,
//! the shape real CloudWatch sends (e.g. `{"__type":"InvalidParameterException",
//! "message":"Log event too large: 292824 bytes exceeds limit of 262144"}`,
//! quoted in maxbanton/cwh#101). The messages for order ("Log events in a
//! single PutLogEvents request must be in chronological order."), event size
//! ("Log event too large: N bytes exceeds limit of 262144") and the validation
//! format ("1 validation error detected: Value … at '…' failed to satisfy
//! constraint: …", moto's copy) are AWS's; the batch-size and 24-hour messages
//! are written to match their style.

use serde_json::Value;

use super::{Refusal, Rule};

/// Bytes CloudWatch adds to every event's UTF-8 message when it sizes a batch.
pub const EVENT_OVERHEAD_BYTES: usize = 26;
/// Largest `PutLogEvents` batch: Σ (message bytes + 26).
pub const MAX_BATCH_BYTES: usize = 1_048_576;
/// Most events in one `PutLogEvents`.
pub const MAX_BATCH_EVENTS: usize = 10_000;
/// Default per-event limit, message bytes + 26: 256 KiB.
///
/// The API reference said "Each log event can be no larger than 256 KB" and
/// CloudWatch answered "Log event too large: 292824 bytes exceeds limit of
/// 262144" for years; since April 2025 the reference (and the SDK docs in
/// `aws-sdk-cloudwatchlogs` 1.162, `types/_input_log_event.rs`) say 1 MB. The
/// strict proxy keeps 256 KiB by default: a client that fits 256 KiB fits
/// every region and both generations of the limit, and SPEC §4 expects long
/// lines (e.g. 300 KiB) to be split by the client. A test can raise it with
/// [`super::super::StrictConfig::logs_max_event_bytes`].
pub const MAX_EVENT_BYTES: usize = 262_144;
/// Largest span between the first and last accepted event of a batch.
pub const MAX_SPAN_MS: i64 = 24 * 60 * 60 * 1000;
/// Events older than this (relative to now) are rejected as too old.
pub const MAX_AGE_MS: i64 = 14 * 24 * 60 * 60 * 1000;
/// Events further than this in the future are rejected as too new.
pub const MAX_FUTURE_MS: i64 = 2 * 60 * 60 * 1000;

const INVALID_PARAMETER: &str = "InvalidParameterException";

/// What to do with a `PutLogEvents` that passed every hard rule.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Forward unchanged.
    Forward,
    /// Some events are too old or too new: forward `body` (the request with
    /// only the acceptable events) and answer with `rejected` merged in.
    Partial {
        /// The request body to forward.
        body: Vec<u8>,
        /// What to report in `rejectedLogEventsInfo`.
        rejected: Rejected,
    },
}

/// The `rejectedLogEventsInfo` CloudWatch reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// `tooOldLogEventEndIndex`: events `[0, n)` were too old.
    pub too_old_end: Option<usize>,
    /// `tooNewLogEventStartIndex`: events `[n, len)` were too new.
    pub too_new_start: Option<usize>,
    /// Number of events dropped as too old.
    pub too_old: usize,
    /// Number of events dropped as too new.
    pub too_new: usize,
}

impl Rejected {
    /// The JSON object CloudWatch puts under `rejectedLogEventsInfo`.
    pub fn to_json(&self) -> Value {
        let mut info = serde_json::Map::new();
        if let Some(i) = self.too_old_end {
            info.insert("tooOldLogEventEndIndex".into(), i.into());
        }
        if let Some(i) = self.too_new_start {
            info.insert("tooNewLogEventStartIndex".into(), i.into());
        }
        Value::Object(info)
    }
}

/// Checks a `PutLogEvents` body against the limits, `now_ms` being the
/// service's clock in epoch milliseconds. Bodies that are not the expected
/// JSON are forwarded untouched (moto answers them as AWS would).
pub fn check_put_log_events(
    body: &[u8],
    now_ms: i64,
    max_event_bytes: usize,
) -> Result<Verdict, Refusal> {
    let Ok(mut request) = serde_json::from_slice::<Value>(body) else {
        return Ok(Verdict::Forward);
    };
    let Some(events) = request.get("logEvents").and_then(Value::as_array) else {
        return Ok(Verdict::Forward);
    };
    let events: Vec<(i64, usize)> = events
        .iter()
        .map(|e| {
            let ts = e.get("timestamp").and_then(Value::as_i64).unwrap_or(0);
            let len = e.get("message").and_then(Value::as_str).map_or(0, str::len);
            (ts, len)
        })
        .collect();

    if events.is_empty() {
        return Err(refuse(
            Rule::LogsNoEvents,
            "1 validation error detected: Value '[]' at 'logEvents' failed to satisfy constraint: Member must have length greater than or equal to 1",
        ));
    }
    if events.len() > MAX_BATCH_EVENTS {
        return Err(refuse(
            Rule::LogsTooManyEvents,
            format!(
                "1 validation error detected: Value at 'logEvents' failed to satisfy constraint: Member must have length less than or equal to {MAX_BATCH_EVENTS}"
            ),
        ));
    }
    if let Some(i) = events.iter().position(|&(_, len)| len == 0) {
        return Err(refuse(
            Rule::LogsEmptyMessage,
            format!(
                "1 validation error detected: Value '' at 'logEvents.{}.member.message' failed to satisfy constraint: Member must have length greater than or equal to 1",
                i + 1
            ),
        ));
    }
    let batch_bytes: usize = events
        .iter()
        .map(|&(_, len)| len + EVENT_OVERHEAD_BYTES)
        .sum();
    if batch_bytes > MAX_BATCH_BYTES {
        return Err(refuse(
            Rule::LogsBatchTooLarge,
            format!("Upload too large: {batch_bytes} bytes exceeds limit of {MAX_BATCH_BYTES}"),
        ));
    }
    if let Some(&(_, len)) = events
        .iter()
        .find(|&&(_, len)| len + EVENT_OVERHEAD_BYTES > max_event_bytes)
    {
        return Err(refuse(
            Rule::LogsEventTooLarge,
            format!(
                "Log event too large: {} bytes exceeds limit of {max_event_bytes}",
                len + EVENT_OVERHEAD_BYTES
            ),
        ));
    }
    if events.windows(2).any(|w| w[1].0 < w[0].0) {
        return Err(refuse(
            Rule::LogsNotChronological,
            "Log events in a single PutLogEvents request must be in chronological order.",
        ));
    }

    // In chronological order the too-old events are a prefix and the too-new
    // ones a suffix.
    let oldest = now_ms - MAX_AGE_MS;
    let newest = now_ms + MAX_FUTURE_MS;
    let too_old = events.iter().take_while(|&&(ts, _)| ts < oldest).count();
    let too_new = events
        .iter()
        .rev()
        .take_while(|&&(ts, _)| ts > newest)
        .count();
    let too_new = too_new.min(events.len() - too_old);
    let accepted = &events[too_old..events.len() - too_new];
    if let (Some(first), Some(last)) = (accepted.first(), accepted.last())
        && last.0 - first.0 > MAX_SPAN_MS
    {
        return Err(refuse(
            Rule::LogsSpanOver24Hours,
            "The batch of log events in a single PutLogEvents request cannot span more than 24 hours.",
        ));
    }
    if too_old == 0 && too_new == 0 {
        return Ok(Verdict::Forward);
    }
    let rejected = Rejected {
        too_old_end: (too_old > 0).then_some(too_old),
        too_new_start: (too_new > 0).then_some(events.len() - too_new),
        too_old,
        too_new,
    };
    if let Some(Value::Array(all)) = request.get_mut("logEvents") {
        let kept: Vec<Value> = all.drain(too_old..all.len() - too_new).collect();
        *all = kept;
    }
    let body = serde_json::to_vec(&request).expect("re-encode PutLogEvents");
    Ok(Verdict::Partial { body, rejected })
}

fn refuse(rule: Rule, message: impl Into<String>) -> Refusal {
    Refusal::bad_request(rule, INVALID_PARAMETER, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_750_000_000_000;

    fn body(events: &[(i64, &str)]) -> Vec<u8> {
        let events: Vec<Value> = events
            .iter()
            .map(|(ts, m)| json!({"timestamp": ts, "message": m}))
            .collect();
        serde_json::to_vec(&json!({"logGroupName": "g", "logStreamName": "s", "logEvents": events}))
            .unwrap()
    }

    fn rule(events: &[(i64, &str)]) -> Rule {
        check_put_log_events(&body(events), NOW, MAX_EVENT_BYTES)
            .unwrap_err()
            .rule
    }

    #[test]
    fn sizes_count_utf8_bytes_plus_26() {
        let at_limit = "é".repeat((MAX_EVENT_BYTES - 26) / 2);
        assert_eq!(
            check_put_log_events(&body(&[(NOW, &at_limit)]), NOW, MAX_EVENT_BYTES),
            Ok(Verdict::Forward)
        );
        let over = format!("{at_limit}x");
        assert_eq!(rule(&[(NOW, &over)]), Rule::LogsEventTooLarge);
        // 4 events of 262,118 bytes = exactly 1 MiB with overhead; a 5th byte more is too much.
        let m = "a".repeat(MAX_EVENT_BYTES - 26);
        let four: Vec<(i64, &str)> = (0..4).map(|_| (NOW, m.as_str())).collect();
        assert_eq!(
            check_put_log_events(&body(&four), NOW, MAX_EVENT_BYTES),
            Ok(Verdict::Forward)
        );
        let mut five = four.clone();
        five.push((NOW, "x"));
        assert_eq!(rule(&five), Rule::LogsBatchTooLarge);
    }

    #[test]
    fn order_span_count_empty() {
        assert_eq!(rule(&[]), Rule::LogsNoEvents);
        assert_eq!(
            rule(&[(NOW, "a"), (NOW - 1, "b")]),
            Rule::LogsNotChronological
        );
        assert_eq!(rule(&[(NOW, "a"), (NOW, "")]), Rule::LogsEmptyMessage);
        let day_ago = NOW - MAX_SPAN_MS;
        assert_eq!(
            check_put_log_events(&body(&[(day_ago, "a"), (NOW, "b")]), NOW, MAX_EVENT_BYTES),
            Ok(Verdict::Forward)
        );
        assert_eq!(
            rule(&[(day_ago - 1, "a"), (NOW, "b")]),
            Rule::LogsSpanOver24Hours
        );
        let many: Vec<(i64, &str)> = (0..=MAX_BATCH_EVENTS).map(|_| (NOW, "x")).collect();
        assert_eq!(rule(&many), Rule::LogsTooManyEvents);
    }

    #[test]
    fn too_old_and_too_new_are_dropped_with_aws_indices() {
        let old = NOW - MAX_AGE_MS - 1;
        let new = NOW + MAX_FUTURE_MS + 1;
        // The span rule only looks at the accepted events.
        let events = [
            (old - MAX_SPAN_MS, "o1"),
            (old, "o2"),
            (NOW, "ok"),
            (new, "n1"),
        ];
        let Verdict::Partial { body, rejected } =
            check_put_log_events(&body(&events), NOW, MAX_EVENT_BYTES).unwrap()
        else {
            panic!("expected a partial verdict")
        };
        assert_eq!(rejected.too_old_end, Some(2));
        assert_eq!(rejected.too_new_start, Some(3));
        assert_eq!(
            rejected.to_json(),
            json!({"tooOldLogEventEndIndex": 2, "tooNewLogEventStartIndex": 3})
        );
        let forwarded: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            forwarded["logEvents"],
            json!([{"timestamp": NOW, "message": "ok"}])
        );
        assert_eq!(forwarded["logGroupName"], "g");
    }
}

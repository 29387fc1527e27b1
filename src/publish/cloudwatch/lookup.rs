//! The last event of a stream as CloudWatch stored it, for a follower that
//! has no checkpoint (SPEC §4), and the client it asks with. Used by
//! [`crate::logs`]; may import `publish::aws` and `cloudwatch::retry` only.

use super::retry::{Action, LogsError, classify};
use crate::publish::aws::{AwsOptions, load_sdk_config};

/// A CloudWatch Logs client from the environment (region default
/// `default_region`), configured like the sink's: for
/// [`last_shipped_from_cloudwatch`].
pub async fn logs_client(
    default_region: &str,
    options: &AwsOptions,
) -> aws_sdk_cloudwatchlogs::Client {
    aws_sdk_cloudwatchlogs::Client::new(&load_sdk_config(default_region, options).await)
}

/// The last event of a stream, as CloudWatch stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastShipped {
    /// Event timestamp, milliseconds since the epoch.
    pub timestamp_ms: i64,
    /// Its message (the last part, for a line shipped in parts; a single
    /// space for an empty line).
    pub message: String,
    /// When CloudWatch ingested it, milliseconds since the epoch.
    pub ingestion_time_ms: Option<i64>,
}

/// Pages `GetLogEvents` may answer empty before reaching an event.
const MAX_EMPTY_PAGES: usize = 10;

/// The last event of `stream` in `group`, for a follower that has no
/// checkpoint (SPEC §4): `GetLogEvents` with `startFromHead=false, limit=1`,
/// which reads the stored events, rather than the stream's
/// `lastEventTimestamp`, which is only eventually consistent (up to an hour,
/// SPEC §10). `None` when the group, the stream or any event is missing.
///
/// The follower resumes from `sinceTime = timestamp_ms / 1000` and skips
/// lines older than `timestamp_ms`; lines of that very millisecond are
/// ambiguous without a checkpoint (the message helps tell them apart).
pub async fn last_shipped_from_cloudwatch(
    client: &aws_sdk_cloudwatchlogs::Client,
    group: &str,
    stream: &str,
) -> Result<Option<LastShipped>, LogsError> {
    let mut token: Option<String> = None;
    // GetLogEvents may answer a page without events while older ones exist;
    // following the backward token reaches them.
    for _ in 0..MAX_EMPTY_PAGES {
        let answer = client
            .get_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .start_from_head(false)
            .limit(1)
            .set_next_token(token.clone())
            .send()
            .await
            .map_err(|e| classify("GetLogEvents", e));
        let page = match answer {
            Ok(page) => page,
            Err(error) if error.action() == Action::Recreate => return Ok(None),
            Err(error) => return Err(error),
        };
        if let Some(event) = page.events().last() {
            return Ok(Some(LastShipped {
                timestamp_ms: event.timestamp().unwrap_or_default(),
                message: event.message().unwrap_or_default().to_owned(),
                ingestion_time_ms: event.ingestion_time(),
            }));
        }
        let next = page.next_backward_token().map(str::to_owned);
        if next.is_none() || next == token {
            return Ok(None);
        }
        token = next;
    }
    Ok(None)
}

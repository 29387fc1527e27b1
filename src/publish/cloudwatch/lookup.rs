//! The last event of a stream as CloudWatch stored it, for a follower that
//! has no checkpoint (SPEC §4), and the client it asks with. The follower
//! receives it as a [`crate::logs::LastEventLookup`] ([`CloudWatchLookup`],
//! wired by `app`), so `logs` never imports this sink. May import
//! `publish::aws`, `cloudwatch::retry`, and the interface types of `logs`.

use super::retry::{Action, LogsError, classify};
use crate::logs::{LastEvent, LastEventLookup, LookupError};
use crate::publish::aws::{AwsOptions, load_sdk_config};
use crate::record::ContainerKey;

/// The follower's fallback for streams without a checkpoint: the
/// CloudWatch stream's last stored event ([`last_shipped_from_cloudwatch`]).
pub struct CloudWatchLookup {
    client: aws_sdk_cloudwatchlogs::Client,
    /// `LogsConfig::prefix`: groups are `/{prefix}-{cluster}`.
    prefix: String,
}

impl CloudWatchLookup {
    pub fn new(client: aws_sdk_cloudwatchlogs::Client, prefix: String) -> CloudWatchLookup {
        CloudWatchLookup { client, prefix }
    }
}

impl LastEventLookup for CloudWatchLookup {
    fn last_event<'a>(
        &'a self,
        key: &'a ContainerKey,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Option<LastEvent>, LookupError>> + Send + 'a>,
    > {
        Box::pin(async move {
            let group = crate::names::log_group_name(&self.prefix, &key.cluster);
            let last =
                last_shipped_from_cloudwatch(&self.client, &group, &key.log_stream_name()).await?;
            Ok(last.map(|last| LastEvent {
                timestamp_ms: last.timestamp_ms,
                message: last.message,
            }))
        })
    }
}

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

//! The last event of a stream as CloudWatch stored it, for a follower that
//! has no checkpoint (SPEC §4), the client it asks with, and the rate
//! limiter every such lookup of the process shares ([`LookupLimiter`]).
//! The follower receives it as a [`crate::logs::LastEventLookup`]
//! ([`CloudWatchLookup`], wired by `app`), so `logs` never imports this
//! sink. May import `publish::aws`, `cloudwatch::retry`, and the interface
//! types of `logs`.
//!
//! Why a limiter: `GetLogEvents` allows about 25 requests per second per
//! account and region (CloudWatch Logs quotas), shared with every other
//! reader of the account. Without one, a start without checkpoints (an
//! in-memory spool, a new spool directory) asks for every container's last
//! event at once, is throttled, and used to read each container from its
//! first line: a duplicate flood (issue 9).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::destination::LogDestinations;
use super::retry::{Action, LogsError, classify};
use crate::config::LogRoute;
use crate::logs::{LastEvent, LastEventLookup, LookupError};
use crate::publish::aws::{AwsOptions, load_sdk_config};
use crate::record::ContainerKey;

/// A token bucket of `GetLogEvents` requests, shared by every follower of
/// the process (and meant for the sink's own recovery lookups too: clone
/// it). Up to `per_second` requests may go at once after a quiet second;
/// beyond that they are spaced `1 s / per_second` apart. Cloning shares
/// the bucket.
///
/// A waiter reserves its turn when it starts waiting (GCRA, "virtual
/// scheduling"): waiters are served in the order they came, and one that is
/// cancelled while waiting leaves its turn unused rather than letting
/// another jump the queue.
#[derive(Clone, Debug)]
pub struct LookupLimiter {
    inner: Arc<LimiterInner>,
}

#[derive(Debug)]
struct LimiterInner {
    per_second: u32,
    /// Between two requests at the sustained rate.
    interval: Duration,
    /// How far ahead of the sustained rate a burst may run.
    burst: Duration,
    /// The theoretical time of the next request at the sustained rate.
    next: Mutex<Option<Instant>>,
}

impl LookupLimiter {
    /// At most `per_second` requests a second (at least one).
    pub fn new(per_second: u32) -> LookupLimiter {
        let per_second = per_second.max(1);
        let interval = Duration::from_secs(1) / per_second;
        LookupLimiter {
            inner: Arc::new(LimiterInner {
                per_second,
                interval,
                burst: interval * (per_second - 1),
                next: Mutex::new(None),
            }),
        }
    }

    /// The sustained rate.
    pub fn per_second(&self) -> u32 {
        self.inner.per_second
    }

    /// Waits for the next request's turn.
    pub async fn wait(&self) {
        let at = {
            let mut next = self
                .inner
                .next
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let now = Instant::now();
            let theoretical = next.map_or(now, |t| t.max(now));
            *next = Some(theoretical + self.inner.interval);
            theoretical
                .checked_sub(self.inner.burst)
                .map_or(now, |at| at.max(now))
        };
        tokio::time::sleep_until(at).await;
    }
}

/// The follower's fallback for streams without a checkpoint: the
/// CloudWatch stream's last stored event ([`last_shipped_from_cloudwatch`]),
/// each request paced by the process's [`LookupLimiter`].
pub struct CloudWatchLookup {
    /// Each route's groups and client (the stream is asked for where its
    /// route sends it).
    destinations: LogDestinations,
    limiter: LookupLimiter,
}

impl CloudWatchLookup {
    pub fn new(destinations: LogDestinations, limiter: LookupLimiter) -> CloudWatchLookup {
        CloudWatchLookup {
            destinations,
            limiter,
        }
    }

    /// The limiter its requests wait for (shared: a clone).
    pub fn limiter(&self) -> LookupLimiter {
        self.limiter.clone()
    }
}

impl LastEventLookup for CloudWatchLookup {
    fn last_event<'a>(
        &'a self,
        key: &'a ContainerKey,
        route: &'a str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Option<LastEvent>, LookupError>> + Send + 'a>,
    > {
        Box::pin(async move {
            let (_, destination) = self.destinations.for_route(route);
            let group = destination.naming.group(&key.cluster);
            let last = last_shipped_paced(
                &destination.client,
                &group,
                &key.log_stream_name(),
                Some(&self.limiter),
            )
            .await
            .map_err(lookup_error)?;
            Ok(last.map(|last| LastEvent {
                timestamp_ms: last.timestamp_ms,
                message: last.message,
            }))
        })
    }
}

/// What the follower does with a failed lookup: throttling, 5xx and
/// network errors heal by waiting (retried while the pod lives); a refusal
/// about the account (AccessDenied, a KMS key, credentials) or an invalid
/// request does not, and the follower starts from now and says so.
fn lookup_error(error: LogsError) -> LookupError {
    let transient = matches!(
        error,
        LogsError::Throttled { .. } | LogsError::Server { .. } | LogsError::Network { .. }
    );
    debug_assert!(error.action() != Action::Recreate, "answered as None");
    if transient {
        LookupError::Transient(Box::new(error))
    } else {
        LookupError::Permanent(Box::new(error))
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

/// Every route's destination with clients from the environment (region
/// default `default_region`), configured like the sink's: for
/// [`CloudWatchLookup`]. `routes` as [`crate::config::LogsConfig::destinations`]
/// lists them, the default first.
pub async fn logs_destinations(
    routes: &[LogRoute],
    default_region: &str,
    options: &AwsOptions,
) -> LogDestinations {
    LogDestinations::load(routes, &load_sdk_config(default_region, options).await).await
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
    last_shipped_paced(client, group, stream, None).await
}

/// [`last_shipped_from_cloudwatch`], each request (every page) waiting for
/// `limiter` first.
pub async fn last_shipped_paced(
    client: &aws_sdk_cloudwatchlogs::Client,
    group: &str,
    stream: &str,
    limiter: Option<&LookupLimiter>,
) -> Result<Option<LastShipped>, LogsError> {
    let mut token: Option<String> = None;
    // GetLogEvents may answer a page without events while older ones exist;
    // following the backward token reaches them.
    for _ in 0..MAX_EMPTY_PAGES {
        if let Some(limiter) = limiter {
            limiter.wait().await;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_limiter_lets_a_burst_through_then_spaces_requests() {
        let limiter = LookupLimiter::new(10);
        let start = Instant::now();
        for _ in 0..10 {
            limiter.wait().await;
        }
        assert_eq!(Instant::now(), start, "a quiet bucket lets 10 go at once");
        // Then one per 100 ms, the sustained rate, shared by every clone.
        let other = limiter.clone();
        for i in 1..=20u32 {
            if i % 2 == 0 {
                limiter.wait().await;
            } else {
                other.wait().await;
            }
            assert_eq!(Instant::now() - start, Duration::from_millis(100) * i);
        }
        // A quiet second refills the bucket.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let refilled = Instant::now();
        for _ in 0..10 {
            limiter.wait().await;
        }
        assert_eq!(Instant::now(), refilled);
        limiter.wait().await;
        assert_eq!(Instant::now() - refilled, Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn many_waiters_at_once_get_the_rate_not_more() {
        let limiter = LookupLimiter::new(4);
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..40 {
            let limiter = limiter.clone();
            tasks.spawn(async move {
                limiter.wait().await;
                Instant::now()
            });
        }
        let mut times = Vec::new();
        while let Some(at) = tasks.join_next().await {
            times.push(at.unwrap() - start);
        }
        times.sort();
        // 4 at once, then 4 a second: 40 take 9 s, never fewer.
        assert_eq!(times[3], Duration::ZERO);
        assert_eq!(times[4], Duration::from_millis(250));
        assert_eq!(times[39], Duration::from_millis(250) * 36);
        for window in times.windows(5) {
            assert!(
                window[4] - window[0] >= Duration::from_millis(250),
                "five requests within a quarter second: {window:?}"
            );
        }
    }

    #[test]
    fn throttling_heals_an_access_denial_does_not() {
        use super::super::retry::classify_answer;
        let of = |status, code: &str| {
            lookup_error(classify_answer(
                "GetLogEvents",
                Some(status),
                code.into(),
                "m".into(),
            ))
        };
        assert!(matches!(
            of(400, "ThrottlingException"),
            LookupError::Transient(_)
        ));
        assert!(matches!(
            of(503, "ServiceUnavailableException"),
            LookupError::Transient(_)
        ));
        assert!(matches!(
            of(400, "AccessDeniedException"),
            LookupError::Permanent(_)
        ));
        assert!(matches!(
            of(400, "InvalidParameterException"),
            LookupError::Permanent(_)
        ));
    }
}

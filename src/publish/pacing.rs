//! Pacing shared by the SNS and CloudWatch Logs publishers: a sleep that
//! ends at shutdown, a limit of one retry warning a second, and the spool
//! gauges refreshed at most once an interval. May import the spool, the
//! metrics types and [`crate::backoff`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::spool::{Delivery, SpoolError, SpoolReader};

/// Sleeps `delay`; false if `shutdown` fired first.
pub async fn sleep_or_cancel(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = shutdown.cancelled() => false,
    }
}

/// Reads the next batch of the spool, retrying a retryable spool error after
/// a `backoff` delay (reported through `on_retry`, which logs and counts it).
/// `Ok(None)`: shutdown came first; `Err`: an error no retry can fix.
pub async fn read_batch(
    reader: &mut SpoolReader,
    max_records: usize,
    max_wait: Duration,
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
    on_retry: impl Fn(&SpoolError),
) -> Result<Option<Vec<Delivery>>, SpoolError> {
    loop {
        let read = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            read = reader.next_batch_async(max_records, max_wait) => read,
        };
        match read {
            Ok(deliveries) => return Ok(Some(deliveries)),
            Err(err) if err.is_retryable() => {
                on_retry(&err);
                if !sleep_or_cancel(backoff.next_delay(), shutdown).await {
                    return Ok(None);
                }
            }
            Err(err) => return Err(err),
        }
    }
}

/// At most one warning a second across many concurrent requests: an outage
/// failing hundreds of requests at once logs one line a second, the rest at
/// debug level.
#[derive(Debug)]
pub struct WarningLimiter {
    started: Instant,
    /// Milliseconds since `started` (plus one second) of the last warning.
    last: AtomicU64,
}

impl WarningLimiter {
    pub fn new() -> Self {
        WarningLimiter {
            started: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// Whether this caller may warn now; claims the second if so.
    pub fn should_warn(&self) -> bool {
        let now = self.started.elapsed().as_millis() as u64 + 1_000;
        let last = self.last.load(Ordering::Relaxed);
        now >= last + 1_000
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

impl Default for WarningLimiter {
    fn default() -> Self {
        Self::new()
    }
}

/// One spool's gauges of `/metrics` (bytes, pending records, age of the
/// oldest unacknowledged record), refreshed at most every `interval`.
pub struct SpoolGauges {
    interval: Duration,
    last: Option<Instant>,
    bytes: Gauge,
    records: Gauge,
    oldest_seconds: Gauge,
}

impl SpoolGauges {
    pub fn new(interval: Duration, bytes: &Gauge, records: &Gauge, oldest_seconds: &Gauge) -> Self {
        SpoolGauges {
            interval,
            last: None,
            bytes: bytes.clone(),
            records: records.clone(),
            oldest_seconds: oldest_seconds.clone(),
        }
    }

    /// How often the gauges are refreshed.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Reads the spool's stats if `interval` passed (or `force`).
    pub fn update(&mut self, reader: &SpoolReader, force: bool) {
        if !force && self.last.is_some_and(|last| last.elapsed() < self.interval) {
            return;
        }
        self.last = Some(Instant::now());
        let stats = reader.stats();
        let age = stats
            .oldest_unacked
            .and_then(|oldest| SystemTime::now().duration_since(oldest).ok())
            .map_or(0, |age| age.as_secs());
        self.bytes
            .set(i64::try_from(stats.bytes).unwrap_or(i64::MAX));
        self.records
            .set(i64::try_from(stats.pending_records).unwrap_or(i64::MAX));
        self.oldest_seconds
            .set(i64::try_from(age).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_a_second() {
        let limiter = WarningLimiter::new();
        assert!(limiter.should_warn());
        assert!(
            !limiter.should_warn(),
            "a second warning within the second is refused"
        );
    }

    #[test]
    fn gauges_follow_the_spool() {
        let spool = crate::spool::Spool::in_memory(1 << 20);
        spool.writer().append(b"record").unwrap();
        let reader = spool.reader().unwrap();
        let (bytes, records, oldest) = (Gauge::default(), Gauge::default(), Gauge::default());
        let mut gauges = SpoolGauges::new(Duration::from_secs(3600), &bytes, &records, &oldest);
        gauges.update(&reader, false);
        assert_eq!(records.get(), 1);
        assert!(bytes.get() > 0);
        spool.writer().append(b"another").unwrap();
        gauges.update(&reader, false);
        assert_eq!(records.get(), 1, "not refreshed before the interval");
        gauges.update(&reader, true);
        assert_eq!(records.get(), 2);
    }
}

//! Retry delays: exponential with "equal jitter", capped, reset after success.
//!
//! One policy serves every retry loop (watches, log follows, AWS requests),
//! so "a hot loop" (SPEC §7) cannot appear in one place and not another.
//! Each delay is drawn uniformly from `[bound/2, bound]` of the exponential
//! bound (the "equal jitter" of the AWS Architecture Blog's "Exponential
//! Backoff and Jitter"): the random half spreads the retries of many watchers
//! that failed together, which is what a restarted API server sees, and the
//! fixed half keeps a retry from ever coming back immediately (full jitter,
//! `[0, bound]`, can draw zero).
//!
//! Imports nothing of kubeherald; every retry loop uses it.

use std::time::Duration;

/// Delays for one retry loop. Not shared between loops.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    /// Failures since the last success.
    failures: u32,
}

impl Backoff {
    /// SPEC §3: transient errors back off with jitter, capped at about 30 s.
    pub fn for_api_server() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(30))
    }

    pub fn new(initial: Duration, max: Duration) -> Self {
        assert!(
            !initial.is_zero() && initial <= max,
            "backoff needs 0 < initial <= max"
        );
        Self {
            initial,
            max,
            failures: 0,
        }
    }

    /// The upper bound of the next delay: `initial * 2^failures`, capped.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Records a failure and returns how long to wait before the next try:
    /// uniformly random in `[ceiling/2, ceiling]`. Half the bound is kept as
    /// a floor so that a retry never comes back immediately.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let floor = ceiling / 2;
        let spread = (ceiling - floor).as_millis() as u64;
        floor + Duration::from_millis(fastrand::u64(0..=spread))
    }

    /// Records a failure like [`Backoff::next_delay`] and honours a server's
    /// `Retry-After` (HTTP 429/503): the delay is at least `retry_after`,
    /// but never more than `cap` (a server asking for an hour must not park
    /// a loop for an hour: SPEC §3 caps retries at about 30 s). Without a
    /// `Retry-After` it is the plain jittered delay.
    pub fn delay_with_retry_after(
        &mut self,
        retry_after: Option<Duration>,
        cap: Duration,
    ) -> Duration {
        let delay = self.next_delay();
        match retry_after {
            Some(after) => delay.max(after).min(cap),
            None => delay,
        }
    }

    /// Records a success: the next failure starts from `initial` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_within_jitter_bounds_and_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let bounds = [100, 200, 400, 800, 1600, 2000, 2000, 2000];
        for ceiling in bounds {
            let ceiling = Duration::from_millis(ceiling);
            assert_eq!(backoff.ceiling(), ceiling);
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
        }
        assert_eq!(backoff.failures(), bounds.len() as u32);
    }

    #[test]
    fn never_zero_and_never_past_the_cap_after_many_failures() {
        let mut backoff = Backoff::for_api_server();
        for _ in 0..10_000 {
            let delay = backoff.next_delay();
            assert!(delay >= Duration::from_millis(250));
            assert!(delay <= Duration::from_secs(30));
        }
    }

    #[test]
    fn reset_starts_over() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        for _ in 0..5 {
            backoff.next_delay();
        }
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(100));
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn retry_after_is_honoured_within_the_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let cap = Duration::from_secs(30);
        assert_eq!(
            backoff.delay_with_retry_after(Some(Duration::from_secs(5)), cap),
            Duration::from_secs(5),
            "longer than the jittered delay: Retry-After wins"
        );
        assert_eq!(
            backoff.delay_with_retry_after(Some(Duration::from_secs(3600)), cap),
            cap,
            "never past the cap"
        );
        let delay = backoff.delay_with_retry_after(Some(Duration::ZERO), cap);
        assert!(
            delay >= Duration::from_millis(200),
            "{delay:?}: the jittered delay stays the floor"
        );
        let delay = backoff.delay_with_retry_after(None, cap);
        assert!(delay >= Duration::from_millis(400) && delay <= Duration::from_millis(800));
        assert_eq!(backoff.failures(), 4, "each call records a failure");
    }

    #[test]
    fn jitter_spreads_delays() {
        let delays: std::collections::BTreeSet<Duration> = (0..50)
            .map(|_| Backoff::new(Duration::from_secs(10), Duration::from_secs(10)).next_delay())
            .collect();
        assert!(
            delays.len() > 10,
            "delays of many loops should differ: {delays:?}"
        );
    }
}

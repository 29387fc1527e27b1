//! Adaptive request concurrency, shared by the SNS and CloudWatch Logs sinks
//! (SPEC §9: "requests in flight adapt to observed latency and throttling").
//!
//! A fixed window of 256 requests keeps 256 requests in flight against an
//! endpoint that cannot serve them: its latency grows with the queue until
//! requests time out, are retried, and throughput collapses. Instead the
//! number of requests allowed in flight (the *limit*) follows the
//! endpoint, as Vector's adaptive request concurrency (ARC) does and TCP's
//! congestion control before it:
//!
//! - Round-trip times are averaged per *window* (one baseline RTT long, at
//!   least [`MIN_WINDOW`]). The *baseline* is the endpoint's RTT without a
//!   queue: the lowest window mean seen (TCP Vegas' and BBR's minimum RTT;
//!   Vector's moving average follows a growing queue up and lets the limit
//!   creep until requests time out). At the end of a window the limit is
//!   - **decreased** to [`DECREASE_RATIO`] of itself if a response in the
//!     window was back-pressure (throttling, a 5xx, a timeout), or if the
//!     window's mean RTT is more than [`RTT_TOLERANCE`] above the baseline
//!     (the endpoint queues requests);
//!   - **increased** if the window used the whole limit (otherwise the
//!     limit is not what holds throughput back, and raising it would only
//!     let a later burst overrun the endpoint): doubled in slow start, else
//!     by one plus an eighth. Slow start lasts from the start to the first
//!     decrease, and after a run of decreases (an outage) up to
//!     [`DECREASE_RATIO`] of the limit the run began at (TCP's `ssthresh`),
//!     so a 150 ms endpoint is back at a limit of 256 about a second after
//!     it recovers (Vector's plain +1 per window would take 40 s);
//! - every [`PROBE_INTERVAL`] the baseline is measured again (BBR's
//!   ProbeRTT): the limit drops to a quarter until the requests in flight
//!   fit it, the responses of requests sent before are skipped, the mean of
//!   the next ones is the new baseline, and the limit goes back. An
//!   endpoint that became slower for good is learnt within one interval,
//!   and a baseline taken while the endpoint already queued is corrected.
//!   It costs about one round trip at a quarter of the limit per interval;
//! - back-pressure windows do not move the baseline (a throttle answer is
//!   fast, and would make the endpoint look faster than it is).
//!
//! The limit stays within 1 and the configured `max_in_flight`. The
//! decision is a plain state machine ([`Aimd`], tested on explicit
//! instants); [`AdaptiveConcurrency`] wraps it with permits and metrics.
//!
//! May import the metrics.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

use crate::metrics::{SinkLabels, metrics};

/// The shortest averaging window: loopback endpoints answer in well under
/// a millisecond, and a window of a few responses is only noise.
pub const MIN_WINDOW: Duration = Duration::from_millis(50);
/// Multiplicative decrease on congestion (Vector's `decrease_ratio`).
pub const DECREASE_RATIO: f64 = 0.9;
/// How far above the baseline a window's mean RTT may be before it counts
/// as queueing: half a round trip's worth of queue.
pub const RTT_TOLERANCE: f64 = 0.5;
/// How often the baseline is measured again (BBR: 10 s).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// The limit a sink starts with, before slow start finds the endpoint's.
pub const INITIAL_LIMIT: usize = 8;

/// What one response said about the endpoint's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Answered (successfully, or with an error that is not about load).
    Answered,
    /// Throttled, a 5xx, or no answer in time: too many requests.
    BackPressure,
}

impl Signal {
    /// The signal of a request's outcome, by the failure's metric reason
    /// (both sinks' errors name throttling, server errors and network
    /// failures alike); `None`: it succeeded.
    pub fn of_failure(reason: Option<&str>) -> Signal {
        match reason {
            Some("throttled" | "server" | "network") => Signal::BackPressure,
            _ => Signal::Answered,
        }
    }
}

/// The limit's state machine. See the module docs.
#[derive(Debug)]
pub struct Aimd {
    limit: usize,
    max: usize,
    in_flight: usize,
    /// Slow start goes on while the limit is below this.
    slow_start_until: usize,
    /// The last window ended in a decrease.
    decreasing: bool,
    /// The lowest window mean RTT since the last probe (seconds).
    baseline: Option<f64>,
    /// The last window's mean RTT (seconds).
    last_rtt: Option<f64>,
    window: Window,
    probe: Probe,
}

/// The baseline's re-measurement. See the module docs.
#[derive(Debug)]
enum Probe {
    /// The last probe (or the start) was at this instant.
    Idle { since: Instant },
    /// The limit is a quarter of `restore`; waiting for the requests in
    /// flight to fit it.
    Draining { restore: usize },
    /// Skipping `skip` responses of requests sent before, then averaging
    /// `samples` more.
    Measuring {
        restore: usize,
        skip: usize,
        samples: usize,
        rtt_sum: f64,
        taken: usize,
    },
}

#[derive(Debug)]
struct Window {
    started: Instant,
    rtt_sum: f64,
    responses: u32,
    back_pressure: bool,
    /// The whole limit was in use at some moment of the window.
    limit_reached: bool,
}

impl Window {
    fn new(now: Instant) -> Window {
        Window {
            started: now,
            rtt_sum: 0.0,
            responses: 0,
            back_pressure: false,
            limit_reached: false,
        }
    }
}

impl Aimd {
    /// A limit between 1 and `max`, starting at [`INITIAL_LIMIT`] (or `max`).
    pub fn new(max: usize, now: Instant) -> Aimd {
        let max = max.max(1);
        Aimd {
            limit: INITIAL_LIMIT.min(max),
            max,
            in_flight: 0,
            slow_start_until: max,
            decreasing: false,
            baseline: None,
            last_rtt: None,
            window: Window::new(now),
            probe: Probe::Idle { since: now },
        }
    }

    /// Requests allowed in flight now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The last window's mean round-trip time, once one ended.
    pub fn rtt(&self) -> Option<Duration> {
        self.last_rtt.map(Duration::from_secs_f64)
    }

    /// Takes a slot if one is free.
    pub fn try_start(&mut self) -> bool {
        if self.in_flight >= self.limit {
            self.window.limit_reached = true;
            return false;
        }
        self.in_flight += 1;
        if self.in_flight >= self.limit {
            self.window.limit_reached = true;
        }
        true
    }

    /// A slot is free again (its request ended, however).
    pub fn end(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.measure_once_drained();
    }

    /// A probe starts measuring once the requests in flight fit its limit.
    fn measure_once_drained(&mut self) {
        if let Probe::Draining { restore } = self.probe
            && self.in_flight <= self.limit
        {
            self.probe = Probe::Measuring {
                restore,
                skip: self.in_flight,
                samples: self.limit.max(4),
                rtt_sum: 0.0,
                taken: 0,
            };
        }
    }

    /// A response (or a timeout) came `rtt` after its request was sent.
    pub fn observe(&mut self, rtt: Duration, signal: Signal, now: Instant) {
        match &mut self.probe {
            Probe::Idle { since } => {
                if now.duration_since(*since) >= PROBE_INTERVAL && self.baseline.is_some() {
                    let restore = self.limit;
                    self.limit = (restore / 4).max(1);
                    self.probe = Probe::Draining { restore };
                    self.measure_once_drained();
                    return;
                }
            }
            Probe::Draining { .. } => return,
            Probe::Measuring {
                restore,
                skip,
                samples,
                rtt_sum,
                taken,
            } => {
                if signal == Signal::BackPressure {
                    // No baseline out of throttle answers: back to normal,
                    // and the decrease happens below.
                    self.limit = *restore;
                    self.probe = Probe::Idle { since: now };
                } else if *skip > 0 {
                    *skip -= 1;
                    return;
                } else {
                    *rtt_sum += rtt.as_secs_f64();
                    *taken += 1;
                    if *taken < *samples {
                        return;
                    }
                    self.baseline = Some(*rtt_sum / *taken as f64);
                    self.limit = *restore;
                    self.probe = Probe::Idle { since: now };
                    self.window = Window::new(now);
                    return;
                }
            }
        }
        let window = &mut self.window;
        window.responses += 1;
        window.rtt_sum += rtt.as_secs_f64();
        window.back_pressure |= signal == Signal::BackPressure;
        let length = self
            .baseline
            .map_or(Duration::ZERO, Duration::from_secs_f64)
            .max(MIN_WINDOW);
        if now.duration_since(window.started) >= length {
            self.adjust(now);
        }
    }

    fn adjust(&mut self, now: Instant) {
        let window = std::mem::replace(&mut self.window, Window::new(now));
        let mean = window.rtt_sum / f64::from(window.responses.max(1));
        self.last_rtt = Some(mean);
        let queueing = self
            .baseline
            .is_some_and(|baseline| mean > baseline * (1.0 + RTT_TOLERANCE));
        if window.back_pressure || queueing {
            if !self.decreasing {
                self.slow_start_until = ((self.limit as f64 * DECREASE_RATIO) as usize).max(1);
            }
            self.decreasing = true;
            self.limit = ((self.limit as f64 * DECREASE_RATIO) as usize).max(1);
        } else {
            self.decreasing = false;
            if window.limit_reached {
                let grown = if self.limit < self.slow_start_until {
                    (self.limit * 2).min(self.slow_start_until)
                } else {
                    self.limit + 1 + self.limit / 8
                };
                self.limit = grown.min(self.max);
            }
        }
        if !window.back_pressure {
            self.baseline = Some(self.baseline.map_or(mean, |baseline| baseline.min(mean)));
        }
        // The window that starts now sees the limit it ends with in use.
        self.window.limit_reached = self.in_flight >= self.limit;
    }
}

/// The limit of one sink, with permits for its requests and its metrics
/// (`request_concurrency_limit`, `requests_in_flight`, `request_rtt_seconds`,
/// labelled by sink).
pub struct AdaptiveConcurrency {
    state: Mutex<Aimd>,
    /// A permit was returned or the limit grew.
    freed: Notify,
    labels: SinkLabels,
    /// This sink's gauges, looked up once: they are set on every request.
    limit_gauge: Gauge,
    in_flight_gauge: Gauge,
    rtt_gauge: Gauge<f64, AtomicU64>,
}

impl std::fmt::Debug for AdaptiveConcurrency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdaptiveConcurrency")
            .field("sink", &self.labels.sink)
            .field("state", &*self.lock())
            .finish()
    }
}

/// One request slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit {
    owner: Arc<AdaptiveConcurrency>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let state = {
            let mut state = self.owner.lock();
            state.end();
            (state.limit(), state.in_flight())
        };
        self.owner.publish(state.0, state.1);
        self.owner.freed.notify_one();
    }
}

impl AdaptiveConcurrency {
    /// The limit of `sink` (a metric label: `sns`, `cloudwatch`), at most `max`.
    pub fn new(sink: &str, max: usize) -> Arc<AdaptiveConcurrency> {
        let labels = SinkLabels { sink: sink.into() };
        let m = metrics();
        let concurrency = AdaptiveConcurrency {
            state: Mutex::new(Aimd::new(max, Instant::now())),
            freed: Notify::new(),
            limit_gauge: m.request_concurrency_limit.get_or_create(&labels).clone(),
            in_flight_gauge: m.requests_in_flight.get_or_create(&labels).clone(),
            rtt_gauge: m.request_rtt_seconds.get_or_create(&labels).clone(),
            labels,
        };
        let limit = concurrency.lock().limit();
        concurrency.publish(limit, 0);
        Arc::new(concurrency)
    }

    fn lock(&self) -> MutexGuard<'_, Aimd> {
        // The state is consistent after every call: a panic elsewhere
        // cannot leave it half-changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, limit: usize, in_flight: usize) {
        self.limit_gauge.set(limit as i64);
        self.in_flight_gauge.set(in_flight as i64);
    }

    /// A slot now, if one is free.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let (limit, in_flight) = {
            let mut state = self.lock();
            if !state.try_start() {
                return None;
            }
            (state.limit(), state.in_flight())
        };
        self.publish(limit, in_flight);
        Some(Permit {
            owner: Arc::clone(self),
        })
    }

    /// Waits for a slot.
    pub async fn acquire(self: &Arc<Self>) -> Permit {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check: a slot freed in between wakes it.
            freed.as_mut().enable();
            if let Some(permit) = self.try_acquire() {
                return permit;
            }
            freed.await;
        }
    }

    /// Requests allowed in flight now.
    pub fn limit(&self) -> usize {
        self.lock().limit()
    }

    /// A request sent `rtt` ago was answered (or timed out) with `signal`.
    pub fn observe(&self, rtt: Duration, signal: Signal) {
        let (before, limit, in_flight, smoothed) = {
            let mut state = self.lock();
            let before = state.limit();
            state.observe(rtt, signal, Instant::now());
            (before, state.limit(), state.in_flight(), state.rtt())
        };
        self.publish(limit, in_flight);
        if let Some(rtt) = smoothed {
            self.rtt_gauge.set(rtt.as_secs_f64());
        }
        // A larger limit admits as many more waiters as it grew by.
        for _ in before..limit {
            self.freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_millis(150);

    /// Keeps the limit in use, every request answered after `rtt(in
    /// flight)`, for `windows` windows; returns the limits seen.
    fn run(aimd: &mut Aimd, now: &mut Instant, windows: usize, rtt: impl Fn(usize) -> Duration) {
        for _ in 0..windows {
            while aimd.try_start() {}
            let answered = aimd.in_flight();
            let latency = rtt(answered);
            *now += latency;
            for _ in 0..answered {
                aimd.end();
                aimd.observe(latency, Signal::Answered, *now);
            }
        }
    }

    #[test]
    fn slow_start_doubles_up_to_the_maximum_at_a_steady_rtt() {
        let mut now = Instant::now();
        let mut aimd = Aimd::new(256, now);
        assert_eq!(aimd.limit(), INITIAL_LIMIT);
        run(&mut aimd, &mut now, 12, |_| RTT);
        assert_eq!(aimd.limit(), 256);
        assert_eq!(aimd.rtt(), Some(RTT));
    }

    #[test]
    fn back_pressure_decreases_and_ends_slow_start() {
        let mut now = Instant::now();
        let mut aimd = Aimd::new(256, now);
        run(&mut aimd, &mut now, 12, |_| RTT);
        assert!(aimd.try_start());
        now += RTT;
        aimd.end();
        aimd.observe(RTT, Signal::BackPressure, now);
        assert_eq!(aimd.limit(), 230, "256 × 0.9");
        // At the slow-start threshold already: additive-plus, not doubling.
        run(&mut aimd, &mut now, 1, |_| RTT);
        assert_eq!(aimd.limit(), 256, "230 + 1 + 230 / 8, at most the maximum");
    }

    #[test]
    fn an_unused_limit_does_not_grow() {
        let mut now = Instant::now();
        let mut aimd = Aimd::new(256, now);
        for _ in 0..20 {
            assert!(aimd.try_start());
            now += RTT;
            aimd.end();
            aimd.observe(RTT, Signal::Answered, now);
        }
        assert_eq!(aimd.limit(), INITIAL_LIMIT);
    }

    #[test]
    fn a_queueing_endpoint_holds_the_limit_near_its_capacity() {
        // 4 workers of 100 ms: latency grows with the queue beyond 4.
        let capacity = 4;
        let service = Duration::from_millis(100);
        let queueing = |in_flight: usize| service * in_flight.div_ceil(capacity) as u32;
        let mut now = Instant::now();
        let mut aimd = Aimd::new(256, now);
        run(&mut aimd, &mut now, 200, queueing);
        let mut limits = Vec::new();
        for _ in 0..100 {
            run(&mut aimd, &mut now, 1, queueing);
            limits.push(aimd.limit());
        }
        let worst = *limits.iter().max().unwrap();
        assert!(
            worst <= 4 * capacity,
            "the limit kept the queue short (latency ≤ 4 × service): {limits:?}"
        );
        assert!(
            limits.iter().all(|&l| l >= capacity / 2),
            "and the workers busy: {limits:?}"
        );
    }

    #[test]
    fn recovers_within_a_few_seconds_after_an_outage() {
        let mut now = Instant::now();
        let mut aimd = Aimd::new(256, now);
        run(&mut aimd, &mut now, 12, |_| RTT);
        // Throttled until the limit is down to one request.
        for _ in 0..1000 {
            if aimd.limit() == 1 {
                break;
            }
            assert!(aimd.try_start());
            now += RTT;
            aimd.end();
            aimd.observe(RTT, Signal::BackPressure, now);
        }
        assert_eq!(aimd.limit(), 1);
        let recovering = now;
        while aimd.limit() < 256 {
            run(&mut aimd, &mut now, 1, |_| RTT);
        }
        let took = now - recovering;
        assert!(took < Duration::from_secs(3), "back at 256 after {took:?}");
    }

    #[test]
    fn an_endpoint_slower_for_good_is_learnt_at_the_next_probe() {
        let mut now = Instant::now();
        let mut aimd = Aimd::new(256, now);
        run(&mut aimd, &mut now, 12, |_| RTT);
        assert_eq!(aimd.limit(), 256);
        // Twice as slow, without a queue: at first it looks like queueing.
        run(&mut aimd, &mut now, 10, |_| RTT * 2);
        assert!(aimd.limit() < 256);
        // 60 s: the probe learnt the new round trip, the limit grew back.
        run(&mut aimd, &mut now, 200, |_| RTT * 2);
        assert_eq!(aimd.limit(), 256);
        assert_eq!(aimd.rtt(), Some(RTT * 2));
    }

    #[test]
    fn throttling_server_errors_and_timeouts_are_back_pressure() {
        use crate::publish::sns::retry::PublishError;
        let throttled = PublishError::Throttled {
            code: "Throttling".into(),
        };
        let server = PublishError::Server {
            status: 503,
            code: "ServiceUnavailable".into(),
        };
        let network = PublishError::Network {
            source: "timed out".into(),
        };
        let refused = PublishError::Refused {
            code: "AuthorizationError".into(),
            message: String::new(),
        };
        for load in [throttled, server, network] {
            assert_eq!(
                Signal::of_failure(Some(load.metric_label())),
                Signal::BackPressure,
                "{load}"
            );
        }
        assert_eq!(
            Signal::of_failure(Some(refused.metric_label())),
            Signal::Answered
        );
        assert_eq!(Signal::of_failure(None), Signal::Answered);
    }

    #[tokio::test]
    async fn permits_wait_for_a_free_slot_and_metrics_follow() {
        let limit = AdaptiveConcurrency::new("unit", 2);
        let first = limit.acquire().await;
        let _second = limit.acquire().await;
        assert!(limit.try_acquire().is_none());
        let waiting = {
            let limit = Arc::clone(&limit);
            tokio::spawn(async move { limit.acquire().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        let third = waiting.await.unwrap();
        let gauge = metrics()
            .requests_in_flight
            .get_or_create(&SinkLabels {
                sink: "unit".into(),
            })
            .get();
        assert_eq!(gauge, 2);
        drop(third);
    }
}

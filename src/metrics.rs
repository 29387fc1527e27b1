//! Prometheus metrics: one registry for the process, typed label sets, and
//! the names a dashboard can rely on (SPEC §6).
//!
//! Every notable condition is logged and counted; the counting half lives
//! here so names and labels are the same wherever a condition arises. Label
//! values are context names, kinds and fixed reason words: never an object
//! name, a URL with credentials, or anything unbounded.
//!
//! Imports nothing of kubeherald; every module that counts imports it.

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// (context, namespace, kind): one watch. The namespace tells apart the
/// watches of one context in the log forwarder's style (`cluster` +
/// `namespaces`), where every target shares the context's name.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabels {
    pub context: String,
    pub namespace: String,
    pub kind: String,
}

/// (context, namespace, kind, event_type): events observed or published.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub context: String,
    pub namespace: String,
    pub kind: String,
    pub event_type: String,
}

/// (context, namespace, kind, reason): restarts, re-lists and errors of one watch.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchReasonLabels {
    pub context: String,
    pub namespace: String,
    pub kind: String,
    pub reason: String,
}

/// (reason): publisher-wide conditions.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// (cluster): log lines of one cluster (the cluster name of its log group).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: String,
}

/// (cluster, reason): log lines CloudWatch rejected or kubeherald gave up.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterReasonLabels {
    pub cluster: String,
    pub reason: String,
}

/// (route, group): one log group of one `logs.routes` destination.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LogGroupLabels {
    pub route: String,
    pub group: String,
}

/// (route, group, reason): why a log group was parked.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LogGroupReasonLabels {
    pub route: String,
    pub group: String,
    pub reason: String,
}

/// (sink): one AWS sink (`sns`, `cloudwatch`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    pub sink: String,
}

/// Upper bounds of the event delay histograms, in seconds: fine below
/// SPEC §9's 50 ms, coarse up to an outage's minutes.
pub const DELAY_BUCKETS: [f64; 16] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// (context, reason): a condition of one context as a whole.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContextReasonLabels {
    pub context: String,
    pub reason: String,
}

/// Every metric kubeherald exposes.
pub struct Metrics {
    registry: Registry,
    /// Events read from the API (and synthesised by re-list diffs), spooled.
    pub events_observed: Family<EventLabels, Counter>,
    /// Events acknowledged by SNS (or written to stdout).
    pub events_published: Family<EventLabels, Counter>,
    /// Events whose body was trimmed or reduced to metadata to fit SNS's
    /// 256 KiB; `reason` is `trimmed`, `metadata-only` or `identity`.
    pub events_degraded: Family<WatchReasonLabels, Counter>,
    /// Watch streams restarted from the last resourceVersion, by reason
    /// (`timeout`, `closed`, `idle`, `error`).
    pub watch_restarts: Family<WatchReasonLabels, Counter>,
    /// Fresh LISTs after the first one, by reason (`expired`, `error`, `restart`).
    pub relists: Family<WatchReasonLabels, Counter>,
    /// Errors of one watch that it retries (`unreachable`, `forbidden`,
    /// `not-served`, `cluster-scoped`, `http-5xx`, ...).
    pub watch_errors: Family<WatchReasonLabels, Counter>,
    /// Objects (LIST items, WATCH events or lines) that could not be read,
    /// skipped by their watch, by reason (`undecodable`, `no-uid`, `no-name`,
    /// `no-resource-version`, `not-an-object`, `bad-line`, `unknown-type`).
    pub objects_skipped: Family<WatchReasonLabels, Counter>,
    /// Resource events a `resources:` entry keeps from being published, by
    /// reason (`event_type`: not in its `event_types`; `ignored_changes`: a
    /// MODIFIED changing only paths of its `ignore_changes_in`).
    pub events_suppressed: Family<WatchReasonLabels, Counter>,
    /// 1 for a context reached without TLS verification, by reason
    /// (`plain-http`: an `http://` server; `skip-tls-verify`:
    /// `insecure-skip-tls-verify: true`).
    pub insecure_contexts: Family<ContextReasonLabels, Gauge>,
    /// Watch state stores closed and reopened after a storage error.
    pub state_reopens: Family<WatchLabels, Counter>,
    /// Events SNS would not take, kept as dead letters (or dropped without
    /// a spool directory), by reason (`invalid`, `refused`).
    pub events_dead_lettered: Family<ReasonLabels, Counter>,
    /// Dead letters put back into the events spool by a replay.
    pub dead_letters_replayed: Counter,
    /// Publish failures by reason (`throttled`, `server`, `network`,
    /// `entry-failed`, `rejected`, `undecodable`).
    pub publish_errors: Family<ReasonLabels, Counter>,
    /// Spool size on disk (or in memory), in bytes.
    pub spool_bytes: Gauge,
    /// The events spool's bound (its share of `spool.max_bytes`), in bytes.
    pub spool_max_bytes: Gauge,
    /// 1 while a watch is open and in sync, 0 while it lists, waits out an
    /// error or is stopped: a context failing for minutes shows as 0.
    pub watch_up: Family<WatchLabels, Gauge>,
    /// Records in the spool not yet acknowledged.
    pub spool_records: Gauge,
    /// Age of the oldest unpublished record, in seconds.
    pub oldest_unpublished_seconds: Gauge,
    /// Log lines accepted by CloudWatch Logs (or written to stdout).
    pub log_lines_shipped: Family<ClusterLabels, Counter>,
    /// UTF-8 message bytes of the shipped log lines.
    pub log_bytes_shipped: Family<ClusterLabels, Counter>,
    /// Log lines not shipped, by reason: CloudWatch's `too-old`, `too-new`,
    /// `expired` (rejectedLogEventsInfo), `invalid` (a put refused for good),
    /// `undecodable` (a spool record that is not a log line).
    pub log_lines_rejected: Family<ClusterReasonLabels, Counter>,
    /// Log lines over CloudWatch's per-event limit, shipped as several events.
    pub log_lines_split: Family<ClusterLabels, Counter>,
    /// Log lines read from the spool that were already shipped, not sent
    /// again, by how it was known: `checkpoint` (at or before the stream's
    /// shipped or accepted position), `cloudwatch` (found in the stream after
    /// an unclean stop).
    pub log_lines_deduplicated: Family<ClusterReasonLabels, Counter>,
    /// 1 while the cluster's log group is parked (refused for a reason
    /// retrying will not heal; its lines wait in the spool).
    pub log_group_parked: Family<LogGroupLabels, Gauge>,
    /// Times a log group was parked, by the error code that parked it.
    pub log_group_parks: Family<LogGroupReasonLabels, Counter>,
    /// Failed CloudWatch Logs requests by reason (`throttled`, `server`,
    /// `network`, `refused`, `not-found`, `invalid`, `retention`, `spool`,
    /// `write`).
    pub log_put_errors: Family<ReasonLabels, Counter>,
    /// Logs spool size on disk (or in memory), in bytes.
    pub log_spool_bytes: Gauge,
    /// The logs spool's bound (its share of `spool.max_bytes`), in bytes.
    pub log_spool_max_bytes: Gauge,
    /// Log lines in the logs spool not yet acknowledged.
    pub log_spool_records: Gauge,
    /// Age of the oldest log line not yet shipped, in seconds.
    pub log_oldest_unshipped_seconds: Gauge,
    /// Container log streams open now (follows and previous-instance reads).
    pub log_follows_open: Family<ClusterLabels, Gauge>,
    /// Container logs waiting for a slot under `max_streams_per_cluster`.
    pub log_follows_waiting: Family<ClusterLabels, Gauge>,
    /// Log streams reopened, by reason (`eof`, `broken`, `idle`, `yield`,
    /// `error`) and previous instances read after a restart (`restart`).
    pub log_follow_reconnects: Family<ClusterReasonLabels, Counter>,
    /// Lines read from the log API (skipped ones included).
    pub log_lines_read: Family<ClusterLabels, Counter>,
    /// Lines appended to the logs spool.
    pub log_lines_appended: Family<ClusterLabels, Counter>,
    /// Lines read again after a resume and skipped (already appended or shipped).
    pub log_lines_skipped: Family<ClusterLabels, Counter>,
    /// Lines without a parseable kubelet timestamp (kept with the previous one's).
    pub log_lines_unparsable_timestamp: Family<ClusterLabels, Counter>,
    /// Lines the follower could not collect, by reason: `too-large` counts
    /// lines; gap reasons (`rotated`) count an estimate from the instance's
    /// observed line rate, only where one is known.
    pub log_lines_lost: Family<ClusterReasonLabels, Counter>,
    /// Gaps in a container instance's log, each marked in its stream
    /// (`rotated`, `pod-deleted`, `previous-unavailable`, `instance-skipped`,
    /// `lookup-refused`).
    pub log_gaps: Family<ClusterReasonLabels, Counter>,
    /// Failed log requests of the follower, by reason (as `watch_errors`).
    pub log_follow_errors: Family<ClusterReasonLabels, Counter>,
    /// Requests the sink's adaptive concurrency allows in flight now.
    pub request_concurrency_limit: Family<SinkLabels, Gauge>,
    /// Requests of the sink on the wire now (a batch waiting out a retry
    /// backoff holds no slot).
    pub requests_in_flight: Family<SinkLabels, Gauge>,
    /// Mean round-trip time of the sink's requests over the last window.
    pub request_rtt_seconds: Family<SinkLabels, Gauge<f64, AtomicU64>>,
    /// From the watcher reading an event off the API server's answer to the
    /// publisher reading it from the spool.
    pub event_spool_delay_seconds: Histogram,
    /// From the watcher reading an event to SNS acknowledging it.
    pub event_publish_delay_seconds: Histogram,
}

impl Metrics {
    fn new() -> Self {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("kubeherald"),
            events_observed: Family::default(),
            events_published: Family::default(),
            events_degraded: Family::default(),
            watch_restarts: Family::default(),
            relists: Family::default(),
            watch_errors: Family::default(),
            objects_skipped: Family::default(),
            events_suppressed: Family::default(),
            events_dead_lettered: Family::default(),
            dead_letters_replayed: Counter::default(),
            state_reopens: Family::default(),
            insecure_contexts: Family::default(),
            publish_errors: Family::default(),
            spool_bytes: Gauge::default(),
            spool_max_bytes: Gauge::default(),
            watch_up: Family::default(),
            spool_records: Gauge::default(),
            oldest_unpublished_seconds: Gauge::default(),
            log_lines_shipped: Family::default(),
            log_bytes_shipped: Family::default(),
            log_lines_rejected: Family::default(),
            log_lines_split: Family::default(),
            log_lines_deduplicated: Family::default(),
            log_group_parked: Family::default(),
            log_group_parks: Family::default(),
            log_put_errors: Family::default(),
            log_spool_bytes: Gauge::default(),
            log_spool_max_bytes: Gauge::default(),
            log_spool_records: Gauge::default(),
            log_oldest_unshipped_seconds: Gauge::default(),
            log_follows_open: Family::default(),
            log_follows_waiting: Family::default(),
            log_follow_reconnects: Family::default(),
            log_lines_read: Family::default(),
            log_lines_appended: Family::default(),
            log_lines_skipped: Family::default(),
            log_lines_unparsable_timestamp: Family::default(),
            log_lines_lost: Family::default(),
            log_gaps: Family::default(),
            log_follow_errors: Family::default(),
            request_concurrency_limit: Family::default(),
            requests_in_flight: Family::default(),
            request_rtt_seconds: Family::default(),
            event_spool_delay_seconds: Histogram::new(DELAY_BUCKETS),
            event_publish_delay_seconds: Histogram::new(DELAY_BUCKETS),
        };
        // Families are handles to shared state: the registry holds clones.
        let registry = &mut metrics.registry;
        registry.register(
            "events_observed",
            "Resource events observed and spooled",
            metrics.events_observed.clone(),
        );
        registry.register(
            "events_published",
            "Resource events acknowledged by the sink",
            metrics.events_published.clone(),
        );
        registry.register(
            "events_degraded",
            "Events whose body was reduced to fit SNS's size limit",
            metrics.events_degraded.clone(),
        );
        registry.register(
            "watch_restarts",
            "Watch streams resumed from the last resourceVersion",
            metrics.watch_restarts.clone(),
        );
        registry.register(
            "relists",
            "Fresh LISTs after the first, by reason",
            metrics.relists.clone(),
        );
        registry.register(
            "watch_errors",
            "Retried errors of a watch, by reason",
            metrics.watch_errors.clone(),
        );
        registry.register(
            "events_dead_lettered",
            "Events SNS would not take, kept as dead letters, by reason",
            metrics.events_dead_lettered.clone(),
        );
        registry.register(
            "dead_letters_replayed",
            "Dead letters put back into the events spool",
            metrics.dead_letters_replayed.clone(),
        );
        registry.register(
            "objects_skipped",
            "Objects a watch could not read and skipped, by reason",
            metrics.objects_skipped.clone(),
        );
        registry.register(
            "events_suppressed",
            "Resource events not published by the kind's event_types or ignore_changes_in, by reason",
            metrics.events_suppressed.clone(),
        );
        registry.register(
            "insecure_contexts",
            "Contexts reached without TLS verification (1), by reason",
            metrics.insecure_contexts.clone(),
        );
        registry.register(
            "state_reopens",
            "Watch state stores reopened after a storage error",
            metrics.state_reopens.clone(),
        );
        registry.register(
            "publish_errors",
            "Publish failures, by reason",
            metrics.publish_errors.clone(),
        );
        registry.register(
            "spool_bytes",
            "Bytes held by the spool",
            metrics.spool_bytes.clone(),
        );
        registry.register(
            "spool_max_bytes",
            "Bound of the events spool, in bytes",
            metrics.spool_max_bytes.clone(),
        );
        registry.register(
            "watch_up",
            "1 while a watch is open and in sync",
            metrics.watch_up.clone(),
        );
        registry.register(
            "spool_records",
            "Records in the spool not yet acknowledged",
            metrics.spool_records.clone(),
        );
        registry.register(
            "oldest_unpublished_seconds",
            "Age of the oldest record not yet published",
            metrics.oldest_unpublished_seconds.clone(),
        );
        registry.register(
            "log_lines_shipped",
            "Log lines accepted by CloudWatch Logs or written to stdout",
            metrics.log_lines_shipped.clone(),
        );
        registry.register(
            "log_bytes_shipped",
            "Message bytes of the shipped log lines",
            metrics.log_bytes_shipped.clone(),
        );
        registry.register(
            "log_lines_rejected",
            "Log lines rejected by CloudWatch or given up, by reason",
            metrics.log_lines_rejected.clone(),
        );
        registry.register(
            "log_lines_split",
            "Log lines over the per-event limit, shipped in parts",
            metrics.log_lines_split.clone(),
        );
        registry.register(
            "log_lines_deduplicated",
            "Log lines already shipped that were not sent again, by how it was known (checkpoint, cloudwatch)",
            metrics.log_lines_deduplicated.clone(),
        );
        registry.register(
            "log_group_parked",
            "1 while the log group (of a route) is parked: its lines wait in the spool, other groups flow",
            metrics.log_group_parked.clone(),
        );
        registry.register(
            "log_group_parks",
            "Times a log group was parked, by the error code that parked it",
            metrics.log_group_parks.clone(),
        );
        registry.register(
            "log_put_errors",
            "Failed CloudWatch Logs requests, by reason",
            metrics.log_put_errors.clone(),
        );
        registry.register(
            "log_spool_max_bytes",
            "Bound of the logs spool, in bytes",
            metrics.log_spool_max_bytes.clone(),
        );
        registry.register(
            "log_spool_bytes",
            "Bytes held by the logs spool",
            metrics.log_spool_bytes.clone(),
        );
        registry.register(
            "log_spool_records",
            "Log lines in the logs spool not yet acknowledged",
            metrics.log_spool_records.clone(),
        );
        registry.register(
            "log_oldest_unshipped_seconds",
            "Age of the oldest log line not yet shipped",
            metrics.log_oldest_unshipped_seconds.clone(),
        );
        registry.register(
            "log_follows_open",
            "Container log streams open now",
            metrics.log_follows_open.clone(),
        );
        registry.register(
            "log_follows_waiting",
            "Container logs waiting for a stream slot",
            metrics.log_follows_waiting.clone(),
        );
        registry.register(
            "log_follow_reconnects",
            "Log streams reopened, by reason",
            metrics.log_follow_reconnects.clone(),
        );
        registry.register(
            "log_lines_read",
            "Log lines read from the API",
            metrics.log_lines_read.clone(),
        );
        registry.register(
            "log_lines_appended",
            "Log lines appended to the logs spool",
            metrics.log_lines_appended.clone(),
        );
        registry.register(
            "log_lines_skipped",
            "Log lines read again after a resume and skipped",
            metrics.log_lines_skipped.clone(),
        );
        registry.register(
            "log_lines_unparsable_timestamp",
            "Log lines without a parseable kubelet timestamp",
            metrics.log_lines_unparsable_timestamp.clone(),
        );
        registry.register(
            "log_lines_lost",
            "Log lines the follower could not collect, by reason (for gaps an estimate from the observed line rate, where known)",
            metrics.log_lines_lost.clone(),
        );
        registry.register(
            "log_gaps",
            "Gaps in a container log (lines not read), each marked in its stream, by reason",
            metrics.log_gaps.clone(),
        );
        registry.register(
            "log_follow_errors",
            "Failed log follower requests, by reason",
            metrics.log_follow_errors.clone(),
        );
        registry.register(
            "request_concurrency_limit",
            "Requests the sink's adaptive concurrency allows in flight",
            metrics.request_concurrency_limit.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Requests of the sink on the wire",
            metrics.requests_in_flight.clone(),
        );
        registry.register(
            "request_rtt_seconds",
            "Mean round-trip time of the sink's requests over the last window",
            metrics.request_rtt_seconds.clone(),
        );
        registry.register(
            "event_spool_delay_seconds",
            "From reading an event off the API server's answer to reading it from the spool",
            metrics.event_spool_delay_seconds.clone(),
        );
        registry.register(
            "event_publish_delay_seconds",
            "From reading an event off the API server's answer to its SNS acknowledgement",
            metrics.event_publish_delay_seconds.clone(),
        );
        metrics
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("encode metrics into a String");
        text
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl WatchLabels {
    pub fn event(&self, event_type: &str) -> EventLabels {
        EventLabels {
            context: self.context.clone(),
            namespace: self.namespace.clone(),
            kind: self.kind.clone(),
            event_type: event_type.to_owned(),
        }
    }

    pub fn reason(&self, reason: &str) -> WatchReasonLabels {
        WatchReasonLabels {
            context: self.context.clone(),
            namespace: self.namespace.clone(),
            kind: self.kind.clone(),
            reason: reason.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_appear_in_the_exposition_with_their_labels() {
        let labels = WatchLabels {
            context: "metrics-test-ctx".into(),
            namespace: "ns".into(),
            kind: "Pod".into(),
        };
        metrics()
            .events_observed
            .get_or_create(&labels.event("ADDED"))
            .inc_by(3);
        metrics()
            .relists
            .get_or_create(&labels.reason("expired"))
            .inc();
        let text = metrics().encode();
        assert!(
            text.contains(r#"kubeherald_events_observed_total{context="metrics-test-ctx",namespace="ns",kind="Pod",event_type="ADDED"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kubeherald_relists_total{context="metrics-test-ctx",namespace="ns",kind="Pod",reason="expired"} 1"#),
            "{text}"
        );
    }
}

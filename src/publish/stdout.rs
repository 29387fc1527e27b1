//! The stdout sinks, side by side: resource events and log lines as JSON
//! lines when no SNS topic or no CloudWatch is configured (SPEC §3, §4).
//! Both read the spool with [`read_batch`], write and flush a whole read,
//! then acknowledge it (and, for log lines, advance the checkpoints): a
//! failed write is retried whole, so a reader may see a line twice, never
//! lose one.
//!
//! May import `publish::pacing`, the sinks' configuration, message
//! attributes and counters, the spool, the record types and the checkpoints.

use std::collections::HashMap;
use std::io::Write;

use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backoff::Backoff;
use crate::logs::{Checkpoint, CheckpointStore, ContainerKey};
use crate::metrics::{ClusterLabels, EventLabels, metrics};
use crate::publish::PublisherError;
use crate::publish::cloudwatch::report as logs_report;
use crate::publish::cloudwatch::{LogPublisherError, LogPublisherOptions};
use crate::publish::pacing::{SpoolGauges, read_batch, sleep_or_cancel};
use crate::publish::sns::PublisherOptions;
use crate::publish::sns::message;
use crate::publish::sns::report as sns_report;
use crate::publish::sns::retry::PublishError;
use crate::record::{LogLine, ResourceEvent};
use crate::spool::{Delivery, SpoolReader};

// ---------------------------------------------------------------------------
// What both sinks share.

/// The spool gauges and the reading of one batch, read errors counted
/// through `on_retry` and retried with `backoff`; `Ok(None)` at shutdown.
struct Reading {
    reader: SpoolReader,
    gauges: SpoolGauges,
    batch: usize,
    wait: std::time::Duration,
}

impl Reading {
    async fn next(
        &mut self,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
        on_retry: impl Fn(&crate::spool::SpoolError),
    ) -> Result<Option<Vec<Delivery>>, crate::spool::SpoolError> {
        self.gauges.update(&self.reader, false);
        read_batch(
            &mut self.reader,
            self.batch,
            self.wait,
            backoff,
            shutdown,
            on_retry,
        )
        .await
    }

    fn finish(&mut self) {
        self.gauges.update(&self.reader, true);
    }
}

/// Writes and flushes `bytes`, retrying a failed write whole after a
/// backoff (`on_error` counts and logs it): a reader of stdout may see a
/// line twice, never lose one. `false` when shutdown came first.
async fn write_retrying(
    writer: &mut Box<dyn Write + Send>,
    bytes: &[u8],
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
    mut on_error: impl FnMut(std::io::Error),
) -> bool {
    loop {
        match writer.write_all(bytes).and_then(|()| writer.flush()) {
            Ok(()) => {
                backoff.reset();
                return true;
            }
            Err(error) => {
                on_error(error);
                if !sleep_or_cancel(backoff.next_delay(), shutdown).await {
                    return false;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Resource events.

/// The attributes as a JSON object, in SPEC §3's order.
struct Attributes<'a>(&'a [(&'static str, String)]);

impl Serialize for Attributes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// One stdout line: the attributes SNS would carry and the object as the
/// API server sent it (raw, not re-serialised).
#[derive(Serialize)]
struct Line<'a> {
    attributes: Attributes<'a>,
    object: &'a RawValue,
}

/// Appends the JSON line of `event` to `out`.
pub fn event_line(event: &ResourceEvent, out: &mut Vec<u8>) {
    let attributes = message::plain_attributes(event);
    let line = Line {
        attributes: Attributes(&attributes),
        object: &event.object,
    };
    // Strings and an already valid RawValue into a Vec cannot fail.
    serde_json::to_writer(&mut *out, &line).expect("a stdout line serialises");
    out.push(b'\n');
}

pub(crate) async fn run_events(
    reader: SpoolReader,
    mut writer: Box<dyn Write + Send>,
    options: PublisherOptions,
    shutdown: CancellationToken,
) -> Result<(), PublisherError> {
    info!("no SNS topic configured: events go to stdout as JSON lines");
    let mut reading = Reading {
        reader,
        gauges: SpoolGauges::new(
            options.stats_interval,
            &metrics().spool_bytes,
            &metrics().spool_records,
            &metrics().oldest_unpublished_seconds,
        ),
        batch: options.read_batch,
        wait: options.read_wait,
    };
    let mut backoff = Backoff::new(options.retry_initial, options.retry_max);
    let mut lines = Vec::new();
    loop {
        let read = reading.next(&mut backoff, &shutdown, |err| {
            sns_report::count_error("spool");
            warn!(error = %err, "reading the spool failed; retrying");
        });
        let deliveries = match read.await {
            Ok(Some(deliveries)) => deliveries,
            Ok(None) => break,
            Err(source) => return Err(PublisherError::Spool { source }),
        };
        lines.clear();
        let mut written = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            match ResourceEvent::from_record(delivery.payload()) {
                Ok(event) => {
                    event_line(&event, &mut lines);
                    let labels = EventLabels {
                        context: event.context,
                        namespace: event.namespace,
                        kind: event.kind,
                        event_type: event.event_type.as_str().to_owned(),
                    };
                    written.push((delivery, labels));
                }
                Err(error) => {
                    sns_report::count_error("undecodable");
                    error!(record = delivery.id(), error = %error, "spool record is not a resource event; dropped");
                    delivery.ack();
                }
            }
        }
        if written.is_empty() {
            continue;
        }
        let written_out = write_retrying(&mut writer, &lines, &mut backoff, &shutdown, |source| {
            let error = PublishError::Write { source };
            sns_report::count_error(error.metric_label());
            warn!(error = %error, cause = %std::error::Error::source(&error).map(ToString::to_string).unwrap_or_default(), "retrying");
        });
        if !written_out.await {
            return Ok(());
        }
        for (_, labels) in &written {
            metrics().events_published.get_or_create(labels).inc();
        }
        Delivery::ack_all(written.into_iter().map(|(delivery, _)| delivery));
    }
    reading.finish();
    Ok(())
}

// ---------------------------------------------------------------------------
// Log lines.

/// One stdout line of a log line.
#[derive(Serialize)]
struct LogJson<'a> {
    cluster: &'a str,
    namespace: &'a str,
    pod: &'a str,
    container: &'a str,
    restart_count: u32,
    /// RFC 3339, UTC, nanoseconds.
    timestamp: String,
    message: &'a str,
}

/// Appends the JSON line of `line` to `out`.
pub fn log_line(line: &LogLine, out: &mut Vec<u8>) {
    let timestamp = k8s_openapi::jiff::Timestamp::from_nanosecond(i128::from(line.timestamp))
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    let json = LogJson {
        cluster: &line.cluster_name,
        namespace: &line.namespace,
        pod: &line.pod,
        container: &line.container,
        restart_count: line.restart_count,
        timestamp: timestamp.to_string(),
        message: &line.message,
    };
    // Strings and integers into a Vec cannot fail.
    serde_json::to_writer(&mut *out, &json).expect("a stdout log line serialises");
    out.push(b'\n');
}

pub(crate) async fn run_logs(
    reader: SpoolReader,
    mut writer: Box<dyn Write + Send>,
    checkpoints: CheckpointStore,
    options: LogPublisherOptions,
    shutdown: CancellationToken,
) -> Result<(), LogPublisherError> {
    info!("no CloudWatch Logs configured: log lines go to stdout as JSON lines");
    let mut reading = Reading {
        reader,
        gauges: SpoolGauges::new(
            options.stats_interval,
            &metrics().log_spool_bytes,
            &metrics().log_spool_records,
            &metrics().log_oldest_unshipped_seconds,
        ),
        batch: options.read_batch,
        wait: options.read_wait,
    };
    let mut backoff = Backoff::new(options.retry_initial, options.retry_max);
    let mut out = Vec::new();
    loop {
        let read = reading.next(&mut backoff, &shutdown, |err| {
            logs_report::count_error("spool");
            warn!(error = %err, "reading the logs spool failed; retrying");
        });
        let deliveries = match read.await {
            Ok(Some(deliveries)) => deliveries,
            Ok(None) => break,
            Err(source) => return Err(LogPublisherError::Spool { source }),
        };
        out.clear();
        let mut written = Vec::with_capacity(deliveries.len());
        let mut last: HashMap<ContainerKey, Checkpoint> = HashMap::new();
        let mut shipped: HashMap<String, (u64, u64)> = HashMap::new();
        for delivery in deliveries {
            match LogLine::from_record(delivery.payload()) {
                Ok(line) => {
                    log_line(&line, &mut out);
                    let counts = shipped.entry(line.cluster_name.clone()).or_default();
                    counts.0 += 1;
                    counts.1 += line.message.len() as u64;
                    last.insert(ContainerKey::of(&line), Checkpoint::of(&line));
                    written.push(delivery);
                }
                Err(error) => {
                    logs_report::reject_line("", "undecodable", 1);
                    error!(record = delivery.id(), error = %error, "logs spool record is not a log line; dropped");
                    delivery.ack();
                }
            }
        }
        if written.is_empty() {
            continue;
        }
        // Acknowledged and checkpointed only once written and flushed.
        let written_out = write_retrying(&mut writer, &out, &mut backoff, &shutdown, |error| {
            logs_report::count_error("write");
            warn!(error = %error, "writing log lines to stdout failed; retrying");
        });
        if !written_out.await {
            return Ok(());
        }
        for (cluster, (lines, bytes)) in shipped {
            let labels = ClusterLabels { cluster };
            metrics()
                .log_lines_shipped
                .get_or_create(&labels)
                .inc_by(lines);
            metrics()
                .log_bytes_shipped
                .get_or_create(&labels)
                .inc_by(bytes);
        }
        Delivery::ack_all(written);
        for (key, checkpoint) in last {
            checkpoints.advance(key, checkpoint);
        }
        if let Err(error) = checkpoints.flush_if_due() {
            warn!(error = %error, "committing log checkpoints failed; retrying later");
        }
    }
    if let Err(error) = checkpoints.flush() {
        warn!(error = %error, "committing log checkpoints failed");
    }
    reading.finish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::test_event as event;

    #[test]
    fn event_line_has_the_attributes_in_order_and_the_raw_object() {
        let mut event = event(
            "settings",
            r#"{"kind":"ConfigMap",  "metadata":{"name":"settings"}}"#,
        );
        event.resync = true;
        let mut out = Vec::new();
        event_line(&event, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("}\n") && text.matches('\n').count() == 1);
        assert!(
            text.starts_with(r#"{"attributes":{"source":"kubernetes","cluster":"https://api:6443","context":"unit-ctx","#),
            "{text}"
        );
        assert!(
            text.contains(r#""flags":"resync"},"object":{"kind":"ConfigMap",  "metadata":{"name":"settings"}}}"#),
            "{text}"
        );
    }
}

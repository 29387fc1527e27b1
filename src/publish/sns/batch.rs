//! Building `PublishBatch` requests: SNS's batch limits enforced while a
//! batch is filled (STYLE 5), and, on FIFO topics, the lanes that keep a
//! message group in order. One message is built by [`super::message`].
//! May import `sns::message`, `sns::report`, the spool and the record types.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};
use tracing::error;

use super::message::{self, ATTRIBUTE_DATA_TYPE, SNS_MAX_MESSAGE_BYTES, SnsMessage};
use super::report::{count_error, note_degraded};
use super::retry::PublishError;
use crate::metrics::{EventLabels, metrics};
use crate::record::{ResourceEvent, seconds_since};
use crate::spool::{Delivery, Receipt};

/// PublishBatch: "The batch request contains more entries than permissible"
/// above 10 entries (`TooManyEntriesInBatchRequest`).
pub const MAX_BATCH_ENTRIES: usize = 10;

/// PublishBatch: "the total aggregate size of all messages in a single
/// PublishBatch call can't exceed 262,144 bytes" (`BatchRequestTooLong`),
/// counted as [`SnsMessage::size`] counts one message.
pub const MAX_BATCH_BYTES: usize = 262_144;

// One message always fits a batch on its own.
const _: () = assert!(SNS_MAX_MESSAGE_BYTES <= MAX_BATCH_BYTES);

/// One event on its way: the receipt of its spool record (acknowledged once
/// published; the record's bytes are read again only for a dead letter) and
/// the message built from it.
pub(super) struct Entry {
    pub(super) receipt: Receipt,
    /// The topic it goes to: the event's route topic, else the default.
    pub(super) topic: Arc<str>,
    pub(super) message: SnsMessage,
    pub(super) labels: EventLabels,
    pub(super) namespace: String,
    pub(super) name: String,
    /// See [`ResourceEvent::observed_at_us`].
    pub(super) observed_at_us: Option<u64>,
}

impl Entry {
    /// What it holds in memory: the record where it lives only in memory,
    /// and the message three times while its request is in flight (as
    /// built, as the SDK's input, and encoded in the request body).
    pub(super) fn buffered_bytes(&self) -> usize {
        self.receipt.bytes_held() + 3 * self.message.size()
    }

    /// The entry of a `PublishBatch` request, with id `id` (unique in the
    /// request: the entry's position).
    pub(super) fn request_entry(
        &self,
        id: usize,
    ) -> Result<PublishBatchRequestEntry, PublishError> {
        let construction = |e: aws_sdk_sns::error::BuildError| PublishError::Construction {
            source: Box::new(e),
        };
        let mut builder = PublishBatchRequestEntry::builder()
            .id(id.to_string())
            .message(self.message.body.clone())
            .set_message_group_id(self.message.group_id.clone())
            .set_message_deduplication_id(self.message.deduplication_id.clone());
        for (name, value) in &self.message.attributes {
            let value = MessageAttributeValue::builder()
                .data_type(ATTRIBUTE_DATA_TYPE)
                .string_value(value)
                .build()
                .map_err(construction)?;
            builder = builder.message_attributes(*name, value);
        }
        builder.build().map_err(construction)
    }
}

/// Decodes a record and builds its message for its topic (the route topic
/// the watcher chose, else `default`; each topic has its own FIFO-ness). An
/// undecodable record is counted, logged and acknowledged here: it can never
/// be published.
pub(super) fn prepare(delivery: Delivery, default: &Arc<str>) -> Option<(Entry, ResourceEvent)> {
    let event = match ResourceEvent::from_record(delivery.payload()) {
        Ok(event) => event,
        Err(error) => {
            count_error("undecodable");
            error!(record = delivery.id(), error = %error, "spool record is not a resource event; dropped");
            delivery.ack();
            return None;
        }
    };
    let topic = match &event.topic_arn {
        Some(topic) if **topic != **default => Arc::from(topic.as_str()),
        _ => Arc::clone(default),
    };
    let message = message::build(&event, topic.ends_with(".fifo"));
    note_degraded(&event, message.degradation);
    let entry = Entry {
        receipt: delivery.into_rereadable_receipt(),
        topic,
        message,
        labels: EventLabels {
            context: event.context.clone(),
            namespace: event.namespace.clone(),
            kind: event.kind.clone(),
            event_type: event.event_type.as_str().to_owned(),
        },
        namespace: event.namespace.clone(),
        name: event.name.clone(),
        observed_at_us: event.observed_at_us,
    };
    if let Some(observed) = event.observed_at_us {
        metrics()
            .event_spool_delay_seconds
            .observe(seconds_since(observed));
    }
    Some((entry, event))
}

/// A batch ready to send: ≤ [`MAX_BATCH_ENTRIES`] entries of ≤
/// [`MAX_BATCH_BYTES`] in total, and the FIFO lane it belongs to.
pub(super) struct Batch {
    pub(super) lane: Option<usize>,
    pub(super) entries: Vec<Entry>,
}

/// A batch being filled.
#[derive(Default)]
struct OpenBatch {
    entries: Vec<Entry>,
    bytes: usize,
}

impl OpenBatch {
    fn fits(&self, entry: &Entry) -> bool {
        self.entries.len() < MAX_BATCH_ENTRIES
            && self.bytes + entry.message.size() <= MAX_BATCH_BYTES
    }

    fn has_group(&self, group: Option<&str>) -> bool {
        group.is_some_and(|g| {
            self.entries
                .iter()
                .any(|e| e.message.group_id.as_deref() == Some(g))
        })
    }

    fn push(&mut self, entry: Entry) {
        self.bytes += entry.message.size();
        self.entries.push(entry);
    }

    fn take(&mut self) -> Vec<Entry> {
        self.bytes = 0;
        std::mem::take(&mut self.entries)
    }
}

/// Packs entries into batches, enforcing SNS's batch limits while building
/// (STYLE 5). Standard topics: one open batch. FIFO topics: one open batch
/// per lane, at most one message of a group per batch.
pub(super) struct BatchBuilder {
    open: Vec<OpenBatch>,
    fifo: bool,
}

impl BatchBuilder {
    pub(super) fn new(fifo: bool, lanes: usize) -> Self {
        let lanes = if fifo { lanes.max(1) } else { 1 };
        BatchBuilder {
            open: (0..lanes).map(|_| OpenBatch::default()).collect(),
            fifo,
        }
    }

    pub(super) fn lane_of(&self, entry: &Entry) -> usize {
        match (&entry.message.group_id, self.fifo) {
            (Some(group), true) => {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                group.hash(&mut hasher);
                (hasher.finish() % self.open.len() as u64) as usize
            }
            _ => 0,
        }
    }

    /// Adds `entry`; returns the batch it closed, if any.
    pub(super) fn push(&mut self, entry: Entry) -> Option<Batch> {
        let lane = self.lane_of(&entry);
        let open = &mut self.open[lane];
        let closed = if !open.fits(&entry) || open.has_group(entry.message.group_id.as_deref()) {
            Some(self.batch(lane))
        } else {
            None
        };
        self.open[lane].push(entry);
        closed
    }

    fn batch(&mut self, lane: usize) -> Batch {
        Batch {
            lane: self.fifo.then_some(lane),
            entries: self.open[lane].take(),
        }
    }

    /// Every non-empty open batch.
    pub(super) fn flush(&mut self) -> Vec<Batch> {
        let lanes: Vec<usize> = (0..self.open.len())
            .filter(|&lane| !self.open[lane].entries.is_empty())
            .collect();
        lanes.into_iter().map(|lane| self.batch(lane)).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::record::test_event as event;
    use crate::spool::Spool;

    /// Entries of `sizes` bytes of body each (through a real spool, since a
    /// Delivery only comes from one).
    fn entries(spool: &Spool, names: &[(&str, usize)], fifo: bool) -> Vec<Entry> {
        let writer = spool.writer();
        for (name, _) in names {
            writer.append(&event(name, "{}").to_record()).unwrap();
        }
        let mut reader = spool.reader().unwrap();
        let deliveries = reader
            .next_batch(names.len(), Duration::from_secs(1))
            .unwrap();
        deliveries
            .into_iter()
            .zip(names)
            .map(|(delivery, (_, size))| {
                let topic: Arc<str> = Arc::from(if fifo {
                    "arn:aws:sns:eu-west-1:123456789012:t.fifo"
                } else {
                    "arn:aws:sns:eu-west-1:123456789012:t"
                });
                let (mut entry, _) = prepare(delivery, &topic).unwrap();
                entry.message.body = "x".repeat(*size);
                entry
            })
            .collect()
    }

    #[test]
    fn batches_hold_at_most_ten_entries_and_262144_bytes() {
        let spool = Spool::in_memory(1 << 20);
        let names: Vec<(String, usize)> = (0..25)
            .map(|i| (format!("o{i}"), if i < 12 { 100 } else { 100_000 }))
            .collect();
        let names: Vec<(&str, usize)> = names.iter().map(|(n, s)| (n.as_str(), *s)).collect();
        let mut builder = BatchBuilder::new(false, 4);
        let mut batches = Vec::new();
        for entry in entries(&spool, &names, false) {
            batches.extend(builder.push(entry));
        }
        batches.extend(builder.flush());
        let sizes: Vec<usize> = batches.iter().map(|b| b.entries.len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 25);
        for batch in &batches {
            assert!(batch.entries.len() <= MAX_BATCH_ENTRIES);
            assert!(
                batch
                    .entries
                    .iter()
                    .map(|e| e.message.size())
                    .sum::<usize>()
                    <= MAX_BATCH_BYTES
            );
            assert_eq!(batch.lane, None);
        }
        assert_eq!(sizes[0], 10, "{sizes:?}");
        assert!(
            sizes[2..].iter().all(|&n| n <= 2),
            "100 kB bodies: two per batch: {sizes:?}"
        );
    }

    #[test]
    fn fifo_batches_hold_one_message_per_group_and_keep_a_group_on_its_lane() {
        let spool = Spool::in_memory(1 << 20);
        let names = [("a", 10), ("b", 10), ("a", 10), ("a", 10), ("b", 10)];
        let mut builder = BatchBuilder::new(true, 1);
        let mut batches = Vec::new();
        for entry in entries(&spool, &names, true) {
            batches.extend(builder.push(entry));
        }
        batches.extend(builder.flush());
        let names: Vec<Vec<&str>> = batches
            .iter()
            .map(|b| b.entries.iter().map(|e| e.name.as_str()).collect())
            .collect();
        assert_eq!(names, [vec!["a", "b"], vec!["a"], vec!["a", "b"]]);
        assert!(batches.iter().all(|b| b.lane == Some(0)));

        let builder = BatchBuilder::new(true, 8);
        let spool = Spool::in_memory(1 << 20);
        let lanes: Vec<usize> = entries(&spool, &[("a", 1), ("a", 1)], true)
            .iter()
            .map(|e| builder.lane_of(e))
            .collect();
        assert_eq!(lanes[0], lanes[1]);
    }
}

//! SQS queues subscribed to an SNS topic, to see what subscribers receive.
//!
//! [`SqsSubscription::create`] makes a queue, subscribes it to a topic (with a
//! filter policy and raw delivery or not) and [`SqsSubscription::drain`] reads
//! and deletes what arrived, decoding both delivery formats into
//! [`Delivered`]. moto keeps every message in memory and publishes slower the
//! more undrained messages its queues hold (SPEC §10): drain what you subscribe.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, QueueAttributeName};
use serde_json::Value;

/// How a queue subscribes.
#[derive(Clone, Debug, Default)]
pub struct SubscribeOptions {
    /// The subscription's `FilterPolicy` (JSON), applied to message attributes.
    pub filter_policy: Option<String>,
    /// `RawMessageDelivery`: the queue gets the bare message with its
    /// attributes as SQS message attributes, instead of SNS's JSON envelope.
    pub raw_message_delivery: bool,
}

impl SubscribeOptions {
    /// Options with this filter policy and envelope delivery.
    pub fn filtered(policy: &str) -> SubscribeOptions {
        SubscribeOptions {
            filter_policy: Some(policy.to_owned()),
            raw_message_delivery: false,
        }
    }

    /// Same options with raw message delivery on or off.
    pub fn raw(mut self, raw: bool) -> SubscribeOptions {
        self.raw_message_delivery = raw;
        self
    }
}

/// A message as a subscriber got it, whichever the delivery format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// The published message (the envelope's `Message` without raw delivery).
    pub message: String,
    /// The message attributes' values by name (from the envelope's
    /// `MessageAttributes`, or the SQS message attributes with raw delivery).
    pub attributes: BTreeMap<String, String>,
    /// The attributes' data types by name (`String`, `Number`, `Binary`, …).
    pub attribute_types: BTreeMap<String, String>,
    /// The SQS body as received.
    pub body: String,
}

impl Delivered {
    /// The value of one attribute.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).map(String::as_str)
    }
}

/// A queue subscribed to a topic.
#[derive(Clone, Debug)]
pub struct SqsSubscription {
    sqs: aws_sdk_sqs::Client,
    /// The queue URL.
    pub queue_url: String,
    /// The queue ARN.
    pub queue_arn: String,
    /// The subscription ARN.
    pub subscription_arn: String,
    /// Whether raw message delivery is on.
    pub raw_message_delivery: bool,
}

impl SqsSubscription {
    /// Creates queue `queue_name` and subscribes it to `topic_arn`.
    ///
    /// # Panics
    ///
    /// On any AWS error: this is test set-up.
    pub async fn create(
        sns: &aws_sdk_sns::Client,
        sqs: &aws_sdk_sqs::Client,
        topic_arn: &str,
        queue_name: &str,
        options: SubscribeOptions,
    ) -> SqsSubscription {
        let queue_url = sqs
            .create_queue()
            .queue_name(queue_name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("CreateQueue {queue_name}: {e:?}"))
            .queue_url
            .expect("CreateQueue returns a URL");
        let queue_arn = sqs
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GetQueueAttributes {queue_name}: {e:?}"))
            .attributes
            .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
            .expect("queue ARN");
        let mut subscribe = sns
            .subscribe()
            .topic_arn(topic_arn)
            .protocol("sqs")
            .endpoint(&queue_arn)
            .return_subscription_arn(true)
            .attributes(
                "RawMessageDelivery",
                options.raw_message_delivery.to_string(),
            );
        if let Some(policy) = &options.filter_policy {
            subscribe = subscribe
                .attributes("FilterPolicy", policy)
                .attributes("FilterPolicyScope", "MessageAttributes");
        }
        let subscription_arn = subscribe
            .send()
            .await
            .unwrap_or_else(|e| panic!("Subscribe {queue_name} to {topic_arn}: {e:?}"))
            .subscription_arn
            .expect("subscription ARN");
        SqsSubscription {
            sqs: sqs.clone(),
            queue_url,
            queue_arn,
            subscription_arn,
            raw_message_delivery: options.raw_message_delivery,
        }
    }

    /// Reads and deletes messages until `expected` have arrived and one more
    /// receive finds the queue empty, or until `timeout`; returns all read.
    ///
    /// While short of `expected` it long-polls (1 s waits); once there, it does
    /// a final immediate receive, so extra messages already in the queue are
    /// returned too and `assert_eq!(drained.len(), expected)` catches them.
    /// moto delivers to SQS within the `Publish` call, so that final receive
    /// sees everything published before `drain` was called. With
    /// `expected == 0` it returns after one immediate receive.
    pub async fn drain(&self, expected: usize, timeout: Duration) -> Vec<Delivered> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let satisfied = out.len() >= expected;
            let got = self.receive_once(if satisfied { 0 } else { 1 }).await;
            let empty = got.is_empty();
            out.extend(got);
            if (satisfied && empty) || tokio::time::Instant::now() >= deadline {
                return out;
            }
        }
    }

    /// A new topic named after `name` (created through `topic_sdk`: the
    /// strict proxy when the test checks that request too) with a queue
    /// subscribed for raw delivery (through `queue_sdk`): what reached the
    /// topic, read back.
    ///
    /// # Panics
    ///
    /// On any AWS error: this is test set-up.
    pub async fn topic_with_raw_queue(
        topic_sdk: &super::TestSdk,
        queue_sdk: &super::TestSdk,
        name: &str,
    ) -> (String, SqsSubscription) {
        let topic = topic_sdk
            .sns()
            .create_topic()
            .name(super::unique_name(name))
            .send()
            .await
            .unwrap_or_else(|e| panic!("CreateTopic {name}: {e:?}"))
            .topic_arn
            .expect("CreateTopic returns an ARN");
        let queue = SqsSubscription::create(
            &queue_sdk.sns(),
            &queue_sdk.sqs(),
            &topic,
            &super::unique_name(name),
            SubscribeOptions::default().raw(true),
        )
        .await;
        (topic, queue)
    }

    /// Every message in the queue now, deleted (immediate receives until
    /// one comes back empty).
    pub async fn take_all(&self) -> Vec<Delivered> {
        let mut all = Vec::new();
        loop {
            let got = self.receive_once(0).await;
            if got.is_empty() {
                return all;
            }
            all.extend(got);
        }
    }

    /// One `ReceiveMessage` (up to 10, waiting up to `wait_seconds`), deleting
    /// what it got.
    pub async fn receive_once(&self, wait_seconds: i32) -> Vec<Delivered> {
        let received = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(wait_seconds)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap_or_else(|e| panic!("ReceiveMessage {}: {e:?}", self.queue_url));
        let messages = received.messages.unwrap_or_default();
        if messages.is_empty() {
            return Vec::new();
        }
        let entries: Vec<DeleteMessageBatchRequestEntry> = messages
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle.clone()?)
                    .build()
                    .ok()
            })
            .collect();
        self.sqs
            .delete_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .unwrap_or_else(|e| panic!("DeleteMessageBatch {}: {e:?}", self.queue_url));
        messages.into_iter().map(|m| self.decode(m)).collect()
    }

    fn decode(&self, m: aws_sdk_sqs::types::Message) -> Delivered {
        let body = m.body.unwrap_or_default();
        let mut attributes = BTreeMap::new();
        let mut attribute_types = BTreeMap::new();
        if self.raw_message_delivery {
            for (name, value) in m.message_attributes.unwrap_or_default() {
                let v = value.string_value.clone().unwrap_or_else(|| {
                    value
                        .binary_value
                        .as_ref()
                        .map(|b| String::from_utf8_lossy(b.as_ref()).into_owned())
                        .unwrap_or_default()
                });
                attribute_types.insert(name.clone(), value.data_type);
                attributes.insert(name, v);
            }
            return Delivered {
                message: body.clone(),
                attributes,
                attribute_types,
                body,
            };
        }
        let envelope: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("SNS envelope is not JSON ({e}): {body}"));
        let message = envelope
            .get("Message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if let Some(attrs) = envelope.get("MessageAttributes").and_then(Value::as_object) {
            for (name, attr) in attrs {
                let value = attr
                    .get("Value")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let ty = attr.get("Type").and_then(Value::as_str).unwrap_or_default();
                attributes.insert(name.clone(), value.to_owned());
                attribute_types.insert(name.clone(), ty.to_owned());
            }
        }
        Delivered {
            message,
            attributes,
            attribute_types,
            body,
        }
    }
}

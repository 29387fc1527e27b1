//! End to end: SNS subscription filter policies on kubeherald's message
//! attributes route each message to exactly the SQS queues whose policy
//! matches, with the attributes intact, in raw and envelope delivery.
//!
//! The policies are the seed's. Messages go through the strict proxy, so the
//! test also proves that kubeherald-shaped messages (8–10 String attributes)
//! are acceptable to AWS. Needs moto; fails loudly without it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};
use kubeherald_testbed::aws::{
    Moto, SqsSubscription, StrictProxy, SubscribeOptions, TestSdk, unique_name,
};

const CLUSTER: &str = "https://127.0.0.1:6443";

/// One published event: its attributes, and its body.
#[derive(Clone, Debug)]
struct Event {
    attributes: BTreeMap<String, String>,
    body: String,
}

impl Event {
    fn new(source: &str, kind: &str, namespace: &str, event_type: &str, name: &str) -> Event {
        let api_version = if kind == "Deployment" {
            "apps/v1"
        } else {
            "v1"
        };
        let attributes: BTreeMap<String, String> = [
            ("source", source),
            ("cluster", CLUSTER),
            ("namespace", namespace),
            ("api_version", api_version),
            ("kind", kind),
            ("event_type", event_type),
            ("object_name", name),
            ("content_encoding", "gzip+base64"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        // Stands in for the gzip+base64 object: routing never looks at the body.
        let body = format!(
            "H4sIA{}{}{}",
            kind.len(),
            name,
            event_type.to_ascii_lowercase()
        );
        Event { attributes, body }
    }

    fn with(mut self, name: &str, value: &str) -> Event {
        self.attributes.insert(name.to_owned(), value.to_owned());
        self
    }

    fn attr(&self, name: &str) -> &str {
        self.attributes.get(name).map_or("", String::as_str)
    }

    fn name(&self) -> &str {
        self.attr("object_name")
    }
}

/// The seed's subscriptions: a policy, the same rule as a predicate (written
/// independently, to check moto's matching), and the delivery mode.
struct Subscriber {
    label: &'static str,
    policy: &'static str,
    matches: fn(&Event) -> bool,
    raw: bool,
}

const SUBSCRIBERS: [Subscriber; 4] = [
    Subscriber {
        label: "production pods",
        policy: r#"{"source":["kubernetes"],"kind":["Pod"],"namespace":["production"]}"#,
        matches: |e| {
            e.attr("source") == "kubernetes"
                && e.attr("kind") == "Pod"
                && e.attr("namespace") == "production"
        },
        raw: true,
    },
    Subscriber {
        label: "deployments",
        policy: r#"{"source":["kubernetes"],"kind":["Deployment"]}"#,
        matches: |e| e.attr("source") == "kubernetes" && e.attr("kind") == "Deployment",
        raw: false,
    },
    Subscriber {
        label: "deletions",
        policy: r#"{"source":["kubernetes"],"event_type":["DELETED"]}"#,
        matches: |e| e.attr("source") == "kubernetes" && e.attr("event_type") == "DELETED",
        raw: true,
    },
    Subscriber {
        label: "everything",
        policy: "",
        matches: |_| true,
        raw: false,
    },
];

fn events() -> Vec<Event> {
    vec![
        Event::new("kubernetes", "Pod", "production", "ADDED", "pod-prod-added"),
        Event::new(
            "kubernetes",
            "Pod",
            "production",
            "DELETED",
            "pod-prod-deleted",
        ),
        Event::new("kubernetes", "Pod", "staging", "ADDED", "pod-staging-added"),
        Event::new(
            "kubernetes",
            "Pod",
            "staging",
            "DELETED",
            "pod-staging-deleted",
        ),
        Event::new(
            "kubernetes",
            "Deployment",
            "production",
            "MODIFIED",
            "deploy-prod-modified",
        ),
        Event::new(
            "kubernetes",
            "Deployment",
            "staging",
            "DELETED",
            "deploy-staging-deleted",
        ),
        Event::new(
            "kubernetes",
            "ConfigMap",
            "production",
            "ADDED",
            "cm-prod-added",
        ),
        Event::new(
            "kubernetes",
            "Service",
            "production",
            "DELETED",
            "svc-prod-deleted",
        ),
        // Not from kubeherald: only the unfiltered queue takes it.
        Event::new("other-tool", "Pod", "production", "MODIFIED", "foreign-pod"),
        // Matching is exact and case-sensitive.
        Event::new(
            "kubernetes",
            "Pod",
            "Production",
            "ADDED",
            "pod-capital-namespace",
        ),
        Event::new(
            "kubernetes",
            "pod",
            "production",
            "ADDED",
            "pod-lowercase-kind",
        ),
        // Optional attributes: 9, and the maximum of 10 (raw SQS delivery drops more).
        Event::new(
            "kubernetes",
            "Deployment",
            "default",
            "ADDED",
            "deploy-resync",
        )
        .with("flags", "resync"),
        Event::new(
            "kubernetes",
            "Pod",
            "production",
            "MODIFIED",
            "pod-ten-attributes",
        )
        .with("flags", "resync,trimmed")
        .with("context", "kind-prod"),
    ]
}

fn entry(i: usize, event: &Event) -> PublishBatchRequestEntry {
    let mut entry = PublishBatchRequestEntry::builder()
        .id(format!("m{i}"))
        .message(&event.body);
    for (name, value) in &event.attributes {
        entry = entry.message_attributes(
            name,
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .unwrap(),
        );
    }
    entry.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_policies_route_exactly_the_matching_messages() {
    let moto = Moto::shared();
    let proxy = StrictProxy::start(moto.url());
    let sdk = TestSdk::new(proxy.url()).max_attempts(1);
    let sns = sdk.sns();
    let sqs = TestSdk::new(moto.url()).sqs();
    let topic = sns
        .create_topic()
        .name(unique_name("filter"))
        .send()
        .await
        .unwrap()
        .topic_arn
        .unwrap();
    let mut queues = Vec::new();
    for subscriber in &SUBSCRIBERS {
        let options = SubscribeOptions {
            filter_policy: (!subscriber.policy.is_empty()).then(|| subscriber.policy.to_owned()),
            raw_message_delivery: subscriber.raw,
        };
        queues.push(SqsSubscription::create(&sns, &sqs, &topic, &unique_name("q"), options).await);
    }

    let events = events();
    let entries: Vec<_> = events
        .iter()
        .enumerate()
        .map(|(i, e)| entry(i, e))
        .collect();
    for chunk in entries.chunks(10) {
        let answer = sns
            .publish_batch()
            .topic_arn(&topic)
            .set_publish_batch_request_entries(Some(chunk.to_vec()))
            .send()
            .await
            .unwrap();
        assert!(answer.failed().is_empty(), "{:?}", answer.failed());
        assert_eq!(answer.successful().len(), chunk.len());
    }
    proxy.assert_nothing_refused();
    assert_eq!(proxy.count("PublishBatch"), 2);

    let by_name: BTreeMap<&str, &Event> = events.iter().map(|e| (e.name(), e)).collect();
    for (subscriber, queue) in SUBSCRIBERS.iter().zip(&queues) {
        let expected: BTreeSet<&str> = events
            .iter()
            .filter(|e| (subscriber.matches)(e))
            .map(Event::name)
            .collect();
        let delivered = queue.drain(expected.len(), Duration::from_secs(15)).await;
        let got: Vec<&str> = delivered
            .iter()
            .map(|d| d.attribute("object_name").unwrap_or("<no object_name>"))
            .collect();
        assert_eq!(
            got.iter().copied().collect::<BTreeSet<_>>(),
            expected,
            "{} ({}): wrong messages",
            subscriber.label,
            subscriber.policy
        );
        assert_eq!(
            got.len(),
            expected.len(),
            "{}: duplicates in {got:?}",
            subscriber.label
        );
        for d in &delivered {
            let sent = by_name[d.attribute("object_name").unwrap()];
            assert_eq!(d.message, sent.body, "{}: body", subscriber.label);
            assert_eq!(
                d.attributes,
                sent.attributes,
                "{}: attributes of {}",
                subscriber.label,
                sent.name()
            );
            assert!(
                d.attribute_types.values().all(|t| t == "String"),
                "{}: {:?}",
                subscriber.label,
                d.attribute_types
            );
        }
    }
    // The fixture really reaches the 10-attribute maximum (whose delivery, raw
    // and enveloped, the loop above checked).
    let ten = &by_name["pod-ten-attributes"];
    assert_eq!(ten.attributes.len(), 10);
}

//! The publisher against moto behind the strict AWS proxy: events appended to
//! the spool reach SQS subscribers exactly as SPEC §3 says, through filter
//! policies, oversize degradation, outages, throttling, per-entry failures,
//! FIFO topics; and the stdout sink without AWS. Every test ends with the
//! proxy having refused nothing real AWS would refuse.
//!
//! Tests wait on conditions (spool drained, requests seen) with deadlines,
//! never on fixed sleeps.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use kubeherald::config::TopicArn;
use kubeherald::metrics::{ReasonLabels, WatchReasonLabels, metrics};
use kubeherald::publish::sns::{PublisherHandle, PublisherOptions, Sink, spawn_publisher};
use kubeherald::record::{EventType, ResourceEvent};
use kubeherald::spool::{Spool, SpoolOptions};
use kubeherald_testbed::aws::{
    Delivered, FastSns, Fault, Moto, SqsSubscription, StrictProxy, SubscribeOptions, TestSdk,
    unique_name,
};
use serde_json::value::RawValue;
use support::sns_body;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(60);
const CLUSTER: &str = "https://api.prod.example.com:6443";

/// What every test starts from: moto behind a strict proxy, a topic, and an
/// SDK configuration pointed at the proxy.
struct Bed {
    proxy: StrictProxy,
    /// Clients straight to moto (subscriptions, draining).
    moto_sdk: TestSdk,
    /// The publisher's SDK: at the proxy, one attempt, so that every fault
    /// injected reaches the publisher's own retry loop.
    sdk: TestSdk,
    topic: String,
}

impl Bed {
    async fn new(fifo: bool) -> Bed {
        let moto = Moto::shared();
        let proxy = StrictProxy::start(moto.url());
        let sdk = TestSdk::new(proxy.url())
            .max_attempts(1)
            .attempt_timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(1));
        let moto_sdk = TestSdk::new(moto.url());
        let mut create = moto_sdk.sns().create_topic();
        if fifo {
            create = create
                .name(format!("{}.fifo", unique_name("publish")))
                .attributes("FifoTopic", "true")
                .attributes("ContentBasedDeduplication", "false");
        } else {
            create = create.name(unique_name("publish"));
        }
        let topic = create.send().await.unwrap().topic_arn.unwrap();
        Bed {
            proxy,
            moto_sdk,
            sdk,
            topic,
        }
    }

    async fn subscribe(&self, policy: Option<&str>) -> SqsSubscription {
        SqsSubscription::create(
            &self.moto_sdk.sns(),
            &self.moto_sdk.sqs(),
            &self.topic,
            &unique_name("q"),
            SubscribeOptions {
                filter_policy: policy.map(str::to_owned),
                raw_message_delivery: true,
            },
        )
        .await
    }

    fn sink(&self) -> Sink {
        Sink::Sns {
            topic: TopicArn::parse(&self.topic).unwrap(),
            routes: Vec::new(),
            sdk: Some(Box::new(self.sdk.config())),
        }
    }
}

/// Publisher settings with short retry delays, for tests.
fn options() -> PublisherOptions {
    PublisherOptions {
        max_in_flight: 16,
        read_wait: Duration::from_millis(100),
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_millis(500),
        shutdown_deadline: Duration::from_secs(5),
        stats_interval: Duration::from_millis(100),
        ..PublisherOptions::default()
    }
}

/// A running publisher, cancelled when dropped.
struct Running {
    shutdown: CancellationToken,
    handle: Option<PublisherHandle>,
}

impl Running {
    fn start(spool: &Spool, sink: Sink, options: PublisherOptions) -> Running {
        let shutdown = CancellationToken::new();
        let handle =
            spawn_publisher(spool.reader().unwrap(), sink, options, shutdown.clone()).unwrap();
        Running {
            shutdown,
            handle: Some(handle),
        }
    }

    fn is_running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Cancels and joins; panics if the publisher failed.
    fn stop(mut self) {
        self.shutdown.cancel();
        self.handle.take().unwrap().join().unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn event(
    context: &str,
    namespace: &str,
    kind: &str,
    event_type: EventType,
    name: &str,
) -> ResourceEvent {
    let api_version = if kind == "Deployment" {
        "apps/v1"
    } else {
        "v1"
    };
    // Odd spacing and key order: subscribers must get these bytes, not a
    // re-serialisation.
    let object = format!(
        r#"{{"kind":"{kind}",  "apiVersion":"{api_version}","metadata":{{"name":"{name}","namespace":"{namespace}","uid":"uid-{name}","resourceVersion":"7"}},"spec":{{ "x": [1, 2 ,3] }}}}"#
    );
    ResourceEvent {
        cluster: CLUSTER.into(),
        context: context.into(),
        namespace: namespace.into(),
        api_version: api_version.into(),
        kind: kind.into(),
        event_type,
        name: name.into(),
        uid: format!("uid-{name}"),
        resource_version: "7".into(),
        resync: false,
        redacted: false,
        topic_arn: None,
        observed_at_us: None,
        object: RawValue::from_string(object).unwrap(),
    }
}

/// `n` MODIFIED events of pods `pod-0000`… in namespace `ns`, observed now.
fn pod_events(context: &str, n: usize) -> Vec<ResourceEvent> {
    (0..n)
        .map(|i| ResourceEvent {
            observed_at_us: Some(kubeherald::record::unix_micros_now()),
            ..event(
                context,
                "ns",
                "Pod",
                EventType::Modified,
                &format!("pod-{i:04}"),
            )
        })
        .collect()
}

/// Observations of a histogram of the process's metrics so far.
fn histogram_count(name: &str) -> u64 {
    let text = metrics().encode();
    let prefix = format!("{name}_count ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or(0)
}

/// An on-disk spool holding `events`.
fn spool_with(events: &[ResourceEvent]) -> (tempfile::TempDir, Spool) {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
    append(&spool, events);
    (dir, spool)
}

/// A sink to topic `name` (`.fifo` for a FIFO topic) of a fast endpoint.
fn fast_sink(sns: &FastSns, name: &str) -> Sink {
    Sink::Sns {
        topic: TopicArn::parse(&format!("arn:aws:sns:us-east-1:123456789012:{name}")).unwrap(),
        routes: Vec::new(),
        sdk: Some(Box::new(TestSdk::new(sns.url()).config())),
    }
}

fn append(spool: &Spool, events: &[ResourceEvent]) {
    let records: Vec<Vec<u8>> = events.iter().map(ResourceEvent::to_record).collect();
    spool.writer().append_batch(&records).unwrap();
}

/// Polls `condition` until it holds or the deadline passes.
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_drained(spool: &Spool) {
    wait_for("the spool to be drained", || {
        spool.stats().pending_records == 0
    });
}

/// The attributes SPEC §3 promises for `event` (no flags).
fn expected_attributes(event: &ResourceEvent) -> BTreeMap<String, String> {
    [
        ("source", "kubernetes"),
        ("cluster", CLUSTER),
        ("context", event.context.as_str()),
        ("namespace", event.namespace.as_str()),
        ("api_version", event.api_version.as_str()),
        ("kind", event.kind.as_str()),
        ("event_type", event.event_type.as_str()),
        ("object_name", event.name.as_str()),
        ("content_encoding", "gzip+base64"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn names(delivered: &[Delivered]) -> Vec<String> {
    let mut names: Vec<String> = delivered
        .iter()
        .map(|d| d.attribute("object_name").unwrap_or("?").to_owned())
        .collect();
    names.sort();
    names
}

fn publish_errors(reason: &str) -> u64 {
    metrics()
        .publish_errors
        .get_or_create(&ReasonLabels {
            reason: reason.into(),
        })
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_policies_deliver_exactly_the_matching_events_byte_for_byte() {
    let bed = Bed::new(false).await;
    let pods_in_production = bed
        .subscribe(Some(
            r#"{"source":["kubernetes"],"kind":["Pod"],"namespace":["production"]}"#,
        ))
        .await;
    let deployments = bed
        .subscribe(Some(r#"{"source":["kubernetes"],"kind":["Deployment"]}"#))
        .await;
    let deletions = bed
        .subscribe(Some(
            r#"{"source":["kubernetes"],"event_type":["DELETED"]}"#,
        ))
        .await;

    let context = unique_name("ctx-filter");
    let events = vec![
        event(&context, "production", "Pod", EventType::Added, "pod-a"),
        event(&context, "production", "Pod", EventType::Modified, "pod-b"),
        event(&context, "staging", "Pod", EventType::Added, "pod-c"),
        event(&context, "production", "Pod", EventType::Deleted, "pod-d"),
        event(
            &context,
            "production",
            "Deployment",
            EventType::Added,
            "deploy-a",
        ),
        event(
            &context,
            "staging",
            "Deployment",
            EventType::Deleted,
            "deploy-b",
        ),
        event(
            &context,
            "production",
            "ConfigMap",
            EventType::Modified,
            "cm-a",
        ),
        event(&context, "staging", "ConfigMap", EventType::Deleted, "cm-b"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
    append(&spool, &events);
    let running = Running::start(&spool, bed.sink(), options());
    wait_drained(&spool);

    let by_name: BTreeMap<&str, &ResourceEvent> =
        events.iter().map(|e| (e.name.as_str(), e)).collect();
    let cases = [
        (&pods_in_production, vec!["pod-a", "pod-b", "pod-d"]),
        (&deployments, vec!["deploy-a", "deploy-b"]),
        (&deletions, vec!["cm-b", "deploy-b", "pod-d"]),
    ];
    for (queue, expected) in cases {
        let delivered = queue.drain(expected.len(), Duration::from_secs(15)).await;
        assert_eq!(names(&delivered), expected);
        for d in &delivered {
            let sent = by_name[d.attribute("object_name").unwrap()];
            assert_eq!(
                sns_body(&d.message),
                sent.object.get().as_bytes(),
                "{}: the object's own bytes",
                sent.name
            );
            assert_eq!(d.attributes, expected_attributes(sent), "{}", sent.name);
            assert!(d.attribute_types.values().all(|t| t == "String"));
        }
    }
    for e in &events {
        let labels = kubeherald::metrics::EventLabels {
            context: context.clone(),
            namespace: e.namespace.clone(),
            kind: e.kind.clone(),
            event_type: e.event_type.as_str().into(),
        };
        assert!(metrics().events_published.get_or_create(&labels).get() >= 1);
    }
    running.stop();
    bed.proxy.assert_nothing_refused();
}

/// Random-looking text gzip cannot shrink.
fn incompressible(len: usize) -> String {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b'a' + (state % 26) as u8)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_over_256_kib_are_degraded_flagged_and_counted() {
    let bed = Bed::new(false).await;
    let queue = bed.subscribe(None).await;
    let context = unique_name("ctx-big");
    let mut trimmed = event(
        &context,
        "ns",
        "ConfigMap",
        EventType::Added,
        "big-managed-fields",
    );
    trimmed.object = RawValue::from_string(
        serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "big-managed-fields", "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:data": incompressible(400_000)}}]},
            "data": {"keep": "me"},
        })
        .to_string(),
    )
    .unwrap();
    let mut metadata_only = event(&context, "ns", "ConfigMap", EventType::Modified, "big-data");
    metadata_only.object = RawValue::from_string(
        serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "big-data", "labels": {"app": "x"}},
            "data": {"blob": incompressible(600_000)},
        })
        .to_string(),
    )
    .unwrap();
    let small = event(&context, "ns", "ConfigMap", EventType::Added, "small");
    let spool = Spool::in_memory(64 << 20);
    append(&spool, &[trimmed, metadata_only, small]);
    let running = Running::start(&spool, bed.sink(), options());
    wait_drained(&spool);

    let delivered = queue.drain(3, Duration::from_secs(15)).await;
    assert_eq!(
        names(&delivered),
        ["big-data", "big-managed-fields", "small"]
    );
    for d in &delivered {
        let body: serde_json::Value = serde_json::from_slice(&sns_body(&d.message)).unwrap();
        match d.attribute("object_name").unwrap() {
            "big-managed-fields" => {
                assert_eq!(d.attribute("flags"), Some("trimmed"));
                assert_eq!(body["data"]["keep"], "me");
                assert!(body["metadata"].get("managedFields").is_none());
            }
            "big-data" => {
                assert_eq!(d.attribute("flags"), Some("metadata-only"));
                assert_eq!(body["metadata"]["labels"]["app"], "x");
                assert!(body.get("data").is_none());
            }
            _ => assert_eq!(d.attribute("flags"), None),
        }
    }
    let degraded = |reason: &str| {
        metrics()
            .events_degraded
            .get_or_create(&WatchReasonLabels {
                context: context.clone(),
                namespace: "ns".into(),
                kind: "ConfigMap".into(),
                reason: reason.into(),
            })
            .get()
    };
    assert_eq!((degraded("trimmed"), degraded("metadata-only")), (1, 1));
    running.stop();
    bed.proxy.assert_nothing_refused();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sns_unreachable_at_start_keeps_records_until_it_answers() {
    let bed = Bed::new(false).await;
    let queue = bed.subscribe(None).await;
    bed.proxy.set_down(true);
    let context = unique_name("ctx-down");
    let events: Vec<_> = (0..25)
        .map(|i| {
            event(
                &context,
                "ns",
                "Pod",
                EventType::Added,
                &format!("pod-{i:02}"),
            )
        })
        .collect();
    let spool = Spool::in_memory(16 << 20);
    append(&spool, &events);
    let network_errors = publish_errors("network");
    let running = Running::start(&spool, bed.sink(), options());
    wait_for("failed attempts while SNS is down", || {
        publish_errors("network") >= network_errors + 6
    });
    assert!(running.is_running(), "an unreachable SNS is not fatal");
    assert_eq!(spool.stats().pending_records, 25, "nothing acknowledged");

    bed.proxy.set_down(false);
    wait_drained(&spool);
    let delivered = queue.drain(25, Duration::from_secs(15)).await;
    let expected: Vec<String> = events.iter().map(|e| e.name.clone()).collect();
    assert_eq!(names(&delivered), expected, "each exactly once");
    running.stop();
    bed.proxy.assert_nothing_refused();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_unpublished_records_for_the_next_start() {
    let bed = Bed::new(false).await;
    let queue = bed.subscribe(None).await;
    bed.proxy.set_down(true);
    let context = unique_name("ctx-shutdown");
    let events: Vec<_> = (0..12)
        .map(|i| {
            event(
                &context,
                "ns",
                "Pod",
                EventType::Modified,
                &format!("pod-{i:02}"),
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
    append(&spool, &events);
    let network_errors = publish_errors("network");
    let running = Running::start(&spool, bed.sink(), options());
    wait_for("a failed attempt", || {
        publish_errors("network") > network_errors
    });
    let started = Instant::now();
    running.stop();
    assert!(
        started.elapsed() < options().shutdown_deadline + Duration::from_secs(5),
        "shutdown is bounded by its deadline"
    );
    assert_eq!(
        spool.stats().pending_records,
        12,
        "everything unacknowledged stays"
    );

    bed.proxy.set_down(false);
    let running = Running::start(&spool, bed.sink(), options());
    wait_drained(&spool);
    assert_eq!(queue.drain(12, Duration::from_secs(15)).await.len(), 12);
    running.stop();
    bed.proxy.assert_nothing_refused();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_server_errors_and_resets_are_retried() {
    let bed = Bed::new(false).await;
    let queue = bed.subscribe(None).await;
    bed.proxy
        .fail_next_for("PublishBatch", 2, Fault::Throttling);
    bed.proxy
        .fail_next_for("PublishBatch", 1, Fault::Status(429));
    bed.proxy
        .fail_next_for("PublishBatch", 1, Fault::Status(500));
    bed.proxy
        .fail_next_for("PublishBatch", 1, Fault::Status(503));
    bed.proxy.fail_next_for("PublishBatch", 1, Fault::Reset);
    let (throttled, server) = (publish_errors("throttled"), publish_errors("server"));
    let context = unique_name("ctx-faults");
    let events: Vec<_> = (0..30)
        .map(|i| {
            event(
                &context,
                "ns",
                "Pod",
                EventType::Added,
                &format!("pod-{i:02}"),
            )
        })
        .collect();
    let spool = Spool::in_memory(16 << 20);
    append(&spool, &events);
    let running = Running::start(&spool, bed.sink(), options());
    wait_drained(&spool);
    let delivered = queue.drain(30, Duration::from_secs(15)).await;
    let expected: Vec<String> = events.iter().map(|e| e.name.clone()).collect();
    assert_eq!(names(&delivered), expected, "all arrive, once each");
    assert!(
        bed.proxy.count("PublishBatch") >= 3 + 6,
        "the 6 faults were answered and retried"
    );
    assert!(publish_errors("throttled") >= throttled + 3);
    assert!(publish_errors("server") >= server + 2);
    running.stop();
    bed.proxy.assert_nothing_refused();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_entries_in_a_200_answer_retry_only_those_and_count_rejections() {
    let bed = Bed::new(false).await;
    let queue = bed.subscribe(None).await;
    // Two batches of 10: one gets 3 entries failed by SNS itself (retry),
    // the other 2 entries failed as invalid (reject).
    bed.proxy.fail_next_for(
        "PublishBatch",
        1,
        Fault::EntriesFailed {
            entries: 3,
            sender_fault: false,
        },
    );
    bed.proxy.fail_next_for(
        "PublishBatch",
        1,
        Fault::EntriesFailed {
            entries: 2,
            sender_fault: true,
        },
    );
    let (rejected, entry_failed) = (publish_errors("rejected"), publish_errors("entry-failed"));
    let letters_dir = tempfile::tempdir().unwrap();
    let context = unique_name("ctx-entries");
    let events: Vec<_> = (0..20)
        .map(|i| {
            event(
                &context,
                "ns",
                "Pod",
                EventType::Added,
                &format!("pod-{i:02}"),
            )
        })
        .collect();
    let spool = Spool::in_memory(16 << 20);
    append(&spool, &events);
    let options = PublisherOptions {
        dead_letters: kubeherald::publish::dead_letter::DeadLetters::for_spool_dir(Some(
            letters_dir.path(),
        )),
        ..options()
    };
    let running = Running::start(&spool, bed.sink(), options);
    wait_drained(&spool);

    let delivered = queue.drain(18, Duration::from_secs(15)).await;
    let got = names(&delivered);
    assert_eq!(got.len(), 18, "18 delivered, no duplicates: {got:?}");
    assert_eq!(got.iter().collect::<BTreeSet<_>>().len(), 18, "{got:?}");
    assert_eq!(
        bed.proxy.count("PublishBatch"),
        3,
        "two batches, then one request with only the 3 retryable entries"
    );
    assert_eq!(
        publish_errors("rejected"),
        rejected + 2,
        "invalid entries counted, not retried"
    );
    assert!(publish_errors("entry-failed") >= entry_failed + 3);
    let letters = dead_letters(letters_dir.path());
    assert_eq!(
        letters.len(),
        2,
        "the invalid entries are kept as dead letters: {letters:?}"
    );
    assert!(letters.iter().all(|(reason, _)| reason == "invalid"));
    running.stop();
    bed.proxy.assert_nothing_refused();
}

/// The dead letters of a spool directory: (reason, object name) per line.
fn dead_letters(dir: &std::path::Path) -> Vec<(String, String)> {
    let file = dir.join("dead-letter").join("events.jsonl");
    let Ok(text) = std::fs::read_to_string(file) else {
        return Vec::new();
    };
    text.lines()
        .map(|line| {
            let letter: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                letter["reason"].as_str().unwrap().to_owned(),
                letter["record"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_sns_will_not_take_become_dead_letters_and_a_replay_publishes_them() {
    let bed = Bed::new(false).await;
    let queue = bed.subscribe(None).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(
        dir.path().join("events"),
        SpoolOptions::with_max_bytes(16 << 20),
    )
    .unwrap();
    let context = unique_name("ctx-dead");
    // First a topic that takes everything, then one that refuses every
    // request (a policy without sns:Publish) for longer than the
    // publisher's bound of attempts.
    let first: Vec<_> = (0..8)
        .map(|i| {
            event(
                &context,
                "ns",
                "Pod",
                EventType::Added,
                &format!("pod-{i:02}"),
            )
        })
        .collect();
    append(&spool, &first);
    let letters = kubeherald::publish::dead_letter::DeadLetters::for_spool_dir(Some(dir.path()));
    let options = PublisherOptions {
        max_in_flight: 1,
        refused_attempts: 3,
        dead_letters: letters,
        ..options()
    };
    let dead_before = metrics()
        .events_dead_lettered
        .get_or_create(&ReasonLabels {
            reason: "refused".into(),
        })
        .get();
    let running = Running::start(&spool, bed.sink(), options.clone());
    wait_drained(&spool);
    let delivered = queue.drain(8, DEADLINE).await;
    assert_eq!(delivered.len(), 8);
    assert!(
        dead_letters(dir.path()).is_empty(),
        "{:?}",
        std::fs::read_to_string(dir.path().join("dead-letter/events.jsonl"))
    );

    bed.proxy.fail_next_for(
        "PublishBatch",
        1_000,
        Fault::Refused {
            status: 403,
            code: "AuthorizationError",
            message: "User: arn:aws:iam::123456789012:user/kubeherald is not authorized to perform: SNS:Publish",
        },
    );
    let refused: Vec<_> = (0..5)
        .map(|i| {
            event(
                &context,
                "ns",
                "Pod",
                EventType::Modified,
                &format!("late-{i}"),
            )
        })
        .collect();
    append(&spool, &refused);
    // The spool is freed although the topic refuses: the segment is not pinned.
    wait_drained(&spool);
    let letters_now = dead_letters(dir.path());
    assert_eq!(letters_now.len(), 5, "{letters_now:?}");
    assert!(letters_now.iter().all(|(reason, _)| reason == "refused"));
    assert_eq!(
        metrics()
            .events_dead_lettered
            .get_or_create(&ReasonLabels {
                reason: "refused".into()
            })
            .get(),
        dead_before + 5
    );
    assert!(
        bed.proxy.count("PublishBatch") >= 4, // one accepted batch, then three refused attempts
        "refused {} times before giving up",
        options.refused_attempts
    );

    // The policy is fixed (a strict layer without the refusals); the
    // operator replays: every letter is published.
    running.stop();
    let proxy = StrictProxy::start(Moto::shared().url());
    let fixed = Bed {
        sdk: TestSdk::new(proxy.url())
            .max_attempts(1)
            .attempt_timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(1)),
        proxy,
        moto_sdk: TestSdk::new(Moto::shared().url()),
        topic: bed.topic.clone(),
    };
    assert_eq!(
        kubeherald::publish::dead_letter::queue_replay(dir.path()).unwrap(),
        5
    );
    assert_eq!(
        kubeherald::publish::dead_letter::ingest_replays(dir.path(), &spool.writer()).unwrap(),
        5
    );
    let running = Running::start(&spool, fixed.sink(), options);
    wait_drained(&spool);
    let replayed = queue.drain(5, DEADLINE).await;
    let mut got = names(&replayed);
    got.sort();
    assert_eq!(
        got,
        ["late-0", "late-1", "late-2", "late-3", "late-4"],
        "every dead letter published once after the replay"
    );
    assert!(dead_letters(dir.path()).is_empty());
    running.stop();
    fixed.proxy.assert_nothing_refused();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_batches_are_in_flight_at_once() {
    let bed = Bed::new(false).await;
    bed.proxy.set_latency(Duration::from_millis(150));
    let context = unique_name("ctx-concurrency");
    let (_dir, spool) = spool_with(&pod_events(&context, 2_000));
    let running = Running::start(
        &spool,
        bed.sink(),
        PublisherOptions {
            max_in_flight: 32,
            ..options()
        },
    );
    wait_drained(&spool);
    assert!(
        bed.proxy.max_concurrent() > 1,
        "requests in flight at once: {}",
        bed.proxy.max_concurrent()
    );
    assert!(bed.proxy.max_concurrent() <= 32, "bounded by max_in_flight");
    assert!(
        bed.proxy.count("PublishBatch") >= 200,
        "10 entries a batch at most"
    );
    running.stop();
    bed.proxy.assert_nothing_refused();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_topics_get_group_and_deduplication_ids() {
    let bed = Bed::new(true).await;
    let sqs = bed.moto_sdk.sqs();
    let queue_url = sqs
        .create_queue()
        .queue_name(format!("{}.fifo", unique_name("q")))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let queue_arn = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    bed.moto_sdk
        .sns()
        .subscribe()
        .topic_arn(&bed.topic)
        .protocol("sqs")
        .endpoint(&queue_arn)
        .attributes("RawMessageDelivery", "true")
        .send()
        .await
        .unwrap();

    let context = unique_name("ctx-fifo");
    let mut events = Vec::new();
    for version in 1..=3 {
        for name in ["pod-a", "pod-b"] {
            let mut e = event(&context, "ns", "Pod", EventType::Modified, name);
            e.resource_version = version.to_string();
            events.push(e);
        }
    }
    let spool = Spool::in_memory(16 << 20);
    append(&spool, &events);
    let running = Running::start(&spool, bed.sink(), options());
    wait_drained(&spool);

    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while received.len() < events.len() && Instant::now() < deadline {
        let answer = sqs
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap();
        for m in answer.messages.unwrap_or_default() {
            sqs.delete_message()
                .queue_url(&queue_url)
                .receipt_handle(m.receipt_handle.clone().unwrap())
                .send()
                .await
                .unwrap();
            received.push(m);
        }
    }
    assert_eq!(received.len(), events.len());
    let mut dedup_ids = BTreeSet::new();
    let mut order: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in &received {
        let attributes = m.attributes.as_ref().unwrap();
        let group = &attributes[&MessageSystemAttributeName::MessageGroupId];
        let dedup = &attributes[&MessageSystemAttributeName::MessageDeduplicationId];
        let name = m.message_attributes.as_ref().unwrap()["object_name"]
            .string_value
            .clone()
            .unwrap();
        assert_eq!(
            group,
            &format!("{CLUSTER}/ns/Pod/{name}"),
            "the group is the object"
        );
        assert!(
            dedup.starts_with(&format!("uid-{name}-")) && dedup.ends_with("-MODIFIED"),
            "{dedup}"
        );
        dedup_ids.insert(dedup.clone());
        order.entry(group.clone()).or_default().push(dedup.clone());
    }
    assert_eq!(
        dedup_ids.len(),
        events.len(),
        "one deduplication id per state"
    );
    for (group, dedups) in order {
        let versions: Vec<&str> = dedups
            .iter()
            .map(|d| d.rsplit('-').nth(1).unwrap())
            .collect();
        assert_eq!(versions, ["1", "2", "3"], "{group}: in order");
    }
    running.stop();
    bed.proxy.assert_nothing_refused();
}

/// A writer the test can read while the publisher holds it.
#[derive(Clone, Default)]
struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn stdout_sink_writes_one_json_line_per_event() {
    let context = unique_name("ctx-stdout");
    let mut events = vec![
        event(&context, "ns", "Pod", EventType::Added, "pod-a"),
        event(&context, "ns", "Deployment", EventType::Deleted, "deploy-a"),
    ];
    events[1].resync = true;
    let spool = Spool::in_memory(1 << 20);
    append(&spool, &events);
    spool.writer().append(b"not a resource event").unwrap();
    let undecodable = publish_errors("undecodable");
    let buffer = SharedBuffer::default();
    let running = Running::start(&spool, Sink::Stdout(Box::new(buffer.clone())), options());
    wait_drained(&spool);
    running.stop();

    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    for (line, sent) in lines.iter().zip(&events) {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        let mut attributes = expected_attributes(sent);
        if sent.resync {
            attributes.insert("flags".into(), "resync".into());
        }
        let got: BTreeMap<String, String> = value["attributes"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        assert_eq!(got, attributes);
        assert!(
            line.ends_with(&format!(r#","object":{}}}"#, sent.object.get())),
            "the object's own bytes: {line}"
        );
    }
    assert_eq!(publish_errors("undecodable"), undecodable + 1);
}

/// SPEC §9: a FIFO batch takes a request slot only once its lane is free.
/// A burst of changes to one object is one message group, so one lane
/// whose batches go one after another; were its waiting batches to hold
/// request slots, the burst would take every slot and the other objects'
/// batches would wait for it to drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_one_fifo_group_does_not_hold_the_other_groups_back() {
    let sns = FastSns::start(Duration::from_millis(20));
    let context = unique_name("ctx-fifo-burst");
    let mut events: Vec<_> = (0..100)
        .map(|_| event(&context, "ns", "Pod", EventType::Modified, "hot"))
        .collect();
    // Several: one of them may share the burst's lane (a hash of the group).
    events.extend((0..8).map(|i| {
        event(
            &context,
            "ns",
            "Pod",
            EventType::Modified,
            &format!("cold-{i}"),
        )
    }));
    let (_dir, spool) = spool_with(&events);
    let sink = fast_sink(&sns, "burst.fifo");
    let running = Running::start(
        &spool,
        sink,
        PublisherOptions {
            max_in_flight: 16,
            ..options()
        },
    );
    wait_drained(&spool);
    running.stop();
    let arrivals = sns.fifo_arrivals();
    let hot = |groups: &Vec<String>| groups.iter().any(|g| g.ends_with("/hot"));
    assert_eq!(
        arrivals.iter().filter(|groups| hot(groups)).count(),
        100,
        "one message of a group per batch: the burst is 100 batches in a row"
    );
    let first_cold = arrivals
        .iter()
        .position(|groups| groups.iter().any(|g| g.contains("/cold-")))
        .expect("the other objects were published");
    assert!(
        first_cold < 10,
        "the other groups went out beside the burst, not after it: first at request {first_cold} of {}",
        arrivals.len()
    );
}

/// SPEC §9: requests in flight adapt to the endpoint. One that serves two
/// requests at a time and queues the rest (latency growing with the queue)
/// gets a few requests at once, not the 256 the ceiling allows, and every
/// event still arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_is_not_hammered() {
    let sns = FastSns::start(Duration::from_millis(50));
    sns.set_workers(Some(2));
    let context = unique_name("ctx-slow");
    let (_dir, spool) = spool_with(&pod_events(&context, 3_000));
    let sink = fast_sink(&sns, "slow");
    let (read, acknowledged) = (
        histogram_count("kubeherald_event_spool_delay_seconds"),
        histogram_count("kubeherald_event_publish_delay_seconds"),
    );
    let running = Running::start(
        &spool,
        sink,
        PublisherOptions {
            max_in_flight: 256,
            ..options()
        },
    );
    wait_drained(&spool);
    running.stop();
    assert_eq!(sns.messages(), 3_000);
    // Each event's delays from its observation are measured (SPEC §9).
    assert!(histogram_count("kubeherald_event_spool_delay_seconds") >= read + 3_000);
    assert!(histogram_count("kubeherald_event_publish_delay_seconds") >= acknowledged + 3_000);
    assert!(
        sns.max_concurrent() <= 64,
        "at most {} requests were in flight at once (the ceiling is 256)",
        sns.max_concurrent()
    );
}

//! Publisher throughput (SPEC §9: at least 10,000 events/s from watch to
//! acknowledged publish, with an SNS endpoint answering after 150 ms, spool
//! on disk, on a 2-core machine).
//!
//! `cargo bench -p kubeherald --bench publish` — one thread appends Pod-like
//! events (about 2 KiB of JSON each) to an on-disk spool in batches of 100,
//! as watchers do, while the publisher thread publishes them to
//! [`FastSns`] (every `PublishBatch` entry successful after 150 ms); the
//! figure is events appended and acknowledged per second, from the first
//! append to the spool being empty. Not a timed test: it only reports.
//! `PUBLISH_BENCH_EVENTS` (default 100,000), `PUBLISH_BENCH_LATENCY_MS`
//! (default 150) and `PUBLISH_BENCH_IN_FLIGHT` (default: the publisher's)
//! override the settings.

use std::time::{Duration, Instant};

use kubeherald::config::TopicArn;
use kubeherald::publish::sns::{PublisherOptions, Sink, spawn_publisher};
use kubeherald::record::{EventType, ResourceEvent};
use kubeherald::spool::{Spool, SpoolOptions};
use kubeherald_testbed::aws::{FastSns, TestSdk};
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A Pod-like object of about 2 KiB, distinct per `i`.
fn event(i: u64) -> ResourceEvent {
    let name = format!(
        "web-{:05}-{:x}",
        i % 50_000,
        i.wrapping_mul(0x9e37_79b9) & 0xfffff
    );
    let env: Vec<_> = (0..8)
        .map(|k| serde_json::json!({"name": format!("VAR_{k}"), "value": format!("value-{k}-{}", i % 13)}))
        .collect();
    let conditions: Vec<_> = ["Initialized", "Ready", "ContainersReady", "PodScheduled"]
        .iter()
        .map(|t| serde_json::json!({"type": t, "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z"}))
        .collect();
    let object = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "production", "uid": format!("0b5d2c1e-{i:012x}"),
            "resourceVersion": (1_000_000 + i).to_string(),
            "labels": {"app": "web", "pod-template-hash": format!("{:x}", i % 977), "tier": "frontend"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2025-01-01T00:00:00Z"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f", "uid": "rs-uid", "controller": true}],
        },
        "spec": {
            "containers": [{
                "name": "web", "image": "registry.example.com/web:1.2.3",
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "env": env,
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10},
            }],
            "nodeName": format!("node-{}", i % 40), "serviceAccountName": "web",
        },
        "status": {
            "phase": "Running", "podIP": format!("10.0.{}.{}", (i / 250) % 250, i % 250),
            "conditions": conditions,
            "containerStatuses": [{"name": "web", "ready": true, "restartCount": 0, "image": "registry.example.com/web:1.2.3",
                "containerID": format!("containerd://{:064x}", i), "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}}}],
        },
    });
    ResourceEvent {
        cluster: "https://api.prod.example.com:6443".into(),
        context: format!("prod-{}", i % 10),
        namespace: "production".into(),
        api_version: "v1".into(),
        kind: "Pod".into(),
        event_type: EventType::Modified,
        name,
        uid: format!("0b5d2c1e-{i:012x}"),
        resource_version: (1_000_000 + i).to_string(),
        resync: false,
        redacted: false,
        topic_arn: None,
        object: RawValue::from_string(object.to_string()).unwrap(),
    }
}

fn main() {
    let events: u64 = env_or("PUBLISH_BENCH_EVENTS", 100_000);
    let latency = Duration::from_millis(env_or("PUBLISH_BENCH_LATENCY_MS", 150));
    let mut options = PublisherOptions::default();
    options.max_in_flight = env_or("PUBLISH_BENCH_IN_FLIGHT", options.max_in_flight);

    let sns = FastSns::start(latency);
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
    // Records are built before the clock starts: the watchers' JSON work is
    // not the publisher's.
    let records: Vec<Vec<u8>> = (0..events).map(|i| event(i).to_record()).collect();
    let record_bytes: usize = records.iter().map(Vec::len).sum();

    let shutdown = CancellationToken::new();
    let publisher = spawn_publisher(
        spool.reader().unwrap(),
        Sink::Sns {
            topic: TopicArn::parse("arn:aws:sns:us-east-1:123456789012:bench").unwrap(),
            routes: Vec::new(),
            sdk: Some(Box::new(TestSdk::new(sns.url()).config())),
        },
        options.clone(),
        shutdown.clone(),
    )
    .unwrap();

    let start = Instant::now();
    let writer = spool.writer();
    let appender = std::thread::spawn(move || {
        for chunk in records.chunks(100) {
            writer.append_batch(chunk).unwrap();
        }
    });
    let mut last_report = Instant::now();
    while sns.messages() < events || spool.stats().pending_records > 0 {
        std::thread::sleep(Duration::from_millis(10));
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "  {:>6.1}s: {} published, {} pending",
                start.elapsed().as_secs_f64(),
                sns.messages(),
                spool.stats().pending_records
            );
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    appender.join().unwrap();
    shutdown.cancel();
    publisher.join().unwrap();

    println!(
        "publish, disk spool, {} ms SNS latency, max_in_flight {}: {events} events ({:.0} bytes avg record) in {elapsed:.2}s: \
         {:.0} events/s spooled to acknowledged ({} PublishBatch requests, {:.1} entries avg, peak {} in flight)",
        latency.as_millis(),
        options.max_in_flight,
        record_bytes as f64 / events as f64,
        events as f64 / elapsed,
        sns.requests(),
        sns.messages() as f64 / sns.requests().max(1) as f64,
        sns.max_concurrent(),
    );
}

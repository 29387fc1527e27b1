//! The log sink against moto behind the strict AWS proxy: log lines appended
//! to the logs spool reach CloudWatch Logs streams as SPEC §4 says (naming,
//! retention, order, timestamps, CloudWatch's batch limits, long lines split,
//! too-old events counted, retries without duplicates, groups recreated,
//! checkpoints written only after a successful put), and the stdout sink
//! without CloudWatch. Every CloudWatch test ends with the proxy having
//! refused nothing real CloudWatch would refuse.
//!
//! Tests wait on conditions (events stored, requests seen, spool drained)
//! with deadlines, never on fixed sleeps.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kubeherald::config::DEFAULT_LOG_ROUTE;
use kubeherald::logs::{Checkpoint, CheckpointStore, ContainerKey};
use kubeherald::metrics::{
    ClusterLabels, ClusterReasonLabels, LogGroupLabels, LogGroupReasonLabels, metrics,
};
use kubeherald::names::{log_group_name, log_stream_name};
use kubeherald::publish::cloudwatch::batch::MAX_EVENT_MESSAGE_BYTES;
use kubeherald::publish::cloudwatch::{
    LogPublisherError, LogPublisherOptions, LogSinkConfig, LogTarget, last_shipped_from_cloudwatch,
    run_log_publisher,
};
use kubeherald::record::LogLine;
use kubeherald::spool::{Spool, SpoolOptions, SpoolWriter};
use kubeherald_testbed::aws::{Fault, Moto, StrictProxy, TestSdk, stored_events, unique_name};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(90);
const NS_PER_MS: i64 = 1_000_000;
const DAY_MS: i64 = 24 * 60 * 60 * 1000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// moto behind a strict proxy, a unique prefix and cluster.
struct Bed {
    proxy: StrictProxy,
    /// Straight to moto: reading back, deleting behind the sink's back.
    moto: aws_sdk_cloudwatchlogs::Client,
    /// The sink's SDK: at the proxy, one attempt, so every injected fault
    /// reaches the sink's own retry loop.
    sdk: TestSdk,
    prefix: String,
    cluster: String,
}

impl Bed {
    fn new() -> Bed {
        let moto = Moto::shared();
        let proxy = StrictProxy::start(moto.url());
        let sdk = TestSdk::new(proxy.url())
            .max_attempts(1)
            .attempt_timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(1));
        Bed {
            moto: TestSdk::new(moto.url()).logs(),
            proxy,
            sdk,
            prefix: unique_name("kh"),
            cluster: unique_name("cluster"),
        }
    }

    fn group(&self) -> String {
        log_group_name(&self.prefix, &self.cluster)
    }

    fn line(&self, pod: &str, timestamp_ms: i64, seq: u32, message: &str) -> LogLine {
        LogLine {
            cluster_name: self.cluster.clone(),
            namespace: "team-a".into(),
            pod: pod.into(),
            container: "app".into(),
            restart_count: 0,
            timestamp: timestamp_ms * NS_PER_MS + 123_456,
            seq_at_timestamp: seq,
            message: message.into(),
            route: kubeherald::config::DEFAULT_LOG_ROUTE.into(),
        }
    }

    fn key(&self, pod: &str) -> ContainerKey {
        ContainerKey {
            cluster: self.cluster.clone(),
            namespace: "team-a".into(),
            pod: pod.into(),
            container: "app".into(),
            restart_count: 0,
        }
    }

    fn stream(pod: &str) -> String {
        log_stream_name("team-a", pod, "app", 0)
    }

    /// The tuning of these tests: short lingers, retries and ticks.
    fn options() -> LogPublisherOptions {
        LogPublisherOptions {
            linger: Duration::from_millis(100),
            read_wait: Duration::from_millis(50),
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_millis(500),
            stats_interval: Duration::from_millis(100),
            ..LogPublisherOptions::default()
        }
    }

    /// Starts the sink on its own thread and runtime, as production runs it.
    fn start(&self, spool: &Spool, checkpoints: &CheckpointStore, retention_days: u32) -> Sink {
        self.start_with(spool, checkpoints, retention_days, Bed::options())
    }

    fn start_with(
        &self,
        spool: &Spool,
        checkpoints: &CheckpointStore,
        retention_days: u32,
        options: LogPublisherOptions,
    ) -> Sink {
        let config = LogSinkConfig {
            target: LogTarget::CloudWatch {
                prefix: self.prefix.clone(),
                retention_days,
                routes: Vec::new(),
                region: "us-east-1".into(),
                sdk: Some(self.sdk.config()),
            },
            checkpoints: checkpoints.clone(),
            options,
        };
        Sink::spawn(spool, config)
    }

    /// Every event of a stream, oldest first, read straight from moto.
    async fn stored(&self, stream: &str) -> Vec<(i64, String)> {
        self.stored_in(&self.group(), stream).await
    }

    /// Every event of a stream of `group`, oldest first, straight from moto.
    async fn stored_in(&self, group: &str, stream: &str) -> Vec<(i64, String)> {
        stored_events(&self.moto, group, stream).await
    }

    /// Polls until `stream` holds at least `n` events; returns them.
    async fn wait_for_events(&self, stream: &str, n: usize) -> Vec<(i64, String)> {
        let start = Instant::now();
        loop {
            let events = self.stored(stream).await;
            if events.len() >= n {
                return events;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{stream}: {} of {n} events after {DEADLINE:?}; proxy saw {:?}",
                events.len(),
                self.proxy.counts()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The sink running on its thread.
struct Sink {
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<Result<(), LogPublisherError>>>,
}

impl Sink {
    fn spawn(spool: &Spool, config: LogSinkConfig) -> Sink {
        let reader = spool.reader().unwrap();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let thread = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(run_log_publisher(reader, config, token))
        });
        Sink {
            shutdown,
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        self.shutdown.cancel();
        self.thread.take().unwrap().join().unwrap().unwrap();
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn append(writer: &SpoolWriter, lines: &[LogLine]) {
    let records: Vec<Vec<u8>> = lines.iter().map(LogLine::to_record).collect();
    for chunk in records.chunks(500) {
        writer.append_batch(chunk).unwrap();
    }
}

/// Polls `condition` until it holds, or panics with `what` after the deadline.
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn shipped(cluster: &str) -> u64 {
    metrics()
        .log_lines_shipped
        .get_or_create(&ClusterLabels {
            cluster: cluster.into(),
        })
        .get()
}

fn rejected(cluster: &str, reason: &str) -> u64 {
    metrics()
        .log_lines_rejected
        .get_or_create(&ClusterReasonLabels {
            cluster: cluster.into(),
            reason: reason.into(),
        })
        .get()
}

fn checkpoint_of(line: &LogLine) -> Checkpoint {
    Checkpoint::of(line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_arrive_in_order_with_timestamps_group_stream_and_retention() {
    let bed = Bed::new();
    let spool = Spool::in_memory(64 << 20);
    let checkpoints = CheckpointStore::in_memory().unwrap();
    let sink = bed.start(&spool, &checkpoints, 7);
    let t = now_ms() - 60_000;
    // Two containers interleaved, as two followers would append them; an
    // empty line; two lines of the same millisecond.
    let mut lines = Vec::new();
    for i in 0..40 {
        lines.push(bed.line("web-1", t + i, 1, &format!("web-1 line {i} é")));
        lines.push(bed.line("web-2", t + 2 * i, 1, &format!("web-2 line {i}")));
    }
    lines.push(bed.line("web-1", t + 100, 1, ""));
    lines.push(bed.line("web-1", t + 101, 1, "same millisecond a"));
    let same = bed.line("web-1", t + 101, 2, "same millisecond b");
    lines.push(same.clone());
    append(&spool.writer(), &lines);

    let web1 = bed.wait_for_events(&Bed::stream("web-1"), 43).await;
    let web2 = bed.wait_for_events(&Bed::stream("web-2"), 40).await;
    let expected = |pod: &str| -> Vec<(i64, String)> {
        lines
            .iter()
            .filter(|l| l.pod == pod)
            .map(|l| {
                let message = if l.message.is_empty() {
                    " ".to_owned()
                } else {
                    l.message.clone()
                };
                (l.timestamp / NS_PER_MS, message)
            })
            .collect()
    };
    assert_eq!(
        web1,
        expected("web-1"),
        "in order, timestamps in ms, the empty line a space"
    );
    assert_eq!(web2, expected("web-2"));

    let groups = bed
        .moto
        .describe_log_groups()
        .log_group_name_prefix(bed.group())
        .send()
        .await
        .unwrap();
    let group = &groups.log_groups()[0];
    assert_eq!(group.log_group_name(), Some(bed.group().as_str()));
    assert_eq!(bed.group(), format!("/{}-{}", bed.prefix, bed.cluster));
    assert_eq!(group.retention_in_days(), Some(7));
    assert_eq!(Bed::stream("web-1"), "team-a/web-1/app/0");

    wait_until("checkpoints", || {
        checkpoints.get(&bed.key("web-1")) == Some(checkpoint_of(&same))
    })
    .await;
    assert_eq!(
        checkpoints.get(&bed.key("web-2")),
        Some(checkpoint_of(&lines[78 + 1])),
        "the last line of web-2"
    );
    wait_until("the spool drained", || spool.stats().pending_records == 0).await;
    assert_eq!(shipped(&bed.cluster), 83);
    assert_eq!(
        bed.proxy.count("CreateLogGroup"),
        1,
        "one group, created once"
    );
    assert_eq!(bed.proxy.count("CreateLogStream"), 2);
    sink.stop();
    bed.proxy.assert_nothing_refused();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudwatch_limits_are_kept_while_building() {
    let bed = Bed::new();
    let spool = Spool::in_memory(256 << 20);
    let checkpoints = CheckpointStore::in_memory().unwrap();
    let sink = bed.start(&spool, &checkpoints, 30);
    let t = now_ms() - 3 * DAY_MS;

    // A 300 KiB line of multi-byte characters: split on character
    // boundaries, every part with the line's timestamp.
    let long: String = "é€😀a".repeat(300 * 1024 / 10);
    // Twelve 150 KiB lines: 1.8 MB, more than one 1 MiB batch.
    let big: Vec<LogLine> = (0..12)
        .map(|i| {
            bed.line(
                "big",
                t + i,
                1,
                &format!("{i:02}{}", "b".repeat(150 * 1024)),
            )
        })
        .collect();
    // 10,050 short lines: more than 10,000 events.
    let many: Vec<LogLine> = (0..10_050)
        .map(|i| {
            bed.line(
                "many",
                t + i / 10,
                (i % 10) as u32 + 1,
                &format!("many {i}"),
            )
        })
        .collect();
    // Three lines over 48 hours: no batch may span more than 24 h.
    let span: Vec<LogLine> = [0, DAY_MS + 1, 2 * DAY_MS + 2]
        .iter()
        .enumerate()
        .map(|(i, dt)| bed.line("span", t + dt, 1, &format!("span {i}")))
        .collect();
    let writer = spool.writer();
    append(&writer, &[bed.line("long", t, 1, &long)]);
    append(&writer, &big);
    append(&writer, &many);
    append(&writer, &span);

    let parts = bed.wait_for_events(&Bed::stream("long"), 2).await;
    assert_eq!(parts.len(), 2);
    assert!(
        parts
            .iter()
            .all(|(ts, m)| *ts == t && m.len() <= MAX_EVENT_MESSAGE_BYTES)
    );
    assert_eq!(
        parts[0].1.clone() + &parts[1].1,
        long,
        "the parts make the line"
    );

    let stored = bed.wait_for_events(&Bed::stream("big"), 12).await;
    let messages: Vec<&str> = stored.iter().map(|(_, m)| m.as_str()).collect();
    let expected: Vec<&str> = big.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(messages, expected);

    let stored = bed.wait_for_events(&Bed::stream("many"), 10_050).await;
    assert_eq!(stored.len(), 10_050);
    assert!(
        stored
            .iter()
            .enumerate()
            .all(|(i, (_, m))| *m == format!("many {i}"))
    );

    let stored = bed.wait_for_events(&Bed::stream("span"), 3).await;
    assert_eq!(
        stored.iter().map(|(ts, _)| ts - t).collect::<Vec<_>>(),
        [0, DAY_MS + 1, 2 * DAY_MS + 2]
    );

    // 1 (long) + at least 2 (big) + 2 (many) + 3 (span) puts.
    assert!(
        bed.proxy.count("PutLogEvents") >= 8,
        "{:?}",
        bed.proxy.counts()
    );
    wait_until("the spool drained", || spool.stats().pending_records == 0).await;
    assert_eq!(
        metrics()
            .log_lines_split
            .get_or_create(&ClusterLabels {
                cluster: bed.cluster.clone()
            })
            .get(),
        1
    );
    sink.stop();
    bed.proxy.assert_nothing_refused();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_old_events_are_counted_not_retried() {
    let bed = Bed::new();
    let spool = Spool::in_memory(64 << 20);
    let checkpoints = CheckpointStore::in_memory().unwrap();
    let sink = bed.start(&spool, &checkpoints, 30);
    // Two lines just past CloudWatch's 14 days and three just inside, all
    // within one 24 h span: one put, the first two rejected.
    let fourteen_days = 14 * DAY_MS;
    let t = now_ms() - fourteen_days;
    let lines = vec![
        bed.line("old", t - 10 * 60_000, 1, "too old 1"),
        bed.line("old", t - 9 * 60_000, 1, "too old 2"),
        bed.line("old", t + 10 * 60_000, 1, "kept 1"),
        bed.line("old", t + 11 * 60_000, 1, "kept 2"),
        bed.line("old", t + 12 * 60_000, 1, "kept 3"),
    ];
    append(&spool.writer(), &lines);
    let stored = bed.wait_for_events(&Bed::stream("old"), 3).await;
    let messages: Vec<&str> = stored.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(messages, ["kept 1", "kept 2", "kept 3"]);
    wait_until("the spool drained", || spool.stats().pending_records == 0).await;
    assert_eq!(rejected(&bed.cluster, "too-old"), 2);
    assert_eq!(shipped(&bed.cluster), 3);
    assert_eq!(bed.proxy.count("PutLogEvents"), 1, "not retried");
    assert_eq!(
        checkpoints.get(&bed.key("old")),
        Some(checkpoint_of(&lines[4]))
    );
    sink.stop();
    bed.proxy.assert_nothing_refused();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_server_errors_and_resets_are_retried_without_duplicates() {
    let bed = Bed::new();
    let spool = Spool::in_memory(64 << 20);
    let checkpoints = CheckpointStore::in_memory().unwrap();
    bed.proxy
        .fail_next_for("PutLogEvents", 2, Fault::Throttling);
    bed.proxy
        .fail_next_for("PutLogEvents", 2, Fault::Status(500));
    bed.proxy
        .fail_next_for("PutLogEvents", 1, Fault::Status(503));
    bed.proxy.fail_next_for("PutLogEvents", 1, Fault::Reset);
    bed.proxy
        .fail_next_for("CreateLogStream", 1, Fault::Throttling);
    let sink = bed.start(&spool, &checkpoints, 30);
    let t = now_ms() - 60_000;
    let pods = ["p0", "p1", "p2"];
    let lines: Vec<LogLine> = (0..300)
        .map(|i| bed.line(pods[i % 3], t + i as i64, 1, &format!("line {i}")))
        .collect();
    append(&spool.writer(), &lines);
    for pod in pods {
        let stored = bed.wait_for_events(&Bed::stream(pod), 100).await;
        let expected: Vec<(i64, String)> = lines
            .iter()
            .filter(|l| l.pod == pod)
            .map(|l| (l.timestamp / NS_PER_MS, l.message.clone()))
            .collect();
        assert_eq!(stored, expected, "{pod}: every line exactly once, in order");
    }
    wait_until("the spool drained", || spool.stats().pending_records == 0).await;
    assert!(
        bed.proxy.count("PutLogEvents") >= 3 + 6,
        "{:?}",
        bed.proxy.counts()
    );
    // Nothing more arrives later: no duplicate was in flight.
    sink.stop();
    for pod in pods {
        assert_eq!(bed.stored(&Bed::stream(pod)).await.len(), 100);
    }
    bed.proxy.assert_nothing_refused();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_advances_only_after_a_successful_put_and_survives_reopening() {
    let bed = Bed::new();
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path().join("logs"), SpoolOptions::default()).unwrap();
    let checkpoints = CheckpointStore::for_spool_dir(Some(dir.path())).unwrap();
    let sink = bed.start(&spool, &checkpoints, 30);
    let t = now_ms() - 60_000;
    let key = bed.key("cp");
    let first = bed.line("cp", t, 1, "first");
    append(&spool.writer(), std::slice::from_ref(&first));
    wait_until("the first checkpoint", || {
        checkpoints.get(&key) == Some(checkpoint_of(&first))
    })
    .await;
    // Acknowledged once the checkpoint is durable (the next commit, ≤ 1 s).
    wait_until("the first line acknowledged", || {
        spool.stats().pending_records == 0
    })
    .await;

    // The next puts fail: the checkpoint and the spool stay where they are.
    const FAILURES: u64 = 5;
    let before = bed.proxy.count("PutLogEvents");
    bed.proxy
        .fail_next_for("PutLogEvents", FAILURES as usize, Fault::Status(500));
    let second = bed.line("cp", t + 1, 1, "second");
    append(&spool.writer(), std::slice::from_ref(&second));
    wait_until("a failed put", || bed.proxy.count("PutLogEvents") > before).await;
    let checkpoint = checkpoints.get(&key);
    let pending = spool.stats().pending_records;
    if bed.proxy.count("PutLogEvents") <= before + FAILURES {
        // The successful attempt has not even been received yet.
        assert_eq!(
            checkpoint,
            Some(checkpoint_of(&first)),
            "no advance before success"
        );
        assert_eq!(pending, 1, "not acknowledged before success");
    }
    wait_until("the second checkpoint", || {
        checkpoints.get(&key) == Some(checkpoint_of(&second))
    })
    .await;
    assert_eq!(bed.proxy.count("PutLogEvents"), before + FAILURES + 1);
    let stored = bed.wait_for_events(&Bed::stream("cp"), 2).await;
    assert_eq!(stored.len(), 2);
    sink.stop();
    drop(checkpoints);
    drop(spool);

    let reopened = CheckpointStore::for_spool_dir(Some(dir.path())).unwrap();
    assert_eq!(reopened.get(&key), Some(checkpoint_of(&second)));
    let cp = reopened.get(&key).unwrap();
    assert_eq!(cp.since_time_seconds(), second.timestamp / 1_000_000_000);
    assert!(cp.already_shipped(second.timestamp, 1));
    assert!(!cp.already_shipped(second.timestamp, 2));
    bed.proxy.assert_nothing_refused();
}

/// SPEC §4 "Exactly once": the spool lets go of a shipped line only after
/// the checkpoint covering it is durable; a clean stop commits, acknowledges
/// and leaves the clean-shutdown mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_are_acknowledged_only_after_their_checkpoint_is_durable() {
    let bed = Bed::new();
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("logs");
    let spool = Spool::open(&spool_dir, SpoolOptions::default()).unwrap();
    // No commit falls due while the sink runs.
    let checkpoints =
        CheckpointStore::open(&dir.path().join("cp"), Duration::from_secs(3600)).unwrap();
    let sink = bed.start(&spool, &checkpoints, 30);
    let line = bed.line("ack", now_ms() - 60_000, 1, "shipped");
    append(&spool.writer(), std::slice::from_ref(&line));
    let key = bed.key("ack");
    wait_until("the put accepted", || {
        checkpoints.get(&key) == Some(checkpoint_of(&line))
    })
    .await;
    assert_eq!(bed.stored(&Bed::stream("ack")).await.len(), 1);
    assert_eq!(
        spool.stats().pending_records,
        1,
        "shipped, but its checkpoint is not durable yet: still in the spool"
    );
    sink.stop();
    assert_eq!(
        spool.stats().pending_records,
        0,
        "acknowledged after the last commit"
    );
    drop(checkpoints);
    let reopened =
        CheckpointStore::open(&dir.path().join("cp"), Duration::from_secs(3600)).unwrap();
    assert!(
        reopened.previous_run_ended_cleanly(),
        "a clean stop leaves the mark"
    );
    assert_eq!(reopened.get(&key), Some(checkpoint_of(&line)));
    bed.proxy.assert_nothing_refused();
}

/// SPEC §4 "One bad log group never stops the others": a group whose
/// requests are denied is parked — its lines wait in the spool, holding no
/// in-flight slot and no buffer — while another cluster's group flows; once
/// allowed again, its lines arrive after the pause, in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_group_is_parked_while_other_groups_flow() {
    let bed = Bed::new();
    let healthy = unique_name("healthy");
    let healthy_group = log_group_name(&bed.prefix, &healthy);
    bed.proxy.deny_log_group(&bed.group(), true);
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path().join("logs"), SpoolOptions::default()).unwrap();
    let checkpoints = CheckpointStore::for_spool_dir(Some(dir.path())).unwrap();
    let options = LogPublisherOptions {
        // One put at a time: a denied group retried in place would hold it
        // and nothing else would flow.
        max_in_flight: 1,
        park_duration: Duration::from_secs(2),
        ..Bed::options()
    };
    let sink = bed.start_with(&spool, &checkpoints, 30, options);
    let t = now_ms() - 60_000;
    let denied: Vec<LogLine> = (0..5)
        .map(|i| bed.line("denied", t + i, 1, &format!("denied {i}")))
        .collect();
    let other = |i: i64| LogLine {
        cluster_name: healthy.clone(),
        ..bed.line("ok", t + i, 1, &format!("ok {i}"))
    };
    append(&spool.writer(), &denied[..3]);
    append(&spool.writer(), &[other(0)]);
    let parked = || {
        metrics()
            .log_group_parked
            .get_or_create(&LogGroupLabels {
                route: DEFAULT_LOG_ROUTE.into(),
                group: bed.group(),
            })
            .get()
    };
    wait_until("the denied group parked", || parked() == 1).await;
    // More of both while the group is parked.
    append(&spool.writer(), &denied[3..]);
    append(&spool.writer(), &[other(1), other(2)]);
    let ok_stream = log_stream_name("team-a", "ok", "app", 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while bed.stored_in(&healthy_group, &ok_stream).await.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the healthy group's lines did not flow: {:?}",
            bed.proxy.counts()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        parked(),
        1,
        "still parked: its pause is not over or it is still denied"
    );
    // The healthy lines leave the spool at the next checkpoint commit; the
    // denied group's stay.
    wait_until("only the denied group's lines left in the spool", || {
        spool.stats().pending_records == 5
    })
    .await;
    assert_eq!(parked(), 1);
    let parks = metrics()
        .log_group_parks
        .get_or_create(&LogGroupReasonLabels {
            route: DEFAULT_LOG_ROUTE.into(),
            group: bed.group(),
            reason: "AccessDeniedException".into(),
        })
        .get();
    assert!(parks >= 1);

    bed.proxy.deny_log_group(&bed.group(), false);
    let stored = bed.wait_for_events(&Bed::stream("denied"), 5).await;
    let messages: Vec<&str> = stored.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(
        messages,
        ["denied 0", "denied 1", "denied 2", "denied 3", "denied 4"]
    );
    wait_until("unparked", || parked() == 0).await;
    sink.stop();
    assert_eq!(spool.stats().pending_records, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_deleted_behind_the_sinks_back_is_recreated() {
    let bed = Bed::new();
    let spool = Spool::in_memory(64 << 20);
    let checkpoints = CheckpointStore::in_memory().unwrap();
    let sink = bed.start(&spool, &checkpoints, 14);
    let t = now_ms() - 60_000;
    append(&spool.writer(), &[bed.line("gone", t, 1, "before")]);
    bed.wait_for_events(&Bed::stream("gone"), 1).await;

    bed.moto
        .delete_log_group()
        .log_group_name(bed.group())
        .send()
        .await
        .unwrap();
    let after: Vec<LogLine> = (0..5)
        .map(|i| bed.line("gone", t + 1 + i, 1, &format!("after {i}")))
        .collect();
    append(&spool.writer(), &after);
    let stored = bed.wait_for_events(&Bed::stream("gone"), 5).await;
    let messages: Vec<&str> = stored.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(
        messages,
        ["after 0", "after 1", "after 2", "after 3", "after 4"]
    );
    assert_eq!(bed.proxy.count("CreateLogGroup"), 2);
    let groups = bed
        .moto
        .describe_log_groups()
        .log_group_name_prefix(bed.group())
        .send()
        .await
        .unwrap();
    assert_eq!(
        groups.log_groups()[0].retention_in_days(),
        Some(14),
        "retention applied again"
    );
    sink.stop();
    bed.proxy.assert_nothing_refused();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_of_many_streams_are_in_flight_together() {
    let bed = Bed::new();
    let spool = Spool::in_memory(64 << 20);
    let checkpoints = CheckpointStore::in_memory().unwrap();
    let t = now_ms() - 60_000;
    let pods: Vec<String> = (0..8).map(|i| format!("pod-{i}")).collect();
    let lines: Vec<LogLine> = pods.iter().map(|p| bed.line(p, t, 1, "hello")).collect();
    // Every answer waits: requests of different streams must overlap.
    bed.proxy.set_latency(Duration::from_millis(300));
    let sink = bed.start(&spool, &checkpoints, 30);
    append(&spool.writer(), &lines);
    for pod in &pods {
        bed.wait_for_events(&Bed::stream(pod), 1).await;
    }
    assert!(
        bed.proxy.max_concurrent() >= 4,
        "requests of different streams overlap: at most {} at once",
        bed.proxy.max_concurrent()
    );
    sink.stop();
    bed.proxy.assert_nothing_refused();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_shipped_from_cloudwatch_returns_the_last_event() {
    let bed = Bed::new();
    let spool = Spool::in_memory(64 << 20);
    let checkpoints = CheckpointStore::in_memory().unwrap();
    let sink = bed.start(&spool, &checkpoints, 30);
    let t = now_ms() - 60_000;
    let lines: Vec<LogLine> = (0..5)
        .map(|i| bed.line("last", t + 10 * i, 1, &format!("line {i}")))
        .collect();
    append(&spool.writer(), &lines);
    bed.wait_for_events(&Bed::stream("last"), 5).await;
    sink.stop();

    let client = bed.sdk.logs();
    let last = last_shipped_from_cloudwatch(&client, &bed.group(), &Bed::stream("last"))
        .await
        .unwrap()
        .expect("an event");
    assert_eq!(
        (last.timestamp_ms, last.message.as_str()),
        (t + 40, "line 4")
    );
    assert_eq!(
        last_shipped_from_cloudwatch(&client, &bed.group(), "team-a/none/app/0")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        last_shipped_from_cloudwatch(&client, "/no-such-group", "s")
            .await
            .unwrap(),
        None
    );
    bed.proxy.assert_nothing_refused();
}

/// A writer the test can read back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cloudwatch_lines_go_to_stdout_as_json() {
    let spool = Spool::in_memory(1 << 20);
    let checkpoints = CheckpointStore::in_memory().unwrap();
    let out = Captured::default();
    let sink = Sink::spawn(
        &spool,
        LogSinkConfig {
            target: LogTarget::Stdout(Box::new(out.clone())),
            checkpoints: checkpoints.clone(),
            options: LogPublisherOptions {
                read_wait: Duration::from_millis(20),
                ..LogPublisherOptions::default()
            },
        },
    );
    let line = LogLine {
        cluster_name: "stdout-cluster".into(),
        namespace: "ns".into(),
        pod: "p".into(),
        container: "c".into(),
        restart_count: 2,
        timestamp: 1_700_000_000_123_456_789,
        seq_at_timestamp: 1,
        message: "hello \"world\" é".into(),
        route: kubeherald::config::DEFAULT_LOG_ROUTE.into(),
    };
    append(&spool.writer(), std::slice::from_ref(&line));
    wait_until("the stdout line", || out.0.lock().unwrap().ends_with(b"\n")).await;
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let json: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "cluster": "stdout-cluster",
            "namespace": "ns",
            "pod": "p",
            "container": "c",
            "restart_count": 2,
            "timestamp": "2023-11-14T22:13:20.123456789Z",
            "message": "hello \"world\" é",
        })
    );
    wait_until("the checkpoint", || {
        checkpoints.get(&ContainerKey::of(&line)) == Some(Checkpoint::of(&line))
    })
    .await;
    wait_until("the spool drained", || spool.stats().pending_records == 0).await;
    sink.stop();
}

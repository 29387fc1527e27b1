//! The pod-log follower against the Kubernetes API test server (SPEC §4):
//! lines become `LogLine` records in order with their kubelet timestamps;
//! init containers are followed; a dropped connection and a restart of the
//! follower resume without gap or duplicate (several lines of one second
//! across the resume point); a container restart finishes the old instance
//! with `previous=true`; exclusions and other namespaces produce nothing;
//! the stream bound makes excess follows wait, never fail.
//!
//! Each test reads back exactly what was appended to the logs spool and
//! waits on conditions with deadlines, never on fixed sleeps.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use kubeherald::config::LogsConfig;
use kubeherald::contexts::ClusterTarget;
use kubeherald::logs::{
    CheckpointStore, FollowLimit, LogFollowOptions, LogFollowerHandle, spawn_log_follower,
};
use kubeherald::record::LogLine;
use kubeherald::spool::{Spool, SpoolOptions, SpoolReader};
use kubeherald::watch::WatchOptions;
use kubeherald_testbed::kube::ApiServer;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

mod support;
use support::target;

/// How long a test waits for something that should happen promptly.
const PATIENCE: Duration = Duration::from_secs(20);

fn init_tracing() {
    // RUST_LOG=kubeherald=debug shows what the follower did.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

fn logs_config(max_streams: usize, exclude: Vec<BTreeMap<String, String>>) -> LogsConfig {
    LogsConfig {
        prefix: "test".into(),
        retention_days: 30,
        exclude_labels: exclude,
        max_streams_per_cluster: max_streams,
        lookup_rate_per_second: 10,
        sink: kubeherald::config::LogSink::CloudWatch,
        routes: Vec::new(),
    }
}

/// Short deadlines so failures and retries happen within a test.
fn fast_options() -> LogFollowOptions {
    LogFollowOptions {
        watch: WatchOptions {
            page_size: 50,
            watch_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(31),
            request_timeout: Duration::from_secs(2),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            unserved_retry: Duration::from_secs(1),
            state_sync_interval: Duration::ZERO,
            max_page_bytes: WatchOptions::default().max_page_bytes,
        },
        idle_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(2),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        fair_share: Duration::from_millis(200),
        finish_grace: Duration::from_secs(2),
        ..LogFollowOptions::default()
    }
}

fn pod(namespace: &str, name: &str, containers: &[&str]) -> Value {
    let containers: Vec<Value> = containers
        .iter()
        .map(|c| json!({"name": c, "image": "busybox"}))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"containers": containers},
    })
}

/// Appends a line stamped `stamp` (RFC 3339) to a container's log.
fn append(
    server: &ApiServer,
    namespace: &str,
    pod: &str,
    container: &str,
    stamp: &str,
    line: &str,
) {
    server.append_log_at(namespace, pod, container, stamp.parse().unwrap(), line);
}

fn ns(text: &str) -> i64 {
    kubeherald::logs::line::parse_timestamp(text.as_bytes()).unwrap()
}

/// The logs spool, its reader, and what was read from it.
struct Harness {
    spool: Spool,
    reader: SpoolReader,
    read: Vec<LogLine>,
    shutdown: CancellationToken,
}

impl Harness {
    fn in_memory() -> Harness {
        init_tracing();
        let spool = Spool::in_memory(64 * 1024 * 1024);
        Harness::with(spool)
    }

    fn on_disk(dir: &Path) -> Harness {
        init_tracing();
        let spool = Spool::open(dir, SpoolOptions::with_max_bytes(64 * 1024 * 1024)).unwrap();
        Harness::with(spool)
    }

    fn with(spool: Spool) -> Harness {
        let reader = spool.reader().unwrap();
        Harness {
            spool,
            reader,
            read: Vec::new(),
            shutdown: CancellationToken::new(),
        }
    }

    fn follow(
        &self,
        target: ClusterTarget,
        logs: LogsConfig,
        checkpoints: &CheckpointStore,
        options: LogFollowOptions,
    ) -> LogFollowerHandle {
        spawn_log_follower(
            target,
            logs,
            self.spool.writer(),
            checkpoints.clone(),
            options,
            self.shutdown.child_token(),
        )
        .unwrap()
    }

    /// Reads (and acknowledges) records until `done` holds for everything
    /// read so far.
    fn read_until(&mut self, what: &str, done: impl Fn(&[LogLine]) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done(&self.read) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; read so far: {:#?}",
                self.read
            );
            let batch = self
                .reader
                .next_batch(1000, Duration::from_millis(50))
                .unwrap();
            for delivery in batch {
                self.read
                    .push(LogLine::from_record(delivery.payload()).expect("a LogLine record"));
                delivery.ack();
            }
        }
    }

    /// Reads what is in the spool now (waiting briefly for more), so an
    /// assertion about what is *not* there sees every record appended.
    fn drain_now(&mut self) {
        loop {
            let batch = self
                .reader
                .next_batch(1000, Duration::from_millis(200))
                .unwrap();
            if batch.is_empty() {
                return;
            }
            for delivery in batch {
                self.read
                    .push(LogLine::from_record(delivery.payload()).expect("a LogLine record"));
                delivery.ack();
            }
        }
    }

    /// Messages read from one container instance, in order.
    fn messages(&self, pod: &str, container: &str, restart_count: u32) -> Vec<String> {
        of(&self.read, pod, container, restart_count)
    }

    fn stop(self, followers: Vec<LogFollowerHandle>) {
        self.shutdown.cancel();
        for follower in followers {
            follower.join().unwrap();
        }
    }
}

fn of(lines: &[LogLine], pod: &str, container: &str, restart_count: u32) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.pod == pod && l.container == container && l.restart_count == restart_count)
        .map(|l| l.message.clone())
        .collect()
}

fn count(lines: &[LogLine], pod: &str, container: &str, restart_count: u32) -> usize {
    of(lines, pod, container, restart_count).len()
}

fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn lines_arrive_in_order_with_timestamps_identity_and_init_containers() {
    let server = ApiServer::start();
    let mut spec = pod("a", "web", &["app", "side"]);
    spec["spec"]["initContainers"] = json!([{"name": "init", "image": "busybox"}]);
    server.apply(spec);
    let stamps = [
        "2026-01-02T03:04:05Z",
        "2026-01-02T03:04:05.1Z",
        "2026-01-02T03:04:05.1Z",
        "2026-01-02T03:04:05.000000001Z",
        "2026-01-02T03:04:06.123456789Z",
    ];
    for (i, stamp) in stamps.iter().enumerate() {
        append(&server, "a", "web", "app", stamp, &format!("app line {i}"));
    }
    append(
        &server,
        "a",
        "web",
        "init",
        "2026-01-02T03:04:00Z",
        "init says hi",
    );
    append(
        &server,
        "a",
        "web",
        "side",
        "2026-01-02T03:04:01Z",
        "  spaced  message ",
    );

    let mut h = Harness::in_memory();
    let checkpoints = CheckpointStore::in_memory().unwrap();
    let target = target(&server, "logs-order", "a");
    let cluster = target.cluster_name.clone();
    let follower = h.follow(
        target,
        logs_config(10, vec![]),
        &checkpoints,
        fast_options(),
    );
    h.read_until("the first lines", |read| read.len() >= 7);
    // Lines written while followed arrive too.
    append(
        &server,
        "a",
        "web",
        "app",
        "2026-01-02T03:04:07Z",
        "live line",
    );
    h.read_until("the live line", |read| count(read, "web", "app", 0) == 6);

    let app: Vec<&LogLine> = h.read.iter().filter(|l| l.container == "app").collect();
    let got: Vec<(i64, u32, &str)> = app
        .iter()
        .map(|l| (l.timestamp, l.seq_at_timestamp, l.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (ns("2026-01-02T03:04:05Z"), 1, "app line 0"),
            (ns("2026-01-02T03:04:05.1Z"), 1, "app line 1"),
            (ns("2026-01-02T03:04:05.1Z"), 2, "app line 2"),
            (ns("2026-01-02T03:04:05.000000001Z"), 1, "app line 3"),
            (ns("2026-01-02T03:04:06.123456789Z"), 1, "app line 4"),
            (ns("2026-01-02T03:04:07Z"), 1, "live line"),
        ]
    );
    for line in &app {
        assert_eq!(
            (
                line.cluster_name.as_str(),
                line.namespace.as_str(),
                line.pod.as_str(),
                line.restart_count
            ),
            (cluster.as_str(), "a", "web", 0)
        );
    }
    assert_eq!(h.messages("web", "init", 0), ["init says hi"]);
    assert_eq!(h.messages("web", "side", 0), ["  spaced  message "]);
    let init = h.read.iter().find(|l| l.container == "init").unwrap();
    assert_eq!(init.timestamp, ns("2026-01-02T03:04:00Z"));

    // Every request asked for timestamps and named its container.
    for request in server.log_requests() {
        assert_eq!(request.param("timestamps").as_deref(), Some("true"));
        assert!(request.param("container").is_some());
    }
    h.stop(vec![follower]);
}

#[test]
fn dropped_connections_resume_without_gap_or_duplicate() {
    let server = ApiServer::start();
    server.apply(pod("a", "p", &["app"]));
    let mut h = Harness::in_memory();
    let checkpoints = CheckpointStore::in_memory().unwrap();
    let follower = h.follow(
        target(&server, "logs-drop", "a"),
        logs_config(10, vec![]),
        &checkpoints,
        LogFollowOptions {
            // A cut can leave a reopened stream silent rather than broken
            // (seen with the test server): the idle deadline recovers it.
            idle_timeout: Duration::from_secs(1),
            ..fast_options()
        },
    );
    // Several lines share one second (two share one timestamp) across the
    // resume point: the resume asks for sinceTime=03:04:05 and skips them.
    append(&server, "a", "p", "app", "2026-01-02T03:04:05.1Z", "one");
    append(&server, "a", "p", "app", "2026-01-02T03:04:05.2Z", "two");
    append(&server, "a", "p", "app", "2026-01-02T03:04:05.2Z", "three");
    h.read_until("three lines", |read| read.len() == 3);
    let follows_before = server.log_requests().len();

    server.drop_connections();
    append(&server, "a", "p", "app", "2026-01-02T03:04:05.2Z", "four");
    append(&server, "a", "p", "app", "2026-01-02T03:04:05.7Z", "five");
    h.read_until("five lines", |read| read.len() >= 5);
    // Drop it again mid-second, then once more with nothing new.
    server.drop_connections();
    append(&server, "a", "p", "app", "2026-01-02T03:04:05.7Z", "six");
    append(&server, "a", "p", "app", "2026-01-02T03:04:06Z", "seven");
    h.read_until("seven lines", |read| read.len() >= 7);
    server.drop_connections();
    wait_for("a third reconnect", || {
        server.log_requests().len() >= follows_before + 3
    });
    append(&server, "a", "p", "app", "2026-01-02T03:04:06Z", "eight");
    h.read_until("eight lines", |read| read.len() >= 8);

    assert_eq!(
        h.messages("p", "app", 0),
        [
            "one", "two", "three", "four", "five", "six", "seven", "eight"
        ]
    );
    let seqs: Vec<u32> = h.read.iter().map(|l| l.seq_at_timestamp).collect();
    assert_eq!(seqs, [1, 1, 2, 3, 1, 2, 1, 2]);
    let resumed: Vec<Option<String>> = server
        .log_requests()
        .iter()
        .skip(1)
        .map(|r| r.param("sinceTime"))
        .collect();
    assert!(
        resumed
            .iter()
            .any(|s| s.as_deref() == Some("2026-01-02T03:04:05Z")),
        "resumes ask for the whole second of the last line: {resumed:?}"
    );
    h.stop(vec![follower]);
}

#[test]
fn a_restarted_follower_resumes_from_its_appended_position_on_disk() {
    let server = ApiServer::start();
    server.apply(pod("a", "p", &["app"]));
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("logs");
    let checkpoint_dir = dir.path().join("checkpoints");
    let options = LogFollowOptions {
        resume_from_appended: true,
        ..fast_options()
    };
    let target = target(&server, "logs-restart-follower", "a");
    append(&server, "a", "p", "app", "2026-01-02T03:04:05.5Z", "one");
    append(&server, "a", "p", "app", "2026-01-02T03:04:05.5Z", "two");
    append(&server, "a", "p", "app", "2026-01-02T03:04:05.6Z", "three");

    let mut read = Vec::new();
    {
        let mut h = Harness::on_disk(&spool_dir);
        let checkpoints = CheckpointStore::open(&checkpoint_dir, Duration::from_secs(1)).unwrap();
        let follower = h.follow(
            target.clone(),
            logs_config(10, vec![]),
            &checkpoints,
            options.clone(),
        );
        h.read_until("three lines", |read| read.len() == 3);
        // Nothing was shipped: only the appended position says where to resume.
        read.append(&mut h.read);
        h.stop(vec![follower]);
        checkpoints.flush().unwrap();
    }
    // While no follower runs: more lines, in the same second and after it.
    append(&server, "a", "p", "app", "2026-01-02T03:04:05.6Z", "four");
    append(&server, "a", "p", "app", "2026-01-02T03:04:07Z", "five");
    {
        let mut h = Harness::on_disk(&spool_dir);
        let checkpoints = CheckpointStore::open(&checkpoint_dir, Duration::from_secs(1)).unwrap();
        let follower = h.follow(
            target.clone(),
            logs_config(10, vec![]),
            &checkpoints,
            options.clone(),
        );
        h.read_until("the two new lines", |read| read.len() >= 2);
        append(&server, "a", "p", "app", "2026-01-02T03:04:07Z", "six");
        h.read_until("six lines in all", |read| read.len() >= 3);
        read.append(&mut h.read);
        h.stop(vec![follower]);
    }
    assert_eq!(
        of(&read, "p", "app", 0),
        ["one", "two", "three", "four", "five", "six"],
        "every line exactly once across the restart"
    );
    let last = server
        .log_requests()
        .into_iter()
        .rev()
        .find(|r| r.param("follow").is_some())
        .unwrap();
    assert_eq!(
        last.param("sinceTime").as_deref(),
        Some("2026-01-02T03:04:05Z")
    );
}

#[test]
fn unshipped_lines_in_a_memory_spool_are_fetched_again_from_the_shipped_checkpoint() {
    // With an in-memory spool the appended position is not trusted: lines
    // appended but not shipped died with the spool, so the shipped
    // checkpoint is the resume point.
    let server = ApiServer::start();
    server.apply(pod("a", "p", &["app"]));
    let checkpoints = CheckpointStore::in_memory().unwrap();
    let target = target(&server, "logs-shipped", "a");
    for (stamp, text) in [("05.1", "one"), ("05.1", "two"), ("05.2", "three")] {
        append(
            &server,
            "a",
            "p",
            "app",
            &format!("2026-01-02T03:04:{stamp}Z"),
            text,
        );
    }
    // The sink shipped "one" and "two" (position 05.1 #2).
    let key = kubeherald::logs::ContainerKey {
        cluster: target.cluster_name.clone(),
        namespace: "a".into(),
        pod: "p".into(),
        container: "app".into(),
        restart_count: 0,
    };
    checkpoints.advance(
        key,
        kubeherald::logs::Checkpoint {
            timestamp_ns: ns("2026-01-02T03:04:05.1Z"),
            seq_at_timestamp: 2,
        },
    );
    let mut h = Harness::in_memory();
    let follower = h.follow(
        target,
        logs_config(10, vec![]),
        &checkpoints,
        fast_options(),
    );
    h.read_until("the unshipped line", |read| !read.is_empty());
    append(&server, "a", "p", "app", "2026-01-02T03:04:06Z", "four");
    h.read_until("two lines", |read| read.len() >= 2);
    assert_eq!(h.messages("p", "app", 0), ["three", "four"]);
    h.stop(vec![follower]);
}

#[test]
fn a_container_restart_finishes_the_old_instance_then_follows_the_new_one() {
    let server = ApiServer::start();
    server.apply(pod("a", "p", &["app"]));
    let mut h = Harness::in_memory();
    let checkpoints = CheckpointStore::in_memory().unwrap();
    let follower = h.follow(
        target(&server, "logs-container-restart", "a"),
        logs_config(10, vec![]),
        &checkpoints,
        fast_options(),
    );
    append(&server, "a", "p", "app", "2026-01-02T03:04:05Z", "old 1");
    h.read_until("the first line", |read| read.len() == 1);
    // The tail: written just before the restart, with a drop in between so
    // the follow may miss it; previous=true collects it.
    server.drop_connections();
    append(&server, "a", "p", "app", "2026-01-02T03:04:05Z", "old 2");
    append(&server, "a", "p", "app", "2026-01-02T03:04:06Z", "old 3");
    server.restart_container("a", "p", "app");
    append(&server, "a", "p", "app", "2026-01-02T03:05:00Z", "new 1");
    h.read_until("the new instance's line", |read| {
        count(read, "p", "app", 1) == 1
    });
    append(&server, "a", "p", "app", "2026-01-02T03:05:01Z", "new 2");
    h.read_until("both new lines", |read| count(read, "p", "app", 1) == 2);

    assert_eq!(h.messages("p", "app", 0), ["old 1", "old 2", "old 3"]);
    assert_eq!(h.messages("p", "app", 1), ["new 1", "new 2"]);
    let old_2 = h.read.iter().find(|l| l.message == "old 2").unwrap();
    assert_eq!(
        (old_2.timestamp, old_2.seq_at_timestamp),
        (ns("2026-01-02T03:04:05Z"), 2)
    );
    assert!(
        server
            .log_requests()
            .iter()
            .any(|r| r.param("previous").as_deref() == Some("true")),
        "the old instance's rest is read with previous=true"
    );
    // A later terminate ends the follow; its lines are complete.
    append(&server, "a", "p", "app", "2026-01-02T03:05:02Z", "new 3");
    server.terminate_container("a", "p", "app");
    h.read_until("the last line", |read| count(read, "p", "app", 1) == 3);
    h.stop(vec![follower]);
}

#[test]
fn excluded_pods_and_other_namespaces_produce_nothing() {
    let server = ApiServer::start();
    let labelled = |name: &str, labels: Value| {
        let mut p = pod("a", name, &["app"]);
        p["metadata"]["labels"] = labels;
        p
    };
    server.apply(labelled(
        "herald",
        json!({"app": "kubeherald", "tier": "ops"}),
    ));
    server.apply(labelled("half-match", json!({"app": "kubeherald"})));
    let mut opted_out = pod("a", "quiet", &["app"]);
    opted_out["metadata"]["annotations"] = json!({"kubeherald.io/logs": "false"});
    server.apply(opted_out);
    server.apply(pod("b", "elsewhere", &["app"]));
    for (namespace, name) in [
        ("a", "herald"),
        ("a", "half-match"),
        ("a", "quiet"),
        ("b", "elsewhere"),
    ] {
        append(
            &server,
            namespace,
            name,
            "app",
            "2026-01-02T03:04:05Z",
            &format!("{name} says"),
        );
    }
    let exclude = vec![BTreeMap::from([
        ("app".to_string(), "kubeherald".to_string()),
        ("tier".to_string(), "ops".to_string()),
    ])];
    let mut h = Harness::in_memory();
    let checkpoints = CheckpointStore::in_memory().unwrap();
    let follower = h.follow(
        target(&server, "logs-exclude", "a"),
        logs_config(10, exclude),
        &checkpoints,
        fast_options(),
    );
    h.read_until("the half-matching pod's line", |read| !read.is_empty());
    // A pod applied later, and a label change that excludes a followed pod.
    server.apply(pod("a", "late", &["app"]));
    append(
        &server,
        "a",
        "late",
        "app",
        "2026-01-02T03:04:06Z",
        "late says",
    );
    h.read_until("the late pod's line", |read| read.len() >= 2);
    assert_eq!(h.messages("half-match", "app", 0), ["half-match says"]);
    assert_eq!(h.messages("late", "app", 0), ["late says"]);
    assert_eq!(h.read.len(), 2, "{:#?}", h.read);
    let asked: Vec<String> = server
        .log_requests()
        .iter()
        .map(|r| r.path.clone())
        .collect();
    for path in &asked {
        assert!(
            path.contains("/pods/half-match/") || path.contains("/pods/late/"),
            "an excluded pod's log was requested: {path}"
        );
    }
    h.stop(vec![follower]);
}

#[test]
fn the_stream_bound_makes_follows_wait_not_fail() {
    let server = ApiServer::start();
    server.apply(pod("a", "p", &["c1", "c2", "c3", "c4"]));
    let limit = FollowLimit::new(2);
    let options = LogFollowOptions {
        limit: Some(limit.clone()),
        ..fast_options()
    };
    let mut h = Harness::in_memory();
    let checkpoints = CheckpointStore::in_memory().unwrap();
    let follower = h.follow(
        target(&server, "logs-bound", "a"),
        logs_config(2, vec![]),
        &checkpoints,
        options,
    );
    let containers = ["c1", "c2", "c3", "c4"];
    for round in 0..3 {
        for c in containers {
            append(
                &server,
                "a",
                "p",
                c,
                &format!("2026-01-02T03:04:0{round}Z"),
                &format!("{c} round {round}"),
            );
        }
        let want = round + 1;
        let deadline = Instant::now() + PATIENCE;
        loop {
            assert!(limit.open() <= 2, "at most two streams open");
            let done = containers.iter().all(|c| count(&h.read, "p", c, 0) >= want);
            if done {
                break;
            }
            assert!(Instant::now() < deadline, "timed out; read {:#?}", h.read);
            let batch = h
                .reader
                .next_batch(1000, Duration::from_millis(20))
                .unwrap();
            for delivery in batch {
                h.read
                    .push(LogLine::from_record(delivery.payload()).unwrap());
                delivery.ack();
            }
        }
    }
    for c in containers {
        let want: Vec<String> = (0..3).map(|round| format!("{c} round {round}")).collect();
        assert_eq!(
            h.messages("p", c, 0),
            want,
            "every line of {c} exactly once"
        );
    }
    assert!(limit.max() == 2);
    h.stop(vec![follower]);
}

#[test]
fn a_deleted_pod_is_finished_and_released() {
    let server = ApiServer::start();
    server.apply(pod("a", "p", &["app"]));
    let mut h = Harness::in_memory();
    let checkpoints = CheckpointStore::in_memory().unwrap();
    let target = target(&server, "logs-delete", "a");
    let follower = h.follow(
        target.clone(),
        logs_config(10, vec![]),
        &checkpoints,
        fast_options(),
    );
    append(&server, "a", "p", "app", "2026-01-02T03:04:05Z", "hello");
    h.read_until("the line", |read| read.len() == 1);
    let key = kubeherald::logs::ContainerKey {
        cluster: target.cluster_name.clone(),
        namespace: "a".into(),
        pod: "p".into(),
        container: "app".into(),
        restart_count: 0,
    };
    checkpoints.advance(
        key.clone(),
        kubeherald::logs::Checkpoint {
            timestamp_ns: 1,
            seq_at_timestamp: 1,
        },
    );
    server.delete("v1", "Pod", "a", "p");
    wait_for("the pod's follow to be released", || {
        follower.status().containers == 0 && checkpoints.get(&key).is_none()
    });
    h.stop(vec![follower]);
}

#[test]
fn a_silent_connection_is_reopened_after_the_idle_deadline() {
    let server = ApiServer::start();
    server.apply(pod("a", "p", &["app"]));
    let mut h = Harness::in_memory();
    let checkpoints = CheckpointStore::in_memory().unwrap();
    let target = target(&server, "logs-silent", "a");
    let reconnects = || {
        kubeherald::metrics::metrics()
            .log_follow_reconnects
            .get_or_create(&kubeherald::metrics::ClusterReasonLabels {
                cluster: target.cluster_name.clone(),
                reason: "idle".into(),
            })
            .get()
    };
    let options = LogFollowOptions {
        idle_timeout: Duration::from_millis(300),
        ..fast_options()
    };
    let follower = h.follow(
        target.clone(),
        logs_config(10, vec![]),
        &checkpoints,
        options,
    );
    append(&server, "a", "p", "app", "2026-01-02T03:04:05Z", "one");
    h.read_until("the first line", |read| read.len() == 1);
    // The connection stays open but nothing flows (a load balancer's
    // silent drop): the idle deadline gives up on it.
    server.stall(true);
    append(&server, "a", "p", "app", "2026-01-02T03:04:05Z", "two");
    wait_for("an idle reconnect", || reconnects() >= 1);
    server.stall(false);
    append(&server, "a", "p", "app", "2026-01-02T03:04:06Z", "three");
    h.read_until("three lines", |read| read.len() >= 3);
    assert_eq!(h.messages("p", "app", 0), ["one", "two", "three"]);
    h.stop(vec![follower]);
}

// ---- the CloudWatch last-event lookup (moto behind the strict proxy) ----

use kubeherald::logs::LastEventLookup;
use kubeherald::publish::cloudwatch::{CloudWatchLookup, LogDestinations, LookupLimiter};
use kubeherald_testbed::aws::{Fault, Moto, StrictProxy, TestSdk, unique_name};

/// moto behind the strict proxy, a unique log group prefix, and a runtime
/// to arrange streams with.
struct Cloud {
    proxy: StrictProxy,
    moto: aws_sdk_cloudwatchlogs::Client,
    prefix: String,
    runtime: tokio::runtime::Runtime,
}

impl Cloud {
    fn new() -> Cloud {
        let moto = Moto::shared();
        Cloud {
            proxy: StrictProxy::start(moto.url()),
            moto: TestSdk::new(moto.url()).logs(),
            prefix: unique_name("kh"),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    /// The follower's lookup: through the proxy, one attempt per request
    /// (so every injected fault reaches the follower's own retry), paced by
    /// `limiter`.
    fn lookup(&self, limiter: LookupLimiter) -> std::sync::Arc<dyn LastEventLookup> {
        let sdk = TestSdk::new(self.proxy.url())
            .max_attempts(1)
            .attempt_timeout(Duration::from_secs(10));
        let destinations = self.runtime.block_on(LogDestinations::load(
            &[kubeherald::config::LogRoute::default_route(
                &self.prefix,
                30,
            )],
            &sdk.config(),
        ));
        std::sync::Arc::new(CloudWatchLookup::new(destinations, limiter))
    }

    /// Stores `events` (ms, message) in the stream of container `app` of
    /// `pod`, instance 0, as an earlier run would have shipped them.
    fn store(&self, cluster: &str, namespace: &str, pod: &str, events: &[(i64, &str)]) {
        let group = kubeherald::names::log_group_name(&self.prefix, cluster);
        let stream = kubeherald::names::log_stream_name(namespace, pod, "app", 0);
        self.runtime.block_on(async {
            let _ = self
                .moto
                .create_log_group()
                .log_group_name(&group)
                .send()
                .await;
            self.moto
                .create_log_stream()
                .log_group_name(&group)
                .log_stream_name(&stream)
                .send()
                .await
                .unwrap();
            let events = events.iter().map(|(ms, message)| {
                aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
                    .timestamp(*ms)
                    .message(*message)
                    .build()
                    .unwrap()
            });
            self.moto
                .put_log_events()
                .log_group_name(&group)
                .log_stream_name(&stream)
                .set_log_events(Some(events.collect()))
                .send()
                .await
                .unwrap();
        });
    }
}

fn ms(text: &str) -> i64 {
    ns(text) / 1_000_000
}

fn counter(family: &str, cluster: &str, reason: &str) -> u64 {
    let m = kubeherald::metrics::metrics();
    let labels = kubeherald::metrics::ClusterReasonLabels {
        cluster: cluster.into(),
        reason: reason.into(),
    };
    match family {
        "gaps" => m.log_gaps.get_or_create(&labels).get(),
        "lost" => m.log_lines_lost.get_or_create(&labels).get(),
        "errors" => m.log_follow_errors.get_or_create(&labels).get(),
        other => panic!("no counter {other}"),
    }
}

/// Recent timestamps: CloudWatch refuses events older than 14 days.
fn recent(seconds_ago: i64, frac: &str) -> String {
    let now = k8s_openapi::jiff::Timestamp::now().as_second() - seconds_ago;
    let t = k8s_openapi::jiff::Timestamp::from_second(now).unwrap();
    format!("{}{frac}Z", t.to_string().trim_end_matches('Z'))
}

#[test]
fn throttled_lookups_wait_and_ask_again_instead_of_reading_from_the_first_line() {
    let server = ApiServer::start();
    server.apply(pod("a", "p", &["app"]));
    let cloud = Cloud::new();
    let target = target(&server, &unique_name("logs-throttled"), "a");
    let cluster = target.cluster_name.clone();
    let (t1, t2, t3) = (recent(60, ".1"), recent(60, ".2"), recent(59, ".5"));
    for (stamp, text) in [(&t1, "one"), (&t2, "two"), (&t3, "three")] {
        append(&server, "a", "p", "app", stamp, text);
    }
    // An earlier run shipped "one" and "two"; this one has no checkpoint.
    cloud.store(&cluster, "a", "p", &[(ms(&t1), "one"), (ms(&t2), "two")]);
    cloud
        .proxy
        .fail_next_for("GetLogEvents", 4, Fault::Throttling);
    let errors_before = counter("errors", &cluster, "cloudwatch-lookup");

    let mut h = Harness::in_memory();
    let checkpoints = CheckpointStore::in_memory().unwrap();
    let follower = h.follow(
        target,
        logs_config(10, vec![]),
        &checkpoints,
        LogFollowOptions {
            last_event: Some(cloud.lookup(LookupLimiter::new(10))),
            ..fast_options()
        },
    );
    h.read_until("the line CloudWatch does not hold", |read| !read.is_empty());
    let live = recent(0, ".3");
    append(&server, "a", "p", "app", &live, "four");
    h.read_until("the live line", |read| read.len() >= 2);
    assert_eq!(
        h.messages("p", "app", 0),
        ["three", "four"],
        "throttling never makes the follow start from the first line"
    );
    assert!(
        cloud.proxy.count("GetLogEvents") >= 5,
        "{:?}",
        cloud.proxy.counts()
    );
    assert!(counter("errors", &cluster, "cloudwatch-lookup") >= errors_before + 4);
    assert_eq!(counter("gaps", &cluster, "lookup-refused"), 0);
    cloud.proxy.assert_nothing_refused();
    h.stop(vec![follower]);
}

#[test]
fn a_refused_lookup_starts_from_now_with_a_gap_marker() {
    let server = ApiServer::start();
    server.apply(pod("a", "p", &["app"]));
    let cloud = Cloud::new();
    let target = target(&server, &unique_name("logs-refused"), "a");
    let cluster = target.cluster_name.clone();
    append(&server, "a", "p", "app", &recent(120, ".1"), "old one");
    append(&server, "a", "p", "app", &recent(120, ".2"), "old two");
    cloud.proxy.fail_next_for(
        "GetLogEvents",
        1,
        Fault::Refused {
            status: 400,
            code: "AccessDeniedException",
            message: "User is not authorized to perform: logs:GetLogEvents",
        },
    );
    let mut h = Harness::in_memory();
    let checkpoints = CheckpointStore::in_memory().unwrap();
    let before = kubeherald::logs::line::parse_timestamp(recent(0, "").as_bytes()).unwrap();
    let follower = h.follow(
        target,
        logs_config(10, vec![]),
        &checkpoints,
        LogFollowOptions {
            last_event: Some(cloud.lookup(LookupLimiter::new(10))),
            ..fast_options()
        },
    );
    h.read_until("the gap marker", |read| !read.is_empty());
    // Written after the start: read.
    let live = recent(-1, ".5");
    append(&server, "a", "p", "app", &live, "new one");
    h.read_until("the new line", |read| read.len() >= 2);
    let marker = &h.read[0];
    assert!(
        marker
            .message
            .starts_with("[kubeherald] gap: CloudWatch refused"),
        "{marker:?}"
    );
    assert!(marker.message.ends_with("were not read"), "{marker:?}");
    assert_eq!(marker.seq_at_timestamp, 0);
    assert!(marker.timestamp >= before);
    assert_eq!(
        h.messages("p", "app", 0)[1..],
        ["new one"],
        "lines from before the start are not read (they may be in CloudWatch)"
    );
    assert!(h.read[1].timestamp > marker.timestamp);
    assert_eq!(counter("gaps", &cluster, "lookup-refused"), 1);
    assert_eq!(
        cloud.proxy.count("GetLogEvents"),
        1,
        "an AccessDenied is not retried"
    );
    h.stop(vec![follower]);
}

#[test]
fn lookups_take_a_stream_slot() {
    let server = ApiServer::start();
    let containers = ["c1", "c2", "c3", "c4", "c5", "c6"];
    server.apply(pod("a", "p", &containers));
    let cloud = Cloud::new();
    // Slow answers: lookups that did not wait for a slot would overlap.
    cloud.proxy.set_latency(Duration::from_millis(300));
    let target = target(&server, &unique_name("logs-lookup-slots"), "a");
    for c in containers {
        append(&server, "a", "p", c, &recent(5, ".1"), &format!("{c} says"));
    }
    let limit = FollowLimit::new(2);
    let mut h = Harness::in_memory();
    let checkpoints = CheckpointStore::in_memory().unwrap();
    let follower = h.follow(
        target,
        logs_config(2, vec![]),
        &checkpoints,
        LogFollowOptions {
            last_event: Some(cloud.lookup(LookupLimiter::new(100))),
            limit: Some(limit),
            ..fast_options()
        },
    );
    h.read_until("every container's line", |read| {
        read.len() >= containers.len()
    });
    assert!(cloud.proxy.count("GetLogEvents") >= containers.len() as u64);
    assert!(
        cloud.proxy.max_concurrent() <= 2,
        "{} lookups at once with two stream slots",
        cloud.proxy.max_concurrent()
    );
    h.stop(vec![follower]);
}

// ---- gaps: counted, logged, marked in the stream ----

/// The positions of an instance's lines strictly increase: the sink drops
/// a line at or before its stream's high water as a duplicate.
fn assert_positions_increase(lines: &[LogLine], pod: &str, container: &str, restart_count: u32) {
    let positions: Vec<(i64, u32)> = lines
        .iter()
        .filter(|l| l.pod == pod && l.container == container && l.restart_count == restart_count)
        .map(|l| (l.timestamp, l.seq_at_timestamp))
        .collect();
    for pair in positions.windows(2) {
        assert!(pair[0] < pair[1], "positions out of order: {positions:?}");
    }
}

fn is_marker(message: &str, words: &str) -> bool {
    message.starts_with("[kubeherald] gap: ")
        && message.contains(words)
        && message.ends_with("were not read")
}

#[test]
fn a_log_rotated_away_while_disconnected_is_a_marked_and_estimated_gap() {
    let server = ApiServer::start_with(kubeherald_testbed::kube::ServerOptions {
        max_log_lines: 4,
        ..Default::default()
    });
    server.apply(pod("a", "p", &["app"]));
    let mut h = Harness::in_memory();
    let checkpoints = CheckpointStore::in_memory().unwrap();
    let target = target(&server, "logs-rotated", "a");
    let cluster = target.cluster_name.clone();
    let gaps_before = counter("gaps", &cluster, "rotated");
    let reconnects = || {
        kubeherald::metrics::metrics()
            .log_follow_reconnects
            .get_or_create(&kubeherald::metrics::ClusterReasonLabels {
                cluster: cluster.clone(),
                reason: "idle".into(),
            })
            .get()
    };
    let follower = h.follow(
        target,
        logs_config(10, vec![]),
        &checkpoints,
        LogFollowOptions {
            idle_timeout: Duration::from_millis(300),
            ..fast_options()
        },
    );
    // One line a second: the rate the gap's size is estimated from.
    let stamp = |s: u32| format!("2026-01-02T03:04:{s:02}.5Z");
    for s in 0..3 {
        append(&server, "a", "p", "app", &stamp(s), &format!("line {s}"));
    }
    h.read_until("three lines", |read| read.len() == 3);
    // Disconnected (silent, then no answers) while the container writes 7
    // lines more: the log keeps 4, so lines 3, 4 and 5 rotate away.
    server.stall(true);
    wait_for("an idle reconnect", || reconnects() >= 1);
    for s in 3..10 {
        append(&server, "a", "p", "app", &stamp(s), &format!("line {s}"));
    }
    server.stall(false);
    h.read_until("the lines still served", |read| {
        read.iter().any(|l| l.message == "line 9")
    });
    // The resume after the marker skips what was read, marker included.
    server.drop_connections();
    append(&server, "a", "p", "app", &stamp(10), "line 10");
    h.read_until("the line after a resume", |read| {
        read.iter().any(|l| l.message == "line 10")
    });
    let messages = h.messages("p", "app", 0);
    assert_eq!(messages.len(), 9, "{messages:#?}");
    assert_eq!(messages[..3], ["line 0", "line 1", "line 2"]);
    assert!(
        is_marker(&messages[3], "the log rotated away"),
        "{:?}",
        messages[3]
    );
    assert!(
        messages[3].contains("lines from 2026-01-02T03:04:02.5Z to 2026-01-02T03:04:06.5Z"),
        "{:?}",
        messages[3]
    );
    assert_eq!(
        messages[4..],
        ["line 6", "line 7", "line 8", "line 9", "line 10"]
    );
    let marker = h.read.iter().find(|l| l.message == messages[3]).unwrap();
    assert_eq!(
        (marker.timestamp, marker.seq_at_timestamp),
        (ns(&stamp(6)), 0),
        "position 0 of the first line after the gap"
    );
    assert_positions_increase(&h.read, "p", "app", 0);
    assert_eq!(counter("gaps", &cluster, "rotated"), gaps_before + 1);
    assert_eq!(
        counter("lost", &cluster, "rotated"),
        3,
        "one line a second for four seconds: three lines between"
    );
    h.stop(vec![follower]);
}

#[test]
fn a_pod_deleted_before_its_log_was_read_is_a_marked_gap() {
    let server = ApiServer::start();
    server.apply(pod("a", "p", &["app"]));
    let mut h = Harness::in_memory();
    let checkpoints = CheckpointStore::in_memory().unwrap();
    let target = target(&server, "logs-deleted-unread", "a");
    let cluster = target.cluster_name.clone();
    let follower = h.follow(
        target,
        logs_config(10, vec![]),
        &checkpoints,
        fast_options(),
    );
    append(&server, "a", "p", "app", "2026-01-02T03:04:05Z", "read");
    h.read_until("the first line", |read| read.len() == 1);
    // Cut off and unanswered: the line written now and the pod's deletion
    // happen while the follow cannot reconnect.
    let broken = || {
        kubeherald::metrics::metrics()
            .log_follow_reconnects
            .get_or_create(&kubeherald::metrics::ClusterReasonLabels {
                cluster: cluster.clone(),
                reason: "broken".into(),
            })
            .get()
    };
    let broken_before = broken();
    server.stall(true);
    server.drop_connections();
    // The old stream is gone before the line is written.
    wait_for("the follow to see its stream broken", || {
        broken() > broken_before
    });
    append(
        &server,
        "a",
        "p",
        "app",
        "2026-01-02T03:04:06Z",
        "never read",
    );
    server.delete("v1", "Pod", "a", "p");
    server.stall(false);
    h.read_until("the gap marker", |read| read.len() >= 2);
    wait_for("the pod's follow to end", || {
        follower.status().containers == 0
    });
    let messages = h.messages("p", "app", 0);
    assert_eq!(messages.len(), 2, "{messages:#?}");
    assert_eq!(messages[0], "read");
    assert!(
        is_marker(&messages[1], "the pod was deleted"),
        "{messages:?}"
    );
    assert!(
        messages[1].contains("lines from 2026-01-02T03:04:05Z to "),
        "{messages:?}"
    );
    assert_positions_increase(&h.read, "p", "app", 0);
    assert_eq!(counter("gaps", &cluster, "pod-deleted"), 1);
    h.stop(vec![follower]);
}

#[test]
fn a_pod_deleted_after_its_log_was_read_has_no_gap() {
    let server = ApiServer::start();
    server.apply(pod("a", "p", &["app"]));
    let mut h = Harness::in_memory();
    let checkpoints = CheckpointStore::in_memory().unwrap();
    let target = target(&server, "logs-deleted-read", "a");
    let cluster = target.cluster_name.clone();
    let follower = h.follow(
        target,
        logs_config(10, vec![]),
        &checkpoints,
        fast_options(),
    );
    append(&server, "a", "p", "app", "2026-01-02T03:04:05Z", "one");
    append(&server, "a", "p", "app", "2026-01-02T03:04:06Z", "two");
    server.terminate_container("a", "p", "app");
    h.read_until("both lines", |read| read.len() == 2);
    server.delete("v1", "Pod", "a", "p");
    wait_for("the pod's follow to end", || {
        follower.status().containers == 0
    });
    h.drain_now();
    assert_eq!(h.messages("p", "app", 0), ["one", "two"]);
    assert_eq!(counter("gaps", &cluster, "pod-deleted"), 0);
    h.stop(vec![follower]);
}

// ---- short-lived containers ----

#[test]
fn a_container_seen_only_terminated_is_read_once() {
    let server = ApiServer::start();
    let mut spec = pod("a", "job", &["app"]);
    spec["status"] = json!({
        "phase": "Succeeded",
        "containerStatuses": [{
            "name": "app", "image": "busybox", "imageID": "", "ready": false,
            "restartCount": 0, "started": false,
            "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                "startedAt": "2026-01-02T03:04:00Z", "finishedAt": "2026-01-02T03:04:09Z"}},
        }],
    });
    server.apply(spec);
    append(&server, "a", "job", "app", "2026-01-02T03:04:05Z", "done 1");
    append(&server, "a", "job", "app", "2026-01-02T03:04:06Z", "done 2");
    let mut h = Harness::in_memory();
    let checkpoints = CheckpointStore::in_memory().unwrap();
    let target = target(&server, "logs-terminated", "a");
    let cluster = target.cluster_name.clone();
    let follower = h.follow(
        target,
        logs_config(10, vec![]),
        &checkpoints,
        fast_options(),
    );
    h.read_until("both lines", |read| read.len() == 2);
    wait_for("the follow to go idle", || {
        server.log_requests().iter().any(|r| r.status == 200)
    });
    // A pod change must not read it again.
    let mut changed = server.get("v1", "Pod", "a", "job").unwrap();
    changed["metadata"]["labels"] = json!({"touched": "yes"});
    server.apply(changed);
    server.delete("v1", "Pod", "a", "job");
    wait_for("the pod's follow to end", || {
        follower.status().containers == 0
    });
    h.drain_now();
    assert_eq!(h.messages("job", "app", 0), ["done 1", "done 2"]);
    assert_eq!(h.read.len(), 2, "{:#?}", h.read);
    assert_eq!(counter("gaps", &cluster, "pod-deleted"), 0);
    h.stop(vec![follower]);
}

#[test]
fn restarts_between_two_looks_read_the_previous_instance_and_mark_the_skipped_ones() {
    let server = ApiServer::start();
    server.apply(pod("a", "p", &["app"]));
    let mut h = Harness::in_memory();
    let checkpoints = CheckpointStore::in_memory().unwrap();
    let target = target(&server, "logs-restart-jump", "a");
    let cluster = target.cluster_name.clone();
    let follower = h.follow(
        target,
        logs_config(10, vec![]),
        &checkpoints,
        fast_options(),
    );
    append(&server, "a", "p", "app", "2026-01-02T03:04:00Z", "zero");
    h.read_until("instance 0's line", |read| read.len() == 1);
    // Three restarts the follower cannot see one by one (every stream and
    // answer held): instance 1 is never served again, instance 2 is the
    // previous one when the follower looks.
    server.stall(true);
    server.restart_container("a", "p", "app");
    append(&server, "a", "p", "app", "2026-01-02T03:04:10Z", "one");
    server.restart_container("a", "p", "app");
    append(&server, "a", "p", "app", "2026-01-02T03:04:20Z", "two");
    server.restart_container("a", "p", "app");
    append(&server, "a", "p", "app", "2026-01-02T03:04:30Z", "three");
    server.stall(false);
    h.read_until("instances 1 to 3", |read| {
        count(read, "p", "app", 1) == 1
            && count(read, "p", "app", 2) == 1
            && count(read, "p", "app", 3) == 1
    });
    assert_eq!(
        h.messages("p", "app", 0),
        ["zero"],
        "read to its end: no gap"
    );
    let skipped = h.messages("p", "app", 1);
    assert!(
        is_marker(&skipped[0], "the container restarted again"),
        "{skipped:?}"
    );
    assert_eq!(
        h.messages("p", "app", 2),
        ["two"],
        "read with previous=true"
    );
    assert_eq!(h.messages("p", "app", 3), ["three"]);
    assert_eq!(counter("gaps", &cluster, "instance-skipped"), 1);
    assert!(
        server
            .log_requests()
            .iter()
            .any(|r| r.param("previous").as_deref() == Some("true") && r.status == 200)
    );
    h.stop(vec![follower]);
}

#[test]
fn a_new_pod_first_seen_restarted_has_its_previous_instance_read() {
    let server = ApiServer::start();
    let mut h = Harness::in_memory();
    let checkpoints = CheckpointStore::in_memory().unwrap();
    let target = target(&server, "logs-new-restarted", "a");
    let follower = h.follow(
        target,
        logs_config(10, vec![]),
        &checkpoints,
        fast_options(),
    );
    wait_for("the first pods LIST", || follower.status().synced);
    // Created, logged, crashed and restarted before the follower saw it.
    server.stall(true);
    server.apply(pod("a", "p", &["app"]));
    append(
        &server,
        "a",
        "p",
        "app",
        "2026-01-02T03:04:00Z",
        "first run",
    );
    server.restart_container("a", "p", "app");
    append(
        &server,
        "a",
        "p",
        "app",
        "2026-01-02T03:04:10Z",
        "second run",
    );
    server.stall(false);
    h.read_until("both instances", |read| {
        count(read, "p", "app", 0) == 1 && count(read, "p", "app", 1) == 1
    });
    assert_eq!(h.messages("p", "app", 0), ["first run"]);
    assert_eq!(h.messages("p", "app", 1), ["second run"]);
    h.stop(vec![follower]);
}

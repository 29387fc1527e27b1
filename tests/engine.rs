//! The one list/watch engine against the Kubernetes API test server, through
//! both of its handlers: a configured kind's watcher (ConfigMaps) and a log
//! follower's pods watch. The same LIST/WATCH rules (SPEC §3) hold for both:
//!
//! - a WATCH answered with 410 every time after a good LIST re-lists, but
//!   the LISTs are spaced by a growing backoff (never back to back): a good
//!   LIST alone does not reset the backoff;
//! - a WATCH answered with 500 every time is retried from the same version
//!   (one LIST only), spaced by a growing backoff;
//! - a server-side watch timeout resumes the WATCH without a re-list and is
//!   counted as a `timeout` restart.
//!
//! Gaps between requests are checked against the backoff's lower bounds
//! (a slow machine only makes them longer); nothing waits on a fixed sleep.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kubeherald::config::{LogsConfig, ResourceKind};
use kubeherald::contexts::ClusterTarget;
use kubeherald::logs::{CheckpointStore, LogFollowOptions, spawn_log_follower};
use kubeherald::spool::Spool;
use kubeherald::watch::{WatchOptions, spawn_kind_watcher};
use kubeherald_testbed::kube::ApiServer;
use serde_json::json;
use tokio_util::sync::CancellationToken;

mod support;
use support::{target, watch_counter as counter};

const PATIENCE: Duration = Duration::from_secs(30);

/// The backoff of these tests: ceilings 100, 200, 400, 800, 800... ms; each
/// delay is drawn from [ceiling/2, ceiling].
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_millis(800);

/// The lower bound of the `n`-th delay (0-based) of a backoff that started
/// from zero failures.
fn floor(n: u32) -> Duration {
    let ceiling = BACKOFF_INITIAL
        .saturating_mul(1u32 << n.min(16))
        .min(BACKOFF_MAX);
    ceiling / 2
}

/// Which handler of the engine a test drives.
#[derive(Debug, Clone, Copy)]
enum Handler {
    /// `spawn_kind_watcher` of ConfigMaps.
    Kind,
    /// The pods watch of `spawn_log_follower`.
    Pods,
}

impl Handler {
    /// The kind whose requests the server counts.
    fn server_kind(self) -> &'static str {
        match self {
            Handler::Kind => "ConfigMap",
            Handler::Pods => "Pod",
        }
    }

    /// The `kind` label of its watch metrics.
    fn metrics_kind(self) -> &'static str {
        match self {
            Handler::Kind => "ConfigMap",
            Handler::Pods => "Pod (logs)",
        }
    }
}

fn watch_options(watch_timeout: Duration) -> WatchOptions {
    WatchOptions {
        page_size: 50,
        watch_timeout,
        idle_timeout: watch_timeout + Duration::from_secs(5),
        request_timeout: Duration::from_secs(2),
        backoff_initial: BACKOFF_INITIAL,
        backoff_max: BACKOFF_MAX,
        unserved_retry: Duration::from_secs(1),
        state_sync_interval: Duration::ZERO,
        max_page_bytes: WatchOptions::default().max_page_bytes,
    }
}

/// A running watch of one handler; stops (and joins) when dropped.
struct Running {
    shutdown: CancellationToken,
    join: Option<Box<dyn FnOnce()>>,
    _spool: Spool,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(join) = self.join.take() {
            join();
        }
    }
}

fn start(handler: Handler, target: ClusterTarget, options: WatchOptions) -> Running {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let spool = Spool::in_memory(16 * 1024 * 1024);
    let shutdown = CancellationToken::new();
    let join: Box<dyn FnOnce()> = match handler {
        Handler::Kind => {
            let handle = spawn_kind_watcher(
                target,
                ResourceKind {
                    api_version: "v1".into(),
                    kind: "ConfigMap".into(),
                },
                spool.writer(),
                None,
                options,
                shutdown.child_token(),
            )
            .unwrap();
            Box::new(move || handle.join().unwrap())
        }
        Handler::Pods => {
            let logs = LogsConfig {
                prefix: "test".into(),
                retention_days: 30,
                exclude_labels: Vec::<BTreeMap<String, String>>::new(),
                max_streams_per_cluster: 10,
                lookup_rate_per_second: 10,
                sink: kubeherald::config::LogSink::CloudWatch,
                routes: Vec::new(),
            };
            let handle = spawn_log_follower(
                target,
                logs,
                spool.writer(),
                CheckpointStore::in_memory().unwrap(),
                LogFollowOptions {
                    watch: options,
                    ..LogFollowOptions::default()
                },
                shutdown.child_token(),
            )
            .unwrap();
            Box::new(move || handle.join().unwrap())
        }
    };
    Running {
        shutdown,
        join: Some(join),
        _spool: spool,
    }
}

fn wait_for(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

fn server_with_objects(namespace: &str) -> ApiServer {
    let server = ApiServer::start();
    server.apply(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "c1", "namespace": namespace}, "data": {"k": "v"},
    }));
    server.apply(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p1", "namespace": namespace},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
    }));
    server
}

/// Every WATCH answers 410 right after a good LIST: LISTs follow, spaced by
/// the backoff — the first re-list at once, then growing delays.
fn watch_410_every_time_backs_off_the_relists(handler: Handler) {
    let namespace = "ns410";
    let context = format!("gone-{handler:?}");
    let server = server_with_objects(namespace);
    server.fail_watches(handler.server_kind(), 410, 10_000);
    let _running = start(
        handler,
        target(&server, &context, namespace),
        watch_options(Duration::from_secs(30)),
    );
    const LISTS: usize = 6;
    wait_for("six LISTs", || {
        server.list_count(handler.server_kind()) >= LISTS
    });
    let lists: Vec<Instant> = server
        .list_requests(handler.server_kind())
        .iter()
        .map(|r| r.at)
        .take(LISTS)
        .collect();
    let gaps = gaps(&lists);
    // gaps[0]: the first re-list after the first 410 comes at once (its
    // delay is drawn but not waited). Every later one waits at least the
    // backoff's floor, growing: never a LIST loop.
    for (n, gap) in gaps.iter().enumerate().skip(1) {
        let floor = floor(n as u32);
        assert!(
            *gap >= floor,
            "{handler:?}: LIST {} came {gap:?} after the one before, under the backoff floor {floor:?}; gaps {gaps:?}",
            n + 1
        );
    }
    assert!(
        counter("relists", &context, handler.metrics_kind(), "expired") >= (LISTS - 1) as u64,
        "{handler:?}: each re-list is counted as expired"
    );
}

/// Every WATCH answers 500: retried from the same version (no re-list),
/// spaced by the backoff.
fn watch_500_every_time_backs_off_without_relisting(handler: Handler) {
    let namespace = "ns500";
    let context = format!("broken-{handler:?}");
    let server = server_with_objects(namespace);
    server.fail_watches(handler.server_kind(), 500, 10_000);
    let _running = start(
        handler,
        target(&server, &context, namespace),
        watch_options(Duration::from_secs(30)),
    );
    const WATCHES: usize = 5;
    wait_for("five WATCH attempts", || {
        server.watch_count(handler.server_kind()) >= WATCHES
    });
    assert_eq!(
        server.list_count(handler.server_kind()),
        1,
        "{handler:?}: a 500 is retried from the same version, not re-listed"
    );
    let watches: Vec<Instant> = server
        .requests()
        .iter()
        .filter(|r| {
            r.verb == kubeherald_testbed::kube::RequestVerb::Watch
                && r.kind.as_deref() == Some(handler.server_kind())
        })
        .map(|r| r.at)
        .take(WATCHES)
        .collect();
    let gaps = gaps(&watches);
    for (n, gap) in gaps.iter().enumerate() {
        let floor = floor(n as u32);
        assert!(
            *gap >= floor,
            "{handler:?}: WATCH {} came {gap:?} after the one before, under the backoff floor {floor:?}; gaps {gaps:?}",
            n + 2
        );
    }
    assert!(counter("watch_errors", &context, handler.metrics_kind(), "http-5xx") >= 4);
}

/// A server-side timeout (`timeoutSeconds`) ends the WATCH cleanly: it
/// resumes from the last version with no re-list, counted as `timeout`.
fn a_server_timeout_resumes_without_relist(handler: Handler) {
    let namespace = "nstimeout";
    let context = format!("timeout-{handler:?}");
    let server = server_with_objects(namespace);
    let _running = start(
        handler,
        target(&server, &context, namespace),
        watch_options(Duration::from_secs(2)),
    );
    wait_for("three WATCHes", || {
        server.watch_count(handler.server_kind()) >= 3
    });
    assert_eq!(server.list_count(handler.server_kind()), 1);
    let watches = server.requests();
    let resumed: Vec<String> = watches
        .iter()
        .filter(|r| {
            r.verb == kubeherald_testbed::kube::RequestVerb::Watch
                && r.kind.as_deref() == Some(handler.server_kind())
        })
        .filter_map(|r| r.param("resourceVersion"))
        .collect();
    assert!(
        resumed.iter().all(|rv| !rv.is_empty() && rv != "0"),
        "{handler:?}: every WATCH resumes from a real version: {resumed:?}"
    );
    wait_for("two timeout restarts counted", || {
        counter(
            "watch_restarts",
            &context,
            handler.metrics_kind(),
            "timeout",
        ) >= 2
    });
}

#[test]
fn kind_watch_410_every_time_backs_off_the_relists() {
    watch_410_every_time_backs_off_the_relists(Handler::Kind);
}

#[test]
fn pods_watch_410_every_time_backs_off_the_relists() {
    watch_410_every_time_backs_off_the_relists(Handler::Pods);
}

#[test]
fn kind_watch_500_every_time_backs_off_without_relisting() {
    watch_500_every_time_backs_off_without_relisting(Handler::Kind);
}

#[test]
fn pods_watch_500_every_time_backs_off_without_relisting() {
    watch_500_every_time_backs_off_without_relisting(Handler::Pods);
}

#[test]
fn kind_watch_server_timeout_resumes_without_relist() {
    a_server_timeout_resumes_without_relist(Handler::Kind);
}

#[test]
fn pods_watch_server_timeout_resumes_without_relist() {
    a_server_timeout_resumes_without_relist(Handler::Pods);
}

//! Pod-log follower throughput (SPEC §4, §9): containers followed through
//! the Kubernetes API test server into an on-disk logs spool.
//!
//! `cargo bench -p kubeherald --bench follow` — one pod per container
//! (`FOLLOW_BENCH_CONTAINERS`, 100) in one namespace, one follower (its own
//! thread and current-thread runtime, as in production, with appended
//! positions persisted). Two phases:
//!
//! 1. catch-up: `FOLLOW_BENCH_BACKLOG` (2,000) lines per container are
//!    written before the follower starts; the figure is lines appended per
//!    second until all are in the spool;
//! 2. live: a writer adds `FOLLOW_BENCH_RATE` (100) lines/s per container in
//!    10 ms ticks for `FOLLOW_BENCH_SECONDS` (5); the figure is lines
//!    appended per second and the lag at the end.
//!
//! Beside them: the follower thread's CPU time over the wall time (1.0 = one
//! core busy; `/proc/self/task/*/schedstat` of the `logs-…` thread) and the
//! process's peak RSS (`VmHWM`), which includes the test API server and the
//! spool consumer in the same process. Messages are 120 bytes. Not a timed
//! test: it only reports.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kubeherald::config::{ClusterSelection, KubeconfigLocation, LogsConfig};
use kubeherald::contexts::{self, Surroundings};
use kubeherald::logs::{CheckpointStore, LogFollowOptions, spawn_log_follower};
use kubeherald::spool::{Spool, SpoolOptions};
use kubeherald_testbed::kube::{ADMIN_TOKEN, ApiServer, KubeconfigBuilder, ServerOptions};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Peak resident set size of the process, in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time of the follower thread (named `logs-…`), from the scheduler.
fn follower_cpu() -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with("logs-") {
            return std::fs::read_to_string(task.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .map_or(Duration::ZERO, Duration::from_nanos);
        }
    }
    Duration::ZERO
}

fn main() {
    let containers: usize = env_or("FOLLOW_BENCH_CONTAINERS", 100);
    let backlog: usize = env_or("FOLLOW_BENCH_BACKLOG", 2_000);
    let rate: usize = env_or("FOLLOW_BENCH_RATE", 100);
    let seconds: u64 = env_or("FOLLOW_BENCH_SECONDS", 5);

    let server = Arc::new(ApiServer::start_with(ServerOptions {
        max_log_lines: backlog + rate * seconds as usize + 1_000,
        ..ServerOptions::default()
    }));
    for i in 0..containers {
        server.apply(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": format!("pod-{i:04}"), "namespace": "bench"},
            "spec": {"containers": [{"name": "app", "image": "busybox"}]},
        }));
    }
    let message = "x".repeat(120);
    let start_ns = 1_767_323_045i64 * 1_000_000_000;
    for i in 0..containers {
        let lines = (0..backlog).map(|n| {
            let ts = jiff_ts(start_ns + n as i64 * 1_000);
            (ts, message.clone())
        });
        server.append_logs("bench", &format!("pod-{i:04}"), "app", lines);
    }

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    KubeconfigBuilder::new()
        .context("bench", &server, Some("bench"), ADMIN_TOKEN)
        .write_to(&kubeconfig)
        .unwrap();
    let selection = ClusterSelection::Contexts {
        kubeconfig: KubeconfigLocation::Explicit {
            paths: vec![kubeconfig],
            field: "kubeconfig".into(),
        },
        names: None,
    };
    let target = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(contexts::resolve(&selection, &Surroundings::default()))
        .unwrap()
        .remove(0);

    let spool = Spool::open(
        dir.path().join("logs"),
        SpoolOptions::with_max_bytes(512 * 1024 * 1024),
    )
    .unwrap();
    let checkpoints = CheckpointStore::for_spool_dir(Some(dir.path())).unwrap();
    let logs = LogsConfig {
        prefix: "bench".into(),
        retention_days: 30,
        exclude_labels: Vec::new(),
        max_streams_per_cluster: containers.max(1),
        lookup_rate_per_second: 10,
        sink: kubeherald::config::LogSink::CloudWatch,
        routes: Vec::new(),
    };
    let options = LogFollowOptions {
        resume_from_appended: true,
        ..LogFollowOptions::default()
    };

    // The consumer: counts and acknowledges what the follower appended.
    let appended = Arc::new(AtomicU64::new(0));
    let stop_reader = Arc::new(AtomicBool::new(false));
    let mut reader = spool.reader().unwrap();
    let reader_thread = {
        let appended = Arc::clone(&appended);
        let stop = Arc::clone(&stop_reader);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let batch = reader
                    .next_batch(10_000, Duration::from_millis(20))
                    .unwrap();
                appended.fetch_add(batch.len() as u64, Ordering::Relaxed);
                kubeherald::spool::Delivery::ack_all(batch);
            }
        })
    };

    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let follower = spawn_log_follower(
        target,
        logs,
        spool.writer(),
        checkpoints,
        options,
        shutdown.clone(),
    )
    .unwrap();
    let total = (containers * backlog) as u64;
    let deadline = started + Duration::from_secs(600);
    while appended.load(Ordering::Relaxed) < total {
        assert!(Instant::now() < deadline, "catch-up did not finish");
        std::thread::sleep(Duration::from_millis(5));
    }
    let catch_up = started.elapsed();
    let cpu_catch_up = follower_cpu();
    println!(
        "catch-up: {containers} containers x {backlog} lines = {total} lines in {:.2} s: {:.0} lines/s; follower thread CPU {:.2} core",
        catch_up.as_secs_f64(),
        total as f64 / catch_up.as_secs_f64(),
        cpu_catch_up.as_secs_f64() / catch_up.as_secs_f64(),
    );

    // Live: rate lines/s per container, written in 10 ms ticks.
    let live_start = Instant::now();
    let before = appended.load(Ordering::Relaxed);
    let cpu_before = follower_cpu();
    let per_tick = (rate / 100).max(1);
    let ticks = seconds * 100;
    let mut n = backlog;
    for tick in 0..ticks {
        let due = live_start + Duration::from_millis(10 * tick);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        for i in 0..containers {
            let lines = (0..per_tick).map(|k| {
                let ts = jiff_ts(start_ns + (n + k) as i64 * 1_000);
                (ts, message.clone())
            });
            server.append_logs("bench", &format!("pod-{i:04}"), "app", lines);
        }
        n += per_tick;
    }
    let written = (containers * per_tick) as u64 * ticks;
    let writing = live_start.elapsed();
    while appended.load(Ordering::Relaxed) < before + written {
        assert!(
            Instant::now() < live_start + Duration::from_secs(120),
            "live lines did not all arrive"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let live = live_start.elapsed();
    let cpu_live = follower_cpu() - cpu_before;
    println!(
        "live: {written} lines written over {:.2} s ({:.0} lines/s offered), all appended after {:.2} s: {:.0} lines/s, lag at the end {:.0} ms; follower thread CPU {:.2} core",
        writing.as_secs_f64(),
        written as f64 / writing.as_secs_f64(),
        live.as_secs_f64(),
        written as f64 / live.as_secs_f64(),
        (live - writing).as_secs_f64() * 1000.0,
        cpu_live.as_secs_f64() / live.as_secs_f64(),
    );
    println!(
        "peak RSS (whole process, test API server included): {} MiB",
        peak_rss_kib() / 1024
    );

    shutdown.cancel();
    follower.join().unwrap();
    stop_reader.store(true, Ordering::Relaxed);
    reader_thread.join().unwrap();
}

/// A nanosecond timestamp as the test server's type, parsed from RFC 3339
/// so this bench needs no direct dependency on it.
fn jiff_ts<T: std::str::FromStr>(ns: i64) -> T
where
    T::Err: std::fmt::Debug,
{
    let seconds = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let text = format!(
        "{}.{nanos:09}Z",
        kubeherald::logs::line::since_time(seconds).trim_end_matches('Z')
    );
    text.parse().unwrap()
}

//! Log sink throughput (SPEC §9: 1,000 followed containers at 100 lines/s
//! each, 100,000 lines/s, into CloudWatch batches using at most one core,
//! under 150 MiB resident, on a 2-core machine).
//!
//! `cargo bench -p kubeherald --bench logs` — one thread appends log lines of
//! 1,000 containers (round robin, 120-byte messages, in appends of 1,000
//! lines, as followers would) to an on-disk logs spool, while the log sink
//! runs on its own thread and single-threaded runtime and ships them to
//! [`FastLogs`] (every request answered after 50 ms). The figure is lines
//! appended and acknowledged per second, from the first append to the spool
//! being empty; beside it the sink thread's CPU time over the wall time
//! (1.0 = one core busy; from `/proc/thread-self/schedstat`), the puts and
//! events per put, and the process's peak RSS (`VmHWM`). Not a timed test: it
//! only reports. `LOGS_BENCH_STREAMS` (1,000), `LOGS_BENCH_LINES` (lines per
//! stream, 1,000), `LOGS_BENCH_LATENCY_MS` (50) and `LOGS_BENCH_MESSAGE_BYTES`
//! (120) override the settings. `LOGS_BENCH_RATE` (lines/s, default 0: as
//! fast as possible) paces the appends instead, as 1,000 containers at 100
//! lines/s would (`LOGS_BENCH_RATE=100000`): then the figure to read is the
//! sink's CPU share and how soon after the last append everything is
//! acknowledged.

use std::time::{Duration, Instant};

use kubeherald::logs::CheckpointStore;
use kubeherald::publish::cloudwatch::{
    LogPublisherOptions, LogSinkConfig, LogTarget, run_log_publisher,
};
use kubeherald::record::LogLine;
use kubeherald::spool::{Spool, SpoolOptions};
use kubeherald_testbed::aws::{FastLogs, TestSdk};
use tokio_util::sync::CancellationToken;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time of the calling thread, from the scheduler's statistics.
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
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

fn main() {
    let streams: usize = env_or("LOGS_BENCH_STREAMS", 1_000);
    let per_stream: usize = env_or("LOGS_BENCH_LINES", 1_000);
    let rate: u64 = env_or("LOGS_BENCH_RATE", 0);
    let latency = Duration::from_millis(env_or("LOGS_BENCH_LATENCY_MS", 50));
    let message_bytes: usize = env_or("LOGS_BENCH_MESSAGE_BYTES", 120);
    let total = (streams * per_stream) as u64;

    let endpoint = FastLogs::start(latency);
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = Spool::open(dir.path().join("logs"), SpoolOptions::default()).expect("logs spool");
    let checkpoints = CheckpointStore::for_spool_dir(Some(dir.path())).expect("checkpoints");
    let reader = spool.reader().expect("reader");
    let shutdown = CancellationToken::new();
    let config = LogSinkConfig {
        target: LogTarget::CloudWatch {
            prefix: "bench".into(),
            retention_days: 30,
            routes: Vec::new(),
            region: "us-east-1".into(),
            sdk: Some(TestSdk::new(endpoint.url()).max_attempts(1).config()),
        },
        checkpoints,
        options: LogPublisherOptions::default(),
    };
    let token = shutdown.clone();
    let sink = std::thread::Builder::new()
        .name("log-sink".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let before = thread_cpu();
            runtime
                .block_on(run_log_publisher(reader, config, token))
                .expect("log sink");
            thread_cpu() - before
        })
        .expect("sink thread");

    let filler = "x".repeat(message_bytes.saturating_sub(40));
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as i64;
    let start_ns = now_ns - 600 * 1_000_000_000;
    let pods: Vec<String> = (0..streams)
        .map(|s| format!("web-{s:04}-7d9f8c6b5-x2x4q"))
        .collect();
    let started = Instant::now();
    let writer = spool.writer();
    let mut batch = Vec::with_capacity(1_000);
    let mut appended_lines = 0u64;
    for round in 0..per_stream {
        for pod in &pods {
            let line = LogLine {
                cluster_name: "bench-cluster".into(),
                namespace: "production".into(),
                pod: pod.clone(),
                container: "web".into(),
                restart_count: 0,
                // 100 lines/s per container: one every 10 ms.
                timestamp: start_ns + round as i64 * 10_000_000,
                seq_at_timestamp: 1,
                message: format!("{round:08} GET /api/v1/items 200 {filler}"),
                route: kubeherald::config::DEFAULT_LOG_ROUTE.into(),
            };
            batch.push(line.to_record());
            if batch.len() == 1_000 {
                writer.append_batch(&batch).expect("append");
                batch.clear();
                appended_lines += 1_000;
                if rate > 0 {
                    let due = Duration::from_secs_f64(appended_lines as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            }
        }
    }
    if !batch.is_empty() {
        writer.append_batch(&batch).expect("append");
    }
    let appended = started.elapsed();
    while spool.stats().pending_records > 0 || endpoint.events() < total {
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "not drained after 10 minutes"
        );
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
    let sink_cpu = sink.join().expect("sink thread");

    let secs = elapsed.as_secs_f64();
    let pacing = if rate > 0 {
        format!("appended at {rate} lines/s")
    } else {
        "appended as fast as possible".to_owned()
    };
    println!(
        "logs: {total} lines ({streams} streams × {per_stream}, {message_bytes}-byte messages), \
         {pacing}, endpoint latency {latency:?}, spool on disk"
    );
    println!(
        "  appended in {:.2} s; all acknowledged {secs:.2} s after the first append, {:.2} s after the last",
        appended.as_secs_f64(),
        secs - appended.as_secs_f64()
    );
    println!("  throughput: {:.0} lines/s", total as f64 / secs);
    println!(
        "  sink thread CPU: {:.2} s = {:.2} cores over the run",
        sink_cpu.as_secs_f64(),
        sink_cpu.as_secs_f64() / secs
    );
    println!(
        "  PutLogEvents: {} ({:.0} events per put), creates: {}, most in flight: {}",
        endpoint.puts(),
        endpoint.events() as f64 / endpoint.puts().max(1) as f64,
        endpoint.creates(),
        endpoint.max_concurrent()
    );
    println!("  peak RSS: {:.1} MiB", peak_rss_kib() as f64 / 1024.0);
}

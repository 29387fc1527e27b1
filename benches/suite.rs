//! Every SPEC §9 target in one run (`scripts/bench.sh`), with the seed's
//! design as the baseline. Not a timed test: it reports, and `--quick` (a
//! tenth of each scenario) only has to complete.
//!
//! ```text
//! scripts/bench.sh [--quick] [--runs N] [--only NAME[,NAME]] [--write BENCHMARKS.md]
//! ```
//!
//! Each scenario runs the release `kubeherald` binary as a child process
//! against the test bed, and reads what it did from the outside: the peers'
//! counters, `/proc/<pid>` (peak and current RSS, CPU time) and its
//! `/metrics`.
//!
//! | scenario | set-up | figures |
//! |---|---|---|
//! | `events` | 10 contexts of one API server, each watch flooded with 3,000 ConfigMap events/s of ~2 KiB; SNS answering after 150 ms; on-disk spool | events/s acknowledged over 60 s after a 10 s warm-up |
//! | `burst` | 10 API servers (one context each) holding 10,000 ConfigMaps of ~2 KiB; SNS after 150 ms | seconds from start to the last acknowledgement; peak RSS |
//! | `logs` | 5 API servers × 200 pods, one container each, 100 lines/s per container for 60 s; CloudWatch answering after 50 ms | lines/s shipped, worst lag (line's timestamp to its put), CPU, peak RSS |
//! | `latency` | one context flooded at 1,000 events/s for 30 s; SNS after 150 ms | p50/p99 of `event_spool_delay_seconds` and `event_publish_delay_seconds` |
//! | `scale` | 200 contexts (namespaces of one API server) × 5 kinds, 2 small objects per watch, no traffic | RSS after every watch is up, CPU over 20 s idle |
//! | `slow` | SNS in capacity mode: 4 workers of 100 ms (40 requests/s), one context flooded at 2,000 events/s for 60 s | requests/s against the capacity, requests timed out |
//! | `fairness` | 10 contexts, one flooded at 5,000 events/s and nine at 500 (one busy cluster); SNS after 150 ms | p99 publish delay overall (the quiet contexts cannot be told apart in the histogram, so this bounds theirs) |
//! | `spool` | in-process: 4 appenders of 1 KiB records in batches of 64, one consumer acknowledging batches of 500, on disk | records/s appended and consumed |
//! | baseline | the seed's publisher: one sequential `Publish` per event (gzip+base64 body), SNS after 150 ms | events/s |
//!
//! The run happens on the same 2 cores as the peers (API servers, fast
//! endpoints): the figures include their cost.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use kubeherald::spool::{Delivery, Spool, SpoolOptions};
use kubeherald_testbed::aws::{FastLogs, FastSns, TestSdk};
use kubeherald_testbed::kube::{
    ADMIN_TOKEN, ApiServer, Flood, KubeconfigBuilder, ServerOptions, flood,
};
use serde_json::json;

const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:bench";
/// SPEC §9: the seed's SNS figure.
const SNS_LATENCY: Duration = Duration::from_millis(150);
const PAYLOAD: usize = 2048;

fn main() {
    let options = Options::parse();
    let mut results: Vec<Outcome> = Vec::new();
    let scenarios: Vec<(&str, Scenario)> = vec![
        ("events", events),
        ("burst", burst),
        ("logs", logs),
        ("latency", latency),
        ("scale", scale),
        ("slow", slow_endpoint),
        ("fairness", fairness),
        ("spool", spool),
        ("baseline", baseline),
    ];
    let scale = Scale {
        factor: if options.quick { 0.1 } else { 1.0 },
    };
    for (name, scenario) in scenarios {
        if !options.only.is_empty() && !options.only.iter().any(|o| o == name) {
            continue;
        }
        let mut runs = Vec::new();
        for run in 1..=options.runs {
            eprintln!("==> {name}, run {run} of {}", options.runs);
            let figures = scenario(&scale);
            for f in &figures {
                eprintln!("    {}: {:.3} {}", f.label, f.value, f.unit);
            }
            runs.push(figures);
        }
        results.extend(Outcome::of(name, runs));
    }
    let baseline = results
        .iter()
        .find(|o| o.scenario == "baseline")
        .map(|o| o.median);
    let table = render(&results, baseline);
    println!("{table}");
    match &options.write {
        // BENCHMARKS.md holds one run of every scenario, not a mix of runs.
        Some(path) if !options.only.is_empty() => {
            eprintln!("==> --only: {} left as it is", path.display());
        }
        Some(path) => {
            write_benchmarks(path, &options, &table);
            eprintln!("==> wrote {}", path.display());
        }
        None => {}
    }
}

/// One scenario: its figures at a scale.
type Scenario = fn(&Scale) -> Vec<Figure>;

struct Options {
    quick: bool,
    runs: usize,
    only: Vec<String>,
    write: Option<PathBuf>,
}

impl Options {
    fn parse() -> Options {
        let mut options = Options {
            quick: false,
            runs: 3,
            only: Vec::new(),
            write: None,
        };
        let mut runs = None;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                // cargo bench passes it to every bench binary.
                "--bench" => {}
                "--quick" => options.quick = true,
                "--runs" => runs = args.next().and_then(|n| n.parse().ok()),
                "--only" => {
                    options.only = args
                        .next()
                        .unwrap_or_default()
                        .split(',')
                        .map(str::to_owned)
                        .collect()
                }
                "--write" => options.write = args.next().map(PathBuf::from),
                other => panic!(
                    "unknown argument {other}; usage: suite [--quick] [--runs N] [--only a,b] [--write FILE]"
                ),
            }
        }
        options.runs = runs.unwrap_or(if options.quick { 1 } else { 3 }).max(1);
        options
    }
}

/// The size of a run: 1.0 full, 0.1 `--quick`.
struct Scale {
    factor: f64,
}

impl Scale {
    fn n(&self, full: u64) -> u64 {
        ((full as f64 * self.factor) as u64).max(1)
    }

    fn secs(&self, full: u64) -> Duration {
        Duration::from_secs_f64((full as f64 * self.factor).max(2.0))
    }
}

/// A target of SPEC §9.
#[derive(Clone, Copy)]
enum Target {
    AtLeast(f64),
    AtMost(f64),
}

/// One measured value of one run.
struct Figure {
    label: &'static str,
    value: f64,
    unit: &'static str,
    target: Option<Target>,
    /// Compared with the baseline's events/s (a rate of events).
    versus_baseline: bool,
}

fn figure(label: &'static str, value: f64, unit: &'static str) -> Figure {
    Figure {
        label,
        value,
        unit,
        target: None,
        versus_baseline: false,
    }
}

impl Figure {
    fn target(mut self, target: Target) -> Figure {
        self.target = Some(target);
        self
    }

    fn rate_of_events(mut self) -> Figure {
        self.versus_baseline = true;
        self
    }
}

/// One figure over the runs.
struct Outcome {
    scenario: &'static str,
    label: &'static str,
    unit: &'static str,
    min: f64,
    median: f64,
    max: f64,
    target: Option<Target>,
    versus_baseline: bool,
}

impl Outcome {
    fn of(scenario: &'static str, runs: Vec<Vec<Figure>>) -> Vec<Outcome> {
        let Some(first) = runs.first() else {
            return Vec::new();
        };
        (0..first.len())
            .map(|i| {
                let mut values: Vec<f64> = runs.iter().map(|r| r[i].value).collect();
                values.sort_by(f64::total_cmp);
                Outcome {
                    scenario,
                    label: first[i].label,
                    unit: first[i].unit,
                    min: values[0],
                    median: values[values.len() / 2],
                    max: values[values.len() - 1],
                    target: first[i].target,
                    versus_baseline: first[i].versus_baseline,
                }
            })
            .collect()
    }

    fn met(&self) -> &'static str {
        match self.target {
            None => "",
            Some(Target::AtLeast(t)) if self.median >= t => "yes",
            Some(Target::AtMost(t)) if self.median <= t => "yes",
            Some(_) => "**no**",
        }
    }
}

fn number(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.is_nan() {
        "n/a".into()
    } else if v.abs() >= 100.0 {
        let n = v.round() as i64;
        let digits = n.abs().to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if n < 0 { format!("-{out}") } else { out }
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn render(results: &[Outcome], baseline: Option<f64>) -> String {
    let mut out = String::from(
        "| scenario | figure | min | median | max | target | met? | × baseline |\n|---|---|---|---|---|---|---|---|\n",
    );
    for o in results {
        let target = match o.target {
            Some(Target::AtLeast(t)) => format!("≥ {} {}", number(t), o.unit),
            Some(Target::AtMost(t)) => format!("≤ {} {}", number(t), o.unit),
            None => String::new(),
        };
        let ratio = match baseline {
            Some(b) if o.versus_baseline && b > 0.0 => format!("{:.0}×", o.median / b),
            _ => String::new(),
        };
        out.push_str(&format!(
            "| {} | {} ({}) | {} | {} | {} | {} | {} | {} |\n",
            o.scenario,
            o.label,
            o.unit,
            number(o.min),
            number(o.median),
            number(o.max),
            target,
            o.met(),
            ratio
        ));
    }
    out
}

const BEGIN: &str = "<!-- bench.sh: figures begin -->";
const END: &str = "<!-- bench.sh: figures end -->";

/// Replaces the figures section of BENCHMARKS.md (between the markers).
fn write_benchmarks(path: &Path, options: &Options, table: &str) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or("?".into(), |kib| {
            format!("{:.0} GiB", kib as f64 / 1048576.0)
        });
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut command = String::from("scripts/bench.sh");
    if options.quick {
        command.push_str(" --quick");
    }
    let section = format!(
        "{BEGIN}\nMachine: {cores} cores, {cpu}, {memory}. Command: `{command}` ({} run(s) per scenario{}), {date}. \
         Each figure is min / median / max over the runs; \"met?\" judges the median.\n\n{table}{END}",
        options.runs,
        if options.quick {
            ", a tenth of each size"
        } else {
            ""
        }
    );
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let updated = match (text.find(BEGIN), text.find(END)) {
        (Some(b), Some(e)) if b < e => format!("{}{section}{}", &text[..b], &text[e + END.len()..]),
        _ => format!("{text}\n{section}\n"),
    };
    std::fs::write(path, updated).expect("write BENCHMARKS.md");
}

// ---------------------------------------------------------------------------
// The process under test.

struct Kubeherald {
    child: Child,
    http: String,
    dir: tempfile::TempDir,
}

impl Kubeherald {
    /// Starts `kubeherald run` with `config` (YAML, inline) and `env`; waits
    /// for `/healthz`.
    fn start(dir: tempfile::TempDir, config: &str, env: &[(&str, String)]) -> Kubeherald {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let http = format!("127.0.0.1:{port}");
        let stderr = std::fs::File::create(dir.path().join("stderr")).expect("stderr file");
        // BENCH_WRAPPER (e.g. `heaptrack -o /tmp/kh` or `perf record -g -o
        // /tmp/kh.data`) runs the process under a profiler; its /proc figures
        // are then the wrapper's.
        let wrapper = std::env::var("BENCH_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut command = match words.next() {
            Some(program) => {
                let mut command = Command::new(program);
                command.args(words).arg(env!("CARGO_BIN_EXE_kubeherald"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_kubeherald")),
        };
        command
            .arg("run")
            .env("CONFIG", config)
            .env("HTTP_LISTEN", &http)
            .env("RUST_LOG", "warn")
            .env_remove("SNS_TOPIC_ARN")
            .stdout(Stdio::null())
            .stderr(stderr);
        for (name, value) in env {
            command.env(name, value);
        }
        // Its own process group: stopping it stops a wrapper's child too.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().expect("start kubeherald");
        let kubeherald = Kubeherald { child, http, dir };
        let started = Instant::now();
        while kubeherald.get("/healthz").is_none() {
            kubeherald.assert_running();
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "kubeherald did not answer /healthz"
            );
            thread::sleep(Duration::from_millis(50));
        }
        kubeherald
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn assert_running(&self) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Field 3 is the state; Z (zombie) means it exited.
        let exited = status.split_whitespace().nth(2).is_none_or(|s| s == "Z");
        if exited {
            let stderr =
                std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default();
            panic!("kubeherald exited:\n{stderr}");
        }
    }

    fn get(&self, path: &str) -> Option<String> {
        let mut stream = TcpStream::connect(&self.http).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n").ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        let (head, body) = answer.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200")
            .then(|| body.to_owned())
            .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_owned()))
    }

    fn metrics(&self) -> Metrics {
        Metrics(self.get("/metrics").unwrap_or_default())
    }

    fn status_kib(&self, field: &str) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0.0)
    }

    fn peak_rss_mib(&self) -> f64 {
        self.status_kib("VmHWM:") / 1024.0
    }

    fn rss_mib(&self) -> f64 {
        self.status_kib("VmRSS:") / 1024.0
    }

    /// User + system CPU time so far.
    fn cpu(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // After the command name in parentheses: utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields
            .get(11..13)
            .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
            .unwrap_or(0);
        // USER_HZ is 100 on Linux.
        Duration::from_millis(ticks * 10)
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.pid())])
            .status();
        let _ = self.child.wait();
    }
}

/// A `/metrics` text.
struct Metrics(String);

impl Metrics {
    /// The sum of every series of `name` whose labels contain `having`.
    fn sum(&self, name: &str, having: &str) -> f64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let metric = series.split('{').next()?;
                (metric == name && series.contains(having)).then(|| value.parse::<f64>().ok())?
            })
            .sum()
    }

    /// The cumulative buckets of histogram `name`: (upper bound, count).
    fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let prefix = format!("{name}_bucket{{le=\"");
        let mut buckets: Vec<(f64, f64)> = self
            .0
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(&prefix)?;
                let (le, value) = rest.split_once("\"} ")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, value.trim().parse().ok()?))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
    }
}

/// `/metrics` after a warm-up and again after a measured window: the
/// histograms' observations in between are the window's.
fn scrapes_around(
    kubeherald: &Kubeherald,
    warm_up: Duration,
    window: Duration,
) -> (Metrics, Metrics) {
    thread::sleep(warm_up);
    let before = kubeherald.metrics();
    thread::sleep(window);
    (before, kubeherald.metrics())
}

/// The p50 and p99 of `histogram` over the window between two scrapes, in
/// milliseconds, as figures labelled `labels`.
fn delay_figures(
    (before, after): (&Metrics, &Metrics),
    histogram: &str,
    labels: [&'static str; 2],
) -> [Figure; 2] {
    [(labels[0], 0.5), (labels[1], 0.99)]
        .map(|(label, q)| figure(label, quantile_ms(before, after, histogram, q), "ms"))
}

/// The `q` quantile (0..1) of the observations between two scrapes of a
/// histogram, as the upper bound of the bucket it falls in (what a
/// Prometheus histogram can tell: the true value is at most this, and
/// above the bucket below), in milliseconds.
fn quantile_ms(before: &Metrics, after: &Metrics, name: &str, q: f64) -> f64 {
    let start: BTreeMap<u64, f64> = before
        .buckets(name)
        .into_iter()
        .map(|(le, n)| (le.to_bits(), n))
        .collect();
    let window: Vec<(f64, f64)> = after
        .buckets(name)
        .into_iter()
        .map(|(le, n)| (le, n - start.get(&le.to_bits()).copied().unwrap_or(0.0)))
        .collect();
    let Some(&(_, total)) = window.last() else {
        return f64::NAN;
    };
    let rank = q * total;
    window
        .iter()
        .find(|(_, n)| *n >= rank)
        .map_or(f64::NAN, |(le, _)| le * 1000.0)
}

/// A self-signed CA (P-256, `openssl req -x509`), for kubeconfigs shaped
/// like real ones: a real cluster's entry carries its CA, and a client
/// without one loads the platform's roots instead (about 130 KiB per
/// client; see BENCHMARKS.md). The servers speak plain HTTP: it verifies
/// nothing here.
const BENCH_CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBlDCCATmgAwIBAgIUZyhEVqhwfGyAHfCSb0ylRjGZH64wCgYIKoZIzj0EAwIw\nHjEcMBoGA1UEAwwTa3ViZWhlcmFsZC1iZW5jaC1jYTAgFw0yNjEyMDIyMDQzNDla\nGA8yMTI2MTEwODIwNDM0OVowHjEcMBoGA1UEAwwTa3ViZWhlcmFsZC1iZW5jaC1j\nYTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABF6ORTHs7lM8zr7cUu0FpMg6E4x6\nZpieNccd6O6JYCAUZMgqoSMFQSjGpqzsL3EfvGAvjdZWpd6PO9QjWa3ke6WjUzBR\nMB0GA1UdDgQWBBTcNxNPkJoCw3PEtRRSk/uFid4fKzAfBgNVHSMEGDAWgBTcNxNP\nkJoCw3PEtRRSk/uFid4fKzAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0kA\nMEYCIQC1i9MEzAmaQ7nLK6HeCn32nvqkJLkEIQcpBw4RLQQfcwIhAMvhK1SXRd13\nYw3g4O2zAkV2YyS3FouYA0sQmF+dt6o6\n-----END CERTIFICATE-----";

fn kubeconfig_for(dir: &Path, contexts: &[(String, &ApiServer, String)]) -> PathBuf {
    let path = dir.join("kubeconfig");
    let mut builder = KubeconfigBuilder::new().certificate_authority(BENCH_CA);
    for (name, server, namespace) in contexts {
        builder = builder.context(name, server, Some(namespace), ADMIN_TOKEN);
    }
    builder.write_to(&path).expect("write the kubeconfig");
    path
}

fn events_config(kubeconfig: &Path, dir: &Path, kinds: &[(&str, &str)]) -> String {
    let resources: Vec<String> = kinds
        .iter()
        .map(|(api_version, kind)| format!("{{apiVersion: {api_version}, kind: {kind}}}"))
        .collect();
    format!(
        "kubeconfig: {}\nresources: [{}]\nsns: {{topic_arn: '{TOPIC}'}}\nspool: {{dir: {}}}\n",
        kubeconfig.display(),
        resources.join(", "),
        dir.join("spool").display()
    )
}

fn aws_env(url: &str) -> Vec<(&'static str, String)> {
    TestSdk::new(url).env()
}

/// Waits until `done` holds, checking every 100 ms, for at most `limit`.
fn wait_for(kubeherald: &Kubeherald, limit: Duration, what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        kubeherald.assert_running();
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

fn flood(server: &ApiServer, namespace: &str, rate: u32) {
    server.flood(
        "v1",
        "ConfigMap",
        namespace,
        Some(Flood {
            rate,
            objects: 1000,
            payload_bytes: PAYLOAD,
        }),
    );
}

/// `contexts` contexts (namespaces `ns-<i>`) of one flooded API server, at
/// `rates[i]` events/s each, publishing to `sns`.
fn flooded(rates: &[u32], sns: &FastSns) -> (ApiServer, Kubeherald) {
    let server = ApiServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut contexts = Vec::new();
    for (i, rate) in rates.iter().enumerate() {
        let namespace = format!("ns-{i}");
        flood(&server, &namespace, *rate);
        contexts.push((format!("ctx-{i}"), &server, namespace));
    }
    let kubeconfig = kubeconfig_for(dir.path(), &contexts);
    let config = events_config(&kubeconfig, dir.path(), &[("v1", "ConfigMap")]);
    let kubeherald = Kubeherald::start(dir, &config, &aws_env(sns.url()));
    (server, kubeherald)
}

// ---------------------------------------------------------------------------
// The scenarios.

fn events(scale: &Scale) -> Vec<Figure> {
    let sns = FastSns::start(SNS_LATENCY);
    let (_server, kubeherald) = flooded(&[3_000; 10], &sns);
    thread::sleep(scale.secs(10));
    let (start, at) = (sns.messages(), Instant::now());
    let cpu = kubeherald.cpu();
    thread::sleep(scale.secs(60));
    let rate = (sns.messages() - start) as f64 / at.elapsed().as_secs_f64();
    let cores = (kubeherald.cpu() - cpu).as_secs_f64() / at.elapsed().as_secs_f64();
    let rss = kubeherald.peak_rss_mib();
    let metrics = kubeherald.metrics();
    let errors = metrics.sum("kubeherald_publish_errors_total", "");
    let limit = metrics.sum("kubeherald_request_concurrency_limit", "sns");
    let rtt = metrics.sum("kubeherald_request_rtt_seconds", "sns");
    kubeherald.stop();
    vec![
        figure("acknowledged", rate, "events/s")
            .target(Target::AtLeast(20_000.0))
            .rate_of_events(),
        figure("CPU", cores, "cores"),
        figure("peak RSS", rss, "MiB"),
        figure("publish errors", errors, "requests"),
        figure("request limit at the end", limit, "requests"),
        figure("round trip at the end", rtt * 1000.0, "ms"),
    ]
}

fn burst(scale: &Scale) -> Vec<Figure> {
    let per_context = scale.n(10_000);
    let servers: Vec<ApiServer> = (0..10).map(|_| ApiServer::start()).collect();
    let payload = flood::payload(PAYLOAD - 200);
    for server in &servers {
        for i in 0..per_context {
            server.apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("cm-{i:06}"), "namespace": "bench",
                             "labels": {"app": "bench", "index": i.to_string()}},
                "data": {"payload": payload}}));
        }
    }
    let total = per_context * servers.len() as u64;
    let sns = FastSns::start(SNS_LATENCY);
    let dir = tempfile::tempdir().expect("temp dir");
    let contexts: Vec<_> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("cluster-{i}"), s, "bench".to_owned()))
        .collect();
    let kubeconfig = kubeconfig_for(dir.path(), &contexts);
    let config = events_config(&kubeconfig, dir.path(), &[("v1", "ConfigMap")]);
    let started = Instant::now();
    let kubeherald = Kubeherald::start(dir, &config, &aws_env(sns.url()));
    wait_for(&kubeherald, Duration::from_secs(900), "the burst", || {
        sns.messages() >= total
    });
    let seconds = started.elapsed().as_secs_f64();
    let rss = kubeherald.peak_rss_mib();
    kubeherald.stop();
    vec![
        figure("LIST to last acknowledgement", seconds, "s"),
        figure("rate", total as f64 / seconds, "events/s").rate_of_events(),
        figure("peak RSS", rss, "MiB").target(Target::AtMost(100.0)),
    ]
}

fn logs(scale: &Scale) -> Vec<Figure> {
    const CLUSTERS: usize = 5;
    let per_cluster = scale.n(200) as usize;
    // BENCH_LOG_RATE (lines/s per container) is for profiling: a heap
    // profiler cannot keep up with 100,000 lines/s, and a backlog would be
    // what it measures.
    let rate: u64 = std::env::var("BENCH_LOG_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(100);
    let seconds = scale.secs(60);
    let servers: Vec<Arc<ApiServer>> = (0..CLUSTERS)
        .map(|_| {
            Arc::new(ApiServer::start_with(ServerOptions {
                max_log_lines: 20_000,
                ..ServerOptions::default()
            }))
        })
        .collect();
    for server in &servers {
        for i in 0..per_cluster {
            server.apply(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("pod-{i:04}"), "namespace": "bench"},
                "spec": {"containers": [{"name": "app", "image": "busybox"}]}}));
        }
    }
    let cloudwatch = FastLogs::start(Duration::from_millis(50));
    let dir = tempfile::tempdir().expect("temp dir");
    let contexts: Vec<_> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("cluster-{i}"), s.as_ref(), "bench".to_owned()))
        .collect();
    let kubeconfig = kubeconfig_for(dir.path(), &contexts);
    let config = format!(
        "kubeconfig: {}\nlogs: {{prefix: bench, max_streams_per_cluster: {per_cluster}, lookup_rate_per_second: 1000}}\nspool: {{dir: {}}}\n",
        kubeconfig.display(),
        dir.path().join("spool").display()
    );
    let kubeherald = Kubeherald::start(dir, &config, &aws_env(cloudwatch.url()));
    wait_for(
        &kubeherald,
        Duration::from_secs(120),
        "every follow open",
        || {
            kubeherald.metrics().sum("kubeherald_log_follows_open", "")
                >= (CLUSTERS * per_cluster) as f64
        },
    );
    // The writer: every container, `rate` lines/s in 100 ms ticks, each
    // line stamped with the time it is written.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (servers, stop, written) = (servers.clone(), stop.clone(), written.clone());
        thread::spawn(move || {
            let message = "x".repeat(120);
            let per_tick = rate / 10;
            let started = Instant::now();
            let mut tick = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let now = jiff::Timestamp::now();
                for server in &servers {
                    for i in 0..per_cluster {
                        let lines = (0..per_tick).map(|_| (now, message.clone()));
                        server.append_logs("bench", &format!("pod-{i:04}"), "app", lines);
                    }
                }
                written.fetch_add(
                    per_tick * (CLUSTERS * per_cluster) as u64,
                    Ordering::Relaxed,
                );
                tick += 1;
                let next = started + Duration::from_millis(100) * tick;
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
    };
    // Warm-up, then the measured window.
    thread::sleep(scale.secs(5));
    cloudwatch.reset_lag();
    let (shipped, cpu, at) = (cloudwatch.events(), kubeherald.cpu(), Instant::now());
    thread::sleep(seconds);
    let elapsed = at.elapsed().as_secs_f64();
    let shipped_rate = (cloudwatch.events() - shipped) as f64 / elapsed;
    let cores = (kubeherald.cpu() - cpu).as_secs_f64() / elapsed;
    let lag = cloudwatch.max_lag().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("the log writer");
    let offered = (CLUSTERS * per_cluster) as f64 * rate as f64;
    let rss = kubeherald.peak_rss_mib();
    kubeherald.stop();
    vec![
        figure("offered", offered, "lines/s"),
        figure("shipped", shipped_rate, "lines/s").target(Target::AtLeast(offered * 0.98)),
        figure("worst lag", lag, "s").target(Target::AtMost(2.0)),
        figure("CPU", cores, "cores").target(Target::AtMost(1.0)),
        figure("peak RSS", rss, "MiB").target(Target::AtMost(150.0)),
    ]
}

fn latency(scale: &Scale) -> Vec<Figure> {
    let sns = FastSns::start(SNS_LATENCY);
    let (_server, kubeherald) = flooded(&[1_000], &sns);
    let (before, after) = scrapes_around(&kubeherald, scale.secs(5), scale.secs(30));
    kubeherald.stop();
    let [spool_p50, spool_p99] = delay_figures(
        (&before, &after),
        "kubeherald_event_spool_delay_seconds",
        ["to the spool read, p50", "to the spool read, p99"],
    );
    let [ack_p50, ack_p99] = delay_figures(
        (&before, &after),
        "kubeherald_event_publish_delay_seconds",
        ["to the SNS ack, p50", "to the SNS ack, p99"],
    );
    vec![
        spool_p50,
        spool_p99.target(Target::AtMost(50.0)),
        ack_p50,
        ack_p99,
    ]
}

fn scale(scale: &Scale) -> Vec<Figure> {
    let contexts = scale.n(200) as usize;
    let kinds = [
        ("v1", "ConfigMap"),
        ("v1", "Secret"),
        ("v1", "Service"),
        ("apps/v1", "Deployment"),
        ("apps/v1", "StatefulSet"),
    ];
    let server = ApiServer::start();
    for c in 0..contexts {
        let namespace = format!("ns-{c:03}");
        for (api_version, kind) in kinds {
            for i in 0..2 {
                server.apply(json!({"apiVersion": api_version, "kind": kind,
                    "metadata": {"name": format!("{}-{i}", kind.to_lowercase()), "namespace": namespace},
                    "data": {"k": "v"}}));
            }
        }
    }
    let sns = FastSns::start(SNS_LATENCY);
    let dir = tempfile::tempdir().expect("temp dir");
    let names: Vec<_> = (0..contexts)
        .map(|c| (format!("ctx-{c:03}"), &server, format!("ns-{c:03}")))
        .collect();
    let kubeconfig = kubeconfig_for(dir.path(), &names);
    let config = events_config(&kubeconfig, dir.path(), &kinds);
    let kubeherald = Kubeherald::start(dir, &config, &aws_env(sns.url()));
    let watches = (contexts * kinds.len()) as f64;
    wait_for(
        &kubeherald,
        Duration::from_secs(300),
        "every watch up",
        || kubeherald.metrics().sum("kubeherald_watch_up", "") >= watches,
    );
    let objects = (contexts * kinds.len() * 2) as u64;
    wait_for(
        &kubeherald,
        Duration::from_secs(300),
        "the objects published",
        || sns.messages() >= objects,
    );
    // Settled: what is left after the start's allocations were given back.
    thread::sleep(Duration::from_secs(5));
    let rss = kubeherald.rss_mib();
    let (cpu, at) = (kubeherald.cpu(), Instant::now());
    thread::sleep(scale.secs(20));
    let idle = (kubeherald.cpu() - cpu).as_secs_f64() / at.elapsed().as_secs_f64();
    let threads =
        std::fs::read_dir(format!("/proc/{}/task", kubeherald.pid())).map_or(0, |d| d.count());
    // For a memory profile: where the resident pages are, mapping by mapping.
    if let Ok(path) = std::env::var("BENCH_SMAPS") {
        let _ = std::fs::copy(format!("/proc/{}/smaps", kubeherald.pid()), path);
    }
    kubeherald.stop();
    vec![
        figure("watches", watches, "watches"),
        figure("RSS after sync", rss, "MiB").target(Target::AtMost(250.0)),
        figure("RSS per watch", rss * 1024.0 / watches, "KiB"),
        figure("idle CPU", idle * 100.0, "% of a core").target(Target::AtMost(5.0)),
        figure("threads", threads as f64, "threads"),
    ]
}

fn slow_endpoint(scale: &Scale) -> Vec<Figure> {
    const WORKERS: usize = 4;
    const SERVICE: Duration = Duration::from_millis(100);
    let sns = FastSns::start(SERVICE);
    sns.set_workers(Some(WORKERS));
    let capacity = WORKERS as f64 / SERVICE.as_secs_f64();
    let (_server, kubeherald) = flooded(&[2_000], &sns);
    thread::sleep(scale.secs(10));
    let (requests, at) = (sns.requests(), Instant::now());
    thread::sleep(scale.secs(60));
    let rate = (sns.requests() - requests) as f64 / at.elapsed().as_secs_f64();
    let metrics = kubeherald.metrics();
    let timeouts = metrics.sum("kubeherald_publish_errors_total", "network");
    let limit = metrics.sum("kubeherald_request_concurrency_limit", "sns");
    kubeherald.stop();
    vec![
        figure("endpoint capacity", capacity, "requests/s"),
        figure("served", rate, "requests/s").target(Target::AtLeast(capacity * 0.8)),
        figure("timed out", timeouts, "requests").target(Target::AtMost(0.0)),
        figure("most in flight", sns.max_concurrent() as f64, "requests"),
        figure("limit at the end", limit, "requests"),
    ]
}

fn fairness(scale: &Scale) -> Vec<Figure> {
    let sns = FastSns::start(SNS_LATENCY);
    let mut rates = vec![500; 10];
    rates[0] = 5_000;
    let (_server, kubeherald) = flooded(&rates, &sns);
    let (before, after) = scrapes_around(&kubeherald, scale.secs(10), scale.secs(30));
    kubeherald.stop();
    let [p50, p99] = delay_figures(
        (&before, &after),
        "kubeherald_event_publish_delay_seconds",
        ["publish delay, p50", "publish delay, p99"],
    );
    vec![p50, p99.target(Target::AtMost(1000.0))]
}

fn spool(scale: &Scale) -> Vec<Figure> {
    const RECORD: usize = 1024;
    const APPENDERS: u64 = 4;
    const BATCH: usize = 64;
    let records = scale.n(1_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = Spool::open(dir.path(), SpoolOptions::default()).expect("open the spool");
    let per_thread = records / APPENDERS;
    let total = per_thread * APPENDERS;
    let start = Instant::now();
    let appenders: Vec<_> = (0..APPENDERS)
        .map(|t| {
            let writer = spool.writer();
            thread::spawn(move || {
                let payloads: Vec<Vec<u8>> = (0..BATCH)
                    .map(|i| vec![(t as usize + i) as u8; RECORD])
                    .collect();
                let mut left = per_thread as usize;
                while left > 0 {
                    let n = left.min(BATCH);
                    writer.append_batch(&payloads[..n]).expect("append");
                    left -= n;
                }
            })
        })
        .collect();
    let mut reader = spool.reader().expect("the reader");
    let mut consumed = 0u64;
    while consumed < total {
        let batch = reader
            .next_batch(500, Duration::from_millis(100))
            .expect("read");
        consumed += batch.len() as u64;
        Delivery::ack_all(batch);
    }
    for appender in appenders {
        appender.join().expect("an appender");
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    vec![figure("appended and consumed", rate, "records/s").target(Target::AtLeast(200_000.0))]
}

/// The seed's publisher (seed 003): one `Publish` per event, one after the
/// other, each body gzip+base64 of a ~2 KiB object.
fn baseline(scale: &Scale) -> Vec<Figure> {
    use base64::Engine;
    use std::io::Write as _;
    let sns = FastSns::start(SNS_LATENCY);
    let client = TestSdk::new(sns.url()).sns();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let object = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cm", "namespace": "bench"}, "data": {"payload": flood::payload(PAYLOAD)}})
    .to_string();
    let window = scale.secs(20);
    let sent = runtime.block_on(async {
        let started = Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < window {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(object.as_bytes()).expect("gzip");
            let body = base64::engine::general_purpose::STANDARD.encode(gz.finish().expect("gzip"));
            client
                .publish()
                .topic_arn(TOPIC)
                .message(body)
                .send()
                .await
                .expect("publish");
            sent += 1;
        }
        sent as f64 / started.elapsed().as_secs_f64()
    });
    vec![figure("sequential Publish", sent, "events/s")]
}

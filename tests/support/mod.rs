//! Running the `kubeherald` binary in tests: its JSON log lines (stderr) and
//! its stdout data lines are read as they come, and conditions on them are
//! awaited with a deadline, never by sleeping.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Generous: the machines running CI are shared and slow; a condition that
/// holds is seen long before this.
pub const DEADLINE: Duration = Duration::from_secs(90);

/// One line the process wrote.
#[derive(Debug, Clone)]
pub enum Line {
    /// A JSON log line on stderr.
    Log(Value),
    /// A JSON data line on stdout (an event or a log line without AWS).
    Data(Value),
}

/// A running `kubeherald run --log-format json`.
pub struct Running {
    child: Child,
    lines: Receiver<Line>,
    pub logs: Vec<Value>,
    pub data: Vec<Value>,
    /// When each of `data` was received (a line is received after it was
    /// written, so after its record was appended).
    pub data_at: Vec<Instant>,
}

impl Running {
    /// Starts `kubeherald run` with `config` as inline YAML in `CONFIG`.
    pub fn start(config: &str, extra_env: &[(&str, &str)]) -> Running {
        Running::start_with(&[], &[&[("CONFIG", config)], extra_env].concat())
    }

    /// Starts `kubeherald run` in a clean environment plus `extra_env`.
    pub fn start_with(extra_args: &[&str], extra_env: &[(&str, &str)]) -> Running {
        let mut command = kubeherald_command();
        command
            .args(["run", "--log-format", "json"])
            .args(extra_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in extra_env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("kubeherald starts");
        let (send, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let to_logs = send.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // A non-JSON line on stderr is a defect of the JSON format;
                // keep it visible in the failure output rather than panic here.
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({"message": "NOT JSON", "raw": line}));
                if to_logs.send(Line::Log(value)).is_err() {
                    break;
                }
            }
        });
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({"not_json": line}));
                if send.send(Line::Data(value)).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            logs: Vec::new(),
            data: Vec::new(),
            data_at: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn take(&mut self, line: Line) {
        match line {
            Line::Log(value) => self.logs.push(value),
            Line::Data(value) => {
                self.data.push(value);
                self.data_at.push(Instant::now());
            }
        }
    }

    /// Waits until `done` holds for what was seen so far; panics with every
    /// line seen if it does not within the deadline.
    pub fn wait_until(&mut self, what: &str, done: impl Fn(&Running) -> bool) {
        let end = Instant::now() + DEADLINE;
        while !done(self) {
            let left = end.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) => {
                    self.take(line);
                }
                Err(RecvTimeoutError::Timeout) if Instant::now() < end => {}
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "not seen within {DEADLINE:?}: {what}\nlogs:\n{:#?}\ndata:\n{:#?}",
                        self.logs, self.data
                    )
                }
            }
        }
    }

    /// Waits for a log line matching `predicate` and returns it.
    pub fn wait_for_log(&mut self, what: &str, predicate: impl Fn(&Value) -> bool) -> Value {
        self.wait_until(what, |r| r.logs.iter().any(&predicate));
        self.logs.iter().find(|l| predicate(l)).unwrap().clone()
    }

    /// Sends SIGTERM and waits for the exit; returns the status.
    pub fn terminate(mut self) -> (ExitStatus, Running) {
        signal(self.child.id(), "TERM");
        let status = self.wait_exit();
        (status, self)
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(mut self) {
        signal(self.child.id(), "KILL");
        self.wait_exit();
    }

    /// Lets the process run until `until`, reading what it writes; then
    /// SIGKILL. Returns the instant of the kill and what was read.
    pub fn kill_at(mut self, until: Instant) -> (Instant, Vec<(Instant, Value)>, Vec<Value>) {
        while Instant::now() < until {
            let left = until.saturating_duration_since(Instant::now());
            if let Ok(line) = self.lines.recv_timeout(left.min(Duration::from_millis(20))) {
                self.take(line);
            }
        }
        let killed_at = Instant::now();
        signal(self.child.id(), "KILL");
        self.wait_exit();
        let data = std::mem::take(&mut self.data_at)
            .into_iter()
            .zip(std::mem::take(&mut self.data))
            .collect();
        (killed_at, data, std::mem::take(&mut self.logs))
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Read what the process wrote before it ended.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(500)) {
                    self.take(line);
                }
                return status;
            }
            assert!(
                Instant::now() < end,
                "kubeherald did not exit after a signal"
            );
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(50)) {
                self.take(line);
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// The object JSON an SNS message carries: its body base64-decoded, then
/// gunzipped (SPEC §3, `content_encoding: gzip+base64`).
pub fn sns_body(message: &str) -> Vec<u8> {
    use base64::Engine;
    use std::io::Read;
    let compressed = base64::engine::general_purpose::STANDARD
        .decode(message)
        .expect("an SNS body is base64");
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_end(&mut out)
        .expect("an SNS body is gzip");
    out
}

/// The `message` of a log line.
pub fn message(line: &Value) -> &str {
    line["message"].as_str().unwrap_or_default()
}

/// A field of a log line, from the event or its span.
pub fn field<'a>(line: &'a Value, name: &str) -> &'a str {
    line[name]
        .as_str()
        .or_else(|| line["span"][name].as_str())
        .unwrap_or_default()
}

/// Resolves the contexts of a kubeconfig the way `kubeherald run` does.
pub fn targets(
    kubeconfig: &kubeherald_testbed::kube::KubeconfigBuilder,
) -> Vec<kubeherald::contexts::ClusterTarget> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    kubeconfig.write_to(&path).unwrap();
    resolve_kubeconfig(&path)
}

/// The kubeherald binary in a known environment: nothing of the caller's
/// configuration, kubeconfig, spool, Sentry or AWS settings, no home
/// directory, and the HTTP endpoint on a free port (tests run side by side;
/// a test may set `HTTP_LISTEN` itself).
pub fn kubeherald_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kubeherald"));
    command.env("HOME", "/nonexistent-home");
    for name in [
        "CONFIG",
        "CONFIG_PATH",
        "KUBECONFIG",
        "SNS_TOPIC_ARN",
        "SPOOL_DIR",
        "SENTRY_DSN",
        "KUBERNETES_SERVICE_HOST",
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ] {
        command.env_remove(name);
    }
    command.env("HTTP_LISTEN", "127.0.0.1:0");
    command
}

/// Resolves the contexts of the kubeconfig file at `path` the way
/// `kubeherald run` does.
pub fn resolve_kubeconfig(path: &std::path::Path) -> Vec<kubeherald::contexts::ClusterTarget> {
    use kubeherald::config::{ClusterSelection, KubeconfigLocation};
    let selection = ClusterSelection::Contexts {
        kubeconfig: KubeconfigLocation::Explicit {
            paths: vec![path.to_owned()],
            field: "kubeconfig".into(),
        },
        names: None,
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(kubeherald::contexts::resolve(
            &selection,
            &kubeherald::contexts::Surroundings::default(),
        ))
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// The one context `context` on `server`, namespace `namespace`, with the
/// server's admin token.
pub fn target(
    server: &kubeherald_testbed::kube::ApiServer,
    context: &str,
    namespace: &str,
) -> kubeherald::contexts::ClusterTarget {
    targets(&kubeherald_testbed::kube::KubeconfigBuilder::new().context(
        context,
        server,
        Some(namespace),
        kubeherald_testbed::kube::ADMIN_TOKEN,
    ))
    .remove(0)
}

/// A counter of one watch (`kubeherald_{name}_total{context, namespace,
/// kind, reason}`) from the Prometheus exposition, summed over the
/// namespaces of the context; 0 when it has no series yet.
pub fn watch_counter(name: &str, context: &str, kind: &str, reason: &str) -> u64 {
    let start = format!("kubeherald_{name}_total{{context=\"{context}\",namespace=\"");
    let end = format!("\",kind=\"{kind}\",reason=\"{reason}\"}} ");
    kubeherald::metrics::metrics()
        .encode()
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&start)?;
            let (_, value) = rest.split_once(&end)?;
            value.trim().parse::<u64>().ok()
        })
        .sum()
}

//! `kubeherald run` against Kubernetes API test servers: every context is
//! resolved, reached with its own credentials, and the process stops cleanly
//! on SIGTERM. Conditions are awaited by reading the JSON log lines, never by
//! sleeping.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use kubeherald_testbed::kube::{Access, ApiServer, KubeconfigBuilder};
use serde_json::Value;

/// Generous: the machines running CI are shared and slow; a condition that
/// holds is seen long before this.
const DEADLINE: Duration = Duration::from_secs(60);

/// A running `kubeherald run` whose JSON log lines are read as they come.
struct Running {
    child: Child,
    lines: Receiver<Value>,
    seen: Vec<Value>,
}

impl Running {
    /// Starts `kubeherald run` with `config` as inline YAML in `CONFIG`.
    fn start(config: &str, extra_env: &[(&str, &str)]) -> Running {
        Running::start_with(&[], &[&[("CONFIG", config)], extra_env].concat())
    }

    fn start_with(extra_args: &[&str], extra_env: &[(&str, &str)]) -> Running {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kubeherald"));
        command
            .args(["run", "--log-format", "json"])
            .args(extra_args)
            .env_remove("CONFIG")
            .env("RUST_LOG", "info")
            .env("HOME", "/nonexistent-home")
            .env_remove("CONFIG_PATH")
            .env_remove("KUBECONFIG")
            .env_remove("SNS_TOPIC_ARN")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in extra_env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("kubeherald starts");
        let stderr = child.stderr.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| panic!("a log line that is not JSON: {line}"));
                if send.send(value).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a log line matching `predicate`; panics with every line
    /// seen if none comes before the deadline.
    fn wait_for(&mut self, what: &str, predicate: impl Fn(&Value) -> bool) -> Value {
        if let Some(found) = self.seen.iter().find(|line| predicate(line)) {
            return found.clone();
        }
        let end = Instant::now() + DEADLINE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if predicate(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.child.kill();
                    panic!(
                        "no log line {what} within {DEADLINE:?}; saw:\n{:#?}",
                        self.seen
                    )
                }
            }
        }
    }

    fn terminate(mut self) -> (ExitStatus, Vec<Value>) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let end = Instant::now() + DEADLINE;
        let exit = loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                break exit;
            }
            assert!(
                Instant::now() < end,
                "kubeherald did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        self.seen.extend(self.lines.try_iter());
        (exit, self.seen)
    }
}

fn message(line: &Value) -> &str {
    line["message"].as_str().unwrap_or_default()
}

fn field<'a>(line: &'a Value, name: &str) -> &'a str {
    line[name]
        .as_str()
        .or_else(|| line["span"][name].as_str())
        .unwrap_or_default()
}

fn is(line: &Value, msg: &str, context: &str) -> bool {
    message(line) == msg && field(line, "context") == context
}

#[test]
fn run_resolves_and_reaches_every_context_then_exits_cleanly_on_sigterm() {
    let eu = ApiServer::start();
    eu.add_token("token-eu", Access::All);
    let us = ApiServer::start();
    us.add_token("token-us", Access::namespaces(["ops"]));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    KubeconfigBuilder::new()
        .context("eu-team-a", &eu, Some("team-a"), "token-eu")
        .context("eu-default", &eu, None, "token-eu")
        .context("us-ops", &us, Some("ops"), "token-us")
        .current("eu-team-a")
        .write_to(&kubeconfig)
        .unwrap();
    let config = dir.path().join("kubeherald.yaml");
    std::fs::write(
        &config,
        format!(
            "kubeconfig: {}\nresources:\n  - apiVersion: v1\n    kind: Pod\n",
            kubeconfig.display()
        ),
    )
    .unwrap();

    let mut running = Running::start_with(&["--config", config.to_str().unwrap()], &[]);
    for (context, server, namespace) in [
        ("eu-team-a", &eu, "team-a"),
        ("eu-default", &eu, "default"),
        ("us-ops", &us, "ops"),
    ] {
        let resolved = running.wait_for(&format!("resolving {context}"), |l| {
            is(l, "context resolved", context)
        });
        assert_eq!(field(&resolved, "cluster"), server.url(), "{resolved}");
        assert_eq!(field(&resolved, "namespace"), namespace, "{resolved}");
        running.wait_for(&format!("reaching {context}"), |l| {
            is(l, "context reachable", context)
        });
    }
    // Nothing forwards yet; the process must say so rather than look busy.
    running.wait_for("warning that nothing is forwarded", |l| {
        message(l).contains("does not yet forward")
    });

    let (status, lines) = running.terminate();
    assert_eq!(status.code(), Some(0), "{lines:#?}");
    assert!(lines.iter().any(|l| message(l) == "stopped"), "{lines:#?}");
    for line in &lines {
        let text = line.to_string();
        assert!(
            !text.contains("token-eu") && !text.contains("token-us"),
            "a token in a log line: {text}"
        );
    }
}

#[test]
fn unreachable_or_unauthorised_context_is_retried_and_does_not_hold_back_the_others() {
    let healthy = ApiServer::start();
    healthy.add_token("good", Access::All);
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    KubeconfigBuilder::new()
        .context("healthy", &healthy, Some("default"), "good")
        .context_url(
            "down",
            &format!("http://127.0.0.1:{closed_port}"),
            Some("default"),
            "whatever",
        )
        .context("bad-token", &healthy, Some("default"), "revoked")
        .write_to(&kubeconfig)
        .unwrap();
    let config = format!("kubeconfig: {}\n", kubeconfig.display());

    let mut running = Running::start(&config, &[]);
    running.wait_for("healthy reached", |l| is(l, "context reachable", "healthy"));
    // Each bad context is retried with backoff: a second failure shows the
    // retry happened and that it counts.
    for context in ["down", "bad-token"] {
        let second = running.wait_for(&format!("{context} retried"), |l| {
            is(l, "context unreachable", context) && l["failures"].as_u64() == Some(2)
        });
        assert!(!field(&second, "retry_in").is_empty(), "{second}");
    }
    let (status, lines) = running.terminate();
    assert_eq!(status.code(), Some(0), "{lines:#?}");
    assert!(!lines.iter().any(|l| is(l, "context reachable", "down")));
    assert!(
        !lines
            .iter()
            .any(|l| is(l, "context reachable", "bad-token"))
    );
}

/// Exec credential plugins (`aws eks get-token` and the like) run as kube-rs
/// runs them; the token they print authenticates the context.
#[test]
fn exec_credential_plugin_authenticates_a_context() {
    let server = ApiServer::start();
    server.add_token("from-exec-plugin", Access::All);
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("get-token");
    std::fs::write(
        &plugin,
        "#!/bin/sh\necho '{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{\"token\":\"from-exec-plugin\"}}'\n",
    )
    .unwrap();
    make_executable(&plugin);
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: '{}'}}\nusers:\n- name: exec\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {}\n      interactiveMode: Never\ncontexts:\n- name: via-exec\n  context: {{cluster: c, user: exec, namespace: apps}}\n",
            server.url(),
            plugin.display()
        ),
    )
    .unwrap();
    let mut running = Running::start(&format!("kubeconfig: {}\n", kubeconfig.display()), &[]);
    running.wait_for("via-exec reached", |l| {
        is(l, "context reachable", "via-exec")
    });
    let (status, lines) = running.terminate();
    assert_eq!(status.code(), Some(0), "{lines:#?}");
}

/// The log forwarder's config: one cluster named by `cluster`, its
/// namespaces, reached through the kubeconfig's current context outside a pod.
#[test]
fn log_forwarder_style_config_runs_each_namespace_of_the_current_context() {
    let server = ApiServer::start();
    server.add_token("t", Access::All);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    KubeconfigBuilder::new()
        .context("other", &server, Some("x"), "t")
        .context("mine", &server, Some("ignored"), "t")
        .current("mine")
        .write_to(&kubeconfig)
        .unwrap();
    let config = "prefix: myapp-prod\ncluster: mpp-prod\nnamespaces: [team-a, team-b]\nexclude_labels:\n  app.kubernetes.io/name: kubeherald\nretention_days: 30\n";
    let kubeconfig_env = kubeconfig.display().to_string();
    let mut running = Running::start(config, &[("KUBECONFIG", &kubeconfig_env)]);
    for namespace in ["team-a", "team-b"] {
        let line = running.wait_for(&format!("namespace {namespace}"), |l| {
            is(l, "context resolved", "mine") && field(l, "namespace") == namespace
        });
        assert_eq!(field(&line, "cluster_name"), "mpp-prod", "{line}");
    }
    let (status, lines) = running.terminate();
    assert_eq!(status.code(), Some(0), "{lines:#?}");
    assert!(
        !lines.iter().any(|l| field(l, "context") == "other"),
        "{lines:#?}"
    );
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut permissions = std::fs::metadata(path).unwrap().permissions();
    permissions.set_mode(0o755);
    std::fs::set_permissions(path, permissions).unwrap();
}

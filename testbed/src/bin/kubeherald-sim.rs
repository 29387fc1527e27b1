//! `kubeherald-sim`: simulated clusters for the demo (`scripts/demo.sh`),
//! made of the test bed's Kubernetes API server (the one the test suite
//! checks against the real API's semantics).
//!
//! ```text
//! kubeherald-sim serve --kubeconfig PATH [--clusters N] [--namespace NS] [--aws ENV_FILE]
//!     N API servers on loopback (default 2), one kubeconfig context each
//!     (sim-1 … sim-N); ConfigMaps, a Deployment and pods whose containers
//!     log a line a second; every few seconds a change, a ConfigMap created
//!     and deleted, a container restart, a pod replaced. With --aws: moto
//!     (from .venv) with an SNS topic, three SQS queues subscribed with the
//!     seed's filter policies, and ENV_FILE holding what kubeherald needs to
//!     reach them; at the end, what each queue received and the CloudWatch
//!     groups and streams. Runs until SIGINT or SIGTERM.
//! kubeherald-sim show
//!     Reads kubeherald's stdout (JSON lines) and prints one readable line
//!     per event and per log line; at the end of its input, a summary.
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use kubeherald_testbed::aws::{Moto, SqsSubscription, SubscribeOptions, TestSdk};
use kubeherald_testbed::kube::{ADMIN_TOKEN, ApiServer, KubeconfigBuilder};
use serde_json::{Value, json};

const USAGE: &str = "usage:
  kubeherald-sim serve --kubeconfig PATH [--clusters N] [--namespace NS] [--aws ENV_FILE]
  kubeherald-sim show";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => Options::parse(&args[1..]).and_then(serve),
        Some("show") => show(std::io::stdin().lock(), std::io::stdout().lock()),
        Some("--help" | "-h") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => Err(USAGE.to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("kubeherald-sim: {message}");
            ExitCode::from(2)
        }
    }
}

struct Options {
    kubeconfig: PathBuf,
    clusters: usize,
    namespace: String,
    aws: Option<PathBuf>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut options = Options {
            kubeconfig: PathBuf::new(),
            clusters: 2,
            namespace: "demo".into(),
            aws: None,
        };
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let mut value = || {
                args.next()
                    .cloned()
                    .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
            };
            match flag.as_str() {
                "--kubeconfig" => options.kubeconfig = PathBuf::from(value()?),
                "--clusters" => {
                    options.clusters = value()?
                        .parse()
                        .ok()
                        .filter(|n| (1..=20).contains(n))
                        .ok_or("--clusters takes a number from 1 to 20")?;
                }
                "--namespace" => options.namespace = value()?,
                "--aws" => options.aws = Some(PathBuf::from(value()?)),
                other => return Err(format!("unknown argument {other}\n{USAGE}")),
            }
        }
        if options.kubeconfig.as_os_str().is_empty() {
            return Err(format!("--kubeconfig is required\n{USAGE}"));
        }
        Ok(options)
    }
}

/// One simulated cluster and what changes in it.
struct Cluster {
    server: ApiServer,
    namespace: String,
    /// Pods whose containers log, with their containers.
    pods: Vec<(String, Vec<&'static str>)>,
    /// Lines logged so far, for the line texts.
    lines: u64,
    /// Generation of the replaced pod.
    generation: u32,
}

impl Cluster {
    fn start(namespace: &str) -> Cluster {
        let server = ApiServer::start();
        server.apply(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": namespace, "labels": {"team": "demo"}},
        }));
        let mut cluster = Cluster {
            server,
            namespace: namespace.to_owned(),
            pods: Vec::new(),
            lines: 0,
            generation: 0,
        };
        for (name, data) in [
            ("settings", "blue"),
            ("feature-flags", "off"),
            ("routes", "v1"),
        ] {
            cluster.config_map(name, data);
        }
        cluster.deployment(2);
        cluster.pod("web-0", vec!["app", "proxy"]);
        cluster.pod("web-1", vec!["app", "proxy"]);
        cluster.pod("worker-0", vec!["worker"]);
        cluster
    }

    fn config_map(&self, name: &str, value: &str) {
        self.server.apply(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": self.namespace, "labels": {"app": "web"}},
            "data": {"value": value},
        }));
    }

    fn deployment(&self, replicas: u32) {
        self.server.apply(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": self.namespace, "labels": {"app": "web"}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]},
                },
            },
        }));
    }

    fn pod(&mut self, name: &str, containers: Vec<&'static str>) {
        let specs: Vec<Value> = containers
            .iter()
            .map(|c| json!({"name": c, "image": "busybox"}))
            .collect();
        self.server.apply(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": self.namespace, "labels": {"app": "web"}},
            "spec": {"containers": specs},
        }));
        self.pods.push((name.to_owned(), containers));
    }

    /// One second of life: every container logs a line; every few seconds
    /// something changes.
    fn tick(&mut self, second: u64) {
        for (pod, containers) in &self.pods {
            for container in containers {
                self.lines += 1;
                let line = match *container {
                    "proxy" => format!(
                        "GET /api/items/{} 200 {}ms",
                        self.lines % 97,
                        3 + self.lines % 11
                    ),
                    "worker" => format!("job {} done in {}ms", self.lines, 40 + self.lines % 60),
                    _ => format!("served request {} for {pod}", self.lines),
                };
                self.server
                    .append_log(&self.namespace, pod, container, &line);
            }
        }
        match second % 30 {
            3 | 13 | 23 => self.config_map("settings", &format!("colour-{second}")),
            6 => self.deployment(3),
            8 => self.config_map("canary", "on"),
            11 => self
                .server
                .restart_container(&self.namespace, "web-0", "app"),
            16 => self.deployment(2),
            18 => {
                let _ = self
                    .server
                    .delete("v1", "ConfigMap", &self.namespace, "canary");
            }
            21 => {
                // A pod replaced: the old one deleted, a new one started.
                let old = format!("worker-{}", self.generation);
                let _ = self.server.delete("v1", "Pod", &self.namespace, &old);
                self.pods.retain(|(name, _)| *name != old);
                self.generation += 1;
                let new = format!("worker-{}", self.generation);
                self.pod(&new, vec!["worker"]);
            }
            _ => {}
        }
    }
}

fn serve(options: Options) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let aws = match &options.aws {
        Some(env_file) => Some(runtime.block_on(Aws::start(env_file))?),
        None => None,
    };
    let mut clusters: Vec<Cluster> = (0..options.clusters)
        .map(|_| Cluster::start(&options.namespace))
        .collect();
    let mut kubeconfig = KubeconfigBuilder::new();
    for (i, cluster) in clusters.iter().enumerate() {
        kubeconfig = kubeconfig.context(
            &format!("sim-{}", i + 1),
            &cluster.server,
            Some(&options.namespace),
            ADMIN_TOKEN,
        );
    }
    // Written whole, then renamed: a reader never sees half a kubeconfig.
    let partial = options.kubeconfig.with_extension("partial");
    kubeconfig
        .write_to(&partial)
        .and_then(|()| std::fs::rename(&partial, &options.kubeconfig))
        .map_err(|e| format!("cannot write {}: {e}", options.kubeconfig.display()))?;
    eprintln!(
        "kubeherald-sim: {} clusters serving (kubeconfig {})",
        clusters.len(),
        options.kubeconfig.display()
    );
    runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
        let mut second = 0u64;
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = tokio::signal::ctrl_c() => break,
                _ = terminate.recv() => break,
            }
            second += 1;
            for cluster in &mut clusters {
                cluster.tick(second);
            }
        }
        if let Some(aws) = &aws {
            aws.summary(std::io::stdout().lock()).await;
        }
        Ok::<(), String>(())
    })
}

/// moto with the demo's topic and queues.
struct Aws {
    _moto: Moto,
    sdk: TestSdk,
    queues: Vec<(&'static str, SqsSubscription)>,
}

/// The seed's filter policies (seed 003's README), one queue each.
const QUEUES: [(&str, &str); 3] = [
    (
        "configmaps",
        r#"{"source": ["kubernetes"], "kind": ["ConfigMap"]}"#,
    ),
    (
        "deployments",
        r#"{"source": ["kubernetes"], "kind": ["Deployment"]}"#,
    ),
    (
        "deletions",
        r#"{"source": ["kubernetes"], "event_type": ["DELETED"]}"#,
    ),
];

impl Aws {
    async fn start(env_file: &Path) -> Result<Aws, String> {
        let moto = Moto::start();
        let sdk = TestSdk::new(moto.url());
        let topic = sdk
            .sns()
            .create_topic()
            .name("kubeherald-demo")
            .send()
            .await
            .map_err(|e| format!("CreateTopic: {e:?}"))?
            .topic_arn
            .ok_or("CreateTopic gave no ARN")?;
        let mut queues = Vec::new();
        for (name, policy) in QUEUES {
            let queue = SqsSubscription::create(
                &sdk.sns(),
                &sdk.sqs(),
                &topic,
                &format!("kubeherald-demo-{name}"),
                SubscribeOptions {
                    filter_policy: Some(policy.to_owned()),
                    raw_message_delivery: true,
                },
            )
            .await;
            queues.push((name, queue));
        }
        let mut env: Vec<(String, String)> = sdk
            .env()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        env.push(("SNS_TOPIC_ARN".into(), topic));
        let text: String = env
            .iter()
            .map(|(k, v)| format!("export {k}='{v}'\n"))
            .collect();
        std::fs::write(env_file, text)
            .map_err(|e| format!("cannot write {}: {e}", env_file.display()))?;
        Ok(Aws {
            _moto: moto,
            sdk,
            queues,
        })
    }

    /// What each queue received, and the log groups and streams created.
    async fn summary(&self, mut out: impl Write) {
        let _ = writeln!(out, "== AWS (moto) ==");
        for (name, queue) in &self.queues {
            let mut received = 0;
            loop {
                let batch = queue.receive_once(0).await;
                if batch.is_empty() {
                    break;
                }
                received += batch.len();
            }
            let policy = QUEUES
                .iter()
                .find(|(n, _)| n == name)
                .map_or("", |(_, p)| p);
            let _ = writeln!(
                out,
                "queue {name:<12} {received:>5} messages  (filter {policy})"
            );
        }
        let logs = self.sdk.logs();
        let groups = logs
            .describe_log_groups()
            .send()
            .await
            .map(|answer| answer.log_groups.unwrap_or_default())
            .unwrap_or_default();
        for group in groups {
            let Some(name) = group.log_group_name else {
                continue;
            };
            let streams = logs
                .describe_log_streams()
                .log_group_name(&name)
                .send()
                .await
                .map(|answer| answer.log_streams.unwrap_or_default())
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "log group {name} (retention {} days): {} streams",
                group.retention_in_days.unwrap_or_default(),
                streams.len()
            );
            for stream in streams {
                let _ = writeln!(out, "  {}", stream.log_stream_name.unwrap_or_default());
            }
        }
    }
}

/// Counts for the summary.
#[derive(Default)]
struct Summary {
    /// context → event type → count.
    events: BTreeMap<String, BTreeMap<String, u64>>,
    /// stream (cluster/namespace/pod/container/restart) → lines.
    lines: BTreeMap<String, u64>,
}

/// Reads kubeherald's stdout, prints it readably, then the summary.
fn show(input: impl BufRead, mut out: impl Write) -> Result<(), String> {
    let mut summary = Summary::default();
    for line in input.lines() {
        let Ok(line) = line else { break };
        let Ok(value) = serde_json::from_str::<Value>(&line) else {
            let _ = writeln!(out, "{line}");
            continue;
        };
        let text = readable(&value, &mut summary).unwrap_or(line);
        if writeln!(out, "{text}").is_err() {
            break;
        }
    }
    write_summary(&summary, &mut out).map_err(|e| format!("cannot write the summary: {e}"))
}

/// One readable line for an event or a log line, counted.
fn readable(value: &Value, summary: &mut Summary) -> Option<String> {
    if let Some(attributes) = value.get("attributes") {
        let text = |name: &str| attributes[name].as_str().unwrap_or("");
        let context = text("context");
        let event_type = text("event_type");
        *summary
            .events
            .entry(context.to_owned())
            .or_default()
            .entry(event_type.to_owned())
            .or_default() += 1;
        let flags = match text("flags") {
            "" => String::new(),
            flags => format!("  [{flags}]"),
        };
        return Some(format!(
            "event  {context:<8} {event_type:<8} {:<10} {}/{}{flags}",
            text("kind"),
            text("namespace"),
            text("object_name")
        ));
    }
    let message = value.get("message")?.as_str()?;
    let part = |name: &str| value[name].as_str().unwrap_or("");
    let stream = format!(
        "{}/{}/{}/{}/{}",
        part("cluster"),
        part("namespace"),
        part("pod"),
        part("container"),
        value["restart_count"].as_u64().unwrap_or_default()
    );
    *summary.lines.entry(stream.clone()).or_default() += 1;
    Some(format!("log    {stream:<32} {message}"))
}

fn write_summary(summary: &Summary, out: &mut impl Write) -> std::io::Result<()> {
    if summary.events.is_empty() && summary.lines.is_empty() {
        // Everything went to AWS (--aws): its summary comes from `serve`.
        return Ok(());
    }
    writeln!(out, "== summary ==")?;
    let events: u64 = summary.events.values().flat_map(|t| t.values()).sum();
    writeln!(out, "events: {events}")?;
    for (context, types) in &summary.events {
        let counts: Vec<String> = types.iter().map(|(t, n)| format!("{t} {n}")).collect();
        writeln!(out, "  {context}: {}", counts.join(", "))?;
    }
    let lines: u64 = summary.lines.values().sum();
    writeln!(out, "log lines: {lines}")?;
    for (stream, n) in &summary.lines {
        writeln!(out, "  {stream}: {n}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_prints_events_and_log_lines_readably_and_sums_them_up() {
        let input = concat!(
            r#"{"attributes":{"source":"kubernetes","context":"sim-1","namespace":"demo","kind":"ConfigMap","event_type":"ADDED","object_name":"settings"},"object":{}}"#,
            "\n",
            r#"{"cluster":"sim-2","namespace":"demo","pod":"web-0","container":"app","restart_count":1,"timestamp":"2026-12-01T00:00:00Z","message":"hello"}"#,
            "\n",
            "not json\n",
        );
        let mut out = Vec::new();
        show(input.as_bytes(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("event  sim-1    ADDED    ConfigMap  demo/settings"),
            "{text}"
        );
        assert!(text.contains("log    sim-2/demo/web-0/app/1"), "{text}");
        assert!(text.contains("not json"));
        assert!(text.contains("events: 1\n  sim-1: ADDED 1\n"), "{text}");
        assert!(
            text.contains("log lines: 1\n  sim-2/demo/web-0/app/1: 1\n"),
            "{text}"
        );
    }
}

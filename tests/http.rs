//! The HTTP endpoint of the binary (SPEC §6), as Prometheus and the kubelet
//! use it: `/metrics` has the series of every configured context from the
//! start (the unreachable one included) with real counts; `/readyz` is 200
//! once every watch is synced or failed, and its JSON names the context
//! whose server is down with its last error; `/healthz` is 200 while the
//! threads are alive and the spool writable.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;

use kubeherald_testbed::kube::{ADMIN_TOKEN, ApiServer, KubeconfigBuilder};
use serde_json::{Value, json};
use support::{Running, field, message};

/// (status, body) of a GET.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: kubeherald\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn series(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(prefix))
        .and_then(|rest| rest.trim().parse().ok())
}

#[test]
fn metrics_readiness_and_health_are_served_and_name_a_context_that_is_down() {
    let server = ApiServer::start();
    server.apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c1", "namespace": "apps"}}));
    let down = ApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    KubeconfigBuilder::new()
        .context("up", &server, Some("apps"), ADMIN_TOKEN)
        .context("down", &down, Some("apps"), ADMIN_TOKEN)
        .write_to(&kubeconfig)
        .unwrap();
    down.stop();
    let config = format!(
        "kubeconfig: {}\nresources:\n  - {{apiVersion: v1, kind: ConfigMap}}\nspool: {{dir: {}}}\n",
        kubeconfig.display(),
        dir.path().join("spool").display()
    );
    let mut running = Running::start(&config, &[]);
    let listening = running.wait_for_log("the HTTP endpoint", |l| {
        message(l).starts_with("HTTP endpoint listening")
    });
    let addr = field(&listening, "addr").to_owned();

    let (status, body) = get(&addr, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    running.wait_until("ready: up synced, down failed", |_| {
        get(&addr, "/readyz").0 == 200
    });
    let (_, body) = get(&addr, "/readyz");
    let readiness: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(readiness["ready"], true);
    let context = |name: &str| {
        readiness["contexts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["context"] == name)
            .unwrap_or_else(|| panic!("{name} in {readiness:#}"))
            .clone()
    };
    assert_eq!(context("up")["watches"][0]["state"], "synced");
    let down_watch = &context("down")["watches"][0];
    assert_eq!(down_watch["state"], "failed", "{readiness:#}");
    assert!(
        down_watch["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("unreachable")),
        "{readiness:#}"
    );

    running.wait_until("the ADDED counted", |_| {
        let (_, metrics) = get(&addr, "/metrics");
        series(
            &metrics,
            r#"kubeherald_events_observed_total{context="up",namespace="apps",kind="ConfigMap",event_type="ADDED"} "#,
        )
        .is_some_and(|n| n >= 1.0)
    });
    let (status, metrics) = get(&addr, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        series(
            &metrics,
            r#"kubeherald_events_observed_total{context="down",namespace="apps",kind="ConfigMap",event_type="ADDED"} "#
        ),
        Some(0.0),
        "the context that never worked has its series"
    );
    assert!(
        series(
            &metrics,
            r#"kubeherald_watch_errors_total{context="down",namespace="apps",kind="ConfigMap",reason="unreachable"} "#
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert!(metrics.contains("kubeherald_spool_bytes"), "{metrics}");
    // What the "context failing" alert reads: up for the open watch, 0 for
    // the one that never reached its server.
    // The open watch is up; between a watch's end (the server's timeout)
    // and its reopening it is 0 for a moment, so wait for it rather than
    // read it once.
    running.wait_until("the open watch's watch_up at 1", |_| {
        let (_, metrics) = get(&addr, "/metrics");
        series(
            &metrics,
            r#"kubeherald_watch_up{context="up",namespace="apps",kind="ConfigMap"} "#,
        ) == Some(1.0)
    });
    assert_eq!(
        series(
            &metrics,
            r#"kubeherald_watch_up{context="down",namespace="apps",kind="ConfigMap"} "#
        ),
        Some(0.0),
        "{metrics}"
    );
    // The test servers speak plain HTTP: said at start and counted.
    assert_eq!(
        series(
            &metrics,
            r#"kubeherald_insecure_contexts{context="up",reason="plain-http"} "#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(running.logs.iter().any(|l| {
        message(l).contains("without TLS verification") && field(l, "context") == "up"
    }));
    assert!(metrics.trim_end().ends_with("# EOF"), "OpenMetrics text");
    assert_eq!(get(&addr, "/nope").0, 404);

    let (status, running) = running.terminate();
    assert_eq!(status.code(), Some(0), "{:#?}", running.logs);
}

#[test]
fn a_port_in_use_is_a_start_up_error_naming_the_address() {
    let server = ApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    KubeconfigBuilder::new()
        .context("up", &server, Some("apps"), ADMIN_TOKEN)
        .write_to(&kubeconfig)
        .unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let config = format!(
        "kubeconfig: {}\nresources:\n  - {{apiVersion: v1, kind: ConfigMap}}\n",
        kubeconfig.display()
    );
    let mut running = Running::start(&config, &[("HTTP_LISTEN", addr.as_str())]);
    let stopped =
        running.wait_for_log("the start-up error", |l| message(l) == "kubeherald stopped");
    assert!(
        field(&stopped, "error").contains(&format!("cannot listen on {addr}")),
        "{stopped}"
    );
    assert_eq!(server.watch_count("ConfigMap"), 0, "no watch started");
}

#[test]
fn contexts_without_tls_verification_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n\
         - name: skip\n  cluster: {server: 'https://10.0.0.1:6443', insecure-skip-tls-verify: true}\n\
         - name: tls\n  cluster: {server: 'https://10.0.0.2:6443'}\n\
         - name: plain\n  cluster: {server: 'http://10.0.0.3:8080'}\n\
         users:\n- name: u\n  user: {token: t}\n\
         contexts:\n\
         - name: skip\n  context: {cluster: skip, user: u}\n\
         - name: tls\n  context: {cluster: tls, user: u}\n\
         - name: plain\n  context: {cluster: plain, user: u}\n",
    )
    .unwrap();
    let targets = support::resolve_kubeconfig(&kubeconfig);
    let reasons: Vec<(String, Vec<&str>)> = targets
        .iter()
        .map(|t| (t.context.clone(), t.insecure_reasons()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("skip".to_owned(), vec!["skip-tls-verify"]),
            ("tls".to_owned(), vec![]),
            ("plain".to_owned(), vec!["plain-http"]),
        ]
    );
}

/// In the log forwarder's style (`cluster` + `namespaces`) every target has
/// the same context name: the `namespace` label keeps their series apart.
#[test]
fn watches_of_one_context_in_several_namespaces_have_their_own_series() {
    let server = ApiServer::start();
    for namespace in ["team-a", "team-b"] {
        server.apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": namespace}}));
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    KubeconfigBuilder::new()
        .context("mpp", &server, None, ADMIN_TOKEN)
        .write_to(&kubeconfig)
        .unwrap();
    let kubeconfig = kubeconfig.display().to_string();
    let mut running = Running::start(
        "cluster: mpp-prod\nnamespaces: [team-a, team-b]\nresources:\n  - {apiVersion: v1, kind: ConfigMap}\n",
        &[("KUBECONFIG", kubeconfig.as_str())],
    );
    let listening = running.wait_for_log("the HTTP endpoint", |l| {
        message(l).starts_with("HTTP endpoint listening")
    });
    let addr = field(&listening, "addr").to_owned();
    running.wait_until("an ADDED in each namespace", |_| {
        let (_, metrics) = get(&addr, "/metrics");
        ["team-a", "team-b"].iter().all(|namespace| {
            metrics.lines().any(|line| {
                line.starts_with("kubeherald_events_observed_total{")
                    && line.contains(&format!("namespace=\"{namespace}\""))
                    && line.contains("event_type=\"ADDED\"")
                    && line.ends_with(" 1")
            })
        })
    });
    let (status, running) = running.terminate();
    assert_eq!(status.code(), Some(0), "{:#?}", running.logs);
}

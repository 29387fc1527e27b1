//! `kubeherald run` against Kubernetes API test servers, without AWS: every
//! context is resolved and watched with its own credentials, events come out
//! on stdout as JSON lines, a bad context never holds back a good one, and
//! the process stops cleanly on SIGTERM.

mod support;

use std::path::Path;
use std::time::Duration;

use kubeherald_testbed::kube::{Access, ApiServer, KubeconfigBuilder};
use serde_json::{Value, json};
use support::{Running, field, message};

fn config_map(namespace: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace}, "data": {"k": "v"}})
}

/// Whether an event line on stdout is about `name` in `context`.
fn event_of(line: &Value, context: &str, name: &str, event_type: &str) -> bool {
    let attributes = &line["attributes"];
    attributes["context"] == context
        && attributes["object_name"] == name
        && attributes["event_type"] == event_type
}

fn has_event(running: &Running, context: &str, name: &str, event_type: &str) -> bool {
    running
        .data
        .iter()
        .any(|l| event_of(l, context, name, event_type))
}

const CONFIG_MAPS: &str = "resources:\n  - apiVersion: v1\n    kind: ConfigMap\n";

#[test]
fn run_watches_every_context_prints_events_and_exits_cleanly_on_sigterm() {
    let eu = ApiServer::start();
    eu.add_token("token-eu", Access::All);
    let us = ApiServer::start();
    us.add_token("token-us", Access::namespaces(["ops"]));
    eu.apply(config_map("team-a", "before-start"));
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
        format!("kubeconfig: {}\n{CONFIG_MAPS}", kubeconfig.display()),
    )
    .unwrap();

    let mut running = Running::start_with(&["--config", config.to_str().unwrap()], &[]);
    for (context, server, namespace) in [
        ("eu-team-a", &eu, "team-a"),
        ("eu-default", &eu, "default"),
        ("us-ops", &us, "ops"),
    ] {
        let resolved = running.wait_for_log(&format!("{context} resolved"), |l| {
            message(l) == "context resolved" && field(l, "context") == context
        });
        assert_eq!(field(&resolved, "cluster"), server.url(), "{resolved}");
        assert_eq!(field(&resolved, "namespace"), namespace, "{resolved}");
    }
    // The object that existed before the start comes from the initial LIST.
    running.wait_until("the initial LIST's ADDED", |r| {
        has_event(r, "eu-team-a", "before-start", "ADDED")
    });
    // Each context sees changes of its own namespace, through its own token.
    eu.apply(config_map("team-a", "a1"));
    eu.apply(config_map("default", "d1"));
    us.apply(config_map("ops", "o1"));
    running.wait_until("an event from every context", |r| {
        has_event(r, "eu-team-a", "a1", "ADDED")
            && has_event(r, "eu-default", "d1", "ADDED")
            && has_event(r, "us-ops", "o1", "ADDED")
    });
    let line = running
        .data
        .iter()
        .find(|l| event_of(l, "us-ops", "o1", "ADDED"))
        .unwrap()
        .clone();
    assert_eq!(line["attributes"]["cluster"], us.url());
    assert_eq!(line["attributes"]["namespace"], "ops");
    assert_eq!(line["attributes"]["kind"], "ConfigMap");
    assert_eq!(line["attributes"]["source"], "kubernetes");
    assert_eq!(line["object"]["metadata"]["name"], "o1");
    assert!(
        !running
            .data
            .iter()
            .any(|l| event_of(l, "eu-team-a", "d1", "ADDED")),
        "namespaces do not leak"
    );

    let (status, running) = running.terminate();
    assert_eq!(status.code(), Some(0), "{:#?}", running.logs);
    assert!(
        running.logs.iter().any(|l| message(l) == "stopped"),
        "{:#?}",
        running.logs
    );
    for line in running.logs.iter().chain(&running.data) {
        let text = line.to_string();
        assert!(
            !text.contains("token-eu") && !text.contains("token-us"),
            "a token in output: {text}"
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
        .context_url(
            "down",
            &format!("http://127.0.0.1:{closed_port}"),
            Some("default"),
            "whatever",
        )
        .context("bad-token", &healthy, Some("default"), "revoked")
        .context("healthy", &healthy, Some("default"), "good")
        .write_to(&kubeconfig)
        .unwrap();
    let config = format!("kubeconfig: {}\n{CONFIG_MAPS}", kubeconfig.display());

    let mut running = Running::start(&config, &[]);
    healthy.apply(config_map("default", "flows"));
    running.wait_until("healthy context's event", |r| {
        has_event(r, "healthy", "flows", "ADDED")
    });
    // Each bad context is retried with backoff: a second failure shows the
    // retry happened and that it counts.
    for context in ["down", "bad-token"] {
        running.wait_for_log(&format!("{context} retried"), |l| {
            field(l, "context") == context
                && message(l) == "watch request failed; retrying"
                && l["failures"].as_u64() >= Some(2)
        });
    }
    let (status, running) = running.terminate();
    assert_eq!(status.code(), Some(0), "{:#?}", running.logs);
    assert!(
        !running
            .data
            .iter()
            .any(|l| l["attributes"]["context"] == "bad-token")
    );
}

/// Exec credential plugins (`aws eks get-token` and the like) run as kube-rs
/// runs them; the token they print authenticates the context.
#[test]
fn exec_credential_plugin_authenticates_a_context() {
    let server = ApiServer::start();
    server.add_token("from-exec-plugin", Access::All);
    server.apply(config_map("apps", "seen-through-exec"));
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
    let mut running = Running::start(
        &format!("kubeconfig: {}\n{CONFIG_MAPS}", kubeconfig.display()),
        &[],
    );
    running.wait_until("the event read with the exec token", |r| {
        has_event(r, "via-exec", "seen-through-exec", "ADDED")
    });
    let (status, running) = running.terminate();
    assert_eq!(status.code(), Some(0), "{:#?}", running.logs);
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut permissions = std::fs::metadata(path).unwrap().permissions();
    permissions.set_mode(0o755);
    std::fs::set_permissions(path, permissions).unwrap();
}

/// A failing exec plugin (SSO expired, STS down) is transient: the context is
/// retried with backoff until the plugin works again, and nothing of the
/// plugin's environment, arguments or output reaches a log line (SPEC §6).
#[test]
fn a_failing_exec_plugin_is_retried_and_its_secrets_never_logged() {
    let server = ApiServer::start();
    server.add_token("from-exec-plugin", Access::All);
    server.apply(config_map("apps", "seen-after-recovery"));
    let dir = tempfile::tempdir().unwrap();
    let healed = dir.path().join("healed");
    let plugin = dir.path().join("get-token");
    std::fs::write(
        &plugin,
        format!(
            "#!/bin/sh\nif [ -e '{}' ]; then echo '{{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{{\"token\":\"from-exec-plugin\"}}}}'; exit 0; fi\necho \"session expired for token PLUGIN-OUTPUT-SECRET\" >&2\necho 'PLUGIN-STDOUT-SECRET'\nexit 1\n",
            healed.display()
        ),
    )
    .unwrap();
    make_executable(&plugin);
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: '{}'}}\nusers:\n- name: exec\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {}\n      args: [--password, PLUGIN-ARG-SECRET]\n      env:\n      - {{name: KH_SECRET, value: PLUGIN-ENV-SECRET}}\n      interactiveMode: Never\ncontexts:\n- name: via-exec\n  context: {{cluster: c, user: exec, namespace: apps}}\n",
            server.url(),
            plugin.display()
        ),
    )
    .unwrap();
    let mut running = Running::start(
        &format!("kubeconfig: {}\n{CONFIG_MAPS}", kubeconfig.display()),
        &[],
    );
    running.wait_until("the plugin's failure is said, twice (retried)", |r| {
        r.logs
            .iter()
            .filter(|l| l["reason"] == "credentials")
            .count()
            >= 2
    });
    std::fs::write(&healed, "").unwrap();
    running.wait_until("the context recovered once the plugin works", |r| {
        has_event(r, "via-exec", "seen-after-recovery", "ADDED")
    });
    let (status, running) = running.terminate();
    assert_eq!(status.code(), Some(0), "{:#?}", running.logs);
    for line in running.logs.iter().chain(&running.data) {
        let text = line.to_string();
        for secret in [
            "PLUGIN-ENV-SECRET",
            "PLUGIN-ARG-SECRET",
            "PLUGIN-OUTPUT-SECRET",
            "PLUGIN-STDOUT-SECRET",
        ] {
            assert!(!text.contains(secret), "{secret} in a log line: {text}");
        }
    }
}

/// SPEC §6: a credential plugin that hangs is waited for, not run again on
/// every retry. Each attempt gives up after its timeout; the next one waits
/// for the same build, which answers in the end. Runs never overlap: a new
/// run per attempt would leave a process and a thread hanging each time.
/// (kube itself runs the plugin more than once per client: for the token
/// and for a client certificate, one after the other.)
#[tokio::test(flavor = "current_thread")]
async fn a_hung_credential_plugin_is_waited_for_not_run_again() {
    use kubeherald::kube_api::{ApiError, Connector};
    let server = ApiServer::start();
    server.add_token("from-slow-plugin", Access::All);
    let dir = tempfile::tempdir().unwrap();
    let (running, overlaps) = (dir.path().join("running"), dir.path().join("overlaps"));
    let plugin = dir.path().join("get-token");
    std::fs::write(
        &plugin,
        format!(
            "#!/bin/sh
mkdir '{running}' 2>/dev/null || echo overlap >> '{overlaps}'
sleep 1
rmdir '{running}' 2>/dev/null
echo '{{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{{\"token\":\"from-slow-plugin\"}}}}'\n",
            running = running.display(),
            overlaps = overlaps.display()
        ),
    )
    .unwrap();
    make_executable(&plugin);
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: '{}'}}\nusers:\n- name: exec\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {}\n      interactiveMode: Never\ncontexts:\n- name: slow\n  context: {{cluster: c, user: exec, namespace: apps}}\ncurrent-context: slow\n",
        server.url(),
        plugin.display()
    ))
    .unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let mut connector = Connector::new(&config);
    let mut timeouts = 0;
    let client = loop {
        match connector.connect(Duration::from_millis(200)).await {
            Ok(client) => break client,
            Err(ApiError::Credentials { reason, .. }) if reason.contains("did not answer") => {
                timeouts += 1;
                assert!(timeouts < 200, "the plugin's build never answered");
            }
            Err(other) => panic!("unexpected: {other}"),
        }
    };
    assert!(
        timeouts >= 3,
        "attempts gave up waiting meanwhile: {timeouts}"
    );
    assert!(
        !overlaps.exists(),
        "a run of the plugin started while another ran"
    );
    // The token the run gave works.
    let version = client.apiserver_version().await.unwrap();
    assert!(!version.git_version.is_empty());
}

/// `memory.list_page` reaches the watchers: LIST pages of 16 KiB objects
/// under a 64 KiB bound ask for 3 items after the first page.
#[test]
fn memory_list_page_bounds_the_list_pages() {
    let server = ApiServer::start();
    server.add_token("t", Access::All);
    let payload = "z".repeat(16 * 1024);
    for i in 0..60 {
        server.apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("big-{i:02}"), "namespace": "apps"}, "data": {"k": payload}}));
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    KubeconfigBuilder::new()
        .context("pages", &server, Some("apps"), "t")
        .write_to(&kubeconfig)
        .unwrap();
    let mut running = Running::start(
        &format!(
            "kubeconfig: {}\n{CONFIG_MAPS}memory: {{list_page: 64KiB}}\n",
            kubeconfig.display()
        ),
        &[],
    );
    running.wait_until("the 60 objects listed", |r| {
        (0..60).all(|i| has_event(r, "pages", &format!("big-{i:02}"), "ADDED"))
    });
    let limits: Vec<String> = server
        .list_requests("ConfigMap")
        .iter()
        .filter_map(|r| r.param("limit"))
        .collect();
    assert!(
        limits.len() > 2 && limits[1..].iter().all(|l| l == "3"),
        "pages after the first fit 64 KiB: {limits:?}"
    );
    let (status, _) = running.terminate();
    assert_eq!(status.code(), Some(0));
}

//! SPEC §3 "Secrets stay secret", through the whole binary: planted Secret
//! values (and a ConfigMap value under `redact:`) never reach stdout, SNS
//! (bodies decoded) or any byte of any file under the spool directory,
//! and every file kubeherald creates there is 0600 in a 0700 directory.

mod support;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use kubeherald_testbed::aws::{
    Moto, SqsSubscription, StrictProxy, SubscribeOptions, TestSdk, unique_name,
};
use kubeherald_testbed::kube::{ADMIN_TOKEN, ApiServer, KubeconfigBuilder};
use serde_json::{Value, json};
use support::{DEADLINE, Running, sns_body};

const SECRET_PLAIN: &str = "kh-planted-password-1";
const SECRET_PLAIN_2: &str = "kh-planted-password-2";
const STRING_DATA: &str = "kh-planted-string-data";
const CONFIG_MAP_VALUE: &str = "kh-planted-config-map";

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Every form a planted value could take in an output.
fn planted() -> Vec<String> {
    vec![
        SECRET_PLAIN.into(),
        b64(SECRET_PLAIN),
        SECRET_PLAIN_2.into(),
        b64(SECRET_PLAIN_2),
        STRING_DATA.into(),
        CONFIG_MAP_VALUE.into(),
    ]
}

fn secret(password: &str) -> Value {
    let applied = json!({"apiVersion": "v1", "kind": "Secret", "stringData": {"token": STRING_DATA},
        "data": {"password": b64(password)}});
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "db", "namespace": "prod", "annotations": {
            "kubectl.kubernetes.io/last-applied-configuration": applied.to_string()}},
        "data": {"password": b64(password)},
        "stringData": {"token": STRING_DATA},
    })
}

fn config_map() -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "app", "namespace": "prod"},
        "data": {"password": CONFIG_MAP_VALUE, "mode": "fast"},
    })
}

/// A cluster with the planted objects, its kubeconfig, and a config for it.
fn setup(dir: &Path) -> (ApiServer, PathBuf, String) {
    let server = ApiServer::start();
    server.apply(secret(SECRET_PLAIN));
    server.apply(config_map());
    let kubeconfig = dir.join("kubeconfig");
    KubeconfigBuilder::new()
        .context("prod", &server, Some("prod"), ADMIN_TOKEN)
        .write_to(&kubeconfig)
        .unwrap();
    // The spool directory does not exist yet: kubeherald creates it.
    let spool = dir.join("data").join("spool");
    let config = format!(
        "kubeconfig: {}
resources:
  - {{apiVersion: v1, kind: Secret}}
  - {{apiVersion: v1, kind: ConfigMap, redact: [data.password]}}
logs: {{prefix: redaction, sink: stdout}}
spool: {{dir: {}}}
",
        kubeconfig.display(),
        spool.display()
    );
    (server, spool, config)
}

fn assert_clean(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    for value in planted() {
        assert!(!text.contains(&value), "{what} holds the planted {value:?}");
    }
}

/// Every file under `dir`: no planted value in its raw bytes; 0600 files,
/// 0700 directories. Returns how many files were read.
fn check_every_file(dir: &Path) -> usize {
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files += check_every_file(&path);
            continue;
        }
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        let mut bytes = Vec::new();
        std::fs::File::open(&path)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        assert_clean(&path.display().to_string(), &bytes);
        files += 1;
    }
    files
}

fn marker(line: &Value) -> String {
    line["object"]["data"]["password"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn secret_values_reach_neither_stdout_nor_any_spool_file() {
    let dir = tempfile::tempdir().unwrap();
    let (server, spool, config) = setup(dir.path());
    let mut running = Running::start(&config, &[]);
    let event = |line: &Value, kind: &str, event_type: &str| {
        line["attributes"]["kind"] == kind && line["attributes"]["event_type"] == event_type
    };
    running.wait_until("both objects on stdout", |r| {
        r.data.iter().any(|l| event(l, "Secret", "ADDED"))
            && r.data.iter().any(|l| event(l, "ConfigMap", "ADDED"))
    });
    running.wait_until("the watches", |_| server.watch_count("Secret") >= 1);
    server.apply(secret(SECRET_PLAIN_2));
    running.wait_until("the Secret's change", |r| {
        r.data.iter().any(|l| event(l, "Secret", "MODIFIED"))
    });
    let (status, running) = running.terminate();
    assert!(status.success(), "{status:?}");

    let lines: Vec<&Value> = running
        .data
        .iter()
        .filter(|l| l["attributes"]["kind"].is_string())
        .collect();
    for line in &lines {
        assert_clean("a stdout line", line.to_string().as_bytes());
        assert_eq!(line["attributes"]["flags"], "redacted", "{line}");
    }
    let secret_added = lines.iter().find(|l| event(l, "Secret", "ADDED")).unwrap();
    let secret_modified = lines
        .iter()
        .find(|l| event(l, "Secret", "MODIFIED"))
        .unwrap();
    assert!(marker(secret_added).starts_with("<redacted hmac-sha256:"));
    assert_ne!(
        marker(secret_added),
        marker(secret_modified),
        "the change shows"
    );
    assert!(
        secret_added["object"]["stringData"]["token"]
            .as_str()
            .unwrap()
            .starts_with("<redacted")
    );
    assert!(
        secret_added["object"]["metadata"]
            .get("annotations")
            .is_none()
    );
    let config_map = lines
        .iter()
        .find(|l| event(l, "ConfigMap", "ADDED"))
        .unwrap();
    assert!(marker(config_map).starts_with("<redacted"));
    assert_eq!(
        config_map["object"]["data"]["mode"], "fast",
        "only the path"
    );

    // Spool segments, their checkpoint, the watch state, log checkpoints,
    // the lock and the key: none holds a value, each is private.
    let files = check_every_file(&spool);
    assert!(files >= 5, "{files} files under {}", spool.display());

    // A restart reads the same key: an unchanged Secret is not re-sent as
    // changed (its marker would differ with a new key).
    // The first run may have stopped before its ConfigMap watch opened
    // (its objects came with the LIST): count from what it left.
    let before = (
        server.watch_count("Secret"),
        server.watch_count("ConfigMap"),
    );
    let mut again = Running::start(&config, &[]);
    again.wait_until("the watches after the restart", |_| {
        server.watch_count("Secret") > before.0 && server.watch_count("ConfigMap") > before.1
    });
    server.apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "marker", "namespace": "prod"}}));
    again.wait_until("the marker", |r| {
        r.data
            .iter()
            .any(|l| l["attributes"]["object_name"] == "marker")
    });
    let (_, again) = again.terminate();
    let resent: Vec<&Value> = again
        .data
        .iter()
        .filter(|l| l["attributes"]["object_name"] == "db")
        .collect();
    assert!(resent.is_empty(), "re-sent after the restart: {resent:?}");
    check_every_file(&spool);
}

#[test]
fn secret_values_never_reach_sns() {
    let moto = Moto::shared();
    let proxy = StrictProxy::start(moto.url());
    let sdk = TestSdk::new(proxy.url());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let topic_arn = rt.block_on(async {
        sdk.sns()
            .create_topic()
            .name(unique_name("redaction"))
            .send()
            .await
            .unwrap()
            .topic_arn
            .unwrap()
    });
    let queue = rt.block_on(SqsSubscription::create(
        &sdk.sns(),
        &sdk.sqs(),
        &topic_arn,
        &unique_name("redaction-all"),
        SubscribeOptions {
            filter_policy: None,
            raw_message_delivery: true,
        },
    ));
    let dir = tempfile::tempdir().unwrap();
    let (_server, spool, config) = setup(dir.path());
    let env: Vec<(&str, String)> = sdk
        .env()
        .into_iter()
        .chain([("SNS_TOPIC_ARN", topic_arn.clone()), ("CONFIG", config)])
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let running = Running::start_with(&[], &env);
    let delivered = rt.block_on(queue.drain(2, DEADLINE));
    let (status, _) = running.terminate();
    assert!(status.success());
    let mut kinds = Vec::new();
    for message in &delivered {
        let body = sns_body(&message.message);
        assert_clean("an SNS body", &body);
        assert_clean(
            "SNS attributes",
            format!("{:?}", message.attributes).as_bytes(),
        );
        assert_eq!(message.attributes["flags"], "redacted");
        let object: Value = serde_json::from_slice(&body).unwrap();
        assert!(
            object["data"]["password"]
                .as_str()
                .unwrap()
                .starts_with("<redacted hmac-sha256:")
        );
        kinds.push(message.attributes["kind"].clone());
    }
    kinds.sort();
    assert_eq!(kinds, ["ConfigMap", "Secret"]);
    check_every_file(&spool);
}

//! `kubeherald check` (SPEC §6) against the test server (RBAC through its
//! SelfSubjectAccessReviews, answered by the same authorizer as its LIST and
//! WATCH) and moto (STS, SNS, CloudWatch Logs): it passes where kubeherald
//! would work, and names each failure with its fix — for RBAC, the rules
//! entry to add.

use std::process::Output;

mod support;

use kubeherald_testbed::aws::{Moto, TestSdk, unique_name};
use kubeherald_testbed::kube::{Access, ApiServer, KubeconfigBuilder};
use serde_json::Value;

struct Bed {
    server: ApiServer,
    sdk: TestSdk,
    topic: String,
    kubeconfig: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn bed() -> Bed {
    let moto = Moto::shared();
    let sdk = TestSdk::new(moto.url());
    let topic = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(sdk.sns().create_topic().name(unique_name("check")).send())
        .unwrap()
        .topic_arn
        .unwrap();
    let server = ApiServer::start();
    // The token may read namespace `apps` only, like a Role there.
    server.add_token("apps-reader", Access::namespaces(["apps"]));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    KubeconfigBuilder::new()
        .context("allowed", &server, Some("apps"), "apps-reader")
        .context("denied", &server, Some("billing"), "apps-reader")
        .write_to(&kubeconfig)
        .unwrap();
    Bed {
        server,
        sdk,
        topic,
        kubeconfig,
        _dir: dir,
    }
}

fn check(bed: &Bed, config: &str, output: &str) -> Output {
    let mut command = support::kubeherald_command();
    command
        .args(["check", "--output", output])
        .env("CONFIG", config);
    for (name, value) in bed.sdk.env() {
        command.env(name, value);
    }
    command.output().unwrap()
}

fn config(bed: &Bed, contexts: &str, topic: &str) -> String {
    format!(
        "kubeconfig: {}\ncontexts: {contexts}\nresources:\n  - {{apiVersion: v1, kind: ConfigMap}}\nsns: {{topic_arn: '{topic}'}}\nlogs: {{prefix: checked}}\n",
        bed.kubeconfig.display()
    )
}

fn finding<'a>(findings: &'a [Value], scope: &str, check: &str) -> &'a Value {
    findings
        .iter()
        .find(|f| f["scope"] == scope && f["check"] == check)
        .unwrap_or_else(|| panic!("no {scope} {check} in {findings:#?}"))
}

#[test]
fn check_passes_what_works_and_names_the_fix_of_what_does_not() {
    let bed = bed();
    let output = check(&bed, &config(&bed, "[allowed, denied]", &bed.topic), "json");
    assert_eq!(
        output.status.code(),
        Some(1),
        "a failure exits 1: {output:?}"
    );
    let findings: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    for check in [
        "reachable",
        "list,watch v1/ConfigMap",
        "get,list,watch pods",
        "get pods/log",
    ] {
        assert_eq!(finding(&findings, "allowed", check)["ok"], true, "{check}");
    }
    let denied = finding(&findings, "denied", "list,watch v1/ConfigMap");
    assert_eq!(denied["ok"], false);
    let fix = denied["fix"].as_str().unwrap();
    assert!(
        fix.contains("namespace billing")
            && fix.contains(r#"resources: ["configmaps"], verbs: ["list", "watch"]"#),
        "{fix}"
    );
    let logs = finding(&findings, "denied", "get pods/log");
    assert!(
        logs["fix"]
            .as_str()
            .unwrap()
            .contains(r#"resources: ["pods/log"]"#)
    );
    for check in ["identity", "SNS topic", "CloudWatch Logs"] {
        assert_eq!(
            finding(&findings, "aws", check)["ok"],
            true,
            "{check}: {findings:#?}"
        );
    }
    let reviews = bed
        .server
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/selfsubjectaccessreviews"))
        .count();
    assert!(reviews >= 2 * (2 + 3 + 1), "one review per verb: {reviews}");

    // Only what works, and a topic that does not exist: the table says so.
    let missing = format!("{}-missing", bed.topic);
    let output = check(&bed, &config(&bed, "[allowed]", &missing), "table");
    assert_eq!(output.status.code(), Some(1));
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.starts_with("CONTEXT"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains("SNS topic") && l.contains("FAIL")),
        "{table}"
    );
    assert!(table.contains("fix: create the topic"), "{table}");

    // Everything in order: exit 0.
    let output = check(&bed, &config(&bed, "[allowed]", &bed.topic), "table");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// A tenant route is checked as kubeherald will reach it: as its role. A
/// role STS refuses fails that route's check, naming the role to fix; the
/// default route still passes.
#[test]
fn check_reaches_a_tenant_route_as_its_role() {
    let moto = Moto::shared();
    let proxy = kubeherald_testbed::aws::StrictProxy::start(moto.url());
    let denied = "arn:aws:iam::310987654321:role/kubeherald-logs";
    proxy.deny_role(denied, true);
    let mut bed = bed();
    bed.sdk = TestSdk::new(proxy.url());
    let config = format!(
        "kubeconfig: {}
contexts: [allowed]
logs:
  prefix: checked
  routes:
    - {{name: granted, group: /tenants/granted, role_arn: 'arn:aws:iam::210987654321:role/kubeherald-logs', external_id: ok-ext}}
    - {{name: refused, group: /tenants/refused, role_arn: '{denied}', external_id: ok-ext}}
",
        bed.kubeconfig.display()
    );
    let output = check(&bed, &config, "json");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let findings: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(finding(&findings, "aws", "CloudWatch Logs")["ok"], true);
    assert_eq!(
        finding(&findings, "aws", "CloudWatch Logs (route granted)")["ok"],
        true,
        "{findings:#?}"
    );
    let refused = finding(&findings, "aws", "CloudWatch Logs (route refused)");
    assert_eq!(refused["ok"], false);
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("AssumeRole:AccessDenied"),
        "{refused}"
    );
    assert!(
        refused["fix"].as_str().unwrap().contains(denied),
        "{refused}"
    );
    assert!(
        !output.stdout.windows(6).any(|w| w == b"ok-ext"),
        "the ExternalId is not printed"
    );
}

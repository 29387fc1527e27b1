//! The files users copy: the Kubernetes manifests and the README's config
//! examples must stay true to what kubeherald accepts.

use kubeherald::config::{Config, ConfigSource, Environment};
use serde_json::Value;

fn documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{path}: {err}"));
    serde_saphyr::from_str_multiple(&text).unwrap_or_else(|err| panic!("{path}: {err}"))
}

fn load(yaml: &str, origin: &str) -> Config {
    let env = Environment {
        aws_region: Some("eu-west-1".into()),
        ..Environment::default()
    };
    Config::from_yaml(yaml, &ConfigSource::Inline, &env)
        .unwrap_or_else(|err| panic!("{origin} does not load: {err}\n{yaml}"))
}

#[test]
fn configmap_holds_a_valid_configuration_whose_spool_the_statefulset_mounts() {
    let configmap = &documents("kubernetes/configmap.yaml")[0];
    let config = load(
        configmap["data"]["config.yaml"].as_str().unwrap(),
        "kubernetes/configmap.yaml",
    );
    let spool_dir = config
        .spool
        .dir
        .expect("the example uses a spool directory");

    let deployment = &documents("kubernetes/statefulset.yaml")[0];
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert!(
        mounts.contains(&spool_dir.to_str().unwrap()),
        "spool {spool_dir:?} not mounted: {mounts:?}"
    );
    let config_path = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "CONFIG_PATH")
        .and_then(|e| e["value"].as_str())
        .unwrap();
    assert!(
        mounts.contains(&config_path),
        "CONFIG_PATH {config_path} not mounted"
    );
}

#[test]
fn statefulset_runs_unprivileged_with_a_read_only_root_and_its_spool_on_a_claim() {
    let deployment = &documents("kubernetes/statefulset.yaml")[0];
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"][0],
        "ALL"
    );
    assert!(container["resources"]["limits"]["memory"].is_string());
    // Two processes must never share a spool: one replica of a StatefulSet,
    // whose pod is replaced only after the old one has gone.
    assert_eq!(deployment["kind"], "StatefulSet");
    assert_eq!(deployment["spec"]["replicas"], 1);
    // The spool follows the pod: a claim template, not an emptyDir.
    let claims = deployment["spec"]["volumeClaimTemplates"]
        .as_array()
        .unwrap();
    assert!(claims.iter().any(|c| c["metadata"]["name"] == "spool"));
    let volumes = pod["volumes"].as_array().unwrap();
    assert!(
        volumes
            .iter()
            .all(|v| v["name"] != "spool" && v.get("emptyDir").is_none()),
        "{volumes:?}"
    );
    // Above the drain deadline: watchers (10 s) then the publisher (15 s).
    let drain = kubeherald::app::WATCHERS_GRACE + kubeherald::app::PUBLISHER_GRACE;
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() > drain.as_secs());
    let service = &documents("kubernetes/service.yaml")[0];
    assert_eq!(
        deployment["spec"]["serviceName"],
        service["metadata"]["name"]
    );
}

#[test]
fn rbac_grants_only_reads() {
    for document in documents("kubernetes/rbac.yaml") {
        if document["kind"] != "Role" {
            continue;
        }
        for rule in document["rules"].as_array().unwrap() {
            for verb in rule["verbs"].as_array().unwrap() {
                let verb = verb.as_str().unwrap();
                assert!(
                    ["get", "list", "watch"].contains(&verb),
                    "rbac.yaml grants {verb}"
                );
            }
        }
    }
}

/// Every YAML block of the README that is a kubeherald configuration loads.
#[test]
fn readme_configuration_examples_load() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let mut examples = 0;
    for block in readme.split("```yaml\n").skip(1) {
        let yaml = block.split("```").next().unwrap();
        load(yaml, "a README example");
        examples += 1;
    }
    assert!(
        examples >= 3,
        "the README should show the seed formats and the unified one"
    );
}

#[test]
fn probes_and_the_metrics_service_reach_the_http_endpoint() {
    let deployment = &documents("kubernetes/statefulset.yaml")[0];
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let port = &container["ports"][0];
    assert_eq!(port["name"], "http");
    let default_port: u16 = kubeherald::config::DEFAULT_HTTP_LISTEN
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        port["containerPort"].as_u64(),
        Some(u64::from(default_port))
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], "http");
    }
    let service = &documents("kubernetes/service.yaml")[0];
    let annotations = &service["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(default_port.to_string().as_str())
    );
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
}

/// `kubernetes-validate` (installed into `.venv` by scripts/test.sh) beside
/// the interpreter the tests use.
fn kubernetes_validate() -> std::path::PathBuf {
    let python = std::env::var_os("KUBEHERALD_MOTO_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python")
        });
    python.with_file_name("kubernetes-validate")
}

fn validate(paths: &[std::path::PathBuf]) -> std::process::Output {
    let tool = kubernetes_validate();
    std::process::Command::new(&tool)
        // The Kubernetes version of the k8s-openapi feature kubeherald is built with.
        .args(["--kubernetes-version", "1.33.0", "--strict"])
        .args(paths)
        .output()
        .unwrap_or_else(|e| panic!("{} (install with scripts/test.sh): {e}", tool.display()))
}

#[test]
fn every_manifest_is_valid_against_the_kubernetes_schemas() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kubernetes");
    let mut manifests: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    manifests.sort();
    assert!(manifests.len() >= 5, "{manifests:?}");
    let output = validate(&manifests);
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // And the check can fail: a misspelt field of a StatefulSet is refused.
    let bad_dir = tempfile::tempdir().unwrap();
    let bad = bad_dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(dir.join("statefulset.yaml"))
        .unwrap()
        .replacen("  serviceName:", "  serviceNam:", 1);
    std::fs::write(&bad, text).unwrap();
    assert!(
        !validate(&[bad]).status.success(),
        "a misspelt field passes"
    );
}

/// Every `kubeherald_*` metric name in a text, `_total` of counters dropped.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("kubeherald_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        names.insert(name.strip_suffix("_total").unwrap_or(name).to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_dashboard_and_the_alerts_use_only_metrics_kubeherald_exposes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard_text =
        std::fs::read_to_string(root.join("deploy/grafana/kubeherald.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&dashboard_text).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    assert!(
        panels
            .iter()
            .all(|p| !p["targets"].as_array().unwrap().is_empty())
    );
    let alerts_text = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yaml")).unwrap();
    let alerts: Value = serde_saphyr::from_str(&alerts_text).unwrap();
    let rules = alerts["groups"][0]["rules"].as_array().unwrap();
    let names: Vec<&str> = rules.iter().map(|r| r["alert"].as_str().unwrap()).collect();
    for wanted in [
        "KubeheraldSpoolFilling",
        "KubeheraldUnpublishedTooLong",
        "KubeheraldContextFailing",
        "KubeheraldPublishErrors",
        "KubeheraldLogLinesLost",
    ] {
        assert!(names.contains(&wanted), "{wanted} in {names:?}");
    }
    // The names the registry exposes (a family with no series yet writes
    // no line, so they are read where they are registered).
    let source = std::fs::read_to_string(root.join("src/metrics.rs")).unwrap();
    let exposed: std::collections::BTreeSet<String> = source
        .split("registry.register(")
        .skip(1)
        .filter_map(|call| call.split('"').nth(1))
        .map(|name| format!("kubeherald_{name}"))
        .collect();
    assert!(exposed.len() >= 30, "{exposed:?}");
    let used: std::collections::BTreeSet<String> = metric_names(&dashboard_text)
        .union(&metric_names(&alerts_text))
        .cloned()
        .collect();
    assert!(used.len() >= 15, "{used:?}");
    for name in used {
        assert!(
            exposed.contains(&name),
            "{name} is used by the dashboard or the alerts but not exposed"
        );
    }
}

#[test]
fn the_readme_metrics_table_names_every_metric() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let source = std::fs::read_to_string(root.join("src/metrics.rs")).unwrap();
    let registered: Vec<&str> = source
        .split("registry.register(")
        .skip(1)
        .filter_map(|call| call.split('"').nth(1))
        .collect();
    assert!(registered.len() >= 30);
    for name in registered {
        assert!(
            readme.contains(&format!("| `kubeherald_{name}`"))
                || readme.contains(&format!("| `kubeherald_{name}_total`")),
            "kubeherald_{name} is not in the README's metrics table"
        );
    }
}

/// `cfn-lint` (installed into `.venv` by scripts/test.sh) beside the
/// interpreter the tests use.
fn cfn_lint(paths: &[std::path::PathBuf]) -> std::process::Output {
    let tool = kubernetes_validate().with_file_name("cfn-lint");
    std::process::Command::new(&tool)
        .args(paths)
        .output()
        .unwrap_or_else(|e| panic!("{} (install with scripts/test.sh): {e}", tool.display()))
}

#[test]
fn both_cloudformation_templates_pass_cfn_lint() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let templates = [
        root.join("template.yaml"),
        root.join("template-tenant.yaml"),
    ];
    let output = cfn_lint(&templates);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && report.trim().is_empty(),
        "{report}"
    );

    // The tenant role trusts kubeherald only with the ExternalId, and
    // allows nothing beyond its own log group.
    let tenant = std::fs::read_to_string(&templates[1]).unwrap();
    assert!(tenant.contains("sts:ExternalId: !Ref ExternalId"));
    assert!(!tenant.contains("Resource: \"*\""));
    let main = std::fs::read_to_string(&templates[0]).unwrap();
    assert!(main.contains("Resource: !Ref SnsTopicArns"));
    assert!(main.contains("Action: sts:AssumeRole"));

    // And the lint can fail: an unknown property is reported.
    let bad_dir = tempfile::tempdir().unwrap();
    let bad = bad_dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        tenant.replacen("MaxSessionDuration:", "MaxSessionDurationn:", 1),
    )
    .unwrap();
    let output = cfn_lint(&[bad]);
    assert!(
        !output.status.success(),
        "a misspelt property passed cfn-lint"
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("MaxSessionDurationn"));
}

//! `examples/` and the configuration schema, as a user meets them: every
//! example configuration loads (and `kubeherald config validate` says so),
//! every example kubeconfig resolves to its contexts, the committed
//! `kubeherald.schema.json` is what `kubeherald config schema` prints, and
//! that schema accepts every example and refuses a misspelt field.

use std::path::{Path, PathBuf};
use std::process::Command;

mod support;

use kubeherald::config::{ClusterSelection, Config, Environment, KubeconfigLocation, LogSink};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// (path, is a kubeherald configuration) for every example.
fn examples() -> Vec<(PathBuf, bool)> {
    let mut found: Vec<(PathBuf, bool)> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            let is_config = !p
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("kubeconfig-");
            (p, is_config)
        })
        .collect();
    found.sort();
    assert!(found.len() >= 10, "the examples are there: {found:?}");
    found
}

fn with_region() -> Environment {
    Environment {
        aws_region: Some("eu-west-1".into()),
        ..Environment::default()
    }
}

#[test]
fn every_example_configuration_loads() {
    for (path, is_config) in examples() {
        if !is_config {
            continue;
        }
        let config = Config::load(Some(&path), &with_region())
            .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        match name.as_str() {
            "event-forwarder.yaml" => assert_eq!(config.resources.len(), 3),
            "log-forwarder.yaml" => assert!(matches!(
                config.clusters,
                ClusterSelection::SingleCluster { ref namespaces, .. } if namespaces.len() == 2
            )),
            "fifo-topic.yaml" => assert!(config.sns.unwrap().topic_arn.is_fifo()),
            "stdout.yaml" => assert_eq!(config.logs.unwrap().sink, LogSink::Stdout),
            "small-cluster.yaml" => assert_eq!(config.spool.max_bytes, 256 << 20),
            "tenants.yaml" => {
                let sns = config.sns.unwrap();
                assert!(sns.routes[0].access.role_arn.is_some());
                let logs = config.logs.unwrap();
                assert_eq!(logs.routes[0].name, "payments");
                assert_eq!(
                    logs.routes[0].access.region.as_deref(),
                    Some("eu-central-1")
                );
            }
            "eks.yaml" | "gke.yaml" | "unified.yaml" => assert!(matches!(
                config.clusters,
                ClusterSelection::Contexts {
                    kubeconfig: KubeconfigLocation::Explicit { .. },
                    ..
                }
            )),
            other => panic!("{other}: an example without a check here"),
        }
    }
}

#[test]
fn example_kubeconfigs_resolve_to_their_contexts() {
    for (path, is_config) in examples() {
        if is_config {
            continue;
        }
        let targets = support::resolve_kubeconfig(&path);
        let names: Vec<&str> = targets.iter().map(|t| t.context.as_str()).collect();
        let expected: &[&str] = if path.ends_with("kubeconfig-eks.yaml") {
            &["prod-eu", "prod-us"]
        } else {
            &["gke-analytics"]
        };
        assert_eq!(names, expected, "{}", path.display());
    }
}

fn kubeherald(args: &[&str], config: Option<&Path>) -> std::process::Output {
    let mut command = support::kubeherald_command();
    command.args(args).env("AWS_REGION", "eu-west-1");
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command.output().unwrap()
}

#[test]
fn config_validate_accepts_the_examples_and_names_the_field_of_a_mistake() {
    for (path, is_config) in examples() {
        if !is_config {
            continue;
        }
        let output = kubeherald(&["config", "validate"], Some(&path));
        assert!(output.status.success(), "{}: {output:?}", path.display());
        assert!(String::from_utf8_lossy(&output.stdout).starts_with("configuration valid"));
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "resources:\n  - {apiVersion: v1, kind: Pod}\nlogs: {prefix: p, sink: kafka}\n",
    )
    .unwrap();
    let output = kubeherald(&["config", "validate"], Some(&bad));
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("logs.sink"),
        "{output:?}"
    );
}

#[test]
fn the_committed_schema_is_the_one_kubeherald_prints() {
    let output = kubeherald(&["config", "schema"], None);
    assert!(output.status.success());
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("kubeherald.schema.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        printed, committed,
        "kubeherald.schema.json is stale: run `cargo run -- config schema > kubeherald.schema.json`"
    );
}

/// Validates `document` (YAML) against the schema with Python's
/// `jsonschema` (installed with moto by scripts/test.sh); the error text
/// when it does not validate.
fn schema_check(document: &str) -> Result<(), String> {
    let value: serde_json::Value = serde_saphyr::from_str(document).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let instance = dir.path().join("instance.json");
    std::fs::write(&instance, serde_json::to_vec(&value).unwrap()).unwrap();
    let python = std::env::var_os("KUBEHERALD_MOTO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"));
    let output = Command::new(&python)
        .args([
            "-c",
            "import json, sys, jsonschema\n\
             schema = json.load(open(sys.argv[1]))\n\
             jsonschema.Draft202012Validator.check_schema(schema)\n\
             jsonschema.validate(json.load(open(sys.argv[2])), schema)",
        ])
        .arg(root().join("kubeherald.schema.json"))
        .arg(&instance)
        .output()
        .unwrap_or_else(|e| panic!("{} (install with scripts/test.sh): {e}", python.display()));
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[test]
fn the_schema_accepts_every_example_and_refuses_a_misspelt_field() {
    for (path, is_config) in examples() {
        if !is_config {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        schema_check(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    }
    let misspelt = "resources:\n  - {apiVersion: v1, kind: Pod}\nspool: {dirr: /tmp}\n";
    let err = schema_check(misspelt).expect_err("an unknown field is refused");
    assert!(err.contains("dirr"), "{err}");
    let bad_size = "spool: {max_bytes: lots}\n";
    assert!(
        schema_check(bad_size).is_err(),
        "a size that is not one is refused"
    );
}

//! The binary as a user meets it: the command line, configuration errors at
//! start-up, and exit codes.

use std::process::Output;

mod support;

fn kubeherald(args: &[&str], env: &[(&str, &str)]) -> Output {
    // Start from a known environment: no inherited kubeconfig or AWS settings.
    let mut command = support::kubeherald_command();
    command.args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("the kubeherald binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn version_prints_the_crate_version() {
    let output = kubeherald(&["version"], &[]);
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("kubeherald {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_names_the_commands_and_the_environment() {
    for args in [
        &["--help"][..],
        &["run", "--help"][..],
        &["version", "--help"][..],
    ] {
        let output = kubeherald(args, &[]);
        assert!(output.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains("--config"), "{args:?}: {text}");
    }
    let text = String::from_utf8_lossy(&kubeherald(&["--help"], &[]).stdout).into_owned();
    for word in [
        "run",
        "version",
        "CONFIG_PATH",
        "SNS_TOPIC_ARN",
        "KUBECONFIG",
        "SPOOL_DIR",
    ] {
        assert!(text.contains(word), "--help lacks {word}: {text}");
    }
}

#[test]
fn unknown_command_line_argument_exits_2() {
    let output = kubeherald(&["--frobnicate"], &[]);
    assert_eq!(output.status.code(), Some(2));
}

/// One configuration problem per case: each exits 2 with one line on stderr
/// that names the field.
#[test]
fn invalid_configuration_fails_at_start_up_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: only, context: {cluster: c, user: u}}]\n",
    )
    .unwrap();
    let kubeconfig = kubeconfig.display().to_string();
    let malformed = dir.path().join("malformed");
    std::fs::write(&malformed, "clusters: {{{").unwrap();
    let malformed = malformed.display().to_string();

    let cases: Vec<(String, &str)> = vec![
        ("resourcez: []".into(), "resourcez"),
        (
            "resources: [{kind: Deployment}]".into(),
            "resources[0].apiVersion",
        ),
        (
            "logs: {prefix: p, retention_days: 31}".into(),
            "logs.retention_days",
        ),
        (
            "sns: {topic_arn: 'arn:aws:sns:us-east-1:42:t'}".into(),
            "sns.topic_arn",
        ),
        (
            format!("kubeconfig: {kubeconfig}\ncontexts: [only, missing]"),
            "contexts[1]",
        ),
        ("kubeconfig: /nonexistent/kubeconfig".into(), "kubeconfig"),
        (format!("kubeconfig: {malformed}"), "kubeconfig"),
    ];
    for (yaml, field) in cases {
        let output = kubeherald(&["run"], &[("CONFIG", &yaml)]);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{yaml}: {err}");
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("invalid configuration"))
            .collect();
        assert_eq!(lines.len(), 1, "{yaml}: one line expected: {err}");
        assert!(
            lines[0].contains(field),
            "{yaml}: should name {field}: {err}"
        );
    }
}

#[test]
fn missing_configuration_and_unreadable_file_are_named() {
    let output = kubeherald(&["run"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("CONFIG_PATH"),
        "{}",
        stderr(&output)
    );

    let output = kubeherald(&["run", "--config", "/nonexistent/kubeherald.yaml"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("/nonexistent/kubeherald.yaml"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn environment_variable_errors_name_the_variable() {
    let output = kubeherald(
        &["run"],
        &[("CONFIG", "resources: []"), ("SNS_TOPIC_ARN", "topic")],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("SNS_TOPIC_ARN"),
        "{}",
        stderr(&output)
    );

    let output = kubeherald(
        &["run"],
        &[
            ("CONFIG", "resources: []"),
            ("KUBECONFIG", "/nonexistent/kc"),
        ],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("KUBECONFIG"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn dead_letter_replay_needs_a_spool_directory_and_queues_the_letters() {
    let config = "resources:\n  - {apiVersion: v1, kind: ConfigMap}\n";
    let output = kubeherald(&["dead-letter", "replay"], &[("CONFIG", config)]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("spool.dir or SPOOL_DIR"),
        "{}",
        stderr(&output)
    );

    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().display().to_string();
    let output = kubeherald(
        &["dead-letter", "replay"],
        &[("CONFIG", config), ("SPOOL_DIR", &spool)],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("no dead letters"));

    let letters = dir.path().join("dead-letter");
    std::fs::create_dir_all(&letters).unwrap();
    std::fs::write(
        letters.join("events.jsonl"),
        "{\"record\":{}}\n{\"record\":{}}\n",
    )
    .unwrap();
    let output = kubeherald(
        &["dead-letter", "replay"],
        &[("CONFIG", config), ("SPOOL_DIR", &spool)],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("2 dead letters queued"),
        "{output:?}"
    );
    let queued = std::fs::read_dir(letters.join("replay")).unwrap().count();
    assert_eq!(queued, 1);
}

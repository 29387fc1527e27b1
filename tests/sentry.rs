//! Sentry (SPEC §6): with `SENTRY_DSN` set kubeherald starts (it used to
//! panic at start-up: the Sentry transport was built before a rustls crypto
//! provider was installed), and its errors reach Sentry — here a loopback
//! fake that keeps the envelopes.

mod support;

use std::time::Duration;

use support::{Running, message};

use kubeherald_testbed::kube::{ADMIN_TOKEN, ApiServer, KubeconfigBuilder};
use kubeherald_testbed::sentry::FakeSentry;

#[test]
fn with_a_sentry_dsn_kubeherald_starts_and_reports_its_errors() {
    let sentry = FakeSentry::start();
    let server = ApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    KubeconfigBuilder::new()
        .context("prod", &server, Some("prod"), ADMIN_TOKEN)
        .write_to(&kubeconfig)
        .unwrap();
    // A spool "directory" that is a file: kubeherald cannot start, and says
    // so as an error, which Sentry must receive.
    let not_a_dir = dir.path().join("spool");
    std::fs::write(&not_a_dir, "a file").unwrap();
    let config = format!(
        "kubeconfig: {}\nresources:\n  - {{apiVersion: v1, kind: ConfigMap}}\nspool: {{dir: {}}}\n",
        kubeconfig.display(),
        not_a_dir.display()
    );
    let output = support::kubeherald_command()
        .args(["run", "--log-format", "json"])
        .env("CONFIG", &config)
        .env("SENTRY_DSN", sentry.dsn())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        output.status.code(),
        Some(1),
        "a start-up failure, not a panic: {stderr}"
    );
    assert!(stderr.contains("kubeherald stopped"), "{stderr}");
    let envelope = sentry
        .wait_for("kubeherald stopped", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no envelope reached Sentry: {:?}", sentry.bodies()));
    assert!(
        envelope.contains("kubeherald@"),
        "the release is set: {envelope}"
    );
}

/// A (context, kind) failing for a reason retrying does not heal (here a
/// token the API server does not know: 401) is reported to Sentry once, with
/// the context, cluster and kind as tags, however often it is retried.
#[test]
fn a_lasting_failure_is_reported_once_with_its_tags() {
    let sentry = FakeSentry::start();
    let server = ApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    KubeconfigBuilder::new()
        .context("denied", &server, Some("prod"), "a-token-nobody-knows")
        .write_to(&kubeconfig)
        .unwrap();
    let config = format!(
        "kubeconfig: {}\nresources:\n  - {{apiVersion: v1, kind: ConfigMap}}\n",
        kubeconfig.display()
    );
    let dsn = sentry.dsn();
    let mut running = Running::start(&config, &[("SENTRY_DSN", dsn.as_str())]);
    running.wait_until("three retries of the denied watch", |r| {
        r.logs
            .iter()
            .filter(|l| {
                message(l) == "watch request failed; retrying" && l["reason"] == "unauthorized"
            })
            .count()
            >= 3
    });
    let (status, running) = running.terminate();
    assert_eq!(status.code(), Some(0), "{:#?}", running.logs);
    let reports: Vec<String> = sentry
        .bodies()
        .into_iter()
        .filter(|b| b.contains("reported once"))
        .collect();
    assert_eq!(reports.len(), 1, "{reports:#?}");
    let report = &reports[0];
    for tag in [
        r#""context":"denied""#.to_owned(),
        r#""kind":"v1/ConfigMap""#.to_owned(),
        format!(r#""cluster":"{}""#, server.url()),
    ] {
        assert!(report.contains(&tag), "{tag} in {report}");
    }
    assert!(
        !report.contains("a-token-nobody-knows"),
        "no credential in a report"
    );
}

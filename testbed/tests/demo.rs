//! `scripts/demo.sh`, the README's first command, run as a user runs it
//! (with the binaries this test build already made, and a short duration):
//! it exits 0 and its summary shows events from every simulated cluster and
//! log lines from every container; with `--aws`, what each SQS queue
//! received and the CloudWatch groups and streams.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The binaries of this workspace's test build.
fn binaries() -> (PathBuf, PathBuf) {
    let sim = PathBuf::from(env!("CARGO_BIN_EXE_kubeherald-sim"));
    let kubeherald = sim.with_file_name("kubeherald");
    assert!(
        kubeherald.exists(),
        "{} is built by `cargo test --workspace` (scripts/test.sh)",
        kubeherald.display()
    );
    (kubeherald, sim)
}

fn demo(args: &[&str]) -> String {
    let (kubeherald, sim) = binaries();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(root.join("scripts/demo.sh"))
        .args(args)
        .env("KUBEHERALD_BIN", &kubeherald)
        .env("KUBEHERALD_SIM_BIN", &sim)
        .output()
        .expect("scripts/demo.sh runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "demo.sh {args:?} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The count after `label` on the summary line starting with it.
fn count(summary: &str, label: &str) -> u64 {
    summary
        .lines()
        .find_map(|line| line.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in the summary:\n{summary}"))
}

const CONTAINERS: [&str; 5] = [
    "demo/web-0/app/0",
    "demo/web-0/proxy/0",
    "demo/web-1/app/0",
    "demo/web-1/proxy/0",
    "demo/worker-0/worker/0",
];

#[test]
fn the_demo_shows_events_of_every_cluster_and_lines_of_every_container() {
    let out = demo(&["--seconds", "8"]);
    let summary = out
        .split("== summary ==")
        .nth(1)
        .unwrap_or_else(|| panic!("no summary:\n{out}"));
    assert!(count(summary, "events:") >= 8, "{summary}");
    for cluster in ["sim-1", "sim-2"] {
        let line = summary
            .lines()
            .find(|l| l.trim().starts_with(&format!("{cluster}:")))
            .unwrap_or_else(|| panic!("no events of {cluster}:\n{summary}"));
        assert!(line.contains("ADDED"), "{line}");
        for container in CONTAINERS {
            assert!(
                count(summary, &format!("{cluster}/{container}:")) > 0,
                "{cluster}/{container}"
            );
        }
    }
    assert!(
        out.contains("event  sim-1    ADDED    Deployment demo/web"),
        "{out}"
    );
}

#[test]
fn the_aws_demo_fills_the_queues_and_the_log_groups() {
    let out = demo(&["--aws", "--seconds", "8"]);
    let aws = out
        .split("== AWS (moto) ==")
        .nth(1)
        .unwrap_or_else(|| panic!("no AWS summary:\n{out}"));
    assert!(count(aws, "queue configmaps") >= 6, "{aws}");
    assert!(count(aws, "queue deployments") >= 2, "{aws}");
    for cluster in ["sim-1", "sim-2"] {
        let group = format!("log group /demo-{cluster} (retention 7 days):");
        assert!(aws.contains(&group), "{group}\n{aws}");
        for container in CONTAINERS {
            assert!(
                aws.contains(&format!("  {container}\n")),
                "{container}\n{aws}"
            );
        }
    }
}

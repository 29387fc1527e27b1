//! The whole path on an initial LIST: `kubeherald run` (release binary)
//! watches one kind whose namespace holds N objects, on the test API
//! server, and publishes them through an on-disk spool to SNS on moto (a
//! correctness peer: a few hundred requests/s, so this measures moto as
//! much as kubeherald; `benches/publish.rs` measures the publisher against a
//! fast endpoint). Prints events/s from start to the last message in the
//! subscribed queue, and kubeherald's peak RSS (VmHWM).
//!
//! `cargo bench -p kubeherald --bench initial_list` (INITIAL_LIST_OBJECTS=N,
//! default 300; INITIAL_LIST_SINK=stdout counts stdout lines instead of
//! publishing, default N 10,000, which takes moto out of the measurement:
//! moto's publish slows down as the undrained queue grows, so with SNS keep
//! N in the hundreds).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kubeherald_testbed::aws::{Moto, StrictProxy, TestSdk, unique_name};
use kubeherald_testbed::kube::{Access, ApiServer, KubeconfigBuilder};
use serde_json::json;

fn main() {
    let to_stdout = std::env::var("INITIAL_LIST_SINK").as_deref() == Ok("stdout");
    // moto's publish slows down as the undrained queue grows: a few hundred
    // objects measure the path; the stdout sink measures 10,000 and more.
    let default_objects = if to_stdout { 10_000 } else { 300 };
    let objects: usize = std::env::var("INITIAL_LIST_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_objects);
    let moto = Moto::shared();
    let proxy = StrictProxy::start(moto.url());
    let sdk = TestSdk::new(proxy.url());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (topic_arn, queue_url) = rt.block_on(async {
        let topic = sdk
            .sns()
            .create_topic()
            .name(unique_name("bench"))
            .send()
            .await
            .unwrap()
            .topic_arn
            .unwrap();
        let queue = sdk
            .sqs()
            .create_queue()
            .queue_name(unique_name("bench"))
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        let arn = sdk
            .sqs()
            .get_queue_attributes()
            .queue_url(&queue)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
            .clone();
        sdk.sns()
            .subscribe()
            .topic_arn(&topic)
            .protocol("sqs")
            .endpoint(arn)
            .attributes("RawMessageDelivery", "true")
            .send()
            .await
            .unwrap();
        (topic, queue)
    });

    let server = ApiServer::start();
    server.add_token("t", Access::All);
    for i in 0..objects {
        server.apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("cm-{i:06}"), "namespace": "bench", "labels": {"app": "bench", "index": i.to_string()}},
            "data": {"payload": "x".repeat(512)}}));
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    KubeconfigBuilder::new()
        .context("bench", &server, Some("bench"), "t")
        .write_to(&kubeconfig)
        .unwrap();
    let config = format!(
        "kubeconfig: {}\nresources: [{{apiVersion: v1, kind: ConfigMap}}]\nspool: {{dir: {}}}\n",
        kubeconfig.display(),
        dir.path().join("spool").display()
    );

    let started = Instant::now();
    let mut command = Command::new(env!("CARGO_BIN_EXE_kubeherald"));
    command
        .arg("run")
        .env("CONFIG", config)
        .env("SNS_TOPIC_ARN", &topic_arn)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    for (name, value) in sdk.env() {
        command.env(name, value);
    }
    if to_stdout {
        command.env_remove("SNS_TOPIC_ARN").stdout(Stdio::piped());
    }
    let mut child = command.spawn().unwrap();
    let pid = child.id();
    let mut peak_rss_kib = 0;
    if to_stdout {
        use std::io::BufRead;
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let sampler = std::thread::spawn(move || {
            let mut peak = 0;
            while std::fs::metadata(format!("/proc/{pid}")).is_ok() {
                peak = peak.max(vm_hwm_kib(pid));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        let lines = stdout.lines().take(objects).count();
        let elapsed = started.elapsed();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let _ = child.wait();
        let peak = sampler.join().unwrap();
        assert_eq!(lines, objects);
        println!(
            "initial LIST of {objects} objects -> stdout: {:.1} s, {:.0} events/s, kubeherald peak RSS {:.1} MiB",
            elapsed.as_secs_f64(),
            objects as f64 / elapsed.as_secs_f64(),
            peak as f64 / 1024.0
        );
        return;
    }
    loop {
        peak_rss_kib = peak_rss_kib.max(vm_hwm_kib(pid));
        let queued: usize = rt.block_on(async {
            let attributes = sdk
                .sqs()
                .get_queue_attributes()
                .queue_url(&queue_url)
                .attribute_names(
                    aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages,
                )
                .send()
                .await
                .unwrap()
                .attributes
                .unwrap_or_default();
            attributes
                .get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        });
        if queued >= objects {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "only {queued} of {objects} published"
        );
        std::thread::sleep(Duration::from_millis(250)); // sampling, not synchronising
    }
    let elapsed = started.elapsed();
    peak_rss_kib = peak_rss_kib.max(vm_hwm_kib(pid));
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    proxy.assert_nothing_refused();
    println!(
        "initial LIST of {objects} objects -> SNS (moto): {:.1} s, {:.0} events/s, kubeherald peak RSS {:.1} MiB, {} PublishBatch requests",
        elapsed.as_secs_f64(),
        objects as f64 / elapsed.as_secs_f64(),
        peak_rss_kib as f64 / 1024.0,
        proxy.count("PublishBatch")
    );
}

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

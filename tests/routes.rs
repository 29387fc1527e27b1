//! `sns.routes` through the whole binary, against moto (SPEC §3,
//! "Selecting and routing"): a FIFO and a standard route topic beside the
//! default topic, each with a queue subscribed; each queue gets exactly the
//! events its topic should, each once.

mod support;

use std::collections::BTreeMap;

use kubeherald_testbed::aws::{
    Moto, SqsSubscription, StrictProxy, SubscribeOptions, TestSdk, unique_name,
};
use kubeherald_testbed::kube::{ADMIN_TOKEN, ApiServer, KubeconfigBuilder};
use serde_json::json;
use support::{DEADLINE, Running};

fn summary(delivered: &[kubeherald_testbed::aws::Delivered]) -> Vec<String> {
    let mut out: Vec<String> = delivered
        .iter()
        .map(|m| {
            format!(
                "{} {} {}",
                m.attributes["event_type"], m.attributes["kind"], m.attributes["object_name"]
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn each_event_reaches_every_matching_route_once_and_the_default_when_none_or_also_default() {
    let moto = Moto::shared();
    let proxy = StrictProxy::start(moto.url());
    let sdk = TestSdk::new(proxy.url());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let create = |name: String, fifo: bool| {
        rt.block_on(async {
            let mut request = sdk.sns().create_topic().name(name);
            if fifo {
                request = request.attributes("FifoTopic", "true");
            }
            request.send().await.unwrap().topic_arn.unwrap()
        })
    };
    let default_topic = create(unique_name("routes-default"), false);
    let apps_topic = create(format!("{}.fifo", unique_name("routes-apps")), true);
    let deletions_topic = create(unique_name("routes-deletions"), false);
    let subscribe = |topic: &str, queue: &str| {
        rt.block_on(SqsSubscription::create(
            &sdk.sns(),
            &sdk.sqs(),
            topic,
            &unique_name(queue),
            SubscribeOptions {
                filter_policy: None,
                raw_message_delivery: true,
            },
        ))
    };
    let default_queue = subscribe(&default_topic, "routes-default-q");
    let apps_queue = subscribe(&apps_topic, "routes-apps-q");
    let deletions_queue = subscribe(&deletions_topic, "routes-deletions-q");

    let server = ApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    KubeconfigBuilder::new()
        .context("prod-eu", &server, Some("prod"), ADMIN_TOKEN)
        .write_to(&kubeconfig)
        .unwrap();
    let config = format!(
        "kubeconfig: {}
resources:
  - {{apiVersion: v1, kind: ConfigMap}}
  - {{apiVersion: apps/v1, kind: Deployment}}
sns:
  topic_arn: {default_topic}
  routes:
    - name: apps
      match: {{kind: [Deploy*], context: [prod-*]}}
      topic_arn: {apps_topic}
    - name: deletions
      match: {{event_type: [DELETED]}}
      topic_arn: {deletions_topic}
      also_default: true
spool: {{dir: {}}}
",
        kubeconfig.display(),
        dir.path().join("spool").display()
    );
    let env: Vec<(&str, String)> = sdk.env().into_iter().chain([("CONFIG", config)]).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut running = Running::start_with(&[], &env);
    running.wait_until("the watches", |_| {
        server.watch_count("ConfigMap") >= 1 && server.watch_count("Deployment") >= 1
    });
    let config_map = |name: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "prod"}});
    server.apply(config_map("cm-1"));
    server.apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "d-1", "namespace": "prod"}, "spec": {"replicas": 1}}));
    server.delete("v1", "ConfigMap", "prod", "cm-1");
    server.delete("apps/v1", "Deployment", "prod", "d-1");
    server.apply(config_map("marker"));
    server.delete("v1", "ConfigMap", "prod", "marker");

    // The last event (DELETED marker) is on the default queue: everything
    // before it was published; the other queues' final receives then see
    // any copy that should not be there.
    let default = rt.block_on(default_queue.drain(5, DEADLINE));
    let deletions = rt.block_on(deletions_queue.drain(3, DEADLINE));
    let apps = rt.block_on(apps_queue.drain(2, DEADLINE));
    let (status, _) = running.terminate();
    assert!(status.success(), "{status:?}");

    assert_eq!(
        summary(&default),
        [
            "ADDED ConfigMap cm-1",
            "ADDED ConfigMap marker",
            "DELETED ConfigMap cm-1",
            "DELETED ConfigMap marker",
            "DELETED Deployment d-1",
        ],
        "no route matches the ConfigMaps' ADDED; deletions say also_default"
    );
    assert_eq!(
        summary(&deletions),
        [
            "DELETED ConfigMap cm-1",
            "DELETED ConfigMap marker",
            "DELETED Deployment d-1",
        ]
    );
    assert_eq!(
        summary(&apps),
        ["ADDED Deployment d-1", "DELETED Deployment d-1"],
        "Deployments only, each once"
    );
    // Every copy is the same event: same attributes whatever the topic.
    let attributes = |m: &kubeherald_testbed::aws::Delivered| -> BTreeMap<String, String> {
        m.attributes.clone()
    };
    let deleted_d1 = |list: &[kubeherald_testbed::aws::Delivered]| {
        list.iter()
            .find(|m| {
                m.attributes["object_name"] == "d-1" && m.attributes["event_type"] == "DELETED"
            })
            .map(attributes)
            .unwrap()
    };
    assert_eq!(deleted_d1(&apps), deleted_d1(&deletions));
    assert_eq!(deleted_d1(&default), deleted_d1(&deletions));
}

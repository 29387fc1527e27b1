//! `sns.routes` through the whole binary, against moto (SPEC §3,
//! "Selecting and routing"): a FIFO and a standard route topic beside the
//! default topic, each with a queue subscribed; each queue gets exactly the
//! events its topic should, each once.

mod support;

use std::collections::BTreeMap;

use kubeherald_testbed::aws::{
    Moto, SqsSubscription, StrictProxy, SubscribeOptions, TestSdk, stored_messages, unique_name,
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

/// The tenant's account: moto answers requests signed with credentials of
/// a role assumed there as that account.
const TENANT_ROLE: &str = "arn:aws:iam::210987654321:role/kubeherald-writer";
/// A tenant whose role's trust policy does not name kubeherald: the strict
/// proxy answers its AssumeRole with AccessDenied.
const DENIED_ROLE: &str = "arn:aws:iam::310987654321:role/kubeherald-writer";

/// An `sns.routes` topic in another account, published to as a role
/// assumed there (with its ExternalId): the tenant's queue gets the route's
/// events, the default topic the rest.
#[test]
fn a_route_with_its_own_role_publishes_into_the_tenants_topic() {
    let moto = Moto::shared();
    let proxy = StrictProxy::start(moto.url());
    let sdk = TestSdk::new(proxy.url());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tenant = rt.block_on(sdk.assumed(TENANT_ROLE, Some("tenant-ext")));
    let (tenant_sns, tenant_sqs) = (
        aws_sdk_sns::Client::new(&tenant),
        aws_sdk_sqs::Client::new(&tenant),
    );
    let default_topic = rt.block_on(async {
        let answer = sdk.sns().create_topic().name(unique_name("own")).send();
        answer.await.unwrap().topic_arn.unwrap()
    });
    let tenant_topic = rt.block_on(async {
        let answer = tenant_sns.create_topic().name(unique_name("tenant")).send();
        answer.await.unwrap().topic_arn.unwrap()
    });
    assert!(
        tenant_topic.contains(":210987654321:"),
        "the topic is the tenant's: {tenant_topic}"
    );
    let options = || SubscribeOptions {
        filter_policy: None,
        raw_message_delivery: true,
    };
    let default_queue = rt.block_on(SqsSubscription::create(
        &sdk.sns(),
        &sdk.sqs(),
        &default_topic,
        &unique_name("own-q"),
        options(),
    ));
    let tenant_queue = rt.block_on(SqsSubscription::create(
        &tenant_sns,
        &tenant_sqs,
        &tenant_topic,
        &unique_name("tenant-q"),
        options(),
    ));

    let server = ApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    KubeconfigBuilder::new()
        .context("shop", &server, Some("shop"), ADMIN_TOKEN)
        .write_to(&kubeconfig)
        .unwrap();
    let config = format!(
        "kubeconfig: {}
resources:
  - {{apiVersion: v1, kind: ConfigMap}}
sns:
  topic_arn: {default_topic}
  routes:
    - name: tenant
      match: {{event_type: [ADDED]}}
      topic_arn: {tenant_topic}
      role_arn: {TENANT_ROLE}
      external_id: tenant-ext
spool: {{dir: {}}}
",
        kubeconfig.display(),
        dir.path().join("spool").display()
    );
    let env: Vec<(&str, String)> = sdk.env().into_iter().chain([("CONFIG", config)]).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut running = Running::start_with(&[], &env);
    running.wait_until("the watch", |_| server.watch_count("ConfigMap") >= 1);
    server.apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm-1", "namespace": "shop"}}));
    server.delete("v1", "ConfigMap", "shop", "cm-1");

    let tenant = rt.block_on(tenant_queue.drain(1, DEADLINE));
    let own = rt.block_on(default_queue.drain(1, DEADLINE));
    let (status, _) = running.terminate();
    assert!(status.success(), "{status:?}");
    assert_eq!(summary(&tenant), ["ADDED ConfigMap cm-1"]);
    assert_eq!(summary(&own), ["DELETED ConfigMap cm-1"]);
    let assumed = proxy.assume_role_requests();
    assert!(
        assumed
            .iter()
            .any(|(role, external_id, session)| role == TENANT_ROLE
                && external_id.as_deref() == Some("tenant-ext")
                && session == "kubeherald"),
        "{assumed:?}"
    );
}

/// `logs.routes`: a tenant's pods' lines go to the tenant's group in the
/// tenant's account (the role assumed with its ExternalId); a tenant whose
/// role is refused is parked alone, its lines kept, while the default
/// route's and the other tenant's lines flow.
#[test]
fn a_tenant_log_route_ships_into_the_tenants_account_and_a_refused_role_parks_only_it() {
    let moto = Moto::shared();
    let proxy = StrictProxy::start(moto.url());
    proxy.deny_role(DENIED_ROLE, true);
    let sdk = TestSdk::new(proxy.url());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let prefix = unique_name("tenants");
    let tenant_group = format!("/tenants/{prefix}/payments");
    let denied_group = format!("/tenants/{prefix}/blocked");

    let server = ApiServer::start();
    let pod = |name: &str, tenant: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "labels": {"tenant": tenant}},
            "spec": {"containers": [{"name": "app", "image": "x"}]}})
    };
    server.apply(pod("web", "none"));
    server.apply(pod("pay", "payments"));
    server.apply(pod("bad", "blocked"));
    for i in 0..3 {
        server.append_log("shop", "web", "app", &format!("web {i}"));
        server.append_log("shop", "pay", "app", &format!("pay {i}"));
        server.append_log("shop", "bad", "app", &format!("bad {i}"));
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    KubeconfigBuilder::new()
        .context("shop", &server, Some("shop"), ADMIN_TOKEN)
        .write_to(&kubeconfig)
        .unwrap();
    let config = format!(
        "kubeconfig: {}
logs:
  prefix: {prefix}
  routes:
    - name: payments
      match: {{labels: {{tenant: payments}}}}
      group: {tenant_group}
      retention_days: 90
      role_arn: {TENANT_ROLE}
      external_id: payments-ext
    - name: blocked
      match: {{labels: {{tenant: blocked}}}}
      group: {denied_group}
      role_arn: {DENIED_ROLE}
spool: {{dir: {}}}
",
        kubeconfig.display(),
        dir.path().join("spool").display()
    );
    let env: Vec<(&str, String)> = sdk.env().into_iter().chain([("CONFIG", config)]).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut running = Running::start_with(&[], &env);
    let parked = running.wait_for_log("the refused tenant parked", |line| {
        support::message(line).starts_with("log group parked")
    });
    assert_eq!(support::field(&parked, "route"), "blocked");
    assert_eq!(support::field(&parked, "group"), denied_group);
    assert!(
        support::field(&parked, "error").contains("AssumeRole:AccessDenied"),
        "{parked}"
    );
    // Lines logged while the route is parked: read, kept in the spool.
    // (The ones before: CloudWatch could not say where the stream ends, so
    // the follow started from then, with a gap marker — SPEC §4.)
    server.append_log("shop", "bad", "app", "bad 3");
    server.append_log("shop", "bad", "app", "bad 4");

    let tenant = rt.block_on(sdk.assumed(TENANT_ROLE, Some("payments-ext")));
    let tenant_logs = aws_sdk_cloudwatchlogs::Client::new(&tenant);
    let own_logs = sdk.logs();
    let messages = |client: &aws_sdk_cloudwatchlogs::Client, group: &str| -> Vec<String> {
        rt.block_on(stored_messages(client, group, "shop/pay/app/0"))
    };
    let default_group = || -> Option<String> {
        rt.block_on(async {
            let groups = own_logs
                .describe_log_groups()
                .log_group_name_prefix(format!("/{prefix}-"))
                .send()
                .await
                .unwrap();
            groups.log_groups?.first()?.log_group_name.clone()
        })
    };
    running.wait_until("the tenant's and the default route's lines", |_| {
        messages(&tenant_logs, &tenant_group).len() >= 3
            && default_group().is_some_and(|group| {
                rt.block_on(stored_messages(&own_logs, &group, "shop/web/app/0"))
                    .len()
                    >= 3
            })
    });
    assert_eq!(
        messages(&tenant_logs, &tenant_group),
        ["pay 0", "pay 1", "pay 2"]
    );
    assert!(
        messages(&own_logs, &tenant_group).is_empty(),
        "the tenant's lines are in the tenant's account only"
    );
    let retention = rt.block_on(async {
        let groups = tenant_logs
            .describe_log_groups()
            .log_group_name_prefix(&tenant_group)
            .send()
            .await
            .unwrap();
        groups.log_groups?.first()?.retention_in_days
    });
    assert_eq!(retention, Some(90), "the route's retention");
    let assumed = proxy.assume_role_requests();
    assert!(
        assumed
            .iter()
            .any(|(role, external_id, session)| role == TENANT_ROLE
                && external_id.as_deref() == Some("payments-ext")
                && session == "kubeherald"),
        "{assumed:?}"
    );
    assert!(
        assumed.iter().any(|(role, ..)| role == DENIED_ROLE),
        "the refused tenant's role was asked for: {assumed:?}"
    );

    let (status, _) = running.terminate();
    assert!(status.success(), "{status:?}");

    // The refused tenant's lines were kept in the spool: once its role is
    // granted, the next run ships them into its account, each once.
    proxy.deny_role(DENIED_ROLE, false);
    let granted = rt.block_on(sdk.assumed(DENIED_ROLE, None));
    let granted_logs = aws_sdk_cloudwatchlogs::Client::new(&granted);
    let stream_of = |client: &aws_sdk_cloudwatchlogs::Client| -> Vec<String> {
        rt.block_on(stored_messages(client, &denied_group, "shop/bad/app/0"))
    };
    assert!(
        stream_of(&granted_logs).is_empty(),
        "nothing shipped while refused"
    );
    let mut again = Running::start_with(&[], &env);
    again.wait_until("the kept lines shipped", |_| {
        stream_of(&granted_logs).len() >= 3
    });
    // A line after them: once it is shipped, anything sent twice would be
    // there too.
    server.append_log("shop", "bad", "app", "bad 5");
    again.wait_until("the new line", |_| stream_of(&granted_logs).len() >= 4);
    let (status, _) = again.terminate();
    assert!(status.success(), "{status:?}");
    let shipped = stream_of(&granted_logs);
    assert!(
        shipped[0]
            .starts_with("[kubeherald] gap: CloudWatch refused to say where this stream ends"),
        "the lines before the refusal are a gap, said in the stream: {shipped:?}"
    );
    assert_eq!(shipped[1..], ["bad 3", "bad 4", "bad 5"]);
    assert_eq!(
        messages(&tenant_logs, &tenant_group),
        ["pay 0", "pay 1", "pay 2"],
        "the other tenant's stream is unchanged by the restart"
    );
}

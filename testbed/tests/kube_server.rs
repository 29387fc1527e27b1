//! Tests of the Kubernetes API test server: each reproduced apiserver rule
//! has a test here that fails if the rule is broken.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, HOST, HeaderMap, RETRY_AFTER};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use kubeherald_testbed::kube::{ADMIN_TOKEN, Access, ApiServer, KubeconfigBuilder, ServerOptions};
use serde_json::{Value, json};
use tokio::net::TcpStream;

/// How long a test waits for something that should happen promptly.
const PATIENCE: Duration = Duration::from_secs(5);

// ---- a raw HTTP client: tests need to see exact bytes, statuses and breaks ----

async fn send(
    addr: SocketAddr,
    token: Option<&str>,
    path: &str,
) -> Result<Response<Incoming>, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = Request::get(path).header(HOST, addr.to_string());
    if let Some(token) = token {
        req = req.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    sender
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .map_err(|e| e.to_string())
}

async fn get_text(server: &ApiServer, token: Option<&str>, path: &str) -> (u16, HeaderMap, String) {
    let resp = tokio::time::timeout(PATIENCE, send(server.addr(), token, path))
        .await
        .expect("answer in time")
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(PATIENCE, resp.into_body().collect())
        .await
        .expect("body in time")
        .unwrap()
        .to_bytes();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

async fn get_json(server: &ApiServer, token: Option<&str>, path: &str) -> (u16, Value) {
    let (status, _, body) = get_text(server, token, path).await;
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")),
    )
}

async fn admin_json(server: &ApiServer, path: &str) -> Value {
    let (status, body) = get_json(server, Some(ADMIN_TOKEN), path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// What reading a stream produced.
#[derive(Debug)]
enum Next {
    Line(String),
    /// Clean end of the body.
    End,
    /// The connection broke mid-body.
    Broken(String),
    /// Nothing arrived in time.
    Silent,
}

struct Lines {
    body: Incoming,
    buf: Vec<u8>,
}

impl Lines {
    async fn open(server: &ApiServer, token: &str, path: &str) -> Lines {
        let resp = tokio::time::timeout(PATIENCE, send(server.addr(), Some(token), path))
            .await
            .expect("headers in time")
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        Lines {
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }

    async fn next(&mut self, wait: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Next::Line(String::from_utf8_lossy(&line[..pos]).into_owned());
            }
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return Next::Silent,
                Ok(None) if self.buf.is_empty() => return Next::End,
                Ok(None) => {
                    return Next::Line(
                        String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned(),
                    );
                }
                Ok(Some(Err(e))) => return Next::Broken(e.to_string()),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    async fn line(&mut self) -> String {
        match self.next(PATIENCE).await {
            Next::Line(line) => line,
            other => panic!("expected a line, got {other:?}"),
        }
    }

    async fn event(&mut self) -> Value {
        serde_json::from_str(&self.line().await).unwrap()
    }

    async fn expect_broken(&mut self) {
        match self.next(PATIENCE).await {
            Next::Broken(error) => assert!(!error.is_empty()),
            other => panic!("expected a broken stream, got {other:?}"),
        }
    }

    async fn expect_end(&mut self) {
        match self.next(PATIENCE).await {
            Next::End => {}
            other => panic!("expected a clean end, got {other:?}"),
        }
    }
}

// ---- objects ----

fn pod(ns: &str, name: &str, containers: &[&str]) -> Value {
    let containers: Vec<Value> = containers
        .iter()
        .map(|c| json!({"name": c, "image": "busybox"}))
        .collect();
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": ns, "name": name}, "spec": {"containers": containers}})
}

fn configmap(ns: &str, name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"namespace": ns, "name": name, "labels": labels}, "data": {"k": "v"}})
}

fn rv_of(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

async fn kube_client(yaml: &str, context: &str) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(yaml).unwrap();
    let options = kube::config::KubeConfigOptions {
        context: Some(context.to_string()),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

async fn admin_client(server: &ApiServer, namespace: &str) -> kube::Client {
    let yaml = KubeconfigBuilder::new()
        .context("test", server, Some(namespace), ADMIN_TOKEN)
        .to_yaml();
    kube_client(&yaml, "test").await
}

// ---- discovery ----

#[tokio::test]
async fn discovery_resolves_kinds_with_kube_rs() {
    use kube::core::GroupVersionKind;
    use kube::discovery::{Discovery, Scope, pinned_kind};
    let server = ApiServer::start();
    let client = admin_client(&server, "default").await;
    assert_eq!(
        client.apiserver_version().await.unwrap().git_version,
        "v1.33.0"
    );

    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    for (group, kind, plural, scope) in [
        ("", "Pod", "pods", Scope::Namespaced),
        ("apps", "Deployment", "deployments", Scope::Namespaced),
        ("example.com", "Widget", "widgets", Scope::Namespaced),
        ("", "Namespace", "namespaces", Scope::Cluster),
    ] {
        let gvk = GroupVersionKind::gvk(group, "v1", kind);
        let (resource, caps) = discovery
            .resolve_gvk(&gvk)
            .unwrap_or_else(|| panic!("{kind} not discovered"));
        assert_eq!(resource.plural, plural);
        assert_eq!(caps.scope, scope, "{kind}");
        let (pinned, pinned_caps) = pinned_kind(&client, &gvk).await.unwrap();
        assert_eq!(pinned.plural, plural);
        assert_eq!(pinned_caps.scope, scope);
    }
    let (_, pod_caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("", "v1", "Pod"))
        .unwrap();
    assert!(
        pod_caps.subresources.iter().any(|(r, _)| r.plural == "log"),
        "pods/log listed"
    );

    // Aggregated discovery v2 answers what kube-rs asks for with its Accept header.
    let aggregated = Discovery::new(client.clone())
        .run_aggregated()
        .await
        .unwrap();
    let (widget, _) = aggregated
        .resolve_gvk(&GroupVersionKind::gvk("example.com", "v1", "Widget"))
        .unwrap();
    assert_eq!(widget.plural, "widgets");

    // The raw documents.
    let apis = admin_json(&server, "/apis").await;
    assert_eq!(apis["kind"], "APIGroupList");
    let apps = apis["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "apps")
        .unwrap();
    assert_eq!(apps["preferredVersion"]["groupVersion"], "apps/v1");
    assert_eq!(admin_json(&server, "/api").await["versions"], json!(["v1"]));
    let core = admin_json(&server, "/api/v1").await;
    let log = core["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "pods/log")
        .unwrap();
    assert_eq!(log["verbs"], json!(["get"]));
}

#[tokio::test]
async fn unserved_kinds_answer_404_until_served() {
    let server = ApiServer::start();
    assert!(server.unserve_kind("example.com/v1", "Widget"));
    let (status, body) = get_json(
        &server,
        Some(ADMIN_TOKEN),
        "/apis/example.com/v1/namespaces/a/widgets",
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body["reason"], "NotFound");
    assert_eq!(
        body["message"],
        "the server could not find the requested resource"
    );
    assert!(
        !admin_json(&server, "/apis")
            .await
            .to_string()
            .contains("example.com")
    );
    let (status, _) = get_json(&server, Some(ADMIN_TOKEN), "/apis/example.com/v1").await;
    assert_eq!(status, 404);

    server.serve_kind(kubeherald_testbed::kube::KindSpec::custom(
        "example.com",
        "v1",
        "Widget",
        "widgets",
    ));
    server.apply(json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"namespace": "a", "name": "w"}, "spec": {"size": 3}}));
    let list = admin_json(&server, "/apis/example.com/v1/namespaces/a/widgets").await;
    assert_eq!(list["kind"], "WidgetList");
    // Custom resources are served unstructured: items keep apiVersion and kind.
    assert_eq!(list["items"][0]["kind"], "Widget");
    assert_eq!(list["items"][0]["apiVersion"], "example.com/v1");
}

// ---- LIST ----

#[tokio::test]
async fn list_has_the_real_shape() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, ApiResource, DynamicObject, ListParams};
    let server = ApiServer::start();
    server.apply(pod("a", "p2", &["app"]));
    server.apply(pod("a", "p1", &["app"]));
    server.apply(pod("b", "p3", &["app"]));
    server.apply(configmap("a", "cm", json!({})));
    server.apply(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"namespace": "a", "name": "d"}}));

    let list = admin_json(&server, "/api/v1/namespaces/a/pods").await;
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(
        list["metadata"]["resourceVersion"],
        server.resource_version().to_string()
    );
    assert_eq!(names(&list), ["p1", "p2"]);
    // Built-in typed lists: items carry no apiVersion/kind.
    assert!(list["items"][0].get("kind").is_none() && list["items"][0].get("apiVersion").is_none());
    let item = &list["items"][0];
    assert!(!item["metadata"]["uid"].as_str().unwrap().is_empty());
    assert!(
        item["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert_eq!(item["status"]["containerStatuses"][0]["restartCount"], 0);
    assert!(item["status"]["containerStatuses"][0]["state"]["running"].is_object());

    let deployments = admin_json(&server, "/apis/apps/v1/namespaces/a/deployments").await;
    assert_eq!(
        (
            deployments["kind"].as_str(),
            deployments["apiVersion"].as_str()
        ),
        (Some("DeploymentList"), Some("apps/v1"))
    );
    // All namespaces, and a single GET with type meta.
    assert_eq!(
        names(&admin_json(&server, "/api/v1/pods").await),
        ["p1", "p2", "p3"]
    );
    let got = admin_json(&server, "/api/v1/namespaces/a/pods/p1").await;
    assert_eq!(
        (got["kind"].as_str(), got["apiVersion"].as_str()),
        (Some("Pod"), Some("v1"))
    );
    let (status, missing) =
        get_json(&server, Some(ADMIN_TOKEN), "/api/v1/namespaces/a/pods/nope").await;
    assert_eq!(
        (status, missing["message"].as_str()),
        (404, Some("pods \"nope\" not found"))
    );

    // kube-rs reads it, typed and dynamic.
    let client = admin_client(&server, "a").await;
    let pods = Api::<Pod>::namespaced(client.clone(), "a")
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(pods.items.len(), 2);
    let resource = ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk("", "v1", "Pod"));
    let dynamic = Api::<DynamicObject>::namespaced_with(client, "a", &resource)
        .list(&ListParams::default())
        .await
        .unwrap();
    let dyn_names: Vec<_> = dynamic
        .items
        .iter()
        .map(|o| o.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(dyn_names, ["p1", "p2"]);
}

#[tokio::test]
async fn paginated_list_is_one_consistent_snapshot() {
    let server = ApiServer::start();
    for i in 0..5 {
        server.apply(configmap("a", &format!("c{i}"), json!({})));
    }
    let c2_before = server.get("v1", "ConfigMap", "a", "c2").unwrap();
    let page1 = admin_json(&server, "/api/v1/namespaces/a/configmaps?limit=2").await;
    assert_eq!(names(&page1), ["c0", "c1"]);
    assert_eq!(page1["metadata"]["remainingItemCount"], 3);
    let snapshot = page1["metadata"]["resourceVersion"].clone();
    let token = page1["metadata"]["continue"].as_str().unwrap().to_string();

    // Changes after the first page do not show in later pages.
    server.apply(configmap("a", "c2", json!({"changed": "yes"})));
    server.delete("v1", "ConfigMap", "a", "c3").unwrap();
    server.apply(configmap("a", "c5", json!({})));

    let page2 = admin_json(
        &server,
        &format!("/api/v1/namespaces/a/configmaps?limit=2&continue={token}"),
    )
    .await;
    assert_eq!(names(&page2), ["c2", "c3"]);
    assert_eq!(page2["metadata"]["resourceVersion"], snapshot);
    assert_eq!(
        page2["items"][0]["metadata"]["resourceVersion"],
        c2_before["metadata"]["resourceVersion"]
    );
    assert_eq!(page2["metadata"]["remainingItemCount"], 1);
    let token3 = page2["metadata"]["continue"].as_str().unwrap().to_string();
    let page3 = admin_json(
        &server,
        &format!("/api/v1/namespaces/a/configmaps?limit=2&continue={token3}"),
    )
    .await;
    assert_eq!(names(&page3), ["c4"]);
    assert!(page3["metadata"].get("continue").is_none());
    assert_eq!(
        names(&admin_json(&server, "/api/v1/namespaces/a/configmaps").await),
        ["c0", "c1", "c2", "c4", "c5"]
    );

    // Continue plus resourceVersion is refused; a compacted token is 410 Expired.
    let (status, _) = get_json(
        &server,
        Some(ADMIN_TOKEN),
        &format!("/api/v1/namespaces/a/configmaps?limit=2&continue={token3}&resourceVersion=5"),
    )
    .await;
    assert_eq!(status, 400);
    let (status, garbage) = get_json(
        &server,
        Some(ADMIN_TOKEN),
        "/api/v1/namespaces/a/configmaps?limit=2&continue=zz",
    )
    .await;
    assert_eq!(
        (status, garbage["reason"].as_str()),
        (400, Some("BadRequest"))
    );
    server.compact();
    let (status, body) = get_json(
        &server,
        Some(ADMIN_TOKEN),
        &format!("/api/v1/namespaces/a/configmaps?limit=2&continue={token3}"),
    )
    .await;
    assert_eq!(status, 410);
    assert_eq!(body["reason"], "Expired");
    assert_eq!(body["code"], 410);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("The provided continue parameter is too old")
    );
}

#[tokio::test]
async fn list_selectors_filter() {
    let server = ApiServer::start();
    server.apply(configmap(
        "a",
        "web",
        json!({"app": "web", "tier": "front"}),
    ));
    server.apply(configmap("a", "api", json!({"app": "api"})));
    server.apply(configmap("a", "bare", json!({})));
    let list = |q: &str| format!("/api/v1/namespaces/a/configmaps?{q}");
    for (query, expected) in [
        ("labelSelector=app%3Dweb", vec!["web"]),
        ("labelSelector=app+in+(web,api)", vec!["api", "web"]),
        ("labelSelector=!app", vec!["bare"]),
        ("labelSelector=app,tier!%3Dfront", vec!["api"]),
        ("fieldSelector=metadata.name%3Dapi", vec!["api"]),
        ("fieldSelector=metadata.name!%3Dapi", vec!["bare", "web"]),
    ] {
        assert_eq!(
            names(&admin_json(&server, &list(query)).await),
            expected,
            "{query}"
        );
    }
    let (status, body) = get_json(
        &server,
        Some(ADMIN_TOKEN),
        &list("fieldSelector=spec.foo%3Dx"),
    )
    .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (400, Some("field label not supported: spec.foo"))
    );
    // With a selector the remaining count is unknown, so it is omitted.
    let page = admin_json(&server, &list("labelSelector=app&limit=1")).await;
    assert_eq!(names(&page), ["api"]);
    assert!(page["metadata"]["continue"].is_string());
    assert!(page["metadata"].get("remainingItemCount").is_none());
}

#[tokio::test]
async fn exact_and_paginated_lists_from_a_compacted_version_are_410() {
    let server = ApiServer::start();
    let first = server.apply(configmap("a", "c", json!({"v": "1"})));
    server.apply(configmap("a", "c", json!({"v": "2"})));
    let rv = rv_of(&first);
    // Exact reads the snapshot at that version.
    let exact = admin_json(
        &server,
        &format!("/api/v1/namespaces/a/configmaps?resourceVersion={rv}&resourceVersionMatch=Exact"),
    )
    .await;
    assert_eq!(exact["items"][0]["metadata"]["labels"]["v"], "1");
    assert_eq!(exact["metadata"]["resourceVersion"], rv.to_string());
    server.compact();
    for query in [
        format!("resourceVersion={rv}&resourceVersionMatch=Exact"),
        format!("resourceVersion={rv}&limit=10"),
    ] {
        let (status, body) = get_json(
            &server,
            Some(ADMIN_TOKEN),
            &format!("/api/v1/namespaces/a/configmaps?{query}"),
        )
        .await;
        assert_eq!(
            (status, body["reason"].as_str()),
            (410, Some("Expired")),
            "{query}"
        );
        assert_eq!(
            body["message"],
            "The resourceVersion for the provided list is too old."
        );
    }
    // Not-older-than and "any" still answer from the current state.
    for query in [
        format!("resourceVersion={rv}"),
        "resourceVersion=0&limit=10".to_string(),
    ] {
        let list = admin_json(&server, &format!("/api/v1/namespaces/a/configmaps?{query}")).await;
        assert_eq!(list["items"][0]["metadata"]["labels"]["v"], "2", "{query}");
    }
}

#[test]
fn hundred_thousand_objects_list_in_one_namespace() {
    let server = ApiServer::start();
    for i in 0..100_000 {
        server.apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"namespace": "big", "name": format!("cm-{i:06}")}}));
    }
    assert_eq!(server.count("v1", "ConfigMap"), 100_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let all = admin_json(&server, "/api/v1/namespaces/big/configmaps").await;
        assert_eq!(all["items"].as_array().unwrap().len(), 100_000);
        let (mut seen, mut token) = (0, String::new());
        loop {
            let page = admin_json(
                &server,
                &format!("/api/v1/namespaces/big/configmaps?limit=10000&continue={token}"),
            )
            .await;
            seen += page["items"].as_array().unwrap().len();
            match page["metadata"]["continue"].as_str() {
                Some(next) => token = next.to_string(),
                None => break,
            }
        }
        assert_eq!(seen, 100_000);
    });
}

// ---- WATCH ----

#[tokio::test]
async fn watch_streams_every_change_after_the_version_in_order_and_nothing_else() {
    let server = ApiServer::start();
    let start = server.resource_version();
    let mut watch = Lines::open(
        &server,
        ADMIN_TOKEN,
        &format!("/api/v1/namespaces/a/pods?watch=1&resourceVersion={start}"),
    )
    .await;
    let added = server.apply(pod("a", "p", &["app"]));
    server.apply(pod("b", "other-namespace", &["app"]));
    server.apply(configmap("a", "other-kind", json!({})));
    let mut changed = pod("a", "p", &["app"]);
    changed["metadata"]["labels"] = json!({"x": "y"});
    let modified = server.apply(changed);
    let deleted = server.delete("v1", "Pod", "a", "p").unwrap();
    let sentinel = server.apply(pod("a", "sentinel", &["app"]));

    let mut seen = Vec::new();
    for _ in 0..4 {
        let event = watch.event().await;
        assert_eq!(event["object"]["kind"], "Pod");
        assert_eq!(event["object"]["apiVersion"], "v1");
        seen.push((
            event["type"].as_str().unwrap().to_string(),
            event["object"]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string(),
            rv_of(&event["object"]),
        ));
    }
    let expected = [
        ("ADDED", "p", rv_of(&added)),
        ("MODIFIED", "p", rv_of(&modified)),
        ("DELETED", "p", rv_of(&deleted)),
        ("ADDED", "sentinel", rv_of(&sentinel)),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(t, n, rv)| (t.to_string(), n.to_string(), *rv))
        .collect();
    assert_eq!(seen, expected);
    // The DELETED object carries a new version, newer than its last update.
    assert!(rv_of(&deleted) > rv_of(&modified));

    // Resuming from the middle re-delivers exactly what followed.
    let mut resumed = Lines::open(
        &server,
        ADMIN_TOKEN,
        &format!(
            "/api/v1/namespaces/a/pods?watch=true&resourceVersion={}",
            rv_of(&modified)
        ),
    )
    .await;
    assert_eq!(resumed.event().await["type"], "DELETED");
    assert_eq!(
        resumed.event().await["object"]["metadata"]["name"],
        "sentinel"
    );
}

#[tokio::test]
async fn watch_from_zero_or_unset_starts_with_synthetic_added() {
    let server = ApiServer::start();
    server.apply(pod("a", "p1", &["app"]));
    server.apply(pod("a", "p2", &["app"]));
    server.apply(pod("b", "elsewhere", &["app"]));
    let mut expected = vec!["p1".to_string(), "p2".to_string()];
    for query in ["watch=1", "watch=1&resourceVersion=0"] {
        let mut watch = Lines::open(
            &server,
            ADMIN_TOKEN,
            &format!("/api/v1/namespaces/a/pods?{query}"),
        )
        .await;
        let mut initial = Vec::new();
        for _ in 0..expected.len() {
            let event = watch.event().await;
            assert_eq!(event["type"], "ADDED");
            initial.push(
                event["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        assert_eq!(initial, expected, "{query}");
        let name = format!("z-later-{}", query.len());
        let later = server.apply(pod("a", &name, &["app"]));
        let next = watch.event().await;
        assert_eq!(
            (next["type"].as_str(), rv_of(&next["object"])),
            (Some("ADDED"), rv_of(&later))
        );
        expected.push(name);
    }
}

#[tokio::test]
async fn watch_selector_turns_leaving_objects_into_deleted() {
    let server = ApiServer::start();
    let start = server.resource_version();
    let mut watch = Lines::open(&server, ADMIN_TOKEN, &format!("/api/v1/namespaces/a/configmaps?watch=1&resourceVersion={start}&labelSelector=app%3Dweb")).await;
    server.apply(configmap("a", "c", json!({"app": "other"})));
    server.apply(configmap("a", "c", json!({"app": "web"})));
    let left = server.apply(configmap("a", "c", json!({"app": "gone"})));
    let entered = watch.event().await;
    assert_eq!(entered["type"], "ADDED");
    let leaving = watch.event().await;
    assert_eq!(leaving["type"], "DELETED");
    assert_eq!(leaving["object"]["metadata"]["labels"]["app"], "web");
    assert_eq!(rv_of(&leaving["object"]), rv_of(&left));
}

fn bookmark_options() -> ServerOptions {
    ServerOptions {
        bookmark_interval: Duration::from_millis(200),
        bookmark_before_timeout: Duration::from_millis(100),
        ..ServerOptions::default()
    }
}

#[tokio::test]
async fn bookmarks_come_only_once_the_type_changed_somewhere() {
    let server = ApiServer::start_with(bookmark_options());
    let start = server.resource_version();
    // Nothing of this type changes: a 1 s watch with bookmarks ends with none.
    let mut quiet = Lines::open(&server, ADMIN_TOKEN, &format!("/api/v1/namespaces/a/pods?watch=1&resourceVersion={start}&allowWatchBookmarks=true&timeoutSeconds=1")).await;
    // A change of another type does not count.
    server.apply(configmap("a", "cm", json!({})));
    quiet.expect_end().await;

    // A pod changes in another namespace: the watch of namespace a gets a
    // bookmark at that version, and not the event itself.
    let start = server.resource_version();
    let mut watch = Lines::open(&server, ADMIN_TOKEN, &format!("/api/v1/namespaces/a/pods?watch=1&resourceVersion={start}&allowWatchBookmarks=true&timeoutSeconds=30")).await;
    let other = server.apply(pod("b", "p", &["app"]));
    let bookmark = watch.event().await;
    assert_eq!(bookmark["type"], "BOOKMARK");
    assert_eq!(bookmark["object"]["kind"], "Pod");
    assert_eq!(bookmark["object"]["apiVersion"], "v1");
    assert_eq!(
        bookmark["object"]["metadata"]["resourceVersion"],
        rv_of(&other).to_string()
    );
    // Other kinds do not advance a pod bookmark.
    server.apply(configmap("a", "cm2", json!({})));
    let again = watch.event().await;
    assert_eq!(again["type"], "BOOKMARK");
    assert_eq!(
        again["object"]["metadata"]["resourceVersion"],
        rv_of(&other).to_string()
    );

    // kube-rs parses them.
    use futures_util::StreamExt;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, WatchEvent, WatchParams};
    let client = admin_client(&server, "a").await;
    let api = Api::<Pod>::namespaced(client, "a");
    let stream = api
        .watch(&WatchParams::default().timeout(10), &start.to_string())
        .await
        .unwrap();
    let mut stream = std::pin::pin!(stream);
    let event = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match event {
        WatchEvent::Bookmark(b) => {
            assert_eq!(b.metadata.resource_version, rv_of(&other).to_string())
        }
        other => panic!("expected a bookmark, got {other:?}"),
    }
}

#[tokio::test]
async fn watch_timeout_ends_the_stream_cleanly() {
    let server = ApiServer::start();
    let started = Instant::now();
    let mut watch = Lines::open(
        &server,
        ADMIN_TOKEN,
        "/api/v1/namespaces/a/pods?watch=1&timeoutSeconds=1",
    )
    .await;
    watch.expect_end().await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn watch_from_a_compacted_version_gets_one_410_error_event() {
    let server = ApiServer::start();
    let old = rv_of(&server.apply(pod("a", "p", &["app"])));
    server.apply(pod("a", "q", &["app"]));
    server.compact();
    let compacted = server.compacted_resource_version();
    let mut watch = Lines::open(
        &server,
        ADMIN_TOKEN,
        &format!("/api/v1/namespaces/a/pods?watch=1&resourceVersion={old}"),
    )
    .await;
    let error = watch.event().await;
    assert_eq!(
        error,
        json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {old} ({compacted})"), "reason": "Expired", "code": 410}})
    );
    watch.expect_end().await;

    // kube-rs sees the same as WatchEvent::Error.
    use futures_util::StreamExt;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, WatchEvent, WatchParams};
    let api = Api::<Pod>::namespaced(admin_client(&server, "a").await, "a");
    let stream = api
        .watch(&WatchParams::default(), &old.to_string())
        .await
        .unwrap();
    let mut stream = std::pin::pin!(stream);
    match tokio::time::timeout(PATIENCE, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected an error event, got {other:?}"),
    }
}

#[tokio::test]
async fn bounded_history_compacts_by_itself() {
    let server = ApiServer::start_with(ServerOptions {
        history_limit: 3,
        ..ServerOptions::default()
    });
    let first = rv_of(&server.apply(configmap("a", "c0", json!({}))));
    for i in 1..6 {
        server.apply(configmap("a", &format!("c{i}"), json!({})));
    }
    assert!(server.compacted_resource_version() > first);
    let mut watch = Lines::open(
        &server,
        ADMIN_TOKEN,
        &format!("/api/v1/namespaces/a/configmaps?watch=1&resourceVersion={first}"),
    )
    .await;
    assert_eq!(watch.event().await["object"]["code"], 410);
    // From the compaction point on, everything is still there.
    let from = server.compacted_resource_version();
    let mut watch = Lines::open(
        &server,
        ADMIN_TOKEN,
        &format!("/api/v1/namespaces/a/configmaps?watch=1&resourceVersion={from}"),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(watch.event().await["type"], "ADDED");
    }
}

// ---- auth ----

#[tokio::test]
async fn tokens_are_authenticated_and_scoped_to_namespaces() {
    let server = ApiServer::start();
    server.add_token("team-a", Access::namespaces(["a"]));
    server.apply(pod("b", "p", &["app"]));
    let unauthorized = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "Unauthorized", "reason": "Unauthorized", "code": 401});
    for token in [None, Some("unknown")] {
        for path in [
            "/api/v1/namespaces/a/pods",
            "/api/v1/namespaces/a/pods?watch=1",
            "/api/v1/namespaces/b/pods/p/log",
            "/apis",
        ] {
            assert_eq!(
                get_json(&server, token, path).await,
                (401, unauthorized.clone()),
                "{path} with {token:?}"
            );
        }
    }
    assert_eq!(
        get_json(&server, Some("team-a"), "/api/v1/namespaces/a/pods")
            .await
            .0,
        200
    );
    assert_eq!(get_json(&server, Some("team-a"), "/apis").await.0, 200);
    for (path, message) in [
        (
            "/api/v1/namespaces/b/pods",
            r#"pods is forbidden: User "team-a" cannot list resource "pods" in API group "" in the namespace "b""#,
        ),
        (
            "/api/v1/namespaces/b/pods?watch=1",
            r#"pods is forbidden: User "team-a" cannot watch resource "pods" in API group "" in the namespace "b""#,
        ),
        (
            "/api/v1/namespaces/b/pods/p/log",
            r#"pods "p" is forbidden: User "team-a" cannot get resource "pods/log" in API group "" in the namespace "b""#,
        ),
        (
            "/apis/apps/v1/namespaces/b/deployments",
            r#"deployments.apps is forbidden: User "team-a" cannot list resource "deployments" in API group "apps" in the namespace "b""#,
        ),
        (
            "/api/v1/pods",
            r#"pods is forbidden: User "team-a" cannot list resource "pods" in API group "" at the cluster scope"#,
        ),
    ] {
        let (status, body) = get_json(&server, Some("team-a"), path).await;
        assert_eq!(
            (status, body["reason"].as_str(), body["code"].as_u64()),
            (403, Some("Forbidden"), Some(403)),
            "{path}"
        );
        assert_eq!(body["message"], message);
        assert_eq!(body["status"], "Failure");
    }
    server.remove_token("team-a");
    assert_eq!(
        get_json(&server, Some("team-a"), "/api/v1/namespaces/a/pods")
            .await
            .0,
        401
    );
}

// ---- kubeconfig ----

#[tokio::test]
async fn kubeconfig_combines_several_clusters() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, ListParams};
    let (eu, us) = (ApiServer::start(), ApiServer::start());
    eu.add_token("token-a", Access::namespaces(["team-a", "team-b"]));
    eu.apply(pod("team-a", "eu-a", &["app"]));
    eu.apply(pod("team-b", "eu-b", &["app"]));
    us.apply(pod("default", "us", &["app"]));
    let builder = KubeconfigBuilder::new()
        .context("prod-eu", &eu, Some("team-a"), "token-a")
        .context("prod-eu-b", &eu, Some("team-b"), "token-a")
        .context("prod-us", &us, None, ADMIN_TOKEN)
        .current("prod-us");
    let yaml = builder.to_yaml();
    let parsed = kube::config::Kubeconfig::from_yaml(&yaml).unwrap();
    assert_eq!(
        (
            parsed.clusters.len(),
            parsed.auth_infos.len(),
            parsed.contexts.len()
        ),
        (2, 2, 3)
    );
    assert_eq!(parsed.current_context.as_deref(), Some("prod-us"));

    for (context, expected) in [
        ("prod-eu", "eu-a"),
        ("prod-eu-b", "eu-b"),
        ("prod-us", "us"),
    ] {
        let client = kube_client(&yaml, context).await;
        let pods = Api::<Pod>::default_namespaced(client)
            .list(&ListParams::default())
            .await
            .unwrap();
        let names: Vec<_> = pods
            .items
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, [expected], "{context}");
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    builder.write_to(file.path()).unwrap();
    assert_eq!(std::fs::read_to_string(file.path()).unwrap(), yaml);
}

// ---- logs ----

fn at(text: &str) -> jiff::Timestamp {
    text.parse().unwrap()
}

#[tokio::test]
async fn logs_serve_lines_timestamps_and_container_rules() {
    let server = ApiServer::start();
    let mut multi = pod("a", "p", &["app", "side"]);
    multi["spec"]["initContainers"] = json!([{"name": "init", "image": "busybox"}]);
    server.apply(multi);
    server.apply(pod("a", "single", &["only"]));
    server.append_log_at(
        "a",
        "p",
        "app",
        at("2026-01-02T03:04:05.00031676Z"),
        "first",
    );
    server.append_log_at("a", "p", "app", at("2026-01-02T03:04:06Z"), "second");
    server.append_log_at("a", "p", "init", at("2026-01-02T03:04:00Z"), "init line");
    server.append_log("a", "single", "only", "hello");
    let log = |q: &str| format!("/api/v1/namespaces/a/pods/p/log?{q}");

    let (status, headers, body) = get_text(&server, Some(ADMIN_TOKEN), &log("container=app")).await;
    assert_eq!((status, body.as_str()), (200, "first\nsecond\n"));
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let (_, _, body) = get_text(
        &server,
        Some(ADMIN_TOKEN),
        &log("container=app&timestamps=true"),
    )
    .await;
    assert_eq!(
        body,
        "2026-01-02T03:04:05.00031676Z first\n2026-01-02T03:04:06Z second\n"
    );
    let (_, _, body) = get_text(&server, Some(ADMIN_TOKEN), &log("container=init")).await;
    assert_eq!(body, "init line\n");
    let (_, _, body) = get_text(
        &server,
        Some(ADMIN_TOKEN),
        "/api/v1/namespaces/a/pods/single/log",
    )
    .await;
    assert_eq!(body, "hello\n");

    for (query, status, message) in [
        (
            "",
            400,
            "a container name must be specified for pod p, choose one of: [init app side]",
        ),
        (
            "container=nope",
            400,
            "container nope is not valid for pod p",
        ),
        (
            "container=app&previous=true",
            400,
            "previous terminated container \"app\" in pod \"p\" not found",
        ),
    ] {
        let (got, body) = get_json(&server, Some(ADMIN_TOKEN), &log(query)).await;
        assert_eq!(
            (got, body["message"].as_str()),
            (status, Some(message)),
            "{query}"
        );
        assert_eq!(body["reason"], "BadRequest");
    }
    let (status, body) = get_json(
        &server,
        Some(ADMIN_TOKEN),
        "/api/v1/namespaces/a/pods/ghost/log",
    )
    .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (404, Some("pods \"ghost\" not found"))
    );
    let (status, _) = get_json(
        &server,
        Some(ADMIN_TOKEN),
        &log("container=app&tailLines=-1"),
    )
    .await;
    assert_eq!(status, 422);
}

#[tokio::test]
async fn log_since_time_is_truncated_to_whole_seconds() {
    let server = ApiServer::start();
    server.apply(pod("a", "p", &["app"]));
    for (ts, text) in [
        ("2026-01-02T03:04:04.9Z", "l0"),
        ("2026-01-02T03:04:05.2Z", "l1"),
        ("2026-01-02T03:04:05.7Z", "l2"),
        ("2026-01-02T03:04:06.1Z", "l3"),
    ] {
        server.append_log_at("a", "p", "app", at(ts), text);
    }
    let log = |q: &str| format!("/api/v1/namespaces/a/pods/p/log?{q}");
    // 05.5 reaches the kubelet as 05: l1, before 05.5, is delivered again.
    let (_, _, body) = get_text(
        &server,
        Some(ADMIN_TOKEN),
        &log("sinceTime=2026-01-02T03:04:05.5Z"),
    )
    .await;
    assert_eq!(body, "l1\nl2\nl3\n");
    let (_, _, body) = get_text(
        &server,
        Some(ADMIN_TOKEN),
        &log("sinceTime=2026-01-02T03:04:06Z"),
    )
    .await;
    assert_eq!(body, "l3\n");
    let (_, _, body) = get_text(&server, Some(ADMIN_TOKEN), &log("tailLines=2")).await;
    assert_eq!(body, "l2\nl3\n");
    let (_, _, body) = get_text(&server, Some(ADMIN_TOKEN), &log("limitBytes=5")).await;
    assert_eq!(body, "l0\nl1");
    let (status, _) = get_json(
        &server,
        Some(ADMIN_TOKEN),
        &log("sinceSeconds=5&sinceTime=2026-01-02T03:04:06Z"),
    )
    .await;
    assert_eq!(status, 422);

    // sinceSeconds counts back from now.
    server.apply(pod("a", "q", &["app"]));
    server.append_log_at(
        "a",
        "q",
        "app",
        jiff::Timestamp::now() - Duration::from_secs(120),
        "old",
    );
    server.append_log("a", "q", "app", "recent");
    let (_, _, body) = get_text(
        &server,
        Some(ADMIN_TOKEN),
        "/api/v1/namespaces/a/pods/q/log?sinceSeconds=60",
    )
    .await;
    assert_eq!(body, "recent\n");

    // The request log shows what was asked.
    let asked = server
        .log_requests()
        .iter()
        .filter_map(|r| r.param("sinceTime"))
        .collect::<Vec<_>>();
    assert_eq!(asked[0], "2026-01-02T03:04:05.5Z");
}

#[tokio::test]
async fn follow_streams_new_lines_and_ends_with_the_instance() {
    let server = ApiServer::start();
    server.apply(pod("a", "p", &["app"]));
    server.append_log("a", "p", "app", "one");
    let mut follow = Lines::open(
        &server,
        ADMIN_TOKEN,
        "/api/v1/namespaces/a/pods/p/log?follow=true&timestamps=true",
    )
    .await;
    assert!(follow.line().await.ends_with(" one"));
    server.append_log("a", "p", "app", "two");
    assert!(follow.line().await.ends_with(" two"));
    assert!(
        matches!(follow.next(Duration::from_millis(100)).await, Next::Silent),
        "a running container's follow stays open"
    );

    // A restart ends the old instance's follow after its last line.
    let start = server.resource_version();
    let mut pods = Lines::open(
        &server,
        ADMIN_TOKEN,
        &format!("/api/v1/namespaces/a/pods?watch=1&resourceVersion={start}"),
    )
    .await;
    server.append_log("a", "p", "app", "three");
    server.restart_container("a", "p", "app");
    assert!(follow.line().await.ends_with(" three"));
    follow.expect_end().await;
    let modified = pods.event().await;
    assert_eq!(modified["type"], "MODIFIED");
    assert_eq!(
        modified["object"]["status"]["containerStatuses"][0]["restartCount"],
        1
    );
    assert!(
        modified["object"]["status"]["containerStatuses"][0]["lastState"]["terminated"].is_object()
    );

    let (_, _, previous) = get_text(
        &server,
        Some(ADMIN_TOKEN),
        "/api/v1/namespaces/a/pods/p/log?previous=true",
    )
    .await;
    assert_eq!(previous, "one\ntwo\nthree\n");
    let (_, _, current) = get_text(
        &server,
        Some(ADMIN_TOKEN),
        "/api/v1/namespaces/a/pods/p/log",
    )
    .await;
    assert_eq!(current, "");

    // The new instance: follow, then terminate ends it after the remaining lines.
    let mut follow = Lines::open(
        &server,
        ADMIN_TOKEN,
        "/api/v1/namespaces/a/pods/p/log?follow=1",
    )
    .await;
    server.append_log("a", "p", "app", "four");
    assert_eq!(follow.line().await, "four");
    server.append_log("a", "p", "app", "five");
    server.terminate_container("a", "p", "app");
    assert_eq!(follow.line().await, "five");
    follow.expect_end().await;
    let pod = server.get("v1", "Pod", "a", "p").unwrap();
    assert!(pod["status"]["containerStatuses"][0]["state"]["terminated"].is_object());
    // A follow of a terminated container returns what there is and ends.
    let mut done = Lines::open(
        &server,
        ADMIN_TOKEN,
        "/api/v1/namespaces/a/pods/p/log?follow=1",
    )
    .await;
    assert_eq!(done.line().await, "four");
    assert_eq!(done.line().await, "five");
    done.expect_end().await;
}

// ---- faults ----

#[tokio::test]
async fn drop_connections_breaks_open_streams() {
    let server = ApiServer::start();
    server.apply(pod("a", "p", &["app"]));
    let start = server.resource_version();
    let mut watch = Lines::open(
        &server,
        ADMIN_TOKEN,
        &format!("/api/v1/namespaces/a/pods?watch=1&resourceVersion={start}"),
    )
    .await;
    let mut follow = Lines::open(
        &server,
        ADMIN_TOKEN,
        "/api/v1/namespaces/a/pods/p/log?follow=true",
    )
    .await;
    server.apply(pod("a", "q", &["app"]));
    assert_eq!(watch.event().await["type"], "ADDED");
    server.drop_connections();
    // Neither stream ends cleanly.
    watch.expect_broken().await;
    follow.expect_broken().await;
    assert_eq!(
        get_json(&server, Some(ADMIN_TOKEN), "/api/v1/namespaces/a/pods")
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn stall_holds_every_byte_until_released() {
    let server = ApiServer::start();
    let start = server.resource_version();
    let mut watch = Lines::open(
        &server,
        ADMIN_TOKEN,
        &format!("/api/v1/namespaces/a/pods?watch=1&resourceVersion={start}"),
    )
    .await;
    server.stall(true);
    server.apply(pod("a", "p", &["app"]));
    // The client's idle deadline is what notices.
    assert!(matches!(
        watch.next(Duration::from_millis(500)).await,
        Next::Silent
    ));
    let fresh = tokio::time::timeout(
        Duration::from_millis(500),
        send(
            server.addr(),
            Some(ADMIN_TOKEN),
            "/api/v1/namespaces/a/pods",
        ),
    )
    .await;
    assert!(fresh.is_err(), "a new request gets no answer while stalled");
    server.stall(false);
    assert_eq!(watch.event().await["object"]["metadata"]["name"], "p");
    assert_eq!(
        get_json(&server, Some(ADMIN_TOKEN), "/api/v1/namespaces/a/pods")
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn fail_next_answers_with_a_status() {
    let server = ApiServer::start();
    server.fail_next(1, 500);
    let (status, body) = get_json(&server, Some(ADMIN_TOKEN), "/api/v1/namespaces/a/pods").await;
    assert_eq!(
        (status, body["reason"].as_str(), body["kind"].as_str()),
        (500, Some("InternalError"), Some("Status"))
    );
    assert_eq!(
        get_json(&server, Some(ADMIN_TOKEN), "/api/v1/namespaces/a/pods")
            .await
            .0,
        200
    );

    server.fail_next(2, 429);
    for _ in 0..2 {
        let (status, headers, body) = get_text(
            &server,
            Some(ADMIN_TOKEN),
            "/api/v1/namespaces/a/pods?watch=1",
        )
        .await;
        assert_eq!(status, 429);
        assert_eq!(headers[RETRY_AFTER], "1");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["reason"],
            "TooManyRequests"
        );
    }
    server.fail_next_matching(1, 503, "/log");
    assert_eq!(
        get_json(&server, Some(ADMIN_TOKEN), "/api/v1/namespaces/a/pods")
            .await
            .0,
        200
    );
    assert_eq!(
        get_json(
            &server,
            Some(ADMIN_TOKEN),
            "/api/v1/namespaces/a/pods/p/log"
        )
        .await
        .0,
        503
    );
}

#[tokio::test]
async fn restart_keeps_state_and_port() {
    let server = ApiServer::start();
    let url = server.url();
    let before = server.apply(pod("a", "p", &["app"]));
    let start = server.resource_version();
    let mut watch = Lines::open(
        &server,
        ADMIN_TOKEN,
        &format!("/api/v1/namespaces/a/pods?watch=1&resourceVersion={start}"),
    )
    .await;
    server.stop();
    watch.expect_broken().await;
    assert!(
        TcpStream::connect(server.addr()).await.is_err(),
        "stopped: connection refused"
    );
    server.restart();
    assert_eq!(server.url(), url);
    let after = admin_json(&server, "/api/v1/namespaces/a/pods/p").await;
    assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
    assert_eq!(
        after["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
    // The watch resumes from its version with no gap.
    let added = server.apply(pod("a", "q", &["app"]));
    let mut resumed = Lines::open(
        &server,
        ADMIN_TOKEN,
        &format!("/api/v1/namespaces/a/pods?watch=1&resourceVersion={start}"),
    )
    .await;
    assert_eq!(rv_of(&resumed.event().await["object"]), rv_of(&added));
}

#[tokio::test]
async fn request_log_counts_lists_and_watches() {
    let server = ApiServer::start();
    get_json(&server, Some(ADMIN_TOKEN), "/api/v1/namespaces/a/pods").await;
    get_json(
        &server,
        Some(ADMIN_TOKEN),
        "/api/v1/namespaces/a/pods?limit=5",
    )
    .await;
    get_text(
        &server,
        Some(ADMIN_TOKEN),
        "/api/v1/namespaces/a/pods?watch=1&timeoutSeconds=1",
    )
    .await;
    get_json(
        &server,
        Some(ADMIN_TOKEN),
        "/apis/apps/v1/namespaces/a/deployments",
    )
    .await;
    assert_eq!(
        (
            server.list_count("Pod"),
            server.watch_count("Pod"),
            server.list_count("Deployment")
        ),
        (2, 1, 1)
    );
    let watch = server
        .requests()
        .into_iter()
        .find(|r| r.param("watch").is_some())
        .unwrap();
    assert_eq!(
        (
            watch.path.as_str(),
            watch.param("timeoutSeconds").as_deref(),
            watch.status
        ),
        ("/api/v1/namespaces/a/pods", Some("1"), 200)
    );
    server.clear_requests();
    assert!(server.requests().is_empty());
}

#[test]
fn works_from_sync_code_and_shuts_down_on_drop() {
    let server = ApiServer::start();
    let addr = server.addr();
    server.apply(pod("a", "p", &["app"]));
    assert!(std::net::TcpStream::connect(addr).is_ok());
    drop(server);
    assert!(std::net::TcpStream::connect(addr).is_err());
}

// ---- authorization ----

/// `kubectl auth can-i`'s question, as kube-rs sends it: a
/// SelfSubjectAccessReview is created (201) with `status.allowed` as the
/// authorizer of every other request decides; an unknown token gets 401.
#[tokio::test]
async fn self_subject_access_reviews_answer_from_the_same_authorizer() {
    let server = ApiServer::start();
    server.add_token("apps-reader", Access::namespaces(["apps"]));
    let yaml = KubeconfigBuilder::new()
        .context("reader", &server, Some("apps"), "apps-reader")
        .context("nobody", &server, Some("apps"), "unknown-token")
        .to_yaml();
    let review = |namespace: &str, resource: &str, subresource: &str| {
        let body = json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"namespace": namespace, "verb": "list",
                "group": "", "resource": resource, "subresource": subresource}},
        });
        Request::post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")
            .header("content-type", "application/json")
            .body(body.to_string().into_bytes())
            .unwrap()
    };
    let reader = kube_client(&yaml, "reader").await;
    let allowed: Value = reader.request(review("apps", "pods", "")).await.unwrap();
    assert_eq!(allowed["status"]["allowed"], true, "{allowed}");
    assert_eq!(allowed["spec"]["resourceAttributes"]["namespace"], "apps");
    let logs: Value = reader.request(review("apps", "pods", "log")).await.unwrap();
    assert_eq!(logs["status"]["allowed"], true);
    let denied: Value = reader.request(review("billing", "pods", "")).await.unwrap();
    assert_eq!(denied["status"]["allowed"], false, "{denied}");
    // And the LIST it answers for is refused the same way.
    let (status, _) = get_json(
        &server,
        Some("apps-reader"),
        "/api/v1/namespaces/billing/pods",
    )
    .await;
    assert_eq!(status, 403);
    let nobody = kube_client(&yaml, "nobody").await;
    let err = nobody
        .request::<Value>(review("apps", "pods", ""))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 401),
        "{err}"
    );
}

//! The watchers against the Kubernetes API test server (SPEC §3): LIST then
//! WATCH, bookmarks, resumption without re-list, 410 → re-list diff, restart
//! with persisted state, idle deadline, retries, isolation between clusters,
//! and kinds not served or cluster-scoped.
//!
//! Each test reads back exactly what was spooled (the in-memory spool) and
//! waits on conditions with deadlines, never on fixed sleeps. Absence of
//! unwanted events is shown with a marker: a change made after the ones
//! under test, whose event must come right after them.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kubeherald::config::{EventTypes, ObjectPath, ResourceConfig, ResourceKind};
use kubeherald::contexts::ClusterTarget;
use kubeherald::record::{EventType, ResourceEvent};
use kubeherald::spool::{Spool, SpoolReader};
use kubeherald::watch::{WatchOptions, WatchedKind, WatcherHandle, spawn_kind_watcher};
use kubeherald_testbed::kube::{
    ADMIN_TOKEN, Access, ApiServer, KindSpec, KubeconfigBuilder, RequestVerb, ServerOptions,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

mod support;
use support::{target, targets, watch_counter as counter};

/// How long a test waits for something that should happen promptly.
const PATIENCE: Duration = Duration::from_secs(15);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn kind(api_version: &str, kind: &str) -> ResourceKind {
    ResourceKind {
        api_version: api_version.into(),
        kind: kind.into(),
    }
}

fn config_maps() -> ResourceKind {
    kind("v1", "ConfigMap")
}

/// Short deadlines so failures and retries happen within a test.
fn fast_options() -> WatchOptions {
    WatchOptions {
        page_size: 3,
        watch_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(31),
        request_timeout: Duration::from_secs(2),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_secs(2),
        unserved_retry: Duration::from_millis(300),
        state_sync_interval: Duration::ZERO,
        max_page_bytes: WatchOptions::default().max_page_bytes,
    }
}

fn config_map(namespace: &str, name: &str, value: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "demo"}},
        "data": {"value": value},
    })
}

/// A spool, its reader, and the watchers writing to it.
struct Harness {
    spool: Spool,
    reader: SpoolReader,
    shutdown: CancellationToken,
    watchers: Vec<WatcherHandle>,
}

impl Harness {
    fn new() -> Harness {
        // RUST_LOG=kubeherald=debug shows what the watchers did.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        let spool = Spool::in_memory(64 * 1024 * 1024);
        let reader = spool.reader().unwrap();
        Harness {
            spool,
            reader,
            shutdown: CancellationToken::new(),
            watchers: Vec::new(),
        }
    }

    fn watch(
        &mut self,
        target: ClusterTarget,
        kind: impl Into<WatchedKind>,
        state_dir: Option<PathBuf>,
        options: WatchOptions,
    ) {
        let handle = spawn_kind_watcher(
            target,
            kind,
            self.spool.writer(),
            state_dir,
            options,
            self.shutdown.child_token(),
        )
        .unwrap();
        self.watchers.push(handle);
    }

    /// Reads events until `done` holds for those read by this call; returns them.
    fn read_until(
        &mut self,
        what: &str,
        done: impl Fn(&[ResourceEvent]) -> bool,
    ) -> Vec<ResourceEvent> {
        let deadline = Instant::now() + PATIENCE;
        let mut events = Vec::new();
        loop {
            if done(&events) {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "waiting for {what}: got {:#?}",
                summary(&events)
            );
            let batch = self
                .reader
                .next_batch(1000, Duration::from_millis(100))
                .unwrap();
            for delivery in batch {
                events.push(ResourceEvent::from_record(delivery.payload()).unwrap());
                delivery.ack();
            }
        }
    }

    /// Reads events up to and including the first event for object `name`.
    fn read_through(&mut self, name: &str) -> Vec<ResourceEvent> {
        self.read_until(&format!("an event for {name}"), |events| {
            events.iter().any(|e| e.name == name)
        })
    }

    /// Stops every watcher and waits for the threads.
    fn stop(&mut self) {
        self.shutdown.cancel();
        for handle in self.watchers.drain(..) {
            handle.join().unwrap();
        }
        self.shutdown = CancellationToken::new();
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn summary(events: &[ResourceEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            format!(
                "{} {} rv={} resync={}",
                e.event_type, e.name, e.resource_version, e.resync
            )
        })
        .collect()
}

/// Polls `condition` until it holds or PATIENCE runs out.
fn wait_for(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn object(event: &ResourceEvent) -> Value {
    serde_json::from_str(event.object.get()).unwrap()
}

/// The items of a LIST of config maps at exactly `rv`, by name, as the server sends them.
fn server_list_items(
    target: &ClusterTarget,
    namespace: &str,
    rv: &str,
) -> std::collections::HashMap<String, String> {
    let params = kube::api::ListParams {
        resource_version: Some(rv.to_owned()),
        version_match: Some(kube::api::VersionMatch::Exact),
        ..Default::default()
    };
    let body = server_text(target, namespace, |request| request.list(&params).unwrap());
    #[derive(serde::Deserialize)]
    struct List<'a> {
        #[serde(borrow)]
        items: Vec<&'a serde_json::value::RawValue>,
    }
    let list: List<'_> = serde_json::from_str(&body).unwrap();
    list.items
        .iter()
        .map(|item| {
            let value: Value = serde_json::from_str(item.get()).unwrap();
            (
                value["metadata"]["name"].as_str().unwrap().to_owned(),
                item.get().to_owned(),
            )
        })
        .collect()
}

/// The objects of a 1 s WATCH of config maps from `rv`, exactly as the server sends them.
fn server_watch_objects(target: &ClusterTarget, namespace: &str, rv: &str) -> Vec<String> {
    let params = kube::api::WatchParams {
        timeout: Some(1),
        ..Default::default()
    };
    let body = server_text(target, namespace, |request| {
        request.watch(&params, rv).unwrap()
    });
    #[derive(serde::Deserialize)]
    struct Line<'a> {
        #[serde(borrow)]
        object: &'a serde_json::value::RawValue,
    }
    body.lines()
        .map(|line| {
            serde_json::from_str::<Line<'_>>(line)
                .unwrap()
                .object
                .get()
                .to_owned()
        })
        .collect()
}

fn server_text(
    target: &ClusterTarget,
    namespace: &str,
    build: impl FnOnce(kube::core::Request) -> http::Request<Vec<u8>>,
) -> String {
    let config = target.client_config.clone();
    let request = build(kube::core::Request::new(format!(
        "/api/v1/namespaces/{namespace}/configmaps"
    )));
    runtime().block_on(async move {
        let client = kube::Client::try_from(config).unwrap();
        client.request_text(request).await.unwrap()
    })
}

#[test]
fn initial_list_is_paginated_then_watch_events_arrive_in_order() {
    let server = ApiServer::start();
    for i in 0..7 {
        server.apply(config_map("team-a", &format!("cm-{i}"), "1"));
    }
    server.apply(config_map("elsewhere", "not-watched", "1"));
    let target = target(&server, "initial-ctx", "team-a");
    let mut harness = Harness::new();
    harness.watch(target.clone(), config_maps(), None, fast_options());

    let listed = harness.read_until("7 ADDED", |events| events.len() >= 7);
    assert_eq!(listed.len(), 7, "{:?}", summary(&listed));
    let mut names: Vec<&str> = listed.iter().map(|e| e.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["cm-0", "cm-1", "cm-2", "cm-3", "cm-4", "cm-5", "cm-6"]
    );
    for event in &listed {
        assert_eq!(event.event_type, EventType::Added);
        assert!(!event.resync, "the first LIST emits plain ADDED");
        assert_eq!(
            (event.context.as_str(), event.namespace.as_str()),
            ("initial-ctx", "team-a")
        );
        assert_eq!(
            (event.api_version.as_str(), event.kind.as_str()),
            ("v1", "ConfigMap")
        );
        assert_eq!(event.cluster, server.url());
        assert!(
            event
                .observed_at_us
                .is_some_and(|at| at <= kubeherald::record::unix_micros_now()),
            "stamped when read off the API server's answer (SPEC §9 delays)"
        );
        let value = object(event);
        assert_eq!(
            value["apiVersion"], "v1",
            "LIST items get apiVersion inserted"
        );
        assert_eq!(value["kind"], "ConfigMap");
        assert_eq!(value["metadata"]["uid"].as_str(), Some(event.uid.as_str()));
    }
    // 7 objects in pages of 3.
    wait_for("the watch", || server.watch_count("ConfigMap") >= 1);
    assert_eq!(server.list_count("ConfigMap"), 3);
    let list_requests: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.verb == RequestVerb::List)
        .collect();
    assert!(
        list_requests
            .iter()
            .all(|r| r.param("limit").as_deref() == Some("3"))
    );
    assert!(
        list_requests
            .iter()
            .all(|r| r.param("resourceVersion").is_none()),
        "LIST is a consistent read, never resourceVersion=0"
    );
    let watch = server
        .requests()
        .into_iter()
        .find(|r| r.verb == RequestVerb::Watch)
        .unwrap();
    assert_eq!(watch.param("allowWatchBookmarks").as_deref(), Some("true"));
    let list_rv = listed
        .iter()
        .map(|e| e.resource_version.parse::<u64>().unwrap())
        .max()
        .unwrap();
    let watch_rv: u64 = watch.param("resourceVersion").unwrap().parse().unwrap();
    assert!(
        watch_rv >= list_rv && watch_rv > 0,
        "WATCH from the LIST's version"
    );

    server.apply(config_map("team-a", "cm-1", "2"));
    server.delete("v1", "ConfigMap", "team-a", "cm-2");
    server.apply(config_map("team-a", "cm-7", "1"));
    let watched = harness.read_through("cm-7");
    assert_eq!(
        summary(&watched)
            .iter()
            .map(|s| s.split(" rv=").next().unwrap().to_owned())
            .collect::<Vec<_>>(),
        ["MODIFIED cm-1", "DELETED cm-2", "ADDED cm-7"]
    );
    assert!(watched.iter().all(|e| !e.resync));
    assert_eq!(object(&watched[0])["data"]["value"], "2");
    // Watch objects are forwarded byte for byte.
    let sent = server_watch_objects(&target, "team-a", &watch_rv.to_string());
    let forwarded: Vec<&str> = watched.iter().map(|e| e.object.get()).collect();
    assert_eq!(forwarded, sent);
    assert_eq!(server.list_count("ConfigMap"), 3, "no re-list");
    // Built-in LIST items come without apiVersion/kind: inserted at the
    // front, the rest is the server's bytes.
    let items = server_list_items(&target, "team-a", &watch_rv.to_string());
    for event in &listed {
        let item = &items[&event.name];
        assert!(
            !item.contains("\"apiVersion\""),
            "the server leaves them out: {item}"
        );
        assert_eq!(
            event.object.get(),
            format!(
                "{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",{}",
                &item[1..]
            )
        );
    }
    harness.stop();
}

#[test]
fn bookmark_advances_the_resource_version_of_the_next_watch() {
    let server = ApiServer::start_with(ServerOptions {
        bookmark_interval: Duration::from_millis(200),
        ..ServerOptions::default()
    });
    server.apply(config_map("team-a", "watched", "1"));
    let mut harness = Harness::new();
    let options = WatchOptions {
        watch_timeout: Duration::from_secs(3),
        ..fast_options()
    };
    harness.watch(
        target(&server, "bookmark-ctx", "team-a"),
        config_maps(),
        None,
        options,
    );
    harness.read_through("watched");
    wait_for("the first watch", || server.watch_count("ConfigMap") >= 1);

    // Changes in another namespace: no event for this watch, but the
    // bookmark carries the type's newer version.
    for i in 0..3 {
        server.apply(config_map("elsewhere", &format!("other-{i}"), "1"));
    }
    let bookmark_rv = server.resource_version().to_string();
    wait_for("a WATCH resumed from the bookmark's version", || {
        server.requests().iter().any(|r| {
            r.verb == RequestVerb::Watch
                && r.param("resourceVersion").as_deref() == Some(bookmark_rv.as_str())
        })
    });
    assert_eq!(server.list_count("ConfigMap"), 1, "resumed, not re-listed");
    harness.stop();
}

#[test]
fn timeouts_and_broken_connections_resume_without_relist() {
    let server = ApiServer::start();
    server.apply(config_map("team-a", "a", "1"));
    let mut harness = Harness::new();
    let options = WatchOptions {
        watch_timeout: Duration::from_secs(1),
        ..fast_options()
    };
    harness.watch(
        target(&server, "resume-ctx", "team-a"),
        config_maps(),
        None,
        options,
    );
    harness.read_through("a");

    // The server ends each watch after timeoutSeconds=1, cleanly.
    wait_for("three watches", || server.watch_count("ConfigMap") >= 3);
    assert!(counter("watch_restarts", "resume-ctx", "ConfigMap", "timeout") >= 2);
    server.apply(config_map("team-a", "b", "1"));
    let events = harness.read_through("b");
    assert_eq!(summary(&events).len(), 1, "{:?}", summary(&events));

    // A cut connection (no terminating chunk) resumes too.
    let watches = server.watch_count("ConfigMap");
    server.drop_connections();
    wait_for("a new watch", || server.watch_count("ConfigMap") > watches);
    server.apply(config_map("team-a", "a", "2"));
    let events = harness.read_through("a");
    assert_eq!(events.len(), 1, "{:?}", summary(&events));
    assert_eq!(events[0].event_type, EventType::Modified);
    assert_eq!(server.list_count("ConfigMap"), 1, "never re-listed");
    harness.stop();
}

#[test]
fn gone_mid_watch_relists_and_emits_only_the_difference() {
    let server = ApiServer::start();
    for name in ["keep-1", "deleted", "modified", "keep-2", "keep-3"] {
        server.apply(config_map("team-a", name, "1"));
    }
    let mut harness = Harness::new();
    harness.watch(
        target(&server, "gone-ctx", "team-a"),
        config_maps(),
        None,
        fast_options(),
    );
    let listed = harness.read_until("5 ADDED", |events| events.len() >= 5);
    let deleted_uid = listed
        .iter()
        .find(|e| e.name == "deleted")
        .unwrap()
        .uid
        .clone();
    let deleted_rv = listed
        .iter()
        .find(|e| e.name == "deleted")
        .unwrap()
        .resource_version
        .clone();
    wait_for("the watch", || server.watch_count("ConfigMap") >= 1);

    // A gap: the watch hears nothing while objects change and the history
    // is compacted; its next WATCH gets 410.
    server.stall(true);
    server.delete("v1", "ConfigMap", "team-a", "deleted");
    server.apply(config_map("team-a", "modified", "2"));
    server.apply(config_map("team-a", "added", "1"));
    server.compact();
    server.drop_connections();
    // Unstalled only once the watcher saw its connection cut, so the held
    // events can never reach it.
    wait_for("the cut connection", || {
        counter("watch_restarts", "gone-ctx", "ConfigMap", "error") >= 1
    });
    server.stall(false);

    wait_for("a re-list", || server.list_count("ConfigMap") >= 3);
    server.apply(config_map("team-a", "marker", "1"));
    let events = harness.read_through("marker");
    let (marker, diff) = events.split_last().unwrap();
    assert!(!marker.resync && marker.event_type == EventType::Added);
    let mut diff_summary: Vec<(EventType, String, bool)> = diff
        .iter()
        .map(|e| (e.event_type, e.name.clone(), e.resync))
        .collect();
    diff_summary.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        diff_summary,
        [
            (EventType::Added, "added".to_owned(), true),
            (EventType::Deleted, "deleted".to_owned(), true),
            (EventType::Modified, "modified".to_owned(), true),
        ],
        "exactly the difference, no duplicate ADDED: {:?}",
        summary(&events)
    );
    let tombstone = diff
        .iter()
        .find(|e| e.event_type == EventType::Deleted)
        .unwrap();
    assert_eq!(tombstone.uid, deleted_uid);
    assert_eq!(
        tombstone.resource_version, deleted_rv,
        "the last known version"
    );
    let body = object(tombstone);
    assert_eq!(body["apiVersion"], "v1");
    assert_eq!(body["kind"], "ConfigMap");
    assert_eq!(body["metadata"]["name"], "deleted");
    assert_eq!(body["metadata"]["namespace"], "team-a");
    assert_eq!(body["metadata"]["uid"].as_str(), Some(deleted_uid.as_str()));
    assert_eq!(
        body["metadata"]["resourceVersion"].as_str(),
        Some(deleted_rv.as_str())
    );
    assert_eq!(body["metadata"]["labels"]["app"], "demo");
    assert!(counter("relists", "gone-ctx", "ConfigMap", "expired") >= 1);
    harness.stop();
}

#[test]
fn restart_with_persisted_state_emits_only_the_difference() {
    let server = ApiServer::start();
    for i in 0..8 {
        server.apply(config_map("team-a", &format!("cm-{i}"), "1"));
    }
    let state_dir = tempfile::tempdir().unwrap();
    let target = target(&server, "restart-ctx", "team-a");
    let mut harness = Harness::new();
    harness.watch(
        target.clone(),
        config_maps(),
        Some(state_dir.path().to_owned()),
        fast_options(),
    );
    let listed = harness.read_until("8 ADDED", |events| events.len() >= 8);
    assert!(
        listed
            .iter()
            .all(|e| e.event_type == EventType::Added && !e.resync)
    );
    // Synced: the state is written after the spool, so wait for the watch.
    wait_for("the watch", || server.watch_count("ConfigMap") >= 1);
    server.apply(config_map("team-a", "cm-0", "2"));
    let modified = harness.read_through("cm-0");
    // The state is recorded right after the spool append: wait for it, or
    // the restart would (rightly) re-emit this change as a duplicate.
    let rv = modified[0].resource_version.clone();
    wait_for("the state to record cm-0", || {
        harness.watchers[0].status().resource_version.as_deref() == Some(rv.as_str())
    });
    harness.stop();

    // While kubeherald is down; then the history is compacted, so the
    // persisted version cannot be resumed from (410): LIST + diff.
    server.delete("v1", "ConfigMap", "team-a", "cm-3");
    server.delete("v1", "ConfigMap", "team-a", "cm-6");
    server.apply(config_map("team-a", "cm-5", "2"));
    server.apply(config_map("team-a", "cm-new", "1"));
    server.compact();

    let watches = server.watch_count("ConfigMap");
    let lists = server.list_count("ConfigMap");
    harness.watch(
        target,
        config_maps(),
        Some(state_dir.path().to_owned()),
        fast_options(),
    );
    // The resumed WATCH (410), the LIST, then the WATCH from the LIST.
    wait_for("the second process's watch after its LIST", || {
        server.list_count("ConfigMap") > lists && server.watch_count("ConfigMap") > watches + 1
    });
    server.apply(config_map("team-a", "marker", "1"));
    let events = harness.read_through("marker");
    let (marker, diff) = events.split_last().unwrap();
    assert!(!marker.resync);
    let mut diff_summary: Vec<(EventType, String, bool)> = diff
        .iter()
        .map(|e| (e.event_type, e.name.clone(), e.resync))
        .collect();
    diff_summary.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        diff_summary,
        [
            (EventType::Deleted, "cm-3".to_owned(), true),
            (EventType::Modified, "cm-5".to_owned(), true),
            (EventType::Deleted, "cm-6".to_owned(), true),
            (EventType::Added, "cm-new".to_owned(), true),
        ],
        "{:?}",
        summary(&events)
    );
    assert!(counter("relists", "restart-ctx", "ConfigMap", "restart") >= 1);
    harness.stop();
}

#[test]
fn restart_resumes_the_watch_from_the_persisted_version_without_a_list() {
    let server = ApiServer::start();
    for i in 0..5 {
        server.apply(config_map("team-r", &format!("cm-{i}"), "1"));
    }
    let state_dir = tempfile::tempdir().unwrap();
    let target = target(&server, "resume-ctx", "team-r");
    let mut harness = Harness::new();
    let mut options = fast_options();
    // Commits become durable by time, as in production (not at once).
    options.state_sync_interval = Duration::from_millis(200);
    harness.watch(
        target.clone(),
        config_maps(),
        Some(state_dir.path().to_owned()),
        options.clone(),
    );
    harness.read_until("5 ADDED", |events| events.len() >= 5);
    wait_for("the watch", || server.watch_count("ConfigMap") >= 1);
    server.apply(config_map("team-r", "cm-0", "2"));
    let modified = harness.read_through("cm-0");
    let rv = modified[0].resource_version.clone();
    wait_for("the state to record cm-0", || {
        harness.watchers[0].status().resource_version.as_deref() == Some(rv.as_str())
    });
    harness.stop();

    // While kubeherald is down (the history is kept: no compaction).
    server.delete("v1", "ConfigMap", "team-r", "cm-1");
    server.apply(config_map("team-r", "cm-2", "2"));
    server.apply(config_map("team-r", "cm-new", "1"));
    server.clear_requests();

    harness.watch(
        target,
        config_maps(),
        Some(state_dir.path().to_owned()),
        options,
    );
    let events = harness.read_through("cm-new");
    let got: Vec<(EventType, String, bool)> = events
        .iter()
        .map(|e| (e.event_type, e.name.clone(), e.resync))
        .collect();
    assert_eq!(
        got,
        [
            (EventType::Deleted, "cm-1".to_owned(), false),
            (EventType::Modified, "cm-2".to_owned(), false),
            (EventType::Added, "cm-new".to_owned(), false),
        ],
        "the changes made while down, as the watch saw them, and nothing for unchanged objects"
    );
    assert_eq!(
        server.list_count("ConfigMap"),
        0,
        "a healthy restart costs no LIST"
    );
    let first_watch = server
        .requests()
        .into_iter()
        .find(|r| r.verb == RequestVerb::Watch)
        .expect("a WATCH after the restart");
    assert_eq!(
        first_watch.param("resourceVersion").as_deref(),
        Some(rv.as_str()),
        "the WATCH resumes from the persisted version"
    );
    assert!(harness.watchers[0].status().synced);
    server.apply(config_map("team-r", "marker", "1"));
    let rest = harness.read_through("marker");
    assert_eq!(summary(&rest).len(), 1, "{:?}", summary(&rest));
    harness.stop();
}

#[test]
fn a_quiet_watch_makes_its_state_durable_by_time() {
    // The state commits of a watch event become durable within the sync
    // interval although no later event or bookmark comes to carry them: a
    // copy of the state file taken then (what a kill -9 would leave) knows
    // the event's object.
    let server = ApiServer::start();
    server.apply(config_map("team-q", "cm-0", "1"));
    let state_dir = tempfile::tempdir().unwrap();
    let target = target(&server, "quiet-ctx", "team-q");
    let mut harness = Harness::new();
    let mut options = fast_options();
    // The LIST's end is committed durably at once; the event's commit that
    // follows within this interval is not, and nothing else comes (the next
    // bookmark is a minute away, the watch timeout 30 s): only the timer
    // can make it durable within the test's patience.
    options.state_sync_interval = Duration::from_secs(2);
    harness.watch(
        target,
        config_maps(),
        Some(state_dir.path().to_owned()),
        options,
    );
    harness.read_until("the initial ADDED", |events| !events.is_empty());
    wait_for("the watch", || server.watch_count("ConfigMap") >= 1);
    server.apply(config_map("team-q", "cm-quiet", "1"));
    let added = harness.read_through("cm-quiet");
    let uid = added.last().unwrap().uid.clone();
    let file = std::fs::read_dir(state_dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "redb"))
        .expect("the state file");
    // redb writes non-durable commits to the file too; the durable one is
    // what a reopen after a crash trusts. Poll copies until it has the uid.
    wait_for("the quiet event's state to be durable", || {
        let copy = tempfile::tempdir().unwrap();
        let path = copy.path().join("state.redb");
        std::fs::copy(&file, &path).unwrap();
        state_knows(&path, &uid)
    });
    harness.stop();
}

/// Whether the state file at `path` (a copy) has object `uid`, as a process
/// opening it after a crash would see it.
fn state_knows(path: &std::path::Path, uid: &str) -> bool {
    use redb::{ReadableDatabase, TableDefinition};
    const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
    let Ok(db) = redb::Database::open(path) else {
        return false;
    };
    let Ok(txn) = db.begin_read() else {
        return false;
    };
    let Ok(objects) = txn.open_table(OBJECTS) else {
        return false;
    };
    objects.get(uid).ok().flatten().is_some()
}

#[test]
fn a_stalled_connection_trips_the_idle_deadline_and_the_watch_resumes() {
    // Bookmarks every 200 ms keep a healthy watch from ever being idle for 1 s.
    let server = ApiServer::start_with(ServerOptions {
        bookmark_interval: Duration::from_millis(200),
        ..ServerOptions::default()
    });
    server.apply(config_map("team-a", "a", "1"));
    let mut harness = Harness::new();
    let options = WatchOptions {
        idle_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        ..fast_options()
    };
    harness.watch(
        target(&server, "idle-ctx", "team-a"),
        config_maps(),
        None,
        options,
    );
    harness.read_through("a");
    wait_for("the watch", || server.watch_count("ConfigMap") >= 1);
    // A write of the type elsewhere: bookmarks now carry a newer version.
    server.apply(config_map("elsewhere", "bump", "1"));
    let watches = server.watch_count("ConfigMap");
    assert_eq!(
        counter("watch_restarts", "idle-ctx", "ConfigMap", "idle"),
        0
    );

    // Bytes stop; the connection stays open.
    server.stall(true);
    wait_for("the idle deadline", || {
        counter("watch_restarts", "idle-ctx", "ConfigMap", "idle") >= 1
    });
    server.stall(false);
    wait_for("a new watch", || server.watch_count("ConfigMap") > watches);
    server.apply(config_map("team-a", "b", "1"));
    let events = harness.read_through("b");
    assert_eq!(events.len(), 1, "{:?}", summary(&events));
    assert_eq!(
        server.list_count("ConfigMap"),
        1,
        "resumed from the last version"
    );
    harness.stop();
}

#[test]
fn server_errors_and_throttling_are_retried_with_backoff() {
    let server = ApiServer::start();
    server.apply(config_map("team-a", "a", "1"));
    // Discovery and the first LIST fail with 500, then the LIST is throttled
    // (429 with Retry-After: 1).
    server.fail_next(2, 500);
    server.fail_next_matching(1, 429, "configmaps");
    let started = Instant::now();
    let mut harness = Harness::new();
    harness.watch(
        target(&server, "retry-ctx", "team-a"),
        config_maps(),
        None,
        fast_options(),
    );
    let events = harness.read_through("a");
    assert_eq!(events.len(), 1);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "Retry-After: 1 is honoured"
    );
    assert!(counter("watch_errors", "retry-ctx", "ConfigMap", "http-5xx") >= 1);
    assert!(counter("watch_errors", "retry-ctx", "ConfigMap", "throttled") >= 1);
    assert!(
        server.requests().len() < 20,
        "no hot loop: {} requests",
        server.requests().len()
    );

    // The watch itself failing with 500 is retried from the same version.
    wait_for("the watch", || server.watch_count("ConfigMap") >= 1);
    server.fail_next_matching(2, 500, "configmaps");
    server.drop_connections();
    server.apply(config_map("team-a", "b", "1"));
    let events = harness.read_through("b");
    assert_eq!(events.len(), 1, "{:?}", summary(&events));
    // Failed requests are recorded without a kind: one good LIST, no re-list.
    assert_eq!(server.list_count("ConfigMap"), 1);
    harness.stop();
}

#[test]
fn one_failing_cluster_never_holds_back_another() {
    let healthy = ApiServer::start();
    healthy.apply(config_map("team-a", "healthy-1", "1"));
    let stalled = ApiServer::start();
    stalled.stall(true);
    let failing = ApiServer::start();
    failing.fail_next(100_000, 500);
    let forbidding = ApiServer::start();
    forbidding.add_token("team-b-only", Access::namespaces(["team-b"]));
    let unreachable_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let kubeconfig = KubeconfigBuilder::new()
        .context("iso-stalled", &stalled, Some("team-a"), ADMIN_TOKEN)
        .context("iso-failing", &failing, Some("team-a"), ADMIN_TOKEN)
        .context("iso-forbidden", &forbidding, Some("team-a"), "team-b-only")
        .context_url(
            "iso-unreachable",
            &format!("http://127.0.0.1:{unreachable_port}"),
            Some("team-a"),
            ADMIN_TOKEN,
        )
        .context("iso-healthy", &healthy, Some("team-a"), ADMIN_TOKEN);
    let mut harness = Harness::new();
    for target in targets(&kubeconfig) {
        harness.watch(target, config_maps(), None, fast_options());
    }
    let events = harness.read_through("healthy-1");
    assert!(events.iter().all(|e| e.context == "iso-healthy"));
    healthy.apply(config_map("team-a", "healthy-2", "1"));
    let events = harness.read_through("healthy-2");
    assert_eq!(events.len(), 1);

    wait_for("the failures to be counted", || {
        counter("watch_errors", "iso-failing", "ConfigMap", "http-5xx") >= 1
            && counter("watch_errors", "iso-forbidden", "ConfigMap", "forbidden") >= 1
            && counter(
                "watch_errors",
                "iso-unreachable",
                "ConfigMap",
                "unreachable",
            ) >= 1
            && counter("watch_errors", "iso-stalled", "ConfigMap", "timeout") >= 1
    });
    let forbidden = harness
        .watchers
        .iter()
        .find(|w| w.context == "iso-forbidden")
        .unwrap();
    let error = forbidden.status().last_error.unwrap_or_default();
    assert!(
        error.contains("forbidden") && error.contains("cannot list"),
        "{error}"
    );
    healthy.apply(config_map("team-a", "healthy-3", "1"));
    harness.read_through("healthy-3");
    // Stop promptly even with requests hanging on the stalled server.
    let stopping = Instant::now();
    harness.stop();
    assert!(stopping.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_kind_not_served_is_an_error_until_it_is_served() {
    let server = ApiServer::start();
    assert!(server.unserve_kind("example.com/v1", "Widget"));
    let mut harness = Harness::new();
    harness.watch(
        target(&server, "crd-ctx", "team-a"),
        kind("example.com/v1", "Widget"),
        None,
        fast_options(),
    );
    wait_for("not-served to be counted", || {
        counter("watch_errors", "crd-ctx", "Widget", "not-served") >= 2
    });
    assert!(
        harness.watchers[0]
            .status()
            .last_error
            .unwrap()
            .contains("not served")
    );

    // The CRD is installed: the next slow retry finds it.
    server.serve_kind(KindSpec::custom("example.com", "v1", "Widget", "widgets"));
    server.apply(json!({
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w1", "namespace": "team-a"},
        "spec": {"size": 3},
    }));
    let events = harness.read_through("w1");
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].api_version.as_str(), events[0].kind.as_str()),
        ("example.com/v1", "Widget")
    );
    assert_eq!(object(&events[0])["spec"]["size"], 3);
    harness.stop();
}

#[test]
fn a_cluster_scoped_kind_is_an_error_of_that_kind_alone() {
    let server = ApiServer::start();
    server.apply(config_map("team-a", "cm", "1"));
    let target = target(&server, "scope-ctx", "team-a");
    let mut harness = Harness::new();
    harness.watch(
        target.clone(),
        kind("v1", "Namespace"),
        None,
        fast_options(),
    );
    harness.watch(target, config_maps(), None, fast_options());
    let events = harness.read_through("cm");
    assert_eq!(events.len(), 1);
    wait_for("cluster-scoped to be counted", || {
        counter("watch_errors", "scope-ctx", "Namespace", "cluster-scoped") >= 1
    });
    assert_eq!(server.list_count("Namespace"), 0, "never listed");
    harness.stop();
}

fn labelled(name: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "team-a", "labels": {"app": app}},
        "data": {"value": "1"},
    })
}

/// Cuts the watch while `change` happens and the history is compacted, so
/// the watcher's next WATCH gets 410 and it re-lists.
fn gap(server: &ApiServer, context: &str, change: impl FnOnce()) {
    server.stall(true);
    change();
    server.compact();
    server.drop_connections();
    wait_for("the cut connection", || {
        counter("watch_restarts", context, "ConfigMap", "error") >= 1
    });
    server.stall(false);
}

#[test]
fn selectors_filter_list_and_watch_and_what_leaves_them_is_deleted() {
    let server = ApiServer::start();
    server.apply(labelled("web-1", "web"));
    server.apply(labelled("web-2", "web"));
    server.apply(labelled("api", "api"));
    // Matches the labels, not the field selector.
    server.apply(labelled("excluded", "web"));
    let mut selected = ResourceConfig::of(config_maps());
    selected.label_selector = Some("app in (web)".into());
    selected.field_selector = Some("metadata.name!=excluded".into());
    let mut harness = Harness::new();
    harness.watch(
        target(&server, "select-ctx", "team-a"),
        selected,
        None,
        fast_options(),
    );
    let listed = harness.read_until("2 ADDED", |events| events.len() >= 2);
    let mut names: Vec<&str> = listed.iter().map(|e| e.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["web-1", "web-2"]);
    wait_for("the watch", || server.watch_count("ConfigMap") >= 1);
    for request in server
        .requests()
        .iter()
        .filter(|r| r.kind.as_deref() == Some("ConfigMap"))
    {
        assert!(
            request.query.contains("labelSelector=app+in+%28web%29")
                && request
                    .query
                    .contains("fieldSelector=metadata.name%21%3Dexcluded"),
            "{:?} {} without the selectors: {}",
            request.verb,
            request.path,
            request.query
        );
    }

    // On the watch: leaving the selector is a DELETED, entering an ADDED.
    server.apply(labelled("web-2", "other"));
    server.apply(labelled("api", "web"));
    server.apply(labelled("excluded", "web-too"));
    server.apply(labelled("marker-1", "web"));
    let events = harness.read_through("marker-1");
    assert_eq!(
        summary(&events),
        [
            format!(
                "DELETED web-2 rv={} resync=false",
                events[0].resource_version
            ),
            format!("ADDED api rv={} resync=false", events[1].resource_version),
            format!(
                "ADDED marker-1 rv={} resync=false",
                events[2].resource_version
            ),
        ]
    );

    // In a gap: the re-list no longer shows web-1, so the diff deletes it.
    gap(&server, "select-ctx", || {
        server.apply(labelled("web-1", "gone"));
    });
    wait_for("a re-list", || server.list_count("ConfigMap") >= 2);
    server.apply(labelled("marker-2", "web"));
    let events = harness.read_through("marker-2");
    let (marker, diff) = events.split_last().unwrap();
    assert!(!marker.resync);
    assert_eq!(
        diff.iter()
            .map(|e| (e.event_type, e.name.as_str(), e.resync))
            .collect::<Vec<_>>(),
        [(EventType::Deleted, "web-1", true)],
        "{:?}",
        summary(&events)
    );
    assert_eq!(
        object(&diff[0])["metadata"]["labels"]["app"],
        "web",
        "the last known copy"
    );
    harness.stop();
}

#[test]
fn a_field_the_server_does_not_support_is_that_watch_s_error() {
    let server = ApiServer::start();
    let mut selected = ResourceConfig::of(config_maps());
    selected.field_selector = Some("status.phase=Running".into());
    let mut harness = Harness::new();
    harness.watch(
        target(&server, "field-ctx", "team-a"),
        selected,
        None,
        fast_options(),
    );
    wait_for("the server's refusal in the status", || {
        harness.watchers[0]
            .status()
            .last_error
            .is_some_and(|e| e.contains("field label not supported: status.phase"))
    });
    assert!(!harness.watchers[0].status().synced);
    harness.stop();
}

fn counter_of(context: &str, reason: &str) -> u64 {
    counter("events_suppressed", context, "ConfigMap", reason)
}

#[test]
fn event_types_and_ignored_changes_are_suppressed_and_counted() {
    let server = ApiServer::start();
    let with = |heartbeat: &str, leader: &str, value: &str| {
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "namespace": "team-a", "annotations": {"leader": leader}},
            "data": {"value": value, "heartbeat": heartbeat},
        })
    };
    server.apply(with("t0", "pod-1", "1"));
    let mut selected = ResourceConfig::of(config_maps());
    selected.event_types = EventTypes {
        added: true,
        modified: true,
        deleted: false,
    };
    selected.ignore_changes_in = vec![
        ObjectPath::parse("data.heartbeat").unwrap(),
        ObjectPath::parse("metadata.annotations.leader").unwrap(),
    ];
    let context = "suppress-ctx";
    let mut harness = Harness::new();
    harness.watch(
        target(&server, context, "team-a"),
        selected,
        None,
        fast_options(),
    );
    assert_eq!(
        summary(&harness.read_through("a"))[0].split(' ').next(),
        Some("ADDED")
    );
    wait_for("the watch", || server.watch_count("ConfigMap") >= 1);

    // Only ignored paths change: nothing published, two counted.
    server.apply(with("t1", "pod-1", "1"));
    server.apply(with("t1", "pod-2", "1"));
    // A real change is published.
    server.apply(with("t2", "pod-2", "2"));
    server.apply(labelled("marker-1", "x"));
    let events = harness.read_through("marker-1");
    assert_eq!(
        events
            .iter()
            .map(|e| (e.event_type, e.name.as_str()))
            .collect::<Vec<_>>(),
        [(EventType::Modified, "a"), (EventType::Added, "marker-1")],
        "{:?}",
        summary(&events)
    );
    assert_eq!(object(&events[0])["data"]["value"], "2");
    wait_for("the counts", || counter_of(context, "ignored_changes") == 2);

    // Back to the first content: a change against what was last published
    // (value 2), though equal to what was stored before it.
    server.apply(with("t3", "pod-3", "1"));
    server.apply(labelled("marker-2", "x"));
    let events = harness.read_through("marker-2");
    assert_eq!(events[0].event_type, EventType::Modified);
    assert_eq!(object(&events[0])["data"]["value"], "1");

    // DELETED is not among the event types.
    server.delete("v1", "ConfigMap", "team-a", "marker-1");
    server.apply(labelled("marker-3", "x"));
    let events = harness.read_through("marker-3");
    assert_eq!(summary(&events).len(), 1, "{:?}", summary(&events));
    wait_for("the deletion counted", || {
        counter_of(context, "event_type") == 1
    });

    // A re-list compares fingerprints too: a change of ignored paths in a
    // gap is no MODIFIED resync; a deletion in a gap is suppressed as well.
    gap(&server, context, || {
        server.apply(with("t4", "pod-4", "1"));
        server.delete("v1", "ConfigMap", "team-a", "marker-2");
    });
    wait_for("a re-list", || server.list_count("ConfigMap") >= 2);
    server.apply(labelled("marker-4", "x"));
    let events = harness.read_through("marker-4");
    assert_eq!(summary(&events).len(), 1, "{:?}", summary(&events));
    wait_for("the re-list's suppressions", || {
        counter_of(context, "ignored_changes") == 3 && counter_of(context, "event_type") == 2
    });
    harness.stop();
}

#[test]
fn secrets_are_redacted_before_they_are_spooled_unless_opted_out() {
    let server = ApiServer::start();
    let secret = |name: &str, password: &str| {
        json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": "team-a", "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration":
                    format!("{{\"data\":{{\"password\":\"{password}\"}}}}")}},
            "data": {"password": password},
        })
    };
    server.apply(secret("db", "c2VjcmV0LTE="));
    let secrets = kind("v1", "Secret");
    let mut harness = Harness::new();
    let target = target(&server, "redact-ctx", "team-a");
    harness.watch(target.clone(), secrets.clone(), None, fast_options());
    let first = harness.read_through("db").remove(0);
    assert!(first.redacted);
    let body = first.object.get();
    assert!(!body.contains("c2VjcmV0LTE="), "{body}");
    assert!(!body.contains("last-applied-configuration"), "{body}");
    let marker = object(&first)["data"]["password"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(marker.starts_with("<redacted hmac-sha256:"), "{marker}");

    // A new value: a new marker, so the change is visible.
    wait_for("the watch", || server.watch_count("Secret") >= 1);
    server.apply(secret("db", "c2VjcmV0LTI="));
    let changed = harness.read_through("db").remove(0);
    assert_eq!(changed.event_type, EventType::Modified);
    let new_marker = object(&changed)["data"]["password"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(marker, new_marker);
    assert!(!changed.object.get().contains("c2VjcmV0LTI="));
    harness.stop();

    // `redact: false`: the values as the API server sent them.
    let mut opted_out = ResourceConfig::of(secrets);
    opted_out.redaction.secret_values = false;
    harness.watch(target, opted_out, None, fast_options());
    let plain = harness.read_through("db").remove(0);
    assert!(!plain.redacted);
    assert_eq!(object(&plain)["data"]["password"], "c2VjcmV0LTI=");
    harness.stop();
}

/// SPEC §9, memory bounded in bytes: a LIST page asks for as many items as
/// fit `max_page_bytes` at the size of the items seen so far, so a page of
/// large objects holds about as many bytes as one of small objects.
#[test]
fn list_pages_of_large_objects_ask_for_fewer_items() {
    let server = ApiServer::start();
    let payload = "y".repeat(16 * 1024);
    for i in 0..120 {
        server.apply(config_map("big", &format!("cm-{i:03}"), &payload));
    }
    let target = target(&server, "pages-ctx", "big");
    let mut harness = Harness::new();
    let options = WatchOptions {
        page_size: 500,
        max_page_bytes: 128 * 1024,
        ..fast_options()
    };
    harness.watch(target, config_maps(), None, options);
    let listed = harness.read_until("120 ADDED", |events| events.len() >= 120);
    assert_eq!(listed.len(), 120);
    let limits: Vec<String> = server
        .list_requests("ConfigMap")
        .iter()
        .filter_map(|r| r.param("limit"))
        .collect();
    // First page: 50 items (nothing known yet). Then 128 KiB / ~16.3 KiB.
    assert_eq!(limits.first().map(String::as_str), Some("50"), "{limits:?}");
    assert!(
        limits.len() > 2 && limits[1..].iter().all(|l| l == "7"),
        "later pages fit 128 KiB: {limits:?}"
    );
}

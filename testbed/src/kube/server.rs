//! The server: its own tokio runtime, the accept loop, connections, and the
//! handle tests hold ([`ApiServer`]) to change the cluster and inject faults.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc as std_mpsc};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::watch;

use super::auth::{Access, Tokens};
use super::faults::Faults;
use super::flood::Flood;
use super::kinds::{KindRegistry, KindSpec, TypeKey, default_kinds};
use super::logs::{LogLine, LogStore};
use super::pods;
use super::routes::{self, push_bounded};
use super::store::{ObjKey, Store, now_seconds};
use super::watch::BOOKMARK_BEFORE_TIMEOUT;

/// A token every server accepts with [`Access::All`] unless
/// [`ServerOptions::admin_token`] is `None`.
pub const ADMIN_TOKEN: &str = "testbed-admin-token";

/// How a server behaves; `Default` gives the real apiserver's figures where
/// they matter and test-friendly ones elsewhere.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Interval between watch bookmarks (real: about 60 s).
    pub bookmark_interval: Duration,
    /// Lead of the last bookmark before a watch's deadline (real: 2 s).
    pub bookmark_before_timeout: Duration,
    /// Watch duration when the client sends no `timeoutSeconds` (real: random
    /// between 1800 s and 3600 s).
    pub default_watch_timeout: Duration,
    /// Events kept for watches and paginated lists; beyond it the compaction
    /// point moves forward (the watch cache's capacity / etcd compaction).
    pub history_limit: usize,
    /// The cluster's resourceVersion before the first write; versions at or
    /// below it are compacted from the start.
    pub initial_resource_version: u64,
    /// Log lines kept per container instance (older ones rotate away).
    pub max_log_lines: usize,
    /// Request records kept for [`ApiServer::requests`].
    pub max_request_records: usize,
    /// A token registered with [`Access::All`] at start (user `testbed-admin`).
    pub admin_token: Option<String>,
    /// Kinds known and served at start.
    pub kinds: Vec<KindSpec>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            bookmark_interval: Duration::from_secs(60),
            bookmark_before_timeout: BOOKMARK_BEFORE_TIMEOUT,
            default_watch_timeout: Duration::from_secs(1800),
            history_limit: 100_000,
            initial_resource_version: 1000,
            max_log_lines: 100_000,
            max_request_records: 100_000,
            admin_token: Some(ADMIN_TOKEN.to_string()),
            kinds: default_kinds(),
        }
    }
}

/// What a recorded request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestVerb {
    /// `/api`, `/apis`, group versions, `/version`.
    Discovery,
    /// GET of one object.
    Get,
    /// LIST.
    List,
    /// WATCH.
    Watch,
    /// `pods/log`.
    Log,
    /// Anything else (unknown paths, refused before routing).
    Other,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Path, undecoded.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// What the request asked for.
    pub verb: RequestVerb,
    /// The kind addressed, for resource requests.
    pub kind: Option<String>,
    /// HTTP status of the answer (a stream's status is known when it starts).
    pub status: u16,
    /// When the request arrived.
    pub at: std::time::Instant,
}

impl RequestRecord {
    /// A decoded query parameter.
    pub fn param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

/// Locks a mutex, recovering it if a panicking thread poisoned it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State shared by the handle and every connection.
pub(crate) struct Shared {
    pub(crate) options: ServerOptions,
    pub(crate) addr: SocketAddr,
    pub(crate) store: Mutex<Store>,
    /// The latest resourceVersion; watchers wake on it.
    pub(crate) changes: watch::Sender<u64>,
    pub(crate) kinds: Mutex<KindRegistry>,
    pub(crate) tokens: Mutex<Tokens>,
    pub(crate) logs: Mutex<LogStore>,
    pub(crate) faults: Faults,
    /// Flooded (kind, namespace) watches ([`super::flood`]).
    pub(crate) floods: Mutex<HashMap<(TypeKey, String), Flood>>,
    requests: Mutex<VecDeque<RequestRecord>>,
}

impl Shared {
    pub(crate) fn record(&self, record: RequestRecord) {
        push_bounded(
            &mut lock(&self.requests),
            record,
            self.options.max_request_records,
        );
    }
}

/// The running accept loop: a stop signal and its acknowledgement.
struct Acceptor {
    stop: watch::Sender<bool>,
    stopped: std_mpsc::Receiver<()>,
}

/// A Kubernetes API test server playing one cluster. See the [module docs](super).
///
/// Every method is synchronous and takes `&self`, so a server can be shared
/// (`Arc<ApiServer>`) and driven from sync or async tests alike.
pub struct ApiServer {
    shared: Arc<Shared>,
    runtime: Option<Runtime>,
    acceptor: Mutex<Option<Acceptor>>,
}

impl ApiServer {
    /// Starts a server with default options on `127.0.0.1:0`.
    ///
    /// # Panics
    /// If no loopback port can be bound or no runtime built.
    pub fn start() -> ApiServer {
        Self::start_with(ServerOptions::default())
    }

    /// Starts a server with these options on `127.0.0.1:0`.
    ///
    /// # Panics
    /// If no loopback port can be bound or no runtime built.
    pub fn start_with(options: ServerOptions) -> ApiServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("local address of the listener");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kube-testbed")
            .enable_all()
            .build()
            .expect("tokio runtime for the test apiserver");
        let mut tokens = Tokens::default();
        if let Some(token) = &options.admin_token {
            tokens.add(token, "testbed-admin", Access::All);
        }
        let shared = Arc::new(Shared {
            addr,
            store: Mutex::new(Store::new(
                options.initial_resource_version,
                options.history_limit,
            )),
            changes: watch::Sender::new(options.initial_resource_version),
            kinds: Mutex::new(KindRegistry::new(options.kinds.clone())),
            tokens: Mutex::new(tokens),
            logs: Mutex::new(LogStore::new(options.max_log_lines)),
            faults: Faults::new(),
            floods: Mutex::new(HashMap::new()),
            requests: Mutex::new(VecDeque::new()),
            options,
        });
        let server = ApiServer {
            shared,
            runtime: Some(runtime),
            acceptor: Mutex::new(None),
        };
        server.spawn_acceptor(listener);
        server
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// The bound address (the same across [`restart`](Self::restart)).
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    fn runtime(&self) -> &Runtime {
        self.runtime.as_ref().expect("runtime lives until drop")
    }

    fn spawn_acceptor(&self, listener: std::net::TcpListener) {
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let (stop, mut stop_rx) = watch::channel(false);
        let (stopped_tx, stopped) = std_mpsc::channel();
        let shared = self.shared.clone();
        let _guard = self.runtime().enter();
        let listener = TcpListener::from_std(listener).expect("listener into tokio");
        self.runtime().spawn(async move {
            loop {
                tokio::select! {
                    _ = stop_rx.wait_for(|stop| *stop) => break,
                    accepted = listener.accept() => {
                        // Accept errors (e.g. too many open files) are transient: keep serving.
                        if let Ok((stream, _)) = accepted {
                            let kill = shared.faults.kill_signal();
                            tokio::spawn(serve_connection(stream, shared.clone(), kill));
                        }
                    }
                }
            }
            drop(listener);
            let _ = stopped_tx.send(());
        });
        *lock(&self.acceptor) = Some(Acceptor { stop, stopped });
    }

    // ---- faults -------------------------------------------------------

    /// Cuts every open connection at once, mid-watch or mid-log-follow, with
    /// no terminating chunk. The listener keeps accepting.
    pub fn drop_connections(&self) {
        self.shared.faults.kill_connections();
    }

    /// While `true`, open streams send no more bytes and new requests get no
    /// answer; connections stay open. `false` lets everything flow again.
    pub fn stall(&self, stalled: bool) {
        self.shared.faults.set_stalled(stalled);
    }

    /// Answers the next `n` requests (any path) with `status` and a Status
    /// body (429 adds `Retry-After: 1`).
    pub fn fail_next(&self, n: usize, status: u16) {
        self.shared.faults.fail_next(n, status, None);
    }

    /// Like [`fail_next`](Self::fail_next) for requests whose path contains `path_contains`.
    pub fn fail_next_matching(&self, n: usize, status: u16, path_contains: &str) {
        self.shared
            .faults
            .fail_next(n, status, Some(path_contains.to_string()));
    }

    /// Makes the next `n` WATCH requests of `kind` fail as the real
    /// apiserver fails them: `410` as for a compacted resourceVersion (HTTP
    /// 200, then one ERROR event with a 410 `Expired` Status, then the end
    /// of the stream — cacher.Watch's `newErrWatcher`), any other code as an
    /// HTTP error with a Status body. LIST requests are not affected.
    pub fn fail_watches(&self, kind: &str, status: u16, n: usize) {
        self.shared.faults.fail_watches(kind, status, n);
    }

    /// LIST requests of `kind`, oldest first.
    pub fn list_requests(&self, kind: &str) -> Vec<RequestRecord> {
        lock(&self.shared.requests)
            .iter()
            .filter(|r| r.verb == RequestVerb::List && r.kind.as_deref() == Some(kind))
            .cloned()
            .collect()
    }

    /// Closes the listener and every connection: clients get "connection
    /// refused" until [`restart`](Self::restart). State is kept.
    pub fn stop(&self) {
        if let Some(acceptor) = lock(&self.acceptor).take() {
            acceptor.stop.send_replace(true);
            // The accept loop drops the listener, then acknowledges.
            let _ = acceptor.stopped.recv_timeout(Duration::from_secs(5));
        }
        self.shared.faults.kill_connections();
    }

    /// Re-binds the same port and serves again with all state kept, like an
    /// apiserver restart in front of the same etcd. Stops first if running.
    ///
    /// # Panics
    /// If the port cannot be bound again within 5 s.
    pub fn restart(&self) {
        self.stop();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match std::net::TcpListener::bind(self.shared.addr) {
                Ok(listener) => break listener,
                Err(err) if std::time::Instant::now() > deadline => {
                    panic!("re-binding {} failed: {err}", self.shared.addr)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        self.spawn_acceptor(listener);
    }

    // ---- auth ---------------------------------------------------------

    /// Accepts `token` as a bearer token with `access`; the user name in
    /// 403 messages is the token itself.
    pub fn add_token(&self, token: &str, access: Access) {
        self.add_user(token, token, access);
    }

    /// Accepts `token` for user `user` with `access`.
    pub fn add_user(&self, user: &str, token: &str, access: Access) {
        lock(&self.shared.tokens).add(token, user, access);
    }

    /// Forgets a token: requests with it get 401 from now on.
    pub fn remove_token(&self, token: &str) {
        lock(&self.shared.tokens).remove(token);
    }

    // ---- kinds --------------------------------------------------------

    /// Serves a kind (e.g. installs a CRD): it appears in discovery and its
    /// paths answer.
    pub fn serve_kind(&self, spec: KindSpec) {
        lock(&self.shared.kinds).serve(spec);
    }

    /// Stops serving a kind: gone from discovery, its paths answer 404; its
    /// objects stay stored. Returns whether the kind was known.
    pub fn unserve_kind(&self, api_version: &str, kind: &str) -> bool {
        lock(&self.shared.kinds).unserve(&type_key(api_version, kind))
    }

    // ---- objects ------------------------------------------------------

    /// Creates or replaces an object given `apiVersion`, `kind`,
    /// `metadata.name` and (namespaced kinds) `metadata.namespace`, and
    /// returns it as stored: `uid` and `creationTimestamp` set on create,
    /// a new cluster-wide `resourceVersion` on every write. Watches see ADDED
    /// or MODIFIED.
    ///
    /// Pods get container statuses (see [`pods`]); a replace without
    /// `status` keeps the stored status.
    ///
    /// # Panics
    /// If the kind is unknown or the object lacks a name or namespace: a
    /// mistake in the test, not an API error.
    pub fn apply(&self, object: Value) -> Value {
        let api_version = object["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let kind = object["kind"].as_str().unwrap_or_default().to_string();
        let key = type_key(&api_version, &kind);
        let namespaced = match lock(&self.shared.kinds).known(&key) {
            Some(spec) => spec.namespaced,
            None => panic!("apply: unknown kind {api_version} {kind}"),
        };
        let mut object = object;
        let is_pod = api_version == "v1" && kind == "Pod";
        let mut store = lock(&self.shared.store);
        if is_pod {
            let obj_key = ObjKey {
                namespace: object["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                name: object["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            };
            let previous = store.get(&key, &obj_key).map(|p| p.value(&key));
            pods::fill_status(&mut object, previous.as_ref(), &now_seconds());
        }
        let (stored, _) = match store.put(&key, namespaced, object) {
            Ok(done) => done,
            Err(err) => panic!("apply: {err}"),
        };
        let rv = store.rv();
        drop(store);
        let value = stored.value(&key);
        if is_pod {
            let (init, main) = pods::container_names(&value);
            let mut logs = lock(&self.shared.logs);
            for container in init.iter().chain(&main) {
                let log_key = (
                    stored.key.namespace.clone(),
                    stored.key.name.clone(),
                    container.clone(),
                );
                let instance = pods::restart_count(&value, container).unwrap_or(0);
                logs.ensure(log_key, instance, pods::is_terminated(&value, container));
            }
        }
        self.shared.changes.send_replace(rv);
        value
    }

    /// Floods every watch of `kind` in `namespace` opened from now on with
    /// generated MODIFIED events at `flood.rate` a second
    /// ([`super::flood`]); `None` ends flooding for new watches.
    pub fn flood(&self, api_version: &str, kind: &str, namespace: &str, flood: Option<Flood>) {
        let key = (type_key(api_version, kind), namespace.to_owned());
        let mut floods = lock(&self.shared.floods);
        match flood {
            Some(flood) => floods.insert(key, flood),
            None => floods.remove(&key),
        };
    }

    /// Deletes an object (`namespace` `""` for cluster-scoped kinds) and
    /// returns it as the DELETED event carries it: at a new resourceVersion.
    /// A deleted pod's containers stop, which ends their log follows.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let key = type_key(api_version, kind);
        let mut store = lock(&self.shared.store);
        let gone = store.remove(
            &key,
            &ObjKey {
                namespace: namespace.into(),
                name: name.into(),
            },
        )?;
        let rv = store.rv();
        drop(store);
        if api_version == "v1" && kind == "Pod" {
            lock(&self.shared.logs).remove_pod(namespace, name);
        }
        self.shared.changes.send_replace(rv);
        Some(gone.value(&key))
    }

    /// The stored object (`namespace` `""` for cluster-scoped kinds).
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = type_key(api_version, kind);
        let store = lock(&self.shared.store);
        store
            .get(
                &key,
                &ObjKey {
                    namespace: namespace.into(),
                    name: name.into(),
                },
            )
            .map(|o| o.value(&key))
    }

    /// Number of stored objects of a kind.
    pub fn count(&self, api_version: &str, kind: &str) -> usize {
        lock(&self.shared.store).count(&type_key(api_version, kind))
    }

    /// The cluster's current resourceVersion (of the last write).
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.store).rv()
    }

    /// The compaction point: watches and continue tokens from older versions get 410.
    pub fn compacted_resource_version(&self) -> u64 {
        lock(&self.shared.store).compacted()
    }

    /// Compacts the history up to the current resourceVersion (etcd
    /// compaction): watches, continue tokens and exact lists from older
    /// versions now get 410 Expired.
    pub fn compact(&self) {
        lock(&self.shared.store).compact();
        // Wake open watches so one that is now behind learns it.
        self.shared.changes.send_modify(|_| {});
    }

    // ---- pods and logs ------------------------------------------------

    fn log_key(namespace: &str, pod: &str, container: &str) -> (String, String, String) {
        (
            namespace.to_string(),
            pod.to_string(),
            container.to_string(),
        )
    }

    /// Appends a log line to the current instance of a container, stamped now.
    ///
    /// # Panics
    /// If the pod or container was never applied.
    pub fn append_log(&self, namespace: &str, pod: &str, container: &str, line: &str) {
        self.append_log_at(namespace, pod, container, jiff::Timestamp::now(), line);
    }

    /// Appends a log line with the given kubelet timestamp.
    ///
    /// # Panics
    /// If the pod or container was never applied.
    pub fn append_log_at(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        timestamp: jiff::Timestamp,
        line: &str,
    ) {
        self.append_logs(namespace, pod, container, [(timestamp, line.to_string())]);
    }

    /// Appends many lines at once (cheaper for benchmarks).
    ///
    /// # Panics
    /// If the pod or container was never applied.
    pub fn append_logs(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        lines: impl IntoIterator<Item = (jiff::Timestamp, String)>,
    ) {
        let lines = lines
            .into_iter()
            .map(|(timestamp, text)| LogLine { timestamp, text });
        let known =
            lock(&self.shared.logs).append(&Self::log_key(namespace, pod, container), lines);
        assert!(
            known,
            "append_log: no container {container} in pod {namespace}/{pod}"
        );
    }

    fn update_pod(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        change: fn(&mut Value, &str, &str) -> bool,
    ) {
        let mut value = self
            .get("v1", "Pod", namespace, pod)
            .unwrap_or_else(|| panic!("no pod {namespace}/{pod}"));
        assert!(
            change(&mut value, container, &now_seconds()),
            "no container {container} in pod {namespace}/{pod}"
        );
        self.apply(value);
    }

    /// Restarts a container: its current log becomes the previous one
    /// (`previous=true`), `restartCount` + 1, and watches see the pod
    /// MODIFIED. A follow of the old instance ends after its last line.
    ///
    /// # Panics
    /// If the pod or container does not exist.
    pub fn restart_container(&self, namespace: &str, pod: &str, container: &str) {
        self.update_pod(namespace, pod, container, pods::restart);
        lock(&self.shared.logs).restart(&Self::log_key(namespace, pod, container));
    }

    /// Terminates a container (exit code 0): its state becomes `terminated`,
    /// watches see the pod MODIFIED, and a follow ends after the remaining lines.
    ///
    /// # Panics
    /// If the pod or container does not exist.
    pub fn terminate_container(&self, namespace: &str, pod: &str, container: &str) {
        self.update_pod(namespace, pod, container, pods::terminate);
        lock(&self.shared.logs).terminate(&Self::log_key(namespace, pod, container));
    }

    // ---- observability ------------------------------------------------

    /// Every request so far (the last `max_request_records`), oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.requests).iter().cloned().collect()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    fn count_requests(&self, verb: RequestVerb, kind: &str) -> usize {
        lock(&self.shared.requests)
            .iter()
            .filter(|r| r.verb == verb && r.kind.as_deref() == Some(kind))
            .count()
    }

    /// LIST requests of a kind (e.g. `"Pod"`), whatever their answer.
    pub fn list_count(&self, kind: &str) -> usize {
        self.count_requests(RequestVerb::List, kind)
    }

    /// WATCH requests of a kind, whatever their answer.
    pub fn watch_count(&self, kind: &str) -> usize {
        self.count_requests(RequestVerb::Watch, kind)
    }

    /// `pods/log` requests, oldest first.
    pub fn log_requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.requests)
            .iter()
            .filter(|r| r.verb == RequestVerb::Log)
            .cloned()
            .collect()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(runtime) = self.runtime.take() {
            // Safe inside an async test too, unlike dropping the runtime.
            runtime.shutdown_background();
        }
    }
}

fn type_key(api_version: &str, kind: &str) -> TypeKey {
    TypeKey {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
    }
}

/// Serves one connection until it ends or the server cuts every connection.
async fn serve_connection(stream: TcpStream, shared: Arc<Shared>, mut kill: watch::Receiver<u64>) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(routes::handle(shared, req).await) }
    });
    let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = connection => {}
        // Dropping the connection closes the socket mid-body: no terminating chunk.
        _ = kill.changed() => {}
    }
}

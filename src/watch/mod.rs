//! Watching clusters (SPEC §1, §3): one OS thread per (context, kind), each
//! with its own current-thread tokio runtime and its own `kube::Client`, so
//! a slow, failing, forbidden or unreachable cluster — or kind — never
//! delays another. Each thread LISTs, then WATCHes from the LIST's
//! resourceVersion, and appends every change to the spool as a
//! [`ResourceEvent`](crate::record::ResourceEvent).
//!
//! - [`spawn_kind_watcher`] starts one watch; [`WatcherHandle`] reports
//!   where it stands ([`WatchStatus`]) and joins it.
//! - `engine`: the one list/watch engine (an enum state machine, and the one
//!   place that decides how each failure is retried), driven by a handler.
//!   Two handlers use it: `kind` here, and the log followers' pods watch
//!   ([`crate::logs`]), so every LIST/WATCH rule of SPEC §3 holds for both.
//! - `kind`: the handler of a configured kind: spools changes, diffs
//!   re-lists against the state.
//! - `state`: the on-disk (uid → resourceVersion, last known object) state
//!   a re-list is diffed against, one redb file per watch.
//! - `object`: reading objects, inserting the `apiVersion`/`kind` that LIST
//!   items of built-in kinds lack.
//!
//! May import: `kube_api` (requests), `spool`, `record`, `redact`,
//! `metrics`, `backoff`, `config`, `contexts`, `private_fs`. Imported by: `app`, `logs` (the engine).
//!
//! Durability order: a change is appended to the spool first and recorded
//! in the state after, so a crash can only re-emit a change, never lose one.

pub(crate) mod engine;
mod error;
mod kind;
mod object;
mod state;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info_span, warn};

use crate::backoff::Backoff;
use crate::config::{ResourceConfig, ResourceKind, SnsConfig};
use crate::contexts::ClusterTarget;
use crate::kube_api::{Selectors, error_chain};
use crate::metrics::{WatchLabels, metrics};
use crate::redact::RedactionKey;
use crate::spool::SpoolWriter;

use engine::{Engine, Source};
use kind::KindHandler;
use object::ObjectRules;

pub use error::WatchError;
pub use state::{KindState, StateError};

/// A kind to watch: its `resources:` entry, and the key of its redaction
/// markers.
#[derive(Debug, Clone)]
pub struct WatchedKind {
    pub config: ResourceConfig,
    /// The installation's key ([`RedactionKey::load_or_create`]); converting
    /// from a bare kind or entry takes the process's ephemeral key.
    pub redaction_key: RedactionKey,
    /// The SNS configuration when it has `routes`: each event is spooled
    /// once per topic it goes to.
    pub routes: Option<Arc<SnsConfig>>,
}

impl WatchedKind {
    pub fn new(config: ResourceConfig, redaction_key: RedactionKey) -> WatchedKind {
        WatchedKind {
            config,
            redaction_key,
            routes: None,
        }
    }

    /// Routes events to the topics of `sns` (when it has routes).
    pub fn with_routes(mut self, sns: Option<Arc<SnsConfig>>) -> WatchedKind {
        self.routes = sns.filter(|sns| !sns.routes.is_empty());
        self
    }
}

impl From<ResourceConfig> for WatchedKind {
    fn from(config: ResourceConfig) -> WatchedKind {
        WatchedKind::new(config, RedactionKey::ephemeral())
    }
}

impl From<ResourceKind> for WatchedKind {
    fn from(kind: ResourceKind) -> WatchedKind {
        ResourceConfig::of(kind).into()
    }
}

/// The state directory beside the spool: `{spool.dir}/state`.
pub fn state_dir_for(spool_dir: &Path) -> PathBuf {
    spool_dir.join("state")
}

/// Tunables of every watch. `Default` gives production values; tests
/// shorten them.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Items per LIST page (`limit`) at most.
    pub page_size: u32,
    /// Bytes a LIST page should hold at most: pages of large objects ask
    /// for fewer items ([`engine::next_page_limit`]), so a page's memory (its
    /// body, the parsed items and their records) does not grow with the
    /// size of the objects.
    pub max_page_bytes: usize,
    /// `timeoutSeconds` of each WATCH: the server ends it cleanly after
    /// this and the watcher resumes from the last resourceVersion. At most
    /// 290 s (kube requires < 295 s, SPEC §10); at least 1 s.
    pub watch_timeout: Duration,
    /// The idle deadline: a watch that sends no byte for this long is taken
    /// for a silently dropped connection (a load balancer's, SPEC §10) and
    /// reopened. Keep it above `watch_timeout`: a quiet watch may send
    /// nothing (not even a bookmark) until the server ends it. Default:
    /// `watch_timeout` + 30 s.
    pub idle_timeout: Duration,
    /// Deadline of a discovery request, a LIST page (headers and body) and
    /// the response headers of a WATCH.
    pub request_timeout: Duration,
    /// First retry delay of transient errors (exponential, jittered).
    pub backoff_initial: Duration,
    /// Cap of retry delays, `Retry-After` included (SPEC §3: about 30 s).
    pub backoff_max: Duration,
    /// Wait before resolving again a kind that is not served or is
    /// cluster-scoped (a CRD may be installed later).
    pub unserved_retry: Duration,
    /// The state store is made durable (fsync) at most this often, and at
    /// most this long after a change (a timer, for quiet watches).
    pub state_sync_interval: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            page_size: 500,
            max_page_bytes: crate::config::MemoryConfig::default().list_page as usize,
            watch_timeout: Duration::from_secs(290),
            idle_timeout: Duration::from_secs(290 + 30),
            request_timeout: Duration::from_secs(60),
            // Backoff::for_api_server's figures.
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            unserved_retry: Duration::from_secs(300),
            // SPEC §3 allows the state to lag the spool by 1 s; every
            // change in that lag is sent again after a kill -9, so a short
            // interval keeps duplicates to what was in flight. One fsync a
            // 100 ms per busy watch, none for a quiet one.
            state_sync_interval: Duration::from_millis(100),
        }
    }
}

impl WatchOptions {
    /// No byte for this long means the watch connection is dead.
    pub fn idle_deadline(&self) -> Duration {
        self.idle_timeout
    }

    pub(crate) fn backoff(&self) -> Backoff {
        Backoff::new(
            self.backoff_initial,
            self.backoff_max.max(self.backoff_initial),
        )
    }
}

/// Where one watch stands, for health and readiness.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchStatus {
    /// `starting`, `resolving`, `listing`, `sweeping`, `watching`,
    /// `waiting` (a retry delay), `stopped`.
    pub phase: &'static str,
    /// A LIST completed in this process: the watch is in sync.
    pub synced: bool,
    /// The last failure (reason label and message), cleared when a LIST completes.
    pub last_error: Option<String>,
    /// The version the watch has reached.
    pub resource_version: Option<String>,
}

/// The running thread of one (context, kind) watch.
pub struct WatcherHandle {
    pub context: String,
    pub namespace: String,
    pub kind: ResourceKind,
    status: Arc<Mutex<WatchStatus>>,
    thread: JoinHandle<()>,
}

impl WatcherHandle {
    pub fn status(&self) -> WatchStatus {
        self.status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Whether the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the thread to end (after `shutdown` was cancelled). A
    /// panic inside it is reported as an error of this watch only.
    pub fn join(self) -> Result<(), String> {
        self.thread.join().map_err(|_| {
            format!(
                "the watch thread of {} {} panicked",
                self.context, self.kind
            )
        })
    }
}

/// Starts the watch of `kind` in `target`'s namespace on its own thread.
///
/// - `sink`: where every change goes, one record per event, batched per
///   LIST page and per chunk of watch lines; a full spool makes the watch
///   wait (it may then fall behind and re-list).
/// - `state_dir`: the directory of the re-list diff state (usually
///   [`state_dir_for`] the spool directory); one file per (context,
///   namespace, kind) inside it. `None`: the state is kept in memory, so a
///   restart starts with a plain initial LIST (all ADDED, no deletions
///   detected across the restart).
/// - `shutdown`: cancelling it ends the thread promptly (the state is made
///   durable first); join it with [`WatcherHandle::join`].
///
/// Fails only if the thread cannot be spawned; everything else is retried
/// inside, reported through logs, metrics and [`WatcherHandle::status`].
pub fn spawn_kind_watcher(
    target: ClusterTarget,
    kind: impl Into<WatchedKind>,
    sink: SpoolWriter,
    state_dir: Option<PathBuf>,
    options: WatchOptions,
    shutdown: CancellationToken,
) -> std::io::Result<WatcherHandle> {
    let status = Arc::new(Mutex::new(WatchStatus {
        phase: "starting",
        ..WatchStatus::default()
    }));
    let handle_status = Arc::clone(&status);
    let watched: WatchedKind = kind.into();
    let kind = watched.config.kind.clone();
    let context = target.context.clone();
    let namespace = target.namespace.clone();
    let thread_kind = watched;
    let name = format!("watch-{}-{}", target.context, kind.kind);
    let span = info_span!(
        "watch",
        context = %target.context,
        namespace = %target.namespace,
        kind = %kind,
    );
    let thread = crate::runtime::spawn_with_runtime(name, span, move || {
        run(
            target,
            thread_kind,
            sink,
            state_dir,
            options,
            status,
            shutdown,
        )
    })?;
    Ok(WatcherHandle {
        context,
        namespace,
        kind,
        status: handle_status,
        thread,
    })
}

async fn run(
    target: ClusterTarget,
    watched: WatchedKind,
    sink: SpoolWriter,
    state_dir: Option<PathBuf>,
    options: WatchOptions,
    status: Arc<Mutex<WatchStatus>>,
    shutdown: CancellationToken,
) {
    let WatchedKind {
        config,
        redaction_key,
        routes,
    } = watched;
    let kind = config.kind.clone();
    let labels = WatchLabels {
        context: target.context.clone(),
        namespace: target.namespace.clone(),
        kind: kind.kind.clone(),
    };
    crate::telemetry::tag_thread(&[
        ("context", &target.context),
        ("cluster", &target.server_url),
        ("kind", &kind.to_string()),
    ]);
    let set_failed = |reason: &str, message: String| {
        let mut status = status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        status.last_error = Some(format!("{reason}: {message}"));
    };
    let Some(client) =
        engine::connect(&target.client_config, &options, &labels, &status, &shutdown).await
    else {
        return;
    };
    // The state store: retried with backoff (a full disk may clear).
    let mut backoff = options.backoff();
    let state = loop {
        let opened = match &state_dir {
            Some(dir) => {
                let path = state::path_in(
                    dir,
                    &target.context,
                    &target.namespace,
                    &kind.api_version,
                    &kind.kind,
                );
                KindState::open(&path, options.state_sync_interval)
            }
            None => KindState::in_memory(options.state_sync_interval),
        };
        match opened {
            Ok(state) => break state,
            Err(err) => {
                let err = WatchError::State(err);
                let delay = backoff.next_delay();
                metrics()
                    .watch_errors
                    .get_or_create(&labels.reason(err.metric_label()))
                    .inc();
                warn!(error = %error_chain(&err), retry_in = ?delay, "cannot open the watch state");
                set_failed(err.metric_label(), error_chain(&err));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    };
    let handler = KindHandler::new(
        target.context.clone(),
        target.namespace.clone(),
        target.server_url.clone(),
        sink,
        state,
        labels.clone(),
        options.page_size as usize,
    )
    .with_rules(
        config.event_types,
        ObjectRules::new(&config.redaction, redaction_key, &config.ignore_changes_in),
    )
    .with_routes(routes);
    let source = Source::Discover {
        kind,
        namespace: target.namespace.clone(),
    };
    let selectors = Selectors {
        label: config.label_selector,
        field: config.field_selector,
    };
    Engine::new(client, source, options, labels, status, handler)
        .with_selectors(selectors)
        .run(shutdown)
        .await;
}

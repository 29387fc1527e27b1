//! Start-up and shutdown: the order in which the parts are built and stopped.
//!
//! Start-up: resolve every context (configuration errors end here, exit 2),
//! open the spools, start the publisher thread, then one watcher thread per
//! (context, kind) and one log follower per context.
//!
//! Shutdown (SIGTERM; SPEC §6, STYLE 9), within Kubernetes' default 30 s
//! grace period:
//! 1. stop the watchers and followers and join their threads (they stop
//!    appending; what they appended is in the spool);
//! 2. stop the publisher: it takes no new records, awaits requests in flight
//!    until its own deadline, and leaves everything unacknowledged in the
//!    spool for the next start;
//! 3. sync the spools to disk.
//!
//! Spool directory layout (`spool.dir`): `events/` and `logs/` are two
//! spools, each bounded by half of `spool.max_bytes`, so a flood of log
//! lines never holds back resource events; `state/` holds the watchers'
//! re-list state, `checkpoints/` the log followers' positions,
//! `dead-letter/` the events SNS would not take (and `dead-letter/replay/`
//! those queued to go back into `events/`).
//!
//! May import every module: it is the one place that wires them (the
//! CloudWatch lookup into the followers, the spools into watchers and the
//! publisher thread).

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{Config, ConfigError, LogSink, SpoolConfig};
use crate::contexts::{self, ClusterTarget, Surroundings};
use crate::logs::checkpoint::{CheckpointError, CheckpointStore};
use crate::logs::{self, FollowLimit, LastEventLookup, LogFollowOptions};
use crate::publish::aws::AwsOptions;
use crate::publish::cloudwatch::{self, LogPublisherOptions, LogSinkConfig, LogTarget};
use crate::publish::dead_letter::{self, DeadLetters};
use crate::publish::sns::{PublisherOptions, Sink};
use crate::publish::{self, PublisherError};
use crate::spool::{Spool, SpoolError, SpoolOptions};
use crate::watch::{self, WatchOptions};

/// How long shutdown waits for the watcher threads. The publisher has its
/// own deadline after them; together they stay inside the 30 s Kubernetes
/// gives by default.
pub const WATCHERS_GRACE: Duration = Duration::from_secs(10);

/// How long shutdown waits for the publisher thread beyond its own
/// in-flight deadline.
pub const PUBLISHER_GRACE: Duration = Duration::from_secs(15);

/// Why `run` could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is wrong: fix it and start again (exit code 2).
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    /// A spool (or the state beside it) cannot be opened: locked by another
    /// process, unwritable, or not a directory. Its message names the
    /// directory; its source is the operating system's error.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The followers' checkpoint store cannot be opened.
    #[error(transparent)]
    Checkpoints(#[from] CheckpointError),
    /// The redaction key beside the spool cannot be read or created.
    #[error(transparent)]
    RedactionKey(#[from] crate::redact::KeyError),
    /// The process could not set itself up (threads, signal handlers).
    #[error("start-up failed")]
    Io(#[from] std::io::Error),
    /// The HTTP endpoint's address cannot be bound (in use, not local).
    #[error("cannot listen on {addr} (http.listen, HTTP_LISTEN or --http-listen)")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// How often queued dead-letter replays are looked for.
const REPLAY_LOOK_INTERVAL: Duration = Duration::from_secs(5);

/// Ingests queued dead-letter replays every [`REPLAY_LOOK_INTERVAL`] until
/// `shutdown`.
async fn ingest_replays_until(
    spool_dir: &Path,
    events: crate::spool::SpoolWriter,
    shutdown: &CancellationToken,
) {
    loop {
        let dir = spool_dir.to_owned();
        let writer = events.clone();
        // Counted and logged on the blocking thread itself: a shutdown that
        // drops this await must not leave a done replay unsaid.
        let looked = tokio::task::spawn_blocking(move || {
            match dead_letter::ingest_replays(&dir, &writer) {
                Ok(0) => {}
                Ok(records) => {
                    crate::metrics::metrics()
                        .dead_letters_replayed
                        .inc_by(records as u64);
                    info!(records, "dead letters put back into the events spool");
                }
                Err(err) => {
                    warn!(error = %crate::kube_api::error_chain(&err), "cannot replay dead letters; trying again later")
                }
            }
        })
        .await;
        if let Err(err) = looked {
            warn!(error = %err, "the dead-letter replay task failed");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(REPLAY_LOOK_INTERVAL) => {}
        }
    }
}

/// Resolves every context of `config` and checks what can only be checked
/// against the kubeconfig (unknown contexts, log group collisions).
pub async fn resolve_targets(
    config: &Config,
    surroundings: &Surroundings,
) -> Result<Vec<ClusterTarget>, ConfigError> {
    let targets = contexts::resolve(&config.clusters, surroundings).await?;
    if let Some(logs) = &config.logs {
        contexts::check_distinct_log_groups(&targets, &logs.prefix)?;
    }
    Ok(targets)
}

/// The two spools: resource events and log lines.
struct Spools {
    events: Spool,
    logs: Option<Spool>,
}

impl Spools {
    fn open(config: &SpoolConfig, with_logs: bool) -> Result<Spools, SpoolError> {
        let share = if with_logs {
            config.max_bytes / 2
        } else {
            config.max_bytes
        };
        let open = |name: &str| match &config.dir {
            Some(dir) => Spool::open(dir.join(name), SpoolOptions::with_max_bytes(share)),
            None => Ok(Spool::in_memory(share)),
        };
        let metrics = crate::metrics::metrics();
        metrics
            .spool_max_bytes
            .set(i64::try_from(share).unwrap_or(i64::MAX));
        if with_logs {
            metrics
                .log_spool_max_bytes
                .set(i64::try_from(share).unwrap_or(i64::MAX));
        }
        Ok(Spools {
            events: open("events")?,
            logs: if with_logs { Some(open("logs")?) } else { None },
        })
    }

    /// Refuses further appends and writes what is held to disk.
    fn close(&self) {
        for spool in std::iter::once(&self.events).chain(&self.logs) {
            spool.close();
            if let Err(err) = spool.sync() {
                error!(error = %err, "syncing the spool failed; records appended since the last sync may be lost on power loss");
            }
        }
    }
}

/// Runs kubeherald until `shutdown` is cancelled, then stops in the order of
/// the module docs and returns. Must be called inside a tokio runtime.
pub async fn run(
    config: Config,
    surroundings: Surroundings,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let targets = resolve_targets(&config, &surroundings).await?;
    info!(
        contexts = targets.len(),
        kinds = config.resources.len(),
        sns_topic = config.sns.as_ref().map(|s| s.topic_arn.as_str()),
        log_prefix = config.logs.as_ref().map(|l| l.prefix.as_str()),
        spool = config
            .spool
            .dir
            .as_deref()
            .map(Path::display)
            .map(tracing::field::display),
        "configuration loaded"
    );
    for target in &targets {
        info!(
            context = %target.context,
            cluster = %target.server_url,
            cluster_name = %target.cluster_name,
            namespace = %target.namespace,
            "context resolved"
        );
        for reason in target.insecure_reasons() {
            crate::metrics::metrics()
                .insecure_contexts
                .get_or_create(&crate::metrics::ContextReasonLabels {
                    context: target.context.clone(),
                    reason: reason.to_owned(),
                })
                .set(1);
            warn!(
                context = %target.context,
                cluster = %target.server_url,
                reason,
                "this context is reached without TLS verification: its traffic (tokens included) can be read or altered on the way"
            );
        }
    }

    let spools = Spools::open(&config.spool, config.logs.is_some())?;
    // Bound before any thread starts: a port in use is a start-up error.
    let listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.http_listen,
            source,
        })?;
    let listening = listener.local_addr().map_err(StartError::Io)?;
    info!(addr = %listening, "HTTP endpoint listening: /metrics, /healthz, /readyz");
    let spool_dir = config.spool.dir.as_deref();
    let checkpoints = match &config.logs {
        Some(_) => {
            Some(CheckpointStore::for_spool_dir(spool_dir).map_err(StartError::Checkpoints)?)
        }
        None => None,
    };

    // One limiter for the whole process: GetLogEvents' quota (about 25
    // requests/s) is per account, shared by the followers and the sink.
    let lookup_limiter = config
        .logs
        .as_ref()
        .map(|logs| cloudwatch::LookupLimiter::new(logs.lookup_rate_per_second));
    let publisher_stop = CancellationToken::new();
    let log_sink = match (&spools.logs, &checkpoints) {
        (Some(logs_spool), Some(checkpoints)) => Some((
            logs_spool.reader()?,
            LogSinkConfig {
                target: LogTarget::from_config(
                    config.logs.as_ref(),
                    config.aws_region.as_deref().unwrap_or_default(),
                ),
                checkpoints: checkpoints.clone(),
                options: LogPublisherOptions {
                    lookups: lookup_limiter
                        .clone()
                        .unwrap_or_else(|| LogPublisherOptions::default().lookups),
                    max_buffered_bytes: config.memory.logs_in_flight as usize,
                    ..LogPublisherOptions::default()
                },
            },
        )),
        _ => None,
    };
    // The publisher thread (SPEC §1): one runtime, SNS and CloudWatch Logs
    // requests in flight side by side.
    let publisher = publish::spawn_publisher_thread(
        spools.events.reader()?,
        Sink::from_config(config.sns.as_ref()),
        log_sink,
        PublisherOptions {
            dead_letters: DeadLetters::for_spool_dir(spool_dir),
            max_buffered_bytes: config.memory.sns_in_flight as usize,
            ..PublisherOptions::default()
        },
        publisher_stop.clone(),
    )?;

    // Markers must stay the same across restarts (a re-list would see every
    // Secret changed otherwise): the key lives beside the spool.
    let redaction_key = match spool_dir {
        Some(dir) if config.resources.iter().any(|r| !r.redaction.is_off()) => {
            crate::redact::RedactionKey::load_or_create(&crate::redact::key_path(dir))?
        }
        _ => crate::redact::RedactionKey::ephemeral(),
    };
    let routes = config.sns.clone().map(std::sync::Arc::new);
    let watchers_stop = shutdown.child_token();
    let watch_options = WatchOptions {
        max_page_bytes: config.memory.list_page as usize,
        ..WatchOptions::default()
    };
    let mut watchers = Vec::new();
    for target in &targets {
        for resource in &config.resources {
            watchers.push(watch::spawn_kind_watcher(
                target.clone(),
                watch::WatchedKind::new(resource.clone(), redaction_key.clone())
                    .with_routes(routes.clone()),
                spools.events.writer(),
                spool_dir.map(watch::state_dir_for),
                watch_options.clone(),
                watchers_stop.clone(),
            )?);
        }
    }
    let mut followers = Vec::new();
    if let (Some(logs_config), Some(logs_spool), Some(checkpoints)) =
        (&config.logs, &spools.logs, &checkpoints)
    {
        // Without CloudWatch there is no stream to look up: a follow without
        // a checkpoint starts at the container's first line.
        let lookup: Option<std::sync::Arc<dyn LastEventLookup>> = match logs_config.sink {
            LogSink::CloudWatch => {
                let region = config.aws_region.as_deref().unwrap_or_default();
                Some(std::sync::Arc::new(cloudwatch::CloudWatchLookup::new(
                    cloudwatch::logs_destinations(
                        &logs_config.destinations(),
                        region,
                        &AwsOptions::default(),
                    )
                    .await,
                    lookup_limiter.clone().unwrap_or_else(|| {
                        cloudwatch::LookupLimiter::new(logs_config.lookup_rate_per_second)
                    }),
                )))
            }
            LogSink::Stdout => {
                info!("log lines go to stdout as JSON lines (logs.sink: stdout, or no AWS region)");
                None
            }
        };
        // The bound of open follows is per cluster (SPEC §4): targets that
        // are namespaces of one API server share one limit.
        let mut limits: std::collections::HashMap<&str, FollowLimit> = Default::default();
        for target in &targets {
            let limit = limits
                .entry(target.server_url.as_str())
                .or_insert_with(|| FollowLimit::new(logs_config.max_streams_per_cluster))
                .clone();
            let options = LogFollowOptions {
                // With a durable spool, appended lines will be shipped: resume
                // after them, not after the (lagging) shipped checkpoint.
                resume_from_appended: logs_spool.dir().is_some(),
                last_event: lookup.clone(),
                limit: Some(limit),
                watch: watch_options.clone(),
                ..LogFollowOptions::default()
            };
            followers.push(logs::spawn_log_follower(
                target.clone(),
                logs_config.clone(),
                logs_spool.writer(),
                checkpoints.clone(),
                options,
                watchers_stop.clone(),
            )?);
        }
    }
    if config.resources.is_empty() && config.logs.is_none() {
        warn!(
            "nothing to forward: configure `resources` (events to SNS) and/or `logs` (pod logs to CloudWatch)"
        );
    }

    // Every configured context has series from the start, failed ones
    // included (SPEC §6): a dashboard shows a context that never worked.
    for target in &targets {
        for resource in &config.resources {
            let labels = crate::metrics::WatchLabels {
                context: target.context.clone(),
                namespace: target.namespace.clone(),
                kind: resource.kind.kind.clone(),
            };
            for event_type in ["ADDED", "MODIFIED", "DELETED"] {
                let _series = crate::metrics::metrics()
                    .events_observed
                    .get_or_create(&labels.event(event_type));
            }
        }
    }
    let probes: crate::http::SharedProbes =
        std::sync::Arc::new(std::sync::Mutex::new(crate::http::Probes {
            watchers,
            followers,
            publisher: Some(publisher),
            spool_dir: spool_dir.map(Path::to_owned),
        }));
    let http_stop = CancellationToken::new();
    tokio::spawn(crate::http::serve(
        listener,
        std::sync::Arc::clone(&probes),
        http_stop.clone(),
    ));

    // Dead letters queued for a replay (`kubeherald dead-letter replay`)
    // go back into the events spool, now and while running.
    match spool_dir {
        Some(dir) => {
            let events = spools.events.writer();
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = ingest_replays_until(dir, events, &shutdown) => {}
            }
        }
        None => shutdown.cancelled().await,
    }
    {
        let probes = probes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        info!(
            watchers = probes.watchers.len(),
            log_followers = probes.followers.len(),
            "stopping watchers"
        );
    }
    watchers_stop.cancel();
    let (watchers, followers, publisher) = {
        let mut probes = probes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (
            std::mem::take(&mut probes.watchers),
            std::mem::take(&mut probes.followers),
            probes.publisher.take(),
        )
    };
    let joined = tokio::task::spawn_blocking(move || {
        for handle in watchers {
            if let Err(err) = handle.join() {
                error!(error = %err, "a watcher thread failed");
            }
        }
        for handle in followers {
            if let Err(err) = handle.join() {
                error!(error = %err, "a log follower thread failed");
            }
        }
    });
    if tokio::time::timeout(WATCHERS_GRACE, joined).await.is_err() {
        warn!(grace = ?WATCHERS_GRACE, "watcher threads did not stop within the grace period");
    }

    info!("stopping the publisher");
    publisher_stop.cancel();
    let joined = tokio::task::spawn_blocking(move || publisher.map(publish::PublisherThread::join));
    match tokio::time::timeout(PUBLISHER_GRACE, joined).await {
        Ok(Ok(Some(Err(PublisherError::Panicked)))) | Ok(Err(_)) => {
            error!("the publisher thread panicked")
        }
        // Any other error was logged by the thread when it happened.
        Ok(Ok(_)) => {}
        Err(_) => {
            warn!(grace = ?PUBLISHER_GRACE, "the publisher did not stop within the grace period")
        }
    }
    spools.close();
    if let Some(checkpoints) = &checkpoints
        && let Err(err) = checkpoints.flush()
    {
        error!(error = %err, "writing the log checkpoints failed; lines may be shipped twice after a restart");
    }
    http_stop.cancel();
    info!("stopped");
    Ok(())
}

//! Process-wide diagnostics: `tracing` to stderr and, when `SENTRY_DSN` is
//! set, Sentry.
//!
//! Logs go to stderr because stdout carries data: without an SNS topic or
//! CloudWatch, events and log lines are written there as JSON lines.
//! Human-readable format on a terminal, JSON lines in a pod (SPEC §6).
//!
//! Imports nothing of kubeherald; `main` initialises it, the watcher and
//! follower threads tag their Sentry scope through it.

use std::io::IsTerminal;

use sentry::integrations::tracing::{BreadcrumbLayer, ErrorLayer};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    Text,
    Json,
}

/// Keeps Sentry's transport alive; dropping it flushes pending reports, so
/// `main` holds it until it returns (never `process::exit` past it).
pub struct TelemetryGuard {
    _sentry: Option<sentry::ClientInitGuard>,
}

/// Installs the global subscriber and Sentry. Call once, first thing in
/// `main`, before any tokio runtime exists (sentry's requirement, SPEC §10).
/// The filter comes from `RUST_LOG` (default `info`).
pub fn init(format: LogFormat, sentry_dsn: Option<&str>) -> TelemetryGuard {
    let sentry = sentry_dsn.map(|dsn| {
        let mut options = sentry::ClientOptions::default();
        options.release = Some(concat!("kubeherald@", env!("CARGO_PKG_VERSION")).into());
        // Object bodies and tokens never go into events; keep the SDK from
        // adding request data or user details of its own.
        options.send_default_pii = false;
        sentry::init((dsn, options))
    });
    // ERROR events become Sentry error events, with the INFO/WARN lines
    // before them as breadcrumbs; span fields (context, kind) come along.
    let sentry_layers = sentry.as_ref().map(|_| {
        ErrorLayer::new()
            .with_filter(LevelFilter::ERROR)
            .and_then(BreadcrumbLayer::new().with_filter(LevelFilter::INFO))
    });
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let fmt_layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt_layer = if json {
        fmt_layer
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed()
    } else {
        fmt_layer.boxed()
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(sentry_layers)
        .init();
    TelemetryGuard { _sentry: sentry }
}

/// Tags every Sentry event reported from the calling thread (SPEC §6:
/// `context`, `cluster`, `kind`): each watcher and follower has its own
/// thread, and Sentry's hub is per thread. A no-op without `SENTRY_DSN`.
pub fn tag_thread(tags: &[(&str, &str)]) {
    sentry::configure_scope(|scope| {
        for (key, value) in tags {
            scope.set_tag(key, value);
        }
    });
}

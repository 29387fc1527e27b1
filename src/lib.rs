//! kubeherald: a multi-cluster Kubernetes event and log hub.
//!
//! One process reads a kubeconfig with many contexts and, for each context
//! (a cluster plus a namespace), forwards resource changes to an SNS topic
//! and pod logs to CloudWatch Logs. `main` only wires; every part is a module
//! with an API that tests drive:
//!
//! - [`config`]: the YAML configuration and its validation;
//! - [`contexts`]: kubeconfig contexts → (cluster, namespace) targets;
//! - [`kube_api`]: the raw Kubernetes API requests (discovery, LIST, WATCH,
//!   GET, `pods/log`) and their one error type;
//! - [`watch`]: the one list/watch engine, and one thread per (context,
//!   kind) driving it: LIST, then WATCH, re-list diffs;
//! - [`spool`]: the durable, bounded hand-off from watchers to the publisher;
//! - [`record`]: a resource change and a log line as they cross the spools;
//! - [`redact`]: Secret values and configured paths replaced by keyed hashes,
//!   and the change fingerprint of `ignore_changes_in`;
//! - [`logs`]: one thread per context following every container's log, and
//!   the checkpoints that make resumes exact;
//! - [`publish`]: the publisher thread, one folder per sink (SNS, CloudWatch
//!   Logs, stdout), service limits enforced while requests are built;
//! - [`metrics`]: the Prometheus registry and metric names;
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`;
//! - [`names`]: CloudWatch log group and stream naming;
//! - [`private_fs`]: data files created 0600 in 0700 directories;
//! - [`backoff`]: the one retry-delay policy;
//! - [`runtime`]: one OS thread with its own current-thread runtime;
//! - [`app`]: start-up and shutdown order;
//! - [`check`]: `kubeherald check`, what `run` needs verified first;
//! - [`shutdown`], [`telemetry`]: signals, logging and Sentry.
#![forbid(unsafe_code)]

pub mod app;
pub mod backoff;
pub mod check;
pub mod config;
pub mod contexts;
pub mod http;
pub mod kube_api;
pub mod logs;
pub mod metrics;
pub mod names;
pub mod private_fs;
pub mod publish;
pub mod record;
pub mod redact;
pub mod runtime;
pub mod shutdown;
pub mod spool;
pub mod telemetry;
pub mod watch;

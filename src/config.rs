//! Configuration: one YAML document, validated once at start-up.
//!
//! Three shapes load (SPEC §2):
//!
//! - the **event forwarder's** file (`resources:` only), unchanged;
//! - the **log forwarder's** file (`prefix`, `cluster`, `namespaces`,
//!   `exclude_labels`, `retention_days` at the top level), unchanged;
//! - the **unified** file, which adds `kubeconfig`, `contexts`, `sns`, `logs`
//!   and `spool` sections and may carry the seed fields beside them.
//!
//! The seed tools' environment variables keep their meaning and override the
//! same setting in the file: `SNS_TOPIC_ARN`, `SPOOL_DIR`, `KUBECONFIG`.
//!
//! Every error names the field (as a dotted path) and says what would be
//! accepted, so a wrong config fails at start-up with one line.
//!
//! Imports nothing of kubeherald: every other module may import it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Deserialize;

mod select;

pub use select::{Glob, ObjectPath, Step, check_field_selector, check_label_selector};

/// Retention periods CloudWatch Logs accepts, in days (PutRetentionPolicy,
/// `retentionInDays`: any other value is refused with InvalidParameterException).
pub const CLOUDWATCH_RETENTION_DAYS: [u32; 22] = [
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];

/// The log forwarder's default retention (seed 000: "default: 30").
pub const DEFAULT_RETENTION_DAYS: u32 = 30;

/// Default bound of the spool on disk (SPEC §2 example: `max_bytes: 2GiB`).
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// Default bound of concurrently followed log streams per cluster. Every
/// followed log holds its own HTTP/1.1 connection to the API server (SPEC §10),
/// so the bound protects the API server and kubeherald alike.
pub const DEFAULT_MAX_LOG_STREAMS_PER_CLUSTER: usize = 200;
/// `logs.lookup_rate_per_second` when not set: CloudWatch `GetLogEvents`
/// allows about 25 requests per second per account; 10 leaves room.
pub const DEFAULT_LOG_LOOKUP_RATE_PER_SECOND: u32 = 10;

/// A configuration error: the field it concerns and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ConfigError {
    /// Dotted path of the offending field (`logs.retention_days`,
    /// `resources[1].apiVersion`) or the environment variable.
    pub field: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// Where the configuration text came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file, from `--config` or `CONFIG_PATH`.
    File(PathBuf),
    /// Inline YAML from the `CONFIG` environment variable.
    Inline,
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::File(path) => write!(f, "{}", path.display()),
            ConfigSource::Inline => f.write_str("CONFIG"),
        }
    }
}

/// The environment variables the configuration reads. Kept as a value so tests
/// pass their own instead of mutating the process environment.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub config_path: Option<String>,
    pub config: Option<String>,
    pub sns_topic_arn: Option<String>,
    pub spool_dir: Option<String>,
    pub kubeconfig: Option<String>,
    /// `AWS_REGION`, else `AWS_DEFAULT_REGION`.
    pub aws_region: Option<String>,
    /// `HTTP_LISTEN` (or `--http-listen`, which `main` puts here).
    pub http_listen: Option<String>,
}

impl Environment {
    /// Reads the variables of the process. An empty value counts as unset, as
    /// a Kubernetes manifest often renders an optional variable as `""`.
    pub fn from_process() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Self {
            config_path: var("CONFIG_PATH"),
            config: var("CONFIG"),
            sns_topic_arn: var("SNS_TOPIC_ARN"),
            spool_dir: var("SPOOL_DIR"),
            kubeconfig: var("KUBECONFIG"),
            aws_region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")),
            http_listen: var("HTTP_LISTEN"),
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Which clusters and namespaces to watch.
    pub clusters: ClusterSelection,
    /// Kinds whose changes go to SNS, each with what of it is forwarded;
    /// empty: no event forwarding.
    pub resources: Vec<ResourceConfig>,
    /// The SNS topic; `None`: events are written to stdout as JSON lines.
    pub sns: Option<SnsConfig>,
    /// Pod logs to CloudWatch Logs; `None`: no log forwarding.
    pub logs: Option<LogsConfig>,
    pub spool: SpoolConfig,
    /// The byte bounds of what is held in memory (`memory`).
    pub memory: MemoryConfig,
    /// The AWS region of the clients: `AWS_REGION` / `AWS_DEFAULT_REGION`,
    /// else the SNS topic's. `None` only when nothing goes to AWS.
    pub aws_region: Option<String>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub http_listen: std::net::SocketAddr,
}

/// The byte bounds of what kubeherald holds in memory (SPEC §9: memory is
/// bounded in bytes, not in counts of objects or batches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Events read from the spool and not yet acknowledged by SNS
    /// (`memory.sns_in_flight`): past it, reading waits.
    pub sns_in_flight: u64,
    /// Log lines read from the spool and not yet shipped
    /// (`memory.logs_in_flight`): past it, reading waits and every stream
    /// sends what it has.
    pub logs_in_flight: u64,
    /// Bytes one LIST page should hold (`memory.list_page`): pages of large
    /// objects ask for fewer items.
    pub list_page: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            // 20,000 events/s of 2 KiB objects at 150 ms hold about 16 MiB.
            sns_in_flight: 24 << 20,
            // 100,000 lines/s waiting out a 1 s linger hold about 20 MiB.
            logs_in_flight: 24 << 20,
            list_page: 512 << 10,
        }
    }
}

/// `http.listen` when none is given: every interface, Prometheus's usual
/// exporter port range.
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:9090";

/// Which clusters and namespaces kubeherald watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterSelection {
    /// Every selected context of a kubeconfig is one (cluster, namespace)
    /// pair; the context's name is the cluster name for logs.
    Contexts {
        kubeconfig: KubeconfigLocation,
        /// `None`: every context in the kubeconfig.
        names: Option<Vec<String>>,
    },
    /// The log forwarder's style: one cluster, named `cluster`, and the
    /// listed namespaces of it. Reached with the in-cluster service account
    /// inside a pod, else with the kubeconfig's current context.
    SingleCluster {
        name: String,
        namespaces: Vec<String>,
        kubeconfig: KubeconfigLocation,
    },
}

/// Where the kubeconfig is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeconfigLocation {
    /// Files named by `KUBECONFIG` (a path list, merged by kubectl's rules)
    /// or the `kubeconfig` field; `field` names which, for errors.
    Explicit { paths: Vec<PathBuf>, field: String },
    /// Nothing named: `~/.kube/config`, then the in-cluster service account.
    Default,
}

/// A kind to forward, as written in the config (`apiVersion` + `kind`);
/// resolved against each cluster's discovery by the watcher.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKind {
    pub api_version: String,
    pub kind: String,
}

impl ResourceKind {
    /// The API group: empty for the core group (`v1`).
    pub fn group(&self) -> &str {
        self.api_version
            .split_once('/')
            .map_or("", |(group, _)| group)
    }

    /// The version within the group.
    pub fn version(&self) -> &str {
        self.api_version
            .split_once('/')
            .map_or(self.api_version.as_str(), |(_, version)| version)
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.api_version, self.kind)
    }
}

/// A `resources:` entry: a kind, and which of its changes are forwarded
/// and how (SPEC §3, "Selecting and routing", "Secrets stay secret").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceConfig {
    pub kind: ResourceKind,
    /// `labelSelector`, sent to the API server on LIST and WATCH.
    pub label_selector: Option<String>,
    /// `fieldSelector`, sent to the API server on LIST and WATCH.
    pub field_selector: Option<String>,
    /// The event types published; the others are counted as suppressed.
    pub event_types: EventTypes,
    /// A MODIFIED whose only differences from the last published state are
    /// under these paths is not published.
    pub ignore_changes_in: Vec<ObjectPath>,
    pub redaction: Redaction,
}

impl ResourceConfig {
    /// The defaults of a `resources:` entry that names only its kind.
    pub fn of(kind: ResourceKind) -> ResourceConfig {
        ResourceConfig {
            redaction: Redaction::default_for(&kind),
            kind,
            label_selector: None,
            field_selector: None,
            event_types: EventTypes::ALL,
            ignore_changes_in: Vec::new(),
        }
    }
}

impl From<ResourceKind> for ResourceConfig {
    fn from(kind: ResourceKind) -> ResourceConfig {
        ResourceConfig::of(kind)
    }
}

impl fmt::Display for ResourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.kind.fmt(f)
    }
}

/// A subset of ADDED, MODIFIED, DELETED (`event_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTypes {
    pub added: bool,
    pub modified: bool,
    pub deleted: bool,
}

impl EventTypes {
    pub const ALL: EventTypes = EventTypes {
        added: true,
        modified: true,
        deleted: true,
    };

    /// Whether events of type `name` (`ADDED`, `MODIFIED`, `DELETED`) are published.
    pub fn allows(&self, name: &str) -> bool {
        match name {
            "ADDED" => self.added,
            "MODIFIED" => self.modified,
            "DELETED" => self.deleted,
            _ => false,
        }
    }
}

/// What of an object is replaced by a keyed hash before it is spooled
/// (`redact`). The default for core v1 Secrets is their `data` and
/// `stringData` values (and the last-applied annotation, which repeats
/// them); `redact: [paths]` adds paths for any kind; `redact: false` turns
/// it off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redaction {
    /// The values of `data` and `stringData` (the keys stay) and the
    /// last-applied annotation.
    pub secret_values: bool,
    /// More values to replace, whatever the kind.
    pub paths: Vec<ObjectPath>,
}

impl Redaction {
    /// Secrets of the core group are redacted unless told otherwise.
    pub fn default_for(kind: &ResourceKind) -> Redaction {
        Redaction {
            secret_values: kind.api_version == "v1" && kind.kind == "Secret",
            paths: Vec::new(),
        }
    }

    /// Nothing is redacted.
    pub fn is_off(&self) -> bool {
        !self.secret_values && self.paths.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnsConfig {
    /// The default topic: events no route matches (and, with `also_default`,
    /// those a route matches) go here.
    pub topic_arn: TopicArn,
    /// More topics, by rule (`sns.routes`), in the order written.
    pub routes: Vec<SnsRoute>,
}

/// One of `sns.routes`: the events it matches also go to its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnsRoute {
    /// `name`, else `routes[i]`: for logs and metrics.
    pub name: String,
    pub matches: RouteMatch,
    pub topic_arn: TopicArn,
    /// Events this route matches go to the default topic too.
    pub also_default: bool,
    /// Whose credentials publish to the topic; its region is the topic's.
    pub access: AwsAccess,
}

/// Whose account a route's requests go to, and where: the process's own
/// credentials and region (every field `None`), or a role assumed with STS
/// (`role_arn`, with the `external_id` the role's trust policy requires),
/// in `region` (else the default region).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AwsAccess {
    pub role_arn: Option<String>,
    /// Shared between the tenant and the operator (`template-tenant.yaml`
    /// takes it as a NoEcho parameter): never printed.
    pub external_id: Option<String>,
    pub region: Option<String>,
}

impl fmt::Debug for AwsAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsAccess")
            .field("role_arn", &self.role_arn)
            .field(
                "external_id",
                &self.external_id.as_ref().map(|_| "<redacted>"),
            )
            .field("region", &self.region)
            .finish()
    }
}

impl AwsAccess {
    /// The process's own credentials in the default region: the default
    /// client serves it.
    pub fn is_own(&self) -> bool {
        self.role_arn.is_none() && self.region.is_none()
    }
}

/// The route of log lines no `logs.routes` entry matches.
pub const DEFAULT_LOG_ROUTE: &str = "default";

/// One of `logs.routes`: the lines of the pods it matches go to its group,
/// in its account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRoute {
    /// `name`, else `routes[i]`: carried by each line, in metrics and logs.
    pub name: String,
    pub matches: LogRouteMatch,
    pub naming: GroupNaming,
    /// One of [`CLOUDWATCH_RETENTION_DAYS`].
    pub retention_days: u32,
    pub access: AwsAccess,
}

impl LogRoute {
    /// The route of the lines no entry matches: `/{prefix}-{cluster}` in
    /// the process's own account and region.
    pub fn default_route(prefix: &str, retention_days: u32) -> LogRoute {
        LogRoute {
            name: DEFAULT_LOG_ROUTE.to_owned(),
            matches: LogRouteMatch::default(),
            naming: GroupNaming::Prefix(prefix.to_owned()),
            retention_days,
            access: AwsAccess::default(),
        }
    }

    /// The default route (`/{prefix}-{cluster}`, `retention_days`) first,
    /// then `routes`: every destination, as the sink and the lookups index
    /// them.
    pub fn with_default(prefix: &str, retention_days: u32, routes: &[LogRoute]) -> Vec<LogRoute> {
        std::iter::once(LogRoute::default_route(prefix, retention_days))
            .chain(routes.iter().cloned())
            .collect()
    }
}

/// How a log route names its groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupNaming {
    /// `/{prefix}-{cluster}`, one group per cluster.
    Prefix(String),
    /// One group for every cluster the route matches (streams still name
    /// namespace, pod, container and restart).
    Fixed(String),
}

impl GroupNaming {
    /// The group of `cluster`'s lines.
    pub fn group(&self, cluster: &str) -> String {
        match self {
            GroupNaming::Prefix(prefix) => crate::names::log_group_name(prefix, cluster),
            GroupNaming::Fixed(group) => group.clone(),
        }
    }
}

/// A log route's `match`: every field given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogRouteMatch {
    pub context: Option<Vec<Glob>>,
    pub namespace: Option<Vec<Glob>>,
    /// Every pair must be among the pod's labels.
    pub labels: BTreeMap<String, String>,
}

impl LogRouteMatch {
    pub fn matches(
        &self,
        context: &str,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        any_glob(&self.context, context)
            && any_glob(&self.namespace, namespace)
            && self
                .labels
                .iter()
                .all(|(key, value)| labels.get(key) == Some(value))
    }
}

/// An absent list matches anything; a list matches when one glob does.
fn any_glob(globs: &Option<Vec<Glob>>, value: &str) -> bool {
    globs
        .as_ref()
        .is_none_or(|globs| globs.iter().any(|glob| glob.matches(value)))
}

/// A route's `match`: every listed field must match (each a list of `*`
/// globs, any one matching); an absent field matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteMatch {
    pub context: Option<Vec<Glob>>,
    pub namespace: Option<Vec<Glob>>,
    pub kind: Option<Vec<Glob>>,
    pub event_type: Option<Vec<Glob>>,
}

impl RouteMatch {
    /// Whether an event of `kind` and `event_type` in (`context`,
    /// `namespace`) matches.
    pub fn matches(&self, context: &str, namespace: &str, kind: &str, event_type: &str) -> bool {
        any_glob(&self.context, context)
            && any_glob(&self.namespace, namespace)
            && any_glob(&self.kind, kind)
            && any_glob(&self.event_type, event_type)
    }
}

impl SnsConfig {
    /// The topics an event goes to, each once: every matching route's, and
    /// the default topic when no route matches or a matching route says
    /// `also_default`.
    pub fn topics_for(
        &self,
        context: &str,
        namespace: &str,
        kind: &str,
        event_type: &str,
    ) -> Vec<&TopicArn> {
        let mut topics = Vec::new();
        let mut also_default = false;
        for route in &self.routes {
            if route.matches.matches(context, namespace, kind, event_type) {
                topics.push(&route.topic_arn);
                also_default |= route.also_default;
            }
        }
        if topics.is_empty() || also_default {
            topics.insert(0, &self.topic_arn);
        }
        topics
    }

    /// Every topic configured: the default first, then the routes'.
    pub fn all_topics(&self) -> impl Iterator<Item = &TopicArn> {
        std::iter::once(&self.topic_arn).chain(self.routes.iter().map(|r| &r.topic_arn))
    }
}

/// A validated SNS topic ARN: `arn:PARTITION:sns:REGION:ACCOUNT:NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicArn {
    arn: String,
    region_start: usize,
    region_end: usize,
}

impl TopicArn {
    /// Parses an ARN, saying what is wrong with a malformed one.
    pub fn parse(arn: &str) -> Result<Self, String> {
        const FORM: &str = "expected arn:aws:sns:REGION:ACCOUNT_ID:TOPIC_NAME";
        let parts: Vec<&str> = arn.split(':').collect();
        if parts.len() != 6 || parts[0] != "arn" {
            return Err(format!("{arn:?} is not an ARN; {FORM}"));
        }
        let (partition, service, region, account, name) =
            (parts[1], parts[2], parts[3], parts[4], parts[5]);
        if !partition.starts_with("aws") {
            return Err(format!(
                "{arn:?}: partition {partition:?} is not an AWS partition (aws, aws-cn, aws-us-gov); {FORM}"
            ));
        }
        if service != "sns" {
            return Err(format!(
                "{arn:?} is an ARN of service {service:?}, not an SNS topic; {FORM}"
            ));
        }
        if region.is_empty()
            || !region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(format!(
                "{arn:?}: region {region:?} is not a region name; {FORM}"
            ));
        }
        if account.len() != 12 || !account.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!(
                "{arn:?}: account {account:?} is not a 12-digit AWS account id; {FORM}"
            ));
        }
        // SNS topic names: 1-256 characters of A-Z a-z 0-9 - _, and FIFO
        // topics end in ".fifo" (CreateTopic, Name).
        let base = name.strip_suffix(".fifo").unwrap_or(name);
        if base.is_empty()
            || name.len() > 256
            || !base
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "{arn:?}: topic name {name:?} must be 1-256 letters, digits, '-' or '_' (FIFO topics end in .fifo)"
            ));
        }
        let region_start = parts[..3].iter().map(|p| p.len() + 1).sum();
        Ok(Self {
            arn: arn.to_owned(),
            region_start,
            region_end: region_start + region.len(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.arn
    }

    /// The region the topic lives in, the default region for the SNS client.
    pub fn region(&self) -> &str {
        &self.arn[self.region_start..self.region_end]
    }

    /// FIFO topics need a message group and a deduplication id per message.
    pub fn is_fifo(&self) -> bool {
        self.arn.ends_with(".fifo")
    }
}

impl fmt::Display for TopicArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.arn)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogsConfig {
    /// Log groups are `/{prefix}-{cluster}`.
    pub prefix: String,
    /// One of [`CLOUDWATCH_RETENTION_DAYS`].
    pub retention_days: u32,
    /// A pod matching every key/value of any one entry is not followed.
    pub exclude_labels: Vec<BTreeMap<String, String>>,
    /// Bound of concurrently followed container logs per cluster; excess waits.
    pub max_streams_per_cluster: usize,
    /// CloudWatch last-event lookups per second, for the whole process.
    pub lookup_rate_per_second: u32,
    /// Where log lines go: CloudWatch Logs, or JSON lines on stdout.
    pub sink: LogSink,
    /// Tenant routes, in the order written: a pod's lines go to the first
    /// that matches it, else to the default (`prefix`, `retention_days`,
    /// the process's own account).
    pub routes: Vec<LogRoute>,
}

impl LogsConfig {
    /// The route of a pod's lines: the first matching route's name, else
    /// [`DEFAULT_LOG_ROUTE`].
    pub fn route_for(
        &self,
        context: &str,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> &str {
        self.routes
            .iter()
            .find(|route| route.matches.matches(context, namespace, labels))
            .map_or(DEFAULT_LOG_ROUTE, |route| route.name.as_str())
    }

    /// Every destination: the default route (named [`DEFAULT_LOG_ROUTE`])
    /// first, then the routes in order.
    pub fn destinations(&self) -> Vec<LogRoute> {
        LogRoute::with_default(&self.prefix, self.retention_days, &self.routes)
    }
}

/// `logs.sink`: where log lines go (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSink {
    /// CloudWatch Logs: groups `/{prefix}-{cluster}`, one stream per
    /// container instance.
    CloudWatch,
    /// One JSON line per log line on stdout (stream, timestamp, message).
    /// The default when no AWS region is known at all.
    Stdout,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// `None`: an in-memory bounded queue instead of files.
    pub dir: Option<PathBuf>,
    pub max_bytes: u64,
}

// ---------------------------------------------------------------------------
// The file as written. `deny_unknown_fields` makes a typo an error instead of
// a silently ignored setting.

/// The kubeherald configuration file (`CONFIG_PATH`, `--config`, or inline
/// in `CONFIG`). Both seed formats load unchanged: the event forwarder's
/// (`resources`) and the log forwarder's (`prefix`, `cluster`, `namespaces`,
/// `exclude_labels`, `retention_days` at the top level).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "kubeherald configuration")]
struct FileConfig {
    /// Kubeconfig file. Default: $KUBECONFIG, ~/.kube/config, then the
    /// in-cluster service account.
    kubeconfig: Option<PathBuf>,
    /// Contexts to watch, each one (cluster, namespace) pair. Default: every
    /// context of the kubeconfig.
    contexts: Option<Vec<String>>,
    /// Kinds whose changes go to SNS (any namespaced kind, custom resources
    /// included). Empty: no event forwarding.
    #[serde(default)]
    resources: Vec<FileResource>,
    /// Where resource events go. Absent (and no SNS_TOPIC_ARN): JSON lines
    /// on stdout.
    sns: Option<FileSns>,
    /// Pod logs, followed through the API. Absent: no log forwarding.
    logs: Option<FileLogs>,
    /// The durable hand-off between the watchers and AWS.
    spool: Option<FileSpool>,
    /// Byte bounds of what is held in memory.
    memory: Option<FileMemory>,
    /// The HTTP endpoint: /metrics, /healthz, /readyz.
    http: Option<FileHttp>,
    /// Log forwarder style: log groups are /{prefix}-{cluster}.
    prefix: Option<String>,
    /// Log forwarder style: the one cluster watched (its name in log groups).
    cluster: Option<String>,
    /// Log forwarder style: the namespaces of `cluster` whose pods' logs are
    /// followed.
    namespaces: Option<Vec<String>>,
    /// Log forwarder style: see `logs.exclude_labels`.
    exclude_labels: Option<ExcludeLabels>,
    /// Log forwarder style: see `logs.retention_days`.
    retention_days: Option<u32>,
}

/// One kind to watch, resolved by discovery.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FileResource {
    /// `v1`, `apps/v1`, `example.com/v1alpha1`.
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    /// `Pod`, `Deployment`, a custom resource's kind.
    kind: Option<String>,
    /// Only objects whose labels match, e.g. `app=web,tier!=cache` or
    /// `env in (prod,staging)` (sent to the API server on LIST and WATCH;
    /// an object whose labels stop matching arrives as DELETED).
    #[serde(rename = "labelSelector")]
    label_selector: Option<String>,
    /// Only objects whose fields match, e.g. `status.phase!=Succeeded`
    /// (`=`, `==`, `!=`; `metadata.name` and `metadata.namespace` for every
    /// kind, more for some kinds, as the API server supports them).
    #[serde(rename = "fieldSelector")]
    field_selector: Option<String>,
    /// The event types published (ADDED, MODIFIED, DELETED). Default: all.
    event_types: Option<Vec<String>>,
    /// Paths whose changes alone do not publish a MODIFIED, e.g.
    /// `status.conditions[*].lastHeartbeatTime` or
    /// `metadata.annotations["control-plane.alpha.kubernetes.io/leader"]`.
    /// `metadata.resourceVersion` and `metadata.managedFields` are always
    /// left out of the comparison.
    ignore_changes_in: Option<Vec<String>>,
    /// More paths whose values are replaced by a keyed hash before the
    /// event is stored or sent (Secrets' `data` and `stringData` always
    /// are), or `false` to send Secrets' values as they are.
    redact: Option<FileRedact>,
}

/// `redact:` — a list of paths, or `false` (`true`: the default).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
enum FileRedact {
    Switch(bool),
    Paths(Vec<String>),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FileSns {
    /// The topic's ARN (a `.fifo` topic keeps each object's changes in
    /// order). SNS_TOPIC_ARN overrides it.
    topic_arn: Option<String>,
    /// More topics, by rule: an event goes to every matching route's topic
    /// once, and to `topic_arn` when no route matches (or also, with
    /// `also_default: true`).
    routes: Option<Vec<FileRoute>>,
}

/// One route of `sns.routes`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    /// A name for logs (default `routes[N]`); unique.
    name: Option<String>,
    /// Which events: every field given must match (an absent one matches
    /// any). Each is a list of names or `*` globs (`prod-*`).
    #[serde(rename = "match")]
    matches: Option<FileRouteMatch>,
    /// The route's topic (its own FIFO-ness: `.fifo` topics get message
    /// groups and deduplication ids). In the region of `sns.topic_arn`.
    topic_arn: Option<String>,
    /// Matching events go to `sns.topic_arn` too. Default false.
    also_default: Option<bool>,
    /// A role to publish as (STS AssumeRole; the credentials are cached and
    /// refreshed before they expire): for a topic in another account.
    role_arn: Option<String>,
    /// The ExternalId the role's trust policy requires (needs `role_arn`).
    external_id: Option<String>,
    /// The topic's region; if given, it must be the one in `topic_arn`.
    region: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FileRouteMatch {
    /// Kubeconfig contexts.
    context: Option<Vec<String>>,
    /// Namespaces of the objects.
    namespace: Option<Vec<String>>,
    /// Kinds (`Deployment`).
    kind: Option<Vec<String>>,
    /// ADDED, MODIFIED, DELETED.
    event_type: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FileLogs {
    /// Log groups are /{prefix}-{cluster}.
    prefix: Option<String>,
    /// Retention of each log group, one of the values CloudWatch Logs
    /// accepts (1, 3, 5, 7, 14, 30, 60, 90, ...). Default 30.
    retention_days: Option<u32>,
    /// Pods to leave out: a map (every pair must match) or a list of maps
    /// (any one matching). Pods annotated `kubeherald.io/logs: "false"` are
    /// left out too.
    exclude_labels: Option<ExcludeLabels>,
    /// Container logs followed at once per cluster; excess waits. Default 200.
    max_streams_per_cluster: Option<usize>,
    /// CloudWatch `GetLogEvents` lookups per second for the whole process
    /// (a container without a checkpoint asks for its stream's last event;
    /// CloudWatch allows about 25 per second per account). Default 10.
    lookup_rate_per_second: Option<u32>,
    /// `cloudwatch` (the default with an AWS region) or `stdout` (JSON
    /// lines; the default without any AWS region).
    #[schemars(extend("enum" = ["cloudwatch", "stdout"]))]
    sink: Option<String>,
    /// Tenant routes: a pod's lines go to the first route matching it (its
    /// group, retention and account), the rest to `/{prefix}-{cluster}`.
    routes: Option<Vec<FileLogRoute>>,
}

/// One route of `logs.routes`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FileLogRoute {
    /// A name for metrics and logs (default `routes[N]`); unique, not
    /// `default`.
    name: Option<String>,
    /// Which pods: every field given must match (an absent one matches any).
    #[serde(rename = "match")]
    matches: Option<FileLogRouteMatch>,
    /// Groups are /{prefix}-{cluster} (default: `logs.prefix`).
    prefix: Option<String>,
    /// One group for all the route's pods instead of one per cluster.
    group: Option<String>,
    /// Retention of the route's groups (default: `logs.retention_days`).
    retention_days: Option<u32>,
    /// A role in the tenant's account to write as (STS AssumeRole; the
    /// credentials are cached and refreshed before they expire).
    role_arn: Option<String>,
    /// The ExternalId the role's trust policy requires (needs `role_arn`).
    external_id: Option<String>,
    /// The region of the route's groups (default: the process's region).
    region: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FileLogRouteMatch {
    /// Kubeconfig contexts (names or `*` globs).
    context: Option<Vec<String>>,
    /// Namespaces of the pods (names or `*` globs).
    namespace: Option<Vec<String>>,
    /// Labels the pod must all carry, with these values.
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FileSpool {
    /// Directory of the spool, re-list state, log checkpoints and dead
    /// letters (SPOOL_DIR overrides it). Absent: bounded queues in memory.
    dir: Option<PathBuf>,
    /// Bound of the spool on disk: bytes, or a size such as `2GiB`,
    /// `512MiB`. Default 2GiB (half for events, half for log lines).
    max_bytes: Option<ByteSize>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FileMemory {
    /// Events read from the spool and not yet acknowledged by SNS (their
    /// messages, each counted three times while its request is in flight).
    /// Past it, reading waits: the backlog stays in the spool. Bytes or a
    /// size such as `24MiB` (the default); at least 1MiB.
    sns_in_flight: Option<ByteSize>,
    /// Log lines read from the spool and not yet shipped. Past it, reading
    /// waits and every stream sends what it has. Default 24MiB; at least 1MiB.
    logs_in_flight: Option<ByteSize>,
    /// Bytes one LIST page should hold: pages of large objects ask for fewer
    /// items (at most 500). Default 512KiB; at least 64KiB.
    list_page: Option<ByteSize>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FileHttp {
    /// Address and port, e.g. `0.0.0.0:9090` (the default) or
    /// `127.0.0.1:9090`; `HTTP_LISTEN` and `--http-listen` override it.
    listen: Option<String>,
}

/// `exclude_labels` is one map in the seed (all of its pairs must match);
/// a list of such maps excludes a pod that matches any one of them.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
enum ExcludeLabels {
    One(BTreeMap<String, String>),
    Any(Vec<BTreeMap<String, String>>),
}

impl ExcludeLabels {
    fn into_entries(self) -> Vec<BTreeMap<String, String>> {
        match self {
            ExcludeLabels::One(map) if map.is_empty() => Vec::new(),
            ExcludeLabels::One(map) => vec![map],
            ExcludeLabels::Any(list) => list,
        }
    }
}

/// A size in bytes: a plain integer or a number with a unit (`512MiB`,
/// `2GiB`, `1G`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ByteSize(u64);

impl JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Bytes, or a number with a unit: B, KiB, MiB, GiB, TiB (powers of 1024) or KB, MB, GB, TB (powers of 1000).",
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": "^\\s*[0-9]+\\s*(B|K|KB|k|kB|M|MB|G|GB|T|TB|Ki|KiB|Mi|MiB|Gi|GiB|Ti|TiB)?\\s*$"}
            ]
        })
    }
}

/// The JSON Schema of the configuration file (`kubeherald config schema`),
/// derived from the types the file is read into.
pub fn schema() -> serde_json::Value {
    schemars::schema_for!(FileConfig).to_value()
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(text) => parse_byte_size(&text)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `2GiB`, `512 MiB`, `100MB`, `1024`. Binary units are powers of
/// 1024, decimal units powers of 1000, as in Kubernetes quantities.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 2GiB, 512MiB or 1048576"))?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" | "k" | "kB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "T" | "TB" => 1_000_000_000_000,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        "Ti" | "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?}; use B, KiB, MiB, GiB, TiB (or KB, MB, GB, TB)"
            ));
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

impl Config {
    /// Loads the configuration named by the command line or the environment:
    /// `--config PATH`, else `CONFIG_PATH`, else inline `CONFIG`.
    pub fn load(config_flag: Option<&Path>, env: &Environment) -> Result<Config, ConfigError> {
        let (source, text) = match (config_flag, &env.config_path, &env.config) {
            (Some(path), _, _) => (
                ConfigSource::File(path.to_owned()),
                read_file(path, "--config")?,
            ),
            (None, Some(path), _) => {
                let path = PathBuf::from(path);
                let text = read_file(&path, "CONFIG_PATH")?;
                (ConfigSource::File(path), text)
            }
            (None, None, Some(inline)) => (ConfigSource::Inline, inline.clone()),
            (None, None, None) => {
                return Err(ConfigError::new(
                    "CONFIG_PATH",
                    "no configuration given; pass --config PATH, or set CONFIG_PATH to a YAML file or CONFIG to inline YAML",
                ));
            }
        };
        Config::from_yaml(&text, &source, env)
    }

    /// Parses and validates configuration text; `env` overrides the file.
    pub fn from_yaml(
        text: &str,
        source: &ConfigSource,
        env: &Environment,
    ) -> Result<Config, ConfigError> {
        // An empty document is an empty configuration, not an error of the parser.
        let file: FileConfig = if text.trim().is_empty() {
            FileConfig::default()
        } else {
            parse_yaml(text, source)?
        };
        file.validate(env)
    }
}

fn read_file(path: &Path, field: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|err| {
        ConfigError::new(
            field,
            format!("cannot read config file {}: {err}", path.display()),
        )
    })
}

/// Parses the file; an error names the path of the field where parsing failed.
fn parse_yaml(text: &str, source: &ConfigSource) -> Result<FileConfig, ConfigError> {
    let mut failed_at = None;
    serde_saphyr::with_deserializer_from_str(text, |deserializer| {
        serde_path_to_error::deserialize(deserializer).map_err(|err| {
            failed_at = Some(err.path().to_string());
            err.into_inner()
        })
    })
    .map_err(|err| yaml_error(source, failed_at.filter(|path| path != "."), &err))
}

/// One line naming the field (when known), what is wrong and where:
/// `logs.retention_days: invalid u32 at line 3, column 19`. The parser's
/// source snippet is left out.
fn yaml_error(
    source: &ConfigSource,
    path: Option<String>,
    err: &serde_saphyr::Error,
) -> ConfigError {
    let message = one_line(&err.without_snippet().to_string());
    let field = path.unwrap_or_else(|| source.to_string());
    ConfigError::new(field, format!("{message} (in {source})"))
}

/// Folds a possibly multi-line message into one line, dropping a source
/// snippet (` --> <input>:1:1 | ...`) that some parsers append.
pub(crate) fn one_line(message: &str) -> String {
    let message = message.split(" --> ").next().unwrap_or(message);
    let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
    message
        .strip_prefix("error: ")
        .unwrap_or(&message)
        .to_owned()
}

impl FileConfig {
    fn validate(self, env: &Environment) -> Result<Config, ConfigError> {
        let kubeconfig = kubeconfig_location(self.kubeconfig, env)?;
        let clusters = match (self.cluster, self.namespaces, self.contexts) {
            (Some(_), _, Some(_)) => {
                return Err(ConfigError::new(
                    "cluster",
                    "`cluster` (one cluster, the log forwarder's style) and `contexts` (many clusters from a kubeconfig) exclude each other; keep one",
                ));
            }
            (None, Some(_), _) => {
                return Err(ConfigError::new(
                    "namespaces",
                    "`namespaces` needs `cluster` (the name of the cluster they belong to); with a kubeconfig, each context names its namespace instead",
                ));
            }
            (Some(name), namespaces, None) => {
                let name = non_empty("cluster", name)?;
                let namespaces = namespaces.unwrap_or_default();
                if namespaces.is_empty() {
                    return Err(ConfigError::new(
                        "namespaces",
                        "list at least one namespace to watch in cluster `cluster`",
                    ));
                }
                for (i, namespace) in namespaces.iter().enumerate() {
                    validate_namespace(&format!("namespaces[{i}]"), namespace)?;
                }
                ClusterSelection::SingleCluster {
                    name,
                    namespaces,
                    kubeconfig,
                }
            }
            (None, None, contexts) => {
                if let Some(names) = &contexts {
                    if names.is_empty() {
                        return Err(ConfigError::new(
                            "contexts",
                            "an empty list selects nothing; list context names, or remove the field to watch every context",
                        ));
                    }
                    for (i, name) in names.iter().enumerate() {
                        if name.trim().is_empty() {
                            return Err(ConfigError::new(
                                format!("contexts[{i}]"),
                                "empty context name",
                            ));
                        }
                    }
                }
                ClusterSelection::Contexts {
                    kubeconfig,
                    names: contexts,
                }
            }
        };

        let resources = self
            .resources
            .into_iter()
            .enumerate()
            .map(|(i, resource)| resource.validate(i))
            .collect::<Result<Vec<_>, _>>()?;
        let kinds: Vec<ResourceKind> = resources.iter().map(|r| r.kind.clone()).collect();
        if let Some(duplicate) = first_duplicate(&kinds) {
            return Err(ConfigError::new(
                "resources",
                format!("{duplicate} is listed twice; list each kind once"),
            ));
        }

        let (file_topic, file_routes) = match self.sns {
            Some(sns) => (sns.topic_arn, sns.routes),
            None => (None, None),
        };
        let topic_arn = match (env.sns_topic_arn.clone(), file_topic) {
            (Some(arn), _) => Some(("SNS_TOPIC_ARN", arn)),
            (None, Some(arn)) => Some(("sns.topic_arn", arn)),
            (None, None) => None,
        };
        let sns = topic_arn
            .map(|(field, arn)| {
                TopicArn::parse(arn.trim()).map_err(|problem| ConfigError::new(field, problem))
            })
            .transpose()?;
        let sns = match (sns, file_routes) {
            (None, Some(routes)) if !routes.is_empty() => {
                return Err(ConfigError::new(
                    "sns.topic_arn",
                    "sns.routes needs a default topic for the events no route matches; set sns.topic_arn (or SNS_TOPIC_ARN)",
                ));
            }
            (None, _) => None,
            (Some(topic_arn), routes) => Some(SnsConfig {
                routes: validate_routes(&topic_arn, routes.unwrap_or_default())?,
                topic_arn,
            }),
        };

        let mut logs = validate_logs(
            self.logs,
            TopLevelLogFields {
                prefix: self.prefix,
                retention_days: self.retention_days,
                exclude_labels: self.exclude_labels,
            },
        )?;

        let spool_file = self.spool.unwrap_or(FileSpool {
            dir: None,
            max_bytes: None,
        });
        let spool = SpoolConfig {
            dir: env.spool_dir.as_ref().map(PathBuf::from).or(spool_file.dir),
            max_bytes: spool_file
                .max_bytes
                .map_or(DEFAULT_SPOOL_MAX_BYTES, |size| size.0),
        };
        // Below a few records' worth the spool could not hold one large event.
        const MIN_SPOOL_BYTES: u64 = 1 << 20;
        if spool.max_bytes < MIN_SPOOL_BYTES {
            return Err(ConfigError::new(
                "spool.max_bytes",
                format!("{} bytes is too small; use at least 1MiB", spool.max_bytes),
            ));
        }

        let memory = validate_memory(self.memory)?;

        let aws_region = env
            .aws_region
            .clone()
            .or_else(|| sns.as_ref().map(|sns| sns.topic_arn.region().to_owned()));
        // SPEC §4: a `logs:` section with no AWS region at all writes log
        // lines to stdout; asking for CloudWatch without one is an error.
        if let Some((logs, sink_given)) = &mut logs
            && logs.sink == LogSink::CloudWatch
            && aws_region.is_none()
        {
            if *sink_given {
                return Err(ConfigError::new(
                    "AWS_REGION",
                    "logs.sink cloudwatch needs a region: set AWS_REGION (or AWS_DEFAULT_REGION), or configure an SNS topic in that region",
                ));
            }
            logs.sink = LogSink::Stdout;
        }
        let logs = logs.map(|(logs, _)| logs);

        let (listen_field, listen) = match (&env.http_listen, self.http.and_then(|h| h.listen)) {
            (Some(value), _) => ("HTTP_LISTEN", value.clone()),
            (None, Some(value)) => ("http.listen", value),
            (None, None) => ("http.listen", DEFAULT_HTTP_LISTEN.to_owned()),
        };
        let http_listen = listen.trim().parse().map_err(|_| {
            ConfigError::new(
                listen_field,
                format!(
                    "{listen:?} is not an address and port such as 0.0.0.0:9090 or 127.0.0.1:9090"
                ),
            )
        })?;

        Ok(Config {
            http_listen,
            clusters,
            resources,
            sns,
            logs,
            spool,
            memory,
            aws_region,
        })
    }
}

/// `memory`: each bound at least its minimum (one SNS batch is 256 KiB, one
/// log put up to 1 MiB; a LIST page of one large object still works).
fn validate_memory(file: Option<FileMemory>) -> Result<MemoryConfig, ConfigError> {
    let defaults = MemoryConfig::default();
    let Some(file) = file else {
        return Ok(defaults);
    };
    let bound = |field: &str, given: Option<ByteSize>, default: u64, min: u64, min_text: &str| {
        let value = given.map_or(default, |size| size.0);
        if value < min {
            return Err(ConfigError::new(
                format!("memory.{field}"),
                format!("{value} bytes is too small; use at least {min_text}"),
            ));
        }
        Ok(value)
    };
    Ok(MemoryConfig {
        sns_in_flight: bound(
            "sns_in_flight",
            file.sns_in_flight,
            defaults.sns_in_flight,
            1 << 20,
            "1MiB",
        )?,
        logs_in_flight: bound(
            "logs_in_flight",
            file.logs_in_flight,
            defaults.logs_in_flight,
            1 << 20,
            "1MiB",
        )?,
        list_page: bound(
            "list_page",
            file.list_page,
            defaults.list_page,
            64 << 10,
            "64KiB",
        )?,
    })
}

/// Checks `sns.routes` against each other and the default topic.
fn validate_routes(
    default: &TopicArn,
    routes: Vec<FileRoute>,
) -> Result<Vec<SnsRoute>, ConfigError> {
    let mut out: Vec<SnsRoute> = Vec::with_capacity(routes.len());
    for (i, route) in routes.into_iter().enumerate() {
        let field = |name: &str| format!("sns.routes[{i}].{name}");
        let taken: Vec<&str> = out.iter().map(|r| r.name.as_str()).collect();
        let name = route_name("sns.routes", i, route.name, &taken)?;
        let Some(arn) = route.topic_arn else {
            return Err(ConfigError::new(
                field("topic_arn"),
                "missing; name the topic this route's events go to",
            ));
        };
        let topic_arn = TopicArn::parse(arn.trim())
            .map_err(|problem| ConfigError::new(field("topic_arn"), problem))?;
        if topic_arn == *default {
            return Err(ConfigError::new(
                field("topic_arn"),
                "is the default topic (sns.topic_arn); use `also_default: true` to send matching events there as well",
            ));
        }
        if let Some(other) = out.iter().position(|r| r.topic_arn == topic_arn) {
            return Err(ConfigError::new(
                field("topic_arn"),
                format!(
                    "{topic_arn} is also the topic of sns.routes[{other}]; list each topic once and widen that route's match instead"
                ),
            ));
        }
        let mut access = validate_access(&field, route.role_arn, route.external_id, route.region)?;
        // SNS refuses a Publish to a topic of another region: the topic's
        // region is the client's.
        if let Some(region) = &access.region
            && region != topic_arn.region()
        {
            return Err(ConfigError::new(
                field("region"),
                format!(
                    "{region:?} is not the region of {topic_arn} ({}); remove `region`, the topic ARN gives it",
                    topic_arn.region()
                ),
            ));
        }
        access.region =
            (topic_arn.region() != default.region()).then(|| topic_arn.region().to_owned());
        let file_match = route.matches.unwrap_or(FileRouteMatch {
            context: None,
            namespace: None,
            kind: None,
            event_type: None,
        });
        let matches = RouteMatch {
            context: glob_list(field("match.context"), file_match.context)?,
            namespace: glob_list(field("match.namespace"), file_match.namespace)?,
            kind: glob_list(field("match.kind"), file_match.kind)?,
            event_type: glob_list(field("match.event_type"), file_match.event_type)?,
        };
        if let Some(event_types) = &matches.event_type {
            for (j, glob) in event_types.iter().enumerate() {
                if !["ADDED", "MODIFIED", "DELETED"]
                    .iter()
                    .any(|t| glob.matches(t))
                {
                    return Err(ConfigError::new(
                        field(&format!("match.event_type[{j}]")),
                        format!(
                            "{:?} matches no event type; use ADDED, MODIFIED or DELETED",
                            glob.as_str()
                        ),
                    ));
                }
            }
        }
        out.push(SnsRoute {
            name,
            matches,
            topic_arn,
            also_default: route.also_default.unwrap_or(false),
            access,
        });
    }
    Ok(out)
}

/// Checks `logs.routes`: names, matches, group naming, retention, access.
/// `prefix` and `retention_days` are the default route's, inherited.
fn validate_log_routes(
    routes: Vec<FileLogRoute>,
    prefix: &str,
    retention_days: u32,
) -> Result<Vec<LogRoute>, ConfigError> {
    let mut out: Vec<LogRoute> = Vec::with_capacity(routes.len());
    for (i, route) in routes.into_iter().enumerate() {
        let field = |name: &str| format!("logs.routes[{i}].{name}");
        let taken: Vec<&str> = std::iter::once(DEFAULT_LOG_ROUTE)
            .chain(out.iter().map(|r| r.name.as_str()))
            .collect();
        let name = route_name("logs.routes", i, route.name, &taken)?;
        let file_match = route.matches.unwrap_or(FileLogRouteMatch {
            context: None,
            namespace: None,
            labels: None,
        });
        let labels = file_match.labels.unwrap_or_default();
        if let Some((key, _)) = labels.iter().find(|(key, _)| key.trim().is_empty()) {
            return Err(ConfigError::new(
                field("match.labels"),
                format!("{key:?} is not a label key; write `key: value` pairs"),
            ));
        }
        let matches = LogRouteMatch {
            context: glob_list(field("match.context"), file_match.context)?,
            namespace: glob_list(field("match.namespace"), file_match.namespace)?,
            labels,
        };
        let naming = match (route.prefix, route.group) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    field("group"),
                    "set together with `prefix`; a route writes to one group (`group`) or one per cluster (`prefix`), keep one",
                ));
            }
            (Some(own), None) => {
                GroupNaming::Prefix(validate_prefix(&field("prefix"), own.trim())?)
            }
            (None, Some(group)) => {
                let group = group.trim();
                if group.is_empty()
                    || group.chars().count() > crate::names::MAX_NAME_LEN
                    || !group.chars().all(crate::names::is_log_group_char)
                {
                    return Err(ConfigError::new(
                        field("group"),
                        format!(
                            "{group:?} is not a log group name: 1 to 512 letters, digits and . - _ / #"
                        ),
                    ));
                }
                GroupNaming::Fixed(group.to_owned())
            }
            (None, None) => GroupNaming::Prefix(prefix.to_owned()),
        };
        let retention_days = match route.retention_days {
            Some(days) => validate_retention(&field("retention_days"), days)?,
            None => retention_days,
        };
        let access = validate_access(&field, route.role_arn, route.external_id, route.region)?;
        // Two routes writing the same group in the same account would mix
        // their tenants' lines and park together.
        if let Some(other) = out
            .iter()
            .position(|r| r.access == access && r.naming == naming)
        {
            return Err(ConfigError::new(
                field(if matches!(naming, GroupNaming::Fixed(_)) {
                    "group"
                } else {
                    "prefix"
                }),
                format!(
                    "writes the same groups in the same account as logs.routes[{other}]; widen that route's match instead"
                ),
            ));
        }
        out.push(LogRoute {
            name,
            matches,
            naming,
            retention_days,
            access,
        });
    }
    Ok(out)
}

/// A route's name: `name`, else `routes[i]`; not one of `taken`.
fn route_name(
    section: &str,
    i: usize,
    name: Option<String>,
    taken: &[&str],
) -> Result<String, ConfigError> {
    let field = format!("{section}[{i}].name");
    let name = match name {
        Some(name) if name.trim().is_empty() => {
            return Err(ConfigError::new(
                field,
                "empty; name the route or remove the field",
            ));
        }
        Some(name) => name.trim().to_owned(),
        None => format!("routes[{i}]"),
    };
    if name == DEFAULT_LOG_ROUTE && section == "logs.routes" {
        return Err(ConfigError::new(
            field,
            "\"default\" names the lines no route matches; give the route another name",
        ));
    }
    if let Some(other) = taken.iter().position(|t| *t == name) {
        // logs.routes' taken list starts with the default route.
        let other = if section == "logs.routes" {
            other - 1
        } else {
            other
        };
        return Err(ConfigError::new(
            field,
            format!(
                "{name:?} is also the name of {section}[{other}]; give each route its own name"
            ),
        ));
    }
    Ok(name)
}

/// A route's `match` field: absent matches anything; each entry a glob.
fn glob_list(field: String, list: Option<Vec<String>>) -> Result<Option<Vec<Glob>>, ConfigError> {
    let Some(list) = list else { return Ok(None) };
    if list.is_empty() {
        return Err(ConfigError::new(
            field,
            "an empty list matches nothing; list patterns, or remove the field to match any",
        ));
    }
    list.iter()
        .enumerate()
        .map(|(j, text)| {
            Glob::parse(text).map_err(|problem| ConfigError::new(format!("{field}[{j}]"), problem))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// A route's `role_arn`, `external_id` and `region` (fields named by
/// `field`).
fn validate_access(
    field: &dyn Fn(&str) -> String,
    role_arn: Option<String>,
    external_id: Option<String>,
    region: Option<String>,
) -> Result<AwsAccess, ConfigError> {
    let role_arn = match role_arn {
        Some(arn) => {
            let arn = arn.trim().to_owned();
            check_role_arn(&arn).map_err(|problem| ConfigError::new(field("role_arn"), problem))?;
            Some(arn)
        }
        None => None,
    };
    let external_id = match external_id {
        Some(_) if role_arn.is_none() => {
            return Err(ConfigError::new(
                field("external_id"),
                "given without `role_arn`; an ExternalId is sent when assuming a role, add the role",
            ));
        }
        // STS AssumeRole, ExternalId: 2-1224 characters of [\w+=,.@:/-].
        Some(id)
            if !(2..=1224).contains(&id.len())
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c)) =>
        {
            return Err(ConfigError::new(
                field("external_id"),
                "must be 2 to 1224 letters, digits and _ + = , . @ : / - (as STS AssumeRole accepts)",
            ));
        }
        other => other,
    };
    let region = match region {
        Some(region) => {
            let region = region.trim().to_owned();
            if region.is_empty()
                || !region
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                return Err(ConfigError::new(
                    field("region"),
                    format!("{region:?} is not a region name such as eu-west-1"),
                ));
            }
            Some(region)
        }
        None => None,
    };
    Ok(AwsAccess {
        role_arn,
        external_id,
        region,
    })
}

/// `arn:PARTITION:iam::ACCOUNT:role/[PATH/]NAME`.
fn check_role_arn(arn: &str) -> Result<(), String> {
    const FORM: &str = "expected arn:aws:iam::ACCOUNT_ID:role/ROLE_NAME";
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [scheme, partition, service, region, account, resource] = parts[..] else {
        return Err(format!("{arn:?} is not an ARN; {FORM}"));
    };
    if scheme != "arn" || !partition.starts_with("aws") || service != "iam" || !region.is_empty() {
        return Err(format!("{arn:?} is not an IAM role ARN; {FORM}"));
    }
    if account.len() != 12 || !account.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "{arn:?}: account {account:?} is not a 12-digit AWS account id; {FORM}"
        ));
    }
    match resource.strip_prefix("role/") {
        Some(name) if !name.is_empty() && !name.ends_with('/') => Ok(()),
        _ => Err(format!("{arn:?} names no role; {FORM}")),
    }
}

fn kubeconfig_location(
    file_value: Option<PathBuf>,
    env: &Environment,
) -> Result<KubeconfigLocation, ConfigError> {
    if let Some(list) = &env.kubeconfig {
        // KUBECONFIG is a path list, like kubectl's (colon-separated on Unix).
        let paths: Vec<PathBuf> = std::env::split_paths(list)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        if !paths.is_empty() {
            return Ok(KubeconfigLocation::Explicit {
                paths,
                field: "KUBECONFIG".into(),
            });
        }
    }
    match file_value {
        Some(path) if path.as_os_str().is_empty() => Err(ConfigError::new(
            "kubeconfig",
            "empty path; name the kubeconfig file or remove the field",
        )),
        Some(path) => Ok(KubeconfigLocation::Explicit {
            paths: vec![path],
            field: "kubeconfig".into(),
        }),
        None => Ok(KubeconfigLocation::Default),
    }
}

impl FileResource {
    fn validate(self, index: usize) -> Result<ResourceConfig, ConfigError> {
        let field = |name: &str| format!("resources[{index}].{name}");
        let kind = self.kind_of(index)?;
        let label_selector = self
            .label_selector
            .map(|text| {
                check_label_selector(&text)
                    .map(|()| text.trim().to_owned())
                    .map_err(|problem| ConfigError::new(field("labelSelector"), problem))
            })
            .transpose()?;
        let field_selector = self
            .field_selector
            .map(|text| {
                check_field_selector(&text)
                    .map(|()| text.trim().to_owned())
                    .map_err(|problem| ConfigError::new(field("fieldSelector"), problem))
            })
            .transpose()?;
        let event_types = match self.event_types {
            None => EventTypes::ALL,
            Some(list) if list.is_empty() => {
                return Err(ConfigError::new(
                    field("event_types"),
                    "an empty list publishes nothing; list some of ADDED, MODIFIED, DELETED, or remove the field for all",
                ));
            }
            Some(list) => {
                let mut types = EventTypes {
                    added: false,
                    modified: false,
                    deleted: false,
                };
                for (i, name) in list.iter().enumerate() {
                    let slot = match name.trim() {
                        "ADDED" => &mut types.added,
                        "MODIFIED" => &mut types.modified,
                        "DELETED" => &mut types.deleted,
                        other => {
                            return Err(ConfigError::new(
                                field(&format!("event_types[{i}]")),
                                format!(
                                    "{other:?} is not an event type; use ADDED, MODIFIED or DELETED"
                                ),
                            ));
                        }
                    };
                    if *slot {
                        return Err(ConfigError::new(
                            field(&format!("event_types[{i}]")),
                            format!("{} is listed twice", name.trim()),
                        ));
                    }
                    *slot = true;
                }
                types
            }
        };
        let paths = |name: &str, list: Vec<String>| -> Result<Vec<ObjectPath>, ConfigError> {
            list.iter()
                .enumerate()
                .map(|(i, text)| {
                    ObjectPath::parse(text).map_err(|problem| {
                        ConfigError::new(field(&format!("{name}[{i}]")), problem)
                    })
                })
                .collect()
        };
        let ignore_changes_in = match self.ignore_changes_in {
            Some(list) if list.is_empty() => {
                return Err(ConfigError::new(
                    field("ignore_changes_in"),
                    "an empty list ignores nothing; list paths such as status.conditions[*].lastHeartbeatTime, or remove the field",
                ));
            }
            list => paths("ignore_changes_in", list.unwrap_or_default())?,
        };
        let redact = match self.redact {
            None | Some(FileRedact::Switch(true)) => None,
            Some(FileRedact::Switch(false)) => Some(Vec::new()),
            Some(FileRedact::Paths(list)) if list.is_empty() => {
                return Err(ConfigError::new(
                    field("redact"),
                    "an empty list adds nothing; list paths to redact, or write `redact: false` to turn redaction off",
                ));
            }
            Some(FileRedact::Paths(list)) => Some(paths("redact", list)?),
        };
        let mut redaction = Redaction::default_for(&kind);
        match redact {
            None => {}
            Some(extra) if extra.is_empty() => redaction.secret_values = false,
            Some(extra) => redaction.paths = extra,
        }
        Ok(ResourceConfig {
            kind,
            label_selector,
            field_selector,
            event_types,
            ignore_changes_in,
            redaction,
        })
    }

    fn kind_of(&self, index: usize) -> Result<ResourceKind, ConfigError> {
        let field = |name: &str| format!("resources[{index}].{name}");
        let kind = match &self.kind {
            Some(kind) if !kind.trim().is_empty() => kind.trim().to_owned(),
            _ => {
                return Err(ConfigError::new(
                    field("kind"),
                    "missing; name the kind, e.g. `kind: Deployment`",
                ));
            }
        };
        let api_version = match &self.api_version {
            Some(v) if !v.trim().is_empty() => v.trim().to_owned(),
            _ => {
                return Err(ConfigError::new(
                    field("apiVersion"),
                    format!(
                        "missing for kind {kind}; add e.g. `apiVersion: v1` or `apiVersion: apps/v1`"
                    ),
                ));
            }
        };
        // apiVersion is `VERSION` (core group) or `GROUP/VERSION`.
        let well_formed = match api_version.split_once('/') {
            None => is_version(&api_version),
            Some((group, version)) => {
                !group.is_empty()
                    && group.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'
                    })
                    && is_version(version)
            }
        };
        if !well_formed {
            return Err(ConfigError::new(
                field("apiVersion"),
                format!(
                    "{api_version:?} is not an apiVersion; write VERSION for the core group (v1) or GROUP/VERSION (apps/v1)"
                ),
            ));
        }
        if !kind.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            || !kind.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(ConfigError::new(
                field("kind"),
                format!(
                    "{kind:?} is not a kind; kinds are CamelCase names such as Pod or Deployment"
                ),
            ));
        }
        Ok(ResourceKind { api_version, kind })
    }
}

fn is_version(version: &str) -> bool {
    version.starts_with('v')
        && version.len() > 1
        && version
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

fn first_duplicate<T: Ord + Clone>(items: &[T]) -> Option<T> {
    let mut seen = std::collections::BTreeSet::new();
    items.iter().find(|item| !seen.insert(*item)).cloned()
}

struct TopLevelLogFields {
    prefix: Option<String>,
    retention_days: Option<u32>,
    exclude_labels: Option<ExcludeLabels>,
}

/// Logs are forwarded when a `logs` section or the log forwarder's top-level
/// `prefix` is present. A setting may stand in either place, not in both.
/// The logs section, and whether `logs.sink` was written (not defaulted).
fn validate_logs(
    section: Option<FileLogs>,
    top: TopLevelLogFields,
) -> Result<Option<(LogsConfig, bool)>, ConfigError> {
    fn one_place<T>(
        field: &str,
        in_section: Option<T>,
        at_top: Option<T>,
    ) -> Result<Option<T>, ConfigError> {
        match (in_section, at_top) {
            (Some(_), Some(_)) => Err(ConfigError::new(
                format!("logs.{field}"),
                format!("set both as `logs.{field}` and as top-level `{field}`; keep one"),
            )),
            (value, None) | (None, value) => Ok(value),
        }
    }

    let section_given = section.is_some();
    let section = section.unwrap_or(FileLogs {
        prefix: None,
        retention_days: None,
        exclude_labels: None,
        max_streams_per_cluster: None,
        lookup_rate_per_second: None,
        sink: None,
        routes: None,
    });
    let sink = match section.sink.as_deref() {
        None | Some("cloudwatch") => LogSink::CloudWatch,
        Some("stdout") => LogSink::Stdout,
        Some(other) => {
            return Err(ConfigError::new(
                "logs.sink",
                format!("{other:?} is not a log sink; use `cloudwatch` or `stdout`"),
            ));
        }
    };
    let sink_given = section.sink.is_some();
    let prefix = one_place("prefix", section.prefix, top.prefix)?;
    let retention = one_place("retention_days", section.retention_days, top.retention_days)?;
    let exclude = one_place("exclude_labels", section.exclude_labels, top.exclude_labels)?;

    let Some(prefix) = prefix else {
        if section_given {
            return Err(ConfigError::new(
                "logs.prefix",
                "missing; log groups are named /{prefix}-{cluster}, e.g. `prefix: myapp-prod`",
            ));
        }
        if retention.is_some() || exclude.is_some() {
            return Err(ConfigError::new(
                "prefix",
                "retention_days and exclude_labels configure log forwarding, which needs `prefix` (log groups are /{prefix}-{cluster})",
            ));
        }
        return Ok(None);
    };
    let prefix = validate_prefix("logs.prefix", &prefix)?;
    let retention_days = validate_retention(
        "logs.retention_days",
        retention.unwrap_or(DEFAULT_RETENTION_DAYS),
    )?;
    let exclude_labels = exclude.map(ExcludeLabels::into_entries).unwrap_or_default();
    for (i, entry) in exclude_labels.iter().enumerate() {
        if entry.is_empty() {
            return Err(ConfigError::new(
                format!("logs.exclude_labels[{i}]"),
                "an empty entry would exclude every pod; remove it",
            ));
        }
    }
    let max_streams_per_cluster = section
        .max_streams_per_cluster
        .unwrap_or(DEFAULT_MAX_LOG_STREAMS_PER_CLUSTER);
    if max_streams_per_cluster == 0 {
        return Err(ConfigError::new(
            "logs.max_streams_per_cluster",
            "0 would follow no log; use at least 1",
        ));
    }
    let lookup_rate_per_second = section
        .lookup_rate_per_second
        .unwrap_or(DEFAULT_LOG_LOOKUP_RATE_PER_SECOND);
    if lookup_rate_per_second == 0 {
        return Err(ConfigError::new(
            "logs.lookup_rate_per_second",
            "0 would never look a stream up; use at least 1",
        ));
    }
    let routes = validate_log_routes(section.routes.unwrap_or_default(), &prefix, retention_days)?;
    Ok(Some((
        LogsConfig {
            prefix,
            retention_days,
            exclude_labels,
            max_streams_per_cluster,
            lookup_rate_per_second,
            sink,
            routes,
        },
        sink_given,
    )))
}

/// A log group prefix: CloudWatch allows [.-_/#A-Za-z0-9] in a group name
/// (CreateLogGroup, logGroupName). Refused rather than rewritten, since the
/// IAM policy is scoped to `/{prefix}-*`.
fn validate_prefix(field: &str, prefix: &str) -> Result<String, ConfigError> {
    if prefix.is_empty() || !prefix.chars().all(crate::names::is_log_group_char) {
        return Err(ConfigError::new(
            field,
            format!("{prefix:?} must be non-empty and use only letters, digits and . - _ / #"),
        ));
    }
    Ok(prefix.to_owned())
}

/// One of [`CLOUDWATCH_RETENTION_DAYS`].
fn validate_retention(field: &str, days: u32) -> Result<u32, ConfigError> {
    if !CLOUDWATCH_RETENTION_DAYS.contains(&days) {
        let accepted: Vec<String> = CLOUDWATCH_RETENTION_DAYS
            .iter()
            .map(u32::to_string)
            .collect();
        return Err(ConfigError::new(
            field,
            format!(
                "{days} is not a retention CloudWatch Logs accepts; use one of {}",
                accepted.join(", ")
            ),
        ));
    }
    Ok(days)
}

fn non_empty(field: &str, value: String) -> Result<String, ConfigError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(ConfigError::new(field, "must not be empty"));
    }
    Ok(trimmed.to_owned())
}

/// Namespace names are DNS-1123 labels: at most 63 characters of lower-case
/// letters, digits and '-', starting and ending with a letter or digit.
fn validate_namespace(field: &str, namespace: &str) -> Result<(), ConfigError> {
    let valid = !namespace.is_empty()
        && namespace.len() <= 63
        && namespace
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !namespace.starts_with('-')
        && !namespace.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!(
                "{namespace:?} is not a namespace name (lower-case letters, digits and '-', at most 63)"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses with a region set, as every deployment that ships logs has.
    fn parse(yaml: &str) -> Result<Config, ConfigError> {
        let env = Environment {
            aws_region: Some("eu-west-1".into()),
            ..Environment::default()
        };
        Config::from_yaml(yaml, &ConfigSource::Inline, &env)
    }

    fn parse_err(yaml: &str) -> ConfigError {
        parse(yaml).expect_err("configuration should be refused")
    }

    /// The event forwarder's config.yaml, as its README shows it (seed 003).
    const EVENT_FORWARDER_SEED: &str = "\
resources:
  - apiVersion: v1
    kind: Pod
  - apiVersion: apps/v1
    kind: Deployment
  - apiVersion: v1
    kind: ConfigMap
";

    /// The log forwarder's config.yaml, as its README shows it (seed 000).
    const LOG_FORWARDER_SEED: &str = "\
# config.yaml
prefix: arr-hummingbird-prod-cloudwatch-log-forwarder
cluster: mpp-prod
namespaces:
  - hummingbird--runner
  - hummingbird--runner-jobs
exclude_labels:
  app.kubernetes.io/name: cloudwatch-log-forwarder
retention_days: 30
";

    #[test]
    fn event_forwarder_seed_config_loads_unchanged() {
        let config = parse(EVENT_FORWARDER_SEED).unwrap();
        let kinds: Vec<String> = config.resources.iter().map(ToString::to_string).collect();
        assert_eq!(kinds, ["v1/Pod", "apps/v1/Deployment", "v1/ConfigMap"]);
        assert_eq!(config.resources[1].kind.group(), "apps");
        assert_eq!(config.resources[1].kind.version(), "v1");
        assert_eq!(config.resources[0].kind.group(), "");
        assert_eq!(
            config.clusters,
            ClusterSelection::Contexts {
                kubeconfig: KubeconfigLocation::Default,
                names: None
            }
        );
        assert_eq!(config.sns, None, "no topic: events go to stdout");
        assert_eq!(config.logs, None);
    }

    #[test]
    fn log_forwarder_seed_config_loads_unchanged() {
        let config = parse(LOG_FORWARDER_SEED).unwrap();
        assert_eq!(
            config.clusters,
            ClusterSelection::SingleCluster {
                name: "mpp-prod".into(),
                namespaces: vec![
                    "hummingbird--runner".into(),
                    "hummingbird--runner-jobs".into()
                ],
                kubeconfig: KubeconfigLocation::Default,
            }
        );
        let logs = config.logs.unwrap();
        assert_eq!(logs.prefix, "arr-hummingbird-prod-cloudwatch-log-forwarder");
        assert_eq!(logs.retention_days, 30);
        assert_eq!(
            logs.exclude_labels,
            vec![BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                "cloudwatch-log-forwarder".to_string()
            )])]
        );
        assert!(config.resources.is_empty());
    }

    #[test]
    fn unified_config_loads() {
        let config = parse(
            "
kubeconfig: /etc/kubeherald/kubeconfig
contexts: [prod-eu, prod-us]
resources:
  - {apiVersion: v1, kind: Pod}
sns: { topic_arn: 'arn:aws:sns:eu-west-1:123456789012:events' }
logs:
  prefix: myapp-prod
  retention_days: 90
  exclude_labels: [{app.kubernetes.io/name: kubeherald}, {tier: debug, team: x}]
  max_streams_per_cluster: 50
  lookup_rate_per_second: 4
spool: { dir: /var/spool/kubeherald, max_bytes: 2GiB }
",
        )
        .unwrap();
        assert_eq!(
            config.clusters,
            ClusterSelection::Contexts {
                kubeconfig: KubeconfigLocation::Explicit {
                    paths: vec!["/etc/kubeherald/kubeconfig".into()],
                    field: "kubeconfig".into()
                },
                names: Some(vec!["prod-eu".into(), "prod-us".into()]),
            }
        );
        let sns = config.sns.unwrap();
        assert_eq!(sns.topic_arn.region(), "eu-west-1");
        assert!(!sns.topic_arn.is_fifo());
        let logs = config.logs.unwrap();
        assert_eq!(logs.retention_days, 90);
        assert_eq!(logs.exclude_labels.len(), 2);
        assert_eq!(logs.max_streams_per_cluster, 50);
        assert_eq!(logs.lookup_rate_per_second, 4);
        assert_eq!(
            config.spool,
            SpoolConfig {
                dir: Some("/var/spool/kubeherald".into()),
                max_bytes: 2 << 30
            }
        );
    }

    #[test]
    fn defaults_apply_when_fields_are_absent() {
        let config = parse("logs: {prefix: p}").unwrap();
        let logs = config.logs.unwrap();
        assert_eq!(logs.retention_days, DEFAULT_RETENTION_DAYS);
        assert!(logs.exclude_labels.is_empty());
        assert_eq!(
            logs.max_streams_per_cluster,
            DEFAULT_MAX_LOG_STREAMS_PER_CLUSTER
        );
        assert_eq!(
            logs.lookup_rate_per_second,
            DEFAULT_LOG_LOOKUP_RATE_PER_SECOND
        );
        assert_eq!(
            config.spool,
            SpoolConfig {
                dir: None,
                max_bytes: DEFAULT_SPOOL_MAX_BYTES
            }
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = Environment {
            sns_topic_arn: Some("arn:aws:sns:us-east-1:123456789012:from-env.fifo".into()),
            spool_dir: Some("/spool/from-env".into()),
            kubeconfig: Some("/a/config:/b/config".into()),
            ..Environment::default()
        };
        let yaml = "
kubeconfig: /from/file
sns: {topic_arn: 'arn:aws:sns:eu-west-1:123456789012:from-file'}
spool: {dir: /spool/from-file}
";
        let config = Config::from_yaml(yaml, &ConfigSource::Inline, &env).unwrap();
        let arn = config.sns.unwrap().topic_arn;
        assert_eq!(
            arn.as_str(),
            "arn:aws:sns:us-east-1:123456789012:from-env.fifo"
        );
        assert!(arn.is_fifo());
        assert_eq!(config.spool.dir, Some(PathBuf::from("/spool/from-env")));
        assert_eq!(
            config.clusters,
            ClusterSelection::Contexts {
                kubeconfig: KubeconfigLocation::Explicit {
                    paths: vec!["/a/config".into(), "/b/config".into()],
                    field: "KUBECONFIG".into()
                },
                names: None
            }
        );
    }

    #[test]
    fn config_path_wins_over_inline_config_and_flag_wins_over_both() {
        let dir = tempfile::tempdir().unwrap();
        let from_path = dir.path().join("path.yaml");
        std::fs::write(&from_path, "logs: {prefix: from-path}").unwrap();
        let from_flag = dir.path().join("flag.yaml");
        std::fs::write(&from_flag, "logs: {prefix: from-flag}").unwrap();
        let env = Environment {
            config_path: Some(from_path.display().to_string()),
            config: Some("logs: {prefix: inline}".into()),
            aws_region: Some("eu-west-1".into()),
            ..Environment::default()
        };
        let prefix = |config: Config| config.logs.unwrap().prefix;
        assert_eq!(prefix(Config::load(None, &env).unwrap()), "from-path");
        assert_eq!(
            prefix(Config::load(Some(&from_flag), &env).unwrap()),
            "from-flag"
        );
        let inline_only = Environment {
            config: Some("logs: {prefix: inline}".into()),
            aws_region: Some("eu-west-1".into()),
            ..Environment::default()
        };
        assert_eq!(prefix(Config::load(None, &inline_only).unwrap()), "inline");
    }

    #[test]
    fn missing_configuration_names_the_variables() {
        let err = Config::load(None, &Environment::default()).unwrap_err();
        assert_eq!(err.field, "CONFIG_PATH");
        assert!(err.problem.contains("--config"), "{err}");
    }

    #[test]
    fn unreadable_config_file_is_named() {
        let err = Config::load(
            Some(Path::new("/nonexistent/kubeherald.yaml")),
            &Environment::default(),
        )
        .unwrap_err();
        assert_eq!(err.field, "--config");
        assert!(
            err.problem.contains("/nonexistent/kubeherald.yaml"),
            "{err}"
        );
    }

    #[test]
    fn unknown_field_is_refused_and_named() {
        for (yaml, field) in [
            ("resourses: []", "resourses"),
            ("logs: {prefix: p, retention: 30}", "retention"),
            ("sns: {topic: x}", "topic"),
            ("spool: {directory: /x}", "directory"),
            (
                "resources: [{apiVersion: v1, kind: Pod, namespace: x}]",
                "namespace",
            ),
        ] {
            let err = parse_err(yaml);
            assert!(err.to_string().contains(field), "{yaml}: {err}");
            assert!(!err.to_string().contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn kind_without_api_version_is_refused() {
        let err =
            parse_err("resources:\n  - apiVersion: v1\n    kind: Pod\n  - kind: Deployment\n");
        assert_eq!(err.field, "resources[1].apiVersion");
        assert!(err.problem.contains("Deployment"), "{err}");
    }

    #[test]
    fn malformed_resources_are_refused() {
        assert_eq!(
            parse_err("resources: [{apiVersion: v1}]").field,
            "resources[0].kind"
        );
        assert_eq!(
            parse_err("resources: [{apiVersion: apps, kind: Deployment}]").field,
            "resources[0].apiVersion"
        );
        assert_eq!(
            parse_err("resources: [{apiVersion: /v1, kind: Deployment}]").field,
            "resources[0].apiVersion"
        );
        assert_eq!(
            parse_err("resources: [{apiVersion: v1, kind: pods}]").field,
            "resources[0].kind"
        );
        assert_eq!(
            parse_err("resources: [{apiVersion: v1, kind: Pod}, {apiVersion: v1, kind: Pod}]")
                .field,
            "resources"
        );
    }

    #[test]
    fn retention_cloudwatch_refuses_is_refused() {
        for days in [0, 2, 31, 366, 10000] {
            let err = parse_err(&format!("logs: {{prefix: p, retention_days: {days}}}"));
            assert_eq!(err.field, "logs.retention_days");
            assert!(err.problem.contains("1, 3, 5, 7, 14, 30"), "{err}");
        }
        let err = parse_err("prefix: p\ncluster: c\nnamespaces: [a]\nretention_days: 45\n");
        assert_eq!(err.field, "logs.retention_days");
        for days in CLOUDWATCH_RETENTION_DAYS {
            parse(&format!("logs: {{prefix: p, retention_days: {days}}}")).unwrap();
        }
    }

    #[test]
    fn a_resource_entry_takes_selectors_event_types_ignored_paths_and_redaction() {
        let config = parse(
            "resources:
  - apiVersion: v1
    kind: Pod
    labelSelector: 'tier=web,env in (prod, staging)'
    fieldSelector: status.phase!=Succeeded
    event_types: [ADDED, DELETED]
    ignore_changes_in: ['status.conditions[*].lastHeartbeatTime', metadata.annotations.leader]
    redact: ['spec.containers[*].env']
  - {apiVersion: v1, kind: Secret}
  - {apiVersion: v1, kind: Secret, redact: false}
",
        );
        // Two Secret entries are a duplicate kind: refused, naming it.
        assert_eq!(
            config.unwrap_err().to_string(),
            "resources: v1/Secret is listed twice; list each kind once"
        );
        let config = parse(
            "resources:
  - apiVersion: v1
    kind: Pod
    labelSelector: 'tier=web,env in (prod, staging)'
    fieldSelector: status.phase!=Succeeded
    event_types: [ADDED, DELETED]
    ignore_changes_in: ['status.conditions[*].lastHeartbeatTime', metadata.annotations.leader]
    redact: ['spec.containers[*].env']
  - {apiVersion: v1, kind: Secret}
  - {apiVersion: example.com/v1, kind: Secret, redact: true}
",
        )
        .unwrap();
        let pod = &config.resources[0];
        assert_eq!(
            pod.label_selector.as_deref(),
            Some("tier=web,env in (prod, staging)")
        );
        assert_eq!(
            pod.field_selector.as_deref(),
            Some("status.phase!=Succeeded")
        );
        assert!(pod.event_types.allows("ADDED") && pod.event_types.allows("DELETED"));
        assert!(!pod.event_types.allows("MODIFIED"));
        assert_eq!(pod.ignore_changes_in.len(), 2);
        assert!(!pod.redaction.secret_values);
        assert_eq!(pod.redaction.paths[0].as_str(), "spec.containers[*].env");
        // Core Secrets are redacted by default; a custom kind named Secret is not.
        assert!(config.resources[1].redaction.secret_values);
        assert!(config.resources[2].redaction.is_off());

        let off = parse("resources: [{apiVersion: v1, kind: Secret, redact: false}]").unwrap();
        assert!(off.resources[0].redaction.is_off());
        let more =
            parse("resources: [{apiVersion: v1, kind: Secret, redact: [metadata.labels.owner]}]")
                .unwrap();
        assert!(
            more.resources[0].redaction.secret_values,
            "paths add to the default"
        );
        assert_eq!(more.resources[0].redaction.paths.len(), 1);
        let plain = parse("resources: [{apiVersion: v1, kind: ConfigMap}]").unwrap();
        assert_eq!(
            plain.resources[0],
            ResourceConfig::of(plain.resources[0].kind.clone())
        );
        assert_eq!(plain.resources[0].event_types, EventTypes::ALL);
    }

    #[test]
    fn bad_selectors_event_types_and_paths_are_refused_naming_the_field() {
        let entry = |extra: &str| {
            parse_err(&format!(
                "resources:\n  - {{apiVersion: v1, kind: Pod, {extra}}}\n"
            ))
        };
        for (extra, field, says) in [
            (
                "labelSelector: 'app in web'",
                "resources[0].labelSelector",
                "parentheses",
            ),
            ("labelSelector: ''", "resources[0].labelSelector", "empty"),
            (
                "fieldSelector: 'status.phase in (Running)'",
                "resources[0].fieldSelector",
                "field=value",
            ),
            ("event_types: []", "resources[0].event_types", "empty list"),
            (
                "event_types: [ADDED, UPDATED]",
                "resources[0].event_types[1]",
                "not an event type",
            ),
            (
                "event_types: [ADDED, ADDED]",
                "resources[0].event_types[1]",
                "twice",
            ),
            (
                "ignore_changes_in: ['status..phase']",
                "resources[0].ignore_changes_in[0]",
                "empty member",
            ),
            (
                "ignore_changes_in: []",
                "resources[0].ignore_changes_in",
                "ignores nothing",
            ),
            ("redact: ['a[b]']", "resources[0].redact[0]", "bracket"),
            ("redact: []", "resources[0].redact", "redact: false"),
        ] {
            let err = entry(extra);
            assert_eq!(err.field, field, "{extra}: {err}");
            assert!(err.problem.contains(says), "{extra}: {err}");
        }
    }

    #[test]
    fn routes_are_validated_and_pick_topics() {
        let base = "sns:\n  topic_arn: arn:aws:sns:eu-west-1:123456789012:default\n  routes:\n";
        let config = parse(&format!(
            "{base}    - {{name: apps, match: {{kind: [Deployment], context: [prod-*]}}, topic_arn: 'arn:aws:sns:eu-west-1:123456789012:apps.fifo'}}
    - {{match: {{event_type: [DELETED]}}, topic_arn: 'arn:aws:sns:eu-west-1:123456789012:deletions', also_default: true}}
"
        ))
        .unwrap();
        let sns = config.sns.unwrap();
        assert_eq!(sns.routes[0].name, "apps");
        assert_eq!(sns.routes[1].name, "routes[1]");
        let names = |topics: Vec<&TopicArn>| -> Vec<String> {
            topics
                .iter()
                .map(|t| t.as_str().rsplit(':').next().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            names(sns.topics_for("prod-eu", "ns", "Deployment", "ADDED")),
            ["apps.fifo"]
        );
        assert_eq!(
            names(sns.topics_for("prod-eu", "ns", "Deployment", "DELETED")),
            ["default", "apps.fifo", "deletions"]
        );
        assert_eq!(
            names(sns.topics_for("dev", "ns", "Deployment", "ADDED")),
            ["default"]
        );
        assert_eq!(
            names(sns.topics_for("dev", "ns", "Pod", "DELETED")),
            ["default", "deletions"]
        );
        assert_eq!(sns.all_topics().count(), 3);

        let arn = |name: &str| format!("arn:aws:sns:eu-west-1:123456789012:{name}");
        for (routes, field, says) in [
            (
                format!(
                    "    - {{name: a, topic_arn: {}}}\n    - {{name: a, topic_arn: {}}}\n",
                    arn("x"),
                    arn("y")
                ),
                "sns.routes[1].name",
                "also the name of sns.routes[0]",
            ),
            (
                format!(
                    "    - {{topic_arn: {}}}\n    - {{topic_arn: {}}}\n",
                    arn("x"),
                    arn("x")
                ),
                "sns.routes[1].topic_arn",
                "also the topic of sns.routes[0]",
            ),
            (
                format!("    - {{topic_arn: {}}}\n", arn("default")),
                "sns.routes[0].topic_arn",
                "also_default",
            ),
            (
                "    - {topic_arn: 'arn:aws:sqs:eu-west-1:123456789012:q'}\n".into(),
                "sns.routes[0].topic_arn",
                "not an SNS topic",
            ),
            (
                "    - {topic_arn: 'arn:aws:sns:us-east-1:123456789012:q', region: eu-west-1}\n"
                    .into(),
                "sns.routes[0].region",
                "not the region of",
            ),
            (
                format!(
                    "    - {{topic_arn: {}, role_arn: 'arn:aws:iam::1234:role/r'}}\n",
                    arn("x")
                ),
                "sns.routes[0].role_arn",
                "12-digit",
            ),
            (
                format!("    - {{topic_arn: {}, external_id: abc}}\n", arn("x")),
                "sns.routes[0].external_id",
                "without `role_arn`",
            ),
            (
                "    - {match: {kind: [Pod]}}\n".into(),
                "sns.routes[0].topic_arn",
                "missing",
            ),
            (
                format!(
                    "    - {{match: {{context: ['prod-?']}}, topic_arn: {}}}\n",
                    arn("x")
                ),
                "sns.routes[0].match.context[0]",
                "only *",
            ),
            (
                format!(
                    "    - {{match: {{namespace: []}}, topic_arn: {}}}\n",
                    arn("x")
                ),
                "sns.routes[0].match.namespace",
                "matches nothing",
            ),
            (
                format!(
                    "    - {{match: {{event_type: [UPDATED]}}, topic_arn: {}}}\n",
                    arn("x")
                ),
                "sns.routes[0].match.event_type[0]",
                "no event type",
            ),
        ] {
            let err = parse_err(&format!("{base}{routes}"));
            assert_eq!(err.field, field, "{routes}: {err}");
            assert!(err.problem.contains(says), "{routes}: {err}");
        }
        let err = parse_err(&format!(
            "sns:\n  routes:\n    - {{topic_arn: {}}}\n",
            arn("x")
        ));
        assert_eq!(err.field, "sns.topic_arn");
    }

    #[test]
    fn a_route_topic_elsewhere_gets_its_region_and_role() {
        let config = parse(
            "sns:
  topic_arn: arn:aws:sns:eu-west-1:123456789012:default
  routes:
    - {topic_arn: 'arn:aws:sns:us-east-1:123456789012:here'}
    - {topic_arn: 'arn:aws:sns:eu-west-1:210987654321:tenant', role_arn: 'arn:aws:iam::210987654321:role/kubeherald', external_id: tenant-7}
",
        )
        .unwrap();
        let sns = config.sns.unwrap();
        assert_eq!(sns.routes[0].access.region.as_deref(), Some("us-east-1"));
        assert!(sns.routes[0].access.role_arn.is_none());
        assert_eq!(
            sns.routes[1].access,
            AwsAccess {
                role_arn: Some("arn:aws:iam::210987654321:role/kubeherald".into()),
                external_id: Some("tenant-7".into()),
                region: None,
            }
        );
    }

    #[test]
    fn log_routes_pick_the_first_match_and_inherit_the_defaults() {
        let config = parse(
            "logs:
  prefix: kh
  retention_days: 14
  routes:
    - name: payments
      match: {namespace: [payments-*], labels: {team: pay}}
      group: /tenants/payments
      retention_days: 90
      role_arn: 'arn:aws:iam::210987654321:role/logs-writer'
      external_id: payments-ext
      region: eu-central-1
    - match: {context: [staging]}
",
        )
        .unwrap();
        let logs = config.logs.unwrap();
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let pay = labels(&[("team", "pay"), ("app", "api")]);
        assert_eq!(logs.route_for("prod", "payments-eu", &pay), "payments");
        assert_eq!(
            logs.route_for("staging", "payments-eu", &pay),
            "payments",
            "the first match wins"
        );
        assert_eq!(
            logs.route_for("prod", "payments-eu", &labels(&[("team", "web")])),
            DEFAULT_LOG_ROUTE
        );
        assert_eq!(
            logs.route_for("staging", "web", &BTreeMap::new()),
            "routes[1]"
        );
        let destinations = logs.destinations();
        assert_eq!(destinations[0].name, DEFAULT_LOG_ROUTE);
        assert_eq!(destinations[0].naming.group("c1"), "/kh-c1");
        assert_eq!(destinations[1].naming.group("c1"), "/tenants/payments");
        assert_eq!(destinations[1].retention_days, 90);
        assert_eq!(
            destinations[1].access.region.as_deref(),
            Some("eu-central-1")
        );
        assert_eq!(destinations[2].naming, GroupNaming::Prefix("kh".into()));
        assert_eq!(destinations[2].retention_days, 14);
    }

    #[test]
    fn an_external_id_is_never_printed() {
        let access = AwsAccess {
            role_arn: Some("arn:aws:iam::210987654321:role/w".into()),
            external_id: Some("s3cr3t-shared".into()),
            region: None,
        };
        let printed = format!("{access:?}");
        assert!(!printed.contains("s3cr3t-shared"), "{printed}");
        assert!(printed.contains("arn:aws:iam::210987654321:role/w"));
    }

    #[test]
    fn log_routes_are_validated_naming_the_field() {
        let base = "logs:\n  prefix: kh\n  routes:\n";
        let role = "arn:aws:iam::210987654321:role/w";
        for (routes, field, says) in [
            (
                "    - {name: default}\n".to_owned(),
                "logs.routes[0].name",
                "no route matches",
            ),
            (
                "    - {name: a, group: /g1}\n    - {name: a, group: /g2}\n".to_owned(),
                "logs.routes[1].name",
                "also the name of logs.routes[0]",
            ),
            (
                "    - {group: /g, prefix: p}\n".to_owned(),
                "logs.routes[0].group",
                "keep one",
            ),
            (
                "    - {group: 'bad name'}\n".to_owned(),
                "logs.routes[0].group",
                "not a log group name",
            ),
            (
                "    - {prefix: 'a b'}\n".to_owned(),
                "logs.routes[0].prefix",
                "letters",
            ),
            (
                "    - {retention_days: 2}\n".to_owned(),
                "logs.routes[0].retention_days",
                "use one of",
            ),
            (
                "    - {match: {namespace: ['a?']}}\n".to_owned(),
                "logs.routes[0].match.namespace[0]",
                "only *",
            ),
            (
                "    - {match: {context: []}}\n".to_owned(),
                "logs.routes[0].match.context",
                "matches nothing",
            ),
            (
                "    - {role_arn: 'arn:aws:sns:eu-west-1:210987654321:t'}\n".to_owned(),
                "logs.routes[0].role_arn",
                "not an IAM role",
            ),
            (
                "    - {role_arn: 'arn:aws:iam::210987654321:user/u'}\n".to_owned(),
                "logs.routes[0].role_arn",
                "names no role",
            ),
            (
                format!("    - {{role_arn: '{role}', external_id: 'x'}}\n"),
                "logs.routes[0].external_id",
                "2 to 1224",
            ),
            (
                "    - {external_id: abc}\n".to_owned(),
                "logs.routes[0].external_id",
                "without `role_arn`",
            ),
            (
                "    - {region: EU}\n".to_owned(),
                "logs.routes[0].region",
                "not a region",
            ),
            (
                format!(
                    "    - {{group: /g, role_arn: '{role}'}}\n    - {{name: b, group: /g, role_arn: '{role}'}}\n"
                ),
                "logs.routes[1].group",
                "same groups in the same account as logs.routes[0]",
            ),
        ] {
            let err = parse_err(&format!("{base}{routes}"));
            assert_eq!(err.field, field, "{routes}: {err}");
            assert!(err.problem.contains(says), "{routes}: {err}");
        }
    }

    #[test]
    fn malformed_topic_arn_is_refused() {
        for arn in [
            "my-topic",
            "arn:aws:sqs:us-east-1:123456789012:queue",
            "arn:aws:sns:us-east-1:1234:topic",
            "arn:aws:sns::123456789012:topic",
            "arn:aws:sns:us-east-1:123456789012:",
            "arn:aws:sns:us-east-1:123456789012:bad name",
            "arn:aws:sns:us-east-1:123456789012:a:b",
        ] {
            let err = parse_err(&format!("sns: {{topic_arn: '{arn}'}}"));
            assert_eq!(err.field, "sns.topic_arn", "{arn}");
        }
        let env = Environment {
            sns_topic_arn: Some("not-an-arn".into()),
            ..Environment::default()
        };
        let err = Config::from_yaml("", &ConfigSource::Inline, &env).unwrap_err();
        assert_eq!(err.field, "SNS_TOPIC_ARN");
    }

    #[test]
    fn topic_arn_parts() {
        let arn = TopicArn::parse("arn:aws-cn:sns:cn-north-1:123456789012:t_1-x").unwrap();
        assert_eq!(arn.region(), "cn-north-1");
        assert_eq!(
            arn.to_string(),
            "arn:aws-cn:sns:cn-north-1:123456789012:t_1-x"
        );
    }

    #[test]
    fn cluster_and_namespace_rules() {
        assert_eq!(
            parse_err("cluster: c\ncontexts: [a]\nnamespaces: [x]").field,
            "cluster"
        );
        assert_eq!(parse_err("namespaces: [x]").field, "namespaces");
        assert_eq!(parse_err("cluster: c").field, "namespaces");
        assert_eq!(
            parse_err("cluster: c\nnamespaces: [Bad_NS]").field,
            "namespaces[0]"
        );
        assert_eq!(parse_err("contexts: []").field, "contexts");
        assert_eq!(parse_err("kubeconfig: ''").field, "kubeconfig");
    }

    #[test]
    fn log_settings_stand_in_one_place() {
        assert_eq!(
            parse_err("prefix: a\nlogs: {prefix: b}").field,
            "logs.prefix"
        );
        assert_eq!(parse_err("logs: {retention_days: 30}").field, "logs.prefix");
        assert_eq!(parse_err("retention_days: 30").field, "prefix");
        assert_eq!(
            parse_err("logs: {prefix: 'bad prefix'}").field,
            "logs.prefix"
        );
        assert_eq!(
            parse_err("logs: {prefix: p, exclude_labels: [{}]}").field,
            "logs.exclude_labels[0]"
        );
        assert_eq!(
            parse_err("logs: {prefix: p, max_streams_per_cluster: 0}").field,
            "logs.max_streams_per_cluster"
        );
        assert_eq!(
            parse_err("logs: {prefix: p, lookup_rate_per_second: 0}").field,
            "logs.lookup_rate_per_second"
        );
    }

    #[test]
    fn http_listen_is_an_address_named_when_wrong() {
        assert_eq!(
            parse("{}").unwrap().http_listen.to_string(),
            DEFAULT_HTTP_LISTEN
        );
        let config = parse("http: {listen: '127.0.0.1:9191'}").unwrap();
        assert_eq!(config.http_listen.port(), 9191);
        assert_eq!(
            parse_err("http: {listen: 'localhost'}").field,
            "http.listen"
        );
        assert_eq!(parse_err("http: {port: 9090}").field, "http.port");
        let env = Environment {
            http_listen: Some("not an address".into()),
            ..Environment::default()
        };
        let err = Config::from_yaml(
            "http: {listen: '0.0.0.0:9090'}",
            &ConfigSource::Inline,
            &env,
        )
        .unwrap_err();
        assert_eq!(
            err.field, "HTTP_LISTEN",
            "the environment overrides the file"
        );
    }

    #[test]
    fn log_forwarding_needs_a_region() {
        let no_region = Environment::default();
        let err = Config::from_yaml(
            "logs: {prefix: p, sink: cloudwatch}",
            &ConfigSource::Inline,
            &no_region,
        )
        .unwrap_err();
        assert_eq!(err.field, "AWS_REGION");
        // No region at all and no sink named: log lines go to stdout (SPEC §4).
        let config =
            Config::from_yaml("logs: {prefix: p}", &ConfigSource::Inline, &no_region).unwrap();
        assert_eq!(config.logs.unwrap().sink, LogSink::Stdout);
        let config = Config::from_yaml(
            "logs: {prefix: p, sink: stdout}",
            &ConfigSource::Inline,
            &no_region,
        )
        .unwrap();
        assert_eq!(config.logs.unwrap().sink, LogSink::Stdout);
        assert_eq!(
            parse_err("logs: {prefix: p, sink: kafka}").field,
            "logs.sink"
        );
        assert_eq!(
            parse("logs: {prefix: p}").unwrap().logs.unwrap().sink,
            LogSink::CloudWatch,
            "with a region, CloudWatch"
        );
        let with_topic =
            "logs: {prefix: p}\nsns: {topic_arn: 'arn:aws:sns:ap-south-1:123456789012:t'}";
        let config = Config::from_yaml(with_topic, &ConfigSource::Inline, &no_region).unwrap();
        assert_eq!(config.aws_region.as_deref(), Some("ap-south-1"));
        assert_eq!(
            parse("logs: {prefix: p}").unwrap().aws_region.as_deref(),
            Some("eu-west-1")
        );
        // Events to stdout need no AWS at all.
        let config = Config::from_yaml("resources: []", &ConfigSource::Inline, &no_region).unwrap();
        assert_eq!(config.aws_region, None);
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_byte_size("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_byte_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_byte_size("1048576"), Ok(1 << 20));
        assert!(parse_byte_size("2 parsecs").is_err());
        assert!(parse_byte_size("GiB").is_err());
        assert!(parse_byte_size("99999999999TiB").is_err());
        assert_eq!(
            parse_err("spool: {max_bytes: 1KiB}").field,
            "spool.max_bytes"
        );
        assert!(
            parse_err("spool: {max_bytes: lots}")
                .to_string()
                .contains("lots")
        );
        assert_eq!(
            parse("spool: {max_bytes: 16777216}")
                .unwrap()
                .spool
                .max_bytes,
            16 << 20
        );
    }

    #[test]
    fn memory_bounds_are_sizes_with_a_floor() {
        assert_eq!(
            parse("resources: []").unwrap().memory,
            MemoryConfig::default()
        );
        let memory =
            parse("memory: {sns_in_flight: 8MiB, logs_in_flight: 16MiB, list_page: 256KiB}")
                .unwrap()
                .memory;
        assert_eq!(
            memory,
            MemoryConfig {
                sns_in_flight: 8 << 20,
                logs_in_flight: 16 << 20,
                list_page: 256 << 10,
            }
        );
        let partial = parse("memory: {list_page: 1MiB}").unwrap().memory;
        assert_eq!(partial.list_page, 1 << 20);
        assert_eq!(partial.sns_in_flight, MemoryConfig::default().sns_in_flight);
        let err = parse_err("memory: {sns_in_flight: 100KiB}");
        assert_eq!(err.field, "memory.sns_in_flight");
        assert!(err.to_string().contains("at least 1MiB"), "{err}");
        assert_eq!(
            parse_err("memory: {list_page: 1KiB}").field,
            "memory.list_page"
        );
        assert_eq!(
            parse_err("memory: {sns_window: 1MiB}").field,
            "memory.sns_window"
        );
    }

    #[test]
    fn empty_document_is_an_empty_configuration() {
        let config = parse("# nothing yet\n").unwrap();
        assert!(config.resources.is_empty());
        assert_eq!(config.logs, None);
    }
}

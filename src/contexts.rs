//! Kubeconfig contexts → the (cluster, namespace) pairs kubeherald watches.
//!
//! With a kubeconfig, each selected context is one target: its name is the
//! cluster name for logs, its namespace is the namespace watched (`default`
//! where the context names none, as kubectl does), its cluster's `server` is
//! the `cluster` SNS attribute. Credentials are whatever kube-rs supports in
//! a kubeconfig: bearer tokens and token files, client certificates, exec
//! plugins (run on demand by the client, not here), auth providers.
//!
//! The log forwarder's style (`cluster` + `namespaces`) is one target per
//! namespace of one cluster: inside a pod (where `KUBERNETES_SERVICE_HOST` is
//! set) through the in-cluster service account, elsewhere through the
//! kubeconfig's current context.
//!
//! Everything here runs once at start-up: a problem is a [`ConfigError`]
//! naming the field, never a retry. Reachability is not checked here; an
//! unreachable cluster is a runtime condition of its own watcher.
//!
//! May import: `config`. Imported by `app`, `watch` and `logs` (the
//! [`ClusterTarget`] each thread runs for).

use std::fmt;
use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};

use crate::config::{ClusterSelection, ConfigError, KubeconfigLocation};

/// The namespace of a context that names none (kubectl's rule).
pub const DEFAULT_NAMESPACE: &str = "default";

/// One (cluster, namespace) pair to watch, with the client configuration
/// that reaches it.
#[derive(Clone)]
pub struct ClusterTarget {
    /// The context's name: the `context` SNS attribute. In the log
    /// forwarder's style, the kubeconfig's current context or `in-cluster`.
    pub context: String,
    /// The cluster's name in CloudWatch log group names: the context name,
    /// or `cluster` in the log forwarder's style.
    pub cluster_name: String,
    /// The API server URL: the `cluster` SNS attribute, as the event
    /// forwarder set it.
    pub server_url: String,
    /// The namespace watched.
    pub namespace: String,
    /// What the Kubernetes client of this target is built from.
    pub client_config: kube::Config,
}

impl ClusterTarget {
    /// Why this target is reached without TLS verification (SPEC §6: it
    /// works, and is said and counted): `plain-http` for an `http://`
    /// server, `skip-tls-verify` for `insecure-skip-tls-verify: true`.
    pub fn insecure_reasons(&self) -> Vec<&'static str> {
        let mut reasons = Vec::new();
        if self.server_url.starts_with("http://") {
            reasons.push("plain-http");
        }
        if self.client_config.accept_invalid_certs {
            reasons.push("skip-tls-verify");
        }
        reasons
    }
}

// Written by hand so credentials in the client configuration can never reach
// a log line through `{:?}`.
impl fmt::Debug for ClusterTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterTarget")
            .field("context", &self.context)
            .field("cluster_name", &self.cluster_name)
            .field("server_url", &self.server_url)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// Facts about the process's surroundings that decide where credentials come
/// from; a value so tests can describe a pod without being in one.
#[derive(Debug, Clone, Default)]
pub struct Surroundings {
    /// `$HOME`, for `~/.kube/config`.
    pub home: Option<PathBuf>,
    /// Whether `KUBERNETES_SERVICE_HOST` is set: kubeherald runs in a pod.
    pub in_cluster: bool,
}

impl Surroundings {
    pub fn from_process() -> Self {
        Self {
            home: std::env::var_os("HOME").map(PathBuf::from),
            in_cluster: std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
        }
    }
}

/// Resolves the configured selection into targets, one per (context,
/// namespace), in kubeconfig order.
pub async fn resolve(
    selection: &ClusterSelection,
    surroundings: &Surroundings,
) -> Result<Vec<ClusterTarget>, ConfigError> {
    match selection {
        ClusterSelection::Contexts { kubeconfig, names } => {
            match load_kubeconfig(kubeconfig, surroundings)? {
                Some(loaded) => contexts_of(&loaded, names.as_deref()).await,
                None if surroundings.in_cluster => {
                    if let Some(names) = names {
                        return Err(ConfigError::new(
                            "contexts",
                            format!(
                                "contexts {names:?} selected, but there is no kubeconfig (only the in-cluster service account); set `kubeconfig` or KUBECONFIG"
                            ),
                        ));
                    }
                    let config = in_cluster_config()?;
                    let namespace = config.default_namespace.clone();
                    Ok(vec![target("in-cluster", "in-cluster", namespace, config)])
                }
                None => Err(no_kubeconfig(surroundings)),
            }
        }
        ClusterSelection::SingleCluster {
            name,
            namespaces,
            kubeconfig,
        } => {
            // Inside a pod the service account is the seed's way; an explicit
            // kubeconfig still wins, since naming one is a deliberate choice.
            let explicit = matches!(kubeconfig, KubeconfigLocation::Explicit { .. });
            let (context, config) = if surroundings.in_cluster && !explicit {
                ("in-cluster".to_owned(), in_cluster_config()?)
            } else {
                let Some(loaded) = load_kubeconfig(kubeconfig, surroundings)? else {
                    return Err(no_kubeconfig(surroundings));
                };
                let Some(current) = loaded.kubeconfig.current_context.clone() else {
                    return Err(ConfigError::new(
                        &loaded.field,
                        format!(
                            "{} sets no current-context, which the `cluster` + `namespaces` style uses; set current-context, or list `contexts` instead",
                            loaded.describe()
                        ),
                    ));
                };
                let config = context_config(&loaded, &current).await?;
                (current, config)
            };
            Ok(namespaces
                .iter()
                .map(|namespace| target(&context, name, namespace.clone(), config.clone()))
                .collect())
        }
    }
}

/// Different clusters whose names sanitise to one log group would mix their
/// logs; refuse that at start-up.
pub fn check_distinct_log_groups(
    targets: &[ClusterTarget],
    prefix: &str,
) -> Result<(), ConfigError> {
    let mut seen: std::collections::BTreeMap<String, &str> = Default::default();
    for target in targets {
        let group = crate::names::log_group_name(prefix, &target.cluster_name);
        match seen.insert(group.clone(), &target.cluster_name) {
            Some(other) if other != target.cluster_name => {
                return Err(ConfigError::new(
                    "contexts",
                    format!(
                        "clusters {other:?} and {:?} both map to log group {group}; rename one of the contexts",
                        target.cluster_name
                    ),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

fn target(
    context: &str,
    cluster_name: &str,
    namespace: String,
    mut config: kube::Config,
) -> ClusterTarget {
    // The client's namespace is the one watched; keep them the same value.
    config.default_namespace = namespace.clone();
    ClusterTarget {
        context: context.to_owned(),
        cluster_name: cluster_name.to_owned(),
        server_url: config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_owned(),
        namespace,
        client_config: config,
    }
}

/// A kubeconfig read from disk, with the field that named it, for errors.
struct LoadedKubeconfig {
    kubeconfig: Kubeconfig,
    paths: Vec<PathBuf>,
    field: String,
}

impl LoadedKubeconfig {
    fn describe(&self) -> String {
        let paths: Vec<String> = self.paths.iter().map(|p| p.display().to_string()).collect();
        format!("kubeconfig {}", paths.join(":"))
    }
}

/// Reads the kubeconfig: the named files, merged by kubectl's rules, or
/// `~/.kube/config`. `None` when nothing was named and no default exists.
fn load_kubeconfig(
    location: &KubeconfigLocation,
    surroundings: &Surroundings,
) -> Result<Option<LoadedKubeconfig>, ConfigError> {
    let (paths, field) = match location {
        KubeconfigLocation::Explicit { paths, field } => (paths.clone(), field.clone()),
        KubeconfigLocation::Default => {
            let Some(path) = surroundings
                .home
                .as_ref()
                .map(|home| home.join(".kube").join("config"))
            else {
                return Ok(None);
            };
            if !path.exists() {
                return Ok(None);
            }
            (vec![path], "kubeconfig".to_owned())
        }
    };
    let mut merged = Kubeconfig::default();
    for path in &paths {
        let next = read_kubeconfig(path).map_err(|problem| ConfigError::new(&field, problem))?;
        merged = merged.merge(next).map_err(|err| {
            ConfigError::new(&field, format!("cannot merge {}: {err}", path.display()))
        })?;
    }
    Ok(Some(LoadedKubeconfig {
        kubeconfig: merged,
        paths,
        field,
    }))
}

fn read_kubeconfig(path: &Path) -> Result<Kubeconfig, String> {
    // Read once ourselves first: kube's error for a missing file does not
    // say which, and an empty file would silently be an empty kubeconfig.
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read kubeconfig {}: {err}", path.display()))?;
    if text.trim().is_empty() {
        return Err(format!("kubeconfig {} is empty", path.display()));
    }
    Kubeconfig::read_from(path).map_err(|err| {
        let message = one_line(&err);
        format!("kubeconfig {} is malformed: {message}", path.display())
    })
}

async fn contexts_of(
    loaded: &LoadedKubeconfig,
    names: Option<&[String]>,
) -> Result<Vec<ClusterTarget>, ConfigError> {
    let available: Vec<&str> = loaded
        .kubeconfig
        .contexts
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    if available.is_empty() {
        return Err(ConfigError::new(
            &loaded.field,
            format!(
                "{} has no contexts; add one context per cluster and namespace",
                loaded.describe()
            ),
        ));
    }
    let selected: Vec<String> = match names {
        Some(names) => {
            for (i, name) in names.iter().enumerate() {
                if !available.contains(&name.as_str()) {
                    return Err(ConfigError::new(
                        format!("contexts[{i}]"),
                        format!(
                            "{name:?} is not a context in {} (it has: {})",
                            loaded.describe(),
                            available.join(", ")
                        ),
                    ));
                }
            }
            names.to_vec()
        }
        None => available.iter().map(|name| (*name).to_owned()).collect(),
    };
    let mut targets = Vec::with_capacity(selected.len());
    for name in selected {
        let config = context_config(loaded, &name).await?;
        let namespace = config.default_namespace.clone();
        targets.push(target(&name, &name, namespace, config));
    }
    Ok(targets)
}

async fn context_config(
    loaded: &LoadedKubeconfig,
    context: &str,
) -> Result<kube::Config, ConfigError> {
    let options = KubeConfigOptions {
        context: Some(context.to_owned()),
        cluster: None,
        user: None,
    };
    let mut config = kube::Config::from_custom_kubeconfig(loaded.kubeconfig.clone(), &options)
        .await
        .map_err(|err| {
            ConfigError::new(
                &loaded.field,
                format!(
                    "context {context:?} in {}: {}",
                    loaded.describe(),
                    describe_kubeconfig_error(&err)
                ),
            )
        })?;
    if config.default_namespace.is_empty() {
        config.default_namespace = DEFAULT_NAMESPACE.to_owned();
    }
    Ok(config)
}

fn in_cluster_config() -> Result<kube::Config, ConfigError> {
    kube::Config::incluster().map_err(|err| {
        ConfigError::new(
            "KUBERNETES_SERVICE_HOST",
            format!(
                "running in a pod, but the in-cluster service account cannot be used: {}",
                one_line(&err)
            ),
        )
    })
}

fn no_kubeconfig(surroundings: &Surroundings) -> ConfigError {
    let home = surroundings
        .home
        .as_ref()
        .map_or("~/.kube/config".to_owned(), |h| {
            h.join(".kube/config").display().to_string()
        });
    ConfigError::new(
        "kubeconfig",
        format!(
            "no kubeconfig found: set `kubeconfig` in the config or KUBECONFIG, create {home}, or run in a pod with a service account"
        ),
    )
}

fn describe_kubeconfig_error(err: &KubeconfigError) -> String {
    match err {
        KubeconfigError::MissingClusterUrl => "its cluster has no `server` URL".to_owned(),
        other => one_line(other),
    }
}

/// An error and its causes on one line, without repeating a cause that the
/// outer message already printed.
fn one_line(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    crate::config::one_line(&message)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_CLUSTERS: &str = "
apiVersion: v1
kind: Config
current-context: eu-team-a
clusters:
- name: eu
  cluster: {server: 'https://eu.example.com:6443'}
- name: us
  cluster: {server: 'https://us.example.com'}
users:
- name: robot
  user: {token: secret-token}
contexts:
- name: eu-team-a
  context: {cluster: eu, user: robot, namespace: team-a}
- name: us-default
  context: {cluster: us, user: robot}
";

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn explicit(path: PathBuf) -> KubeconfigLocation {
        KubeconfigLocation::Explicit {
            paths: vec![path],
            field: "kubeconfig".into(),
        }
    }

    fn outside_a_pod() -> Surroundings {
        Surroundings {
            home: None,
            in_cluster: false,
        }
    }

    #[tokio::test]
    async fn every_context_is_a_target_with_its_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "config", TWO_CLUSTERS);
        let selection = ClusterSelection::Contexts {
            kubeconfig: explicit(path),
            names: None,
        };
        let targets = resolve(&selection, &outside_a_pod()).await.unwrap();
        let summary: Vec<(&str, &str, &str, &str)> = targets
            .iter()
            .map(|t| {
                (
                    t.context.as_str(),
                    t.cluster_name.as_str(),
                    t.server_url.as_str(),
                    t.namespace.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "eu-team-a",
                    "eu-team-a",
                    "https://eu.example.com:6443",
                    "team-a"
                ),
                (
                    "us-default",
                    "us-default",
                    "https://us.example.com",
                    "default"
                ),
            ]
        );
        assert_eq!(targets[1].client_config.default_namespace, "default");
        let debug = format!("{targets:?}");
        assert!(
            !debug.contains("secret-token"),
            "credentials leak through Debug: {debug}"
        );
    }

    #[tokio::test]
    async fn contexts_select_a_subset_and_unknown_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "config", TWO_CLUSTERS);
        let selection = ClusterSelection::Contexts {
            kubeconfig: explicit(path.clone()),
            names: Some(vec!["us-default".into()]),
        };
        let targets = resolve(&selection, &outside_a_pod()).await.unwrap();
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].context, "us-default");

        let selection = ClusterSelection::Contexts {
            kubeconfig: explicit(path),
            names: Some(vec!["us-default".into(), "prod-xx".into()]),
        };
        let err = resolve(&selection, &outside_a_pod()).await.unwrap_err();
        assert_eq!(err.field, "contexts[1]");
        assert!(
            err.problem.contains("prod-xx") && err.problem.contains("eu-team-a, us-default"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn unreadable_and_malformed_kubeconfigs_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = resolve(
            &ClusterSelection::Contexts {
                kubeconfig: explicit(missing.clone()),
                names: None,
            },
            &outside_a_pod(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.field, "kubeconfig");
        assert!(
            err.problem.contains(&missing.display().to_string()),
            "{err}"
        );

        for (name, text) in [
            ("garbage", "clusters: [this is: not: yaml"),
            ("wrong-shape", "clusters: 42\n"),
            ("empty", "\n"),
        ] {
            let path = write(dir.path(), name, text);
            let err = resolve(
                &ClusterSelection::Contexts {
                    kubeconfig: explicit(path.clone()),
                    names: None,
                },
                &outside_a_pod(),
            )
            .await
            .unwrap_err();
            assert_eq!(err.field, "kubeconfig", "{name}");
            assert!(
                err.problem.contains(&path.display().to_string()),
                "{name}: {err}"
            );
            assert!(!err.to_string().contains('\n'), "{name}: one line: {err}");
        }
    }

    #[tokio::test]
    async fn context_whose_cluster_has_no_server_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "config",
            "clusters: [{name: c, cluster: {}}]\nusers: [{name: u, user: {}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n",
        );
        let err = resolve(
            &ClusterSelection::Contexts {
                kubeconfig: explicit(path),
                names: None,
            },
            &outside_a_pod(),
        )
        .await
        .unwrap_err();
        assert!(
            err.problem.contains("\"x\"") && err.problem.contains("server"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn kubeconfig_path_list_is_merged_first_wins() {
        let dir = tempfile::tempdir().unwrap();
        let first = write(dir.path(), "a", TWO_CLUSTERS);
        let second = write(
            dir.path(),
            "b",
            "clusters: [{name: extra, cluster: {server: 'https://extra:443'}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: extra, context: {cluster: extra, user: u, namespace: ops}}, {name: eu-team-a, context: {cluster: extra, user: u}}]\n",
        );
        let selection = ClusterSelection::Contexts {
            kubeconfig: KubeconfigLocation::Explicit {
                paths: vec![first, second],
                field: "KUBECONFIG".into(),
            },
            names: None,
        };
        let targets = resolve(&selection, &outside_a_pod()).await.unwrap();
        let names: Vec<(&str, &str)> = targets
            .iter()
            .map(|t| (t.context.as_str(), t.namespace.as_str()))
            .collect();
        // kubectl's merge rule: the first file to define a name wins.
        assert_eq!(
            names,
            [
                ("eu-team-a", "team-a"),
                ("us-default", "default"),
                ("extra", "ops")
            ]
        );
    }

    #[tokio::test]
    async fn single_cluster_style_uses_the_current_context_outside_a_pod() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "config", TWO_CLUSTERS);
        let selection = ClusterSelection::SingleCluster {
            name: "mpp-prod".into(),
            namespaces: vec!["ns-1".into(), "ns-2".into()],
            kubeconfig: explicit(path),
        };
        let targets = resolve(&selection, &outside_a_pod()).await.unwrap();
        let summary: Vec<(&str, &str, &str, &str)> = targets
            .iter()
            .map(|t| {
                (
                    t.context.as_str(),
                    t.cluster_name.as_str(),
                    t.server_url.as_str(),
                    t.namespace.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "eu-team-a",
                    "mpp-prod",
                    "https://eu.example.com:6443",
                    "ns-1"
                ),
                (
                    "eu-team-a",
                    "mpp-prod",
                    "https://eu.example.com:6443",
                    "ns-2"
                ),
            ]
        );
        assert_eq!(targets[1].client_config.default_namespace, "ns-2");
    }

    #[tokio::test]
    async fn default_location_is_home_kube_config() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".kube")).unwrap();
        write(&home.path().join(".kube"), "config", TWO_CLUSTERS);
        let surroundings = Surroundings {
            home: Some(home.path().to_owned()),
            in_cluster: false,
        };
        let selection = ClusterSelection::Contexts {
            kubeconfig: KubeconfigLocation::Default,
            names: None,
        };
        assert_eq!(resolve(&selection, &surroundings).await.unwrap().len(), 2);

        let empty_home = tempfile::tempdir().unwrap();
        let surroundings = Surroundings {
            home: Some(empty_home.path().to_owned()),
            in_cluster: false,
        };
        let err = resolve(&selection, &surroundings).await.unwrap_err();
        assert_eq!(err.field, "kubeconfig");
        assert!(err.problem.contains("no kubeconfig found"), "{err}");
    }

    #[test]
    fn clusters_sharing_a_log_group_are_refused() {
        let config = || kube::Config::new("https://x".parse().unwrap());
        let targets = [
            target("a:b", "a:b", "default".into(), config()),
            target("a_b", "a_b", "default".into(), config()),
        ];
        let err = check_distinct_log_groups(&targets, "p").unwrap_err();
        assert!(err.problem.contains("/p-a_b"), "{err}");
        // One cluster in several namespaces shares its group on purpose.
        let same = [
            target("c", "mpp", "a".into(), config()),
            target("c", "mpp", "b".into(), config()),
        ];
        check_distinct_log_groups(&same, "p").unwrap();
    }
}

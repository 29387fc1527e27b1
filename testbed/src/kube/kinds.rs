//! The resource types the server knows, and which of them it serves.
//!
//! A kind is known once (so objects can be stored for it) and served or not:
//! an unserved kind is absent from discovery and its paths answer 404, as a
//! custom resource does before its CRD is installed.

use std::collections::BTreeMap;

/// Verbs the apiserver lists in discovery for an ordinary read-write resource.
const RW_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
/// Verbs of the `pods/log` subresource in core v1 discovery.
const LOG_VERBS: &[&str] = &["get"];

/// One resource type: group/version, kind, plural, scope and discovery data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindSpec {
    /// API group, `""` for core.
    pub group: String,
    /// Version, e.g. `v1`.
    pub version: String,
    /// Kind, e.g. `Pod`.
    pub kind: String,
    /// Plural resource name used in paths, e.g. `pods`.
    pub plural: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Short names listed in discovery.
    pub short_names: Vec<String>,
    /// Subresources listed in discovery as `plural/sub` with their verbs.
    pub subresources: Vec<(String, Vec<String>)>,
    /// Whether this is a built-in type. Built-in typed lists drop
    /// `apiVersion`/`kind` from their items; custom resources (unstructured)
    /// keep them.
    pub builtin: bool,
}

impl KindSpec {
    /// A namespaced custom resource with `get`/`list`/`watch` and friends, e.g.
    /// `KindSpec::custom("example.com", "v1", "Widget", "widgets")`.
    pub fn custom(group: &str, version: &str, kind: &str, plural: &str) -> Self {
        KindSpec {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            namespaced: true,
            short_names: Vec::new(),
            subresources: vec![("status".into(), strings(&["get", "patch", "update"]))],
            builtin: false,
        }
    }

    fn builtin(group: &str, kind: &str, plural: &str, namespaced: bool, short: &[&str]) -> Self {
        KindSpec {
            group: group.into(),
            version: "v1".into(),
            kind: kind.into(),
            plural: plural.into(),
            namespaced,
            short_names: strings(short),
            subresources: Vec::new(),
            builtin: true,
        }
    }

    fn with_sub(mut self, sub: &str, verbs: &[&str]) -> Self {
        self.subresources.push((sub.into(), strings(verbs)));
        self
    }

    /// `group/version`, or just `version` for core: the `apiVersion` of objects.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Singular resource name as discovery lists it (the lowercased kind).
    pub fn singular(&self) -> String {
        self.kind.to_lowercase()
    }

    /// Verbs of the main resource in discovery.
    pub fn verbs(&self) -> Vec<String> {
        strings(RW_VERBS)
    }

    /// The storage key of this type.
    pub fn type_key(&self) -> TypeKey {
        TypeKey {
            api_version: self.api_version(),
            kind: self.kind.clone(),
        }
    }
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// `apiVersion` + `kind`: how objects and watches are keyed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TypeKey {
    /// `group/version` or `v1`.
    pub api_version: String,
    /// Kind.
    pub kind: String,
}

/// The default set: the built-in kinds kubeherald's tests use and the
/// `example.com/v1` `Widget` custom resource.
pub fn default_kinds() -> Vec<KindSpec> {
    vec![
        KindSpec::builtin("", "Pod", "pods", true, &["po"])
            .with_sub("log", LOG_VERBS)
            .with_sub("status", &["get", "patch", "update"]),
        KindSpec::builtin("", "ConfigMap", "configmaps", true, &["cm"]),
        KindSpec::builtin("", "Secret", "secrets", true, &[]),
        KindSpec::builtin("", "Service", "services", true, &["svc"])
            .with_sub("status", &["get", "patch", "update"]),
        KindSpec::builtin("", "Event", "events", true, &["ev"]),
        KindSpec::builtin("", "Namespace", "namespaces", false, &["ns"])
            .with_sub("status", &["get", "patch", "update"]),
        KindSpec::builtin("", "Node", "nodes", false, &["no"])
            .with_sub("status", &["get", "patch", "update"]),
        KindSpec::builtin("apps", "Deployment", "deployments", true, &["deploy"])
            .with_sub("status", &["get", "patch", "update"]),
        KindSpec::builtin("apps", "StatefulSet", "statefulsets", true, &["sts"])
            .with_sub("status", &["get", "patch", "update"]),
        KindSpec::builtin("apps", "ReplicaSet", "replicasets", true, &["rs"])
            .with_sub("status", &["get", "patch", "update"]),
        KindSpec::builtin("apps", "DaemonSet", "daemonsets", true, &["ds"])
            .with_sub("status", &["get", "patch", "update"]),
        KindSpec::custom("example.com", "v1", "Widget", "widgets"),
    ]
}

/// Known kinds, each served or not.
#[derive(Debug)]
pub(crate) struct KindRegistry {
    kinds: BTreeMap<TypeKey, (KindSpec, bool)>,
}

impl KindRegistry {
    pub(crate) fn new(kinds: Vec<KindSpec>) -> Self {
        let kinds = kinds
            .into_iter()
            .map(|k| (k.type_key(), (k, true)))
            .collect();
        KindRegistry { kinds }
    }

    /// Adds or replaces a kind and serves it.
    pub(crate) fn serve(&mut self, spec: KindSpec) {
        self.kinds.insert(spec.type_key(), (spec, true));
    }

    /// Stops serving a kind; its objects stay stored. Returns whether it was known.
    pub(crate) fn unserve(&mut self, key: &TypeKey) -> bool {
        match self.kinds.get_mut(key) {
            Some(entry) => {
                entry.1 = false;
                true
            }
            None => false,
        }
    }

    /// A known kind, served or not.
    pub(crate) fn known(&self, key: &TypeKey) -> Option<&KindSpec> {
        self.kinds.get(key).map(|(spec, _)| spec)
    }

    /// Served kinds, in a stable order.
    pub(crate) fn served(&self) -> impl Iterator<Item = &KindSpec> {
        self.kinds
            .values()
            .filter(|(_, served)| *served)
            .map(|(spec, _)| spec)
    }

    /// The served kind behind `group`/`version`/`plural`, as a path names it.
    pub(crate) fn by_plural(&self, group: &str, version: &str, plural: &str) -> Option<KindSpec> {
        self.served()
            .find(|k| k.group == group && k.version == version && k.plural == plural)
            .cloned()
    }
}

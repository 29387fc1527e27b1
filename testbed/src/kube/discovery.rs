//! Discovery documents: `/api`, `/api/v1`, `/apis`, `/apis/G`, `/apis/G/V`,
//! `/version`, and aggregated discovery v2.
//!
//! Shapes follow apimachinery `metav1.APIVersions`, `APIResourceList`
//! (subresources listed as `pods/log` with the parent's kind and an empty
//! singular name), `APIGroupList` with `preferredVersion`, and
//! `apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`, which the apiserver
//! returns for `/api` and `/apis` only when the `Accept` header asks for it
//! (`application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`,
//! what kube-rs `Discovery::run_aggregated` sends) and the plain documents
//! otherwise.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::kinds::KindSpec;

/// The `Content-Type` of an aggregated discovery answer.
pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether an `Accept` header asks for aggregated discovery v2.
pub fn wants_aggregated(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("as=APIGroupDiscoveryList") && a.contains("v=v2"))
}

/// `/version`: the `version.Info` of a v1.33 apiserver.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64",
        "emulationMajor": "1",
        "emulationMinor": "33",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "32"
    })
}

/// `/api`: the core group's versions.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]
    })
}

/// `/api/v1` or `/apis/G/V`: the resources of one group version, or `None`
/// when no served kind belongs to it (404).
pub fn resource_list<'a>(
    kinds: impl Iterator<Item = &'a KindSpec>,
    group: &str,
    version: &str,
) -> Option<Value> {
    let mut resources = Vec::new();
    for k in kinds.filter(|k| k.group == group && k.version == version) {
        let mut r = json!({
            "name": k.plural,
            "singularName": k.singular(),
            "namespaced": k.namespaced,
            "kind": k.kind,
            "verbs": k.verbs(),
        });
        if !k.short_names.is_empty() {
            r["shortNames"] = json!(k.short_names);
        }
        resources.push(r);
        for (sub, verbs) in &k.subresources {
            resources.push(json!({
                "name": format!("{}/{sub}", k.plural),
                "singularName": "",
                "namespaced": k.namespaced,
                "kind": k.kind,
                "verbs": verbs,
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    )
}

/// Served non-core groups and their versions, in a stable order.
fn groups<'a>(kinds: impl Iterator<Item = &'a KindSpec>) -> BTreeMap<String, Vec<String>> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for k in kinds.filter(|k| !k.group.is_empty()) {
        let versions = groups.entry(k.group.clone()).or_default();
        if !versions.contains(&k.version) {
            versions.push(k.version.clone());
        }
    }
    groups
}

fn api_group(name: &str, versions: &[String]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({"name": name, "versions": versions, "preferredVersion": versions[0]})
}

/// `/apis`: every served group with its preferred (first) version.
pub fn group_list<'a>(kinds: impl Iterator<Item = &'a KindSpec>) -> Value {
    let groups: Vec<Value> = groups(kinds)
        .iter()
        .map(|(name, versions)| api_group(name, versions))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/G`: one group, or `None` (404).
pub fn group<'a>(kinds: impl Iterator<Item = &'a KindSpec>, name: &str) -> Option<Value> {
    let groups = groups(kinds);
    let versions = groups.get(name)?;
    let mut group = api_group(name, versions);
    group["kind"] = json!("APIGroup");
    group["apiVersion"] = json!("v1");
    Some(group)
}

/// Aggregated discovery v2: the core group (`core = true`, for `/api`) or
/// every other group (for `/apis`).
pub fn aggregated<'a>(kinds: impl Iterator<Item = &'a KindSpec>, core: bool) -> Value {
    let mut by_group: BTreeMap<String, BTreeMap<String, Vec<Value>>> = BTreeMap::new();
    for k in kinds.filter(|k| k.group.is_empty() == core) {
        let response_kind = json!({"group": k.group, "version": k.version, "kind": k.kind});
        let subresources: Vec<Value> = k
            .subresources
            .iter()
            .map(|(sub, verbs)| json!({"subresource": sub, "responseKind": response_kind, "verbs": verbs}))
            .collect();
        let mut resource = json!({
            "resource": k.plural,
            "responseKind": response_kind,
            "scope": if k.namespaced { "Namespaced" } else { "Cluster" },
            "singularResource": k.singular(),
            "verbs": k.verbs(),
        });
        if !k.short_names.is_empty() {
            resource["shortNames"] = json!(k.short_names);
        }
        if !subresources.is_empty() {
            resource["subresources"] = json!(subresources);
        }
        by_group
            .entry(k.group.clone())
            .or_default()
            .entry(k.version.clone())
            .or_default()
            .push(resource);
    }
    let items: Vec<Value> = by_group
        .into_iter()
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .into_iter()
                .map(|(version, resources)| json!({"version": version, "resources": resources, "freshness": "Current"}))
                .collect();
            json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

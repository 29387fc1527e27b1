//! Kubeconfig files for one or several test servers.
//!
//! One `clusters` entry per server URL, one `users` entry per token, one
//! `contexts` entry per call to [`KubeconfigBuilder::context`], as in a real
//! multi-cluster kubeconfig. Strings are written as double-quoted YAML
//! scalars (JSON string syntax), so any value is safe.

use std::path::Path;

use base64::Engine;
use serde_json::Value;

use super::ApiServer;

#[derive(Debug, Clone)]
struct Context {
    name: String,
    cluster: String,
    user: String,
    namespace: Option<String>,
}

/// Builds a kubeconfig, e.g.
///
/// ```no_run
/// # use kubeherald_testbed::kube::{ApiServer, KubeconfigBuilder, ADMIN_TOKEN};
/// let (a, b) = (ApiServer::start(), ApiServer::start());
/// let yaml = KubeconfigBuilder::new()
///     .context("prod-eu", &a, Some("team-a"), ADMIN_TOKEN)
///     .context("prod-us", &b, None, ADMIN_TOKEN)
///     .current("prod-eu")
///     .to_yaml();
/// ```
#[derive(Debug, Clone, Default)]
pub struct KubeconfigBuilder {
    clusters: Vec<(String, String)>,
    users: Vec<(String, String)>,
    contexts: Vec<Context>,
    current: Option<String>,
    certificate_authority: Option<String>,
}

impl KubeconfigBuilder {
    /// An empty kubeconfig.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds context `name` for `server`, with a default `namespace` (or
    /// none) and a bearer `token`.
    pub fn context(
        self,
        name: &str,
        server: &ApiServer,
        namespace: Option<&str>,
        token: &str,
    ) -> Self {
        self.context_url(name, &server.url(), namespace, token)
    }

    /// Adds a context for a server URL (e.g. one nothing listens on).
    pub fn context_url(
        mut self,
        name: &str,
        url: &str,
        namespace: Option<&str>,
        token: &str,
    ) -> Self {
        let cluster = match self.clusters.iter().find(|(_, u)| u == url) {
            Some((cluster, _)) => cluster.clone(),
            None => {
                let host: String = url
                    .trim_start_matches("http://")
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                    .collect();
                let cluster = format!("testbed-{host}");
                self.clusters.push((cluster.clone(), url.to_string()));
                cluster
            }
        };
        let user = match self.users.iter().find(|(_, t)| t == token) {
            Some((user, _)) => user.clone(),
            None => {
                let user = format!("user-{}", self.users.len() + 1);
                self.users.push((user.clone(), token.to_string()));
                user
            }
        };
        self.contexts.push(Context {
            name: name.to_string(),
            cluster,
            user,
            namespace: namespace.map(str::to_string),
        });
        self
    }

    /// Sets `current-context` (default: the first context).
    pub fn current(mut self, name: &str) -> Self {
        self.current = Some(name.to_string());
        self
    }

    /// Gives every cluster `certificate-authority-data` (a PEM CA), as real
    /// kubeconfigs have: the client then trusts that CA alone instead of
    /// loading the platform's roots (the servers here speak plain HTTP, so
    /// it is never used to verify anything).
    pub fn certificate_authority(mut self, pem: &str) -> Self {
        self.certificate_authority = Some(pem.to_owned());
        self
    }

    /// The kubeconfig as YAML.
    pub fn to_yaml(&self) -> String {
        let q = |s: &str| Value::from(s).to_string();
        let mut out = String::from("apiVersion: v1\nkind: Config\npreferences: {}\nclusters:\n");
        for (name, url) in &self.clusters {
            out += &format!("- name: {}\n  cluster:\n    server: {}\n", q(name), q(url));
            if let Some(pem) = &self.certificate_authority {
                out += &format!(
                    "    certificate-authority-data: {}\n",
                    base64::engine::general_purpose::STANDARD.encode(pem)
                );
            }
        }
        out += "users:\n";
        for (name, token) in &self.users {
            out += &format!("- name: {}\n  user:\n    token: {}\n", q(name), q(token));
        }
        out += "contexts:\n";
        for c in &self.contexts {
            out += &format!(
                "- name: {}\n  context:\n    cluster: {}\n    user: {}\n",
                q(&c.name),
                q(&c.cluster),
                q(&c.user)
            );
            if let Some(ns) = &c.namespace {
                out += &format!("    namespace: {}\n", q(ns));
            }
        }
        if let Some(current) = self
            .current
            .as_deref()
            .or(self.contexts.first().map(|c| c.name.as_str()))
        {
            out += &format!("current-context: {}\n", q(current));
        }
        out
    }

    /// Writes the YAML to `path`.
    pub fn write_to(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        std::fs::write(path, self.to_yaml())
    }
}

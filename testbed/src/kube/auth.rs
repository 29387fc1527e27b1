//! Bearer-token authentication and a namespace-scoped authorizer.
//!
//! Real rules reproduced:
//! - no or unknown token → 401 with a Status whose message and reason are
//!   `Unauthorized` (the authentication filter, `endpoints/filters/authentication.go`);
//! - an authenticated user without the permission → 403 `Forbidden` whose
//!   message is built like `responsewriters.forbiddenMessage`:
//!   `pods is forbidden: User "u" cannot list resource "pods" in API group "" in the namespace "x"`,
//!   prefixed with `pods "name"` when a name is known, `resource/subresource`
//!   for subresources, and `at the cluster scope` without a namespace;
//! - discovery and `/version` only need authentication (the
//!   `system:discovery` / `system:public-info-viewer` roles are bound to all
//!   authenticated users).

use std::collections::HashMap;

use serde_json::json;

use super::status::ApiError;

/// What a token may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Everything, in every namespace and at the cluster scope.
    All,
    /// Only namespaced resources in these namespaces.
    Namespaces(Vec<String>),
}

impl Access {
    /// Access to the given namespaces only.
    pub fn namespaces<I: IntoIterator<Item = S>, S: Into<String>>(namespaces: I) -> Self {
        Access::Namespaces(namespaces.into_iter().map(Into::into).collect())
    }
}

/// A known user.
#[derive(Debug, Clone)]
pub(crate) struct User {
    pub name: String,
    pub access: Access,
}

/// What a request wants to do, for the authorizer.
#[derive(Debug, Clone)]
pub(crate) struct Attributes<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

/// Tokens → users.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    users: HashMap<String, User>,
}

impl Tokens {
    pub(crate) fn add(&mut self, token: &str, user: &str, access: Access) {
        self.users.insert(
            token.to_string(),
            User {
                name: user.to_string(),
                access,
            },
        );
    }

    pub(crate) fn remove(&mut self, token: &str) {
        self.users.remove(token);
    }

    /// The user behind an `Authorization` header value, or 401.
    pub(crate) fn authenticate(&self, authorization: Option<&str>) -> Result<User, ApiError> {
        let token = authorization
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(ApiError::unauthorized)?;
        self.users
            .get(token)
            .cloned()
            .ok_or_else(ApiError::unauthorized)
    }
}

/// Allows or refuses (403) a resource request.
pub(crate) fn authorize(user: &User, attrs: &Attributes<'_>) -> Result<(), ApiError> {
    let allowed = match (&user.access, attrs.namespace) {
        (Access::All, _) => true,
        (Access::Namespaces(list), Some(ns)) => list.iter().any(|n| n == ns),
        (Access::Namespaces(_), None) => false,
    };
    if allowed {
        return Ok(());
    }
    let resource = match attrs.subresource {
        Some(sub) => format!("{}/{sub}", attrs.resource),
        None => attrs.resource.to_string(),
    };
    let scope = match attrs.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    let reason = format!(
        "User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
        user.name, attrs.verb, attrs.group
    );
    // errors.NewForbidden(groupResource, name, err): "<gr> \"<name>\" is forbidden: <reason>".
    let gr = if attrs.group.is_empty() {
        attrs.resource.to_string()
    } else {
        format!("{}.{}", attrs.resource, attrs.group)
    };
    let message = match attrs.name {
        Some(name) => format!("{gr} \"{name}\" is forbidden: {reason}"),
        None => format!("{gr} is forbidden: {reason}"),
    };
    let mut details = json!({"kind": attrs.resource});
    if let Some(name) = attrs.name {
        details["name"] = json!(name);
    }
    if !attrs.group.is_empty() {
        details["group"] = json!(attrs.group);
    }
    Err(ApiError::forbidden(message, details))
}

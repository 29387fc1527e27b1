//! The raw requests: discovery of a kind, one LIST page, a WATCH, a GET of
//! a pod and a `pods/log` stream — one code path for status handling,
//! `Retry-After` and deadlines.
//!
//! Raw requests (`kube::core::Request` + `Client::send`) rather than
//! `Api::list`/`Api::watch` or kube's `watcher`: the watcher needs the exact
//! bytes of each object, ADDED and MODIFIED kept apart (kube's `watcher`
//! merges them), and the HTTP status, `Retry-After` and ERROR events as they
//! are. kube has no read timeout by default (SPEC §10), so every request has
//! a deadline here and a watch stream an idle deadline.

use std::time::Duration;

use http_body_util::BodyExt;
use kube::api::{DynamicObject, GroupVersionKind, ListParams, WatchParams};
use kube::discovery::Scope;
use tokio::time::Instant;

use crate::config::ResourceKind;

use super::error::{ApiError, Op};
use super::stream::LineStream;

/// The longest error body read for its Status.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A kind resolved by discovery in one cluster and namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// As the server names it: `v1`, `apps/v1`.
    pub api_version: String,
    pub kind: String,
    /// The collection's path in the watched namespace:
    /// `/api/v1/namespaces/NS/pods`.
    pub path: String,
}

/// The label and field selectors of a watch, sent on its every LIST and
/// WATCH: the server filters both the same way, so a re-list diff and the
/// watch agree on which objects exist (an object that stops matching comes
/// as DELETED on the watch, and is missing from the next LIST).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selectors {
    pub label: Option<String>,
    pub field: Option<String>,
}

/// Resolves `kind` by discovery of its group version (one request).
pub async fn resolve(
    client: &kube::Client,
    kind: &ResourceKind,
    namespace: &str,
    timeout: Duration,
) -> Result<Resource, ApiError> {
    let gvk = GroupVersionKind::gvk(kind.group(), kind.version(), &kind.kind);
    let answer = tokio::time::timeout(timeout, kube::discovery::pinned_kind(client, &gvk)).await;
    let not_served = || ApiError::NotServed {
        api_version: kind.api_version.clone(),
        kind: kind.kind.clone(),
    };
    let (resource, capabilities) = match answer {
        Err(_) => {
            return Err(ApiError::Timeout {
                op: Op::Discovery,
                after: timeout,
            });
        }
        Ok(Ok(found)) => found,
        // The group version is not served at all (a CRD's group not installed).
        Ok(Err(kube::Error::Api(status))) if status.code == 404 => return Err(not_served()),
        Ok(Err(kube::Error::Api(status))) => {
            return Err(ApiError::from_status(Op::Discovery, &status, None));
        }
        // The group version is served but has no such kind.
        Ok(Err(kube::Error::Discovery(_))) => return Err(not_served()),
        Ok(Err(source)) => return Err(ApiError::unreachable(Op::Discovery, source)),
    };
    if capabilities.scope == Scope::Cluster {
        return Err(ApiError::ClusterScoped {
            api_version: kind.api_version.clone(),
            kind: kind.kind.clone(),
        });
    }
    let path = <DynamicObject as kube::Resource>::url_path(&resource, Some(namespace));
    Ok(Resource {
        api_version: resource.api_version,
        kind: resource.kind,
        path,
    })
}

/// Reads one LIST page: `limit` items from the start (`continue_token`
/// `None`: a consistent read of the most recent state, never
/// `resourceVersion=0`) or after a continue token. Returns the whole body.
pub async fn list_page(
    client: &kube::Client,
    resource: &Resource,
    selectors: &Selectors,
    limit: u32,
    continue_token: Option<&str>,
    timeout: Duration,
) -> Result<Vec<u8>, ApiError> {
    let params = ListParams {
        limit: Some(limit),
        continue_token: continue_token.map(str::to_owned),
        label_selector: selectors.label.clone(),
        field_selector: selectors.field.clone(),
        ..ListParams::default()
    };
    let request = kube::core::Request::new(&resource.path)
        .list(&params)
        .map_err(|source| ApiError::Request {
            op: Op::List,
            source,
        })?;
    let deadline = Instant::now() + timeout;
    let response = send(client, request, Op::List, deadline, timeout).await?;
    let body = tokio::time::timeout_at(deadline, response.into_body().collect())
        .await
        .map_err(|_| ApiError::Timeout {
            op: Op::List,
            after: timeout,
        })?
        .map_err(|source| ApiError::unreachable(Op::List, source))?;
    Ok(body.to_bytes().to_vec())
}

/// Opens a WATCH from `resource_version` with bookmarks and a server-side
/// timeout; `request_timeout` bounds the wait for the response headers.
pub async fn open_watch(
    client: &kube::Client,
    resource: &Resource,
    selectors: &Selectors,
    resource_version: &str,
    server_timeout: Duration,
    request_timeout: Duration,
) -> Result<LineStream, ApiError> {
    let params = WatchParams {
        // kube-core writes `timeoutSeconds`; the apiserver caps watches at
        // its own limit, and kube asks for < 295 s (SPEC §10).
        timeout: Some(server_timeout.as_secs().clamp(1, 290) as u32),
        bookmarks: true,
        label_selector: selectors.label.clone(),
        field_selector: selectors.field.clone(),
        ..WatchParams::default()
    };
    let request = kube::core::Request::new(&resource.path)
        .watch(&params, resource_version)
        .map_err(|source| ApiError::Request {
            op: Op::Watch,
            source,
        })?;
    let deadline = Instant::now() + request_timeout;
    let response = send(client, request, Op::Watch, deadline, request_timeout).await?;
    Ok(LineStream::watch(response.into_body()))
}

/// Opens a `pods/log` request (`path_and_query`: the log path with its
/// query, already encoded) and returns its body as a line stream; the
/// stream of a finished request ends with [`Read::End`](super::Read::End), and
/// [`LineStream::take_partial`] gives a last line without newline.
/// `request_timeout` bounds the wait for the response headers.
pub async fn open_log(
    client: &kube::Client,
    path_and_query: &str,
    request_timeout: Duration,
) -> Result<LineStream, ApiError> {
    let request = http::Request::get(path_and_query)
        .body(Vec::new())
        .map_err(|source| ApiError::Request {
            op: Op::Log,
            source: kube::core::request::Error::BuildRequest(source),
        })?;
    let deadline = Instant::now() + request_timeout;
    let response = send(client, request, Op::Log, deadline, request_timeout).await?;
    Ok(LineStream::log(response.into_body()))
}

/// Sends a request and turns an error status into a [`ApiError`].
async fn send(
    client: &kube::Client,
    request: http::Request<Vec<u8>>,
    op: Op,
    deadline: Instant,
    timeout: Duration,
) -> Result<http::Response<kube::client::Body>, ApiError> {
    let mut request = request.map(kube::client::Body::from);
    // No compression of streams: kube's decompression middleware decodes
    // only the first gzip member (kube-client request_events does the same).
    request.headers_mut().insert(
        http::header::ACCEPT_ENCODING,
        http::HeaderValue::from_static("identity"),
    );
    let response = tokio::time::timeout_at(deadline, client.send(request))
        .await
        .map_err(|_| ApiError::Timeout { op, after: timeout })?
        .map_err(|source| match source {
            kube::Error::Api(status) => ApiError::from_status(op, &status, None),
            source => ApiError::unreachable(op, source),
        })?;
    let code = response.status().as_u16();
    if (200..300).contains(&code) {
        return Ok(response);
    }
    // 429 (API priority and fairness) and 503 say when to come back.
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = tokio::time::timeout_at(deadline, response.into_body().collect())
        .await
        .ok()
        .and_then(Result::ok)
        .map(|body| body.to_bytes())
        .unwrap_or_default();
    let body = &body[..body.len().min(MAX_ERROR_BODY)];
    let mut status: kube::core::Status = serde_json::from_slice(body).unwrap_or_default();
    // The HTTP code is the truth; a Status body may lack or disagree with it.
    status.code = code;
    if status.message.is_empty() {
        status.message = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    }
    Err(ApiError::from_status(op, &status, retry_after))
}

/// GETs pod `name`; `Ok(None)` when it does not exist (404).
pub async fn get_pod(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<Option<k8s_openapi::api::core::v1::Pod>, ApiError> {
    let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), namespace);
    match tokio::time::timeout(timeout, api.get_opt(name)).await {
        Err(_) => Err(ApiError::Timeout {
            op: Op::Get,
            after: timeout,
        }),
        Ok(Ok(pod)) => Ok(pod),
        Ok(Err(kube::Error::Api(status))) => Err(ApiError::from_status(Op::Get, &status, None)),
        Ok(Err(source)) => Err(ApiError::unreachable(Op::Get, source)),
    }
}

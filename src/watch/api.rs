//! The raw Kubernetes API requests of a watcher: discovery of the kind, one
//! LIST page, and a WATCH stream read as newline-delimited JSON. The pod-log
//! follower ([`crate::logs`]) shares them for its pods watch, and opens its
//! `pods/log` streams here too ([`open_log`]): one client code path for
//! status handling, `Retry-After` and deadlines.
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

use super::error::{Op, WatchError};

/// The longest watch line accepted: an object is at most ~1.5 MiB in etcd;
/// a line beyond this is not a watch event.
const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;
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

/// Resolves `kind` by discovery of its group version (one request).
pub async fn resolve(
    client: &kube::Client,
    kind: &ResourceKind,
    namespace: &str,
    timeout: Duration,
) -> Result<Resource, WatchError> {
    let gvk = GroupVersionKind::gvk(kind.group(), kind.version(), &kind.kind);
    let answer = tokio::time::timeout(timeout, kube::discovery::pinned_kind(client, &gvk)).await;
    let not_served = || WatchError::NotServed {
        api_version: kind.api_version.clone(),
        kind: kind.kind.clone(),
    };
    let (resource, capabilities) = match answer {
        Err(_) => {
            return Err(WatchError::Timeout {
                op: Op::Discovery,
                after: timeout,
            });
        }
        Ok(Ok(found)) => found,
        // The group version is not served at all (a CRD's group not installed).
        Ok(Err(kube::Error::Api(status))) if status.code == 404 => return Err(not_served()),
        Ok(Err(kube::Error::Api(status))) => {
            return Err(WatchError::from_status(Op::Discovery, &status, None));
        }
        // The group version is served but has no such kind.
        Ok(Err(kube::Error::Discovery(_))) => return Err(not_served()),
        Ok(Err(source)) => {
            return Err(WatchError::Unreachable {
                op: Op::Discovery,
                source,
            });
        }
    };
    if capabilities.scope == Scope::Cluster {
        return Err(WatchError::ClusterScoped {
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
    limit: u32,
    continue_token: Option<&str>,
    timeout: Duration,
) -> Result<Vec<u8>, WatchError> {
    let params = ListParams {
        limit: Some(limit),
        continue_token: continue_token.map(str::to_owned),
        ..ListParams::default()
    };
    let request = kube::core::Request::new(&resource.path)
        .list(&params)
        .map_err(|source| WatchError::Request {
            op: Op::List,
            source,
        })?;
    let deadline = Instant::now() + timeout;
    let response = send(client, request, Op::List, deadline, timeout).await?;
    let body = tokio::time::timeout_at(deadline, response.into_body().collect())
        .await
        .map_err(|_| WatchError::Timeout {
            op: Op::List,
            after: timeout,
        })?
        .map_err(|source| WatchError::Unreachable {
            op: Op::List,
            source,
        })?;
    Ok(body.to_bytes().to_vec())
}

/// Opens a WATCH from `resource_version` with bookmarks and a server-side
/// timeout; `request_timeout` bounds the wait for the response headers.
pub async fn open_watch(
    client: &kube::Client,
    resource: &Resource,
    resource_version: &str,
    server_timeout: Duration,
    request_timeout: Duration,
) -> Result<WatchStream, WatchError> {
    let params = WatchParams {
        // kube-core writes `timeoutSeconds`; the apiserver caps watches at
        // its own limit, and kube asks for < 295 s (SPEC §10).
        timeout: Some(server_timeout.as_secs().clamp(1, 290) as u32),
        bookmarks: true,
        ..WatchParams::default()
    };
    let request = kube::core::Request::new(&resource.path)
        .watch(&params, resource_version)
        .map_err(|source| WatchError::Request {
            op: Op::Watch,
            source,
        })?;
    let deadline = Instant::now() + request_timeout;
    let response = send(client, request, Op::Watch, deadline, request_timeout).await?;
    Ok(WatchStream {
        body: response.into_body(),
        pending: Vec::new(),
        opened: Instant::now(),
        bytes: 0,
        max_line: MAX_LINE_BYTES,
        split_long_lines: false,
        op: Op::Watch,
    })
}

/// The longest log line kept whole: the kubelet hands the runtime's 16 KiB
/// CRI entries through, but a runtime that joins partial entries may not;
/// a longer line is passed on in pieces of this size rather than breaking
/// the stream (the sink splits events over CloudWatch's limit anyway).
pub const MAX_LOG_LINE_BYTES: usize = 1024 * 1024;

/// Opens a `pods/log` request (`path_and_query`: the log path with its
/// query, already encoded) and returns its body as a line stream; the
/// stream of a finished request ends with [`Read::End`], and
/// [`WatchStream::take_partial`] gives a last line without newline.
/// `request_timeout` bounds the wait for the response headers.
pub async fn open_log(
    client: &kube::Client,
    path_and_query: &str,
    request_timeout: Duration,
) -> Result<WatchStream, WatchError> {
    let request = http::Request::get(path_and_query)
        .body(Vec::new())
        .map_err(|source| WatchError::Request {
            op: Op::Log,
            source: kube::core::request::Error::BuildRequest(source),
        })?;
    let deadline = Instant::now() + request_timeout;
    let response = send(client, request, Op::Log, deadline, request_timeout).await?;
    Ok(WatchStream {
        body: response.into_body(),
        pending: Vec::new(),
        opened: Instant::now(),
        bytes: 0,
        max_line: MAX_LOG_LINE_BYTES,
        split_long_lines: true,
        op: Op::Log,
    })
}

/// Sends a request and turns an error status into a [`WatchError`].
async fn send(
    client: &kube::Client,
    request: http::Request<Vec<u8>>,
    op: Op,
    deadline: Instant,
    timeout: Duration,
) -> Result<http::Response<kube::client::Body>, WatchError> {
    let mut request = request.map(kube::client::Body::from);
    // No compression of streams: kube's decompression middleware decodes
    // only the first gzip member (kube-client request_events does the same).
    request.headers_mut().insert(
        http::header::ACCEPT_ENCODING,
        http::HeaderValue::from_static("identity"),
    );
    let response = tokio::time::timeout_at(deadline, client.send(request))
        .await
        .map_err(|_| WatchError::Timeout { op, after: timeout })?
        .map_err(|source| match source {
            kube::Error::Api(status) => WatchError::from_status(op, &status, None),
            source => WatchError::Unreachable { op, source },
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
    Err(WatchError::from_status(op, &status, retry_after))
}

/// An open WATCH response body, read as complete lines.
pub struct WatchStream {
    body: kube::client::Body,
    /// Bytes of a line not yet complete.
    pending: Vec<u8>,
    /// When the response arrived.
    pub opened: Instant,
    /// Bytes received so far.
    pub bytes: u64,
    /// The longest line accepted.
    max_line: usize,
    /// A longer line is passed on in pieces (logs) instead of failing
    /// the stream (watch events, which cannot be cut).
    split_long_lines: bool,
    /// What the stream is, for errors.
    op: Op,
}

/// What reading a watch stream gave.
#[derive(Debug)]
pub enum Read {
    /// One or more complete lines (each ending with `\n`).
    Lines(Vec<u8>),
    /// The server ended the response cleanly (its timeout, or a close). A
    /// partial last line is dropped: the server never sends one on a clean end.
    End,
    /// The connection broke mid-body.
    Broken(WatchError),
    /// No byte arrived within the idle deadline.
    Idle,
}

impl WatchStream {
    /// Reads until at least one complete line, the end, an error or `idle`
    /// without a byte.
    pub async fn read(&mut self, idle: Duration) -> Read {
        loop {
            let frame = match tokio::time::timeout(idle, self.body.frame()).await {
                Err(_) => return Read::Idle,
                Ok(None) => return Read::End,
                Ok(Some(Err(source))) => {
                    return Read::Broken(WatchError::Unreachable {
                        op: self.op,
                        source,
                    });
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue; // trailers carry nothing for us
            };
            self.bytes += data.len() as u64;
            let Some(last_newline) = data.iter().rposition(|&b| b == b'\n') else {
                self.pending.extend_from_slice(&data);
                if self.pending.len() > self.max_line {
                    if self.split_long_lines {
                        let mut lines = std::mem::take(&mut self.pending);
                        lines.push(b'\n');
                        return Read::Lines(lines);
                    }
                    return Read::Broken(WatchError::undecodable(
                        Op::Watch,
                        std::io::Error::other(format!(
                            "a watch line longer than {} bytes",
                            self.max_line
                        )),
                    ));
                }
                continue;
            };
            let mut lines = std::mem::take(&mut self.pending);
            lines.extend_from_slice(&data[..=last_newline]);
            self.pending.extend_from_slice(&data[last_newline + 1..]);
            return Read::Lines(lines);
        }
    }

    /// Takes the bytes of a last line that has no newline yet (a log
    /// stream that ended mid-line).
    pub fn take_partial(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

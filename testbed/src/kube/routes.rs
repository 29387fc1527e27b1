//! Request routing: path → discovery, get, list, watch or log, after the
//! injected faults, authentication and authorization.
//!
//! Paths follow the apiserver's: `/api/v1/...` for core, `/apis/G/V/...`
//! for groups; `namespaces/NS/PLURAL[/NAME[/SUB]]` for namespaced resources,
//! `PLURAL[/NAME]` for cluster-scoped ones and for lists across all
//! namespaces. A resource path that no served kind matches is a 404 Status.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Frame;
use hyper::{Method, Request, Response, StatusCode, header};
use serde_json::Value;
use tokio::sync::mpsc;

use super::auth::{self, Attributes};
use super::discovery;
use super::kinds::KindSpec;
use super::server::{RequestRecord, RequestVerb, Shared, lock};
use super::status::ApiError;
use super::store::ObjKey;
use super::{list, logs, watch};

/// Response body: every body is a stream of chunks so a stall can hold any of them.
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Capacity of a streaming body's channel, in chunks.
pub(crate) const STREAM_BUFFER: usize = 16;

/// What a handler answers.
pub(crate) enum Reply {
    /// A JSON document with 200.
    Json(Value),
    /// A created object with 201.
    Created(Value),
    /// A JSON document with 200 and a particular content type.
    JsonAs(Value, &'static str),
    /// A streamed body fed by a producer task.
    Stream {
        content_type: &'static str,
        rx: mpsc::Receiver<Bytes>,
    },
}

/// A streamed body: the receiver the response reads and the sender a producer writes.
pub(crate) fn stream_channel() -> (mpsc::Sender<Bytes>, mpsc::Receiver<Bytes>) {
    mpsc::channel(STREAM_BUFFER)
}

/// Decoded query parameters.
#[derive(Debug, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: &str) -> Self {
        Query(
            form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect(),
        )
    }

    /// The last value of a parameter (Go's `url.Values.Get` takes the first; clients send one).
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean parameter parsed like Go's `strconv.ParseBool`; absent is false.
    pub(crate) fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None | Some("") => Ok(false),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
            Some(other) => Err(ApiError::bad_request(format!(
                "invalid value for {name}: strconv.ParseBool: parsing \"{other}\": invalid syntax"
            ))),
        }
    }

    /// An integer parameter; malformed is a 400.
    pub(crate) fn int(&self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.get(name) {
            None | Some("") => Ok(None),
            Some(text) => text.parse().map(Some).map_err(|_| {
                ApiError::bad_request(format!(
                    "invalid value for {name}: strconv.ParseInt: parsing \"{text}\": invalid syntax"
                ))
            }),
        }
    }
}

/// Handles one request: never panics on input, every failure is a Status.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<hyper::body::Incoming>,
) -> Response<Body> {
    // A stalled server does not even answer the headers of a new request.
    shared.faults.wait_unstalled().await;
    let path = req.uri().path().to_string();
    let raw_query = req.uri().query().unwrap_or("").to_string();
    let query = Query::parse(&raw_query);
    let mut record = RequestRecord {
        method: req.method().to_string(),
        path: path.clone(),
        query: raw_query,
        verb: RequestVerb::Other,
        kind: None,
        status: 0,
        at: std::time::Instant::now(),
    };
    let outcome = match shared.faults.take_failure(&path) {
        Some(err) => Err(err),
        None if req.method() == Method::POST && path == SELF_SUBJECT_ACCESS_REVIEWS => {
            self_subject_access_review(&shared, req).await
        }
        None => route(&shared, &req, &path, &query, &mut record),
    };
    let response = match outcome {
        Ok(reply) => reply_response(&shared, reply),
        Err(err) => error_response(&shared, &err),
    };
    record.status = response.status().as_u16();
    shared.record(record);
    response
}

/// `authorization.k8s.io/v1` SelfSubjectAccessReviews: what `kubectl auth
/// can-i` asks.
const SELF_SUBJECT_ACCESS_REVIEWS: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";

/// A SelfSubjectAccessReview (POST, created as the real API creates it:
/// 201 with the review and its `status.allowed`), answered by the same
/// authorizer as every request of this server: a token allowed in a
/// namespace may do everything there. Any authenticated user may ask
/// (`system:basic-user`).
async fn self_subject_access_review(
    shared: &Arc<Shared>,
    req: Request<hyper::body::Incoming>,
) -> Result<Reply, ApiError> {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let user = lock(&shared.tokens).authenticate(authorization.as_deref())?;
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot read the body: {e}")))?
        .to_bytes();
    let mut review: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    let attributes = &review["spec"]["resourceAttributes"];
    let text = |name: &str| attributes[name].as_str().unwrap_or("").to_owned();
    let (namespace, verb, group, resource, subresource) = (
        text("namespace"),
        text("verb"),
        text("group"),
        text("resource"),
        text("subresource"),
    );
    if verb.is_empty() || resource.is_empty() {
        return Err(ApiError::bad_request(
            "spec.resourceAttributes needs verb and resource",
        ));
    }
    let attrs = Attributes {
        verb: &verb,
        group: &group,
        resource: &resource,
        subresource: (!subresource.is_empty()).then_some(subresource.as_str()),
        namespace: (!namespace.is_empty()).then_some(namespace.as_str()),
        name: None,
    };
    let status = match auth::authorize(&user, &attrs) {
        Ok(()) => {
            serde_json::json!({"allowed": true, "reason": "allowed by the test server's authorizer"})
        }
        Err(_) => serde_json::json!({"allowed": false}),
    };
    review["status"] = status;
    Ok(Reply::Created(review))
}

fn route(
    shared: &Arc<Shared>,
    req: &Request<hyper::body::Incoming>,
    path: &str,
    query: &Query,
    record: &mut RequestRecord,
) -> Result<Reply, ApiError> {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let user = lock(&shared.tokens).authenticate(authorization)?;
    if req.method() != Method::GET {
        return Err(ApiError::method_not_allowed());
    }
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let aggregated = discovery::wants_aggregated(accept);
    let kinds = || lock(&shared.kinds);
    record.verb = RequestVerb::Discovery;
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["version"] => return Ok(Reply::Json(discovery::version())),
        ["api"] if aggregated => {
            return Ok(Reply::JsonAs(
                discovery::aggregated(kinds().served(), true),
                discovery::AGGREGATED_CONTENT_TYPE,
            ));
        }
        ["api"] => {
            return Ok(Reply::Json(discovery::api_versions(
                &shared.addr.to_string(),
            )));
        }
        ["apis"] if aggregated => {
            return Ok(Reply::JsonAs(
                discovery::aggregated(kinds().served(), false),
                discovery::AGGREGATED_CONTENT_TYPE,
            ));
        }
        ["apis"] => return Ok(Reply::Json(discovery::group_list(kinds().served()))),
        ["apis", group] => {
            return discovery::group(kinds().served(), group)
                .map(Reply::Json)
                .ok_or_else(ApiError::no_route);
        }
        ["api", "v1"] => {
            return discovery::resource_list(kinds().served(), "", "v1")
                .map(Reply::Json)
                .ok_or_else(ApiError::no_route);
        }
        ["apis", group, version] => {
            return discovery::resource_list(kinds().served(), group, version)
                .map(Reply::Json)
                .ok_or_else(ApiError::no_route);
        }
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::no_route()),
    };
    let target = resolve(&kinds(), group, version, rest).ok_or_else(ApiError::no_route)?;
    record.kind = Some(target.spec.kind.clone());
    let watching = target.name.is_none() && query.flag("watch")?;
    let verb = match (&target.name, &target.sub, watching) {
        (Some(_), Some(_), _) => "get",
        (Some(_), None, _) => "get",
        (None, _, true) => "watch",
        (None, _, false) => "list",
    };
    record.verb = match (verb, target.sub.as_deref()) {
        ("get", Some("log")) => RequestVerb::Log,
        ("get", _) => RequestVerb::Get,
        ("watch", _) => RequestVerb::Watch,
        _ => RequestVerb::List,
    };
    auth::authorize(
        &user,
        &Attributes {
            verb,
            group,
            resource: &target.spec.plural,
            subresource: target.sub.as_deref(),
            namespace: target.namespace.as_deref(),
            name: target.name.as_deref(),
        },
    )?;
    match (target.name, target.sub) {
        (Some(name), Some(sub))
            if sub == "log" && target.spec.kind == "Pod" && target.spec.group.is_empty() =>
        {
            logs::pod_log(
                shared,
                target.namespace.as_deref().unwrap_or(""),
                &name,
                query,
            )
        }
        (Some(_), Some(_)) => Err(ApiError::no_route()),
        (Some(name), None) => {
            let key = ObjKey {
                namespace: target.namespace.unwrap_or_default(),
                name,
            };
            let store = lock(&shared.store);
            match store.get(&target.spec.type_key(), &key) {
                Some(obj) => Ok(Reply::Json(obj.value(&target.spec.type_key()))),
                None => Err(ApiError::not_found(
                    &target.spec.group,
                    &target.spec.plural,
                    &key.name,
                )),
            }
        }
        (None, _) if watching => watch::watch(shared, &target.spec, target.namespace, query),
        (None, _) => list::list(shared, &target.spec, target.namespace.as_deref(), query),
    }
}

/// A resolved resource path.
struct Target {
    spec: KindSpec,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn resolve(
    kinds: &super::kinds::KindRegistry,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Option<Target> {
    let owned = |s: &&str| s.to_string();
    // namespaces/NS/PLURAL[/NAME[/SUB]] names a namespaced resource; anything
    // else starting with `namespaces` is the cluster-scoped Namespace itself.
    if let ["namespaces", ns, plural, tail @ ..] = rest
        && let Some(spec) = kinds
            .by_plural(group, version, plural)
            .filter(|k| k.namespaced)
    {
        return match tail {
            [] => Some(Target {
                spec,
                namespace: Some(ns.to_string()),
                name: None,
                sub: None,
            }),
            [name] => Some(Target {
                spec,
                namespace: Some(ns.to_string()),
                name: Some(name.to_string()),
                sub: None,
            }),
            [name, sub] => Some(Target {
                spec,
                namespace: Some(ns.to_string()),
                name: Some(name.to_string()),
                sub: Some(sub.to_string()),
            }),
            _ => None,
        };
    }
    let (plural, tail) = rest.split_first()?;
    let spec = kinds.by_plural(group, version, plural)?;
    match (spec.namespaced, tail) {
        // A namespaced kind across all namespaces: list and watch only.
        (true, []) => Some(Target {
            spec,
            namespace: None,
            name: None,
            sub: None,
        }),
        (true, _) => None,
        (false, []) => Some(Target {
            spec,
            namespace: None,
            name: None,
            sub: None,
        }),
        (false, [name]) => Some(Target {
            spec,
            namespace: None,
            name: Some(owned(name)),
            sub: None,
        }),
        (false, [name, sub]) => Some(Target {
            spec,
            namespace: None,
            name: Some(owned(name)),
            sub: Some(owned(sub)),
        }),
        _ => None,
    }
}

/// Wraps a chunk channel into a body that holds every chunk while the server is stalled.
fn stalling_body(shared: &Arc<Shared>, rx: mpsc::Receiver<Bytes>) -> Body {
    let stream =
        futures_util::stream::unfold((rx, shared.clone()), |(mut rx, shared)| async move {
            let chunk = rx.recv().await?;
            shared.faults.wait_unstalled().await;
            Some((Ok::<_, Infallible>(Frame::data(chunk)), (rx, shared)))
        });
    StreamBody::new(stream).boxed_unsync()
}

fn full_body(shared: &Arc<Shared>, bytes: Bytes) -> Body {
    let (tx, rx) = mpsc::channel(1);
    // A fresh channel of capacity 1 always takes one chunk.
    let _ = tx.try_send(bytes);
    stalling_body(shared, rx)
}

fn reply_response(shared: &Arc<Shared>, reply: Reply) -> Response<Body> {
    let mut created = false;
    let (content_type, body) = match reply {
        Reply::Json(value) => (
            "application/json",
            full_body(shared, Bytes::from(value.to_string())),
        ),
        Reply::Created(value) => {
            created = true;
            (
                "application/json",
                full_body(shared, Bytes::from(value.to_string())),
            )
        }
        Reply::JsonAs(value, content_type) => (
            content_type,
            full_body(shared, Bytes::from(value.to_string())),
        ),
        Reply::Stream { content_type, rx } => (content_type, stalling_body(shared, rx)),
    };
    let mut response = Response::new(body);
    if created {
        *response.status_mut() = StatusCode::CREATED;
    }
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

pub(crate) fn error_response(shared: &Arc<Shared>, err: &ApiError) -> Response<Body> {
    let mut response = Response::new(full_body(shared, Bytes::from(err.to_status().to_string())));
    *response.status_mut() =
        StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    if let Some(seconds) = err.retry_after {
        headers.insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
    }
    response
}

/// Keeps the last `limit` records.
pub(crate) fn push_bounded(log: &mut VecDeque<RequestRecord>, record: RequestRecord, limit: usize) {
    log.push_back(record);
    while log.len() > limit {
        log.pop_front();
    }
}

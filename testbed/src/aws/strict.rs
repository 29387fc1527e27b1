//! A loopback proxy in front of moto that refuses what real AWS refuses.
//!
//! moto accepts much that AWS refuses (SPEC §8). [`StrictProxy`] forwards
//! every request to moto unchanged, except that it first checks SNS
//! `Publish` / `PublishBatch` and CloudWatch `PutLogEvents` against
//! [`super::rules`] and answers a violation itself, with the status, protocol
//! format and error code AWS would send. Point the code under test at
//! [`StrictProxy::url`] and assert [`StrictProxy::assert_nothing_refused`] at
//! the end: a test then fails whenever the code sends what AWS would refuse.
//!
//! Too-old / too-new log events are not refused: as CloudWatch does, the proxy
//! forwards only the acceptable events and answers with
//! `rejectedLogEventsInfo` (moto does this too, but with off-by-one indices).
//!
//! For resilience tests the proxy also injects faults ([`StrictProxy::fail_next`]),
//! plays an unreachable service ([`StrictProxy::set_down`]), adds latency, and
//! counts requests by action and refusals by rule.
//!
//! It runs on its own thread and runtime, so it serves sync tests, async tests
//! and child processes alike; dropping it stops it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::rules::{self, Refusal, Rule};

/// Settings of a [`StrictProxy`].
#[derive(Clone, Debug)]
pub struct StrictConfig {
    /// Per-event limit for `PutLogEvents`, message bytes + 26. Defaults to
    /// [`rules::logs::MAX_EVENT_BYTES`] (256 KiB; see there why not 1 MB).
    pub logs_max_event_bytes: usize,
}

impl Default for StrictConfig {
    fn default() -> Self {
        StrictConfig {
            logs_max_event_bytes: rules::logs::MAX_EVENT_BYTES,
        }
    }
}

/// A fault to answer instead of forwarding (see [`StrictProxy::fail_next`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// This HTTP status with the service's server error: SNS `InternalError`
    /// (`ServiceUnavailable` for 503), CloudWatch `ServiceUnavailableException`;
    /// `Throttling` / `ThrottlingException` for 429.
    Status(u16),
    /// The service's throttling error, as AWS sends it: SNS HTTP 400
    /// `Throttling` "Rate exceeded"; CloudWatch HTTP 400 `ThrottlingException`
    /// "Rate exceeded". The SDKs classify both as retryable throttling.
    Throttling,
    /// Close the connection without answering.
    Reset,
    /// `PublishBatch` only: HTTP 200 with the first `entries` entries of the
    /// request (in member order) listed in `Failed`, the others forwarded to
    /// moto and listed as moto answers them (SPEC §10: PublishBatch can
    /// answer 200 with some entries failed). `sender_fault: true` fails them
    /// as invalid (`InvalidParameter`, `SenderFault` true: never retry);
    /// false as SNS's own trouble (`InternalError`, `SenderFault` false:
    /// retry). Queue it with [`StrictProxy::fail_next_for`]`("PublishBatch", …)`;
    /// a request of another action that takes it is forwarded unchanged.
    EntriesFailed { entries: usize, sender_fault: bool },
    /// The service refuses the request for the account or resource, as AWS
    /// does when a policy or key is wrong: HTTP `status` with error `code`
    /// and `SenderFault`, e.g. SNS 403 `AuthorizationError` "User: … is not
    /// authorized to perform: SNS:Publish on resource: …", or CloudWatch 400
    /// `AccessDeniedException`.
    Refused {
        status: u16,
        code: &'static str,
        message: &'static str,
    },
}

struct PendingFault {
    action: Option<String>,
    remaining: usize,
    fault: Fault,
}

/// State shared between the handle and the proxy's tasks.
struct Shared {
    upstream: String,
    config: StrictConfig,
    latency: Mutex<Duration>,
    faults: Mutex<Vec<PendingFault>>,
    /// CloudWatch Logs groups the credentials may not touch: every request
    /// naming one is refused, as IAM refuses a policy that leaves it out.
    denied_groups: Mutex<std::collections::BTreeSet<String>>,
    denied_roles: Mutex<std::collections::BTreeSet<String>>,
    /// AssumeRole requests seen: (RoleArn, ExternalId, RoleSessionName).
    assumed: Mutex<Vec<(String, Option<String>, String)>>,
    requests: Mutex<BTreeMap<String, u64>>,
    rules: Mutex<BTreeMap<Rule, u64>>,
    refusals: Mutex<Vec<String>>,
    down: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    request_ids: AtomicU64,
    /// Requests being handled now, and the most at any moment.
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

/// The strict AWS limits proxy. See the module docs.
pub struct StrictProxy {
    addr: SocketAddr,
    url: String,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for StrictProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StrictProxy")
            .field("url", &self.url)
            .field("upstream", &self.shared.upstream)
            .finish()
    }
}

impl StrictProxy {
    /// Starts a proxy on `127.0.0.1:<free port>` forwarding to `upstream`
    /// (e.g. [`super::Moto::url`]), with the default [`StrictConfig`].
    pub fn start(upstream: &str) -> StrictProxy {
        Self::with_config(upstream, StrictConfig::default())
    }

    /// Starts a proxy with explicit settings.
    pub fn with_config(upstream: &str, config: StrictConfig) -> StrictProxy {
        let upstream = upstream.trim_end_matches('/').to_owned();
        upstream
            .parse::<Uri>()
            .unwrap_or_else(|e| panic!("bad upstream URL {upstream:?}: {e}"));
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind the strict proxy");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            upstream,
            config,
            latency: Mutex::new(Duration::ZERO),
            faults: Mutex::new(Vec::new()),
            denied_groups: Mutex::new(std::collections::BTreeSet::new()),
            denied_roles: Mutex::new(std::collections::BTreeSet::new()),
            assumed: Mutex::new(Vec::new()),
            requests: Mutex::new(BTreeMap::new()),
            rules: Mutex::new(BTreeMap::new()),
            refusals: Mutex::new(Vec::new()),
            down: watch::Sender::new(false),
            stop: watch::Sender::new(false),
            request_ids: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
        });
        let task_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("strict-proxy-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("strict proxy runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("tokio listener");
                    serve(listener, addr, task_shared).await;
                });
            })
            .expect("spawn strict proxy thread");
        StrictProxy {
            addr,
            url: format!("http://{addr}"),
            shared,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>`, to use as an SDK endpoint URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The loopback address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next `n` requests (of any action) are answered with `fault`.
    /// Faults queue up: a later call applies after the earlier ones are used.
    pub fn fail_next(&self, n: usize, fault: Fault) {
        self.push_fault(None, n, fault);
    }

    /// The next `n` requests with this action (`"PublishBatch"`,
    /// `"PutLogEvents"`, …) are answered with `fault`; others pass.
    pub fn fail_next_for(&self, action: &str, n: usize, fault: Fault) {
        self.push_fault(Some(action.to_owned()), n, fault);
    }

    fn push_fault(&self, action: Option<String>, n: usize, fault: Fault) {
        if n > 0 {
            self.shared.faults.lock().unwrap().push(PendingFault {
                action,
                remaining: n,
                fault,
            });
        }
    }

    /// Refuses (`true`) or allows again (`false`) every CloudWatch Logs
    /// request naming `group` (`logGroupName`), with HTTP 400
    /// `AccessDeniedException` and the message IAM sends: an identity
    /// policy that does not cover that group. Other groups pass.
    pub fn deny_log_group(&self, group: &str, denied: bool) {
        let mut groups = self.shared.denied_groups.lock().unwrap();
        if denied {
            groups.insert(group.to_owned());
        } else {
            groups.remove(group);
        }
    }

    /// Refuses (`true`) or allows again (`false`) every STS `AssumeRole`
    /// of `role_arn`, with HTTP 403 `AccessDenied` and the message STS sends
    /// when the role's trust policy does not name the caller (or the
    /// ExternalId does not match). Other roles pass.
    pub fn deny_role(&self, role_arn: &str, denied: bool) {
        let mut roles = self.shared.denied_roles.lock().unwrap();
        if denied {
            roles.insert(role_arn.to_owned());
        } else {
            roles.remove(role_arn);
        }
    }

    /// The AssumeRole requests received (denied ones included), in order:
    /// (RoleArn, ExternalId, RoleSessionName).
    pub fn assume_role_requests(&self) -> Vec<(String, Option<String>, String)> {
        self.shared.assumed.lock().unwrap().clone()
    }

    /// `true`: stop listening (new connections are refused) and drop open
    /// connections, as an unreachable endpoint. `false`: listen again on the
    /// same port.
    pub fn set_down(&self, down: bool) {
        self.shared.down.send_replace(down);
    }

    /// Delay every answer by `latency` (zero to stop).
    pub fn set_latency(&self, latency: Duration) {
        *self.shared.latency.lock().unwrap() = latency;
    }

    /// Requests received with this action (including refused and faulted ones).
    pub fn count(&self, action: &str) -> u64 {
        self.shared
            .requests
            .lock()
            .unwrap()
            .get(action)
            .copied()
            .unwrap_or(0)
    }

    /// The most requests the proxy was handling at one moment (received and
    /// not yet answered, injected latency included): how many requests a
    /// client had in flight at its peak.
    pub fn max_concurrent(&self) -> u64 {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Requests received, by action.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// How often `rule` was broken: refused requests, or for
    /// [`Rule::LogsEventTooOld`] / [`Rule::LogsEventTooNew`] dropped events.
    pub fn rejections(&self, rule: Rule) -> u64 {
        self.shared
            .rules
            .lock()
            .unwrap()
            .get(&rule)
            .copied()
            .unwrap_or(0)
    }

    /// Requests refused for breaking a rule (not counting dropped events).
    pub fn refused(&self) -> u64 {
        self.shared
            .rules
            .lock()
            .unwrap()
            .iter()
            .filter(|(rule, _)| rule.refuses_request())
            .map(|(_, n)| n)
            .sum()
    }

    /// One line per refused request: `rule: code: message`.
    pub fn refusal_log(&self) -> Vec<String> {
        self.shared.refusals.lock().unwrap().clone()
    }

    /// Panics, listing them, if any request was refused.
    pub fn assert_nothing_refused(&self) {
        let log = self.refusal_log();
        assert!(
            log.is_empty(),
            "the strict AWS proxy refused {} request(s) real AWS would refuse:\n{}",
            log.len(),
            log.join("\n")
        );
    }
}

impl Drop for StrictProxy {
    fn drop(&mut self) {
        self.shared.stop.send_replace(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts connections until stopped, closing the listener while down.
async fn serve(listener: TcpListener, addr: SocketAddr, shared: Arc<Shared>) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut listener = Some(listener);
    let mut down = shared.down.subscribe();
    let mut stop = shared.stop.subscribe();
    loop {
        if *stop.borrow() {
            return;
        }
        if *down.borrow_and_update() {
            listener = None;
        } else if listener.is_none() {
            listener = Some(rebind(addr).await);
        }
        let Some(l) = &listener else {
            tokio::select! {
                _ = stop.changed() => return,
                _ = down.changed() => continue,
            }
        };
        tokio::select! {
            _ = stop.changed() => return,
            _ = down.changed() => continue,
            accepted = l.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                tokio::spawn(connection(stream, shared.clone(), client.clone()));
            }
        }
    }
}

/// Binds the proxy's port again after [`StrictProxy::set_down`]`(false)`.
async fn rebind(addr: SocketAddr) -> TcpListener {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                panic!("strict proxy cannot listen on {addr} again: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    shared: Arc<Shared>,
    client: Client<HttpConnector, Full<Bytes>>,
) {
    let mut down = shared.down.subscribe();
    let mut stop = shared.stop.subscribe();
    let service_shared = shared.clone();
    let service = service_fn(move |req| handle(req, service_shared.clone(), client.clone()));
    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = conn => {}
        _ = down.wait_for(|d| *d) => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

/// The wire protocol of a request, which decides the error format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    /// awsQuery (SNS): XML errors.
    Query,
    /// awsJson 1.0 / 1.1 (SQS, CloudWatch Logs): JSON errors.
    Json(&'static str),
}

/// Dropping the connection is how the service tells hyper to close it unanswered.
#[derive(Debug)]
struct ResetConnection;

impl std::fmt::Display for ResetConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fault injected: connection reset")
    }
}

impl std::error::Error for ResetConnection {}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    client: Client<HttpConnector, Full<Bytes>>,
) -> Result<Response<Full<Bytes>>, ResetConnection> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(ResetConnection),
    };
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (protocol, action, query) = match &target {
        Some(t) => {
            let version = if content_type.contains("1.0") {
                "1.0"
            } else {
                "1.1"
            };
            let action = t.rsplit('.').next().unwrap_or(t).to_owned();
            (Protocol::Json(version), action, None)
        }
        None => {
            let params = rules::sns::parse_query(&body);
            let action = params.get("Action").cloned().unwrap_or_default();
            (Protocol::Query, action, Some(params))
        }
    };
    *shared
        .requests
        .lock()
        .unwrap()
        .entry(action.clone())
        .or_default() += 1;
    let request_id = request_id(&shared);
    let _in_flight = InFlight::enter(&shared);

    let latency = *shared.latency.lock().unwrap();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    if let Some(group) = denied_group(&shared, target.as_deref(), &body) {
        let message = format!(
            "User: arn:aws:iam::123456789012:user/kubeherald is not authorized to perform: logs:{action} on resource: arn:aws:logs:us-east-1:123456789012:log-group:{group} because no identity-based policy allows the logs:{action} action"
        );
        return Ok(error_response(
            protocol,
            400,
            "AccessDeniedException",
            &message,
            true,
            &request_id,
        ));
    }
    if action == "AssumeRole"
        && let Some(params) = &query
    {
        shared.assumed.lock().unwrap().push((
            params.get("RoleArn").cloned().unwrap_or_default(),
            params.get("ExternalId").cloned(),
            params.get("RoleSessionName").cloned().unwrap_or_default(),
        ));
    }
    if action == "AssumeRole"
        && let Some(role) = query.as_ref().and_then(|params| params.get("RoleArn"))
        && shared.denied_roles.lock().unwrap().contains(role)
    {
        let message = format!(
            "User: arn:aws:iam::123456789012:user/kubeherald is not authorized to perform: sts:AssumeRole on resource: {role}"
        );
        return Ok(error_response(
            protocol,
            403,
            "AccessDenied",
            &message,
            true,
            &request_id,
        ));
    }
    let mut entries_failed = None;
    if let Some(fault) = take_fault(&shared, &action) {
        match fault {
            Fault::Reset => return Err(ResetConnection),
            Fault::Throttling => return Ok(throttling(protocol, &request_id)),
            Fault::Status(status) => return Ok(server_error(protocol, status, &request_id)),
            Fault::Refused {
                status,
                code,
                message,
            } => {
                return Ok(error_response(
                    protocol,
                    status,
                    code,
                    message,
                    true,
                    &request_id,
                ));
            }
            Fault::EntriesFailed {
                entries,
                sender_fault,
            } => entries_failed = (action == "PublishBatch").then_some((entries, sender_fault)),
        }
    }

    let checked = match (&query, target.as_deref()) {
        (Some(params), _) if action == "Publish" => {
            rules::sns::check_publish(params).map(|()| None)
        }
        (Some(params), _) if action == "PublishBatch" => {
            rules::sns::check_publish_batch(params).map(|()| None)
        }
        (None, Some("Logs_20140328.PutLogEvents")) => rules::logs::check_put_log_events(
            &body,
            jiff::Timestamp::now().as_millisecond(),
            shared.config.logs_max_event_bytes,
        )
        .map(|verdict| match verdict {
            rules::logs::Verdict::Forward => None,
            rules::logs::Verdict::Partial { body, rejected } => Some((body, rejected)),
        }),
        _ => Ok(None),
    };
    let partial = match checked {
        Ok(partial) => partial,
        Err(refusal) => return Ok(refuse(&shared, protocol, &action, refusal, &request_id)),
    };

    let forward_body = match &partial {
        Some((body, rejected)) => {
            let mut rules = shared.rules.lock().unwrap();
            *rules.entry(Rule::LogsEventTooOld).or_default() += rejected.too_old as u64;
            *rules.entry(Rule::LogsEventTooNew).or_default() += rejected.too_new as u64;
            Bytes::from(body.clone())
        }
        None => body,
    };
    // Fault::EntriesFailed: moto sees only the entries that do not fail.
    let mut injected_failed = None;
    let forward_body = match (entries_failed, &query) {
        (Some((n, sender_fault)), Some(params)) => {
            let (forwarded, failed_ids) = split_batch(params, n);
            let failed_xml = failed_members(&failed_ids, sender_fault);
            if forwarded.is_none() {
                return Ok(publish_batch_answer("", &failed_xml, &request_id));
            }
            injected_failed = Some(failed_xml);
            Bytes::from(forwarded.unwrap_or_default())
        }
        _ => forward_body,
    };

    let uri = format!(
        "{}{}",
        shared.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut upstream_req = Request::from_parts(parts, Full::new(forward_body.clone()));
    *upstream_req.uri_mut() = uri.parse().expect("upstream URI");
    let headers = upstream_req.headers_mut();
    for hop in [
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "upgrade",
    ] {
        headers.remove(hop);
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(forward_body.len()));

    let upstream_resp = match client.request(upstream_req).await {
        Ok(resp) => resp,
        Err(e) => return Ok(bad_gateway(protocol, &e.to_string(), &request_id)),
    };
    let (mut parts, body) = upstream_resp.into_parts();
    let mut body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(bad_gateway(protocol, &e.to_string(), &request_id)),
    };
    if let Some(failed_xml) = &injected_failed
        && parts.status.is_success()
    {
        let moto = String::from_utf8_lossy(&body);
        body = Bytes::from(
            publish_batch_answer(
                &inner(&moto, "Successful"),
                &format!("{}{failed_xml}", inner(&moto, "Failed")),
                &request_id,
            )
            .into_body_string(),
        );
        parts
            .headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/xml"));
    }
    if let Some((_, rejected)) = partial
        && parts.status.is_success()
        && let Ok(mut answer) = serde_json::from_slice::<Value>(&body)
        && let Some(answer_map) = answer.as_object_mut()
    {
        answer_map.insert("rejectedLogEventsInfo".into(), rejected.to_json());
        body = Bytes::from(serde_json::to_vec(&answer).expect("re-encode answer"));
    }
    for hop in [
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
    ] {
        parts.headers.remove(hop);
    }
    Ok(Response::from_parts(parts, Full::new(body)))
}

/// Counts a request in [`Shared::in_flight`] while it is alive.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

const BATCH_MEMBER: &str = "PublishBatchRequestEntries.member.";

/// Splits a `PublishBatch` request for [`Fault::EntriesFailed`]: the ids of
/// its first `n` entries (in member order), and the form body of the request
/// with the remaining entries renumbered from 1, or `None` if none remain.
fn split_batch(params: &rules::sns::QueryParams, n: usize) -> (Option<Vec<u8>>, Vec<String>) {
    let member = |key: &str| -> Option<(u32, String)> {
        let rest = key.strip_prefix(BATCH_MEMBER)?;
        let (index, field) = rest.split_once('.')?;
        Some((index.parse().ok()?, field.to_owned()))
    };
    let indices: std::collections::BTreeSet<u32> = params
        .keys()
        .filter_map(|k| member(k))
        .map(|(i, _)| i)
        .collect();
    let failed: Vec<u32> = indices.iter().copied().take(n).collect();
    let renumber: BTreeMap<u32, usize> = indices.iter().copied().skip(n).zip(1..).collect();
    let failed_ids = failed
        .iter()
        .map(|i| {
            params
                .get(&format!("{BATCH_MEMBER}{i}.Id"))
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    if renumber.is_empty() {
        return (None, failed_ids);
    }
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (key, value) in params {
        match member(key) {
            Some((index, field)) => {
                if let Some(new) = renumber.get(&index) {
                    form.append_pair(&format!("{BATCH_MEMBER}{new}.{field}"), value);
                }
            }
            None => {
                form.append_pair(key, value);
            }
        }
    }
    (Some(form.finish().into_bytes()), failed_ids)
}

/// `Failed` members for the injected entries, as SNS writes them.
fn failed_members(ids: &[String], sender_fault: bool) -> String {
    let (code, message) = if sender_fault {
        (
            "InvalidParameter",
            "Invalid parameter: injected by the strict proxy",
        )
    } else {
        (
            "InternalError",
            "Internal service error (injected by the strict proxy)",
        )
    };
    ids.iter()
        .map(|id| {
            format!(
                "<member><Id>{}</Id><Code>{code}</Code><Message>{message}</Message><SenderFault>{sender_fault}</SenderFault></member>",
                xml_escape(id)
            )
        })
        .collect()
}

/// The text between `<tag>` and `</tag>` (empty for `<tag/>` or none).
fn inner(xml: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    xml.find(&open)
        .and_then(|start| {
            let from = start + open.len();
            xml[from..]
                .find(&close)
                .map(|len| xml[from..from + len].to_owned())
        })
        .unwrap_or_default()
}

/// A `PublishBatchResponse` (awsQuery XML) with these `Successful` and
/// `Failed` members.
fn publish_batch_answer(successful: &str, failed: &str, request_id: &str) -> Response<Full<Bytes>> {
    let body = format!(
        "<PublishBatchResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\">\
         <PublishBatchResult><Successful>{successful}</Successful><Failed>{failed}</Failed></PublishBatchResult>\
         <ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></PublishBatchResponse>"
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "text/xml")
        .header("x-amzn-RequestId", request_id)
        .body(Full::new(Bytes::from(body)))
        .expect("PublishBatch answer")
}

/// The body of an answer built here.
trait IntoBodyString {
    fn into_body_string(self) -> String;
}

impl IntoBodyString for Response<Full<Bytes>> {
    fn into_body_string(self) -> String {
        use futures_util::FutureExt;
        let bytes = self
            .into_body()
            .collect()
            .now_or_never()
            .expect("a Full body is ready")
            .expect("a Full body cannot fail")
            .to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// The denied group a CloudWatch Logs request names, if any.
fn denied_group(shared: &Shared, target: Option<&str>, body: &[u8]) -> Option<String> {
    if !target?.starts_with("Logs_") {
        return None;
    }
    let denied = shared.denied_groups.lock().unwrap();
    if denied.is_empty() {
        return None;
    }
    let request: serde_json::Value = serde_json::from_slice(body).ok()?;
    let group = request.get("logGroupName")?.as_str()?;
    denied.contains(group).then(|| group.to_owned())
}

fn take_fault(shared: &Shared, action: &str) -> Option<Fault> {
    let mut faults = shared.faults.lock().unwrap();
    let i = faults
        .iter()
        .position(|f| f.action.as_deref().is_none_or(|a| a == action))?;
    let fault = faults[i].fault;
    faults[i].remaining -= 1;
    if faults[i].remaining == 0 {
        faults.remove(i);
    }
    Some(fault)
}

fn request_id(shared: &Shared) -> String {
    let n = shared.request_ids.fetch_add(1, Ordering::Relaxed);
    let t = jiff::Timestamp::now().as_nanosecond() as u128;
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (t >> 32) as u32,
        (t >> 16) as u16,
        (t & 0xfff) as u16,
        (n >> 48) as u16 & 0xfff,
        n & 0xffff_ffff_ffff
    )
}

fn refuse(
    shared: &Shared,
    protocol: Protocol,
    action: &str,
    refusal: Refusal,
    request_id: &str,
) -> Response<Full<Bytes>> {
    *shared
        .rules
        .lock()
        .unwrap()
        .entry(refusal.rule)
        .or_default() += 1;
    shared.refusals.lock().unwrap().push(format!(
        "{action}: {}: {}: {}",
        refusal.rule, refusal.code, refusal.message
    ));
    error_response(
        protocol,
        refusal.status,
        refusal.code,
        &refusal.message,
        true,
        request_id,
    )
}

fn throttling(protocol: Protocol, request_id: &str) -> Response<Full<Bytes>> {
    let code = match protocol {
        Protocol::Query => "Throttling",
        Protocol::Json(_) => "ThrottlingException",
    };
    error_response(protocol, 400, code, "Rate exceeded", true, request_id)
}

fn server_error(protocol: Protocol, status: u16, request_id: &str) -> Response<Full<Bytes>> {
    if status == 429 {
        let code = match protocol {
            Protocol::Query => "Throttling",
            Protocol::Json(_) => "ThrottlingException",
        };
        return error_response(protocol, 429, code, "Rate exceeded", true, request_id);
    }
    let (code, message) = match (protocol, status) {
        (Protocol::Query, 503) => ("ServiceUnavailable", "Service is unavailable."),
        (Protocol::Query, _) => ("InternalError", "Internal service error."),
        (Protocol::Json(_), _) => (
            "ServiceUnavailableException",
            "The service cannot complete the request.",
        ),
    };
    error_response(protocol, status, code, message, status < 500, request_id)
}

fn bad_gateway(protocol: Protocol, why: &str, request_id: &str) -> Response<Full<Bytes>> {
    let message = format!("strict proxy: upstream (moto) failed: {why}");
    error_response(
        protocol,
        502,
        "InternalFailure",
        &message,
        false,
        request_id,
    )
}

/// An error answer in the protocol's format:
/// - awsQuery: `<ErrorResponse><Error><Type>Sender</Type><Code>…</Code>
///   <Message>…</Message></Error><RequestId>…</RequestId></ErrorResponse>`, `text/xml`;
/// - awsJson: `{"__type":"…","message":"…"}`, `application/x-amz-json-1.x`,
///   with `x-amzn-RequestId`.
fn error_response(
    protocol: Protocol,
    status: u16,
    code: &str,
    message: &str,
    sender_fault: bool,
    request_id: &str,
) -> Response<Full<Bytes>> {
    let (content_type, body) = match protocol {
        Protocol::Query => (
            "text/xml".to_owned(),
            format!(
                "<ErrorResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\">\n  <Error>\n    \
                 <Type>{}</Type>\n    <Code>{}</Code>\n    <Message>{}</Message>\n  </Error>\n  \
                 <RequestId>{}</RequestId>\n</ErrorResponse>\n",
                if sender_fault { "Sender" } else { "Receiver" },
                xml_escape(code),
                xml_escape(message),
                request_id
            ),
        ),
        Protocol::Json(version) => (
            format!("application/x-amz-json-{version}"),
            serde_json::json!({ "__type": code, "message": message }).to_string(),
        ),
    };
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(CONTENT_TYPE, content_type)
        .header("x-amzn-RequestId", request_id)
        .body(Full::new(Bytes::from(body)))
        .expect("error response")
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch_params(ids: &[&str]) -> rules::sns::QueryParams {
        let mut params = rules::sns::QueryParams::new();
        params.insert("Action".into(), "PublishBatch".into());
        params.insert(
            "TopicArn".into(),
            "arn:aws:sns:us-east-1:123456789012:t".into(),
        );
        for (i, id) in ids.iter().enumerate() {
            let n = i + 1;
            params.insert(format!("{BATCH_MEMBER}{n}.Id"), (*id).into());
            params.insert(
                format!("{BATCH_MEMBER}{n}.Message"),
                format!("body of {id}"),
            );
            params.insert(
                format!("{BATCH_MEMBER}{n}.MessageAttributes.entry.1.Name"),
                "kind".into(),
            );
        }
        params
    }

    #[test]
    fn entries_failed_splits_off_the_first_entries_and_renumbers_the_rest() {
        // Eleven-plus members sort "10" before "2" as strings: order is numeric.
        let ids: Vec<String> = (0..12).map(|i| format!("e{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let (forwarded, failed) = split_batch(&batch_params(&ids), 3);
        assert_eq!(failed, ["e0", "e1", "e2"]);
        let forwarded = rules::sns::parse_query(&forwarded.unwrap());
        assert_eq!(forwarded["Action"], "PublishBatch");
        assert_eq!(forwarded[&format!("{BATCH_MEMBER}1.Id")], "e3");
        assert_eq!(forwarded[&format!("{BATCH_MEMBER}1.Message")], "body of e3");
        assert_eq!(
            forwarded[&format!("{BATCH_MEMBER}1.MessageAttributes.entry.1.Name")],
            "kind"
        );
        assert_eq!(forwarded[&format!("{BATCH_MEMBER}9.Id")], "e11");
        assert!(!forwarded.contains_key(&format!("{BATCH_MEMBER}10.Id")));

        let (none, failed) = split_batch(&batch_params(&["a", "b"]), 5);
        assert!(none.is_none(), "every entry fails: nothing to forward");
        assert_eq!(failed, ["a", "b"]);
    }

    #[test]
    fn the_answer_merges_motos_members_with_the_injected_failures() {
        let moto = "<PublishBatchResponse><PublishBatchResult><Successful><member><Id>e3</Id>\
                    <MessageId>m</MessageId></member></Successful><Failed/></PublishBatchResult></PublishBatchResponse>";
        let failed = failed_members(&["e0".into()], true);
        let answer = publish_batch_answer(
            &inner(moto, "Successful"),
            &format!("{}{failed}", inner(moto, "Failed")),
            "rid",
        )
        .into_body_string();
        assert!(
            answer.contains(
                "<Successful><member><Id>e3</Id><MessageId>m</MessageId></member></Successful>"
            ),
            "{answer}"
        );
        assert!(
            answer.contains("<Failed><member><Id>e0</Id><Code>InvalidParameter</Code>"),
            "{answer}"
        );
        assert!(answer.contains("<SenderFault>true</SenderFault>"));
        assert!(failed_members(&["x".into()], false).contains("<Code>InternalError</Code><Message>Internal service error (injected by the strict proxy)</Message><SenderFault>false</SenderFault>"));
    }
}

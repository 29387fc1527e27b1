//! Why a request to the Kubernetes API failed: one error type for discovery,
//! LIST, WATCH, GET and `pods/log`, with the operation it happened in, a
//! fixed metric label per condition and the HTTP facts (`code`,
//! `Retry-After`) the callers' retry decisions need.

use std::fmt;
use std::time::Duration;

/// The API operation a failure happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Resolving the kind (`/api/v1`, `/apis/GROUP/VERSION`).
    Discovery,
    /// A LIST page.
    List,
    /// A WATCH request or its stream.
    Watch,
    /// A GET of one object (the log follow reads a pod's status).
    Get,
    /// Building the client (which runs an exec credential plugin).
    Connect,
    /// A `pods/log` request or its stream.
    Log,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Discovery => "discovery",
            Op::List => "list",
            Op::Watch => "watch",
            Op::Get => "get",
            Op::Connect => "connect",
            Op::Log => "pods/log",
        })
    }
}

/// A failed request to the Kubernetes API. Every variant but
/// [`Request`](ApiError::Request) can be retried (see
/// [`ApiError::is_retryable`]); *how* is the caller's decision (the watch
/// engine's `recovery`, the log follow's reconnect). No variant holds a
/// credential: kube's auth errors are described by [`super::credentials`].
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The client could not be built from the context's configuration (a
    /// bad CA or client certificate). Retried with backoff: the file may be
    /// fixed or rotated.
    #[error("cannot build a Kubernetes client for this context: {reason}")]
    Client { reason: String },
    /// The context's credentials failed: an exec plugin (SSO expired, STS
    /// down), a token file. Retried with backoff: it is transient (SPEC §6).
    #[error("{op}: the credentials failed: {reason}")]
    Credentials { op: Op, reason: String },
    /// A request could not be formed (a bug, not a server answer); not retryable.
    #[error("{op}: cannot build the request")]
    Request {
        op: Op,
        #[source]
        source: kube::core::request::Error,
    },
    /// Connecting or reading failed (refused, reset, TLS, DNS); retryable.
    #[error("{op}: cannot reach the API server")]
    Unreachable {
        op: Op,
        #[source]
        source: kube::Error,
    },
    /// No answer, or no bytes, within the deadline; retryable.
    #[error("{op}: no answer within {after:?}")]
    Timeout { op: Op, after: Duration },
    /// An HTTP error status, or an ERROR event's Status, other than 410;
    /// retryable (401/403 too: RBAC may be fixed while we wait).
    #[error("{op}: HTTP {code} {reason}: {message}")]
    Status {
        op: Op,
        code: u16,
        reason: String,
        message: String,
        /// `Retry-After` of a 429 (or 503).
        retry_after: Option<Duration>,
    },
    /// `410 Gone`: the resourceVersion (or continue token) is older than the
    /// server's history; retryable with a fresh LIST.
    #[error("{op}: resourceVersion too old (410 Expired): {message}")]
    Expired { op: Op, message: String },
    /// Discovery does not list the kind (e.g. its CRD is not installed);
    /// retried slowly, it may be installed later.
    #[error("{api_version} {kind} is not served by this cluster")]
    NotServed { api_version: String, kind: String },
    /// The kind is cluster-scoped; kubeherald watches namespaced kinds only
    /// (SPEC §3). Retried slowly, like a kind not served.
    #[error("{api_version} {kind} is cluster-scoped; only namespaced kinds are watched")]
    ClusterScoped { api_version: String, kind: String },
    /// An answer that is not what the API promises (bad JSON, an object
    /// without uid); retryable with a fresh LIST, since an event may be lost.
    #[error("{op}: undecodable answer")]
    Undecodable {
        op: Op,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ApiError {
    /// Whether trying again can help.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, ApiError::Request { .. })
    }

    /// From a kube error of a request: a credential failure is described
    /// without its secrets, anything else kept as the cause.
    pub(crate) fn unreachable(op: Op, source: kube::Error) -> Self {
        match source {
            kube::Error::Auth(auth) => ApiError::Credentials {
                op,
                reason: super::credentials::describe(&auth),
            },
            source => ApiError::Unreachable { op, source },
        }
    }

    /// `Retry-After` of the answer (429, 503), if it said one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status of an error answer.
    pub fn code(&self) -> Option<u16> {
        match self {
            ApiError::Status { code, .. } => Some(*code),
            ApiError::Expired { .. } => Some(410),
            _ => None,
        }
    }

    /// The `reason` label of `watch_errors`: a fixed word per condition.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ApiError::Client { .. } => "client",
            ApiError::Credentials { .. } => "credentials",
            ApiError::Request { .. } => "request",
            ApiError::Unreachable { .. } => "unreachable",
            ApiError::Timeout { .. } => "timeout",
            ApiError::Status { code, .. } => match code {
                401 => "unauthorized",
                403 => "forbidden",
                404 => "not-found",
                429 => "throttled",
                500..=599 => "http-5xx",
                _ => "http-4xx",
            },
            ApiError::Expired { .. } => "expired",
            ApiError::NotServed { .. } => "not-served",
            ApiError::ClusterScoped { .. } => "cluster-scoped",
            ApiError::Undecodable { .. } => "undecodable",
        }
    }

    pub(crate) fn undecodable(
        op: Op,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        ApiError::Undecodable {
            op,
            source: Box::new(source),
        }
    }

    /// From a Status (an error answer's body or an ERROR event's object).
    pub(crate) fn from_status(
        op: Op,
        status: &kube::core::Status,
        retry_after: Option<Duration>,
    ) -> Self {
        if status.code == 410 {
            return ApiError::Expired {
                op,
                message: status.message.clone(),
            };
        }
        ApiError::Status {
            op,
            code: status.code,
            reason: status.reason.clone(),
            message: status.message.clone(),
            retry_after,
        }
    }
}

/// The error and its causes on one line, for a log field. kube's and
/// redb's messages name hosts and files, never credentials.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> kube::core::Status {
        kube::core::Status {
            code,
            message: "m".into(),
            reason: "R".into(),
            ..Default::default()
        }
    }

    #[test]
    fn status_410_is_expired_and_others_keep_their_code() {
        assert!(matches!(
            ApiError::from_status(Op::Watch, &status(410), None),
            ApiError::Expired { op: Op::Watch, .. }
        ));
        let err = ApiError::from_status(Op::List, &status(403), None);
        assert_eq!(err.metric_label(), "forbidden");
        assert_eq!(err.to_string(), "list: HTTP 403 R: m");
        assert_eq!(
            ApiError::from_status(Op::List, &status(503), None).metric_label(),
            "http-5xx"
        );
        assert_eq!(
            ApiError::from_status(Op::List, &status(429), None).metric_label(),
            "throttled"
        );
    }

    #[test]
    fn only_local_failures_are_final() {
        let timeout = ApiError::Timeout {
            op: Op::List,
            after: Duration::from_secs(1),
        };
        assert!(timeout.is_retryable());
        let throttled =
            ApiError::from_status(Op::Watch, &status(429), Some(Duration::from_secs(3)));
        assert_eq!(throttled.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(throttled.code(), Some(429));
        assert_eq!(
            ApiError::from_status(Op::Watch, &status(410), None).code(),
            Some(410)
        );
    }
}

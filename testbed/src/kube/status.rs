//! `metav1.Status` error bodies, exactly as the apiserver writes them.
//!
//! Every failure the API answers carries
//! `{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":…,"reason":…,"code":…}`
//! (apimachinery `pkg/api/errors`), with `details` where the real constructor
//! sets them (`NewNotFound`, `NewForbidden`, `NewTooManyRequests`).

use serde_json::{Value, json};

/// An API error: the HTTP code, the `reason` and the `message` of the Status.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status code, repeated as `code` in the body.
    pub code: u16,
    /// `metav1.StatusReason`, e.g. `NotFound`, `Expired`.
    pub reason: &'static str,
    /// Human-readable message, worded like the real apiserver's.
    pub message: String,
    /// `details` of the Status, when the real error carries them.
    pub details: Option<Value>,
    /// Seconds for a `Retry-After` header (429 answers).
    pub retry_after: Option<u32>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    /// 400 `BadRequest` (`errors.NewBadRequest`).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 401 as the authentication filter writes it: message and reason `Unauthorized`.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 403 `Forbidden` with the authorizer's message (see [`crate::kube::auth`]).
    pub fn forbidden(message: String, details: Value) -> Self {
        ApiError {
            details: Some(details),
            ..Self::new(403, "Forbidden", message)
        }
    }

    /// 404 `NotFound` for a named object: `pods "p" not found`, with details.
    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        let qualified = if group.is_empty() {
            resource.to_string()
        } else {
            format!("{resource}.{group}")
        };
        let mut details = json!({"name": name, "kind": resource});
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        ApiError {
            details: Some(details),
            ..Self::new(404, "NotFound", format!("{qualified} \"{name}\" not found"))
        }
    }

    /// 404 for a path nothing serves (an unknown or unserved resource): the
    /// real apiserver answers this Status with empty details.
    pub fn no_route() -> Self {
        ApiError {
            details: Some(json!({})),
            ..Self::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
        }
    }

    /// 405 for verbs this test server does not serve over HTTP.
    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    /// 410 `Expired` (`errors.NewResourceExpired`).
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 410 for a watch or exact list from a compacted resourceVersion. The
    /// watch cache words it `too old resource version: %d (%d)`, the second
    /// number being the oldest version it can still serve from, minus one.
    pub fn too_old(requested: u64, compacted: u64) -> Self {
        Self::expired(format!(
            "too old resource version: {requested} ({compacted})"
        ))
    }

    /// 500 `InternalError` (`errors.NewInternalError`).
    pub fn internal(message: &str) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
        )
    }

    /// 429 `TooManyRequests` with `Retry-After`, as API priority and fairness answers.
    pub fn too_many_requests(retry_after: u32) -> Self {
        ApiError {
            details: Some(json!({"retryAfterSeconds": retry_after})),
            retry_after: Some(retry_after),
            ..Self::new(
                429,
                "TooManyRequests",
                "Too many requests, please try again later.",
            )
        }
    }

    /// An error of any code with a reason that fits it, for injected faults.
    pub fn with_code(code: u16) -> Self {
        match code {
            429 => Self::too_many_requests(1),
            500 => Self::internal("injected fault"),
            503 => Self::new(
                503,
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            ),
            504 => Self::new(
                504,
                "Timeout",
                "the server was unable to return a response in the time allotted",
            ),
            400 => Self::bad_request("injected fault"),
            401 => Self::unauthorized(),
            404 => Self::no_route(),
            410 => Self::expired("injected fault"),
            _ => Self::new(
                code,
                "InternalError",
                format!("injected fault with code {code}"),
            ),
        }
    }

    /// The `metav1.Status` body.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

impl ApiError {
    /// 422 `Invalid` (`errors.NewInvalid`): `<Kind> "<name>" is invalid: <field errors>`.
    pub fn invalid(kind: &str, name: &str, causes: &str) -> Self {
        Self::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {causes}"),
        )
    }
}

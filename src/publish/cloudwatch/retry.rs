//! What the log sink does with a failed CloudWatch Logs request: the one
//! place that decides (like [`crate::publish::sns::retry`] for SNS), on top
//! of the shared reading of AWS errors in [`crate::publish::aws::error`].
//! May import `publish::aws` and the CloudWatch Logs SDK's error types.
//!
//! - Throttling (`ThrottlingException`, HTTP 429), 5xx
//!   (`ServiceUnavailableException`), timeouts and connection errors heal by
//!   themselves: retried with backoff, forever, while the spool holds the
//!   backlog (SPEC §4, §7).
//! - Faults of one log group that retrying will not heal
//!   (`AccessDeniedException`, a KMS key disabled or gone,
//!   `LimitExceededException` — too many groups —, a name CloudWatch refuses
//!   on a create): the group is *parked* (SPEC §4, "One bad log group or
//!   stream never stops the others"): its lines wait in the spool and it is
//!   tried again after a long pause, while other groups flow.
//! - Other faults about the account (`UnrecognizedClientException`,
//!   `OperationAbortedException`, …): retried with backoff; they concern
//!   every group alike, so parking one would isolate nothing.
//! - `ResourceNotFoundException`: the group or stream was deleted behind
//!   kubeherald's back: recreated, then the put is retried.
//! - `ResourceAlreadyExistsException` on a create: success.
//!   `DataAlreadyAcceptedException` on a put (sequence-token era, no longer
//!   sent): the events are in CloudWatch, success.
//! - `InvalidParameterException` and other invalid-request codes: sending
//!   the same request again cannot succeed. The request builder makes them
//!   impossible, so one is a bug: the lines are counted, logged and
//!   acknowledged (never retried forever), and the error says to report it.

use aws_sdk_cloudwatchlogs::config::http::HttpResponse;
use aws_sdk_cloudwatchlogs::error::{ProvideErrorMetadata, SdkError};

use crate::publish::aws::error::{self, AwsFailure, ServiceCodes};

/// Codes that mean "this request is invalid": no retry can succeed.
const INVALID_REQUEST_CODES: &[&str] = &[
    "InvalidParameterException",
    "ValidationException",
    "SerializationException",
    "MalformedQueryException",
    // Legacy: PutLogEvents no longer checks sequence tokens, but an old
    // endpoint answering this would answer it forever.
    "InvalidSequenceTokenException",
];

/// CloudWatch Logs' codes beyond the common ones of
/// [`aws::error`](crate::publish::aws::error).
const LOGS_CODES: ServiceCodes = ServiceCodes {
    throttling: &[],
    server: &["ServiceUnavailableException"],
};

/// A CloudWatch Logs operation kubeherald sends.
pub type Operation = &'static str;

/// Why a CloudWatch Logs request failed. Each variant names the operation;
/// [`LogsError::action`] says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    /// Throttled. Retried.
    #[error("{op} throttled ({code})")]
    Throttled { op: Operation, code: String },
    /// 5xx. Retried.
    #[error("{op} failed on the server side (HTTP {status}, {code})")]
    Server {
        op: Operation,
        status: u16,
        code: String,
    },
    /// No usable answer: connect error, timeout, reset, unreadable answer.
    /// Retried.
    #[error("{op} got no usable answer")]
    Network {
        op: Operation,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The group or stream does not exist. Recreated, then retried.
    #[error("{op}: {message}")]
    NotFound { op: Operation, message: String },
    /// A create found the resource already there (success), or a put was
    /// already accepted.
    #[error("{op}: already done ({code})")]
    AlreadyDone { op: Operation, code: String },
    /// Refused for a reason about the account (credentials, a conflicting
    /// operation). Retried: an operator has to act.
    #[error("{op} refused: {code}: {message}")]
    Refused {
        op: Operation,
        code: String,
        message: String,
    },
    /// Refused for a reason about this log group that retrying will not
    /// heal (permissions, KMS, the group quota, a name refused). The group
    /// is parked.
    #[error("{op} refused for this log group: {code}: {message}")]
    GroupRefused {
        op: Operation,
        code: String,
        message: String,
    },
    /// The request is invalid: never retried. kubeherald builds requests
    /// within CloudWatch's limits, so this is a bug.
    #[error(
        "{op} refused an invalid request (a kubeherald bug, please report it): {code}: {message}"
    )]
    Invalid {
        op: Operation,
        code: String,
        message: String,
    },
}

/// What to do after a failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send it again after a backoff.
    Retry,
    /// Create the group/stream again, then send it again.
    Recreate,
    /// Treat as success.
    Done,
    /// Give up: count, log, acknowledge.
    GiveUp,
    /// Park the log group: its lines wait in the spool; try again later.
    Park,
}

impl LogsError {
    pub fn action(&self) -> Action {
        match self {
            LogsError::Throttled { .. }
            | LogsError::Server { .. }
            | LogsError::Network { .. }
            | LogsError::Refused { .. } => Action::Retry,
            LogsError::NotFound { .. } => Action::Recreate,
            LogsError::AlreadyDone { .. } => Action::Done,
            LogsError::Invalid { .. } => Action::GiveUp,
            LogsError::GroupRefused { .. } => Action::Park,
        }
    }

    /// The `reason` label of `log_put_errors`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            LogsError::Throttled { .. } => "throttled",
            LogsError::Server { .. } => "server",
            LogsError::Network { .. } => "network",
            LogsError::NotFound { .. } => "not-found",
            LogsError::AlreadyDone { .. } => "already-done",
            LogsError::Refused { .. } => "refused",
            LogsError::GroupRefused { .. } => "group-refused",
            LogsError::Invalid { .. } => "invalid",
        }
    }
}

/// Turns the SDK's error of any CloudWatch Logs call into a [`LogsError`].
pub fn classify<E>(op: Operation, error: SdkError<E, HttpResponse>) -> LogsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    from_failure(op, error::classify(error, &LOGS_CODES))
}

/// The classification of an error answer by HTTP status and wire code.
pub fn classify_answer(
    op: Operation,
    status: Option<u16>,
    code: String,
    message: String,
) -> LogsError {
    from_failure(
        op,
        error::classify_answer(status, code, message, &LOGS_CODES),
    )
}

/// Whether a refusal concerns one log group and will not heal by retrying:
/// permissions (which IAM grants per group ARN), its KMS key
/// (`KMSInvalidStateException`, or an access or parameter error naming
/// KMS), the account's quota of groups (`LimitExceededException`), or a
/// group or stream name a create refuses.
fn refused_for_the_group(op: Operation, code: &str, message: &str) -> bool {
    // The route's role: every group of that route is refused alike.
    if code.starts_with(error::ROLE_REFUSAL_PREFIX) {
        return true;
    }
    let kms = code.contains("KMS") || message.contains("KMS") || message.contains("kms");
    match code {
        "AccessDeniedException" | "LimitExceededException" => true,
        "InvalidParameterException" => kms || op == "CreateLogGroup" || op == "CreateLogStream",
        _ => kms,
    }
}

/// What an AWS failure means for a CloudWatch Logs request.
fn from_failure(op: Operation, failure: AwsFailure) -> LogsError {
    match failure {
        AwsFailure::Throttled { code } => LogsError::Throttled { op, code },
        AwsFailure::Server { status, code } => LogsError::Server { op, status, code },
        AwsFailure::Network(source) => LogsError::Network { op, source },
        AwsFailure::Construction(source) => LogsError::Invalid {
            op,
            code: "ConstructionFailure".into(),
            message: format!("{:?}", source.source()),
        },
        AwsFailure::Refused { code, message, .. } => match code.as_str() {
            "ResourceNotFoundException" => LogsError::NotFound { op, message },
            "ResourceAlreadyExistsException" | "DataAlreadyAcceptedException" => {
                LogsError::AlreadyDone { op, code }
            }
            _ if refused_for_the_group(op, &code, &message) => {
                LogsError::GroupRefused { op, code, message }
            }
            _ if INVALID_REQUEST_CODES.contains(&code.as_str()) => {
                LogsError::Invalid { op, code, message }
            }
            _ => LogsError::Refused { op, code, message },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, code: &str) -> LogsError {
        classify_answer("PutLogEvents", Some(status), code.into(), "m".into())
    }

    #[test]
    fn transient_and_account_faults_are_retried() {
        for (status, code, label) in [
            (400, "ThrottlingException", "throttled"),
            (429, "Whatever", "throttled"),
            (500, "InternalFailure", "server"),
            (503, "ServiceUnavailableException", "server"),
            (400, "UnrecognizedClientException", "refused"),
            (400, "OperationAbortedException", "refused"),
        ] {
            let error = answer(status, code);
            assert_eq!(error.action(), Action::Retry, "{status} {code}");
            assert_eq!(error.metric_label(), label, "{status} {code}");
        }
    }

    #[test]
    fn faults_of_one_group_park_it() {
        for (op, code, message) in [
            ("PutLogEvents", "AccessDeniedException", "not authorized"),
            (
                "CreateLogGroup",
                "LimitExceededException",
                "too many groups",
            ),
            ("PutLogEvents", "KMSInvalidStateException", "disabled"),
            (
                "PutLogEvents",
                "InvalidParameterException",
                "the KMS key is disabled",
            ),
            ("CreateLogGroup", "InvalidParameterException", "bad name"),
            ("CreateLogStream", "InvalidParameterException", "bad name"),
        ] {
            let error = classify_answer(op, Some(400), code.into(), message.into());
            assert_eq!(error.action(), Action::Park, "{op} {code} {message}");
            assert_eq!(error.metric_label(), "group-refused");
        }
        let put = classify_answer(
            "PutLogEvents",
            Some(400),
            "InvalidParameterException".into(),
            "bad batch".into(),
        );
        assert_eq!(
            put.action(),
            Action::GiveUp,
            "an invalid put is a bug, not the group's fault"
        );
    }

    #[test]
    fn missing_resources_are_recreated_existing_ones_are_fine() {
        assert_eq!(
            answer(400, "ResourceNotFoundException").action(),
            Action::Recreate
        );
        assert_eq!(
            answer(400, "ResourceAlreadyExistsException").action(),
            Action::Done
        );
        assert_eq!(
            answer(400, "DataAlreadyAcceptedException").action(),
            Action::Done
        );
    }

    #[test]
    fn invalid_requests_are_given_up_and_called_a_bug() {
        for code in [
            "InvalidParameterException",
            "ValidationException",
            "SerializationException",
        ] {
            let error = answer(400, code);
            assert_eq!(error.action(), Action::GiveUp, "{code}");
            assert!(error.to_string().contains("bug"), "{error}");
        }
    }
}

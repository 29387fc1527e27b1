//! What the SNS publisher retries: the one place that decides, on top of
//! the shared reading of AWS errors in [`crate::publish::aws::error`]
//! (STYLE, Vector's `retry` module). May import `publish::aws` and the SNS
//! SDK's error types.
//!
//! Two questions, two functions:
//!
//! - a whole `PublishBatch` request failed → [`classify`] turns the SDK error
//!   into a [`PublishError`], whose [`PublishError::action`] says retry the
//!   batch later, or split it because one of its messages is invalid;
//! - the request succeeded (HTTP 200) but an entry is in `Failed` →
//!   [`entry_action`] says retry that entry or reject it for good.
//!
//! Everything that may heal by itself is retried forever, with backoff,
//! while the spool holds the backlog (SPEC §2, §7): throttling, 5xx,
//! timeouts, connection errors, and also the sender faults that are about
//! the account rather than the message (missing permission, unknown topic,
//! KMS key disabled): an operator fixes those, and dropping every event
//! meanwhile would lose them all. Only a message SNS will never accept
//! (`InvalidParameter` and friends) is given up, counted and logged.

use aws_sdk_sns::config::http::HttpResponse;
use aws_sdk_sns::error::SdkError;
use aws_sdk_sns::operation::publish_batch::PublishBatchError;

use crate::publish::aws::error::{self, AwsFailure, ServiceCodes};

/// Wire error codes (awsQuery `<Code>`, or an entry's `Code`) that mean "this
/// message is invalid": sending it again cannot succeed. From `aws-sdk-sns`
/// `protocol_serde/shape_publish_batch.rs` and the PublishBatch reference.
const INVALID_MESSAGE_CODES: &[&str] = &[
    "InvalidParameter",
    // InvalidParameterValueException on the wire.
    "ParameterValueInvalid",
    "InvalidParameterValue",
    "ValidationException",
    // Batch shape errors: the request builder prevents them; if one still
    // happens, splitting the batch isolates the cause.
    "BatchRequestTooLong",
    "BatchEntryIdsNotDistinct",
    "InvalidBatchEntryId",
    "TooManyEntriesInBatchRequest",
    "EmptyBatchRequest",
];

/// SNS's codes beyond the common ones of [`aws::error`](crate::publish::aws::error).
const SNS_CODES: ServiceCodes = ServiceCodes {
    // SNS's answer when the topic's KMS key is throttled.
    throttling: &["KMSThrottling"],
    server: &["InternalError"],
};

/// Why a publish attempt failed. Each variant names the operation and says
/// whether it is retried ([`PublishError::action`]).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// PublishBatch was throttled (HTTP 400 `Throttling`, 429, KMS
    /// throttling). Retried.
    #[error("PublishBatch throttled ({code})")]
    Throttled { code: String },
    /// SNS answered 5xx. Retried.
    #[error("PublishBatch failed on the server side (HTTP {status}, {code})")]
    Server { status: u16, code: String },
    /// No usable answer: connect error, timeout, reset, unreadable answer.
    /// Retried.
    #[error("PublishBatch got no usable answer")]
    Network {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// SNS refused the request for a reason about the account or topic
    /// (authorization, unknown topic, KMS): retried, an operator has to act.
    #[error("PublishBatch refused: {code}: {message}")]
    Refused { code: String, message: String },
    /// SNS refused the request because a message in it is invalid: the batch
    /// is split until the message is alone, then that message is rejected.
    #[error("PublishBatch refused an invalid message: {code}: {message}")]
    InvalidMessage { code: String, message: String },
    /// The request could not be built (a bug): handled as an invalid message.
    #[error("PublishBatch request could not be built")]
    Construction {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Writing a line to stdout failed. Retried.
    #[error("writing events to stdout failed")]
    Write {
        #[source]
        source: std::io::Error,
    },
}

/// What to do with a batch whose request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the same batch again after a backoff.
    Retry,
    /// A message in the batch is invalid: split the batch, and reject a
    /// message that fails alone.
    Isolate,
}

impl PublishError {
    /// Whether the batch is retried or split.
    pub fn action(&self) -> Action {
        match self {
            PublishError::InvalidMessage { .. } | PublishError::Construction { .. } => {
                Action::Isolate
            }
            PublishError::Throttled { .. }
            | PublishError::Server { .. }
            | PublishError::Network { .. }
            | PublishError::Refused { .. }
            | PublishError::Write { .. } => Action::Retry,
        }
    }

    /// The `reason` label of `publish_errors`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            PublishError::Throttled { .. } => "throttled",
            PublishError::Server { .. } => "server",
            PublishError::Network { .. } => "network",
            PublishError::Refused { .. } => "refused",
            PublishError::InvalidMessage { .. } | PublishError::Construction { .. } => "invalid",
            PublishError::Write { .. } => "write",
        }
    }
}

/// Turns the SDK's error of a `PublishBatch` call into a [`PublishError`].
pub fn classify(error: SdkError<PublishBatchError, HttpResponse>) -> PublishError {
    from_failure(error::classify(error, &SNS_CODES))
}

/// The classification of an error answer by HTTP status and wire code.
#[cfg(test)]
fn classify_answer(status: Option<u16>, code: String, message: String) -> PublishError {
    from_failure(error::classify_answer(status, code, message, &SNS_CODES))
}

/// What an AWS failure means for a `PublishBatch` request: a refusal is an
/// invalid message (split, then rejected) or about the account (retried).
fn from_failure(failure: AwsFailure) -> PublishError {
    match failure {
        AwsFailure::Throttled { code } => PublishError::Throttled { code },
        AwsFailure::Server { status, code } => PublishError::Server { status, code },
        AwsFailure::Network(source) => PublishError::Network { source },
        AwsFailure::Construction(source) => PublishError::Construction { source },
        AwsFailure::Refused { code, message, .. } => {
            if INVALID_MESSAGE_CODES.contains(&code.as_str()) {
                PublishError::InvalidMessage { code, message }
            } else {
                PublishError::Refused { code, message }
            }
        }
    }
}

/// What to do with one entry SNS listed in `Failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryAction {
    /// Publish the entry again after a backoff.
    Retry,
    /// SNS will never accept it: count, log, acknowledge.
    Reject,
}

/// Decides for a `Failed` entry of a `PublishBatch` answer. `SenderFault`
/// false is SNS's own trouble: retried. A sender fault is given up only when
/// its code says the message itself is invalid; other sender faults
/// (authorization, KMS) are retried like the same error on a whole request.
pub fn entry_action(code: &str, sender_fault: bool) -> EntryAction {
    if sender_fault && INVALID_MESSAGE_CODES.contains(&code) {
        EntryAction::Reject
    } else {
        EntryAction::Retry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, code: &str) -> PublishError {
        classify_answer(Some(status), code.into(), "m".into())
    }

    #[test]
    fn transient_answers_are_retried() {
        for (status, code, label) in [
            (400, "Throttling", "throttled"),
            (429, "Throttling", "throttled"),
            (400, "KMSThrottling", "throttled"),
            (500, "InternalError", "server"),
            (503, "ServiceUnavailable", "server"),
            (403, "AuthorizationError", "refused"),
            (404, "NotFound", "refused"),
            (400, "KMSDisabled", "refused"),
        ] {
            let error = answer(status, code);
            assert_eq!(error.action(), Action::Retry, "{status} {code}");
            assert_eq!(error.metric_label(), label, "{status} {code}");
        }
    }

    #[test]
    fn invalid_messages_are_isolated() {
        for code in [
            "InvalidParameter",
            "ParameterValueInvalid",
            "BatchRequestTooLong",
        ] {
            assert_eq!(answer(400, code).action(), Action::Isolate, "{code}");
        }
    }

    #[test]
    fn failed_entries() {
        assert_eq!(entry_action("InternalError", false), EntryAction::Retry);
        assert_eq!(entry_action("InvalidParameter", false), EntryAction::Retry);
        assert_eq!(entry_action("InvalidParameter", true), EntryAction::Reject);
        assert_eq!(
            entry_action("ParameterValueInvalid", true),
            EntryAction::Reject
        );
        assert_eq!(entry_action("AuthorizationError", true), EntryAction::Retry);
        assert_eq!(entry_action("KMSThrottling", true), EntryAction::Retry);
    }
}

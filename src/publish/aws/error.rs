//! The one reading of an AWS SDK error, shared by every sink's `retry`
//! module: was it throttling, the service's own trouble (5xx), no usable
//! answer at all, a request that could not be built, or a refusal with a
//! wire code? What each sink then *does* (retry, split, recreate, give up)
//! stays in its own `retry` module, which knows its operations' codes.
//!
//! May import the AWS SDK's error types only (STS's among them: a route's
//! role is assumed with it); nothing of kubeherald.
//!
//! The SDK crates share their error types (`aws-smithy-runtime-api`'s
//! `SdkError`, `aws-smithy-types`' `ProvideErrorMetadata`); they are named
//! here through `aws-sdk-sns`, which re-exports them, so that both
//! `aws-sdk-sns` and `aws-sdk-cloudwatchlogs` errors are read by one function.

use aws_sdk_sns::config::http::HttpResponse;
use aws_sdk_sns::error::{ProvideErrorMetadata, SdkError};

/// Throttling codes of the SDK's standard retry classifier that SNS and
/// CloudWatch Logs answer (awsQuery `<Code>` or awsJson `__type`). A sink
/// adds its own in [`ServiceCodes::throttling`].
pub const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
];

/// A service's codes beyond the common ones.
#[derive(Debug, Clone, Copy)]
pub struct ServiceCodes {
    /// Codes that mean throttling, besides [`THROTTLING_CODES`] and HTTP 429.
    pub throttling: &'static [&'static str],
    /// Codes that mean the service's own failure even without a 5xx status.
    pub server: &'static [&'static str],
}

/// An AWS SDK error, read.
#[derive(Debug)]
pub enum AwsFailure {
    /// Throttled: a throttling code, or HTTP 429.
    Throttled { code: String },
    /// The service failed: HTTP 5xx, or one of the service's server codes
    /// (`status` is 500 when the answer had none).
    Server { status: u16, code: String },
    /// Any other error answer: the wire code decides (`Unknown` when the
    /// answer carried none).
    Refused {
        status: Option<u16>,
        code: String,
        message: String,
    },
    /// No usable answer: timeout, dispatch failure (connect refused, reset,
    /// TLS), an answer the SDK could not read.
    Network(Box<dyn std::error::Error + Send + Sync>),
    /// The request could not be built: a bug, never healed by a retry.
    Construction(Box<dyn std::error::Error + Send + Sync>),
}

impl std::fmt::Display for AwsFailure {
    /// The wire code and message, or what kept an answer from coming: no
    /// request data, no credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AwsFailure::Throttled { code } => write!(f, "throttled ({code})"),
            AwsFailure::Server { status, code } => {
                write!(f, "server error (HTTP {status}, {code})")
            }
            AwsFailure::Refused { code, message, .. } => write!(f, "{code}: {message}"),
            AwsFailure::Network(source) => {
                write!(
                    f,
                    "no usable answer: {}",
                    crate::kube_api::error_chain(source.as_ref())
                )
            }
            AwsFailure::Construction(source) => write!(
                f,
                "the request could not be built: {}",
                crate::kube_api::error_chain(source.as_ref())
            ),
        }
    }
}

impl ServiceCodes {
    /// No codes beyond the common ones.
    pub const NONE: ServiceCodes = ServiceCodes {
        throttling: &[],
        server: &[],
    };
}

/// Reads `error` of any operation of `aws-sdk-sns` or
/// `aws-sdk-cloudwatchlogs`.
pub fn classify<E>(error: SdkError<E, HttpResponse>, codes: &ServiceCodes) -> AwsFailure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &error {
        SdkError::ServiceError(service) => {
            let err = service.err();
            classify_answer(
                Some(service.raw().status().as_u16()),
                err.code().unwrap_or("Unknown").to_owned(),
                err.message().unwrap_or("").to_owned(),
                codes,
            )
        }
        SdkError::ConstructionFailure(_) => AwsFailure::Construction(Box::new(error)),
        // Credentials are resolved before the request is sent: a refused
        // AssumeRole arrives as a dispatch failure carrying STS's answer.
        _ => match role_refusal(&error, codes) {
            Some(failure) => failure,
            // Timeouts, dispatch failures and answers the SDK could not read.
            None => AwsFailure::Network(Box::new(error)),
        },
    }
}

/// STS's answer to the AssumeRole of a route's credentials, if that is what
/// `error` carries (`aws-config`'s `AssumeRoleProvider` keeps it as the
/// source of its `CredentialsError`): a refusal gets the code
/// `AssumeRole:{code}`, so that the sinks tell it from the service's own.
fn role_refusal(
    error: &(dyn std::error::Error + 'static),
    codes: &ServiceCodes,
) -> Option<AwsFailure> {
    use aws_sdk_sts::operation::assume_role::AssumeRoleError;
    let mut cause = error.source();
    while let Some(err) = cause {
        if let Some(refusal) = err.downcast_ref::<AssumeRoleError>() {
            let code = refusal.code().unwrap_or("Unknown").to_owned();
            let message = refusal.message().unwrap_or("").to_owned();
            return Some(match classify_answer(None, code, message, codes) {
                AwsFailure::Refused {
                    status,
                    code,
                    message,
                } => AwsFailure::Refused {
                    status,
                    code: format!("{ROLE_REFUSAL_PREFIX}{code}"),
                    message,
                },
                other => other,
            });
        }
        cause = err.source();
    }
    None
}

/// The code prefix of a refused AssumeRole ([`classify`]).
pub const ROLE_REFUSAL_PREFIX: &str = "AssumeRole:";

/// Reads an error answer by its HTTP status and wire code. Throttling is
/// checked first: a 5xx throttling code is throttling.
pub fn classify_answer(
    status: Option<u16>,
    code: String,
    message: String,
    codes: &ServiceCodes,
) -> AwsFailure {
    let code_in = |list: &[&str]| list.contains(&code.as_str());
    if code_in(THROTTLING_CODES) || code_in(codes.throttling) || status == Some(429) {
        AwsFailure::Throttled { code }
    } else if status.is_some_and(|s| s >= 500) || code_in(codes.server) {
        AwsFailure::Server {
            status: status.unwrap_or(500),
            code,
        }
    } else {
        AwsFailure::Refused {
            status,
            code,
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODES: ServiceCodes = ServiceCodes {
        throttling: &["KMSThrottling"],
        server: &["InternalError"],
    };

    fn answer(status: Option<u16>, code: &str) -> AwsFailure {
        classify_answer(status, code.into(), "m".into(), &CODES)
    }

    #[test]
    fn throttling_by_common_code_service_code_or_429() {
        for (status, code) in [
            (Some(400), "Throttling"),
            (Some(400), "ThrottlingException"),
            (Some(400), "KMSThrottling"),
            (Some(429), "Whatever"),
            (Some(503), "Throttling"),
        ] {
            assert!(
                matches!(answer(status, code), AwsFailure::Throttled { .. }),
                "{status:?} {code}"
            );
        }
    }

    #[test]
    fn server_by_status_or_service_code() {
        assert!(matches!(
            answer(Some(503), "ServiceUnavailable"),
            AwsFailure::Server { status: 503, .. }
        ));
        assert!(matches!(
            answer(None, "InternalError"),
            AwsFailure::Server { status: 500, .. }
        ));
    }

    #[test]
    fn everything_else_is_refused_with_its_code() {
        match answer(Some(400), "InvalidParameter") {
            AwsFailure::Refused {
                status,
                code,
                message,
            } => {
                assert_eq!(status, Some(400));
                assert_eq!(code, "InvalidParameter");
                assert_eq!(message, "m");
            }
            other => panic!("{other:?}"),
        }
    }
}

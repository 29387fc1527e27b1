//! AWS SDK configuration for tests.
//!
//! SPEC §10: without explicit credentials the SDK's default chain falls
//! through to the instance metadata service, which fails here and can hang
//! elsewhere. [`TestSdk`] therefore sets everything explicitly (static dummy
//! credentials, region `us-east-1`, the endpoint URL, retries and timeouts) and
//! reads nothing from the environment or profile files.
//!
//! ```no_run
//! use kubeherald_testbed::aws::{Moto, StrictProxy, TestSdk};
//! let proxy = StrictProxy::start(Moto::shared().url());
//! let sdk = TestSdk::new(proxy.url()).max_attempts(1);
//! let sns = sdk.sns();
//! // For a child process (the kubeherald binary):
//! let env = sdk.env();
//! ```

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sns::config::{Credentials, SharedCredentialsProvider};

/// Region every test uses (moto keeps resources per region).
pub const TEST_REGION: &str = "us-east-1";
/// Dummy access key id (moto accepts anything; `testing` is moto's convention).
pub const TEST_ACCESS_KEY_ID: &str = "testing";
/// Dummy secret access key.
pub const TEST_SECRET_ACCESS_KEY: &str = "testing";

/// A test SDK configuration builder. Defaults: 3 attempts with a 10 ms initial
/// backoff (max 200 ms), connect timeout 2 s, attempt timeout 10 s, operation
/// timeout 30 s.
#[derive(Clone, Debug)]
pub struct TestSdk {
    endpoint_url: String,
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    connect_timeout: Duration,
    attempt_timeout: Duration,
    operation_timeout: Duration,
}

impl TestSdk {
    /// Configuration for an endpoint such as [`super::Moto::url`] or
    /// [`super::StrictProxy::url`].
    pub fn new(endpoint_url: impl Into<String>) -> TestSdk {
        TestSdk {
            endpoint_url: endpoint_url.into(),
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(30),
        }
    }

    /// Total attempts per operation (1 = no retry).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// First retry backoff; later ones grow exponentially up to `max`.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    /// TCP connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Timeout of one attempt.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Timeout of a whole operation, retries included.
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// The endpoint URL.
    pub fn endpoint_url(&self) -> &str {
        &self.endpoint_url
    }

    /// The shared SDK configuration.
    pub fn config(&self) -> SdkConfig {
        SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(TEST_REGION))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                TEST_ACCESS_KEY_ID,
                TEST_SECRET_ACCESS_KEY,
                None,
                None,
                "kubeherald-testbed",
            )))
            .endpoint_url(&self.endpoint_url)
            // What `aws_config::load_defaults` sets: STS AssumeRole (a
            // route's role) needs both.
            .time_source(aws_smithy_async::time::SystemTimeSource::new())
            .sleep_impl(aws_smithy_async::rt::sleep::TokioSleep::new())
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(self.max_attempts)
                    .with_initial_backoff(self.initial_backoff)
                    .with_max_backoff(self.max_backoff),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(self.connect_timeout)
                    .operation_attempt_timeout(self.attempt_timeout)
                    .operation_timeout(self.operation_timeout)
                    .build(),
            )
            .build()
    }

    /// The configuration of a client in another account: the credentials
    /// of `role_arn`, assumed through STS with `external_id` (moto answers
    /// requests signed with them as the role's account).
    pub async fn assumed(&self, role_arn: &str, external_id: Option<&str>) -> SdkConfig {
        let base = self.config();
        let mut role = aws_config::sts::AssumeRoleProvider::builder(role_arn)
            .session_name("kubeherald-testbed")
            .configure(&base);
        if let Some(id) = external_id {
            role = role.external_id(id);
        }
        base.to_builder()
            .credentials_provider(SharedCredentialsProvider::new(role.build().await))
            .build()
    }

    /// An SNS client.
    pub fn sns(&self) -> aws_sdk_sns::Client {
        aws_sdk_sns::Client::new(&self.config())
    }

    /// An SQS client.
    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.config())
    }

    /// A CloudWatch Logs client.
    pub fn logs(&self) -> aws_sdk_cloudwatchlogs::Client {
        aws_sdk_cloudwatchlogs::Client::new(&self.config())
    }

    /// Environment for a child process using the default AWS chain (the
    /// kubeherald binary): static credentials, region, `AWS_ENDPOINT_URL`
    /// (honoured by `aws-config`, SPEC §10), IMDS disabled, and the retry
    /// attempts. Timeouts have no standard variable; the binary sets its own.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY", TEST_SECRET_ACCESS_KEY.into()),
            ("AWS_REGION", TEST_REGION.into()),
            ("AWS_DEFAULT_REGION", TEST_REGION.into()),
            ("AWS_ENDPOINT_URL", self.endpoint_url.clone()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("AWS_MAX_ATTEMPTS", self.max_attempts.to_string()),
        ]
    }
}

/// Shorthand for `TestSdk::new(endpoint_url).config()`.
pub fn sdk_config(endpoint_url: &str) -> SdkConfig {
    TestSdk::new(endpoint_url).config()
}

//! What every AWS client shares: the SDK configuration (here) and the one
//! reading of SDK errors ([`error`]) that each sink's `retry` module builds
//! on. Used by the SNS publisher, the CloudWatch Logs sink and the followers'
//! CloudWatch lookup. May import `aws-config` and the SDK crates only.
//!
//! What comes from where:
//!
//! - **Region**: `AWS_REGION`, then `AWS_DEFAULT_REGION`, then the default
//!   the caller passes (the SNS topic ARN's region). Profile files and IMDS
//!   are not asked: the topic's region is a better answer than either.
//! - **Endpoint**: `AWS_ENDPOINT_URL`, and the per-service variants
//!   `AWS_ENDPOINT_URL_SNS` / `AWS_ENDPOINT_URL_CLOUDWATCH_LOGS`, which win
//!   over it. `aws-config` reads them into the `SdkConfig`'s service config
//!   and each service client picks its own (checked in `aws-sdk-sns`
//!   `config.rs`, `From<&SdkConfig>`); the test below runs a child process
//!   with them set.
//! - **Credentials**: the default chain: `AWS_ACCESS_KEY_ID` /
//!   `AWS_SECRET_ACCESS_KEY` (the seed tools' variables), profile, web
//!   identity (IRSA), ECS, then the instance metadata service.
//!
//! SPEC §10: without credentials the chain falls through to IMDS, which can
//! hang where no metadata service answers (a laptop, a cluster without
//! it). Its client here makes one attempt with 1 s connect/read timeouts and
//! a 2 s operation timeout, so a missing credential shows up as a failed
//! request within seconds instead of a stall; `AWS_EC2_METADATA_DISABLED=true`
//! skips IMDS altogether. A request without credentials fails, is retried
//! by the publisher with backoff, and records wait in the spool.
//!
//! **Routes into other accounts** (`sns.routes`, `logs.routes` with
//! `role_arn`): [`sdk_config_for`] derives the route's configuration from
//! the process's: the role is assumed with STS `AssumeRole` (session name
//! `kubeherald`, the route's ExternalId) using the process's credentials,
//! and each client's identity cache keeps the role's credentials and
//! fetches new ones before they expire (the SDK's lazy cache). A refused
//! AssumeRole reaches the sinks as a refusal with code `AssumeRole:{code}`
//! ([`error::classify`]), so it parks that route alone.
//!
//! Timeouts and retries are explicit rather than the SDK's defaults (which
//! set only a connect timeout): a request that never answers must not hold a
//! batch forever. The SDK retries a few times with its own short backoff;
//! beyond that the publisher's loop retries forever with [`crate::backoff`].

use std::time::Duration;

use aws_config::environment::EnvironmentVariableRegionProvider;
use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

pub mod error;

use crate::config::AwsAccess;

/// The STS session name of every role kubeherald assumes: what the tenant's
/// CloudTrail shows.
pub const ROLE_SESSION_NAME: &str = "kubeherald";

/// Timeouts and SDK retries of the AWS clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsOptions {
    /// TCP (and TLS) connect timeout.
    pub connect_timeout: Duration,
    /// One attempt of one request, connect to last byte.
    pub attempt_timeout: Duration,
    /// One operation, the SDK's retries included.
    pub operation_timeout: Duration,
    /// Attempts per operation inside the SDK (1 = no SDK retry).
    pub max_attempts: u32,
    /// First delay of the SDK's own retries (exponential with jitter).
    pub initial_backoff: Duration,
    /// Largest delay of the SDK's own retries.
    pub max_backoff: Duration,
}

impl Default for AwsOptions {
    fn default() -> Self {
        AwsOptions {
            connect_timeout: Duration::from_secs(3),
            // PublishBatch and PutLogEvents answer in tens of milliseconds;
            // 10 s is far beyond a healthy answer and short enough that a
            // silently dropped connection is retried soon.
            attempt_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(30),
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl AwsOptions {
    pub fn retry_config(&self) -> RetryConfig {
        RetryConfig::standard()
            .with_max_attempts(self.max_attempts)
            .with_initial_backoff(self.initial_backoff)
            .with_max_backoff(self.max_backoff)
    }

    pub fn timeout_config(&self) -> TimeoutConfig {
        TimeoutConfig::builder()
            .connect_timeout(self.connect_timeout)
            .operation_attempt_timeout(self.attempt_timeout)
            .operation_timeout(self.operation_timeout)
            .build()
    }
}

/// IMDS: one attempt, short timeouts (see the module docs).
const IMDS_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const IMDS_READ_TIMEOUT: Duration = Duration::from_secs(1);
const IMDS_OPERATION_TIMEOUT: Duration = Duration::from_secs(2);

/// Loads the SDK configuration from the environment, with `default_region`
/// when neither `AWS_REGION` nor `AWS_DEFAULT_REGION` is set. Needs a tokio
/// runtime (the credential chain is built asynchronously); it does not
/// contact AWS: credentials are fetched on the first request.
pub async fn load_sdk_config(default_region: &str, options: &AwsOptions) -> SdkConfig {
    let region = RegionProviderChain::first_try(EnvironmentVariableRegionProvider::new())
        .or_else(Region::new(default_region.to_owned()));
    let region = aws_config::meta::region::ProvideRegion::region(&region).await;
    let imds = aws_config::imds::Client::builder()
        .max_attempts(1)
        .connect_timeout(IMDS_CONNECT_TIMEOUT)
        .read_timeout(IMDS_READ_TIMEOUT)
        .operation_timeout(IMDS_OPERATION_TIMEOUT)
        .operation_attempt_timeout(IMDS_OPERATION_TIMEOUT)
        .build();
    let credentials = aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
        .region(region.clone())
        .imds_client(imds)
        .build()
        .await;
    aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .credentials_provider(credentials)
        .retry_config(options.retry_config())
        .timeout_config(options.timeout_config())
        .load()
        .await
}

/// The configuration of a route's clients: `base` in `access.region`, with
/// `access.role_arn` assumed from `base`'s credentials. `base` as it is
/// when the route uses the process's own account and region.
pub async fn sdk_config_for(base: &SdkConfig, access: &AwsAccess) -> SdkConfig {
    let mut config = base.to_builder();
    if let Some(region) = &access.region {
        config = config.region(Region::new(region.clone()));
    }
    if let Some(role_arn) = &access.role_arn {
        let mut role = aws_config::sts::AssumeRoleProvider::builder(role_arn)
            .session_name(ROLE_SESSION_NAME)
            .configure(base);
        if let Some(external_id) = &access.external_id {
            role = role.external_id(external_id);
        }
        config = config.credentials_provider(aws_sdk_sns::config::SharedCredentialsProvider::new(
            role.build().await,
        ));
    }
    config.build()
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpListener;

    use super::*;

    /// Set in the child process that [`environment_is_honoured`] starts.
    const CHILD: &str = "KUBEHERALD_AWS_CONFIG_CHILD";

    /// Runs this test binary again with AWS variables set (changing the
    /// environment of a running test process would need `unsafe`); the child
    /// sends one SNS and one CloudWatch Logs request, and the listeners here
    /// see where each went, signed with which key for which region.
    #[test]
    fn environment_is_honoured() {
        if std::env::var_os(CHILD).is_some() {
            return child_requests();
        }
        let generic = TcpListener::bind("127.0.0.1:0").unwrap();
        let sns = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "publish::aws::tests::environment_is_honoured"])
            .env_clear()
            .env(CHILD, "1")
            .env("AWS_DEFAULT_REGION", "eu-west-3")
            .env(
                "AWS_ENDPOINT_URL",
                format!("http://{}", generic.local_addr().unwrap()),
            )
            .env(
                "AWS_ENDPOINT_URL_SNS",
                format!("http://{}", sns.local_addr().unwrap()),
            )
            .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
            .env("AWS_SECRET_ACCESS_KEY", "secret")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .spawn()
            .unwrap();
        let sns_request = first_request(&sns);
        let logs_request = first_request(&generic);
        assert!(child.wait().unwrap().success(), "the child failed");
        assert!(sns_request.contains("Action=ListTopics"), "{sns_request}");
        assert!(
            sns_request.contains("Credential=AKIDEXAMPLE/")
                && sns_request.contains("/eu-west-3/sns/"),
            "AWS_DEFAULT_REGION wins over the default region: {sns_request}"
        );
        assert!(
            logs_request.contains("Logs_20140328.DescribeLogGroups"),
            "{logs_request}"
        );
    }

    /// The head of the first request on `listener`; the connection is then
    /// dropped, which fails the child's request.
    fn first_request(listener: &TcpListener) -> String {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = vec![0; 64 * 1024];
        let mut len = 0;
        while let Ok(n) = stream.read(&mut buf[len..]) {
            len += n;
            let text = String::from_utf8_lossy(&buf[..len]);
            if n == 0
                || (text.contains("\r\n\r\n") && (text.contains("Action=") || text.contains("{")))
            {
                break;
            }
        }
        String::from_utf8_lossy(&buf[..len]).into_owned()
    }

    fn child_requests() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let options = AwsOptions {
                max_attempts: 1,
                ..AwsOptions::default()
            };
            let config = load_sdk_config("us-west-2", &options).await;
            assert_eq!(config.region().map(|r| r.as_ref()), Some("eu-west-3"));
            let sns = aws_sdk_sns::Client::new(&config).list_topics().send().await;
            assert!(sns.is_err(), "the listener never answers");
            let logs = aws_sdk_cloudwatchlogs::Client::new(&config)
                .describe_log_groups()
                .send()
                .await;
            assert!(logs.is_err());
        });
    }
}

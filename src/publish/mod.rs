//! Talking to AWS: SNS for resource events, CloudWatch Logs for pod logs.
//!
//! Service limits are enforced where requests are built (STYLE 5), each a
//! named constant with its source.
//!
//! - [`aws`]: the SDK configuration every AWS client shares;
//! - [`sns_message`]: one event → one SNS message (body, attributes, size rule);
//! - [`sns`]: the publisher thread (SNS `PublishBatch`, or stdout lines);
//! - [`retry`]: the one place that decides what SNS publishing retries;
//! - [`cloudwatch`]: the log sink (CloudWatch Logs `PutLogEvents`, or stdout
//!   lines) and the last-event lookup for followers without a checkpoint;
//! - [`cloudwatch_batch`]: PutLogEvents limits, enforced while batches are built;
//! - [`pacing`]: sleeps that end at shutdown, rate-limited warnings, spool gauges;
//! - [`cloudwatch_retry`]: what the log sink retries, recreates or gives up.

pub mod aws;
pub mod cloudwatch;
pub mod cloudwatch_batch;
pub mod cloudwatch_retry;
pub mod pacing;
pub mod retry;
pub mod sns;
pub mod sns_message;

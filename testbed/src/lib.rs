//! Real peers for kubeherald's tests and benchmarks.
//!
//! - [`kube`]: a Kubernetes API test server that reproduces the list/watch,
//!   discovery, authentication and `pods/log` semantics kubeherald relies on.
//! - [`aws`]: the moto server (SNS, SQS, CloudWatch Logs) and a strict proxy
//!   in front of it that refuses what real AWS refuses but moto accepts.
//! - [`sentry`]: a fake Sentry that keeps what the SDK reports.
#![forbid(unsafe_code)]

pub mod aws;
pub mod kube;
pub mod sentry;

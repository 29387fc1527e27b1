//! Pod logs (SPEC §4): what the log follower and the CloudWatch sink share.
//!
//! - [`checkpoint`]: per container instance, the last line CloudWatch
//!   accepted (timestamp and count at that timestamp), written by the sink
//!   after a successful put and read by the follower to resume without gaps
//!   or duplicates, and the follower's appended position beside it;
//! - [`follower`]: the pod-log follower of one context ([`spawn_log_follower`]):
//!   its thread, options, stream bound and the resume rule;
//! - `pods`: the namespace's pods (LIST+WATCH through [`crate::watch`]'s
//!   requests), exclusions, one follow task per container;
//! - `follow`: the follow of one container across its instances (an enum
//!   state machine: following → reconnecting → draining the previous one);
//! - [`line`]: kubelet timestamps, positions (`seq_at_timestamp`) and what
//!   a resumed stream skips.
//!
//! The record that crosses the logs spool is [`crate::record::LogLine`]; the
//! sink is [`crate::publish::cloudwatch`].

pub mod checkpoint;
mod follow;
pub mod follower;
pub mod line;
mod pods;

pub use checkpoint::{Checkpoint, CheckpointError, CheckpointStore, ContainerKey};
pub use follower::{
    CloudWatchLookup, FollowLimit, FollowerStatus, LogFollowOptions, LogFollowerHandle,
    spawn_log_follower,
};
pub use pods::{LOGS_ANNOTATION, is_excluded};

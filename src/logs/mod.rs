//! Pod logs (SPEC §4): what the log follower and the CloudWatch sink share.
//!
//! - [`checkpoint`]: per container instance, the last line CloudWatch
//!   accepted (timestamp and count at that timestamp), written by the sink
//!   after a successful put and read by the follower to resume without gaps
//!   or duplicates, and the follower's appended position beside it;
//! - [`follower`]: the pod-log follower of one context ([`spawn_log_follower`]):
//!   its thread and handle, and the resume rule;
//! - `options`: its tunables, the per-cluster stream bound ([`FollowLimit`]),
//!   the [`LastEventLookup`] interface, and what its tasks share;
//! - `pods`: the namespace's pods — a handler of the watch engine
//!   (`crate::watch::engine`) — and one follow task per container;
//! - `view`: what a pod says of each container instance; exclusions;
//! - `follow`: the follow of one container across its instances (an enum
//!   state machine: following → reconnecting → draining the previous one);
//! - [`line`](mod@line): kubelet timestamps, positions (`seq_at_timestamp`) and what
//!   a resumed stream skips.
//!
//! Dependencies run one way: `follower` → `pods` → `follow` → `options`,
//! `view`, `line`, `checkpoint`. `logs` may import `kube_api`, `watch` (the
//! engine), `spool`, `record`, `metrics`, `names`, `config`; never
//! `publish`: the sink's last-event lookup comes in as a
//! [`LastEventLookup`] from `app`, and the CloudWatch sink uses the
//! [`CheckpointStore`] owned here. The record that crosses the logs spool is
//! [`crate::record::LogLine`]; its identity is [`ContainerKey`].

pub mod checkpoint;
mod follow;
pub mod follower;
pub mod line;
mod options;
mod pods;
mod view;

pub use crate::record::ContainerKey;
pub use checkpoint::{Checkpoint, CheckpointError, CheckpointStore, Shipped};
pub use follower::{FollowerStatus, LogFollowerHandle, spawn_log_follower};
pub use options::{FollowLimit, LastEvent, LastEventLookup, LogFollowOptions, LookupError};
pub use view::{LOGS_ANNOTATION, is_excluded};

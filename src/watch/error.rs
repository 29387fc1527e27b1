//! Why one step of a watch failed: a request to the API server
//! ([`ApiError`]), the spool, or the re-list diff state. What each leads to
//! is decided in one place, [`super::engine::recovery`].

use crate::kube_api::{ApiError, Op};
use crate::spool::SpoolError;

use super::state::StateError;

/// A failure of one step of a list/watch (of a kind or of the pods of a
/// log follower).
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The API server's answer, or the lack of one.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// Appending to the spool failed; retryable unless the spool is closed
    /// (shutdown).
    #[error("{op}: cannot append to the spool")]
    Spool {
        op: Op,
        #[source]
        source: SpoolError,
    },
    /// The diff state store failed; retryable with a fresh LIST.
    #[error("the watch state store failed")]
    State(#[source] StateError),
}

impl WatchError {
    /// Whether the watch tries again.
    pub fn is_retryable(&self) -> bool {
        match self {
            WatchError::Api(err) => err.is_retryable(),
            WatchError::Spool { source, .. } => {
                !matches!(source, SpoolError::Closed | SpoolError::TooLarge { .. })
            }
            WatchError::State(_) => true,
        }
    }

    /// The `reason` label of `watch_errors`: a fixed word per condition.
    pub fn metric_label(&self) -> &'static str {
        match self {
            WatchError::Api(err) => err.metric_label(),
            WatchError::Spool { .. } => "spool",
            WatchError::State(_) => "state",
        }
    }

    /// An answer that is not what the API promises.
    pub(crate) fn undecodable(
        op: Op,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        WatchError::Api(ApiError::undecodable(op, source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_spool_ends_the_watch() {
        let err = WatchError::Spool {
            op: Op::Watch,
            source: SpoolError::Closed,
        };
        assert!(!err.is_retryable());
        assert!(
            WatchError::Api(ApiError::Timeout {
                op: Op::List,
                after: std::time::Duration::from_secs(1)
            })
            .is_retryable()
        );
    }

    #[test]
    fn an_api_error_is_printed_once() {
        let err = WatchError::Api(ApiError::Timeout {
            op: Op::List,
            after: std::time::Duration::from_secs(1),
        });
        assert_eq!(
            crate::kube_api::error_chain(&err),
            "list: no answer within 1s"
        );
    }
}

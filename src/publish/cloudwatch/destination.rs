//! Where a route's log lines go (`logs.routes`, SPEC §3 "tenant routes"):
//! its group naming, retention and CloudWatch Logs client — the process's
//! own, or one in the tenant's account and region ([`sdk_config_for`]).
//! Index 0 is always the default route. May import `publish::aws` and the
//! configuration.

use std::sync::Arc;

use aws_config::SdkConfig;
use tracing::warn;

use crate::config::{DEFAULT_LOG_ROUTE, GroupNaming, LogRoute};
use crate::publish::aws::sdk_config_for;

/// One route's destination.
pub struct Destination {
    /// The route's name ([`DEFAULT_LOG_ROUTE`] for the default).
    pub(super) route: String,
    pub(super) naming: GroupNaming,
    pub(super) retention_days: u32,
    pub(super) client: aws_sdk_cloudwatchlogs::Client,
}

/// Every route's destination, the default first. Cloning shares them.
#[derive(Clone)]
pub struct LogDestinations {
    list: Arc<[Arc<Destination>]>,
}

impl LogDestinations {
    /// The destinations of `routes` (the default route first, as
    /// [`crate::config::LogsConfig::destinations`] lists them), each route
    /// in another account or region with a client of its own.
    pub async fn load(routes: &[LogRoute], base: &SdkConfig) -> LogDestinations {
        let mut list = Vec::with_capacity(routes.len());
        for route in routes {
            let client =
                aws_sdk_cloudwatchlogs::Client::new(&sdk_config_for(base, &route.access).await);
            list.push(Arc::new(Destination {
                route: route.name.clone(),
                naming: route.naming.clone(),
                retention_days: route.retention_days,
                client,
            }));
        }
        debug_assert!(list.first().is_some_and(|d| d.route == DEFAULT_LOG_ROUTE));
        LogDestinations { list: list.into() }
    }

    /// The destination of lines marked `route`, with its index. A route no
    /// longer configured (lines spooled before a restart with another
    /// configuration) falls back to the default, with a warning.
    pub(super) fn for_route(&self, route: &str) -> (usize, &Arc<Destination>) {
        match self.list.iter().position(|d| d.route == route) {
            Some(i) => (i, &self.list[i]),
            None => {
                warn!(route = %route, "log lines of a route no longer configured; sending them to the default route");
                (0, &self.list[0])
            }
        }
    }

    /// Destinations named `routes` (the default first), all with `client`
    /// and a retention of 30 days (unit tests: the scheduler does no I/O).
    #[cfg(test)]
    pub(super) fn for_tests(
        routes: &[(&str, GroupNaming)],
        client: aws_sdk_cloudwatchlogs::Client,
    ) -> Self {
        let list: Vec<Arc<Destination>> = routes
            .iter()
            .map(|(route, naming)| {
                Arc::new(Destination {
                    route: (*route).to_owned(),
                    naming: naming.clone(),
                    retention_days: 30,
                    client: client.clone(),
                })
            })
            .collect();
        LogDestinations { list: list.into() }
    }
}

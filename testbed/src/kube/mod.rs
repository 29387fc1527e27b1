//! A Kubernetes API test server that reproduces the kube-apiserver semantics
//! kubeherald relies on, so tests against it are honest.
//!
//! One [`ApiServer`] plays one cluster: it binds `127.0.0.1:0`, serves plain
//! HTTP/1.1 from its own tokio runtime (so it works from sync tests, from any
//! test runtime and for a kubeherald subprocess) and shuts down on drop.
//! Several servers play several clusters; [`KubeconfigBuilder`] writes one
//! kubeconfig with a context per (cluster, namespace).
//!
//! What it reproduces, each with the real rule beside the code:
//!
//! - discovery (`/api`, `/apis`, group versions, `/version`, and aggregated
//!   discovery v2 when asked for it): [`discovery`];
//! - LIST with consistent snapshots, `limit`/`continue`, selectors and 410 for
//!   compacted resourceVersions: [`list`] over the [`store`];
//! - WATCH from a resourceVersion, synthetic ADDED for `0`/unset, bookmarks,
//!   `timeoutSeconds`, the 410 ERROR event: [`watch`];
//! - `pods/log` with `follow`, `timestamps`, `sinceTime`, `previous`,
//!   `tailLines`, `limitBytes`: [`logs`], pod statuses in [`pods`];
//! - bearer tokens with 401/403: [`auth`];
//! - fault injection (cut connections, stall, fail the next requests,
//!   stop/restart on the same port): [`faults`] and [`ApiServer`];
//! - for benchmarks, watches flooded with generated events: [`flood`].
//!
//! Objects are written through [`ApiServer::apply`] and friends, never over
//! HTTP: the server only serves `GET` (get, list, watch, log), which is all a
//! watcher and log follower use.

pub mod auth;
pub mod discovery;
pub mod faults;
pub mod flood;
pub mod kinds;
pub mod kubeconfig;
pub mod list;
pub mod logs;
pub mod pods;
mod routes;
pub mod selector;
mod server;
pub mod status;
pub mod store;
pub mod watch;

pub use auth::Access;
pub use flood::Flood;
pub use kinds::KindSpec;
pub use kubeconfig::KubeconfigBuilder;
pub use server::{ADMIN_TOKEN, ApiServer, RequestRecord, RequestVerb, ServerOptions};

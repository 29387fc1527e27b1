//! Watching clusters: one OS thread per context, each with its own
//! single-threaded tokio runtime, so a slow, failing or unreachable cluster
//! never delays another (SPEC §1).
//!
//! What a context thread does today: build the context's client, reach its
//! API server (`GET /version`) with backoff until it answers, report it, and
//! stay until shutdown. The list/watch loops of each configured kind run in
//! these threads.

mod context;

pub use context::{ContextHandle, ContextState, spawn_context};

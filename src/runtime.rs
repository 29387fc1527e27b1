//! One OS thread with its own current-thread tokio runtime (SPEC §1): what
//! each (context, kind) watcher and each context's log follower runs on, so
//! a slow or failing cluster never shares a scheduler with another.
//!
//! Imports nothing of kubeherald; `watch` and `logs` use it.

use std::future::Future;
use std::thread::JoinHandle;

use tracing::{Instrument, Span, error};

/// I/O events one poll of a thread's runtime takes in.
const MAX_IO_EVENTS_PER_TICK: usize = 64;

/// Spawns thread `name` running `task()` to completion on a fresh
/// current-thread runtime, inside `span`. `task` is called on the new
/// thread, so what it captures need not be `Send` once built there. A
/// runtime that cannot be built is logged (in `span`) and the thread ends.
///
/// Fails only if the thread cannot be spawned.
pub fn spawn_with_runtime<F, Fut>(
    name: String,
    span: Span,
    task: F,
) -> std::io::Result<JoinHandle<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    std::thread::Builder::new().name(name).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // A watch has one or two connections and a log follower up to
            // `max_streams_per_cluster`: tokio's 1,024 I/O events a poll
            // would be a 12 KiB buffer per thread, 12 MiB for 1,000 watches
            // (SPEC §9's scale target); more ready sockets are read on the
            // next turn.
            .max_io_events_per_tick(MAX_IO_EVENTS_PER_TICK)
            .build()
        {
            Ok(runtime) => runtime,
            Err(err) => {
                let _enter = span.enter();
                error!(error = %err, "cannot start the runtime of this thread; it ends");
                return;
            }
        };
        // On the heap: a watch's future is about 8 KiB (8,400 bytes in a
        // release build), and run from the stack it is copied there more
        // than once on the way into block_on; the pages stay resident, on
        // each of SPEC §9's 1,000 watch threads.
        runtime.block_on(Box::pin(task().instrument(span)));
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_task_runs_on_its_own_named_thread() {
        let handle = spawn_with_runtime("rt-test".into(), Span::none(), || async {
            assert_eq!(std::thread::current().name(), Some("rt-test"));
            tokio::task::yield_now().await;
        })
        .unwrap();
        handle.join().unwrap();
    }
}

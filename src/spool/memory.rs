//! The in-memory variant ([`super::Spool::in_memory`], used when `SPOOL_DIR`
//! is unset): the same interface and the same bound over a `VecDeque` of
//! records not yet delivered. Records are lost with the process; there are
//! no files, no checkpoint and nothing to sync.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use super::format::HEADER_LEN;
use super::reader::Held;
use super::shared::{Backend, Guard, Shared, State};
use super::{Delivery, Handle, SpoolError, SpoolStats};

/// The in-memory backend: nothing outside the lock.
pub(super) struct Memory;

/// Records appended and not yet delivered, in id order.
pub(super) type Queue = VecDeque<(u64, Held)>;

/// A new, empty in-memory spool bounded by `max_bytes` frame bytes.
pub(super) fn open(max_bytes: u64) -> Arc<Shared<Memory>> {
    let state = State::new(0, 0, SpoolStats::default(), Queue::new());
    Shared::new(state, max_bytes, Memory)
}

impl Backend for Memory {
    type State = Queue;

    fn handle(shared: &Arc<Shared<Self>>) -> Handle {
        Handle::Memory(shared.clone())
    }

    fn dir(&self) -> Option<&Path> {
        None
    }

    fn commit<T: AsRef<[u8]>>(
        shared: &Shared<Self>,
        mut st: Guard<'_, Self>,
        payloads: &[T],
        _need: u64,
        appended_at_micros: u64,
    ) -> Result<Range<u64>, SpoolError> {
        let first = st.next_id;
        let count = payloads.len() as u64;
        for (i, p) in payloads.iter().enumerate() {
            st.backend.push_back((
                first + i as u64,
                Held {
                    payload: p.as_ref().to_vec(),
                    appended_at_micros,
                    origin: None,
                    reread: false,
                },
            ));
        }
        st.next_id += count;
        shared.wake_reader(&st);
        Ok(first..first + count)
    }

    fn read_new(
        shared: &Arc<Shared<Self>>,
        mut st: Guard<'_, Self>,
        out: &mut Vec<Delivery>,
        max: usize,
    ) -> Result<(), SpoolError> {
        let st = &mut *st;
        while out.len() < max {
            let Some((id, held)) = st.backend.pop_front() else {
                break;
            };
            st.outstanding.insert(id, held.appended_at_micros);
            out.push(shared.delivery(id, held.payload, held.appended_at_micros));
        }
        Ok(())
    }

    fn has_unread(st: &State<Queue>) -> bool {
        !st.backend.is_empty()
    }

    fn acked(st: &mut State<Queue>, payload_len: usize) {
        // In memory a record's space is freed with its acknowledgement.
        st.bytes -= (HEADER_LEN + payload_len) as u64;
    }

    fn reclaim(_: &Shared<Self>, _: &mut State<Queue>) {}

    fn checkpoint_if_due(_: &Shared<Self>) {}

    fn sync(_: &Shared<Self>) -> Result<(), SpoolError> {
        Ok(())
    }

    fn sync_appends(_: &Shared<Self>) -> Result<(), SpoolError> {
        Ok(())
    }

    fn last_handle_dropped(_: &Shared<Self>) {}

    fn read_through(st: &State<Queue>) -> u64 {
        st.backend.front().map_or(st.next_id, |(id, _)| *id)
    }

    fn unread(st: &State<Queue>, _: &mut SpoolStats) -> (Option<u64>, u64) {
        (
            st.backend.front().map(|(_, h)| h.appended_at_micros),
            st.backend.len() as u64,
        )
    }
}

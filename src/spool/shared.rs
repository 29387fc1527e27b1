//! What both backends share: the spool's one lock and the part of the state
//! under it that does not depend on where records live (ids, bytes held,
//! deliveries outstanding, counters), the wake-ups of appenders and of the
//! reader, and the [`Backend`] trait through which this shared code reaches a
//! backend's own state.
//!
//! Everything here is generic over the backend: `Shared<Disk>` holds disk
//! state only and `Shared<Memory>` memory state only, so no code can meet the
//! other backend's data.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use super::reader::Held;
use super::{Delivery, Handle, SpoolError, SpoolStats};

/// Where records live: the file backend ([`super::disk::Disk`]) or the
/// in-memory variant ([`super::memory::Memory`]). The implementing type holds
/// what the backend keeps outside the state lock; [`Backend::State`] what it
/// keeps under it.
pub(super) trait Backend: Sized + Send + Sync + 'static {
    /// The backend's part of the state under the spool's one lock.
    type State: Send;

    /// The public types' handle on this spool.
    fn handle(shared: &Arc<Shared<Self>>) -> Handle;

    /// The spool directory; `None` in memory.
    fn dir(&self) -> Option<&Path>;

    /// Stores a non-empty batch that has room and is already counted in
    /// `st.bytes`; returns its ids once it is stored.
    fn commit<T: AsRef<[u8]>>(
        shared: &Shared<Self>,
        st: Guard<'_, Self>,
        payloads: &[T],
        need: u64,
        appended_at_micros: u64,
    ) -> Result<Range<u64>, SpoolError>;

    /// Adds records never delivered to `out`, up to `max` in all; put-back
    /// records are already in it.
    fn read_new(
        shared: &Arc<Shared<Self>>,
        st: Guard<'_, Self>,
        out: &mut Vec<Delivery>,
        max: usize,
    ) -> Result<(), SpoolError>;

    /// Whether a record never delivered is there to be read.
    fn has_unread(st: &State<Self::State>) -> bool;

    /// A delivery of `payload_len` bytes was acknowledged.
    fn acked(st: &mut State<Self::State>, payload_len: usize);

    /// Frees the space of acknowledged records that is not freed at `acked`.
    fn reclaim(shared: &Shared<Self>, st: &mut State<Self::State>);

    /// Records acknowledgement progress if it is due.
    fn checkpoint_if_due(shared: &Shared<Self>);

    /// Makes appends and acknowledgement progress durable ([`super::Spool::sync`]).
    fn sync(shared: &Shared<Self>) -> Result<(), SpoolError>;

    /// Makes the appends so far durable, not the acknowledgement progress
    /// ([`super::SpoolWriter::sync_appends`]).
    fn sync_appends(shared: &Shared<Self>) -> Result<(), SpoolError>;

    /// The last handle on the spool is gone.
    fn last_handle_dropped(shared: &Shared<Self>);

    /// The backend's part of the stats (e.g. segment count); returns the
    /// append time of the oldest record never delivered and how many such
    /// records there are.
    fn unread(st: &State<Self::State>, stats: &mut SpoolStats) -> (Option<u64>, u64);

    /// Every id below the returned one has been read (delivered or skipped).
    fn read_through(st: &State<Self::State>) -> u64;
}

/// The state lock held by a backend.
pub(super) type Guard<'a, B> = MutexGuard<'a, State<<B as Backend>::State>>;

/// Everything under the spool's one lock.
pub(super) struct State<S> {
    pub closed: bool,
    /// Frame bytes held (the bound `max_bytes` applies to this).
    pub bytes: u64,
    /// Id of the next record (disk: assigned when a generation is written).
    pub next_id: u64,
    /// Delivered, not acknowledged (in flight or put back): id → appended at.
    pub outstanding: BTreeMap<u64, u64>,
    /// Put back by a dropped delivery, to be delivered first.
    pub put_back: BTreeMap<u64, Held>,
    pub space_waiters: usize,
    pub reader_waiting: bool,
    pub stats: SpoolStats,
    /// The backend's own part.
    pub backend: S,
}

impl<S> State<S> {
    pub fn new(bytes: u64, next_id: u64, stats: SpoolStats, backend: S) -> State<S> {
        State {
            closed: false,
            bytes,
            next_id,
            outstanding: BTreeMap::new(),
            put_back: BTreeMap::new(),
            space_waiters: 0,
            reader_waiting: false,
            stats,
            backend,
        }
    }

    /// Room for `need` more bytes; an empty spool always has room, so a batch
    /// up to `max_bytes` never waits forever.
    pub fn has_space(&self, need: u64, max_bytes: u64) -> bool {
        self.bytes == 0 || self.bytes + need <= max_bytes
    }
}

/// A spool's shared core, behind every public handle.
pub(super) struct Shared<B: Backend> {
    state: Mutex<State<B::State>>,
    /// Appenders waiting for space.
    pub space: Condvar,
    /// The reader waiting for records.
    pub data: Condvar,
    pub space_async: Notify,
    pub data_async: Notify,
    pub reader_taken: AtomicBool,
    pub max_bytes: u64,
    /// The id of the first record appended by this process: every record
    /// below it was appended before the spool was opened (by a previous run).
    pub first_id_of_this_open: u64,
    /// What the backend keeps outside the lock.
    pub backend: B,
}

impl<B: Backend> Shared<B> {
    pub fn new(state: State<B::State>, max_bytes: u64, backend: B) -> Arc<Shared<B>> {
        Arc::new(Shared {
            first_id_of_this_open: state.next_id,
            state: Mutex::new(state),
            space: Condvar::new(),
            data: Condvar::new(),
            space_async: Notify::new(),
            data_async: Notify::new(),
            reader_taken: AtomicBool::new(false),
            max_bytes,
            backend,
        })
    }

    pub fn lock(&self) -> Guard<'_, B> {
        // A panic elsewhere while holding the lock leaves consistent counters
        // (every update is a few assignments); keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn wake_space(&self, st: &State<B::State>) {
        if st.space_waiters > 0 {
            self.space.notify_all();
            self.space_async.notify_waiters();
        }
    }

    pub fn wake_reader(&self, st: &State<B::State>) {
        if st.reader_waiting {
            self.data.notify_one();
        }
        self.data_async.notify_waiters();
    }

    /// The spool directory; `None` in memory.
    pub fn dir(&self) -> Option<&Path> {
        self.backend.dir()
    }

    /// See [`super::Spool::sync`].
    pub fn sync(&self) -> Result<(), SpoolError> {
        B::sync(self)
    }

    /// See [`super::SpoolWriter::sync_appends`].
    pub fn sync_appends(&self) -> Result<(), SpoolError> {
        B::sync_appends(self)
    }

    /// Refuses further appends and wakes appenders waiting for space.
    pub fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        drop(st);
        self.space.notify_all();
        self.space_async.notify_waiters();
    }

    /// Whether every record appended before this open has been read and
    /// acknowledged (or skipped): nothing of the previous run is left.
    pub fn previous_run_settled(&self) -> bool {
        let st = self.lock();
        let first = self.first_id_of_this_open;
        B::read_through(&st) >= first
            && st
                .outstanding
                .first_key_value()
                .is_none_or(|(id, _)| *id >= first)
            && st
                .put_back
                .first_key_value()
                .is_none_or(|(id, _)| *id >= first)
    }

    pub fn stats(&self) -> SpoolStats {
        let st = self.lock();
        let mut stats = st.stats.clone();
        stats.bytes = st.bytes;
        stats.max_bytes = self.max_bytes;
        stats.appenders_waiting = st.space_waiters as u64;
        stats.in_flight = (st.outstanding.len() - st.put_back.len()) as u64;
        let oldest_outstanding = st.outstanding.values().next().copied();
        let (head, unread) = B::unread(&st, &mut stats);
        stats.pending_records = unread + st.outstanding.len() as u64;
        stats.oldest_unacked = [oldest_outstanding, head]
            .into_iter()
            .flatten()
            .min()
            .map(|micros| UNIX_EPOCH + Duration::from_micros(micros));
        stats
    }
}

impl<B: Backend> Drop for Shared<B> {
    fn drop(&mut self) {
        B::last_handle_dropped(self);
    }
}

pub(super) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

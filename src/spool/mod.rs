//! The durable, bounded hand-off from the watcher threads to the publisher
//! (SPEC §5).
//!
//! Watchers append records through a cloneable [`SpoolWriter`]; the one
//! publisher takes them through the [`SpoolReader`] as [`Delivery`] leases and
//! acknowledges each after a confirmed publish. With a directory
//! ([`Spool::open`]) records live in files and survive `kill -9`; without one
//! ([`Spool::in_memory`]) the same interface is a bounded queue in memory.
//!
//! # Directory layout
//!
//! ```text
//! SPOOL_DIR/
//!   spool.lock                   lock file, held with an exclusive flock(2)
//!                                (std `File::try_lock`) while the spool is open
//!   00000000000000000000.seg     segment files, named by the id of their first
//!   00000000000000004096.seg     record, 20 zero-padded decimal digits
//!   checkpoint                   acknowledgement checkpoint
//!   checkpoint.tmp               only while a checkpoint is being replaced
//! ```
//!
//! Ids are assigned in append order, one per record, without gaps: a segment
//! holds the ids from its name up to the next segment's name. Records are
//! appended to the last segment only; when it has reached the segment size
//! (1/8 of `max_bytes`, at most 64 MiB) the next write starts a new file.
//! Every open starts a new segment, so a file written before a crash is never
//! appended to again.
//!
//! # Record framing
//!
//! A segment is a sequence of frames; all integers little-endian:
//!
//! | offset | size | field                                                     |
//! |-------:|-----:|-----------------------------------------------------------|
//! | 0      | 4    | magic `KHr1` (`4B 48 72 31`)                              |
//! | 4      | 4    | checksum, u32                                             |
//! | 8      | 4    | payload length N, u32, at most 16 MiB                     |
//! | 12     | 8    | id, u64                                                   |
//! | 20     | 8    | appended at, u64 microseconds since the Unix epoch        |
//! | 28     | N    | payload                                                   |
//!
//! The checksum is **CRC-32/ISO-HDLC** (the IEEE 802.3 polynomial
//! `0x04C11DB7`, reflected, init and xor-out `0xFFFFFFFF`: the CRC of zlib,
//! gzip and PNG; computed with `crc32fast`) over bytes 8..28 of the frame
//! followed by the payload, i.e. everything but the magic and the checksum
//! itself. The magic lets a reader find the next frame after damaged bytes.
//!
//! # Acknowledgement rule
//!
//! A record leaves the spool only after the publisher called
//! [`Delivery::ack`] (after a confirmed publish). A [`Delivery`] dropped
//! without `ack` puts its record back at the head of the queue, to be
//! delivered again before any record not yet delivered. Acks may come in any
//! order. A segment file is deleted once every id in it is acknowledged
//! (or was lost to damage) and the reader has read past it; while appenders
//! wait for space, that includes the segment being written.
//!
//! Progress is kept in `checkpoint`, replaced (write `checkpoint.tmp`, then
//! rename) at most every `checkpoint_interval` (100 ms) while acks arrive,
//! and at [`Spool::sync`] and when the spool is dropped:
//!
//! | offset | size | field                                                     |
//! |-------:|-----:|-----------------------------------------------------------|
//! | 0      | 4    | magic `KHc1`                                              |
//! | 4      | 8    | read_through R, u64                                       |
//! | 12     | 4    | range count K, u32                                        |
//! | 16     | 12·K | ranges: first id u64, length u32; ascending, below R      |
//! | 16+12K | 4    | CRC-32/ISO-HDLC of bytes 0..16+12K                        |
//!
//! It states: *every id below R is acknowledged, except the ids in the
//! ranges* (those delivered but not acknowledged when it was written). After
//! a restart those are delivered again first in id order and counted in
//! [`SpoolStats::redelivered_after_restart`]; ids at or above R are delivered
//! as new. Acks after the last checkpoint are lost by a crash, so up to one
//! interval of acknowledged records is delivered again (at-least-once).
//!
//! # Recovery rules (at [`Spool::open`])
//!
//! 1. The lock file is taken or the open fails with [`SpoolError::Locked`]
//!    naming the directory: two processes never share a spool.
//! 2. Files ending in `.tmp` are removed (a replacement that never reached
//!    its rename); unknown files are left alone and logged.
//! 3. The last segment is scanned to its end; bytes after its last intact
//!    frame are a torn write and are cut (truncated), counted in
//!    [`SpoolStats::torn_tails_cut`]. Damage to the very last record cannot
//!    be told apart from a torn write and is cut the same way.
//! 4. A last segment with no intact frame is removed (there is nothing in it
//!    to keep).
//! 5. A missing or damaged checkpoint counts as "nothing acknowledged": every
//!    record on disk is delivered again. The next id is above both the last
//!    intact record and the checkpoint's R.
//! 6. While reading, a damaged frame in the middle of a segment (bad magic,
//!    impossible length, checksum mismatch) is stepped over to the next
//!    intact frame; the ids missing in between are counted in
//!    [`SpoolStats::corrupt_records_skipped`] and logged. The spool never
//!    guesses a damaged record's content and never refuses to start because
//!    of a damaged file.
//!
//! # Durability
//!
//! An append returns after its bytes were handed to the kernel with
//! write(2): they survive the process being killed (`kill -9`, a panic, an
//! OOM kill). They do not necessarily survive a power loss or kernel crash:
//! whatever was written since the last [`Spool::sync`] (fsync of the segments,
//! the checkpoint and the directory) may be lost or torn, which recovery then
//! cuts as above; the shutdown path calls `sync`.
//!
//! # Concurrency and bounds
//!
//! Appenders on many threads share one writer through *group commit*: each
//! copies its frames into a shared buffer under a short lock; one of them
//! (the leader) numbers, checksums and writes the whole buffer with one
//! write(2) while the others wait for it. Appends **wait** while the spool
//! holds `max_bytes` (frame bytes on disk or in memory) — backpressure, never
//! a drop. Memory stays flat: the reader streams frames from the files with a
//! 256 KiB buffer; only records delivered and not yet acknowledged are held.

mod format;
mod recovery;
mod segment;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tracing::warn;

use format::{Checkpoint, HEADER_LEN, MAX_PAYLOAD};
use segment::{CHECKPOINT_FILE, FrameReader, TEMP_SUFFIX, segment_path};

/// Default `max_bytes` (config `spool.max_bytes`).
pub const DEFAULT_MAX_BYTES: u64 = crate::config::DEFAULT_SPOOL_MAX_BYTES;
/// Largest segment file: small enough that disk is reclaimed in steps of at
/// most 1/32 of the default bound.
const MAX_SEGMENT_BYTES: u64 = 64 << 20;
/// Longest wait of `next_batch`: keeps deadline arithmetic from overflowing.
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);
/// Buffers kept between group-commit writes up to this capacity; a burst's
/// larger buffer is freed.
const KEEP_BUFFER: usize = 8 << 20;

/// How a spool is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolOptions {
    /// Bound on frame bytes held (config `spool.max_bytes`); appends wait at
    /// the bound.
    pub max_bytes: u64,
    /// Size at which a new segment file is started; `None`: `max_bytes / 8`,
    /// at most 64 MiB.
    pub segment_bytes: Option<u64>,
    /// Least time between two checkpoint writes while acks arrive.
    pub checkpoint_interval: Duration,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            max_bytes: DEFAULT_MAX_BYTES,
            segment_bytes: None,
            checkpoint_interval: Duration::from_millis(100),
        }
    }
}

impl SpoolOptions {
    /// Defaults with the given bound.
    pub fn with_max_bytes(max_bytes: u64) -> Self {
        SpoolOptions {
            max_bytes,
            ..SpoolOptions::default()
        }
    }
}

/// Why a spool operation failed. Each variant names the operation and, where
/// there is one, the file.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Another process (or another `Spool` in this one) holds the directory.
    #[error("spool directory {dir} is in use by another process (lock file {lock} is held)")]
    Locked {
        /// The spool directory.
        dir: PathBuf,
        /// Its lock file.
        lock: PathBuf,
    },
    /// A file operation failed.
    #[error("spool: cannot {op} {path}")]
    Io {
        /// What was being done ("read segment", "lock", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The group write that carried this append failed (e.g. disk full); the
    /// records of the failed write are not in the spool.
    #[error("spool: cannot write records to {path}")]
    Write {
        /// The segment file.
        path: PathBuf,
        /// The operating system's error, shared by the appenders of that write.
        #[source]
        source: Arc<io::Error>,
    },
    /// A record or batch larger than the spool can ever hold.
    #[error(
        "spool: {size} bytes cannot be appended (largest record {max_record}, largest batch {max_batch})"
    )]
    TooLarge {
        /// Frame bytes of what was appended.
        size: u64,
        /// Largest payload of one record.
        max_record: u64,
        /// Largest batch in frame bytes (`max_bytes`).
        max_batch: u64,
    },
    /// [`Spool::close`] was called.
    #[error("spool: append after close")]
    Closed,
    /// [`Spool::reader`] while another reader is alive.
    #[error("spool: a reader is already taken")]
    ReaderInUse,
}

impl SpoolError {
    /// Whether trying the same operation again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SpoolError::Io { .. } | SpoolError::Write { .. })
    }
}

/// Counters and gauges of a spool, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Frame bytes held: segment files on disk, or records in memory.
    pub bytes: u64,
    /// The bound on `bytes`.
    pub max_bytes: u64,
    /// Records appended and not yet acknowledged (in flight included). On
    /// disk after a restart this is computed from ids, so it counts records
    /// lost to damage until the reader reaches them.
    pub pending_records: u64,
    /// Records delivered and neither acknowledged nor dropped.
    pub in_flight: u64,
    /// Append time of the oldest record not yet acknowledged.
    pub oldest_unacked: Option<SystemTime>,
    /// Records lost to damage found in the middle of a segment.
    pub corrupt_records_skipped: u64,
    /// Torn tails cut at start-up.
    pub torn_tails_cut: u64,
    /// Stray temp files removed at start-up.
    pub temp_files_removed: u64,
    /// Records the checkpoint named delivered-but-unacknowledged, delivered
    /// again after the restart.
    pub redelivered_after_restart: u64,
    /// Deliveries dropped without `ack`, put back for delivery.
    pub returned_unacked: u64,
    /// Segment files (0 in memory).
    pub segments: u64,
    /// Appenders now waiting for space (backpressure in effect).
    pub appenders_waiting: u64,
}

/// A spool: owns the directory lock (if on disk) and hands out the writer and
/// the reader. Cloning is cheap and shares the spool.
#[derive(Clone)]
pub struct Spool {
    shared: Arc<Shared>,
}

/// Appends records. Cloneable, `Send + Sync`; one per watcher thread or
/// shared.
#[derive(Clone)]
pub struct SpoolWriter {
    shared: Arc<Shared>,
}

/// The single consumer: takes records as [`Delivery`] leases.
pub struct SpoolReader {
    shared: Arc<Shared>,
}

/// A record lent to the publisher. [`Delivery::ack`] removes it from the
/// spool; dropping it without `ack` makes it deliverable again.
pub struct Delivery {
    id: u64,
    payload: Vec<u8>,
    appended_at_micros: u64,
    shared: Arc<Shared>,
    settled: bool,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.id)
            .field("len", &self.payload.len())
            .finish()
    }
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, applying the recovery
    /// rules. Fails with [`SpoolError::Locked`] if another spool holds it.
    pub fn open(dir: impl AsRef<Path>, options: SpoolOptions) -> Result<Spool, SpoolError> {
        let dir = dir.as_ref().to_owned();
        let found = recovery::recover(&dir)?;
        let segments: VecDeque<Segment> = found
            .segments
            .iter()
            .map(|s| Segment {
                first_id: s.first_id,
                len: s.len,
                first_appended_at: s.first_appended_at,
                synced: true,
            })
            .collect();
        let first_id = segments.front().map_or(found.next_id, |s| s.first_id);
        let checkpoint = found.checkpoint.unwrap_or_default();
        let disk = DiskState {
            dir: dir.clone(),
            _lock: found.lock,
            segments,
            active: None,
            pending: Vec::new(),
            pending_records: 0,
            pending_appenders: 0,
            pending_first_at: None,
            pending_gen: 0,
            writing: false,
            done_gen: 0,
            results: HashMap::new(),
            followers: 0,
            spare: Vec::new(),
            reader_segment: None,
            reader_offset: 0,
            restart_read_through: checkpoint.read_through,
            restart_unacked: checkpoint.unacked.into_iter().collect(),
            checkpoint_dirty: false,
            last_checkpoint: Instant::now(),
        };
        let stats = SpoolStats {
            torn_tails_cut: found.torn_tails_cut,
            temp_files_removed: found.temp_files_removed,
            ..SpoolStats::default()
        };
        let bytes = disk.segments.iter().map(|s| s.len).sum();
        let segment_bytes = options
            .segment_bytes
            .unwrap_or((options.max_bytes / 8).min(MAX_SEGMENT_BYTES))
            .max(HEADER_LEN as u64);
        let state = State::new(
            bytes,
            found.next_id,
            first_id,
            stats,
            Backend::Disk(Box::new(disk)),
        );
        Ok(Spool {
            shared: Shared::new(state, options, segment_bytes, Some(dir)),
        })
    }

    /// A bounded spool in memory with the same interface: records are lost
    /// with the process (used when `SPOOL_DIR` is unset).
    pub fn in_memory(max_bytes: u64) -> Spool {
        let state = State::new(
            0,
            0,
            0,
            SpoolStats::default(),
            Backend::Memory(VecDeque::new()),
        );
        let options = SpoolOptions::with_max_bytes(max_bytes);
        Spool {
            shared: Shared::new(state, options, u64::MAX, None),
        }
    }

    /// On disk in `config.dir`, or in memory when it is `None`.
    pub fn from_config(config: &crate::config::SpoolConfig) -> Result<Spool, SpoolError> {
        match &config.dir {
            Some(dir) => Spool::open(dir, SpoolOptions::with_max_bytes(config.max_bytes)),
            None => Ok(Spool::in_memory(config.max_bytes)),
        }
    }

    /// The spool directory; `None` in memory.
    pub fn dir(&self) -> Option<&Path> {
        self.shared.dir.as_deref()
    }

    /// A writer (cheap; as many as wanted).
    pub fn writer(&self) -> SpoolWriter {
        SpoolWriter {
            shared: self.shared.clone(),
        }
    }

    /// The reader; [`SpoolError::ReaderInUse`] while another one is alive.
    /// A new reader continues where the last one stopped.
    pub fn reader(&self) -> Result<SpoolReader, SpoolError> {
        if self.shared.reader_taken.swap(true, Ordering::AcqRel) {
            return Err(SpoolError::ReaderInUse);
        }
        Ok(SpoolReader {
            shared: self.shared.clone(),
        })
    }

    /// Current counters and gauges.
    pub fn stats(&self) -> SpoolStats {
        self.shared.stats()
    }

    /// Makes every append so far and the acknowledgement progress durable
    /// against power loss (fsync of segments, checkpoint and directory). A
    /// no-op in memory. Called at shutdown.
    pub fn sync(&self) -> Result<(), SpoolError> {
        self.shared.sync()
    }

    /// Refuses further appends ([`SpoolError::Closed`]) and wakes appenders
    /// waiting for space, so watcher threads can stop; the reader still
    /// drains what is held.
    pub fn close(&self) {
        let mut st = self.shared.lock();
        st.closed = true;
        drop(st);
        self.shared.space.notify_all();
        self.shared.space_async.notify_waiters();
    }
}

impl SpoolWriter {
    /// Appends one record; returns its id once its bytes are with the kernel.
    /// Blocks while the spool is full.
    pub fn append(&self, payload: &[u8]) -> Result<u64, SpoolError> {
        self.append_batch(&[payload]).map(|ids| ids.start)
    }

    /// Appends records with consecutive ids in one write; returns their ids.
    /// Blocks while the spool is full.
    pub fn append_batch<T: AsRef<[u8]>>(&self, payloads: &[T]) -> Result<Range<u64>, SpoolError> {
        let need = self.shared.check_size(payloads)?;
        let mut st = self.shared.lock();
        loop {
            if st.closed {
                return Err(SpoolError::Closed);
            }
            if st.has_space(need, self.shared.max_bytes) {
                break;
            }
            st.space_waiters += 1;
            self.shared.reclaim(&mut st);
            if !st.has_space(need, self.shared.max_bytes) {
                st = self
                    .shared
                    .space
                    .wait(st)
                    .unwrap_or_else(|e| e.into_inner());
            }
            st.space_waiters -= 1;
        }
        self.shared.commit(st, payloads, need)
    }

    /// [`append`](Self::append) for async code: waiting for space yields to
    /// the runtime (a tokio `Notify`) instead of blocking the thread, so other
    /// tasks of a current-thread runtime keep running. The write itself is a
    /// short blocking write(2) done inline.
    pub async fn append_async(&self, payload: &[u8]) -> Result<u64, SpoolError> {
        self.append_batch_async(&[payload])
            .await
            .map(|ids| ids.start)
    }

    /// [`append_batch`](Self::append_batch) for async code; see
    /// [`append_async`](Self::append_async).
    pub async fn append_batch_async<T: AsRef<[u8]>>(
        &self,
        payloads: &[T],
    ) -> Result<Range<u64>, SpoolError> {
        let need = self.shared.check_size(payloads)?;
        loop {
            let notified = self.shared.space_async.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.shared.lock();
                if st.closed {
                    return Err(SpoolError::Closed);
                }
                if st.has_space(need, self.shared.max_bytes) {
                    return self.shared.commit(st, payloads, need);
                }
                st.space_waiters += 1;
                self.shared.reclaim(&mut st);
            }
            notified.await;
            self.shared.lock().space_waiters -= 1;
        }
    }

    /// Current counters and gauges.
    pub fn stats(&self) -> SpoolStats {
        self.shared.stats()
    }
}

impl SpoolReader {
    /// Up to `max_records` records: records put back by a dropped
    /// [`Delivery`] first, then new ones in append order. Waits up to
    /// `max_wait` for the first; returns an empty batch after that.
    pub fn next_batch(
        &mut self,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<Vec<Delivery>, SpoolError> {
        let deadline = Instant::now() + max_wait.min(MAX_WAIT);
        loop {
            self.shared.checkpoint_if_due();
            let batch = self.shared.try_batch(max_records)?;
            if !batch.is_empty() || max_records == 0 {
                return Ok(batch);
            }
            let mut st = self.shared.lock();
            if self.shared.available(&st) {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(batch);
            }
            st.reader_waiting = true;
            let (mut st, _) = self
                .shared
                .data
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner());
            st.reader_waiting = false;
        }
    }

    /// [`next_batch`](Self::next_batch) for async code: waits with a tokio
    /// `Notify` and timer (the runtime needs its time driver). Reading the
    /// file is a short blocking read(2), usually from the page cache.
    pub async fn next_batch_async(
        &mut self,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<Vec<Delivery>, SpoolError> {
        let deadline = tokio::time::Instant::now() + max_wait.min(MAX_WAIT);
        loop {
            self.shared.checkpoint_if_due();
            let notified = self.shared.data_async.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let batch = self.shared.try_batch(max_records)?;
            if !batch.is_empty() || max_records == 0 {
                return Ok(batch);
            }
            if self.shared.available(&self.shared.lock()) {
                continue;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(batch);
            }
        }
    }

    /// Current counters and gauges.
    pub fn stats(&self) -> SpoolStats {
        self.shared.stats()
    }
}

impl Drop for SpoolReader {
    fn drop(&mut self) {
        self.shared.reader_taken.store(false, Ordering::Release);
    }
}

impl Delivery {
    /// The record's id (assigned at append, increasing in append order).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The record as appended.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// When the record was appended (wall clock, microsecond precision).
    pub fn appended_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.appended_at_micros)
    }

    /// The record was published: it leaves the spool.
    pub fn ack(self) {
        let shared = self.shared.clone();
        shared.ack_all(std::iter::once(self));
    }

    /// Acknowledges many deliveries under one lock.
    pub fn ack_all(deliveries: impl IntoIterator<Item = Delivery>) {
        let mut iter = deliveries.into_iter().peekable();
        let Some(first) = iter.peek() else { return };
        let shared = first.shared.clone();
        shared.ack_all(iter);
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if !self.settled {
            let payload = std::mem::take(&mut self.payload);
            self.shared
                .put_back(self.id, payload, self.appended_at_micros);
        }
    }
}

// ---------------------------------------------------------------------------
// Internals.

/// A record held in memory: queued (in memory) or put back after a drop.
struct Held {
    payload: Vec<u8>,
    appended_at_micros: u64,
}

/// A segment file.
#[derive(Debug, Clone)]
struct Segment {
    first_id: u64,
    /// Bytes written and readable (for the last segment: up to the last
    /// complete group write).
    len: u64,
    first_appended_at: Option<u64>,
    /// No write since the last fsync.
    synced: bool,
}

enum Backend {
    /// Records not yet delivered.
    Memory(VecDeque<(u64, Held)>),
    Disk(Box<DiskState>),
}

struct DiskState {
    dir: PathBuf,
    /// Holds the directory lock for the life of the spool.
    _lock: File,
    segments: VecDeque<Segment>,
    /// The file of the last segment while this process appends to it.
    active: Option<Arc<File>>,
    // Group commit: frames copied in by appenders, written by one leader.
    pending: Vec<u8>,
    pending_records: u64,
    pending_appenders: usize,
    pending_first_at: Option<u64>,
    /// Generation now filling `pending`; generations are written in order.
    pending_gen: u64,
    /// A leader is writing a generation.
    writing: bool,
    /// Generations below this one are written (or failed).
    done_gen: u64,
    /// Outcome of written generations for appenders not yet woken: (first
    /// id or error, appenders still to read it).
    results: HashMap<u64, (Result<u64, SpoolError>, usize)>,
    /// Appenders waiting for a leader.
    followers: usize,
    spare: Vec<u8>,
    /// Segment the reader is in (first id), `None` before the first.
    reader_segment: Option<u64>,
    /// Offset of the reader in that segment.
    reader_offset: u64,
    /// From the checkpoint found at start-up: ids below this one not in
    /// `restart_unacked` were acknowledged before the restart.
    restart_read_through: u64,
    restart_unacked: BTreeSet<u64>,
    checkpoint_dirty: bool,
    last_checkpoint: Instant,
}

struct State {
    closed: bool,
    bytes: u64,
    /// Id of the next record (disk: assigned when a generation is written).
    next_id: u64,
    /// Ids below this one were read by the reader (delivered or skipped).
    reader_next_id: u64,
    /// Delivered, not acknowledged (in flight or put back): id → appended at.
    outstanding: BTreeMap<u64, u64>,
    /// Put back by a dropped delivery, to be delivered first.
    put_back: BTreeMap<u64, Held>,
    /// Appended at of the oldest record not yet read (disk).
    unread_head_at: Option<u64>,
    space_waiters: usize,
    reader_waiting: bool,
    stats: SpoolStats,
    backend: Backend,
}

impl State {
    fn new(
        bytes: u64,
        next_id: u64,
        reader_next_id: u64,
        stats: SpoolStats,
        backend: Backend,
    ) -> State {
        State {
            closed: false,
            bytes,
            next_id,
            reader_next_id,
            outstanding: BTreeMap::new(),
            put_back: BTreeMap::new(),
            unread_head_at: None,
            space_waiters: 0,
            reader_waiting: false,
            stats,
            backend,
        }
    }

    /// Room for `need` more bytes; an empty spool always has room, so a batch
    /// up to `max_bytes` never waits forever.
    fn has_space(&self, need: u64, max_bytes: u64) -> bool {
        self.bytes == 0 || self.bytes + need <= max_bytes
    }
}

struct Shared {
    state: Mutex<State>,
    /// Appenders waiting for space.
    space: Condvar,
    /// Appenders waiting for their group write.
    written: Condvar,
    /// The reader waiting for records.
    data: Condvar,
    space_async: Notify,
    data_async: Notify,
    /// The reader's open segment (disk); only the reader locks it.
    cursor: Mutex<Cursor>,
    reader_taken: AtomicBool,
    /// Orders checkpoint writers.
    checkpoint_lock: Mutex<()>,
    dir: Option<PathBuf>,
    max_bytes: u64,
    segment_bytes: u64,
    checkpoint_interval: Duration,
}

#[derive(Default)]
struct Cursor {
    open: Option<(u64, FrameReader)>,
    /// Id the next intact frame should carry; a larger one means records were
    /// lost to damage.
    expected_id: Option<u64>,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Shared {
    fn new(
        state: State,
        options: SpoolOptions,
        segment_bytes: u64,
        dir: Option<PathBuf>,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            state: Mutex::new(state),
            space: Condvar::new(),
            written: Condvar::new(),
            data: Condvar::new(),
            space_async: Notify::new(),
            data_async: Notify::new(),
            cursor: Mutex::new(Cursor::default()),
            reader_taken: AtomicBool::new(false),
            checkpoint_lock: Mutex::new(()),
            dir,
            max_bytes: options.max_bytes,
            segment_bytes,
            checkpoint_interval: options.checkpoint_interval,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves consistent counters
        // (every update is a few assignments); keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Frame bytes of a batch, or why it can never fit.
    fn check_size<T: AsRef<[u8]>>(&self, payloads: &[T]) -> Result<u64, SpoolError> {
        let need: u64 = payloads
            .iter()
            .map(|p| (HEADER_LEN + p.as_ref().len()) as u64)
            .sum();
        let largest = payloads.iter().map(|p| p.as_ref().len()).max().unwrap_or(0);
        if largest > MAX_PAYLOAD || need > self.max_bytes {
            return Err(SpoolError::TooLarge {
                size: need,
                max_record: MAX_PAYLOAD as u64,
                max_batch: self.max_bytes,
            });
        }
        Ok(need)
    }

    fn wake_space(&self, st: &State) {
        if st.space_waiters > 0 {
            self.space.notify_all();
            self.space_async.notify_waiters();
        }
    }

    fn wake_reader(&self, st: &State) {
        if st.reader_waiting {
            self.data.notify_one();
        }
        self.data_async.notify_waiters();
    }

    /// Adds a batch that has room; returns once it is written.
    fn commit<'a, T: AsRef<[u8]>>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        payloads: &[T],
        need: u64,
    ) -> Result<Range<u64>, SpoolError> {
        let count = payloads.len() as u64;
        if count == 0 {
            return Ok(st.next_id..st.next_id);
        }
        let at = now_micros();
        st.bytes += need;
        let st_ref = &mut *st;
        let disk = match &mut st_ref.backend {
            Backend::Memory(queue) => {
                let first = st_ref.next_id;
                for (i, p) in payloads.iter().enumerate() {
                    queue.push_back((
                        first + i as u64,
                        Held {
                            payload: p.as_ref().to_vec(),
                            appended_at_micros: at,
                        },
                    ));
                }
                st_ref.next_id += count;
                self.wake_reader(&st);
                return Ok(first..first + count);
            }
            Backend::Disk(disk) => disk,
        };
        let generation = disk.pending_gen;
        let offset = disk.pending_records;
        disk.pending.reserve(need as usize);
        for p in payloads {
            format::push_unsealed(&mut disk.pending, p.as_ref(), at);
        }
        disk.pending_records += count;
        disk.pending_appenders += 1;
        disk.pending_first_at.get_or_insert(at);
        loop {
            let Backend::Disk(disk) = &mut st.backend else {
                unreachable!("disk backend")
            };
            if disk.done_gen > generation {
                let entry = disk
                    .results
                    .get_mut(&generation)
                    .expect("result of a written generation");
                entry.1 -= 1;
                let result = if entry.1 == 0 {
                    disk.results.remove(&generation).expect("present").0
                } else {
                    clone_result(&entry.0)
                };
                return result.map(|first| first + offset..first + offset + count);
            }
            if !disk.writing {
                // Leader: this generation is the oldest unwritten one.
                let (result, _unlock) = self.write_generation(st);
                return result.map(|first| first + offset..first + offset + count);
            }
            disk.followers += 1;
            st = self.written.wait(st).unwrap_or_else(|e| e.into_inner());
            let Backend::Disk(disk) = &mut st.backend else {
                unreachable!("disk backend")
            };
            disk.followers -= 1;
        }
    }

    /// Writes the pending generation with one write(2), outside the lock.
    fn write_generation<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
    ) -> (Result<u64, SpoolError>, MutexGuard<'a, State>) {
        let first_id = st.next_id;
        let Backend::Disk(disk) = &mut st.backend else {
            unreachable!("disk backend")
        };
        let generation = disk.pending_gen;
        let spare = std::mem::take(&mut disk.spare);
        let mut buf = std::mem::replace(&mut disk.pending, spare);
        let count = std::mem::take(&mut disk.pending_records);
        let appenders = std::mem::take(&mut disk.pending_appenders);
        let first_at = disk.pending_first_at.take();
        disk.pending_gen += 1;
        disk.writing = true;
        let last_len = disk.segments.back().map_or(0, |s| s.len);
        let active = disk
            .active
            .clone()
            .filter(|_| last_len < self.segment_bytes);
        let path = match &active {
            Some(_) => segment_path(
                &disk.dir,
                disk.segments.back().expect("active segment").first_id,
            ),
            None => segment_path(&disk.dir, first_id),
        };
        st.next_id += count;
        drop(st);

        format::seal_frames(&mut buf, first_id);
        let rolled = active.is_none();
        let outcome = match active {
            Some(file) => (&*file)
                .write_all(&buf)
                .map(|()| file)
                .map_err(|e| (e, "write segment")),
            None => OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)
                .map_err(|e| (e, "create segment"))
                .and_then(|f| {
                    (&f).write_all(&buf).map_err(|e| (e, "write segment"))?;
                    Ok(Arc::new(f))
                }),
        };

        let mut st = self.lock();
        let written = buf.len() as u64;
        let result = match outcome {
            Ok(file) => {
                let Backend::Disk(disk) = &mut st.backend else {
                    unreachable!("disk backend")
                };
                if rolled {
                    disk.segments.push_back(Segment {
                        first_id,
                        len: written,
                        first_appended_at: first_at,
                        synced: false,
                    });
                    disk.active = Some(file);
                } else {
                    let last = disk.segments.back_mut().expect("active segment");
                    last.len += written;
                    last.synced = false;
                }
                if st.unread_head_at.is_none() {
                    st.unread_head_at = first_at;
                }
                self.wake_reader(&st);
                Ok(first_id)
            }
            Err((source, op)) => {
                warn!(path = %path.display(), error = %source, records = count, "spool: {op} failed");
                // Nothing of this generation counts: give the ids and the
                // space back, and cut any partial write off the file.
                st.next_id = first_id;
                st.bytes -= written;
                let Backend::Disk(disk) = &mut st.backend else {
                    unreachable!("disk backend")
                };
                if rolled {
                    let _ = fs::remove_file(&path);
                } else if let Some(file) = disk.active.take()
                    && file.set_len(last_len).is_ok()
                {
                    disk.active = Some(file);
                }
                self.wake_space(&st);
                Err(SpoolError::Write {
                    path,
                    source: Arc::new(source),
                })
            }
        };
        let Backend::Disk(disk) = &mut st.backend else {
            unreachable!("disk backend")
        };
        disk.writing = false;
        disk.done_gen = generation + 1;
        if appenders > 1 {
            disk.results
                .insert(generation, (clone_result(&result), appenders - 1));
        }
        if buf.capacity() <= KEEP_BUFFER && disk.spare.capacity() == 0 {
            buf.clear();
            disk.spare = buf;
        }
        if disk.followers > 0 {
            self.written.notify_all();
        }
        (result, st)
    }

    /// Whether the reader would find a record now.
    fn available(&self, st: &State) -> bool {
        if !st.put_back.is_empty() {
            return true;
        }
        match &st.backend {
            Backend::Memory(queue) => !queue.is_empty(),
            Backend::Disk(disk) => match disk.reader_segment {
                None => !disk.segments.is_empty(),
                Some(current) => disk.segments.iter().any(|s| {
                    s.first_id > current || (s.first_id == current && s.len > disk.reader_offset)
                }),
            },
        }
    }

    fn delivery(self: &Arc<Self>, id: u64, payload: Vec<u8>, appended_at_micros: u64) -> Delivery {
        Delivery {
            id,
            payload,
            appended_at_micros,
            shared: self.clone(),
            settled: false,
        }
    }

    /// Whatever can be delivered now, without waiting.
    fn try_batch(self: &Arc<Self>, max: usize) -> Result<Vec<Delivery>, SpoolError> {
        let mut out = Vec::new();
        let mut st = self.lock();
        while out.len() < max {
            let Some((id, held)) = st.put_back.pop_first() else {
                break;
            };
            out.push(self.delivery(id, held.payload, held.appended_at_micros));
        }
        let st_ref = &mut *st;
        if let Backend::Memory(queue) = &mut st_ref.backend {
            while out.len() < max {
                let Some((id, held)) = queue.pop_front() else {
                    break;
                };
                st_ref.outstanding.insert(id, held.appended_at_micros);
                st_ref.reader_next_id = id + 1;
                out.push(self.delivery(id, held.payload, held.appended_at_micros));
            }
            return Ok(out);
        }
        drop(st);
        if out.len() < max {
            self.read_disk(&mut out, max)?;
        }
        Ok(out)
    }

    /// Reads new records from the segment files into `out`.
    fn read_disk(self: &Arc<Self>, out: &mut Vec<Delivery>, max: usize) -> Result<(), SpoolError> {
        /// What the reader does next, decided under the state lock.
        enum Step {
            /// Read the open segment up to this offset.
            Read(u64),
            /// Open the segment with this first id.
            Move(u64),
            /// Everything written so far is read.
            CaughtUp,
        }
        let mut cursor = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
        let cursor = &mut *cursor;
        let mut frames: Vec<(u64, u64, Vec<u8>)> = Vec::new();
        loop {
            let limit = {
                let mut guard = self.lock();
                let st = &mut *guard;
                let Backend::Disk(disk) = &mut st.backend else {
                    unreachable!("disk backend")
                };
                let current = cursor.open.as_ref().map(|(first, _)| *first);
                let index =
                    current.and_then(|c| disk.segments.iter().position(|s| s.first_id == c));
                let step = match index {
                    Some(i) if disk.segments[i].len > disk.reader_offset => {
                        Step::Read(disk.segments[i].len)
                    }
                    Some(i) => disk
                        .segments
                        .get(i + 1)
                        .map_or(Step::CaughtUp, |s| Step::Move(s.first_id)),
                    // Not started yet, or the segment was reclaimed while the
                    // reader was at its end: the first segment after it.
                    None => disk
                        .segments
                        .iter()
                        .find(|s| disk.reader_segment.is_none_or(|r| s.first_id > r))
                        .map_or(Step::CaughtUp, |s| Step::Move(s.first_id)),
                };
                match step {
                    Step::Read(limit) => limit,
                    Step::Move(first_id) => {
                        self.move_to(cursor, disk, first_id)?;
                        self.reclaim(st);
                        continue;
                    }
                    Step::CaughtUp => {
                        st.unread_head_at = None;
                        return Ok(());
                    }
                }
            };
            let (first_id, reader) = cursor.open.as_mut().expect("open segment");
            let read_error = |source| SpoolError::Io {
                op: "read segment",
                path: segment_path(self.dir.as_deref().unwrap_or(Path::new("")), *first_id),
                source,
            };
            let mut ended = false;
            while out.len() + frames.len() < max {
                let next = reader.next(limit).map_err(read_error)?;
                let Some((frame, payload)) = next else {
                    ended = true;
                    break;
                };
                frames.push((frame.id, frame.appended_at_micros, payload.to_vec()));
            }
            // A file shorter than its recorded length ends here too.
            let offset = if ended { limit } else { reader.offset() };
            let head = if offset < limit {
                reader.peek_appended_at(limit).ok().flatten()
            } else {
                None
            };
            let mut guard = self.lock();
            let st = &mut *guard;
            self.accept(st, cursor, &mut frames, out);
            let Backend::Disk(disk) = &mut st.backend else {
                unreachable!("disk backend")
            };
            disk.reader_offset = offset;
            if out.len() >= max {
                let index = disk
                    .segments
                    .iter()
                    .position(|s| Some(s.first_id) == disk.reader_segment);
                st.unread_head_at = match index {
                    _ if offset < limit => head,
                    // Written after `limit` was taken: about now.
                    Some(i) if disk.segments[i].len > offset => {
                        st.unread_head_at.or(Some(now_micros()))
                    }
                    Some(i) => disk.segments.get(i + 1).and_then(|s| s.first_appended_at),
                    None => None,
                };
                return Ok(());
            }
        }
    }

    /// Opens the segment `first_id` for the reader.
    fn move_to(
        &self,
        cursor: &mut Cursor,
        disk: &mut DiskState,
        first_id: u64,
    ) -> Result<(), SpoolError> {
        let path = segment_path(&disk.dir, first_id);
        let reader = FrameReader::open(path.clone()).map_err(|source| SpoolError::Io {
            op: "open segment",
            path,
            source,
        })?;
        if let Some((_, old)) = &cursor.open
            && old.garbage_bytes > 0
        {
            warn!(path = %old.path().display(), bytes = old.garbage_bytes, "spool: stepped over damaged bytes");
        }
        cursor.open = Some((first_id, reader));
        cursor.expected_id.get_or_insert(first_id);
        disk.reader_segment = Some(first_id);
        disk.reader_offset = 0;
        Ok(())
    }

    /// Turns frames read into deliveries, applying the gap count and the
    /// restart filter.
    fn accept(
        self: &Arc<Self>,
        st: &mut State,
        cursor: &mut Cursor,
        frames: &mut Vec<(u64, u64, Vec<u8>)>,
        out: &mut Vec<Delivery>,
    ) {
        let Backend::Disk(disk) = &mut st.backend else {
            unreachable!("disk backend")
        };
        for (id, at, payload) in frames.drain(..) {
            let expected = cursor.expected_id.unwrap_or(id);
            if id < expected {
                continue; // a stale copy found while stepping over damage
            }
            if id > expected {
                let lost = id - expected;
                warn!(
                    first_id = expected,
                    records = lost,
                    "spool: records lost to damage skipped"
                );
                st.stats.corrupt_records_skipped += lost;
            }
            cursor.expected_id = Some(id + 1);
            st.reader_next_id = id + 1;
            disk.checkpoint_dirty = true;
            if id < disk.restart_read_through {
                if !disk.restart_unacked.remove(&id) {
                    continue; // acknowledged before the restart
                }
                st.stats.redelivered_after_restart += 1;
            }
            st.outstanding.insert(id, at);
            out.push(self.delivery(id, payload, at));
        }
        if st.reader_next_id >= disk.restart_read_through && !disk.restart_unacked.is_empty() {
            // Ids the checkpoint named that no segment holds any more.
            disk.restart_unacked.clear();
        }
    }

    fn put_back(&self, id: u64, payload: Vec<u8>, appended_at_micros: u64) {
        let mut st = self.lock();
        st.put_back.insert(
            id,
            Held {
                payload,
                appended_at_micros,
            },
        );
        st.stats.returned_unacked += 1;
        self.wake_reader(&st);
    }

    fn ack_all(&self, deliveries: impl Iterator<Item = Delivery>) {
        let mut guard = self.lock();
        let st = &mut *guard;
        let mut oldest_acked = false;
        for mut delivery in deliveries {
            delivery.settled = true;
            let first = st.outstanding.first_key_value().map(|(id, _)| *id);
            if st.outstanding.remove(&delivery.id).is_none() {
                continue;
            }
            oldest_acked |= first == Some(delivery.id);
            match &mut st.backend {
                Backend::Memory(_) => st.bytes -= (HEADER_LEN + delivery.payload.len()) as u64,
                Backend::Disk(disk) => disk.checkpoint_dirty = true,
            }
        }
        if oldest_acked {
            self.reclaim(st);
        }
        self.wake_space(st);
        drop(guard);
        self.checkpoint_if_due();
    }

    /// Writes the checkpoint if progress was made and the interval passed.
    fn checkpoint_if_due(&self) {
        let due = match &self.lock().backend {
            Backend::Disk(disk) => {
                disk.checkpoint_dirty && disk.last_checkpoint.elapsed() >= self.checkpoint_interval
            }
            Backend::Memory(_) => false,
        };
        if due {
            self.checkpoint(false);
        }
    }

    /// Deletes leading segments whose records are all acknowledged and that
    /// the reader has left (or, while appenders wait for space, finished).
    fn reclaim(&self, st: &mut State) {
        let oldest_outstanding = st.outstanding.first_key_value().map(|(id, _)| *id);
        let next_id = st.next_id;
        let waiting = st.space_waiters > 0;
        let Backend::Disk(disk) = &mut st.backend else {
            return;
        };
        let mut freed = 0;
        while let Some(front) = disk.segments.front() {
            let is_last = disk.segments.len() == 1;
            let end_id = disk.segments.get(1).map_or(next_id, |s| s.first_id);
            let reader_done = match disk.reader_segment {
                Some(r) if r > front.first_id => true,
                // The segment being appended to, finished by the reader: only
                // worth a new file when appenders wait for its space.
                Some(r) => {
                    r == front.first_id
                        && is_last
                        && waiting
                        && !disk.writing
                        && disk.reader_offset == front.len
                }
                None => false,
            };
            if !reader_done || oldest_outstanding.is_some_and(|id| id < end_id) {
                break;
            }
            let path = segment_path(&disk.dir, front.first_id);
            if let Err(error) = fs::remove_file(&path)
                && error.kind() != io::ErrorKind::NotFound
            {
                warn!(path = %path.display(), %error, "spool: cannot delete acknowledged segment");
            }
            freed += front.len;
            disk.segments.pop_front();
            if is_last {
                disk.active = None;
            }
        }
        st.bytes -= freed;
        if freed > 0 {
            self.wake_space(st);
        }
    }

    /// Replaces the checkpoint file (disk only); with `durable`, fsyncs it
    /// and the directory.
    fn checkpoint(&self, durable: bool) -> Option<io::Error> {
        let _order = self
            .checkpoint_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (dir, bytes) = {
            let mut st = self.lock();
            let reader_next_id = st.reader_next_id;
            let mut unacked: Vec<u64> = st.outstanding.keys().copied().collect();
            let Backend::Disk(disk) = &mut st.backend else {
                return None;
            };
            unacked.extend(disk.restart_unacked.iter().copied());
            unacked.sort_unstable();
            disk.checkpoint_dirty = false;
            disk.last_checkpoint = Instant::now();
            let checkpoint = Checkpoint {
                read_through: reader_next_id.max(disk.restart_read_through),
                unacked,
            };
            (disk.dir.clone(), checkpoint.encode())
        };
        let tmp = dir.join(format!("{CHECKPOINT_FILE}{TEMP_SUFFIX}"));
        let write = || -> io::Result<()> {
            let mut file = File::create(&tmp)?;
            file.write_all(&bytes)?;
            if durable {
                file.sync_all()?;
            }
            fs::rename(&tmp, dir.join(CHECKPOINT_FILE))?;
            if durable {
                File::open(&dir)?.sync_all()?;
            }
            Ok(())
        };
        let result = write().err();
        if let Some(error) = &result {
            warn!(path = %tmp.display(), %error, "spool: cannot write checkpoint");
            if let Backend::Disk(disk) = &mut self.lock().backend {
                disk.checkpoint_dirty = true;
            }
        }
        result
    }

    fn sync(&self) -> Result<(), SpoolError> {
        let (dir, unsynced) = {
            let st = self.lock();
            let Backend::Disk(disk) = &st.backend else {
                return Ok(());
            };
            let unsynced: Vec<u64> = disk
                .segments
                .iter()
                .filter(|s| !s.synced)
                .map(|s| s.first_id)
                .collect();
            (disk.dir.clone(), unsynced)
        };
        for first_id in &unsynced {
            let path = segment_path(&dir, *first_id);
            match File::open(&path).and_then(|f| f.sync_data()) {
                Ok(()) => {}
                // Reclaimed meanwhile: nothing to make durable.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(SpoolError::Io {
                        op: "sync segment",
                        path,
                        source,
                    });
                }
            }
        }
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| SpoolError::Io {
                op: "sync directory",
                path: dir.clone(),
                source,
            })?;
        if let Some(source) = self.checkpoint(true) {
            return Err(SpoolError::Io {
                op: "write checkpoint",
                path: dir.join(CHECKPOINT_FILE),
                source,
            });
        }
        let mut st = self.lock();
        if let Backend::Disk(disk) = &mut st.backend {
            // A segment written after the sync started stays unsynced: only
            // the last one can be, and it is synced again next time.
            let last = disk.segments.back().map(|s| s.first_id);
            for segment in disk
                .segments
                .iter_mut()
                .filter(|s| unsynced.contains(&s.first_id) && Some(s.first_id) != last)
            {
                segment.synced = true;
            }
        }
        Ok(())
    }

    fn stats(&self) -> SpoolStats {
        let st = self.lock();
        let mut stats = st.stats.clone();
        stats.bytes = st.bytes;
        stats.max_bytes = self.max_bytes;
        stats.appenders_waiting = st.space_waiters as u64;
        stats.in_flight = (st.outstanding.len() - st.put_back.len()) as u64;
        let oldest_outstanding = st.outstanding.values().next().copied();
        let (head, pending) = match &st.backend {
            Backend::Memory(queue) => (
                queue.front().map(|(_, h)| h.appended_at_micros),
                queue.len() as u64,
            ),
            Backend::Disk(disk) => {
                stats.segments = disk.segments.len() as u64;
                let unread = st
                    .next_id
                    .saturating_sub(st.reader_next_id.max(disk.restart_read_through))
                    + disk.restart_unacked.len() as u64;
                (st.unread_head_at, unread)
            }
        };
        stats.pending_records = pending + st.outstanding.len() as u64;
        stats.oldest_unacked = [oldest_outstanding, head]
            .into_iter()
            .flatten()
            .min()
            .map(|micros| UNIX_EPOCH + Duration::from_micros(micros));
        stats
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Last handle gone: record progress so a restart re-delivers little.
        self.checkpoint(false);
    }
}

fn clone_result(result: &Result<u64, SpoolError>) -> Result<u64, SpoolError> {
    match result {
        Ok(first) => Ok(*first),
        Err(SpoolError::Write { path, source }) => Err(SpoolError::Write {
            path: path.clone(),
            source: source.clone(),
        }),
        Err(_) => unreachable!("a group write fails only with SpoolError::Write"),
    }
}

#[cfg(test)]
mod tests;

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
//! Progress is kept in `checkpoint`, replaced (write `checkpoint.tmp`, fsync
//! it, rename it over `checkpoint`, fsync the directory) at most every
//! `checkpoint_interval` (100 ms) while acks arrive, and at [`Spool::sync`]
//! and when the spool is dropped:
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
//! What reaches the kernel and what reaches the disk, and when (on disk; in
//! memory everything is lost with the process):
//!
//! | what | handed to the kernel | made durable (fsync) | after `kill -9` | after a power loss |
//! |------|----------------------|----------------------|-----------------|--------------------|
//! | record frames | write(2) before the append returns | at [`Spool::sync`]: each segment written since the last sync, then the directory | kept | written since the last sync: may be lost or torn; recovery cuts a torn tail |
//! | checkpoint | at most every `checkpoint_interval` while acks arrive, at [`Spool::sync`], when the spool is dropped | every time: `checkpoint.tmp` before its rename, the directory after | the last one written: acks after it are delivered again | the last one whose directory fsync returned, or the one before: never empty or torn |
//!
//! Order: [`Spool::sync`] makes the segments durable before it writes the
//! checkpoint. A checkpoint names acknowledged only ids the publisher
//! acknowledged (that is, published), and ids are never reused (recovery rule
//! 5), so whichever of the two reaches the disk first a crash at any instant
//! can only make records be delivered again, never make a record not
//! acknowledged count as acknowledged. The shutdown path calls `sync`.
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
//!
//! A record larger than the spool can ever hold (a frame above `max_bytes`,
//! or a payload above 16 MiB) cannot wait for space: [`SpoolWriter::append_all`]
//! splits a batch larger than the spool into batches that fit and refuses
//! such a record, reporting it in [`Appended::refused`] while the others are
//! appended in order. That rule lives here, not in the callers.
//!
//! # Code map
//!
//! | file | owns |
//! |------|------|
//! | `mod.rs` | these docs; the public types, each a thin handle dispatching once to the backend |
//! | `shared.rs` | the one state lock, the state both backends share, wake-ups, stats, the internal `Backend` trait |
//! | `writer.rs` | appending: size limits, backpressure, `append_all`'s split-then-refuse rule |
//! | `reader.rs` | deliveries: redelivery queue, acks in any order, the reader's waiting |
//! | `memory.rs` | the in-memory variant |
//! | `disk.rs` | the file backend: segments, reading them, reclaiming them, `sync` |
//! | `group_commit.rs` | the appenders' shared buffer and the leader's single write |
//! | `acks.rs` | acknowledgement progress on disk: restart filter, checkpoint scheduling and its durable replacement |
//! | `format.rs` | byte layouts of a frame and of the checkpoint |
//! | `segment.rs` | segment file names and the streaming frame reader |
//! | `recovery.rs` | the recovery rules at open |

mod acks;
mod disk;
mod format;
mod group_commit;
mod memory;
mod reader;
mod recovery;
mod segment;
mod shared;
mod writer;

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use disk::Disk;
use memory::Memory;
use shared::Shared;

pub use writer::APPEND_BATCH_BYTES;

/// Default `max_bytes` (config `spool.max_bytes`).
pub const DEFAULT_MAX_BYTES: u64 = crate::config::DEFAULT_SPOOL_MAX_BYTES;

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

/// What [`SpoolWriter::append_all`] did with each record.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Records appended (all but the refused ones), in order.
    pub appended: usize,
    /// Records larger than this spool can ever hold: not appended, reported here.
    pub refused: Vec<Refused>,
}

/// A record [`SpoolWriter::append_all`] did not append because no spool of
/// this size can ever hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Its position in the records given.
    pub index: usize,
    /// Its length in bytes.
    pub size: usize,
    /// The longest record this spool holds: the lesser of the 16 MiB frame
    /// limit and `max_bytes` less the 28-byte frame header.
    pub max_record: usize,
}

/// Which backend a handle points to. Each public method dispatches on it
/// once; everything below is typed for its backend (`Shared<Disk>` or
/// `Shared<Memory>`), so no backend's code can meet the other's data.
#[derive(Clone)]
enum Handle {
    Disk(Arc<Shared<Disk>>),
    Memory(Arc<Shared<Memory>>),
}

/// Runs `$body` with `$shared` bound to the handle's typed core.
macro_rules! dispatch {
    ($handle:expr, $shared:ident => $body:expr) => {
        match $handle {
            Handle::Disk($shared) => $body,
            Handle::Memory($shared) => $body,
        }
    };
}

/// A spool: owns the directory lock (if on disk) and hands out the writer and
/// the reader. Cloning is cheap and shares the spool.
#[derive(Clone)]
pub struct Spool {
    handle: Handle,
}

/// Appends records. Cloneable, `Send + Sync`; one per watcher thread or
/// shared.
#[derive(Clone)]
pub struct SpoolWriter {
    handle: Handle,
}

/// The single consumer: takes records as [`Delivery`] leases.
pub struct SpoolReader {
    handle: Handle,
}

/// A record lent to the publisher. [`Delivery::ack`] removes it from the
/// spool; dropping it without `ack` makes it deliverable again.
pub struct Delivery {
    id: u64,
    payload: Vec<u8>,
    appended_at_micros: u64,
    handle: Handle,
    settled: bool,
    /// Where the record can be read again ([`Delivery::set_aside`]).
    origin: Origin,
}

/// Where a delivered record lives.
#[derive(Debug, Clone, Copy)]
enum Origin {
    /// Only in the delivery (the in-memory spool, or unknown).
    Memory,
    /// The frame at `offset` of the segment named by `segment`.
    Disk { segment: u64, offset: u64 },
}

/// A record taken out of the publisher's hands without being acknowledged
/// ([`Delivery::set_aside`]): on disk only its id and place are kept, not its
/// bytes, and the record stays in the spool (its segment is not reclaimed)
/// until it is taken back and acknowledged. For a destination that cannot
/// take records for a while (a parked log group) while others go on. A
/// record set aside and dropped is delivered again at the next open.
pub struct SetAside {
    id: u64,
    appended_at_micros: u64,
    handle: Handle,
    origin: Origin,
    /// In memory the bytes have nowhere else to live.
    payload: Option<Vec<u8>>,
}

impl SetAside {
    /// The record's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The record as a delivery again, its bytes read back from its segment
    /// (on disk). An error (the file damaged or gone) keeps it set aside.
    pub fn take_back(mut self) -> Result<Delivery, Box<(SetAside, SpoolError)>> {
        let payload = match self.payload.take() {
            Some(payload) => payload,
            None => match read_from_disk(&self.handle, self.origin, self.id) {
                Ok(payload) => payload,
                Err(error) => return Err(Box::new((self, error))),
            },
        };
        Ok(Delivery {
            id: self.id,
            payload,
            appended_at_micros: self.appended_at_micros,
            handle: self.handle.clone(),
            settled: false,
            origin: self.origin,
        })
    }
}

/// The payload of record `id` read again from its place on disk. A record
/// set aside or received without its bytes always has one: both keep the
/// bytes of a record that lives only in memory.
fn read_from_disk(handle: &Handle, origin: Origin, id: u64) -> Result<Vec<u8>, SpoolError> {
    match (handle, origin) {
        (Handle::Disk(shared), Origin::Disk { segment, offset }) => {
            shared.read_frame_at(segment, offset, id)
        }
        _ => panic!("a record without its bytes has a place on disk"),
    }
}

impl std::fmt::Debug for SetAside {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetAside").field("id", &self.id).finish()
    }
}

/// A [`Delivery`] whose payload is not held ([`Delivery::into_rereadable_receipt`]):
/// enough to acknowledge the record later and to read it again
/// ([`Receipt::read_back`]), its bytes freed when the record is on disk.
/// Dropped unacknowledged, the record is delivered again in this run, like a
/// dropped [`Delivery`]; [`PendingAcks`] holds acknowledgements that must
/// wait for the next open instead.
pub struct Receipt {
    id: u64,
    payload_len: usize,
    handle: Handle,
    origin: Origin,
    appended_at_micros: u64,
    /// Of a record that lives only in memory: its bytes.
    kept: Option<Vec<u8>>,
    /// Acknowledged (or handed to [`PendingAcks`]).
    pub(super) settled: bool,
}

impl Drop for Receipt {
    fn drop(&mut self) {
        if !self.settled {
            let (id, at, origin) = (self.id, self.appended_at_micros, self.origin);
            let (payload, reread) = match self.kept.take() {
                Some(payload) => (payload, false),
                None => (Vec::new(), true),
            };
            dispatch!(&self.handle, s => s.put_back(id, payload, at, origin, reread))
        }
    }
}

impl Receipt {
    /// The record's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Bytes of the record this receipt holds (only when it lives in memory).
    pub fn bytes_held(&self) -> usize {
        self.kept.as_ref().map_or(0, Vec::len)
    }

    /// The record as appended: read again from its segment (it is not
    /// acknowledged, so its segment is kept), or the bytes kept for a
    /// record that lives only in memory.
    pub fn read_back(&self) -> Result<Vec<u8>, SpoolError> {
        match &self.kept {
            Some(payload) => Ok(payload.clone()),
            None => read_from_disk(&self.handle, self.origin, self.id),
        }
    }

    /// Takes the record out of the publisher's hands without acknowledging
    /// it, as [`Delivery::set_aside`] does: for a destination that stops
    /// taking records after they were read (a parked log group).
    pub fn set_aside(mut self) -> SetAside {
        self.settled = true;
        SetAside {
            id: self.id,
            appended_at_micros: self.appended_at_micros,
            handle: self.handle.clone(),
            origin: self.origin,
            payload: self.kept.take(),
        }
    }

    /// Acknowledges many receipts under one lock: their records leave the
    /// spool.
    pub fn ack_all(receipts: impl IntoIterator<Item = Receipt>) {
        let mut iter = receipts.into_iter().peekable();
        let Some(first) = iter.peek() else { return };
        let handle = first.handle.clone();
        dispatch!(&handle, s => s.ack_receipts(iter))
    }
}

/// Acknowledgements held back for a commit of the publisher's own: the
/// records of receipts, by id, 16 bytes each where a receipt is about 100
/// (a second of SPEC §9's log lines is 100,000 of them). Dropped without
/// [`PendingAcks::ack`], its records are not delivered again in this run:
/// on disk they are at the next open; in memory they are lost with the
/// process, like every record there.
#[derive(Default)]
pub struct PendingAcks {
    handle: Option<Handle>,
    records: Vec<(u64, usize)>,
}

impl PendingAcks {
    /// Holds `receipt`'s acknowledgement back: its record is not delivered
    /// again in this run.
    ///
    /// # Panics
    /// For a receipt of another spool than the ones before it: a bug.
    pub fn push(&mut self, mut receipt: Receipt) {
        receipt.settled = true;
        self.of_spool(&receipt.handle);
        self.records.push((receipt.id, receipt.payload_len));
    }

    /// Adds `other`'s acknowledgements after these.
    pub fn append(&mut self, mut other: PendingAcks) {
        if let Some(handle) = &other.handle {
            self.of_spool(handle);
        }
        self.records.append(&mut other.records);
    }

    /// Records that these acknowledgements are of `handle`'s spool (one
    /// lock takes them all).
    fn of_spool(&mut self, handle: &Handle) {
        let own = self.handle.get_or_insert_with(|| handle.clone());
        assert!(
            own.same_spool(handle),
            "pending acknowledgements of two spools"
        );
    }

    /// Records held back.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Acknowledges them all under one lock: their records leave the spool.
    pub fn ack(self) {
        if let Some(handle) = &self.handle {
            dispatch!(handle, s => s.ack_records(self.records.iter().copied()))
        }
    }
}

impl Handle {
    fn same_spool(&self, other: &Handle) -> bool {
        match (self, other) {
            (Handle::Disk(a), Handle::Disk(b)) => Arc::ptr_eq(a, b),
            (Handle::Memory(a), Handle::Memory(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receipt").field("id", &self.id).finish()
    }
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
        let shared = disk::open(dir.as_ref().to_owned(), &options)?;
        Ok(Spool {
            handle: Handle::Disk(shared),
        })
    }

    /// A bounded spool in memory with the same interface: records are lost
    /// with the process (used when `SPOOL_DIR` is unset).
    pub fn in_memory(max_bytes: u64) -> Spool {
        Spool {
            handle: Handle::Memory(memory::open(max_bytes)),
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
        dispatch!(&self.handle, s => s.dir())
    }

    /// A writer (cheap; as many as wanted).
    pub fn writer(&self) -> SpoolWriter {
        SpoolWriter {
            handle: self.handle.clone(),
        }
    }

    /// The reader; [`SpoolError::ReaderInUse`] while another one is alive.
    /// A new reader continues where the last one stopped.
    pub fn reader(&self) -> Result<SpoolReader, SpoolError> {
        let taken = dispatch!(&self.handle, s => s.reader_taken.swap(true, Ordering::AcqRel));
        if taken {
            return Err(SpoolError::ReaderInUse);
        }
        Ok(SpoolReader {
            handle: self.handle.clone(),
        })
    }

    /// Current counters and gauges.
    pub fn stats(&self) -> SpoolStats {
        dispatch!(&self.handle, s => s.stats())
    }

    /// Makes every append so far and the acknowledgement progress durable
    /// against power loss (fsync of segments, checkpoint and directory). A
    /// no-op in memory. Called at shutdown.
    pub fn sync(&self) -> Result<(), SpoolError> {
        dispatch!(&self.handle, s => s.sync())
    }

    /// Refuses further appends ([`SpoolError::Closed`]) and wakes appenders
    /// waiting for space, so watcher threads can stop; the reader still
    /// drains what is held.
    pub fn close(&self) {
        dispatch!(&self.handle, s => s.close())
    }
}

impl SpoolWriter {
    /// Makes every record appended so far durable against power loss
    /// (fsync of the segments written since their last fsync, and of the
    /// directory for a new one), without the acknowledgement checkpoint.
    /// Concurrent callers share one fsync. A no-op in memory. The watchers
    /// call it before a durable commit of their state, so the state never
    /// describes records a power loss could take back (SPEC §3).
    pub fn sync_appends(&self) -> Result<(), SpoolError> {
        dispatch!(&self.handle, s => s.sync_appends())
    }

    /// Appends one record; returns its id once its bytes are with the kernel.
    /// Blocks while the spool is full.
    pub fn append(&self, payload: &[u8]) -> Result<u64, SpoolError> {
        self.append_batch(&[payload]).map(|ids| ids.start)
    }

    /// Appends records with consecutive ids in one write; returns their ids.
    /// Blocks while the spool is full. A batch that can never fit fails with
    /// [`SpoolError::TooLarge`]; [`append_all`](Self::append_all) splits it
    /// instead.
    pub fn append_batch<T: AsRef<[u8]>>(&self, payloads: &[T]) -> Result<Range<u64>, SpoolError> {
        dispatch!(&self.handle, s => s.append_batch(payloads))
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
        dispatch!(&self.handle, s => s.append_batch_async(payloads).await)
    }

    /// Appends `records` in order, in batches of at most
    /// [`APPEND_BATCH_BYTES`] (4 MiB), waiting while the spool is full
    /// (backpressure); a batch larger than the free space a small spool can
    /// ever have is split, and a single record larger than the spool can hold
    /// is refused (counted in [`Appended::refused`]), never an error.
    ///
    /// Errors only for what the caller must handle: [`SpoolError::Closed`],
    /// I/O ([`SpoolError::Write`]) errors. Each batch is appended whole or
    /// not at all; on an error the batches before the failing one are in the
    /// spool and the rest are not, so repeating the whole call may append
    /// records twice (at-least-once).
    pub async fn append_all_async(&self, records: &[Vec<u8>]) -> Result<Appended, SpoolError> {
        dispatch!(&self.handle, s => s.append_all_async(records).await)
    }

    /// The same, blocking (for callers on plain threads).
    pub fn append_all(&self, records: &[Vec<u8>]) -> Result<Appended, SpoolError> {
        dispatch!(&self.handle, s => s.append_all(records))
    }

    /// Current counters and gauges.
    pub fn stats(&self) -> SpoolStats {
        dispatch!(&self.handle, s => s.stats())
    }
}

impl SpoolReader {
    /// Whether every record appended before this spool was opened (by a
    /// previous run) has been read and acknowledged: then nothing the
    /// previous run left is still to be delivered.
    pub fn previous_run_settled(&self) -> bool {
        dispatch!(&self.handle, s => s.previous_run_settled())
    }

    /// Up to `max_records` records: records put back by a dropped
    /// [`Delivery`] first, then new ones in append order. Waits up to
    /// `max_wait` for the first; returns an empty batch after that.
    pub fn next_batch(
        &mut self,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<Vec<Delivery>, SpoolError> {
        dispatch!(&self.handle, s => s.next_batch(max_records, max_wait))
    }

    /// [`next_batch`](Self::next_batch) for async code: waits with a tokio
    /// `Notify` and timer (the runtime needs its time driver). Reading the
    /// file is a short blocking read(2), usually from the page cache.
    pub async fn next_batch_async(
        &mut self,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<Vec<Delivery>, SpoolError> {
        dispatch!(&self.handle, s => s.next_batch_async(max_records, max_wait).await)
    }

    /// Current counters and gauges.
    pub fn stats(&self) -> SpoolStats {
        dispatch!(&self.handle, s => s.stats())
    }
}

impl Drop for SpoolReader {
    fn drop(&mut self) {
        dispatch!(&self.handle, s => s.reader_taken.store(false, Ordering::Release));
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

    /// Whether the record was appended before this spool was opened (by a
    /// previous run): after a crash such a record may have been published
    /// already without its acknowledgement reaching the disk.
    pub fn from_previous_run(&self) -> bool {
        self.id < dispatch!(&self.handle, s => s.first_id_of_this_open)
    }

    /// Takes the record out of the publisher's hands without acknowledging
    /// it, freeing its bytes when it can be read again from disk
    /// ([`SetAside`]).
    pub fn set_aside(self) -> SetAside {
        self.into_rereadable_receipt().set_aside()
    }

    /// Keeps what acknowledging needs, and the means to have the payload
    /// again ([`Receipt::read_back`]): freed when the record is on disk,
    /// kept when it lives only in memory. For a publisher that holds many records for
    /// a rare second use (a dead letter) and would otherwise keep every
    /// record's bytes twice: as read, and as the message built from them.
    pub fn into_rereadable_receipt(mut self) -> Receipt {
        self.settled = true;
        let kept = match self.origin {
            Origin::Disk { .. } => None,
            Origin::Memory => Some(std::mem::take(&mut self.payload)),
        };
        Receipt {
            id: self.id,
            payload_len: kept.as_ref().map_or(self.payload.len(), Vec::len),
            handle: self.handle.clone(),
            origin: self.origin,
            appended_at_micros: self.appended_at_micros,
            kept,
            settled: false,
        }
    }

    /// The record was published: it leaves the spool.
    pub fn ack(self) {
        Delivery::ack_all(std::iter::once(self));
    }

    /// Acknowledges many deliveries under one lock.
    pub fn ack_all(deliveries: impl IntoIterator<Item = Delivery>) {
        let mut iter = deliveries.into_iter().peekable();
        let Some(first) = iter.peek() else { return };
        // A clone: the deliveries (and their handles) go while acknowledging.
        let handle = first.handle.clone();
        dispatch!(&handle, s => s.ack_all(iter))
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if !self.settled {
            let payload = std::mem::take(&mut self.payload);
            let (id, at, origin) = (self.id, self.appended_at_micros, self.origin);
            dispatch!(&self.handle, s => s.put_back(id, payload, at, origin, false))
        }
    }
}

#[cfg(test)]
mod tests;

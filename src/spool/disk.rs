//! The file backend ([`super::Spool::open`]): the segment files of one spool
//! directory, from the state [`super::recovery`] finds at start-up to the
//! reader streaming frames out of them, reclaiming segments once every id in
//! them is acknowledged, and [`super::Spool::sync`]. Appends go through
//! [`super::group_commit`]; acknowledgement progress and the checkpoint file
//! are [`super::acks`]'s.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tracing::warn;

use super::acks::{AckProgress, Admit};
use super::format::HEADER_LEN;
use super::group_commit::GroupCommit;
use super::recovery;
use super::segment::{CHECKPOINT_FILE, FrameReader, segment_path};
use super::shared::{Backend, Guard, Shared, State, now_micros};
use super::{Delivery, Handle, Origin, SpoolError, SpoolOptions, SpoolStats};

/// Largest segment file: small enough that disk is reclaimed in steps of at
/// most 1/32 of the default bound.
const MAX_SEGMENT_BYTES: u64 = 64 << 20;

/// The file backend: what it keeps outside the state lock.
pub(super) struct Disk {
    pub dir: PathBuf,
    /// Size at which the next write starts a new segment.
    pub segment_bytes: u64,
    pub checkpoint_interval: Duration,
    /// The reader's open segment; only the reader locks it.
    cursor: Mutex<Cursor>,
    /// Orders checkpoint writers.
    pub checkpoint_lock: Mutex<()>,
    /// Orders [`Backend::sync_appends`] callers, so many watchers asking at
    /// once cost one fsync: a caller that waited finds the work done.
    sync_lock: Mutex<SyncedThrough>,
    /// Appenders waiting for their group write.
    pub written: Condvar,
}

/// The file backend's state under the spool's lock.
pub(super) struct DiskState {
    /// Holds the directory lock for the life of the spool.
    _lock: File,
    pub segments: VecDeque<Segment>,
    /// The last segment (first id, file) while this process appends to it.
    pub active: Option<(u64, Arc<File>)>,
    pub group: GroupCommit,
    /// Segment the reader is in (first id), `None` before the first.
    reader_segment: Option<u64>,
    /// Offset of the reader in that segment.
    reader_offset: u64,
    /// Ids below this one were read by the reader (delivered or skipped).
    pub reader_next_id: u64,
    /// Appended at of the oldest record not yet read.
    pub unread_head_at: Option<u64>,
    pub acks: AckProgress,
}

/// What [`Backend::sync_appends`] made durable last.
#[derive(Debug, Default)]
struct SyncedThrough {
    /// The directory's entries are durable for segments up to this first id.
    dir_through: Option<u64>,
}

/// A segment file.
#[derive(Debug, Clone)]
pub(super) struct Segment {
    pub first_id: u64,
    /// Bytes written and readable (for the last segment: up to the last
    /// complete group write).
    pub len: u64,
    pub first_appended_at: Option<u64>,
    /// No write since the last fsync.
    pub synced: bool,
}

#[derive(Default)]
struct Cursor {
    open: Option<(u64, FrameReader)>,
    /// Id the next intact frame should carry; a larger one means records were
    /// lost to damage.
    expected_id: Option<u64>,
}

/// Opens the spool in `dir`, applying the recovery rules.
pub(super) fn open(dir: PathBuf, options: &SpoolOptions) -> Result<Arc<Shared<Disk>>, SpoolError> {
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
    let bytes = segments.iter().map(|s| s.len).sum();
    let disk = DiskState {
        _lock: found.lock,
        segments,
        active: None,
        group: GroupCommit::default(),
        reader_segment: None,
        reader_offset: 0,
        reader_next_id: first_id,
        unread_head_at: None,
        acks: AckProgress::from_checkpoint(found.checkpoint.unwrap_or_default()),
    };
    let stats = SpoolStats {
        torn_tails_cut: found.torn_tails_cut,
        temp_files_removed: found.temp_files_removed,
        ..SpoolStats::default()
    };
    let segment_bytes = options
        .segment_bytes
        .unwrap_or((options.max_bytes / 8).min(MAX_SEGMENT_BYTES))
        .max(HEADER_LEN as u64);
    let backend = Disk {
        dir,
        segment_bytes,
        checkpoint_interval: options.checkpoint_interval,
        cursor: Mutex::new(Cursor::default()),
        checkpoint_lock: Mutex::new(()),
        sync_lock: Mutex::new(SyncedThrough::default()),
        written: Condvar::new(),
    };
    let state = State::new(bytes, found.next_id, stats, disk);
    Ok(Shared::new(state, options.max_bytes, backend))
}

impl Backend for Disk {
    type State = DiskState;

    fn handle(shared: &Arc<Shared<Self>>) -> Handle {
        Handle::Disk(shared.clone())
    }

    fn dir(&self) -> Option<&Path> {
        Some(&self.dir)
    }

    fn commit<T: AsRef<[u8]>>(
        shared: &Shared<Self>,
        st: Guard<'_, Self>,
        payloads: &[T],
        need: u64,
        appended_at_micros: u64,
    ) -> Result<Range<u64>, SpoolError> {
        shared.group_commit(st, payloads, need, appended_at_micros)
    }

    fn read_new(
        shared: &Arc<Shared<Self>>,
        st: Guard<'_, Self>,
        out: &mut Vec<Delivery>,
        max: usize,
    ) -> Result<(), SpoolError> {
        drop(st);
        if out.len() < max {
            shared.read_segments(out, max)?;
        }
        Ok(())
    }

    fn has_unread(st: &State<DiskState>) -> bool {
        let disk = &st.backend;
        match disk.reader_segment {
            None => !disk.segments.is_empty(),
            Some(current) => disk.segments.iter().any(|s| {
                s.first_id > current || (s.first_id == current && s.len > disk.reader_offset)
            }),
        }
    }

    fn acked(st: &mut State<DiskState>, _payload_len: usize) {
        // The space comes back when the whole segment is reclaimed.
        st.backend.acks.mark_dirty();
    }

    fn reclaim(shared: &Shared<Self>, st: &mut State<DiskState>) {
        shared.reclaim(st);
    }

    fn checkpoint_if_due(shared: &Shared<Self>) {
        shared.checkpoint_if_due();
    }

    fn sync(shared: &Shared<Self>) -> Result<(), SpoolError> {
        shared.sync_files()
    }

    fn sync_appends(shared: &Shared<Self>) -> Result<(), SpoolError> {
        shared.sync_appended_segments()
    }

    fn last_handle_dropped(shared: &Shared<Self>) {
        // Record progress so a restart re-delivers little; a failure is
        // logged by `checkpoint` and there is no one left to tell.
        let _ = shared.checkpoint();
    }

    fn read_through(st: &State<DiskState>) -> u64 {
        st.backend.reader_next_id
    }

    fn unread(st: &State<DiskState>, stats: &mut SpoolStats) -> (Option<u64>, u64) {
        let disk = &st.backend;
        stats.segments = disk.segments.len() as u64;
        (
            disk.unread_head_at,
            disk.acks.unread(disk.reader_next_id, st.next_id),
        )
    }
}

impl Shared<Disk> {
    /// Deletes leading segments whose records are all acknowledged and that
    /// the reader has left (or, while appenders wait for space, finished).
    fn reclaim(&self, st: &mut State<DiskState>) {
        let oldest_outstanding = st.outstanding.first_key_value().map(|(id, _)| *id);
        let next_id = st.next_id;
        let waiting = st.space_waiters > 0;
        let disk = &mut st.backend;
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
                        && !disk.group.writing
                        && disk.reader_offset == front.len
                }
                None => false,
            };
            if !reader_done || oldest_outstanding.is_some_and(|id| id < end_id) {
                break;
            }
            let path = segment_path(&self.backend.dir, front.first_id);
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

    /// Reads new records from the segment files into `out`.
    fn read_segments(
        self: &Arc<Self>,
        out: &mut Vec<Delivery>,
        max: usize,
    ) -> Result<(), SpoolError> {
        /// What the reader does next, decided under the state lock.
        enum Step {
            /// Read the open segment up to this offset.
            Read(u64),
            /// Open the segment with this first id.
            Move(u64),
            /// Everything written so far is read.
            CaughtUp,
        }
        let mut cursor = self
            .backend
            .cursor
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let cursor = &mut *cursor;
        let mut frames: Vec<(u64, u64, Vec<u8>, u64)> = Vec::new();
        loop {
            let limit = {
                let mut guard = self.lock();
                let st = &mut *guard;
                let disk = &mut st.backend;
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
                        disk.unread_head_at = None;
                        return Ok(());
                    }
                }
            };
            // `Read` is only decided with a segment open.
            let Some((first_id, reader)) = cursor.open.as_mut() else {
                return Ok(());
            };
            let read_error = |source| SpoolError::Io {
                op: "read segment",
                path: segment_path(&self.backend.dir, *first_id),
                source,
            };
            let mut ended = false;
            while out.len() + frames.len() < max {
                let next = reader.next(limit).map_err(read_error)?;
                let Some((frame, payload)) = next else {
                    ended = true;
                    break;
                };
                let payload = payload.to_vec();
                // `next` consumed exactly the frame.
                let at = reader.offset() - frame.total_len() as u64;
                frames.push((frame.id, frame.appended_at_micros, payload, at));
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
            let disk = &mut st.backend;
            disk.reader_offset = offset;
            if out.len() >= max {
                let index = disk
                    .segments
                    .iter()
                    .position(|s| Some(s.first_id) == disk.reader_segment);
                disk.unread_head_at = match index {
                    _ if offset < limit => head,
                    // Written after `limit` was taken: about now.
                    Some(i) if disk.segments[i].len > offset => {
                        disk.unread_head_at.or(Some(now_micros()))
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
        let path = segment_path(&self.backend.dir, first_id);
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

    /// The payload of record `id`, read again from its frame at `offset` in
    /// segment `segment` (a record set aside keeps its segment: it is not
    /// acknowledged).
    pub(super) fn read_frame_at(
        &self,
        segment: u64,
        offset: u64,
        id: u64,
    ) -> Result<Vec<u8>, SpoolError> {
        use std::io::{Read, Seek, SeekFrom};
        let path = segment_path(&self.backend.dir, segment);
        let io_error = |source| SpoolError::Io {
            op: "read a record set aside",
            path: path.clone(),
            source,
        };
        let mut file = File::open(&path).map_err(io_error)?;
        file.seek(SeekFrom::Start(offset)).map_err(io_error)?;
        let mut frame = vec![0; HEADER_LEN];
        file.read_exact(&mut frame).map_err(io_error)?;
        let len = u32::from_le_bytes(frame[8..12].try_into().expect("4 bytes")) as usize;
        frame.resize(HEADER_LEN + len.min(super::format::MAX_PAYLOAD), 0);
        file.read_exact(&mut frame[HEADER_LEN..])
            .map_err(io_error)?;
        match super::format::decode(&frame) {
            super::format::Decoded::Frame(found) if found.id == id => {
                Ok(frame.split_off(HEADER_LEN))
            }
            _ => Err(io_error(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("record {id} is not intact at offset {offset}"),
            ))),
        }
    }

    /// Turns frames read into deliveries, applying the gap count and the
    /// restart filter.
    fn accept(
        self: &Arc<Self>,
        st: &mut State<DiskState>,
        cursor: &mut Cursor,
        frames: &mut Vec<(u64, u64, Vec<u8>, u64)>,
        out: &mut Vec<Delivery>,
    ) {
        let disk = &mut st.backend;
        let segment = cursor.open.as_ref().map(|(first, _)| *first);
        for (id, at, payload, offset) in frames.drain(..) {
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
            disk.reader_next_id = id + 1;
            disk.acks.mark_dirty();
            match disk.acks.admit(id) {
                Admit::New => {}
                Admit::Redelivered => st.stats.redelivered_after_restart += 1,
                Admit::Acknowledged => continue,
            }
            st.outstanding.insert(id, at);
            let origin = segment.map(|segment| Origin::Disk { segment, offset });
            let mut delivery = self.delivery(id, payload, at);
            delivery.origin = origin.unwrap_or(Origin::Memory);
            out.push(delivery);
        }
        disk.acks.reader_at(disk.reader_next_id);
    }

    /// See [`super::SpoolWriter::sync_appends`]: fsync of the segments
    /// written since their last fsync, and of the directory when one of them
    /// is new (its entry must be durable too). Not the checkpoint.
    fn sync_appended_segments(&self) -> Result<(), SpoolError> {
        self.sync_segments(false)
    }

    /// Fsyncs the segments written since their last fsync, then the
    /// directory (always with `always_dir`, else when a segment is new).
    fn sync_segments(&self, always_dir: bool) -> Result<(), SpoolError> {
        let mut synced = self
            .backend
            .sync_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let unsynced: Vec<(u64, u64)> = self
            .lock()
            .backend
            .segments
            .iter()
            .filter(|s| !s.synced)
            .map(|s| (s.first_id, s.len))
            .collect();
        let dir = &self.backend.dir;
        for (first_id, _) in &unsynced {
            let path = segment_path(dir, *first_id);
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
        let newest = unsynced.iter().map(|(first_id, _)| *first_id).max();
        if always_dir || newest > synced.dir_through {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| SpoolError::Io {
                    op: "sync directory",
                    path: dir.clone(),
                    source,
                })?;
            synced.dir_through = synced.dir_through.max(newest);
        }
        let mut st = self.lock();
        for segment in st.backend.segments.iter_mut() {
            // Synced through the length seen before the fsync; a segment
            // written meanwhile stays unsynced for the next call.
            if unsynced.contains(&(segment.first_id, segment.len)) {
                segment.synced = true;
            }
        }
        Ok(())
    }

    /// See [`super::Spool::sync`]: segments, then the directory, then the
    /// checkpoint.
    fn sync_files(&self) -> Result<(), SpoolError> {
        self.sync_segments(true)?;
        self.checkpoint().map_err(|source| SpoolError::Io {
            op: "write checkpoint",
            path: self.backend.dir.join(CHECKPOINT_FILE),
            source,
        })?;
        Ok(())
    }
}

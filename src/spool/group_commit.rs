//! Group commit of the disk backend: appenders on many threads copy their
//! frames into one shared buffer under the state lock; the first of them to
//! find no write in progress becomes the leader, numbers and checksums the
//! whole buffer (a *generation*) and writes it with one write(2) outside the
//! lock, while the others wait for the outcome of their generation.
//! Generations are written in order; a failed write gives its ids and space
//! back and cuts any partial write off the file.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::warn;

use super::SpoolError;
use super::disk::{Disk, Segment};
use super::format;
use super::segment::segment_path;
use super::shared::{Guard, Shared};

/// Buffers kept between group-commit writes up to this capacity; a burst's
/// larger buffer is freed.
const KEEP_BUFFER: usize = 8 << 20;

/// The group-commit buffer and the order of its generations (under the state
/// lock).
#[derive(Default)]
pub(super) struct GroupCommit {
    /// Frames copied in by appenders, numbered and checksummed by the leader.
    pending: Vec<u8>,
    pending_records: u64,
    pending_appenders: usize,
    pending_first_at: Option<u64>,
    /// Generation now filling `pending`; generations are written in order.
    pending_gen: u64,
    /// A leader is writing a generation.
    pub writing: bool,
    /// Generations below this one are written (or failed).
    done_gen: u64,
    /// Outcome of written generations for appenders not yet woken: (first
    /// id or the failure, appenders still to read it).
    results: HashMap<u64, (Result<u64, WriteFailure>, usize)>,
    /// Appenders waiting for a leader.
    followers: usize,
    spare: Vec<u8>,
}

/// A failed group write, shared by the appenders of its generation.
#[derive(Debug, Clone)]
struct WriteFailure {
    path: PathBuf,
    source: Arc<io::Error>,
}

impl From<WriteFailure> for SpoolError {
    fn from(failure: WriteFailure) -> SpoolError {
        SpoolError::Write {
            path: failure.path,
            source: failure.source,
        }
    }
}

impl Shared<Disk> {
    /// Adds a batch that has room to the pending generation; returns once
    /// that generation is written, by this appender as the leader or by
    /// another one.
    pub(super) fn group_commit<T: AsRef<[u8]>>(
        &self,
        mut st: Guard<'_, Disk>,
        payloads: &[T],
        need: u64,
        at: u64,
    ) -> Result<Range<u64>, SpoolError> {
        let count = payloads.len() as u64;
        let group = &mut st.backend.group;
        let generation = group.pending_gen;
        let offset = group.pending_records;
        group.pending.reserve(need as usize);
        for p in payloads {
            format::push_unsealed(&mut group.pending, p.as_ref(), at);
        }
        group.pending_records += count;
        group.pending_appenders += 1;
        group.pending_first_at.get_or_insert(at);
        let ids = |first: u64| first + offset..first + offset + count;
        loop {
            let group = &mut st.backend.group;
            if group.done_gen > generation {
                // Written by another leader: its outcome waits in `results`
                // for every appender of the generation but the leader.
                let result = match group.results.get_mut(&generation) {
                    Some((result, readers)) if *readers > 1 => {
                        *readers -= 1;
                        result.clone()
                    }
                    Some(_) => group
                        .results
                        .remove(&generation)
                        .map_or_else(|| Err(self.lost_outcome()), |(result, _)| result),
                    None => Err(self.lost_outcome()),
                };
                return result.map(ids).map_err(SpoolError::from);
            }
            if !group.writing {
                // Leader: this generation is the oldest unwritten one.
                let (result, _unlock) = self.write_generation(st);
                return result.map(ids).map_err(SpoolError::from);
            }
            group.followers += 1;
            st = self
                .backend
                .written
                .wait(st)
                .unwrap_or_else(|e| e.into_inner());
            st.backend.group.followers -= 1;
        }
    }

    /// Writes the pending generation with one write(2), outside the lock.
    fn write_generation<'a>(
        &'a self,
        mut st: Guard<'a, Disk>,
    ) -> (Result<u64, WriteFailure>, Guard<'a, Disk>) {
        let first_id = st.next_id;
        let disk = &mut st.backend;
        let group = &mut disk.group;
        let generation = group.pending_gen;
        let spare = std::mem::take(&mut group.spare);
        let mut buf = std::mem::replace(&mut group.pending, spare);
        let count = std::mem::take(&mut group.pending_records);
        let appenders = std::mem::take(&mut group.pending_appenders);
        let first_at = group.pending_first_at.take();
        group.pending_gen += 1;
        group.writing = true;
        let last_len = disk.segments.back().map_or(0, |s| s.len);
        // Appended to while it is below the segment size; else a new file.
        let active = disk
            .active
            .clone()
            .filter(|_| last_len < self.backend.segment_bytes);
        let dir = &self.backend.dir;
        let path = match &active {
            Some((segment_first_id, _)) => segment_path(dir, *segment_first_id),
            None => segment_path(dir, first_id),
        };
        st.next_id += count;
        drop(st);

        format::seal_frames(&mut buf, first_id);
        let rolled = active.is_none();
        let outcome = match active {
            Some((segment_first_id, file)) => (&*file)
                .write_all(&buf)
                .map(|()| (segment_first_id, file))
                .map_err(|e| (e, "write segment")),
            None => crate::private_fs::open_options()
                .create_new(true)
                .append(true)
                .open(&path)
                .map_err(|e| (e, "create segment"))
                .and_then(|f| {
                    (&f).write_all(&buf).map_err(|e| (e, "write segment"))?;
                    Ok((first_id, Arc::new(f)))
                }),
        };

        let mut st = self.lock();
        let written = buf.len() as u64;
        let result = match outcome {
            Ok(active) => {
                let disk = &mut st.backend;
                if rolled {
                    disk.segments.push_back(Segment {
                        first_id,
                        len: written,
                        first_appended_at: first_at,
                        synced: false,
                    });
                    disk.active = Some(active);
                } else if let Some(last) = disk.segments.back_mut() {
                    // Still there: the last segment is not reclaimed while
                    // a generation is being written.
                    last.len += written;
                    last.synced = false;
                }
                if disk.unread_head_at.is_none() {
                    disk.unread_head_at = first_at;
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
                let disk = &mut st.backend;
                if rolled {
                    let _ = fs::remove_file(&path);
                } else if let Some(active) = disk.active.take()
                    && active.1.set_len(last_len).is_ok()
                {
                    disk.active = Some(active);
                }
                self.wake_space(&st);
                Err(WriteFailure {
                    path,
                    source: Arc::new(source),
                })
            }
        };
        let group = &mut st.backend.group;
        group.writing = false;
        group.done_gen = generation + 1;
        if appenders > 1 {
            group
                .results
                .insert(generation, (result.clone(), appenders - 1));
        }
        if buf.capacity() <= KEEP_BUFFER && group.spare.capacity() == 0 {
            buf.clear();
            group.spare = buf;
        }
        if group.followers > 0 {
            self.backend.written.notify_all();
        }
        (result, st)
    }

    /// The outcome of a written generation was not kept for this appender:
    /// the group-commit bookkeeping is inconsistent. Reported as a failed
    /// write (its records may or may not be in the spool) rather than a
    /// panic.
    fn lost_outcome(&self) -> WriteFailure {
        WriteFailure {
            path: self.backend.dir.clone(),
            source: Arc::new(io::Error::other("outcome of a group write was lost")),
        }
    }
}

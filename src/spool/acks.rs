//! Acknowledgement progress on disk: which ids the checkpoint found at
//! start-up calls acknowledged (the restart filter), when the checkpoint is
//! due again (at most every `checkpoint_interval` while acks arrive), and
//! replacing the `checkpoint` file durably — write `checkpoint.tmp`, fsync
//! it, rename it over `checkpoint`, fsync the directory (module docs of
//! [`crate::spool`], "Acknowledgement rule" and "Durability").

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use tracing::warn;

use super::disk::Disk;
use super::format::Checkpoint;
use super::segment::{CHECKPOINT_FILE, TEMP_SUFFIX};
use super::shared::Shared;

/// What the reader does with a record it read from a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    /// Never delivered before the restart: deliver it.
    New,
    /// Delivered and not acknowledged before the restart: deliver it again.
    Redelivered,
    /// Acknowledged before the restart: skip it.
    Acknowledged,
}

/// The disk backend's acknowledgement progress (under the state lock).
pub(super) struct AckProgress {
    /// From the checkpoint found at start-up: ids below this one not in
    /// `restart_unacked` were acknowledged before the restart.
    restart_read_through: u64,
    restart_unacked: BTreeSet<u64>,
    /// Progress made since the checkpoint was last written.
    dirty: bool,
    last_written: Instant,
}

impl AckProgress {
    /// Progress as the checkpoint found at start-up states it.
    pub fn from_checkpoint(checkpoint: Checkpoint) -> AckProgress {
        AckProgress {
            restart_read_through: checkpoint.read_through,
            restart_unacked: checkpoint.unacked.into_iter().collect(),
            dirty: false,
            last_written: Instant::now(),
        }
    }

    /// Progress was made (a record read or acknowledged).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// What to do with record `id`, read for the first time since start-up.
    pub fn admit(&mut self, id: u64) -> Admit {
        if id >= self.restart_read_through {
            Admit::New
        } else if self.restart_unacked.remove(&id) {
            Admit::Redelivered
        } else {
            Admit::Acknowledged
        }
    }

    /// The reader has read every id below `reader_next_id`.
    pub fn reader_at(&mut self, reader_next_id: u64) {
        if reader_next_id >= self.restart_read_through && !self.restart_unacked.is_empty() {
            // Ids the checkpoint named that no segment holds any more.
            self.restart_unacked.clear();
        }
    }

    /// Records never delivered since start-up: from `reader_next_id` (or the
    /// checkpoint's read-through) up to `next_id`, and those the checkpoint
    /// names unacknowledged and the reader has not reached yet.
    pub fn unread(&self, reader_next_id: u64, next_id: u64) -> u64 {
        next_id.saturating_sub(reader_next_id.max(self.restart_read_through))
            + self.restart_unacked.len() as u64
    }

    fn due(&self, interval: Duration) -> bool {
        self.dirty && self.last_written.elapsed() >= interval
    }

    /// The checkpoint to write now; progress counts as recorded from here.
    fn take(&mut self, reader_next_id: u64, outstanding: &BTreeMap<u64, u64>) -> Checkpoint {
        let mut unacked: Vec<u64> = outstanding.keys().copied().collect();
        unacked.extend(self.restart_unacked.iter().copied());
        unacked.sort_unstable();
        self.dirty = false;
        self.last_written = Instant::now();
        Checkpoint {
            read_through: reader_next_id.max(self.restart_read_through),
            unacked,
        }
    }
}

impl Shared<Disk> {
    /// Writes the checkpoint if progress was made and the interval passed.
    pub(super) fn checkpoint_if_due(&self) {
        let due = self
            .lock()
            .backend
            .acks
            .due(self.backend.checkpoint_interval);
        if due {
            // A failure is logged and retried at the next ack or read.
            let _ = self.checkpoint();
        }
    }

    /// Replaces the checkpoint file durably; on failure logs, and leaves the
    /// progress to be written next time.
    pub(super) fn checkpoint(&self) -> io::Result<()> {
        let _order = self
            .backend
            .checkpoint_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let bytes = {
            let mut guard = self.lock();
            let st = &mut *guard;
            let reader_next_id = st.backend.reader_next_id;
            st.backend
                .acks
                .take(reader_next_id, &st.outstanding)
                .encode()
        };
        let dir = &self.backend.dir;
        let result = replace_durably(dir, &bytes);
        if let Err(error) = &result {
            let tmp = dir.join(format!("{CHECKPOINT_FILE}{TEMP_SUFFIX}"));
            warn!(path = %tmp.display(), %error, "spool: cannot write checkpoint");
            self.lock().backend.acks.mark_dirty();
        }
        result
    }
}

/// Writes `bytes` to `checkpoint.tmp`, fsyncs it, renames it over
/// `checkpoint` and fsyncs the directory: after a power loss the checkpoint
/// is the old one or the new one, never an empty or torn file.
fn replace_durably(dir: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{CHECKPOINT_FILE}{TEMP_SUFFIX}"));
    let mut file = crate::private_fs::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(CHECKPOINT_FILE))?;
    File::open(dir)?.sync_all()
}

//! Start-up of a spool directory: the lock, debris of a crash, the torn tail
//! of the last segment, and the checkpoint. The rules are listed in the
//! module docs of [`crate::spool`] ("Recovery"); this file applies them in
//! that order. Nothing here refuses to start because a file is damaged.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::path::Path;

use tracing::warn;

use super::SpoolError;
use super::format::{Checkpoint, HEADER_LEN};
use super::segment::{
    CHECKPOINT_FILE, FrameReader, LOCK_FILE, TEMP_SUFFIX, parse_segment_name, segment_path,
};

/// One segment found on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FoundSegment {
    pub first_id: u64,
    pub len: u64,
    /// `appended_at` of its first frame, if readable (for the age metric).
    pub first_appended_at: Option<u64>,
}

/// What start-up found.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// The locked lock file; the lock lasts as long as this handle.
    pub lock: File,
    /// Segments in id order.
    pub segments: Vec<FoundSegment>,
    /// The id the next appended record gets.
    pub next_id: u64,
    pub checkpoint: Option<Checkpoint>,
    pub torn_tails_cut: u64,
    pub temp_files_removed: u64,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Takes the lock (rule 1), then applies rules 2 to 5.
pub(crate) fn recover(dir: &Path) -> Result<Recovered, SpoolError> {
    crate::private_fs::create_dir_all(dir).map_err(io_err("create spool directory", dir))?;
    let lock = lock(dir)?;

    let mut segments = Vec::new();
    let mut temp_files_removed = 0;
    let mut has_checkpoint = false;
    for entry in fs::read_dir(dir).map_err(io_err("list spool directory", dir))? {
        let entry = entry.map_err(io_err("list spool directory", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        if name.ends_with(TEMP_SUFFIX) {
            // Rule 2: a temp file is a write that never reached its rename.
            match fs::remove_file(&path) {
                Ok(()) => temp_files_removed += 1,
                Err(error) => {
                    warn!(path = %path.display(), %error, "spool: cannot remove stray temp file")
                }
            }
        } else if let Some(first_id) = parse_segment_name(name) {
            let len = entry
                .metadata()
                .map_err(io_err("stat segment", &path))?
                .len();
            segments.push(FoundSegment {
                first_id,
                len,
                first_appended_at: None,
            });
        } else if name == CHECKPOINT_FILE {
            has_checkpoint = true;
        } else if name != LOCK_FILE {
            warn!(path = %path.display(), "spool: ignoring unknown file in spool directory");
        }
    }
    segments.sort_by_key(|s| s.first_id);

    let checkpoint = has_checkpoint.then(|| read_checkpoint(dir)).flatten();

    // Rule 3: scan the last segment to its end; cut a torn tail.
    let mut torn_tails_cut = 0;
    let mut next_id = 0;
    while let Some(last) = segments.last().copied() {
        let path = segment_path(dir, last.first_id);
        let scan = match scan(&path, last.len) {
            Ok(scan) => scan,
            Err(error) => {
                // Unreadable: keep it for the reader, and number new records
                // above any id it could hold (a frame is at least HEADER_LEN).
                warn!(path = %path.display(), %error, "spool: cannot scan last segment");
                next_id = last.first_id + last.len / HEADER_LEN as u64 + 1;
                break;
            }
        };
        if scan.valid_end < last.len {
            warn!(
                path = %path.display(),
                valid_bytes = scan.valid_end,
                cut_bytes = last.len - scan.valid_end,
                "spool: cutting torn tail of last segment"
            );
            torn_tails_cut += 1;
            let cut = OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(scan.valid_end));
            if let Err(error) = cut {
                // The reader steps over the tail anyway; appends go to a new file.
                warn!(path = %path.display(), %error, "spool: cannot cut torn tail");
            } else if let Some(s) = segments.last_mut() {
                s.len = scan.valid_end;
            }
        }
        match scan.last_id {
            Some(id) => {
                next_id = next_id.max(id + 1);
                break;
            }
            None => {
                // Rule 4: no intact record at all, so nothing to keep.
                if let Err(error) = fs::remove_file(&path) {
                    warn!(path = %path.display(), %error, "spool: cannot remove empty segment");
                    next_id = last.first_id + last.len / HEADER_LEN as u64 + 1;
                    break;
                }
                segments.pop();
                next_id = next_id.max(last.first_id);
            }
        }
    }
    for segment in &mut segments {
        segment.first_appended_at = first_appended_at(&segment_path(dir, segment.first_id));
    }
    // Rule 5: ids never go back below what the checkpoint calls read, or new
    // records would be taken for acknowledged ones.
    if let Some(cp) = &checkpoint {
        next_id = next_id.max(cp.read_through);
    }
    Ok(Recovered {
        lock,
        segments,
        next_id,
        checkpoint,
        torn_tails_cut,
        temp_files_removed,
    })
}

fn lock(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join(LOCK_FILE);
    let file = crate::private_fs::open_options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err("open lock file", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(SpoolError::Locked {
            dir: dir.to_owned(),
            lock: path,
        }),
        Err(TryLockError::Error(source)) => Err(SpoolError::Io {
            op: "lock",
            path,
            source,
        }),
    }
}

fn read_checkpoint(dir: &Path) -> Option<Checkpoint> {
    let path = dir.join(CHECKPOINT_FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            let checkpoint = Checkpoint::decode(&bytes);
            if checkpoint.is_none() {
                warn!(path = %path.display(), "spool: damaged checkpoint ignored; unacknowledged records are delivered again");
            }
            checkpoint
        }
        Err(error) => {
            warn!(path = %path.display(), %error, "spool: unreadable checkpoint ignored");
            None
        }
    }
}

struct Scan {
    last_id: Option<u64>,
    /// Offset just past the last intact frame.
    valid_end: u64,
}

fn scan(path: &Path, len: u64) -> io::Result<Scan> {
    let mut reader = FrameReader::open(path.to_owned())?;
    let mut last_id = None;
    let mut valid_end = 0;
    while let Some((frame, _)) = reader.next(len)? {
        last_id = Some(last_id.map_or(frame.id, |l: u64| l.max(frame.id)));
        valid_end = reader.offset();
    }
    Ok(Scan { last_id, valid_end })
}

fn first_appended_at(path: &Path) -> Option<u64> {
    let mut reader = FrameReader::open(path.to_owned()).ok()?;
    reader.peek_appended_at(HEADER_LEN as u64).ok().flatten()
}

//! Segment file names and the streaming frame reader shared by recovery and
//! the spool's reader.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::format::{self, Decoded, Frame, HEADER_LEN};

/// Name of the lock file.
pub(crate) const LOCK_FILE: &str = "spool.lock";
/// Name of the checkpoint file.
pub(crate) const CHECKPOINT_FILE: &str = "checkpoint";
/// Suffix of files being written before a rename; any left at start-up are
/// debris of a crash and removed.
pub(crate) const TEMP_SUFFIX: &str = ".tmp";
const SEGMENT_SUFFIX: &str = ".seg";
/// Bytes asked of the kernel per read: large enough that reading is a few
/// hundred syscalls per second at the target rate, small enough to keep the
/// reader's memory flat.
const READ_CHUNK: usize = 256 * 1024;

/// `00000000000000000042.seg` for a segment whose first record has id 42:
/// zero-padded so that names sort as ids do.
pub(crate) fn segment_name(first_id: u64) -> String {
    format!("{first_id:020}{SEGMENT_SUFFIX}")
}

pub(crate) fn segment_path(dir: &Path, first_id: u64) -> PathBuf {
    dir.join(segment_name(first_id))
}

/// The first id encoded in a segment file name, or `None` for other names.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Reads frames of one segment file in order, with a bounded buffer, stepping
/// over damaged bytes to the next intact frame.
pub(crate) struct FrameReader {
    file: File,
    path: PathBuf,
    buf: Vec<u8>,
    /// `buf[start..end]` holds bytes read but not yet consumed.
    start: usize,
    end: usize,
    /// File offset of `buf[end]`.
    file_pos: u64,
    /// The file ended before the limit the caller gave (it was cut short).
    short: bool,
    /// Bytes stepped over as not part of an intact frame, since creation.
    pub garbage_bytes: u64,
}

impl FrameReader {
    pub fn open(path: PathBuf) -> io::Result<FrameReader> {
        let file = File::open(&path)?;
        Ok(FrameReader {
            file,
            path,
            buf: Vec::new(),
            start: 0,
            end: 0,
            file_pos: 0,
            short: false,
            garbage_bytes: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// File offset of the first byte not yet consumed.
    pub fn offset(&self) -> u64 {
        self.file_pos - (self.end - self.start) as u64
    }

    /// The next intact frame before file offset `limit`, and its payload;
    /// `None` once nothing intact remains before `limit`.
    pub fn next(&mut self, limit: u64) -> io::Result<Option<(Frame, &[u8])>> {
        loop {
            match format::decode(&self.buf[self.start..self.end]) {
                Decoded::Frame(frame) => {
                    let at = self.start + HEADER_LEN;
                    self.start += frame.total_len();
                    return Ok(Some((frame, &self.buf[at..at + frame.len])));
                }
                Decoded::Incomplete(need) if self.can_read(limit) => self.fill(need, limit)?,
                Decoded::Incomplete(_) if self.start == self.end => return Ok(None),
                // Bytes that cannot become an intact frame before the limit
                // (a length pointing past it), or damaged ones: step to the
                // next place a frame could start.
                Decoded::Incomplete(_) | Decoded::Corrupt => {
                    let skip = match format::next_magic(&self.buf[self.start..self.end]) {
                        Ok(at) | Err(at) => at,
                    };
                    self.start += skip;
                    self.garbage_bytes += skip as u64;
                }
            }
        }
    }

    /// The `appended_at` of the next frame, if one starts before `limit`.
    pub fn peek_appended_at(&mut self, limit: u64) -> io::Result<Option<u64>> {
        if self.end - self.start < HEADER_LEN && self.can_read(limit) {
            self.fill(HEADER_LEN, limit)?;
        }
        Ok(format::peek_appended_at(&self.buf[self.start..self.end]))
    }

    fn can_read(&self, limit: u64) -> bool {
        self.file_pos < limit && !self.short
    }

    /// Reads more of the file so that at least `need` bytes could be
    /// buffered.
    fn fill(&mut self, need: usize, limit: u64) -> io::Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let want = need.max(READ_CHUNK);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        } else if self.buf.len() > 4 * READ_CHUNK && self.end <= READ_CHUNK && need <= READ_CHUNK {
            // One huge record grew the buffer; give the memory back.
            self.buf.truncate(READ_CHUNK);
            self.buf.shrink_to_fit();
        }
        let room = (self.buf.len() - self.end) as u64;
        let n = room.min(limit - self.file_pos) as usize;
        let got = self
            .file
            .read_at(&mut self.buf[self.end..self.end + n], self.file_pos)?;
        if got == 0 {
            self.short = true;
        }
        self.end += got;
        self.file_pos += got as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::format::{push_unsealed, seal_frames};

    #[test]
    fn names_sort_as_ids() {
        assert_eq!(segment_name(42), "00000000000000000042.seg");
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_name("42.seg"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.seg"), None);
        assert_eq!(parse_segment_name("00000000000000000042.seg.tmp"), None);
        assert!(segment_name(9) < segment_name(10));
    }

    #[test]
    fn reader_steps_over_damage_and_stops_at_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut buf = Vec::new();
        for i in 0..5u8 {
            push_unsealed(&mut buf, &vec![i; 300_000 * usize::from(i % 2) + 10], 0);
        }
        seal_frames(&mut buf, 10);
        let second = HEADER_LEN + 10;
        buf[second + HEADER_LEN + 5] ^= 0xff; // payload of id 11
        buf.extend_from_slice(b"torn");
        std::fs::write(&path, &buf).unwrap();
        let mut reader = FrameReader::open(path).unwrap();
        let mut ids = Vec::new();
        while let Some((frame, payload)) = reader.next(buf.len() as u64).unwrap() {
            assert!(payload.iter().all(|&b| u64::from(b) == frame.id - 10));
            ids.push(frame.id);
        }
        assert_eq!(ids, [10, 12, 13, 14]);
        assert_eq!(reader.offset(), buf.len() as u64);
        assert!(reader.garbage_bytes >= 300_000);
    }
}

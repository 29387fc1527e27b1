//! Byte layouts of a record frame and of the checkpoint file (see the module
//! docs of [`crate::spool`] for the rules built on them).

/// First four bytes of every record frame; recovery searches for them to
/// find the next frame after damaged bytes.
pub(crate) const FRAME_MAGIC: [u8; 4] = *b"KHr1";
/// Bytes of a frame before its payload.
pub(crate) const HEADER_LEN: usize = 28;
/// Largest payload a frame may carry. A length field above it marks a damaged
/// frame, so garbage never makes the reader allocate gigabytes. 16 MiB is far
/// above the largest message kubeherald publishes (SNS: 256 KiB, a CloudWatch
/// event: 1 MiB).
pub(crate) const MAX_PAYLOAD: usize = 16 << 20;

/// First four bytes of the checkpoint file.
const CHECKPOINT_MAGIC: [u8; 4] = *b"KHc1";
/// Bytes of the checkpoint before its ranges: magic, read_through, count.
const CHECKPOINT_HEAD: usize = 4 + 8 + 4;
/// Bytes of one range: first id (u64) and length (u32).
const RANGE_LEN: usize = 12;

/// Appends a frame whose id and checksum are still zero; [`seal_frames`]
/// fills them once the ids are known.
pub(crate) fn push_unsealed(buf: &mut Vec<u8>, payload: &[u8], appended_at_micros: u64) {
    buf.extend_from_slice(&FRAME_MAGIC);
    buf.extend_from_slice(&[0; 4]); // checksum
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 8]); // id
    buf.extend_from_slice(&appended_at_micros.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Numbers the unsealed frames in `buf` from `first_id` and computes their
/// checksums. Returns how many frames there were.
pub(crate) fn seal_frames(buf: &mut [u8], first_id: u64) -> u64 {
    let mut pos = 0;
    let mut id = first_id;
    while pos < buf.len() {
        let len = u32_at(buf, pos + 8) as usize;
        buf[pos + 12..pos + 20].copy_from_slice(&id.to_le_bytes());
        let crc = checksum(
            &buf[pos + 8..pos + HEADER_LEN],
            &buf[pos + HEADER_LEN..pos + HEADER_LEN + len],
        );
        buf[pos + 4..pos + 8].copy_from_slice(&crc.to_le_bytes());
        pos += HEADER_LEN + len;
        id += 1;
    }
    id - first_id
}

/// CRC-32/ISO-HDLC (the IEEE 802.3 polynomial, as zlib and gzip) over the
/// header fields after the checksum (length, id, appended_at) followed by the
/// payload.
fn checksum(fields: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(fields);
    hasher.update(payload);
    hasher.finalize()
}

/// A frame found intact at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame {
    pub id: u64,
    pub appended_at_micros: u64,
    /// Payload length; the payload is `HEADER_LEN..HEADER_LEN + len`.
    pub len: usize,
}

impl Frame {
    /// Bytes the whole frame occupies.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.len
    }
}

/// What the start of a buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// An intact frame.
    Frame(Frame),
    /// The start of a frame that may be intact: this many bytes are needed.
    Incomplete(usize),
    /// Not an intact frame: wrong magic, impossible length or a checksum
    /// mismatch.
    Corrupt,
}

/// Decodes the frame at the start of `buf`.
pub(crate) fn decode(buf: &[u8]) -> Decoded {
    if buf.len() < HEADER_LEN {
        // A damaged magic is reported at once, so resynchronisation never
        // waits for bytes it does not need.
        let n = buf.len().min(4);
        if buf[..n] != FRAME_MAGIC[..n] {
            return Decoded::Corrupt;
        }
        return Decoded::Incomplete(HEADER_LEN);
    }
    if buf[..4] != FRAME_MAGIC {
        return Decoded::Corrupt;
    }
    let len = u32_at(buf, 8) as usize;
    if len > MAX_PAYLOAD {
        return Decoded::Corrupt;
    }
    if buf.len() < HEADER_LEN + len {
        return Decoded::Incomplete(HEADER_LEN + len);
    }
    if u32_at(buf, 4) != checksum(&buf[8..HEADER_LEN], &buf[HEADER_LEN..HEADER_LEN + len]) {
        return Decoded::Corrupt;
    }
    Decoded::Frame(Frame {
        id: u64_at(buf, 12),
        appended_at_micros: u64_at(buf, 20),
        len,
    })
}

/// The `appended_at` of the frame at the start of `buf`, read without
/// checking the checksum (only for the age metric).
pub(crate) fn peek_appended_at(buf: &[u8]) -> Option<u64> {
    (buf.len() >= HEADER_LEN && buf[..4] == FRAME_MAGIC).then(|| u64_at(buf, 20))
}

/// Offset of the next possible frame start after position 0, or the offset
/// from which a magic could still begin if none is in `buf`.
pub(crate) fn next_magic(buf: &[u8]) -> Result<usize, usize> {
    if buf.len() <= 1 {
        return Err(buf.len());
    }
    match buf[1..].windows(4).position(|w| w == FRAME_MAGIC) {
        Some(i) => Ok(i + 1),
        // The last three bytes might be the start of a magic cut by the buffer end.
        None => Err(buf.len().saturating_sub(3).max(1)),
    }
}

/// What the checkpoint file says: every id below `read_through` is
/// acknowledged except those in `unacked` (ascending, all below
/// `read_through`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub read_through: u64,
    pub unacked: Vec<u64>,
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let mut ranges: Vec<(u64, u32)> = Vec::new();
        for &id in &self.unacked {
            match ranges.last_mut() {
                Some((first, len)) if *first + u64::from(*len) == id && *len < u32::MAX => {
                    *len += 1
                }
                _ => ranges.push((id, 1)),
            }
        }
        let mut buf = Vec::with_capacity(CHECKPOINT_HEAD + ranges.len() * RANGE_LEN + 4);
        buf.extend_from_slice(&CHECKPOINT_MAGIC);
        buf.extend_from_slice(&self.read_through.to_le_bytes());
        buf.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
        for (first, len) in ranges {
            buf.extend_from_slice(&first.to_le_bytes());
            buf.extend_from_slice(&len.to_le_bytes());
        }
        let crc = crc32fast::hash(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        buf
    }

    /// `None` for anything but an intact checkpoint.
    pub fn decode(buf: &[u8]) -> Option<Checkpoint> {
        if buf.len() < CHECKPOINT_HEAD + 4 || buf[..4] != CHECKPOINT_MAGIC {
            return None;
        }
        let count = u32_at(buf, 12) as usize;
        let body = CHECKPOINT_HEAD.checked_add(count.checked_mul(RANGE_LEN)?)?;
        if buf.len() != body + 4 || u32_at(buf, body) != crc32fast::hash(&buf[..body]) {
            return None;
        }
        let read_through = u64_at(buf, 4);
        let mut unacked = Vec::new();
        let mut last = None;
        for i in 0..count {
            let at = CHECKPOINT_HEAD + i * RANGE_LEN;
            let first = u64_at(buf, at);
            let len = u64::from(u32_at(buf, at + 8));
            let end = first.checked_add(len)?;
            // Ranges ascend and stay below read_through, or the file lies.
            if end > read_through || last.is_some_and(|l| first < l) {
                return None;
            }
            unacked.extend(first..end);
            last = Some(end);
        }
        Some(Checkpoint {
            read_through,
            unacked,
        })
    }
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(payloads: &[&[u8]], first_id: u64) -> Vec<u8> {
        let mut buf = Vec::new();
        for p in payloads {
            push_unsealed(&mut buf, p, 7);
        }
        assert_eq!(seal_frames(&mut buf, first_id), payloads.len() as u64);
        buf
    }

    #[test]
    fn frame_round_trip_and_layout() {
        let buf = frames(&[b"hello", b""], 41);
        assert_eq!(buf.len(), 2 * HEADER_LEN + 5);
        assert_eq!(&buf[..4], b"KHr1");
        assert_eq!(&buf[8..12], &5u32.to_le_bytes());
        assert_eq!(&buf[12..20], &41u64.to_le_bytes());
        // The checksum is CRC-32/ISO-HDLC of bytes 8..28 then the payload.
        let mut covered = buf[8..28].to_vec();
        covered.extend_from_slice(b"hello");
        assert_eq!(&buf[4..8], &crc32fast::hash(&covered).to_le_bytes());
        let Decoded::Frame(f) = decode(&buf) else {
            panic!("intact frame")
        };
        assert_eq!(
            f,
            Frame {
                id: 41,
                appended_at_micros: 7,
                len: 5
            }
        );
        let Decoded::Frame(g) = decode(&buf[f.total_len()..]) else {
            panic!("second frame")
        };
        assert_eq!((g.id, g.len), (42, 0));
    }

    #[test]
    fn damage_is_detected() {
        let buf = frames(&[b"payload"], 1);
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x20;
            assert!(
                matches!(decode(&bad), Decoded::Corrupt | Decoded::Incomplete(_)),
                "flip at {i} went unnoticed"
            );
        }
        assert_eq!(
            decode(&buf[..HEADER_LEN + 3]),
            Decoded::Incomplete(HEADER_LEN + 7)
        );
        assert_eq!(decode(&buf[..2]), Decoded::Incomplete(HEADER_LEN));
        assert_eq!(decode(b"xy"), Decoded::Corrupt);
    }

    #[test]
    fn next_magic_finds_frames_and_straddles() {
        let mut buf = b"garbage".to_vec();
        buf.extend_from_slice(&frames(&[b"a"], 1));
        assert_eq!(next_magic(&buf), Ok(7));
        assert_eq!(next_magic(b"abcdefKH"), Err(5));
    }

    #[test]
    fn checkpoint_round_trip_and_damage() {
        let cp = Checkpoint {
            read_through: 100,
            unacked: vec![3, 4, 5, 9, 50, 51],
        };
        let buf = cp.encode();
        assert_eq!(buf.len(), CHECKPOINT_HEAD + 3 * RANGE_LEN + 4);
        assert_eq!(Checkpoint::decode(&buf), Some(cp));
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 1;
            assert_eq!(Checkpoint::decode(&bad), None, "flip at {i}");
        }
        assert_eq!(Checkpoint::decode(&buf[..buf.len() - 1]), None);
        assert_eq!(Checkpoint::decode(b""), None);
    }
}

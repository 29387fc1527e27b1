//! A response body read as complete lines: a WATCH (newline-delimited JSON
//! events) or a followed `pods/log`, with an idle deadline (kube has no read
//! timeout, SPEC §10: a silently dropped connection would hang forever).

use std::time::Duration;

use http_body_util::BodyExt;
use tokio::time::Instant;

use super::error::{ApiError, Op};

/// The longest watch line accepted: an object is at most ~1.5 MiB in etcd;
/// a line beyond this is not a watch event.
const MAX_WATCH_LINE_BYTES: usize = 16 * 1024 * 1024;

/// The longest log line kept whole: the kubelet hands the runtime's 16 KiB
/// CRI entries through, but a runtime that joins partial entries may not;
/// a longer line is passed on in pieces of this size rather than breaking
/// the stream (the sink splits events over CloudWatch's limit anyway).
pub const MAX_LOG_LINE_BYTES: usize = 1024 * 1024;

/// An open WATCH or log response body, read as complete lines.
pub struct LineStream {
    body: kube::client::Body,
    /// Bytes of a line not yet complete.
    pending: Vec<u8>,
    /// When the response arrived.
    pub opened: Instant,
    /// When the last byte arrived (`opened` before the first).
    pub last_byte: Instant,
    /// Bytes received so far.
    pub bytes: u64,
    /// The longest line accepted.
    max_line: usize,
    /// A longer line is passed on in pieces (logs) instead of failing
    /// the stream (watch events, which cannot be cut).
    split_long_lines: bool,
    /// What the stream is, for errors.
    op: Op,
}

/// What reading a watch stream gave.
#[derive(Debug)]
pub enum Read {
    /// One or more complete lines (each ending with `\n`).
    Lines(Vec<u8>),
    /// The server ended the response cleanly (its timeout, or a close). A
    /// partial last line is dropped: the server never sends one on a clean end.
    End,
    /// The connection broke mid-body.
    Broken(ApiError),
    /// No byte arrived within the idle deadline.
    Idle,
}

impl LineStream {
    pub(super) fn watch(body: kube::client::Body) -> LineStream {
        LineStream::new(body, MAX_WATCH_LINE_BYTES, false, Op::Watch)
    }

    pub(super) fn log(body: kube::client::Body) -> LineStream {
        LineStream::new(body, MAX_LOG_LINE_BYTES, true, Op::Log)
    }

    fn new(
        body: kube::client::Body,
        max_line: usize,
        split_long_lines: bool,
        op: Op,
    ) -> LineStream {
        LineStream {
            body,
            pending: Vec::new(),
            opened: Instant::now(),
            last_byte: Instant::now(),
            bytes: 0,
            max_line,
            split_long_lines,
            op,
        }
    }

    /// Reads until at least one complete line, the end, an error or `idle`
    /// without a byte.
    pub async fn read(&mut self, idle: Duration) -> Read {
        loop {
            let frame = match tokio::time::timeout(idle, self.body.frame()).await {
                Err(_) => return Read::Idle,
                Ok(None) => return Read::End,
                Ok(Some(Err(source))) => {
                    return Read::Broken(ApiError::unreachable(self.op, source));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue; // trailers carry nothing for us
            };
            self.bytes += data.len() as u64;
            self.last_byte = Instant::now();
            let Some(last_newline) = data.iter().rposition(|&b| b == b'\n') else {
                self.pending.extend_from_slice(&data);
                if self.pending.len() > self.max_line {
                    if self.split_long_lines {
                        let mut lines = std::mem::take(&mut self.pending);
                        lines.push(b'\n');
                        return Read::Lines(lines);
                    }
                    return Read::Broken(ApiError::undecodable(
                        Op::Watch,
                        std::io::Error::other(format!(
                            "a watch line longer than {} bytes",
                            self.max_line
                        )),
                    ));
                }
                continue;
            };
            let mut lines = std::mem::take(&mut self.pending);
            lines.extend_from_slice(&data[..=last_newline]);
            self.pending.extend_from_slice(&data[last_newline + 1..]);
            return Read::Lines(lines);
        }
    }

    /// Takes the bytes of a last line that has no newline yet (a log
    /// stream that ended mid-line).
    pub fn take_partial(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

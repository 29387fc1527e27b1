//! Dead letters (SPEC §3, §7): a resource event SNS refuses for a reason
//! retrying cannot heal — a message still invalid after every degradation
//! step, or a topic that keeps refusing the publisher (`AuthorizationError`,
//! a KMS key that is gone) for a bounded number of attempts — must neither
//! pin its spool segment forever nor vanish. It is written to
//! `{spool}/dead-letter/events.jsonl`, counted
//! (`events_dead_lettered_total{reason}`) and logged, then acknowledged.
//!
//! One JSON line per record: `{"at": RFC 3339, "reason": "invalid" |
//! "refused", "error": the AWS error code and message, "record": the spool
//! record as it was (the event JSON, object included)}`. The directory is
//! created 0700 and the file 0600: the records hold whole objects.
//!
//! `kubeherald dead-letter replay` moves the file to
//! `{spool}/dead-letter/replay/`; a running kubeherald (or the next start)
//! appends those records to the events spool again and removes the file
//! ([`ingest_replays`]), so they are published once the cause is fixed.
//!
//! May import `spool` and `metrics`; `publish::sns` writes, `app` ingests,
//! `main` queues a replay.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;

use crate::spool::{SpoolError, SpoolWriter};

/// The dead-letter directory under the spool directory.
pub const DIR_NAME: &str = "dead-letter";
/// The file records are appended to.
pub const FILE_NAME: &str = "events.jsonl";
/// Where `replay` queues files for the daemon.
pub const REPLAY_DIR: &str = "replay";

/// Where refused events go. Cloning shares the file.
#[derive(Clone, Debug, Default)]
pub struct DeadLetters {
    /// `None` without a spool directory: a refused event can only be
    /// logged and counted, there is nowhere durable to keep it.
    dir: Option<PathBuf>,
    /// Serialises appends of concurrent batch tasks.
    lock: Arc<Mutex<()>>,
}

/// One dead letter as written.
#[derive(serde::Serialize)]
struct Line<'a> {
    at: String,
    reason: &'a str,
    error: &'a str,
    record: &'a RawValue,
}

impl DeadLetters {
    /// Dead letters beside the spool in `spool_dir`; none in memory.
    pub fn for_spool_dir(spool_dir: Option<&Path>) -> DeadLetters {
        DeadLetters {
            dir: spool_dir.map(|dir| dir.join(DIR_NAME)),
            lock: Arc::default(),
        }
    }

    /// Where they are kept, if anywhere.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Appends `record` (a spool record: the event's JSON) with why it was
    /// refused; `Ok(false)` when there is no directory to keep it in.
    pub fn write(&self, record: &[u8], reason: &str, error: &str) -> io::Result<bool> {
        let Some(dir) = &self.dir else {
            return Ok(false);
        };
        let text = std::str::from_utf8(record).map_err(io::Error::other)?;
        let record = RawValue::from_string(text.to_owned()).map_err(io::Error::other)?;
        let line = Line {
            at: k8s_openapi::jiff::Timestamp::now().to_string(),
            reason,
            error,
            record: &record,
        };
        let mut bytes = serde_json::to_vec(&line).map_err(io::Error::other)?;
        bytes.push(b'\n');
        let _serial = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        private_dir(dir)?;
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(dir.join(FILE_NAME))?;
        file.write_all(&bytes)?;
        // Acknowledging the spool record comes next: the letter must be
        // durable first, or a power loss would lose the event.
        file.sync_data()?;
        Ok(true)
    }
}

/// Creates `dir` (and parents) as 0700 if missing.
fn private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Moves the dead letters of the spool in `spool_dir` to the replay queue;
/// returns how many records were queued. A running kubeherald ingests them
/// within seconds, otherwise the next start does.
pub fn queue_replay(spool_dir: &Path) -> io::Result<usize> {
    let dir = spool_dir.join(DIR_NAME);
    let file = dir.join(FILE_NAME);
    let records = match File::open(&file) {
        Ok(opened) => BufReader::new(opened).lines().count(),
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(err),
    };
    let replay = dir.join(REPLAY_DIR);
    private_dir(&replay)?;
    let stamp = k8s_openapi::jiff::Timestamp::now().as_nanosecond();
    fs::rename(&file, replay.join(format!("{stamp}.jsonl")))?;
    File::open(&replay)?.sync_all()?;
    File::open(&dir)?.sync_all()?;
    Ok(records)
}

/// Appends the records of every queued replay file to the events spool,
/// then removes the file; returns how many records went back. A line that
/// is not a dead letter is kept aside (the file is renamed `.bad`), never
/// dropped.
pub fn ingest_replays(spool_dir: &Path, spool: &SpoolWriter) -> Result<usize, IngestError> {
    let replay = spool_dir.join(DIR_NAME).join(REPLAY_DIR);
    let entries = match fs::read_dir(&replay) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(IngestError::Io(err)),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    let mut total = 0;
    for path in files {
        #[derive(serde::Deserialize)]
        struct Letter<'a> {
            #[serde(borrow)]
            record: &'a RawValue,
        }
        let reader = BufReader::new(File::open(&path).map_err(IngestError::Io)?);
        let mut records = Vec::new();
        let mut bad = false;
        for line in reader.lines() {
            let line = line.map_err(IngestError::Io)?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Letter<'_>>(&line) {
                Ok(letter) => records.push(letter.record.get().as_bytes().to_vec()),
                Err(_) => bad = true,
            }
        }
        if bad {
            fs::rename(&path, path.with_extension("bad")).map_err(IngestError::Io)?;
            tracing::error!(file = %path.display(), "a replay file holds lines that are not dead letters; it is kept aside as .bad");
            continue;
        }
        let appended = spool.append_all(&records).map_err(IngestError::Spool)?;
        total += appended.appended;
        fs::remove_file(&path).map_err(IngestError::Io)?;
    }
    Ok(total)
}

/// Why queued replays could not be ingested (retried at the next look).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot read the replay queue")]
    Io(#[source] io::Error),
    #[error("cannot append replayed records to the spool")]
    Spool(#[source] SpoolError),
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use super::*;
    use crate::spool::{Spool, SpoolOptions};

    #[test]
    fn letters_are_private_and_replay_puts_them_back_in_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let letters = DeadLetters::for_spool_dir(Some(dir.path()));
        let record = br#"{"kind":"ConfigMap","object":{"metadata":{"name":"a"}}}"#;
        assert!(
            letters
                .write(record, "invalid", "InvalidParameter: too big")
                .unwrap()
        );
        assert!(
            letters
                .write(record, "refused", "AuthorizationError: no")
                .unwrap()
        );
        let file = dir.path().join(DIR_NAME).join(FILE_NAME);
        let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(dir.path().join(DIR_NAME))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        let text = fs::read_to_string(&file).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["reason"], "invalid");
        assert_eq!(first["record"]["object"]["metadata"]["name"], "a");

        assert_eq!(queue_replay(dir.path()).unwrap(), 2);
        assert!(!file.exists(), "the letters moved to the replay queue");
        let spool = Spool::open(
            dir.path().join("events"),
            SpoolOptions::with_max_bytes(1 << 20),
        )
        .unwrap();
        assert_eq!(ingest_replays(dir.path(), &spool.writer()).unwrap(), 2);
        assert_eq!(
            ingest_replays(dir.path(), &spool.writer()).unwrap(),
            0,
            "once"
        );
        let mut reader = spool.reader().unwrap();
        let batch = reader.next_batch(10, Duration::from_millis(10)).unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0].payload(), record);
    }

    #[test]
    fn without_a_spool_directory_nothing_is_kept() {
        let letters = DeadLetters::for_spool_dir(None);
        assert!(!letters.write(b"{}", "invalid", "x").unwrap());
    }
}

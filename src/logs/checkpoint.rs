//! Resume checkpoints of followed container logs (SPEC §4, "Resume without
//! gaps or duplicates").
//!
//! Per container instance ([`ContainerKey`]: cluster, namespace, pod,
//! container, restart count) the store keeps the position of the last line
//! CloudWatch accepted: its kubelet timestamp (nanoseconds) and how many
//! lines of the instance carried exactly that timestamp
//! ([`Checkpoint::seq_at_timestamp`]). The log API's `sinceTime` has whole
//! seconds only, so a follower that reconnects asks for
//! [`Checkpoint::since_time_seconds`] and drops every line for which
//! [`Checkpoint::already_shipped`] is true.
//!
//! # Who writes, when
//!
//! Only the log sink writes ([`CheckpointStore::advance`]), and only after
//! CloudWatch accepted the put that carried the line (or after the stdout
//! sink flushed it): a checkpoint never runs ahead of what was shipped. The
//! follower reads ([`CheckpointStore::get`]) and removes the checkpoints of
//! pods that are gone ([`CheckpointStore::forget`]).
//!
//! # Appended positions
//!
//! Beside each shipped checkpoint the store keeps the follower's *appended*
//! position of the instance: the last line whose spool append returned
//! ([`CheckpointStore::record_appended`], read with
//! [`CheckpointStore::appended`]). With an on-disk spool, lines appended but
//! not yet shipped survive a restart in the spool, so the follower resumes
//! from this position, not from the shipped one (which would append those
//! lines a second time). Same file, same key encoding and value encoding,
//! second table `appended`; committed with the checkpoints, so a crash
//! loses at most one `sync_interval` of them (lines appended twice, never a
//! gap). [`CheckpointStore::forget`] removes both.
//!
//! # Shipped positions and the clean-shutdown mark
//!
//! The CloudWatch sink records with each shipped position how many events
//! CloudWatch holds at its millisecond up to and including it
//! ([`Shipped::events_at_ms`]): CloudWatch keeps milliseconds, the kubelet
//! nanoseconds, so after a crash this count is what tells which of the
//! stream's events of that millisecond came after the checkpoint. Stored
//! after the position (4 more bytes; absent in stores of older versions).
//!
//! Table `meta` holds the clean-shutdown mark: written by the sink in the
//! same durable commit as its last checkpoints, after every put it started
//! ended ([`CheckpointStore::mark_clean_shutdown`]), and removed durably when
//! the store is opened. A store opened without the mark
//! ([`CheckpointStore::previous_run_ended_cleanly`] false) belongs to a run
//! that was killed: puts may have been accepted by CloudWatch after the
//! last durable checkpoint, so the sink looks at the stream before
//! re-sending what the spool delivers again (SPEC §4, "Exactly once").
//!
//! # Store and durability
//!
//! A [redb](https://www.redb.org) database (embedded, pure Rust, ACID,
//! crash-safe commits: a crash leaves the last committed state, never a
//! half-written one) at `{spool.dir}/checkpoints/logs.redb`, one table
//! `checkpoints`: key = the four names, each as u16 LE length + UTF-8 bytes,
//! then the restart count as u32 BE; value = timestamp i64 LE + seq u32 LE.
//! Table `appended`: the same keys and values (see "Appended positions").
//! Without a spool directory the same store lives in memory (redb's
//! in-memory backend) and is gone at exit.
//!
//! Advances are kept in memory and committed together, durably, at most
//! every `sync_interval` (1 s by default; [`CheckpointStore::flush_if_due`],
//! called by the sink) and at [`CheckpointStore::flush`] and drop. Readers
//! always see the latest advance. A crash therefore loses at most one
//! interval of advances: the follower then resumes from an older position
//! and ships up to that interval again (duplicates, never a gap), the same
//! at-least-once trade the spool's own acknowledgement checkpoint makes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use tracing::warn;

use crate::record::{ContainerKey, LogLine};

const CHECKPOINTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("checkpoints");
/// The follower's appended positions: same keys and values as `checkpoints`.
const APPENDED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("appended");
/// The clean-shutdown mark (see "Shipped positions and the clean-shutdown mark").
const META: TableDefinition<&str, u8> = TableDefinition::new("meta");
const CLEAN_SHUTDOWN: &str = "clean_shutdown";

/// The file in the checkpoint directory.
pub const FILE_NAME: &str = "logs.redb";
/// The checkpoint directory under the spool directory.
pub const DIR_NAME: &str = "checkpoints";
/// Default least time between two durable commits.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// redb's page cache (its 1 GiB default would defeat flat memory; the store
/// is small and mostly written).
const CACHE_BYTES: usize = 2 * 1024 * 1024;

/// The store's encoding of a [`ContainerKey`]: the cluster first, so a
/// prefix scan finds one cluster's instances.
trait KeyCodec: Sized {
    fn encode(&self) -> Vec<u8>;
    fn encode_rest(&self, out: &mut Vec<u8>);
    fn decode(bytes: &[u8]) -> Option<Self>;
}

impl KeyCodec for ContainerKey {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            8 + self.cluster.len()
                + self.namespace.len()
                + self.pod.len()
                + self.container.len()
                + 4,
        );
        encode_name(&mut out, &self.cluster);
        self.encode_rest(&mut out);
        out
    }

    fn encode_rest(&self, out: &mut Vec<u8>) {
        encode_name(out, &self.namespace);
        encode_name(out, &self.pod);
        encode_name(out, &self.container);
        out.extend_from_slice(&self.restart_count.to_be_bytes());
    }

    fn decode(mut bytes: &[u8]) -> Option<ContainerKey> {
        let mut names = Vec::with_capacity(4);
        for _ in 0..4 {
            let len = u16::from_le_bytes(bytes.get(..2)?.try_into().ok()?) as usize;
            names.push(String::from_utf8(bytes.get(2..2 + len)?.to_vec()).ok()?);
            bytes = &bytes[2 + len..];
        }
        let restart_count = u32::from_be_bytes(bytes.try_into().ok()?);
        let [cluster, namespace, pod, container]: [String; 4] = names.try_into().ok()?;
        Some(ContainerKey {
            cluster,
            namespace,
            pod,
            container,
            restart_count,
        })
    }
}

fn encode_name(out: &mut Vec<u8>, name: &str) {
    // Kubernetes names are at most 253 bytes; a longer one is cut (on a
    // character boundary) rather than refused.
    let mut end = name.len().min(u16::MAX as usize);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_le_bytes());
    out.extend_from_slice(&name.as_bytes()[..end]);
}

/// The position of the last shipped line of a container instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Its kubelet timestamp, nanoseconds since the Unix epoch.
    pub timestamp_ns: i64,
    /// How many lines carried exactly this timestamp up to and including it.
    pub seq_at_timestamp: u32,
}

impl Checkpoint {
    /// The position of `line`.
    pub fn of(line: &LogLine) -> Checkpoint {
        Checkpoint {
            timestamp_ns: line.timestamp,
            seq_at_timestamp: line.seq_at_timestamp,
        }
    }

    /// `sinceTime` for the log request, in whole seconds since the epoch:
    /// the API truncates it to seconds, so it is rounded down (the follower
    /// then skips the lines of that second it already shipped).
    pub fn since_time_seconds(&self) -> i64 {
        self.timestamp_ns.div_euclid(1_000_000_000)
    }

    /// Whether the line at (`timestamp_ns`, `seq_at_timestamp`) was shipped:
    /// it is at or before this position.
    pub fn already_shipped(&self, timestamp_ns: i64, seq_at_timestamp: u32) -> bool {
        (timestamp_ns, seq_at_timestamp) <= (self.timestamp_ns, self.seq_at_timestamp)
    }

    fn encode(&self) -> [u8; 12] {
        let mut out = [0; 12];
        out[..8].copy_from_slice(&self.timestamp_ns.to_le_bytes());
        out[8..].copy_from_slice(&self.seq_at_timestamp.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Checkpoint> {
        Some(Checkpoint {
            timestamp_ns: i64::from_le_bytes(bytes.get(..8)?.try_into().ok()?),
            seq_at_timestamp: u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?),
        })
    }
}

/// A shipped position with the count CloudWatch needs to tell events of one
/// millisecond apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shipped {
    pub checkpoint: Checkpoint,
    /// Events of the stream (parts count one each) whose CloudWatch
    /// timestamp is the checkpoint's millisecond, up to and including the
    /// checkpoint's line. `None`: not known (the stdout sink, a store of an
    /// older version).
    pub events_at_ms: Option<u32>,
}

impl Shipped {
    fn encode(&self) -> Vec<u8> {
        let mut out = self.checkpoint.encode().to_vec();
        if let Some(n) = self.events_at_ms {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Shipped> {
        Some(Shipped {
            checkpoint: Checkpoint::decode(bytes)?,
            events_at_ms: bytes
                .get(12..16)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes),
        })
    }
}

/// Why the checkpoint store failed. Opening fails for good (the directory
/// or file is unusable); a failed commit is retried at the next flush with
/// every advance kept.
#[derive(Debug, thiserror::Error)]
#[error("checkpoint store {location}: cannot {op}")]
pub struct CheckpointError {
    op: &'static str,
    location: String,
    #[source]
    source: Box<redb::Error>,
}

/// The checkpoint store. Cloning is cheap and shares it (the sink writes on
/// the publisher thread, followers read on theirs).
#[derive(Clone)]
pub struct CheckpointStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    location: String,
    sync_interval: Duration,
    /// The mark was found at open (or the store is new).
    previous_run_ended_cleanly: bool,
    state: Mutex<State>,
    /// Serialises commits, so `flushing` has one writer.
    commit: Mutex<()>,
}

/// Advances and removals not yet committed. `None`: forgotten.
struct State {
    /// Since the last commit started.
    dirty: HashMap<ContainerKey, Option<Shipped>>,
    /// Being committed now, or left by a failed commit.
    flushing: HashMap<ContainerKey, Option<Shipped>>,
    /// Appended positions, as `dirty` and `flushing`.
    appended_dirty: HashMap<ContainerKey, Option<Checkpoint>>,
    appended_flushing: HashMap<ContainerKey, Option<Checkpoint>>,
    last_commit: Instant,
}

impl State {
    fn is_clean(&self) -> bool {
        self.dirty.is_empty()
            && self.flushing.is_empty()
            && self.appended_dirty.is_empty()
            && self.appended_flushing.is_empty()
    }
}

/// One commit's changes: checkpoints and appended positions.
type Batch = (
    HashMap<ContainerKey, Option<Shipped>>,
    HashMap<ContainerKey, Option<Checkpoint>>,
);

impl std::fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointStore")
            .field("location", &self.inner.location)
            .finish_non_exhaustive()
    }
}

impl CheckpointStore {
    /// The store of a spool directory (`{spool_dir}/checkpoints/logs.redb`),
    /// or in memory without one.
    pub fn for_spool_dir(spool_dir: Option<&Path>) -> Result<CheckpointStore, CheckpointError> {
        match spool_dir {
            Some(dir) => Self::open(&dir.join(DIR_NAME), DEFAULT_SYNC_INTERVAL),
            None => Self::in_memory(),
        }
    }

    /// Opens (or creates) the store in `dir` (created if missing). redb locks
    /// the file: two processes never share it.
    pub fn open(dir: &Path, sync_interval: Duration) -> Result<CheckpointStore, CheckpointError> {
        let path: PathBuf = dir.join(FILE_NAME);
        let location = path.display().to_string();
        let fail = |op, source: redb::Error| CheckpointError {
            op,
            location: location.clone(),
            source: Box::new(source),
        };
        crate::private_fs::create_dir_all(dir)
            .and_then(|()| crate::private_fs::create_file_if_missing(&path))
            .map_err(|e| fail("create the checkpoint directory", e.into()))?;
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| fail("open", e.into()))?;
        Self::init(db, location, sync_interval)
    }

    /// A store in memory (no spool directory): lost at exit.
    pub fn in_memory() -> Result<CheckpointStore, CheckpointError> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| CheckpointError {
                op: "create",
                location: "(memory)".into(),
                source: Box::new(e.into()),
            })?;
        Self::init(db, "(memory)".into(), DEFAULT_SYNC_INTERVAL)
    }

    fn init(
        db: Database,
        location: String,
        sync_interval: Duration,
    ) -> Result<CheckpointStore, CheckpointError> {
        let previous_run_ended_cleanly =
            read_clean_mark(&db).map_err(|source| CheckpointError {
                op: "read the clean-shutdown mark",
                location: location.clone(),
                source: Box::new(source),
            })?;
        let store = CheckpointStore {
            inner: Arc::new(Inner {
                db,
                location,
                sync_interval,
                previous_run_ended_cleanly,
                state: Mutex::new(State {
                    dirty: HashMap::new(),
                    flushing: HashMap::new(),
                    appended_dirty: HashMap::new(),
                    appended_flushing: HashMap::new(),
                    last_commit: Instant::now(),
                }),
                commit: Mutex::new(()),
            }),
        };
        // Creates the tables on first use, so reads never meet a missing
        // table, and removes the mark durably: if this run is killed, the
        // next one knows.
        store
            .inner
            .write(&(HashMap::new(), HashMap::new()), false)?;
        Ok(store)
    }

    /// Whether the run that last used this store ended with
    /// [`CheckpointStore::mark_clean_shutdown`] (true for a new store). When
    /// false, lines the spool delivers again may be in CloudWatch beyond
    /// their checkpoint.
    pub fn previous_run_ended_cleanly(&self) -> bool {
        self.inner.previous_run_ended_cleanly
    }

    /// Commits every pending advance durably together with the
    /// clean-shutdown mark: called by the sink when every put it started has
    /// ended, so that no accepted put is missing from the checkpoints.
    pub fn mark_clean_shutdown(&self) -> Result<(), CheckpointError> {
        self.inner.flush(true)
    }

    /// Where the store lives (a path, or `(memory)`), for logs.
    pub fn location(&self) -> &str {
        &self.inner.location
    }

    /// The checkpoint of a container instance, if one was ever written and
    /// not forgotten. A store that cannot be read answers `None` (logged):
    /// the follower then falls back to CloudWatch's last event.
    pub fn get(&self, key: &ContainerKey) -> Option<Checkpoint> {
        self.shipped(key).map(|shipped| shipped.checkpoint)
    }

    /// [`CheckpointStore::get`] with the count of events at its millisecond.
    pub fn shipped(&self, key: &ContainerKey) -> Option<Shipped> {
        {
            let state = self.inner.state();
            if let Some(entry) = state.dirty.get(key).or_else(|| state.flushing.get(key)) {
                return *entry;
            }
        }
        match self.inner.read(CHECKPOINTS, key) {
            Ok(bytes) => bytes.and_then(|b| Shipped::decode(&b)),
            Err(error) => {
                warn!(location = %self.inner.location, error = %error, "reading a log checkpoint failed");
                None
            }
        }
    }

    /// Records that the line at `checkpoint` was shipped. Called by the log
    /// sink only after CloudWatch accepted it.
    pub fn advance(&self, key: ContainerKey, checkpoint: Checkpoint) {
        self.advance_shipped(
            key,
            Shipped {
                checkpoint,
                events_at_ms: None,
            },
        );
    }

    /// [`CheckpointStore::advance`] with the count of events at its
    /// millisecond (the CloudWatch sink).
    pub fn advance_shipped(&self, key: ContainerKey, shipped: Shipped) {
        self.inner.state().dirty.insert(key, Some(shipped));
    }

    /// Removes the checkpoint and the appended position of a container
    /// instance (its pod is gone).
    pub fn forget(&self, key: &ContainerKey) {
        let mut state = self.inner.state();
        state.dirty.insert(key.clone(), None);
        state.appended_dirty.insert(key.clone(), None);
    }

    /// The follower's appended position of a container instance: its last
    /// line whose spool append returned (see "Appended positions").
    pub fn appended(&self, key: &ContainerKey) -> Option<Checkpoint> {
        {
            let state = self.inner.state();
            if let Some(entry) = state
                .appended_dirty
                .get(key)
                .or_else(|| state.appended_flushing.get(key))
            {
                return *entry;
            }
        }
        match self.inner.read(APPENDED, key) {
            Ok(bytes) => bytes.and_then(|b| Checkpoint::decode(&b)),
            Err(error) => {
                warn!(location = %self.inner.location, error = %error, "reading a log appended position failed");
                None
            }
        }
    }

    /// Records that the follower's spool append of the line at `position`
    /// returned. Called by the follower only, after the append.
    pub fn record_appended(&self, key: ContainerKey, position: Checkpoint) {
        self.inner
            .state()
            .appended_dirty
            .insert(key, Some(position));
    }

    /// Every checkpoint of `cluster`, in key order: lets a follower forget
    /// the instances of pods that vanished while kubeherald was not running.
    pub fn containers_of(&self, cluster: &str) -> Vec<(ContainerKey, Checkpoint)> {
        let mut found: std::collections::BTreeMap<ContainerKey, Option<Shipped>> = match self
            .inner
            .scan(cluster)
        {
            Ok(found) => found
                .into_iter()
                .map(|(k, c)| {
                    let shipped = Shipped {
                        checkpoint: c,
                        events_at_ms: None,
                    };
                    (k, Some(shipped))
                })
                .collect(),
            Err(error) => {
                warn!(location = %self.inner.location, error = %error, "listing log checkpoints failed");
                Default::default()
            }
        };
        let state = self.inner.state();
        for layer in [&state.flushing, &state.dirty] {
            for (key, checkpoint) in layer {
                if key.cluster == cluster {
                    found.insert(key.clone(), *checkpoint);
                }
            }
        }
        found
            .into_iter()
            .filter_map(|(key, shipped)| shipped.map(|s| (key, s.checkpoint)))
            .collect()
    }

    /// Commits the pending advances durably if `sync_interval` has passed
    /// since the last commit. Returns whether it committed.
    pub fn flush_if_due(&self) -> Result<bool, CheckpointError> {
        {
            let state = self.inner.state();
            if state.is_clean() || state.last_commit.elapsed() < self.inner.sync_interval {
                return Ok(false);
            }
        }
        self.flush().map(|()| true)
    }

    /// Commits every pending advance durably now. On failure they are kept
    /// for the next attempt.
    pub fn flush(&self) -> Result<(), CheckpointError> {
        self.inner.flush(false)
    }

    /// Whether advances wait for a commit.
    pub fn has_pending(&self) -> bool {
        !self.inner.state().is_clean()
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, op: &'static str, source: impl Into<redb::Error>) -> CheckpointError {
        CheckpointError {
            op,
            location: self.location.clone(),
            source: Box::new(source.into()),
        }
    }

    /// Commits the pending changes durably; with `mark_clean`, the
    /// clean-shutdown mark in the same commit (even when nothing is pending).
    fn flush(&self, mark_clean: bool) -> Result<(), CheckpointError> {
        let _commit = self.commit.lock().unwrap_or_else(|e| e.into_inner());
        let batch = {
            let mut state = self.state();
            let dirty = std::mem::take(&mut state.dirty);
            // Newer entries override what a failed commit left.
            state.flushing.extend(dirty);
            let appended = std::mem::take(&mut state.appended_dirty);
            state.appended_flushing.extend(appended);
            if state.flushing.is_empty() && state.appended_flushing.is_empty() && !mark_clean {
                state.last_commit = Instant::now();
                return Ok(());
            }
            (state.flushing.clone(), state.appended_flushing.clone())
        };
        let result = self.write(&batch, mark_clean);
        let mut state = self.state();
        state.last_commit = Instant::now();
        if result.is_ok() {
            state.flushing.clear();
            state.appended_flushing.clear();
        }
        result
    }

    /// One durable commit of `batch`, setting the clean-shutdown mark to
    /// `clean`.
    fn write(&self, batch: &Batch, clean: bool) -> Result<(), CheckpointError> {
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| self.fail("begin a transaction", e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| self.fail("set durability", e))?;
        // Both tables as encoded values, written by one loop.
        let shipped: Vec<(&ContainerKey, Option<Vec<u8>>)> = batch
            .0
            .iter()
            .map(|(key, shipped)| (key, shipped.map(|s| s.encode())))
            .collect();
        let appended: Vec<(&ContainerKey, Option<Vec<u8>>)> = batch
            .1
            .iter()
            .map(|(key, position)| (key, position.map(|p| p.encode().to_vec())))
            .collect();
        let tables = [(CHECKPOINTS, shipped), (APPENDED, appended)];
        for (definition, entries) in tables {
            let mut table = txn
                .open_table(definition)
                .map_err(|e| self.fail("open the checkpoints table", e))?;
            for (key, value) in entries {
                let key = key.encode();
                match value {
                    Some(value) => {
                        table
                            .insert(key.as_slice(), value.as_slice())
                            .map_err(|e| self.fail("write", e))?;
                    }
                    None => {
                        table
                            .remove(key.as_slice())
                            .map_err(|e| self.fail("remove", e))?;
                    }
                }
            }
        }
        {
            let mut meta = txn
                .open_table(META)
                .map_err(|e| self.fail("open the meta table", e))?;
            if clean {
                meta.insert(CLEAN_SHUTDOWN, 1)
                    .map_err(|e| self.fail("write the clean-shutdown mark", e))?;
            } else {
                meta.remove(CLEAN_SHUTDOWN)
                    .map_err(|e| self.fail("remove the clean-shutdown mark", e))?;
            }
        }
        txn.commit().map_err(|e| self.fail("commit", e))
    }

    fn read(
        &self,
        definition: TableDefinition<&[u8], &[u8]>,
        key: &ContainerKey,
    ) -> Result<Option<Vec<u8>>, CheckpointError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| self.fail("begin a read", e))?;
        let table = txn
            .open_table(definition)
            .map_err(|e| self.fail("open the checkpoints table", e))?;
        let value = table
            .get(key.encode().as_slice())
            .map_err(|e| self.fail("read", e))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn scan(&self, cluster: &str) -> Result<Vec<(ContainerKey, Checkpoint)>, CheckpointError> {
        let mut prefix = Vec::new();
        encode_name(&mut prefix, cluster);
        let txn = self
            .db
            .begin_read()
            .map_err(|e| self.fail("begin a read", e))?;
        let table = txn
            .open_table(CHECKPOINTS)
            .map_err(|e| self.fail("open the checkpoints table", e))?;
        let mut out = Vec::new();
        for entry in table
            .range(prefix.as_slice()..)
            .map_err(|e| self.fail("read", e))?
        {
            let (key, value) = entry.map_err(|e| self.fail("read", e))?;
            if !key.value().starts_with(&prefix) {
                break;
            }
            if let (Some(key), Some(checkpoint)) = (
                ContainerKey::decode(key.value()),
                Checkpoint::decode(value.value()),
            ) {
                out.push((key, checkpoint));
            }
        }
        Ok(out)
    }
}

/// Whether the store's last run left the clean-shutdown mark; a store
/// without any table is new (nothing of it to recover).
fn read_clean_mark(db: &Database) -> Result<bool, redb::Error> {
    let txn = db.begin_read()?;
    match txn.open_table(META) {
        Ok(meta) => Ok(meta.get(CLEAN_SHUTDOWN)?.is_some()),
        Err(redb::TableError::TableDoesNotExist(_)) => match txn.open_table(CHECKPOINTS) {
            // Written by a version without the mark: its end is unknown.
            Ok(_) => Ok(false),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(true),
            Err(error) => Err(error.into()),
        },
        Err(error) => Err(error.into()),
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Not a clean shutdown by itself: only the sink knows its puts ended.
        if let Err(error) = self.flush(false) {
            warn!(location = %self.location, error = %error, "log checkpoints could not be saved at exit");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pod: &str, restart_count: u32) -> ContainerKey {
        ContainerKey {
            cluster: "prod".into(),
            namespace: "ns".into(),
            pod: pod.into(),
            container: "app".into(),
            restart_count,
        }
    }

    fn at(timestamp_ns: i64, seq_at_timestamp: u32) -> Checkpoint {
        Checkpoint {
            timestamp_ns,
            seq_at_timestamp,
        }
    }

    #[test]
    fn since_time_rounds_down_to_whole_seconds() {
        assert_eq!(
            at(1_700_000_000_999_999_999, 1).since_time_seconds(),
            1_700_000_000
        );
        assert_eq!(
            at(1_700_000_000_000_000_000, 1).since_time_seconds(),
            1_700_000_000
        );
        assert_eq!(at(-1, 1).since_time_seconds(), -1);
    }

    #[test]
    fn already_shipped_compares_timestamp_then_seq() {
        let checkpoint = at(5_000, 2);
        assert!(checkpoint.already_shipped(4_999, 9));
        assert!(checkpoint.already_shipped(5_000, 1));
        assert!(checkpoint.already_shipped(5_000, 2));
        assert!(!checkpoint.already_shipped(5_000, 3));
        assert!(!checkpoint.already_shipped(5_001, 1));
    }

    #[test]
    fn advance_get_forget_in_memory() {
        let store = CheckpointStore::in_memory().unwrap();
        assert_eq!(store.get(&key("a", 0)), None);
        store.advance(key("a", 0), at(10, 1));
        store.advance(key("a", 0), at(20, 3));
        store.advance(key("a", 1), at(30, 1));
        assert_eq!(store.get(&key("a", 0)), Some(at(20, 3)));
        store.flush().unwrap();
        assert!(!store.has_pending());
        assert_eq!(
            store.get(&key("a", 0)),
            Some(at(20, 3)),
            "read back from the database"
        );
        store.forget(&key("a", 0));
        assert_eq!(store.get(&key("a", 0)), None);
        store.flush().unwrap();
        assert_eq!(store.get(&key("a", 0)), None);
        assert_eq!(store.get(&key("a", 1)), Some(at(30, 1)));
    }

    #[test]
    fn survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = CheckpointStore::for_spool_dir(Some(dir.path())).unwrap();
            store.advance(key("a", 0), at(10, 1));
            store.advance(key("b", 2), at(11, 4));
            store.flush().unwrap();
            store.advance(key("a", 0), at(12, 1));
            // Dropped without an explicit flush: drop commits.
        }
        let store = CheckpointStore::for_spool_dir(Some(dir.path())).unwrap();
        assert!(dir.path().join(DIR_NAME).join(FILE_NAME).exists());
        assert_eq!(store.get(&key("a", 0)), Some(at(12, 1)));
        assert_eq!(store.get(&key("b", 2)), Some(at(11, 4)));
    }

    #[test]
    fn flush_if_due_waits_for_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), Duration::from_secs(3600)).unwrap();
        store.advance(key("a", 0), at(10, 1));
        assert!(!store.flush_if_due().unwrap());
        assert!(store.has_pending());
        let store = CheckpointStore::open(&dir.path().join("other"), Duration::ZERO).unwrap();
        assert!(!store.flush_if_due().unwrap(), "nothing to commit");
        store.advance(key("a", 0), at(10, 1));
        assert!(store.flush_if_due().unwrap());
        assert!(!store.has_pending());
    }

    #[test]
    fn containers_of_a_cluster_merge_pending_and_stored() {
        let store = CheckpointStore::in_memory().unwrap();
        store.advance(key("a", 0), at(1, 1));
        store.advance(key("b", 0), at(2, 1));
        let mut other = key("a", 0);
        other.cluster = "prod-2".into();
        store.advance(other, at(3, 1));
        store.flush().unwrap();
        store.forget(&key("a", 0));
        store.advance(key("c", 1), at(4, 1));
        let found = store.containers_of("prod");
        assert_eq!(
            found,
            vec![(key("b", 0), at(2, 1)), (key("c", 1), at(4, 1))]
        );
        assert_eq!(store.containers_of("prod-2").len(), 1);
        assert!(
            store.containers_of("pro").is_empty(),
            "a prefix of a name is another cluster"
        );
    }

    #[test]
    fn appended_positions_live_beside_checkpoints_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = CheckpointStore::for_spool_dir(Some(dir.path())).unwrap();
            store.record_appended(key("a", 0), at(30, 2));
            store.advance(key("a", 0), at(10, 1));
            assert_eq!(store.appended(&key("a", 0)), Some(at(30, 2)));
            assert_eq!(
                store.get(&key("a", 0)),
                Some(at(10, 1)),
                "separate from the shipped checkpoint"
            );
            store.flush().unwrap();
            store.record_appended(key("b", 1), at(40, 1));
        }
        let store = CheckpointStore::for_spool_dir(Some(dir.path())).unwrap();
        assert_eq!(store.appended(&key("a", 0)), Some(at(30, 2)));
        assert_eq!(store.appended(&key("b", 1)), Some(at(40, 1)));
        assert_eq!(store.get(&key("b", 1)), None);
        store.forget(&key("a", 0));
        assert_eq!(store.appended(&key("a", 0)), None);
        assert_eq!(store.get(&key("a", 0)), None);
        store.flush().unwrap();
        assert_eq!(store.appended(&key("a", 0)), None);
    }

    #[test]
    fn the_clean_shutdown_mark_tells_a_killed_run_from_a_stopped_one() {
        let dir = tempfile::tempdir().unwrap();
        let open = || CheckpointStore::open(dir.path(), DEFAULT_SYNC_INTERVAL).unwrap();
        assert!(
            open().previous_run_ended_cleanly(),
            "a new store has nothing to recover"
        );
        // That run ended without the mark (as a killed one does).
        let store = open();
        assert!(!store.previous_run_ended_cleanly());
        store.advance(key("a", 0), at(10, 1));
        store.mark_clean_shutdown().unwrap();
        drop(store);
        let store = open();
        assert!(store.previous_run_ended_cleanly());
        assert_eq!(
            store.get(&key("a", 0)),
            Some(at(10, 1)),
            "committed with the mark"
        );
        drop(store);
        assert!(
            !open().previous_run_ended_cleanly(),
            "opening removes the mark: a run killed after it is told apart"
        );
        assert!(
            CheckpointStore::in_memory()
                .unwrap()
                .previous_run_ended_cleanly()
        );
    }

    #[test]
    fn shipped_positions_keep_their_count_of_events_at_the_millisecond() {
        let store = CheckpointStore::in_memory().unwrap();
        let shipped = Shipped {
            checkpoint: at(10, 2),
            events_at_ms: Some(7),
        };
        store.advance_shipped(key("a", 0), shipped);
        store.flush().unwrap();
        assert_eq!(store.shipped(&key("a", 0)), Some(shipped));
        store.advance(key("b", 0), at(11, 1));
        store.flush().unwrap();
        assert_eq!(
            store.shipped(&key("b", 0)).map(|s| s.events_at_ms),
            Some(None),
            "a position without the count reads back without it"
        );
        assert_eq!(store.containers_of("prod").len(), 2);
    }

    #[test]
    fn keys_round_trip() {
        let k = ContainerKey {
            cluster: "arn:aws:eks:eu-west-1:1:cluster/x".into(),
            namespace: "é".into(),
            pod: String::new(),
            container: "c".into(),
            restart_count: 70_000,
        };
        assert_eq!(ContainerKey::decode(&k.encode()), Some(k));
    }
}

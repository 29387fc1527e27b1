//! The re-list diff state of one watch, on disk (SPEC §3): for every object
//! last seen, its uid, resourceVersion and a small last known copy, so that a
//! re-list after a gap or a restart emits only what changed, deletions
//! included, and memory stays flat however many objects are watched.
//!
//! # Store and file
//!
//! One [redb](https://www.redb.org) database per watch (context, namespace,
//! kind): an embedded, pure-Rust key-value store with ACID transactions over
//! copy-on-write B-trees. A crash leaves the last committed state, never a
//! half-written one, and redb repairs the file on open. One file per watch
//! keeps watchers isolated: a slow disk write of one never holds another's
//! transaction. The file lives in the state directory beside the spool
//! (`{spool.dir}/state/`), named
//! `{context}_{namespace}_{apiVersion}_{kind}.redb`, each part with every
//! byte outside `[A-Za-z0-9.-]` written `%XX` so the name is unique and safe.
//! redb locks the file: two processes never share a state.
//!
//! # Tables
//!
//! - `objects`: uid → `generation` (u64 LE) | `rv_len` (u16 LE) |
//!   resourceVersion (UTF-8) | last known object (JSON: `apiVersion`, `kind`,
//!   `metadata` without `managedFields` and the last-applied annotation).
//! - `fingerprints`: uid → the `ignore_changes_in` fingerprint of the last
//!   published state ([`crate::redact::fingerprint`], 16 bytes), only for
//!   kinds with such paths; written and removed with the `objects` entry in
//!   the same transaction. A file of an older kubeherald simply lacks the
//!   table (created on open): no fingerprint, so the next change publishes.
//! - `meta`: `format` (`1`), `generation` (u64 LE, the generation of the
//!   latest LIST), `resource_version` (UTF-8, the last version the watch
//!   reached: list, event or bookmark), `listed` (present once one LIST and
//!   its sweep completed).
//!
//! # Diff by generation
//!
//! Every LIST takes a new generation (persisted first). Each page is compared
//! with the stored entries (new uid, changed or equal resourceVersion) and
//! every listed entry is re-stamped with the generation. After the last page
//! the entries still stamped with an older generation vanished during the
//! gap: they are read back in uid order a batch at a time ([`KindState::stale`])
//! and removed once their DELETED is spooled. Neither the listed uid set nor
//! the stored one is ever held in memory whole.
//!
//! # Durability and ordering
//!
//! The state is an index of what the spool holds (SPEC §3):
//!
//! | order | what | durable by |
//! |------:|------|------------|
//! | 1 | spool append of a change | write(2): survives kill -9 at once |
//! | 2 | state commit of that change | `Durability::None`: none yet |
//! | 3 | spool segments holding it | fsync ([`crate::spool::SpoolWriter::sync_appends`]), *before* 4 |
//! | 4 | a durable state commit (carries 2) | fsync, at most `sync_interval` after 2 |
//!
//! So the state is never ahead of the spool (after a power loss too: the
//! records a durable commit describes were fsynced first) and never behind
//! it by more than `sync_interval`: a commit falls due by time, and a quiet
//! watch's engine makes it at [`KindState::flush_due`] — a timer, not the
//! next event. A kill -9 loses at most that interval of state; the restart
//! A change that `event_types` or `ignore_changes_in` keeps from being
//! published is recorded in the state without a spool record: what the
//! state then claims announced is either nothing new (an ignored change
//! leaves the fingerprint of the last published state as it was) or a type
//! the subscriber asked not to get, so no rule about the spool is broken.
//! resumes the WATCH from the durable version, so the server replays those
//! changes (duplicates of at most one interval, never a loss), or, after a
//! 410, the LIST + diff re-emits what the state did not record. The end of
//! a LIST is committed durably at once.
//!
//! Without a spool directory the state lives in memory (redb's in-memory
//! backend): same behaviour within the process, gone at exit, and memory
//! then grows with the objects watched.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase, ReadableTableMetadata, TableDefinition};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const FINGERPRINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("fingerprints");

const FORMAT: &[u8] = b"1";
/// redb's page cache (reads and the dirty pages of a write) per watch.
/// Its default (1 GiB) would defeat "memory stays flat"; the diff reads
/// each entry once per LIST, so a small cache costs little, and 1,000
/// watches hold at most 512 MiB here (SPEC §9's scale target; a quiet
/// namespace uses a few pages).
const CACHE_BYTES: usize = 512 * 1024;

/// Why the state store failed. Retryable: the watcher re-lists after a
/// backoff, and the diff re-emits what the failed write did not record.
#[derive(Debug, thiserror::Error)]
#[error("state store {location}: cannot {op}")]
pub struct StateError {
    op: &'static str,
    location: String,
    // Boxed: redb's error is large, and this one travels through every
    // `Result` of the watch loop.
    #[source]
    source: Box<redb::Error>,
}

/// How a listed object compares with the stored state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// No entry for its uid: ADDED.
    New,
    /// Stored with another resourceVersion: MODIFIED.
    Changed,
    /// Stored with this resourceVersion: nothing to emit.
    Unchanged,
}

/// One change to the stored entries.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// The object exists at `rv`; `tombstone` is its last known copy.
    Upsert {
        uid: &'a str,
        rv: &'a str,
        tombstone: &'a [u8],
        /// The change fingerprint (`None`: the kind keeps none; a stored
        /// one is removed so it is never compared with a later state).
        fingerprint: Option<&'a [u8]>,
    },
    /// The object is gone.
    Remove { uid: &'a str },
}

/// A stored entry the latest LIST did not show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleEntry {
    pub uid: String,
    pub resource_version: String,
    /// The last known copy (JSON).
    pub tombstone: Vec<u8>,
}

/// The state of one watch (see the module docs of `watch::state`).
pub struct KindState {
    db: Database,
    location: String,
    /// The generation of the LIST in progress or last completed.
    generation: u64,
    sync_interval: Duration,
    last_durable: Instant,
    /// The next commit is made durable whatever the interval says.
    durable_next: bool,
    /// A commit since the last durable one is not durable yet.
    pending: bool,
    /// The file, to reopen it after a storage error (`None` in memory).
    path: Option<PathBuf>,
    /// A write failed: redb refuses every further write of this handle
    /// (after an I/O error, e.g. ENOSPC) until the file is reopened.
    broken: bool,
}

impl std::fmt::Debug for KindState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KindState")
            .field("location", &self.location)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// The file name of a watch's state in the state directory.
pub fn file_name(context: &str, namespace: &str, api_version: &str, kind: &str) -> String {
    let parts: Vec<String> = [context, namespace, api_version, kind]
        .iter()
        .map(|part| escape(part))
        .collect();
    format!("{}.redb", parts.join("_"))
}

fn escape(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for byte in part.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'.' || byte == b'-' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl KindState {
    /// Opens (or creates) the state file at `path`; its directory is created.
    pub fn open(path: &Path, sync_interval: Duration) -> Result<KindState, StateError> {
        Self::open_with::<redb::backends::FileBackend>(path, sync_interval, None)
    }

    /// [`open`](Self::open), through `backend` instead of the file when given
    /// (tests inject storage failures this way); a reopen uses the file.
    fn open_with<B: redb::StorageBackend>(
        path: &Path,
        sync_interval: Duration,
        backend: Option<B>,
    ) -> Result<KindState, StateError> {
        let location = path.display().to_string();
        let fail = |op, source: redb::Error| StateError {
            op,
            location: location.clone(),
            source: Box::new(source),
        };
        if let Some(dir) = path.parent() {
            crate::private_fs::create_dir_all(dir)
                .map_err(|err| fail("create the state directory", err.into()))?;
        }
        if backend.is_none() {
            crate::private_fs::create_file_if_missing(path)
                .map_err(|err| fail("create the state file", err.into()))?;
        }
        let mut builder = Database::builder();
        builder.set_cache_size(CACHE_BYTES);
        let db = match backend {
            Some(backend) => builder.create_with_backend(backend),
            None => builder.create(path),
        }
        .map_err(|err| fail("open", err.into()))?;
        let mut state = Self::init(db, location, sync_interval)?;
        state.path = Some(path.to_owned());
        Ok(state)
    }

    /// After a failed write, closes and reopens the file (redb recovers it
    /// to its last commit); returns whether it did. The watch engine calls
    /// this through its handler when it re-lists after the failure, with
    /// its backoff, so a disk that stays full is retried, never spun on.
    pub fn reopen_if_broken(&mut self) -> Result<bool, StateError> {
        if !self.broken {
            return Ok(false);
        }
        let Some(path) = self.path.clone() else {
            self.broken = false;
            return Ok(false);
        };
        // redb allows one open handle per file: close this one first.
        let placeholder = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| self.fail("create a placeholder", e.into()))?;
        drop(std::mem::replace(&mut self.db, placeholder));
        let reopened = Self::open(&path, self.sync_interval)?;
        *self = reopened;
        Ok(true)
    }

    /// A state in memory (no spool directory): lost at exit.
    pub fn in_memory(sync_interval: Duration) -> Result<KindState, StateError> {
        let location = "(memory)".to_owned();
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|err| StateError {
                op: "create",
                location: location.clone(),
                source: Box::new(err.into()),
            })?;
        Self::init(db, location, sync_interval)
    }

    fn init(
        db: Database,
        location: String,
        sync_interval: Duration,
    ) -> Result<KindState, StateError> {
        let mut state = KindState {
            db,
            location,
            generation: 0,
            sync_interval,
            last_durable: Instant::now(),
            durable_next: false,
            pending: false,
            path: None,
            broken: false,
        };
        let generation = state
            .read_meta("generation")?
            .map_or(0, |bytes| u64_from(&bytes));
        state.generation = generation;
        // Creates both tables and the format mark, durably, on first use.
        let mut txn = state
            .db
            .begin_write()
            .map_err(|e| state.fail("begin a transaction", e.into()))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| state.fail("set durability", e.into()))?;
        {
            txn.open_table(OBJECTS)
                .map_err(|e| state.fail("open the objects table", e.into()))?;
            txn.open_table(FINGERPRINTS)
                .map_err(|e| state.fail("open the fingerprints table", e.into()))?;
            let mut meta = txn
                .open_table(META)
                .map_err(|e| state.fail("open the meta table", e.into()))?;
            meta.insert("format", FORMAT)
                .map_err(|e| state.fail("write", e.into()))?;
        }
        txn.commit().map_err(|e| state.fail("commit", e.into()))?;
        Ok(state)
    }

    fn fail(&self, op: &'static str, source: redb::Error) -> StateError {
        StateError {
            op,
            location: self.location.clone(),
            source: Box::new(source),
        }
    }

    fn read_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| self.fail("begin a read", e.into()))?;
        let meta = match txn.open_table(META) {
            Ok(meta) => meta,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.fail("open the meta table", e.into())),
        };
        let value = meta.get(key).map_err(|e| self.fail("read", e.into()))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Where the state lives (a path, or `(memory)`), for logs.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Whether a LIST and its sweep ever completed: then a LIST is a re-list
    /// whose events are diffs, marked resync.
    pub fn listed_once(&self) -> Result<bool, StateError> {
        Ok(self.read_meta("listed")?.is_some())
    }

    /// The last resourceVersion the watch reached.
    pub fn resource_version(&self) -> Result<Option<String>, StateError> {
        Ok(self
            .read_meta("resource_version")?
            .and_then(|bytes| String::from_utf8(bytes).ok()))
    }

    /// The generation of the LIST in progress (or last completed).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Starts a LIST: takes and persists a new generation.
    pub fn begin_list(&mut self) -> Result<u64, StateError> {
        let next = self.generation + 1;
        self.write(|meta, _, _| {
            meta.insert("generation", next.to_le_bytes().as_slice())?;
            Ok(())
        })?;
        self.generation = next;
        Ok(next)
    }

    /// Compares listed objects (uid, resourceVersion) with the stored entries.
    pub fn compare<'a>(
        &self,
        items: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Vec<Seen>, StateError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| self.fail("begin a read", e.into()))?;
        let objects = txn
            .open_table(OBJECTS)
            .map_err(|e| self.fail("open the objects table", e.into()))?;
        items
            .into_iter()
            .map(|(uid, rv)| {
                let stored = objects.get(uid).map_err(|e| self.fail("read", e.into()))?;
                Ok(match stored {
                    None => Seen::New,
                    Some(value) if decode(value.value()).1 == rv => Seen::Unchanged,
                    Some(_) => Seen::Changed,
                })
            })
            .collect()
    }

    /// The stored fingerprints of `uids` (`None` where there is none).
    pub fn fingerprints<'a>(
        &self,
        uids: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| self.fail("begin a read", e.into()))?;
        let table = match txn.open_table(FINGERPRINTS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => {
                return Ok(uids.into_iter().map(|_| None).collect());
            }
            Err(e) => return Err(self.fail("open the fingerprints table", e.into())),
        };
        uids.into_iter()
            .map(|uid| {
                let stored = table.get(uid).map_err(|e| self.fail("read", e.into()))?;
                Ok(stored.map(|value| value.value().to_vec()))
            })
            .collect()
    }

    /// Records changes (stamped with the current generation) and, when
    /// given, the resourceVersion reached, in one transaction.
    pub fn commit(&mut self, changes: &[Change<'_>], rv: Option<&str>) -> Result<(), StateError> {
        let generation = self.generation;
        self.write(|meta, objects, fingerprints| {
            let mut value = Vec::new();
            for change in changes {
                match *change {
                    Change::Upsert {
                        uid,
                        rv,
                        tombstone,
                        fingerprint,
                    } => {
                        encode(&mut value, generation, rv, tombstone);
                        objects.insert(uid, value.as_slice())?;
                        match fingerprint {
                            Some(fingerprint) => {
                                fingerprints.insert(uid, fingerprint)?;
                            }
                            None => {
                                fingerprints.remove(uid)?;
                            }
                        }
                    }
                    Change::Remove { uid } => {
                        objects.remove(uid)?;
                        fingerprints.remove(uid)?;
                    }
                }
            }
            if let Some(rv) = rv {
                meta.insert("resource_version", rv.as_bytes())?;
            }
            Ok(())
        })
    }

    /// Up to `max` entries not stamped with the current generation, in uid
    /// order after `after`.
    pub fn stale(&self, after: Option<&str>, max: usize) -> Result<Vec<StaleEntry>, StateError> {
        use std::ops::Bound;
        let txn = self
            .db
            .begin_read()
            .map_err(|e| self.fail("begin a read", e.into()))?;
        let objects = txn
            .open_table(OBJECTS)
            .map_err(|e| self.fail("open the objects table", e.into()))?;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let range = objects
            .range::<&str>((start, Bound::Unbounded))
            .map_err(|e| self.fail("read", e.into()))?;
        let mut found = Vec::new();
        for entry in range {
            let (uid, value) = entry.map_err(|e| self.fail("read", e.into()))?;
            let (generation, rv, tombstone) = decode(value.value());
            if generation != self.generation {
                found.push(StaleEntry {
                    uid: uid.value().to_owned(),
                    resource_version: rv.to_owned(),
                    tombstone: tombstone.to_vec(),
                });
                if found.len() >= max {
                    break;
                }
            }
        }
        Ok(found)
    }

    /// Ends a LIST: its sweep is done and the watch starts from `rv`.
    ///
    /// This commit is durable at once (one fsync per LIST): a process killed
    /// shortly after a LIST would otherwise find the state of before it and
    /// re-emit the whole list as duplicates after the restart.
    pub fn finish_list(&mut self, rv: &str) -> Result<(), StateError> {
        self.request_durable();
        self.write(|meta, _, _| {
            meta.insert("listed", [1u8].as_slice())?;
            meta.insert("resource_version", rv.as_bytes())?;
            Ok(())
        })
    }

    /// Number of stored entries.
    pub fn len(&self) -> Result<u64, StateError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| self.fail("begin a read", e.into()))?;
        let objects = txn
            .open_table(OBJECTS)
            .map_err(|e| self.fail("open the objects table", e.into()))?;
        objects.len().map_err(|e| self.fail("read", e.into()))
    }

    /// Whether no entry is stored.
    pub fn is_empty(&self) -> Result<bool, StateError> {
        Ok(self.len()? == 0)
    }

    /// Whether the next write will be a durable commit (the interval has
    /// passed, or a durable one was asked for): the spool records it
    /// describes must be made durable before it.
    pub fn next_write_durable(&self) -> bool {
        self.durable_next || self.last_durable.elapsed() >= self.sync_interval
    }

    /// When the commits made since the last durable one must be made
    /// durable ([`flush`](Self::flush)): `sync_interval` after the last
    /// durable commit; `None` when every commit is durable. A quiet watch
    /// makes no further commit that would carry them, so its engine calls
    /// `flush` at this instant (SPEC §3: a timer, not the next event).
    pub fn flush_due(&self) -> Option<Instant> {
        self.pending.then(|| self.last_durable + self.sync_interval)
    }

    /// Makes the next write a durable commit.
    pub fn request_durable(&mut self) {
        self.durable_next = true;
    }

    /// Makes every commit so far durable (at shutdown).
    pub fn flush(&mut self) -> Result<(), StateError> {
        self.durable_next = true;
        self.write(|_, _, _| Ok(()))
    }

    fn write(
        &mut self,
        body: impl FnOnce(
            &mut redb::Table<'_, &'static str, &'static [u8]>,
            &mut redb::Table<'_, &'static str, &'static [u8]>,
            &mut redb::Table<'_, &'static str, &'static [u8]>,
        ) -> Result<(), redb::StorageError>,
    ) -> Result<(), StateError> {
        let result = self.write_once(body);
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    fn write_once(
        &mut self,
        body: impl FnOnce(
            &mut redb::Table<'_, &'static str, &'static [u8]>,
            &mut redb::Table<'_, &'static str, &'static [u8]>,
            &mut redb::Table<'_, &'static str, &'static [u8]>,
        ) -> Result<(), redb::StorageError>,
    ) -> Result<(), StateError> {
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| self.fail("begin a transaction", e.into()))?;
        let durable = self.next_write_durable();
        self.durable_next = false;
        let durability = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        txn.set_durability(durability)
            .map_err(|e| self.fail("set durability", e.into()))?;
        {
            let mut meta = txn
                .open_table(META)
                .map_err(|e| self.fail("open the meta table", e.into()))?;
            let mut objects = txn
                .open_table(OBJECTS)
                .map_err(|e| self.fail("open the objects table", e.into()))?;
            let mut fingerprints = txn
                .open_table(FINGERPRINTS)
                .map_err(|e| self.fail("open the fingerprints table", e.into()))?;
            body(&mut meta, &mut objects, &mut fingerprints)
                .map_err(|e| self.fail("write", e.into()))?;
        }
        txn.commit().map_err(|e| self.fail("commit", e.into()))?;
        if durable {
            self.last_durable = Instant::now();
        }
        self.pending = !durable;
        Ok(())
    }
}

fn u64_from(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_le_bytes).unwrap_or(0)
}

fn encode(out: &mut Vec<u8>, generation: u64, rv: &str, tombstone: &[u8]) {
    out.clear();
    out.extend_from_slice(&generation.to_le_bytes());
    // resourceVersions are decimal etcd revisions in practice; anything
    // longer than u16 is not one, and is cut rather than corrupting the entry.
    let rv = &rv.as_bytes()[..rv.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(rv.len() as u16).to_le_bytes());
    out.extend_from_slice(rv);
    out.extend_from_slice(tombstone);
}

/// (generation, resourceVersion, tombstone) of a stored value; a damaged
/// value reads as generation 0 with no version, so it is swept or re-emitted
/// rather than trusted.
fn decode(value: &[u8]) -> (u64, &str, &[u8]) {
    let damaged = (0, "", &[][..]);
    if value.len() < 10 {
        return damaged;
    }
    let generation = u64_from(&value[..8]);
    let rv_len = u16::from_le_bytes([value[8], value[9]]) as usize;
    let Some(rv) = value.get(10..10 + rv_len) else {
        return damaged;
    };
    let Ok(rv) = std::str::from_utf8(rv) else {
        return damaged;
    };
    (generation, rv, &value[10 + rv_len..])
}

/// The state file of a watch under `dir`.
pub fn path_in(
    dir: &Path,
    context: &str,
    namespace: &str,
    api_version: &str,
    kind: &str,
) -> PathBuf {
    dir.join(file_name(context, namespace, api_version, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert<'a>(uid: &'a str, rv: &'a str) -> Change<'a> {
        Change::Upsert {
            uid,
            rv,
            tombstone: b"{}",
            fingerprint: None,
        }
    }

    /// One complete LIST: compare, commit, sweep; returns (seen per item, swept uids).
    fn relist(state: &mut KindState, items: &[(&str, &str)]) -> (Vec<Seen>, Vec<String>) {
        state.begin_list().unwrap();
        let seen = state.compare(items.iter().copied()).unwrap();
        let changes: Vec<Change<'_>> = items.iter().map(|(uid, rv)| upsert(uid, rv)).collect();
        state.commit(&changes, None).unwrap();
        let mut swept = Vec::new();
        let mut after: Option<String> = None;
        loop {
            // A tiny batch size exercises the resumption.
            let batch = state.stale(after.as_deref(), 2).unwrap();
            let uids: Vec<String> = batch.iter().map(|e| e.uid.clone()).collect();
            let removes: Vec<Change<'_>> = uids.iter().map(|uid| Change::Remove { uid }).collect();
            state.commit(&removes, None).unwrap();
            after = uids.last().cloned();
            swept.extend(uids);
            if batch.len() < 2 {
                break;
            }
        }
        state.finish_list("100").unwrap();
        (seen, swept)
    }

    #[test]
    fn relist_diff_finds_new_changed_unchanged_and_vanished() {
        let mut state = KindState::in_memory(Duration::from_secs(1)).unwrap();
        assert!(!state.listed_once().unwrap());
        let (seen, swept) = relist(
            &mut state,
            &[("a", "1"), ("b", "1"), ("c", "1"), ("d", "1"), ("e", "1")],
        );
        assert_eq!(seen, vec![Seen::New; 5]);
        assert!(swept.is_empty());
        assert!(state.listed_once().unwrap());

        let (seen, swept) = relist(
            &mut state,
            &[("a", "1"), ("c", "2"), ("f", "1"), ("e", "1")],
        );
        assert_eq!(
            seen,
            vec![Seen::Unchanged, Seen::Changed, Seen::New, Seen::Unchanged]
        );
        assert_eq!(swept, vec!["b".to_owned(), "d".to_owned()]);
        assert_eq!(state.len().unwrap(), 4);
        assert_eq!(state.resource_version().unwrap().as_deref(), Some("100"));
    }

    #[test]
    fn state_survives_reopen_with_generation_and_tombstones() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(
            &dir.path().join("state"),
            "ctx/1",
            "ns",
            "apps/v1",
            "Deployment",
        );
        {
            let mut state = KindState::open(&path, Duration::from_secs(3600)).unwrap();
            relist(&mut state, &[("a", "1"), ("b", "1")]);
            state
                .commit(
                    &[Change::Upsert {
                        uid: "b",
                        rv: "5",
                        tombstone: br#"{"kind":"Deployment"}"#,
                        fingerprint: Some(b"0123456789abcdef"),
                    }],
                    Some("5"),
                )
                .unwrap();
            state.flush().unwrap();
        }
        let mut state = KindState::open(&path, Duration::from_secs(3600)).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600, "the state file is private");
            assert_eq!(mode(path.parent().unwrap()), 0o700, "its directory too");
        }
        assert_eq!(
            state.fingerprints(["b", "a"]).unwrap(),
            vec![Some(b"0123456789abcdef".to_vec()), None],
            "fingerprints survive a reopen"
        );
        assert!(state.listed_once().unwrap());
        assert_eq!(state.generation(), 1);
        assert_eq!(state.resource_version().unwrap().as_deref(), Some("5"));
        state.begin_list().unwrap();
        assert_eq!(state.compare([("b", "5")]).unwrap(), vec![Seen::Unchanged]);
        state.commit(&[upsert("a", "1")], None).unwrap();
        let stale = state.stale(None, 10).unwrap();
        assert_eq!(
            stale,
            vec![StaleEntry {
                uid: "b".into(),
                resource_version: "5".into(),
                tombstone: br#"{"kind":"Deployment"}"#.to_vec(),
            }]
        );
    }

    #[test]
    fn a_fingerprint_goes_with_an_upsert_without_one_and_with_a_remove() {
        let mut state = KindState::in_memory(Duration::from_secs(1)).unwrap();
        let with = |uid| Change::Upsert {
            uid,
            rv: "1",
            tombstone: b"{}",
            fingerprint: Some(b"f"),
        };
        state.commit(&[with("a"), with("b")], None).unwrap();
        state
            .commit(&[upsert("a", "2"), Change::Remove { uid: "b" }], None)
            .unwrap();
        assert_eq!(state.fingerprints(["a", "b"]).unwrap(), vec![None, None]);
    }

    #[test]
    fn file_names_are_unique_and_safe() {
        assert_eq!(
            file_name("prod-eu", "default", "v1", "Pod"),
            "prod-eu_default_v1_Pod.redb"
        );
        assert_eq!(
            file_name("arn:aws:eks:eu/x_y", "ns", "apps/v1", "Deployment"),
            "arn%3Aaws%3Aeks%3Aeu%2Fx%5Fy_ns_apps%2Fv1_Deployment.redb"
        );
        assert_ne!(
            file_name("a_b", "c", "v1", "Pod"),
            file_name("a", "b_c", "v1", "Pod")
        );
    }

    #[test]
    fn damaged_values_are_not_trusted() {
        assert_eq!(decode(b"short"), (0, "", &[][..]));
        let mut value = Vec::new();
        encode(&mut value, 3, "42", b"{}");
        assert_eq!(decode(&value), (3, "42", &b"{}"[..]));
        value.truncate(11);
        assert_eq!(decode(&value).1, "");
    }

    /// A file backend whose writes fail while `fail` is set (a full disk).
    #[derive(Debug)]
    struct FailingBackend {
        inner: redb::backends::FileBackend,
        fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl redb::StorageBackend for FailingBackend {
        fn len(&self) -> std::io::Result<u64> {
            self.inner.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.inner.read(offset, out)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.inner.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
            }
            self.inner.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(std::io::Error::from_raw_os_error(28));
            }
            self.inner.write(offset, data)
        }
    }

    #[test]
    fn a_storage_error_is_healed_by_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.redb");
        let fail = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap();
        let backend = FailingBackend {
            inner: redb::backends::FileBackend::new(file).unwrap(),
            fail: std::sync::Arc::clone(&fail),
        };
        let mut state = KindState::open_with(&path, Duration::ZERO, Some(backend)).unwrap();
        state.commit(&[upsert("a", "1")], Some("1")).unwrap();
        assert!(!state.reopen_if_broken().unwrap(), "nothing to heal yet");

        fail.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(state.commit(&[upsert("b", "2")], Some("2")).is_err());
        // The disk has room again, but this handle stays refused until reopened.
        fail.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(state.reopen_if_broken().unwrap(), "reopened");
        state.commit(&[upsert("c", "3")], Some("3")).unwrap();
        assert_eq!(state.resource_version().unwrap().as_deref(), Some("3"));
        let seen = state.compare([("a", "1"), ("b", "2"), ("c", "3")]).unwrap();
        assert_eq!(seen, [Seen::Unchanged, Seen::New, Seen::Unchanged]);
        assert!(!state.reopen_if_broken().unwrap(), "healthy again");
    }
}

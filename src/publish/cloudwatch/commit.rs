//! Shipped positions durable before the spool lets go of their lines
//! (SPEC §4, "Exactly once, even across kill -9").
//!
//! When a put is accepted, its stream's checkpoint advances at once (in
//! memory: followers and the sink's duplicate filter see it), but the
//! spool records of its lines are only acknowledged after a durable commit
//! of the checkpoint store has carried that advance ([`Commits::commit`],
//! one fsync for every stream, at most `sync_interval` after the put). So a
//! record the spool delivers again after a crash is either covered by the
//! durable checkpoint, or was accepted within the last interval before the
//! crash — and those are what the sink looks up in CloudWatch after an
//! unclean stop ([`super::recovery`]).
//!
//! Until then a line is held back as its spool record's id
//! ([`PendingAcks`]), not its bytes. May import the checkpoint store and
//! the spool.

use std::sync::{Arc, Mutex, MutexGuard};

use tracing::warn;

use crate::logs::{CheckpointStore, ContainerKey, Shipped};
use crate::spool::{PendingAcks, Receipt};

/// Advances waiting for their durable commit, and the receipts of their
/// lines. Cloning shares it (put tasks, the scheduler, the service).
#[derive(Clone)]
pub(super) struct Commits {
    checkpoints: CheckpointStore,
    waiting: Arc<Mutex<PendingAcks>>,
}

impl Commits {
    pub(super) fn new(checkpoints: CheckpointStore) -> Commits {
        Commits {
            checkpoints,
            waiting: Arc::new(Mutex::new(PendingAcks::default())),
        }
    }

    pub(super) fn checkpoints(&self) -> &CheckpointStore {
        &self.checkpoints
    }

    fn waiting(&self) -> MutexGuard<'_, PendingAcks> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lines of `key`'s stream up to `last` are in CloudWatch: the
    /// checkpoint advances now, the records of `receipts` are acknowledged
    /// after the next durable commit.
    pub(super) fn shipped(
        &self,
        key: ContainerKey,
        last: Option<Shipped>,
        receipts: impl IntoIterator<Item = Receipt>,
    ) {
        // The advance first: a commit that takes these receipts carries it.
        if let Some(last) = last {
            self.checkpoints.advance_shipped(key, last);
        }
        // In CloudWatch now: a record not acknowledged by the end (a commit
        // failing at exit) waits for the next start's recovery; it is not
        // delivered again in this run.
        let mut waiting = self.waiting();
        receipts
            .into_iter()
            .for_each(|receipt| waiting.push(receipt));
    }

    /// Puts back acknowledgements a commit did not cover, in front of those
    /// that arrived meanwhile.
    fn keep(&self, mut receipts: PendingAcks) {
        let mut waiting = self.waiting();
        receipts.append(std::mem::take(&mut *waiting));
        *waiting = receipts;
    }

    /// Commits durably if `sync_interval` has passed (or `force`), then
    /// acknowledges the receipts the commit covers. Blocking (fsync): run it
    /// on the blocking pool. A failed commit keeps the receipts for the next.
    pub(super) fn commit(&self, force: bool) {
        let receipts = std::mem::take(&mut *self.waiting());
        let committed = if force {
            self.checkpoints.flush().map(|()| true)
        } else {
            self.checkpoints.flush_if_due()
        };
        match committed {
            // Not due: nothing was pending, or the interval has not passed.
            Ok(false) if self.checkpoints.has_pending() => self.keep(receipts),
            Ok(_) => receipts.ack(),
            Err(error) => {
                warn!(error = %error, receipts = receipts.len(), "committing log checkpoints failed; their lines stay in the spool until a commit succeeds");
                self.keep(receipts);
            }
        }
    }

    /// The end of the sink: one last durable commit and the
    /// acknowledgements; then, when `clean` (every put started has ended)
    /// and `previous_run_settled()` (nothing a crashed run left is still in
    /// the spool), the clean-shutdown mark. A failed commit leaves the
    /// records to the next start.
    pub(super) fn finish(&self, clean: bool, previous_run_settled: impl FnOnce() -> bool) {
        let receipts = std::mem::take(&mut *self.waiting());
        if let Err(error) = self.checkpoints.flush() {
            warn!(
                error = %error,
                receipts = receipts.len(),
                "committing log checkpoints at exit failed; their lines are delivered again at the next start"
            );
            return;
        }
        receipts.ack();
        if clean
            && previous_run_settled()
            && let Err(error) = self.checkpoints.mark_clean_shutdown()
        {
            warn!(error = %error, "writing the clean-shutdown mark failed; the next start checks CloudWatch before sending lines again");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::logs::Checkpoint;
    use crate::spool::{Delivery, Spool, SpoolOptions};

    fn key() -> ContainerKey {
        ContainerKey {
            cluster: "c".into(),
            namespace: "ns".into(),
            pod: "p".into(),
            container: "app".into(),
            restart_count: 0,
        }
    }

    fn shipped(timestamp_ns: i64) -> Shipped {
        Shipped {
            checkpoint: Checkpoint {
                timestamp_ns,
                seq_at_timestamp: 1,
            },
            events_at_ms: Some(1),
        }
    }

    /// Three records of an on-disk spool, delivered and made receipts.
    fn receipts(spool: &Spool) -> Vec<Receipt> {
        let writer = spool.writer();
        for n in 0..3 {
            writer.append(format!("line {n}").as_bytes()).unwrap();
        }
        let mut reader = spool.reader().unwrap();
        let batch = reader.next_batch(3, Duration::ZERO).unwrap();
        batch
            .into_iter()
            .map(Delivery::into_rereadable_receipt)
            .collect()
    }

    #[test]
    fn lines_leave_the_spool_only_with_the_durable_commit_of_their_advance() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(
            dir.path().join("spool"),
            SpoolOptions::with_max_bytes(1 << 20),
        )
        .unwrap();
        let store =
            CheckpointStore::open(&dir.path().join("checkpoints"), Duration::from_secs(3600))
                .unwrap();
        let commits = Commits::new(store);
        let mut receipts = receipts(&spool).into_iter();
        commits.shipped(key(), Some(shipped(1)), receipts.by_ref().take(2));
        // Not due: the advance is pending, the lines are kept back.
        commits.commit(false);
        assert_eq!(spool.stats().pending_records, 3);
        // A later put's line joins the ones kept back; one commit takes all.
        commits.shipped(key(), Some(shipped(2)), receipts);
        commits.commit(true);
        assert_eq!(spool.stats().pending_records, 0);
        assert!(!commits.checkpoints().has_pending());
    }

    #[test]
    fn lines_not_committed_at_the_end_wait_for_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("spool");
        {
            let spool = Spool::open(&spool_dir, SpoolOptions::with_max_bytes(1 << 20)).unwrap();
            let store =
                CheckpointStore::open(&dir.path().join("checkpoints"), Duration::from_secs(3600))
                    .unwrap();
            let commits = Commits::new(store);
            commits.shipped(key(), Some(shipped(1)), receipts(&spool));
            commits.commit(false);
            // The process ends without the commit: not delivered again now.
            drop(commits);
            let mut reader = spool.reader().unwrap();
            assert!(reader.next_batch(10, Duration::ZERO).unwrap().is_empty());
        }
        let spool = Spool::open(&spool_dir, SpoolOptions::with_max_bytes(1 << 20)).unwrap();
        let mut reader = spool.reader().unwrap();
        assert_eq!(reader.next_batch(10, Duration::ZERO).unwrap().len(), 3);
    }
}

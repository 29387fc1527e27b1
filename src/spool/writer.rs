//! The appenders' side, for both backends: what can ever fit, backpressure
//! (waiting for space, blocking or async), and the one rule callers used to
//! repeat — append in batches of at most [`APPEND_BATCH_BYTES`], split a
//! batch larger than the spool, and refuse (report, not fail on) a record
//! larger than the spool can ever hold ([`super::SpoolWriter::append_all`]).

use std::ops::Range;

use super::format::{HEADER_LEN, MAX_PAYLOAD};
use super::shared::{Backend, Guard, Shared, now_micros};
use super::{Appended, Refused, SpoolError};

/// The largest batch [`append_all`](super::SpoolWriter::append_all) appends
/// at once, in payload bytes: keeps one LIST page of big objects from needing
/// more free spool space at once than a small spool ever has, and one write
/// from holding the group-commit buffer for long.
pub const APPEND_BATCH_BYTES: usize = 4 * 1024 * 1024;

impl<B: Backend> Shared<B> {
    /// Frame bytes of a batch, or why it can never fit.
    fn check_size<T: AsRef<[u8]>>(&self, payloads: &[T]) -> Result<u64, SpoolError> {
        let need: u64 = payloads
            .iter()
            .map(|p| (HEADER_LEN + p.as_ref().len()) as u64)
            .sum();
        let largest = payloads.iter().map(|p| p.as_ref().len()).max().unwrap_or(0);
        if largest > MAX_PAYLOAD || need > self.max_bytes {
            return Err(SpoolError::TooLarge {
                size: need,
                max_record: MAX_PAYLOAD as u64,
                max_batch: self.max_bytes,
            });
        }
        Ok(need)
    }

    /// Largest payload of one record this spool can ever hold.
    fn max_record(&self) -> usize {
        let by_bound =
            usize::try_from(self.max_bytes.saturating_sub(HEADER_LEN as u64)).unwrap_or(usize::MAX);
        MAX_PAYLOAD.min(by_bound)
    }

    /// Appends a batch, blocking while the spool is full.
    pub fn append_batch<T: AsRef<[u8]>>(&self, payloads: &[T]) -> Result<Range<u64>, SpoolError> {
        let need = self.check_size(payloads)?;
        self.append_fitting(payloads, need)
    }

    /// [`append_batch`](Self::append_batch) for a batch known to fit, `need`
    /// frame bytes.
    fn append_fitting<T: AsRef<[u8]>>(
        &self,
        payloads: &[T],
        need: u64,
    ) -> Result<Range<u64>, SpoolError> {
        let mut st = self.lock();
        loop {
            if st.closed {
                return Err(SpoolError::Closed);
            }
            if st.has_space(need, self.max_bytes) {
                break;
            }
            st.space_waiters += 1;
            B::reclaim(self, &mut st);
            if !st.has_space(need, self.max_bytes) {
                st = self.space.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.space_waiters -= 1;
        }
        self.commit(st, payloads, need)
    }

    /// Appends a batch, yielding to the runtime while the spool is full.
    pub async fn append_batch_async<T: AsRef<[u8]>>(
        &self,
        payloads: &[T],
    ) -> Result<Range<u64>, SpoolError> {
        let need = self.check_size(payloads)?;
        self.append_fitting_async(payloads, need).await
    }

    async fn append_fitting_async<T: AsRef<[u8]>>(
        &self,
        payloads: &[T],
        need: u64,
    ) -> Result<Range<u64>, SpoolError> {
        loop {
            let notified = self.space_async.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                if st.closed {
                    return Err(SpoolError::Closed);
                }
                if st.has_space(need, self.max_bytes) {
                    return self.commit(st, payloads, need);
                }
                st.space_waiters += 1;
                B::reclaim(self, &mut st);
            }
            notified.await;
            self.lock().space_waiters -= 1;
        }
    }

    /// Adds a batch that has room; returns once it is stored.
    fn commit<T: AsRef<[u8]>>(
        &self,
        mut st: Guard<'_, B>,
        payloads: &[T],
        need: u64,
    ) -> Result<Range<u64>, SpoolError> {
        if payloads.is_empty() {
            return Ok(st.next_id..st.next_id);
        }
        let at = now_micros();
        st.bytes += need;
        B::commit(self, st, payloads, need, at)
    }

    /// See [`super::SpoolWriter::append_all`].
    pub fn append_all(&self, records: &[Vec<u8>]) -> Result<Appended, SpoolError> {
        let plan = self.plan(records);
        for batch in &plan.batches {
            self.append_fitting(&records[batch.records.clone()], batch.need)?;
        }
        Ok(plan.outcome)
    }

    /// See [`super::SpoolWriter::append_all_async`].
    pub async fn append_all_async(&self, records: &[Vec<u8>]) -> Result<Appended, SpoolError> {
        let plan = self.plan(records);
        for batch in &plan.batches {
            self.append_fitting_async(&records[batch.records.clone()], batch.need)
                .await?;
        }
        Ok(plan.outcome)
    }

    /// Cuts `records` into batches that fit and finds the records that never
    /// will.
    fn plan(&self, records: &[Vec<u8>]) -> Plan {
        let max_record = self.max_record();
        let mut plan = Plan::default();
        let mut start = 0;
        let (mut payload_bytes, mut need) = (0, 0);
        for (index, record) in records.iter().enumerate() {
            let frame = (HEADER_LEN + record.len()) as u64;
            if record.len() > max_record {
                plan.cut(start..index, need);
                plan.outcome.refused.push(Refused {
                    index,
                    size: record.len(),
                    max_record,
                });
                (start, payload_bytes, need) = (index + 1, 0, 0);
                continue;
            }
            // At least one record per batch, however large: a record above
            // APPEND_BATCH_BYTES that fits the spool goes alone.
            if index > start
                && (payload_bytes + record.len() > APPEND_BATCH_BYTES
                    || need + frame > self.max_bytes)
            {
                plan.cut(start..index, need);
                (start, payload_bytes, need) = (index, 0, 0);
            }
            payload_bytes += record.len();
            need += frame;
        }
        plan.cut(start..records.len(), need);
        plan
    }
}

/// What [`Shared::append_all`] will do.
#[derive(Default)]
struct Plan {
    batches: Vec<Batch>,
    /// The result once every batch is appended.
    outcome: Appended,
}

/// Records appended with one [`Shared::append_batch`]-like call.
struct Batch {
    records: Range<usize>,
    /// Their frame bytes: at most `max_bytes`.
    need: u64,
}

impl Plan {
    fn cut(&mut self, records: Range<usize>, need: u64) {
        if !records.is_empty() {
            self.outcome.appended += records.len();
            self.batches.push(Batch { records, need });
        }
    }
}

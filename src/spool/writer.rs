//! The appenders' side, for both backends: what can ever fit, and
//! backpressure (waiting for space, blocking or async).

use std::ops::Range;

use super::SpoolError;
use super::format::{HEADER_LEN, MAX_PAYLOAD};
use super::shared::{Backend, Guard, Shared, now_micros};

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
}

//! The reader's side, for both backends: deliveries as leases, the
//! redelivery queue (a [`Delivery`] dropped without `ack` comes back before
//! anything new), acknowledgements in any order, and the reader's waiting
//! (blocking or async). Where the records come from and what an
//! acknowledgement frees is the backend's ([`Backend::read_new`],
//! [`Backend::acked`]); on disk, the progress written to the checkpoint is
//! [`super::acks`]'s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::shared::{Backend, Shared, State};
use super::{Delivery, Origin, Receipt, SpoolError};

/// Longest wait of `next_batch`: keeps deadline arithmetic from overflowing.
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// A record held in memory: queued (in memory) or put back after a drop.
pub(super) struct Held {
    pub payload: Vec<u8>,
    pub appended_at_micros: u64,
    /// Where it lives on disk, for a record put back.
    pub origin: Option<Origin>,
    /// Put back without its bytes (a dropped re-readable [`Receipt`]): they
    /// are read again from `origin` when it is delivered.
    pub reread: bool,
}

impl<B: Backend> Shared<B> {
    /// See [`super::SpoolReader::next_batch`].
    pub fn next_batch(
        self: &Arc<Self>,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<Vec<Delivery>, SpoolError> {
        let deadline = Instant::now() + max_wait.min(MAX_WAIT);
        loop {
            B::checkpoint_if_due(self);
            let batch = self.try_batch(max_records)?;
            if !batch.is_empty() || max_records == 0 {
                return Ok(batch);
            }
            let mut st = self.lock();
            if self.available(&st) {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(batch);
            }
            st.reader_waiting = true;
            let (mut st, _) = self
                .data
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner());
            st.reader_waiting = false;
        }
    }

    /// See [`super::SpoolReader::next_batch_async`].
    pub async fn next_batch_async(
        self: &Arc<Self>,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<Vec<Delivery>, SpoolError> {
        let deadline = tokio::time::Instant::now() + max_wait.min(MAX_WAIT);
        loop {
            B::checkpoint_if_due(self);
            let notified = self.data_async.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let batch = self.try_batch(max_records)?;
            if !batch.is_empty() || max_records == 0 {
                return Ok(batch);
            }
            if self.available(&self.lock()) {
                continue;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(batch);
            }
        }
    }

    /// Whether the reader would find a record now.
    fn available(&self, st: &State<B::State>) -> bool {
        !st.put_back.is_empty() || B::has_unread(st)
    }

    /// Whatever can be delivered now, without waiting: put-back records
    /// first, lowest id first, then new ones.
    fn try_batch(self: &Arc<Self>, max: usize) -> Result<Vec<Delivery>, SpoolError> {
        let mut out = Vec::new();
        let mut st = self.lock();
        while out.len() < max {
            let Some((id, held)) = st.put_back.pop_first() else {
                break;
            };
            let payload = match (held.reread, held.origin) {
                (true, Some(origin)) => match super::read_from_disk(&B::handle(self), origin, id) {
                    Ok(payload) => payload,
                    Err(error) => {
                        // Kept for the next try (the file is still there,
                        // an I/O error may pass).
                        st.put_back.insert(id, held);
                        return Err(error);
                    }
                },
                _ => held.payload,
            };
            let mut delivery = self.delivery(id, payload, held.appended_at_micros);
            if let Some(origin) = held.origin {
                delivery.origin = origin;
            }
            out.push(delivery);
        }
        B::read_new(self, st, &mut out, max)?;
        Ok(out)
    }

    pub fn delivery(
        self: &Arc<Self>,
        id: u64,
        payload: Vec<u8>,
        appended_at_micros: u64,
    ) -> Delivery {
        Delivery {
            id,
            payload,
            appended_at_micros,
            handle: B::handle(self),
            settled: false,
            origin: Origin::Memory,
        }
    }

    /// A delivery dropped without `ack`: delivered again first.
    /// `reread`: `payload` is empty, the bytes are read again from `origin`.
    pub fn put_back(
        &self,
        id: u64,
        payload: Vec<u8>,
        appended_at_micros: u64,
        origin: Origin,
        reread: bool,
    ) {
        let mut st = self.lock();
        st.put_back.insert(
            id,
            Held {
                payload,
                appended_at_micros,
                origin: Some(origin),
                reread,
            },
        );
        st.stats.returned_unacked += 1;
        self.wake_reader(&st);
    }

    /// Acknowledges receipts of this spool under one lock.
    pub fn ack_receipts(&self, receipts: impl Iterator<Item = Receipt>) {
        self.ack_records(receipts.map(|mut receipt| {
            receipt.settled = true;
            (receipt.id, receipt.payload_len)
        }));
    }

    /// Acknowledges deliveries of this spool under one lock.
    pub fn ack_all(&self, deliveries: impl Iterator<Item = Delivery>) {
        self.ack_records(deliveries.map(|mut delivery| {
            delivery.settled = true;
            (delivery.id, delivery.payload.len())
        }));
    }

    /// Acknowledges records (id, payload length) of this spool under one
    /// lock: what every acknowledgement comes down to.
    pub fn ack_records(&self, records: impl Iterator<Item = (u64, usize)>) {
        let mut guard = self.lock();
        let st = &mut *guard;
        let mut oldest_acked = false;
        for (id, payload_len) in records {
            let first = st.outstanding.first_key_value().map(|(id, _)| *id);
            if st.outstanding.remove(&id).is_none() {
                continue;
            }
            oldest_acked |= first == Some(id);
            B::acked(st, payload_len);
        }
        if oldest_acked {
            B::reclaim(self, st);
        }
        self.wake_space(st);
        drop(guard);
        B::checkpoint_if_due(self);
    }
}

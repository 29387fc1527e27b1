//! Flood mode, for benchmarks (SPEC §9): a watch of a flooded (kind,
//! namespace) carries, beside the store's real changes, a stream of MODIFIED
//! events of generated objects at a set rate, made without the store's cost
//! per write (a JSON parse and two serialisations, a lock, a wake-up of every
//! watcher) so that one server can offer tens of thousands of events a
//! second to the process under test on the same two cores.
//!
//! The generated objects are ConfigMap-shaped (`data.seq`, `data.payload`)
//! and named `flood-<n>` (n below [`Flood::objects`]); every event takes the
//! next cluster-wide resourceVersion from the store, so versions stay
//! increasing and unique across real and generated events, and a watch
//! resumed from a generated version goes on from there. Generated events are
//! not kept in the history (a watch resumed from before one does not see it
//! again) and LIST does not return the objects: a benchmark's stream, not a
//! cluster's state.
//!
//! A watch never gets more than its rate: a reader slower than the rate
//! makes the stream wait (the channel is bounded) and the events it could
//! not take are not made up for later.

use std::time::Duration;

use tokio::time::Instant;

/// One flood: what a watch of its (kind, namespace) receives.
#[derive(Debug, Clone)]
pub struct Flood {
    /// Events per second, per watch.
    pub rate: u32,
    /// Distinct objects the events cycle through.
    pub objects: usize,
    /// Bytes of `data.payload` in each object.
    pub payload_bytes: usize,
}

/// `len` bytes of hexadecimal digits from a fixed pseudo-random sequence:
/// object data that compresses about as real data does (gzip takes it to
/// about half), where a run of one letter would shrink to nothing and make
/// every message and request unrealistically small.
pub fn payload(len: usize) -> String {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b"0123456789abcdef"[(state & 15) as usize])
        })
        .collect()
}

/// How often a flooded watch sends what its rate allows since the last time.
pub(crate) const TICK: Duration = Duration::from_millis(5);

/// The generator of one watch's flood.
pub(crate) struct FloodStream {
    flood: Flood,
    api_version: String,
    kind: String,
    namespace: String,
    payload: String,
    started: Instant,
    sent: u64,
}

impl FloodStream {
    pub(crate) fn new(flood: Flood, api_version: &str, kind: &str, namespace: &str) -> Self {
        FloodStream {
            payload: payload(flood.payload_bytes),
            flood,
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            started: Instant::now(),
            sent: 0,
        }
    }

    /// Events due at `now`: the rate's share since the start, less what was
    /// sent, at most one tick's worth beyond one tick (a late tick does not
    /// turn into a burst).
    pub(crate) fn due(&mut self, now: Instant) -> u64 {
        let rate = u64::from(self.flood.rate);
        let owed =
            (now.duration_since(self.started).as_micros() as u64).saturating_mul(rate) / 1_000_000;
        let per_tick = (rate * TICK.as_micros() as u64 / 1_000_000).max(1);
        let due = owed.saturating_sub(self.sent);
        if due > 2 * per_tick {
            // Behind (a slow reader): forget what was not taken.
            self.sent = owed - 2 * per_tick;
            return 2 * per_tick;
        }
        due
    }

    /// The watch lines of `count` events at versions `first_rv..`.
    pub(crate) fn lines(&mut self, first_rv: u64, count: u64) -> String {
        let mut out = String::with_capacity(count as usize * (self.payload.len() + 300));
        for rv in first_rv..first_rv + count {
            let n = self.sent % self.flood.objects.max(1) as u64;
            self.sent += 1;
            out.push_str(&format!(
                "{{\"type\":\"MODIFIED\",\"object\":{{\"apiVersion\":\"{}\",\"kind\":\"{}\",\
                 \"metadata\":{{\"name\":\"flood-{n}\",\"namespace\":\"{}\",\"uid\":\"flood-{n}-uid\",\
                 \"resourceVersion\":\"{rv}\",\"creationTimestamp\":\"2026-01-01T00:00:00Z\",\
                 \"labels\":{{\"app\":\"flood\"}}}},\"data\":{{\"seq\":\"{rv}\",\"payload\":\"{}\"}}}}}}\n",
                self.api_version, self.kind, self.namespace, self.payload
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_follows_the_rate_and_forgets_what_a_slow_reader_missed() {
        let flood = Flood {
            rate: 1000,
            objects: 3,
            payload_bytes: 4,
        };
        let mut stream = FloodStream::new(flood, "v1", "ConfigMap", "ns");
        let start = stream.started;
        assert_eq!(stream.due(start + Duration::from_millis(5)), 5);
        let lines = stream.lines(10, 5);
        assert_eq!(lines.lines().count(), 5);
        let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
        assert_eq!(first["object"]["metadata"]["resourceVersion"], "10");
        assert_eq!(first["object"]["metadata"]["name"], "flood-0");
        assert_eq!(first["object"]["data"]["payload"], payload(4));
        assert!(payload(64).bytes().all(|b| b.is_ascii_hexdigit()));
        // A second late: two ticks' worth, not a thousand.
        assert_eq!(stream.due(start + Duration::from_millis(1005)), 10);
    }
}

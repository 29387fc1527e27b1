//! Spool throughput (SPEC §9: at least 200,000 records/s of 1 KiB appended
//! and consumed on a 2-core machine).
//!
//! `cargo bench -p kubeherald --bench spool` — for each backend (disk in a
//! temp dir, then memory), 4 appender threads write 1 KiB records in batches
//! of 64 while the publisher thread reads batches of 500 and acknowledges
//! them; prints records/s and MB/s of appended-and-acknowledged records, and
//! the single-record append rate (group commit). Not a timed test: it only
//! reports. `SPOOL_BENCH_RECORDS` overrides the record count (default 1M).

use std::thread;
use std::time::{Duration, Instant};

use kubeherald::spool::{Delivery, Spool, SpoolOptions};

const RECORD: usize = 1024;

fn run(name: &str, spool: Spool, records: u64, batch: usize, appenders: u64) {
    let per_thread = records / appenders;
    let total = per_thread * appenders;
    let start = Instant::now();
    let threads: Vec<_> = (0..appenders)
        .map(|t| {
            let writer = spool.writer();
            thread::spawn(move || {
                let payloads: Vec<Vec<u8>> = (0..batch)
                    .map(|i| vec![(t as usize + i) as u8; RECORD])
                    .collect();
                let mut left = per_thread as usize;
                while left > 0 {
                    let n = left.min(batch);
                    if batch == 1 {
                        writer.append(&payloads[0]).unwrap();
                    } else {
                        writer.append_batch(&payloads[..n]).unwrap();
                    }
                    left -= n;
                }
            })
        })
        .collect();
    let mut reader = spool.reader().unwrap();
    let mut acked = 0u64;
    while acked < total {
        let deliveries = reader.next_batch(500, Duration::from_secs(30)).unwrap();
        assert!(!deliveries.is_empty(), "stalled at {acked}");
        acked += deliveries.len() as u64;
        Delivery::ack_all(deliveries);
    }
    let elapsed = start.elapsed().as_secs_f64();
    for t in threads {
        t.join().unwrap();
    }
    let stats = spool.stats();
    println!(
        "{name:<34} {total:>8} records in {elapsed:6.2}s: {:>9.0} records/s, {:>7.1} MB/s appended+acked (spool now {} bytes, {} segments)",
        total as f64 / elapsed,
        (total * (RECORD as u64)) as f64 / elapsed / 1e6,
        stats.bytes,
        stats.segments,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is parsed.
    let records: u64 = std::env::var("SPOOL_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let on_disk = |sub: &str| Spool::open(dir.path().join(sub), SpoolOptions::default()).unwrap();
    run(
        "disk, 4 appenders, batches of 64",
        on_disk("a"),
        records,
        64,
        4,
    );
    run(
        "memory, 4 appenders, batches of 64",
        Spool::in_memory(SpoolOptions::default().max_bytes),
        records,
        64,
        4,
    );
    run(
        "disk, 4 appenders, single appends",
        on_disk("b"),
        records / 4,
        1,
        4,
    );
    run(
        "memory, 4 appenders, single appends",
        Spool::in_memory(SpoolOptions::default().max_bytes),
        records / 4,
        1,
        4,
    );
}

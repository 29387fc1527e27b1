//! Integration tests of `kubeherald::spool` through its public API:
//! backpressure, async use from a current-thread runtime, the in-memory
//! variant, and `kill -9` of a process in the middle of appending.
//!
//! The kill -9 test needs a second process that appends. Instead of a
//! test-only binary, the test re-executes this very test binary
//! (`std::env::current_exe()`) filtered to the test `kill9_child_appender`
//! with `KUBEHERALD_SPOOL_KILL9_DIR` set; without that variable that test
//! returns at once, so a normal run just passes it.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use kubeherald::spool::{Delivery, Spool, SpoolOptions};

const KILL9_DIR: &str = "KUBEHERALD_SPOOL_KILL9_DIR";

/// Polls `condition` until it holds; fails after 10 s.
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::yield_now();
    }
}

fn spools() -> Vec<(Spool, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let options = SpoolOptions {
        max_bytes: 64 * 1024,
        segment_bytes: Some(8 * 1024),
        ..SpoolOptions::default()
    };
    vec![
        (Spool::open(dir.path(), options).unwrap(), Some(dir)),
        (Spool::in_memory(64 * 1024), None),
    ]
}

#[test]
fn appends_wait_at_max_bytes_and_resume_after_acks() {
    for (spool, _dir) in spools() {
        let record = vec![7u8; 1000];
        let (tx, rx) = mpsc::channel();
        let writer = spool.writer();
        let appender = thread::spawn(move || {
            for _ in 0..200 {
                tx.send(writer.append(&record).unwrap()).unwrap();
            }
        });
        // 200 records of ~1 KiB cannot fit in 64 KiB: the appender must wait.
        wait_for("the appender to block", || {
            spool.stats().appenders_waiting == 1
        });
        let stats = spool.stats();
        assert!(stats.bytes <= stats.max_bytes, "{stats:?}");
        let before: Vec<u64> = rx.try_iter().collect();
        assert!(
            before.len() < 200 && before.len() > 30,
            "{} appended before blocking",
            before.len()
        );

        let mut reader = spool.reader().unwrap();
        let mut delivered = Vec::new();
        while delivered.len() < 200 {
            let batch = reader.next_batch(16, Duration::from_secs(10)).unwrap();
            assert!(!batch.is_empty(), "appender never resumed");
            delivered.extend(batch.iter().map(Delivery::id));
            Delivery::ack_all(batch);
        }
        appender.join().unwrap();
        assert_eq!(
            delivered,
            (0..200).collect::<Vec<_>>(),
            "nothing dropped, FIFO"
        );
        assert_eq!(spool.stats().pending_records, 0);
    }
}

#[test]
fn closing_releases_blocked_appenders() {
    for (spool, _dir) in spools() {
        let writer = spool.writer();
        let appender = thread::spawn(move || {
            loop {
                if let Err(err) = writer.append(&[1u8; 1000]) {
                    return err;
                }
            }
        });
        wait_for("the appender to block", || {
            spool.stats().appenders_waiting == 1
        });
        spool.close();
        let err = appender.join().unwrap();
        assert!(
            matches!(err, kubeherald::spool::SpoolError::Closed),
            "{err}"
        );
    }
}

#[test]
fn async_append_waits_without_blocking_its_runtime() {
    for (spool, _dir) in spools() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let writer = spool.writer();
        let mut reader = spool.reader().unwrap();
        runtime.block_on(async move {
            // The publisher task runs on the same single thread as the
            // appender: it only gets to run if the full spool yields.
            let publisher = tokio::spawn(async move {
                let mut seen = Vec::new();
                while seen.len() < 300 {
                    let batch = reader
                        .next_batch_async(32, Duration::from_secs(10))
                        .await
                        .unwrap();
                    assert!(!batch.is_empty(), "no progress");
                    seen.extend(batch.iter().map(Delivery::id));
                    Delivery::ack_all(batch);
                }
                seen
            });
            let mut ids = Vec::new();
            for chunk in 0..30 {
                let batch: Vec<Vec<u8>> = (0..10)
                    .map(|i| vec![(chunk * 10 + i) as u8; 1000])
                    .collect();
                ids.extend(writer.append_batch_async(&batch).await.unwrap());
            }
            assert_eq!(ids, (0..300).collect::<Vec<_>>());
            assert_eq!(publisher.await.unwrap(), ids);
        });
    }
}

#[test]
fn many_threads_append_concurrently_without_loss() {
    for (spool, _dir) in spools() {
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let writer = spool.writer();
                thread::spawn(move || {
                    (0..300u32)
                        .map(|i| {
                            let mut p = vec![t; 100];
                            p.extend_from_slice(&i.to_le_bytes());
                            if i.is_multiple_of(3) {
                                writer.append_batch(&[p.clone(), p]).unwrap().start
                            } else {
                                writer.append(&p).unwrap()
                            }
                        })
                        .count()
                })
            })
            .collect();
        let mut reader = spool.reader().unwrap();
        let mut per_thread = vec![Vec::new(); 4];
        let mut ids = BTreeSet::new();
        while ids.len() < 4 * 400 {
            let batch = reader.next_batch(64, Duration::from_secs(10)).unwrap();
            assert!(!batch.is_empty());
            for d in &batch {
                assert!(ids.insert(d.id()), "id {} twice", d.id());
                let p = d.payload();
                per_thread[p[0] as usize].push(u32::from_le_bytes(p[100..104].try_into().unwrap()));
            }
            Delivery::ack_all(batch);
        }
        for t in threads {
            assert_eq!(t.join().unwrap(), 300);
        }
        for seq in per_thread {
            // Each thread's records arrive in its own order (batches twice).
            let mut expected: Vec<u32> = (0..300u32)
                .flat_map(|i| {
                    if i.is_multiple_of(3) {
                        vec![i, i]
                    } else {
                        vec![i]
                    }
                })
                .collect();
            expected.sort();
            assert_eq!(seq, expected);
        }
    }
}

// ---------------------------------------------------------------------------
// kill -9.

fn child_payload(seq: u64) -> Vec<u8> {
    let mut p = format!("seq={seq};").into_bytes();
    p.resize(
        p.len() + (seq % 1000) as usize * 37 % 1500,
        b'a' + (seq % 26) as u8,
    );
    p
}

fn check_child_payload(p: &[u8]) -> bool {
    let text = String::from_utf8_lossy(p);
    let Some(seq) = text
        .strip_prefix("seq=")
        .and_then(|t| t.split(';').next())
        .and_then(|s| s.parse().ok())
    else {
        return false;
    };
    p == child_payload(seq).as_slice()
}

/// Not a test of its own: the body of the child process of
/// `kill9_loses_no_returned_append`. Appends forever, printing
/// `appended <id>` after each append returned; a publisher thread acks most
/// deliveries (printing `acking <id>` just before) and drops some.
#[test]
fn kill9_child_appender() {
    let Ok(dir) = std::env::var(KILL9_DIR) else {
        return;
    };
    let options = SpoolOptions {
        segment_bytes: Some(256 * 1024),
        checkpoint_interval: Duration::from_millis(5),
        ..SpoolOptions::default()
    };
    let spool = Spool::open(&dir, options).unwrap();
    let mut reader = spool.reader().unwrap();
    // libtest has printed "test kill9_child_appender ... " without a newline:
    // end that line so the first report is a line of its own.
    println!();
    thread::spawn(move || {
        let mut n = 0u64;
        loop {
            let batch = reader.next_batch(50, Duration::from_millis(100)).unwrap();
            let mut to_ack = Vec::new();
            let mut out = std::io::stdout().lock();
            for d in batch {
                assert!(
                    check_child_payload(d.payload()),
                    "payload of {} damaged",
                    d.id()
                );
                n += 1;
                if n.is_multiple_of(7) {
                    continue; // dropped: delivered again later
                }
                writeln!(out, "acking {}", d.id()).unwrap();
                to_ack.push(d);
            }
            // Announced before it takes effect: a kill between the ack and
            // the line would otherwise look like a lost record.
            out.flush().unwrap();
            Delivery::ack_all(to_ack);
        }
    });
    // Three appenders, so group commit is under the kill too.
    let appenders: Vec<_> = (0..3u64)
        .map(|t| {
            let writer = spool.writer();
            thread::spawn(move || {
                let start = t << 40;
                for seq in start.. {
                    let ids = if seq.is_multiple_of(5) {
                        let batch: Vec<Vec<u8>> =
                            (0..8).map(|i| child_payload(seq * 8 + i)).collect();
                        writer.append_batch(&batch).unwrap()
                    } else {
                        let id = writer.append(&child_payload(seq)).unwrap();
                        id..id + 1
                    };
                    let mut out = std::io::stdout().lock();
                    for id in ids {
                        writeln!(out, "appended {id}").unwrap();
                    }
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for appender in appenders {
        appender.join().unwrap();
    }
}

#[test]
fn kill9_loses_no_returned_append() {
    let dir = tempfile::tempdir().unwrap();
    let mut appended = BTreeSet::new();
    let mut acked = BTreeSet::new();
    for round in 0..4 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "kill9_child_appender",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(KILL9_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let kill_after = fastrand::usize(200..20_000);
        let mut line = String::new();
        let mut seen = 0;
        let record = |line: &str, appended: &mut BTreeSet<u64>, acked: &mut BTreeSet<u64>| {
            // A line cut by the kill has no newline and proves nothing.
            let Some(line) = line.strip_suffix('\n') else {
                return;
            };
            if let Some(id) = line.strip_prefix("appended ") {
                appended.insert(id.parse::<u64>().unwrap());
            } else if let Some(id) = line.strip_prefix("acking ") {
                acked.insert(id.parse::<u64>().unwrap());
            }
        };
        while seen < kill_after {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                panic!("child exited early in round {round}: {:?}", child.wait());
            }
            record(&line, &mut appended, &mut acked);
            seen += 1;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // What the child printed before dying still counts.
        loop {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                break;
            }
            record(&line, &mut appended, &mut acked);
        }
    }

    let spool = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
    let mut reader = spool.reader().unwrap();
    let mut delivered = BTreeSet::new();
    loop {
        let batch = reader.next_batch(1000, Duration::ZERO).unwrap();
        if batch.is_empty() {
            break;
        }
        for d in &batch {
            assert!(
                check_child_payload(d.payload()),
                "payload of {} damaged",
                d.id()
            );
            delivered.insert(d.id());
        }
        Delivery::ack_all(batch);
    }
    let lost: Vec<u64> = appended
        .iter()
        .filter(|id| !delivered.contains(id) && !acked.contains(id))
        .copied()
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} returned appends lost: {:?}",
        lost.len(),
        appended.len(),
        &lost[..lost.len().min(20)]
    );
    let stats = spool.stats();
    assert_eq!(stats.corrupt_records_skipped, 0, "{stats:?}");
    assert!(
        appended.len() > 800,
        "too few appends to mean anything: {}",
        appended.len()
    );
}

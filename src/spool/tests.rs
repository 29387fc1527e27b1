//! Unit tests of the spool: the model-based property test (STYLE 10), the
//! recovery rules against damaged files, the checkpoint and the lock.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;

use super::format::{HEADER_LEN, MAX_PAYLOAD};
use super::*;

/// Small segments so that a few records already roll and reclaim files; a
/// checkpoint after every ack so a clean reopen re-delivers nothing acked.
fn options() -> SpoolOptions {
    SpoolOptions {
        max_bytes: 1 << 30,
        segment_bytes: Some(4096),
        checkpoint_interval: Duration::ZERO,
    }
}

fn payload(n: usize, len: usize) -> Vec<u8> {
    let mut p = format!("record {n}:").into_bytes();
    p.resize(len.max(p.len()), b'a' + (n % 26) as u8);
    p
}

/// Every record now deliverable, acknowledged.
fn drain(spool: &Spool) -> Vec<(u64, Vec<u8>)> {
    let mut reader = spool.reader().unwrap();
    let mut got = Vec::new();
    loop {
        let batch = reader.next_batch(64, Duration::ZERO).unwrap();
        if batch.is_empty() {
            return got;
        }
        got.extend(batch.iter().map(|d| (d.id(), d.payload().to_vec())));
        Delivery::ack_all(batch);
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

fn append_n(spool: &Spool, n: usize, len: usize) -> Vec<u64> {
    let writer = spool.writer();
    (0..n)
        .map(|i| writer.append(&payload(i, len)).unwrap())
        .collect()
}

#[test]
fn fifo_delivery_and_reclaim_after_acks() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), options()).unwrap();
    let ids = append_n(&spool, 100, 200);
    assert_eq!(ids, (0..100).collect::<Vec<_>>());
    assert!(segment_files(dir.path()).len() > 3, "small segments roll");
    let got = drain(&spool);
    assert_eq!(got.iter().map(|(id, _)| *id).collect::<Vec<_>>(), ids);
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, (_, p))| *p == payload(i, 200))
    );
    // Every segment but the one still being appended to is gone.
    assert_eq!(segment_files(dir.path()).len(), 1);
    let stats = spool.stats();
    assert_eq!(
        (stats.pending_records, stats.in_flight, stats.segments),
        (0, 0, 1)
    );
    assert_eq!(stats.oldest_unacked, None);
}

#[test]
fn dropped_delivery_comes_back_first_and_acks_out_of_order() {
    for spool in [
        Spool::in_memory(1 << 20),
        Spool::open(tempfile::tempdir().unwrap().keep(), options()).unwrap(),
    ] {
        append_n(&spool, 6, 10);
        let mut reader = spool.reader().unwrap();
        let mut batch = reader.next_batch(4, Duration::ZERO).unwrap();
        assert_eq!(
            batch.iter().map(Delivery::id).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert_eq!(spool.stats().in_flight, 4);
        assert!(spool.stats().oldest_unacked.is_some());
        let three = batch.pop().unwrap();
        three.ack();
        drop(batch.remove(1)); // id 1 back to the queue
        Delivery::ack_all(batch); // 0 and 2
        let next = reader.next_batch(10, Duration::ZERO).unwrap();
        assert_eq!(next.iter().map(Delivery::id).collect::<Vec<_>>(), [1, 4, 5]);
        assert_eq!(next[0].payload(), payload(1, 10));
        let stats = spool.stats();
        assert_eq!(
            (
                stats.returned_unacked,
                stats.in_flight,
                stats.pending_records
            ),
            (1, 3, 3)
        );
        Delivery::ack_all(next);
        assert_eq!(spool.stats().pending_records, 0);
        assert!(reader.next_batch(10, Duration::ZERO).unwrap().is_empty());
        if let Some(dir) = spool.dir() {
            let dir = dir.to_owned();
            drop((reader, spool));
            fs::remove_dir_all(dir).unwrap();
        }
    }
}

#[test]
fn a_rereadable_receipt_frees_the_bytes_and_a_dropped_one_comes_back() {
    for (_dir, spool) in small_spools(1 << 20) {
        let ids = append_n(&spool, 6, 300);
        let mut reader = spool.reader().unwrap();
        let batch = reader.next_batch(6, Duration::ZERO).unwrap();
        let receipts: Vec<Receipt> = batch
            .into_iter()
            .map(Delivery::into_rereadable_receipt)
            .collect();
        // Read back as appended, on disk from the segment.
        for (i, receipt) in receipts.iter().enumerate() {
            assert_eq!(receipt.read_back().unwrap(), payload(i, 300));
        }
        let on_disk = receipts[0].bytes_held() == 0;
        let mut receipts = receipts.into_iter();
        Receipt::ack_all(receipts.by_ref().take(2));
        drop(receipts);
        // The four dropped come back, in order, with their bytes.
        let again = reader.next_batch(10, Duration::ZERO).unwrap();
        let got: Vec<(u64, Vec<u8>)> = again
            .iter()
            .map(|d| (d.id(), d.payload().to_vec()))
            .collect();
        let want: Vec<(u64, Vec<u8>)> = (2..6).map(|i| (ids[i], payload(i, 300))).collect();
        assert_eq!(got, want, "on disk: {on_disk}");
        Delivery::ack_all(again);
        assert_eq!(spool.stats().pending_records, 0);
    }
}

#[test]
fn pending_acks_acknowledge_later_and_unacknowledged_wait_for_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let spool = Spool::open(dir.path(), options()).unwrap();
        let ids = append_n(&spool, 6, 300);
        let mut reader = spool.reader().unwrap();
        let receipts = reader.next_batch(6, Duration::ZERO).unwrap();
        let mut receipts = receipts.into_iter().map(Delivery::into_rereadable_receipt);
        let (mut acked, mut kept) = (PendingAcks::default(), PendingAcks::default());
        receipts.by_ref().take(2).for_each(|r| acked.push(r));
        receipts.for_each(|r| kept.push(r));
        assert_eq!((acked.len(), kept.len()), (2, 4));
        // Put back in front of what came later, then acknowledged together.
        let mut later = PendingAcks::default();
        later.append(acked);
        later.ack();
        assert_eq!(spool.stats().pending_records, 4);
        // Held back and never acknowledged: not delivered again in this run.
        drop(kept);
        assert!(reader.next_batch(10, Duration::ZERO).unwrap().is_empty());
        ids
    };
    let spool = Spool::open(dir.path(), options()).unwrap();
    let again: Vec<u64> = drain(&spool).into_iter().map(|(id, _)| id).collect();
    assert_eq!(again, ids[2..], "the four held back, at the next open");
}

#[test]
fn reopen_redelivers_only_unacknowledged() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = Spool::open(dir.path(), options()).unwrap();
        append_n(&spool, 20, 100);
        let mut reader = spool.reader().unwrap();
        let batch = reader.next_batch(10, Duration::ZERO).unwrap();
        let (odd, even): (Vec<Delivery>, Vec<Delivery>) =
            batch.into_iter().partition(|d| d.id() % 2 == 1);
        Delivery::ack_all(odd);
        // Still in flight when the process stops.
        drop(even);
    }
    let spool = Spool::open(dir.path(), options()).unwrap();
    let got: Vec<u64> = drain(&spool).into_iter().map(|(id, _)| id).collect();
    let mut expected: Vec<u64> = (0..10).filter(|id| id % 2 == 0).collect();
    expected.extend(10..20);
    assert_eq!(got, expected);
    assert_eq!(spool.stats().redelivered_after_restart, 5);
    // New ids continue above the old ones.
    assert_eq!(spool.writer().append(b"x").unwrap(), 20);
}

#[test]
fn flipped_byte_mid_file_skips_that_record_only() {
    let dir = tempfile::tempdir().unwrap();
    let options = SpoolOptions {
        segment_bytes: Some(1 << 20),
        ..options()
    };
    drop(
        Spool::open(dir.path(), options.clone())
            .map(|s| append_n(&s, 10, 100))
            .unwrap(),
    );
    let [segment] = segment_files(dir.path()).try_into().unwrap();
    let mut bytes = fs::read(&segment).unwrap();
    let frame = HEADER_LEN + 100;
    bytes[5 * frame + HEADER_LEN + 50] ^= 0x01; // payload of id 5
    fs::write(&segment, &bytes).unwrap();

    let spool = Spool::open(dir.path(), options).unwrap();
    let got: Vec<u64> = drain(&spool).into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, [0, 1, 2, 3, 4, 6, 7, 8, 9]);
    let stats = spool.stats();
    assert_eq!(
        (stats.corrupt_records_skipped, stats.torn_tails_cut),
        (1, 0)
    );
}

#[test]
fn damaged_length_field_resynchronises_on_the_next_frame() {
    let dir = tempfile::tempdir().unwrap();
    drop(
        Spool::open(dir.path(), options())
            .map(|s| append_n(&s, 10, 100))
            .unwrap(),
    );
    let segment = segment_files(dir.path())[0].clone();
    let mut bytes = fs::read(&segment).unwrap();
    bytes[HEADER_LEN + 100 + 10] = 0xff; // length of id 1 now points far past the file
    fs::write(&segment, &bytes).unwrap();
    let spool = Spool::open(dir.path(), options()).unwrap();
    let got: Vec<u64> = drain(&spool).into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, [0, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(spool.stats().corrupt_records_skipped, 1);
}

#[test]
fn truncated_last_record_is_cut_as_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    drop(
        Spool::open(dir.path(), options())
            .map(|s| append_n(&s, 10, 100))
            .unwrap(),
    );
    let last = segment_files(dir.path()).pop().unwrap();
    let len = fs::metadata(&last).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len - 30)
        .unwrap();

    let spool = Spool::open(dir.path(), options()).unwrap();
    let stats = spool.stats();
    assert_eq!(
        (stats.torn_tails_cut, stats.corrupt_records_skipped),
        (1, 0)
    );
    assert_eq!(
        fs::metadata(&last).unwrap().len() % (HEADER_LEN as u64 + 100),
        0,
        "cut at a frame boundary"
    );
    // The torn record's id is given to the next append: it never returned.
    assert_eq!(spool.writer().append(b"after").unwrap(), 9);
    let got: Vec<u64> = drain(&spool).into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, (0..10).collect::<Vec<_>>());
    assert_eq!(spool.stats().corrupt_records_skipped, 0);
}

#[test]
fn garbage_only_segment_and_temp_files_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    drop(
        Spool::open(dir.path(), options())
            .map(|s| append_n(&s, 3, 10))
            .unwrap(),
    );
    fs::write(dir.path().join("checkpoint.tmp"), b"half a checkpoint").unwrap();
    fs::write(dir.path().join("whatever.tmp"), b"junk").unwrap();
    fs::write(
        dir.path().join(segment::segment_name(1_000)),
        b"not a frame at all",
    )
    .unwrap();
    let spool = Spool::open(dir.path(), options()).unwrap();
    let stats = spool.stats();
    assert_eq!((stats.temp_files_removed, stats.torn_tails_cut), (2, 1));
    assert!(!dir.path().join("checkpoint.tmp").exists());
    assert!(!dir.path().join(segment::segment_name(1_000)).exists());
    // Ids continue above the removed segment's name: never reused.
    assert_eq!(spool.writer().append(b"y").unwrap(), 1_000);
    assert_eq!(drain(&spool).len(), 4);
}

#[test]
fn missing_or_damaged_checkpoint_delivers_everything_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = Spool::open(
            dir.path(),
            SpoolOptions {
                segment_bytes: Some(1 << 20),
                ..options()
            },
        )
        .unwrap();
        append_n(&spool, 5, 10);
        assert_eq!(drain(&spool).len(), 5);
    }
    // With the checkpoint: nothing again.
    assert!(drain(&Spool::open(dir.path(), options()).unwrap()).is_empty());
    for damage in [None, Some(b"KHc1 garbage".as_slice())] {
        match damage {
            None => fs::remove_file(dir.path().join("checkpoint")).unwrap(),
            Some(bytes) => fs::write(dir.path().join("checkpoint"), bytes).unwrap(),
        }
        let spool = Spool::open(dir.path(), options()).unwrap();
        let got: Vec<u64> = drain(&spool).into_iter().map(|(id, _)| id).collect();
        assert_eq!(got, [0, 1, 2, 3, 4], "not proven acknowledged: kept");
    }
}

#[test]
fn second_open_of_a_directory_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), options()).unwrap();
    let err = Spool::open(dir.path(), options()).err().expect("locked");
    assert!(matches!(err, SpoolError::Locked { .. }));
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
    drop(spool);
    Spool::open(dir.path(), options()).expect("lock released with the spool");
}

#[test]
fn oversized_records_are_refused_not_waited_for() {
    let spool = Spool::in_memory(1 << 20);
    let err = spool.writer().append(&vec![0; 2 << 20]).unwrap_err();
    assert!(matches!(err, SpoolError::TooLarge { .. }));
    assert!(!err.is_retryable());
}

#[test]
fn sync_makes_checkpoint_and_keeps_records() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), options()).unwrap();
    append_n(&spool, 50, 100);
    spool.sync().unwrap();
    assert!(dir.path().join("checkpoint").exists());
    assert_eq!(drain(&spool).len(), 50);
}

// ---------------------------------------------------------------------------
// append_all: split, then refuse an oversized record.

/// Both backends, bounded by `max_bytes`, with a checkpoint after every ack.
/// Destructure as `(_dir, spool)` so the spool closes before its directory
/// goes.
fn small_spools(max_bytes: u64) -> [(Option<tempfile::TempDir>, Spool); 2] {
    let dir = tempfile::tempdir().unwrap();
    let options = SpoolOptions {
        max_bytes,
        segment_bytes: None,
        checkpoint_interval: Duration::ZERO,
    };
    let disk = Spool::open(dir.path(), options).unwrap();
    [(None, Spool::in_memory(max_bytes)), (Some(dir), disk)]
}

/// Takes `n` records off `spool` on a thread, acknowledging them, so that
/// appends waiting for space go on; gives up after a deadline.
fn consume(spool: &Spool, n: usize) -> std::thread::JoinHandle<Vec<(u64, Vec<u8>)>> {
    let mut reader = spool.reader().unwrap();
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut got = Vec::new();
        while got.len() < n && std::time::Instant::now() < deadline {
            let batch = reader
                .next_batch(n - got.len(), Duration::from_millis(100))
                .unwrap();
            got.extend(batch.iter().map(|d| (d.id(), d.payload().to_vec())));
            Delivery::ack_all(batch);
        }
        got
    })
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

#[test]
fn append_all_splits_a_batch_larger_than_a_small_spool() {
    let frame = HEADER_LEN as u64 + 100;
    for asynchronous in [false, true] {
        for (_dir, spool) in small_spools(10 * frame) {
            let records: Vec<Vec<u8>> = (0..45).map(|i| payload(i, 100)).collect();
            let writer = spool.writer();
            // As one batch it could never fit.
            assert!(matches!(
                writer.append_batch(&records),
                Err(SpoolError::TooLarge { .. })
            ));
            let consumer = consume(&spool, records.len());
            let appended = if asynchronous {
                block_on(writer.append_all_async(&records))
            } else {
                writer.append_all(&records)
            }
            .unwrap();
            assert_eq!(
                appended,
                Appended {
                    appended: 45,
                    refused: Vec::new()
                }
            );
            let got = consumer.join().unwrap();
            assert_eq!(
                got.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
                (0..45).collect::<Vec<_>>(),
                "appended in order, in pieces"
            );
            assert!(got.iter().zip(&records).all(|((_, p), r)| p == r));
        }
    }
}

#[test]
fn append_all_refuses_an_oversized_record_and_appends_the_others_in_order() {
    for (_dir, spool) in small_spools(1000) {
        let largest = 1000 - HEADER_LEN;
        let records = vec![
            payload(0, 100),
            vec![7; 2000],
            payload(2, 100),
            vec![8; largest + 1],
            payload(4, 100),
        ];
        let appended = spool.writer().append_all(&records).unwrap();
        let refused = |index, size| Refused {
            index,
            size,
            max_record: largest,
        };
        assert_eq!(
            appended,
            Appended {
                appended: 3,
                refused: vec![refused(1, 2000), refused(3, largest + 1)],
            }
        );
        let got = drain(&spool);
        assert_eq!(
            got,
            vec![
                (0, records[0].clone()),
                (1, records[2].clone()),
                (2, records[4].clone())
            ]
        );
        // The largest record it can hold is appended.
        let appended = block_on(spool.writer().append_all_async(&[vec![1; largest]])).unwrap();
        assert_eq!(appended.appended, 1);
        assert_eq!(drain(&spool).len(), 1);
    }
    // Above the 16 MiB frame limit: refused whatever the bound.
    let spool = Spool::in_memory(64 << 20);
    let records = vec![b"a".to_vec(), vec![0; MAX_PAYLOAD + 1], b"b".to_vec()];
    let appended = spool.writer().append_all(&records).unwrap();
    assert_eq!(
        appended.refused,
        [Refused {
            index: 1,
            size: MAX_PAYLOAD + 1,
            max_record: MAX_PAYLOAD
        }]
    );
    assert_eq!(appended.appended, 2);
}

#[test]
fn append_all_on_a_closed_spool_errors() {
    for (_dir, spool) in small_spools(1 << 20) {
        spool.close();
        let writer = spool.writer();
        let records = vec![b"x".to_vec()];
        assert!(matches!(
            writer.append_all(&records),
            Err(SpoolError::Closed)
        ));
        assert!(matches!(
            block_on(writer.append_all_async(&records)),
            Err(SpoolError::Closed)
        ));
        // Nothing to append: nothing to refuse either.
        assert_eq!(writer.append_all(&[]).unwrap(), Appended::default());
    }
}

// ---------------------------------------------------------------------------
// Model-based property test: the spool against a VecDeque.

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<usize>),
    Read(usize),
    Ack(usize),
    Drop(usize),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(0usize..600, 1..6).prop_map(Op::Append),
        3 => (1usize..10).prop_map(Op::Read),
        3 => any::<usize>().prop_map(Op::Ack),
        1 => any::<usize>().prop_map(Op::Drop),
        1 => Just(Op::Reopen),
    ]
}

struct Model {
    /// Appended, never delivered: the order of first delivery.
    queue: VecDeque<(u64, Vec<u8>)>,
    /// Delivered, not acknowledged, not in hand: to come back first.
    returned: BTreeSet<u64>,
    /// Delivered and not acknowledged (in hand or returned).
    unacked: HashMap<u64, Vec<u8>>,
    acked: HashSet<u64>,
}

fn run_model(ops: Vec<Op>, disk: bool) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        if disk {
            Spool::open(dir.path(), options()).unwrap()
        } else {
            Spool::in_memory(1 << 30)
        }
    };
    let mut spool = open();
    let mut reader = spool.reader().unwrap();
    let mut in_hand: Vec<Delivery> = Vec::new();
    let mut model = Model {
        queue: VecDeque::new(),
        returned: BTreeSet::new(),
        unacked: HashMap::new(),
        acked: HashSet::new(),
    };
    let mut n = 0;

    let check_batch = |model: &mut Model, batch: &[Delivery]| -> Result<(), TestCaseError> {
        for d in batch {
            prop_assert!(
                !model.acked.contains(&d.id()),
                "acknowledged id {} delivered again",
                d.id()
            );
            if let Some(first) = model.returned.pop_first() {
                // Records put back come first, lowest id first.
                prop_assert_eq!(d.id(), first);
                prop_assert_eq!(d.payload(), model.unacked[&first].as_slice());
            } else {
                let (id, payload) = model
                    .queue
                    .pop_front()
                    .expect("spool delivered more than appended");
                prop_assert_eq!(d.id(), id, "first delivery out of FIFO order");
                prop_assert_eq!(d.payload(), payload.as_slice());
                model.unacked.insert(id, payload);
            }
        }
        Ok(())
    };

    for op in ops {
        match op {
            Op::Append(sizes) => {
                let payloads: Vec<Vec<u8>> = sizes
                    .iter()
                    .map(|&len| {
                        n += 1;
                        payload(n, len)
                    })
                    .collect();
                let ids = spool.writer().append_batch(&payloads).unwrap();
                prop_assert_eq!(ids.end - ids.start, payloads.len() as u64);
                model.queue.extend(ids.zip(payloads));
            }
            Op::Read(max) => {
                let batch = reader.next_batch(max, Duration::ZERO).unwrap();
                let available = model.queue.len() + model.returned.len();
                prop_assert_eq!(batch.len(), max.min(available));
                check_batch(&mut model, &batch)?;
                in_hand.extend(batch);
            }
            Op::Ack(i) if !in_hand.is_empty() => {
                let d = in_hand.swap_remove(i % in_hand.len());
                model.unacked.remove(&d.id());
                model.acked.insert(d.id());
                d.ack();
            }
            Op::Drop(i) if !in_hand.is_empty() => {
                let d = in_hand.swap_remove(i % in_hand.len());
                model.returned.insert(d.id());
            }
            Op::Ack(_) | Op::Drop(_) => {}
            Op::Reopen => {
                if disk {
                    model.returned.extend(in_hand.drain(..).map(|d| d.id()));
                    drop(reader);
                    drop(spool);
                    spool = open();
                    reader = spool.reader().unwrap();
                }
            }
        }
        let stats = spool.stats();
        prop_assert_eq!(
            stats.pending_records,
            (model.queue.len() + model.unacked.len()) as u64
        );
        prop_assert_eq!(stats.in_flight, in_hand.len() as u64);
    }
    model.returned.extend(in_hand.drain(..).map(|d| d.id()));
    loop {
        let batch = reader.next_batch(100, Duration::ZERO).unwrap();
        if batch.is_empty() {
            break;
        }
        check_batch(&mut model, &batch)?;
        for d in &batch {
            model.unacked.remove(&d.id());
        }
        Delivery::ack_all(batch);
    }
    prop_assert!(
        model.queue.is_empty() && model.unacked.is_empty(),
        "records lost"
    );
    prop_assert_eq!(spool.stats().corrupt_records_skipped, 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn disk_spool_behaves_like_a_queue(ops in prop::collection::vec(op(), 1..80)) {
        run_model(ops, true)?;
    }

    #[test]
    fn memory_spool_behaves_like_a_queue(ops in prop::collection::vec(op(), 1..80)) {
        run_model(ops, false)?;
    }
}

/// A record set aside frees its bytes (on disk), keeps its segment, is
/// taken back from its file, and comes again after a reopen if dropped.
#[test]
fn set_aside_records_are_read_back_from_their_segment_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), options()).unwrap();
    // Enough to roll segments (4 KiB each): the set-aside one must keep its.
    let ids = append_n(&spool, 40, 300);
    let mut reader = spool.reader().unwrap();
    let mut batch = reader.next_batch(64, Duration::ZERO).unwrap();
    assert_eq!(batch.len(), ids.len());
    let kept = batch.remove(3);
    let kept_id = kept.id();
    let expected = kept.payload().to_vec();
    let aside = kept.set_aside();
    Delivery::ack_all(batch);
    assert!(
        reader.next_batch(64, Duration::ZERO).unwrap().is_empty(),
        "a record set aside is not delivered again while it is set aside"
    );
    let back = aside.take_back().map_err(|f| f.1).unwrap();
    assert_eq!(back.id(), kept_id);
    assert_eq!(back.payload(), expected, "read back from its segment");
    // Set aside again and dropped: the next open delivers it.
    drop(back.set_aside());
    drop(reader);
    drop(spool);
    let spool = Spool::open(dir.path(), options()).unwrap();
    let again = drain(&spool);
    assert_eq!(again, vec![(kept_id, expected)]);
}

#[test]
fn set_aside_in_memory_keeps_the_bytes() {
    let spool = Spool::in_memory(1 << 20);
    spool.writer().append(b"kept").unwrap();
    let mut reader = spool.reader().unwrap();
    let delivery = reader.next_batch(1, Duration::ZERO).unwrap().pop().unwrap();
    let back = delivery.set_aside().take_back().map_err(|f| f.1).unwrap();
    assert_eq!(back.payload(), b"kept");
    back.ack();
    assert_eq!(spool.stats().pending_records, 0);
}

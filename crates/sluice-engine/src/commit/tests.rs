//! Tests of the group committer: batching, durability before confirmation (through a
//! simulated crash), poisoning, sync modes, the hook's order, shutdown.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::*;
use crate::io::{FaultyStorage, MemStorage, Storage};
use crate::log::LogOptions;

fn open(storage: &Arc<dyn Storage>, name: &str) -> LogHandle {
    let options = LogOptions::default().segment_size(64 * 1024);
    let dir = format!("/data/{name}");
    let (log, _) = SegmentedLog::open(storage.clone(), dir, SegmentKind::Journal, options).unwrap();
    LogHandle::new(log)
}

/// A journal-like body naming its writer and number.
fn body(writer: u64, i: u64) -> Vec<u8> {
    let mut b = vec![16];
    b.extend_from_slice(&writer.to_le_bytes());
    b.extend_from_slice(&i.to_le_bytes());
    b
}

fn faulty() -> (Arc<FaultyStorage<MemStorage>>, Arc<dyn Storage>) {
    let storage = Arc::new(FaultyStorage::new(MemStorage::new()));
    let dyn_storage: Arc<dyn Storage> = storage.clone();
    (storage, dyn_storage)
}

fn no_hook(_: &[Committed]) {}

fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn concurrent_submitters_are_batched_into_fewer_syncs_than_submits() {
    let (storage, dyn_storage) = faulty();
    let (a, b) = (open(&dyn_storage, "a"), open(&dyn_storage, "b"));
    storage.set_sync_delay(Duration::from_millis(2));
    let committer = Committer::start(SyncMode::Always, no_hook);
    let (writers, each) = (8u64, 25u64);
    let results: Vec<Vec<Vec<Range<u64>>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let (committer, a, b) = (&committer, a.clone(), b.clone());
                scope.spawn(move || {
                    (0..each)
                        .map(|i| {
                            let appends =
                                vec![(a.clone(), vec![body(w, i)]), (b.clone(), vec![body(w, i)])];
                            committer.commit(appends).unwrap()
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let seqs: BTreeSet<u64> = results.iter().flatten().map(|r| r[0].start).collect();
    assert_eq!(
        seqs,
        (0..writers * each).collect(),
        "every submit got its own dense sequence in log a"
    );
    let stats = committer.stats();
    assert!(
        stats.syncs < 2 * stats.submits,
        "{} syncs for {} submits touching two logs each: batches must share syncs",
        stats.syncs,
        stats.submits
    );
    assert!(stats.flushes < stats.submits, "{stats:?}");
    let log = a.lock();
    for (w, ranges) in results.iter().enumerate() {
        for (i, r) in ranges.iter().enumerate() {
            let stored = log.read(r[0].start).unwrap();
            assert_eq!(
                stored,
                Some(body(w as u64, i as u64)),
                "writer {w} record {i}"
            );
        }
    }
}

#[test]
fn given_a_crash_while_writers_submit_then_every_confirmed_record_survives() {
    for round in 0..5u64 {
        let storage = Arc::new(MemStorage::new());
        let dyn_storage: Arc<dyn Storage> = storage.clone();
        let log = open(&dyn_storage, "t");
        let committer = Committer::start(SyncMode::Always, no_hook);
        let stop = AtomicBool::new(false);
        let confirmed: Vec<(u64, Vec<u8>)> = std::thread::scope(|scope| {
            let writers: Vec<_> = (0..4u64)
                .map(|w| {
                    let (committer, log, stop) = (&committer, log.clone(), &stop);
                    scope.spawn(move || {
                        let mut confirmed = Vec::new();
                        for i in 0.. {
                            if stop.load(Ordering::SeqCst) {
                                break;
                            }
                            if let Ok(r) = committer.commit(vec![(log.clone(), vec![body(w, i)])]) {
                                confirmed.push((r[0].start, body(w, i)));
                            }
                        }
                        confirmed
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(5 + round * 3));
            storage.crash();
            stop.store(true, Ordering::SeqCst);
            writers
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let after = committer.commit(vec![(log.clone(), vec![body(9, 0)])]);
        assert!(
            after.is_err(),
            "round {round}: nothing can be written through dead handles"
        );
        assert!(
            committer.poisoned().is_some(),
            "round {round}: and the committer is poisoned"
        );
        drop(committer);
        drop(log);
        let (reopened, _) = SegmentedLog::open(
            dyn_storage.clone(),
            "/data/t",
            SegmentKind::Journal,
            LogOptions::default().segment_size(64 * 1024),
        )
        .unwrap();
        assert!(
            !confirmed.is_empty(),
            "round {round}: some commits were confirmed"
        );
        for (seq, expected) in &confirmed {
            assert_eq!(
                reopened.read(*seq).unwrap().as_ref(),
                Some(expected),
                "round {round}: confirmed record {seq} must survive the crash"
            );
        }
    }
}

#[test]
fn after_an_injected_sync_failure_the_batch_fails_and_every_later_submit_fails_at_once() {
    let (storage, dyn_storage) = faulty();
    let log = open(&dyn_storage, "t");
    let committer = Committer::start(SyncMode::Always, no_hook);
    storage.fail_nth_sync(3);
    for i in 0..2 {
        committer
            .commit(vec![(log.clone(), vec![body(0, i)])])
            .expect("the first two syncs succeed");
    }
    let err = committer
        .commit(vec![(log.clone(), vec![body(0, 2)])])
        .unwrap_err();
    assert!(
        matches!(err, Error::Poisoned { ref cause } if cause.contains("injected fault")),
        "the failed batch names the cause: {err}"
    );
    assert!(
        err.to_string().contains("restart to recover"),
        "the message says what to do: {err}"
    );
    let failed_inline = Arc::new(AtomicBool::new(false));
    let flag = failed_inline.clone();
    let batch = Batch::new()
        .append(&log, vec![body(0, 3)])
        .on_complete(move |outcome| {
            flag.store(
                matches!(outcome, Err(Error::Poisoned { .. })),
                Ordering::SeqCst,
            );
        });
    committer.submit(batch);
    assert!(
        failed_inline.load(Ordering::SeqCst),
        "a submit after poisoning fails before submit returns"
    );
    assert!(committer.poisoned().is_some());
    assert_eq!(
        log.lock().read(1).unwrap(),
        Some(body(0, 1)),
        "committed records stay readable"
    );
    assert_eq!(log.lock().end(), 2, "the failed batch was never committed");
}

#[test]
fn a_refused_body_fails_only_its_own_batch() {
    let (_, dyn_storage) = faulty();
    let log = open(&dyn_storage, "t");
    let committer = Committer::start(SyncMode::Always, no_hook);
    let err = committer
        .commit(vec![(log.clone(), vec![vec![]])])
        .unwrap_err();
    assert!(matches!(err, Error::RecordSize { len: 0, .. }), "{err}");
    assert_eq!(
        committer
            .commit(vec![(log.clone(), vec![body(0, 0)])])
            .unwrap(),
        vec![0..1],
        "the committer is not poisoned by a bad body"
    );
}

#[test]
fn the_hook_sees_the_committed_ranges_before_any_completion_runs() {
    let (_, dyn_storage) = faulty();
    let log = open(&dyn_storage, "t");
    let seen: Arc<Mutex<Vec<Range<u64>>>> = Arc::default();
    let hook_seen = seen.clone();
    let committer = Committer::start(SyncMode::Always, move |committed: &[Committed]| {
        let readable = committed.iter().all(|c| c.log.lock().end() >= c.range.end);
        assert!(readable, "records are committed before the hook");
        hook_seen
            .lock()
            .unwrap()
            .extend(committed.iter().map(|c| c.range.clone()));
    });
    let (sender, receiver) = mpsc::channel();
    for i in 0..20 {
        let (sender, seen) = (sender.clone(), seen.clone());
        let batch = Batch::new()
            .append(&log, vec![body(0, i), body(1, i)])
            .on_complete(move |outcome| {
                let range = outcome.unwrap().remove(0);
                let hooked = seen
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|r| r.start <= range.start && range.end <= r.end);
                sender.send(hooked).unwrap();
            });
        committer.submit(batch);
    }
    drop(sender);
    let outcomes: Vec<bool> = receiver.iter().collect();
    assert_eq!(outcomes.len(), 20, "every batch completed");
    assert!(
        outcomes.iter().all(|&h| h),
        "the hook ran before each completion"
    );
}

#[test]
fn with_interval_sync_a_batch_completes_before_the_sync_which_follows_within_the_interval() {
    let (storage, dyn_storage) = faulty();
    let log = open(&dyn_storage, "t");
    let committer = Committer::start(SyncMode::Interval(Duration::from_millis(30)), no_hook);
    let before = storage.syncs();
    committer
        .commit(vec![(log.clone(), vec![body(0, 0)])])
        .unwrap();
    assert_eq!(log.lock().end(), 1, "readable once written");
    eventually("the interval sync", || storage.syncs() > before);
}

#[test]
fn with_interval_sync_closing_the_committer_syncs_what_was_written() {
    let (storage, dyn_storage) = faulty();
    let log = open(&dyn_storage, "t");
    let mut committer = Committer::start(SyncMode::Interval(Duration::from_secs(3600)), no_hook);
    committer
        .commit(vec![(log.clone(), vec![body(0, 0)])])
        .unwrap();
    let _ = committer.close();
    drop(log);
    storage.inner().crash();
    let reopened = open(&dyn_storage, "t");
    assert_eq!(
        reopened.lock().end(),
        1,
        "close flushed the interval's writes"
    );
    let refused = committer.commit(vec![(reopened.clone(), vec![body(0, 1)])]);
    assert!(
        matches!(refused, Err(Error::Closed)),
        "a closed committer refuses"
    );
}

#[test]
fn with_sync_never_nothing_is_synced() {
    let (storage, dyn_storage) = faulty();
    let log = open(&dyn_storage, "t");
    let committer = Committer::start(SyncMode::Never, no_hook);
    let before = storage.syncs();
    for i in 0..10 {
        committer
            .commit(vec![(log.clone(), vec![body(0, i)])])
            .unwrap();
    }
    assert_eq!(storage.syncs(), before, "no sync was issued");
    assert_eq!(log.lock().end(), 10);
}

#[test]
fn dropping_the_committer_completes_every_queued_batch() {
    let (storage, dyn_storage) = faulty();
    storage.set_sync_delay(Duration::from_millis(1));
    let log = open(&dyn_storage, "t");
    let committer = Committer::start(SyncMode::Always, no_hook);
    let completed = Arc::new(AtomicU64::new(0));
    let mut last = Ticket(0);
    for i in 0..50 {
        let completed = completed.clone();
        let batch = Batch::new()
            .append(&log, vec![body(0, i)])
            .on_complete(move |outcome| {
                outcome.unwrap();
                completed.fetch_add(1, Ordering::SeqCst);
            });
        last = committer.submit(batch);
    }
    committer.wait(Ticket(last.0 / 2));
    assert!(
        completed.load(Ordering::SeqCst) >= last.0 / 2,
        "wait returns once its batch and those before it completed"
    );
    drop(committer);
    assert_eq!(
        completed.load(Ordering::SeqCst),
        50,
        "all queued batches completed"
    );
    assert_eq!(log.lock().end(), 50);
}

#[test]
fn a_panicking_completion_does_not_stop_the_flusher() {
    let (_, dyn_storage) = faulty();
    let log = open(&dyn_storage, "t");
    let committer = Committer::start(SyncMode::Always, no_hook);
    let batch = Batch::new()
        .append(&log, vec![body(0, 0)])
        .on_complete(|_| panic!("a careless callback"));
    committer.submit(batch);
    assert_eq!(
        committer
            .commit(vec![(log.clone(), vec![body(0, 1)])])
            .unwrap(),
        vec![1..2],
        "the next batch still completes"
    );
}

/// Throughput against the disk's own limit: one writer appending one 100-byte record and
/// waiting for it, through the committer on real files, versus `pwrite` + `fdatasync` in a
/// loop. Run with `cargo test --release -p sluice-engine -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement on the real disk; run by hand"]
fn committed_appends_reach_at_least_half_of_raw_append_and_fdatasync_throughput() {
    use std::os::unix::fs::FileExt;
    let tmp = tempfile::tempdir().unwrap();
    let n = 2000u64;
    let record = vec![7u8; 100];

    let raw = std::fs::File::create(tmp.path().join("raw")).unwrap();
    raw.set_len(64 << 20).unwrap();
    raw.sync_all().unwrap();
    let start = Instant::now();
    for i in 0..n {
        raw.write_all_at(&record, i * 108).unwrap();
        raw.sync_data().unwrap();
    }
    let raw_rate = n as f64 / start.elapsed().as_secs_f64();

    let storage: Arc<dyn Storage> = Arc::new(crate::io::FileStorage::new());
    let (log, _) = SegmentedLog::open(
        storage,
        tmp.path().join("log"),
        SegmentKind::Journal,
        LogOptions::default(),
    )
    .unwrap();
    let log = LogHandle::new(log);
    let committer = Committer::start(SyncMode::Always, no_hook);
    let mut body = record.clone();
    body[0] = 16;
    let start = Instant::now();
    for _ in 0..n {
        committer
            .commit(vec![(log.clone(), vec![body.clone()])])
            .unwrap();
    }
    let engine_rate = n as f64 / start.elapsed().as_secs_f64();

    let writers = 16u64;
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..writers {
            let (committer, log, body) = (&committer, log.clone(), body.clone());
            scope.spawn(move || {
                for _ in 0..n / writers * 4 {
                    committer
                        .commit(vec![(log.clone(), vec![body.clone()])])
                        .unwrap();
                }
            });
        }
    });
    let concurrent_rate = (n * 4) as f64 / start.elapsed().as_secs_f64();
    println!(
        "raw append+fdatasync: {raw_rate:.0}/s; engine, one writer: {engine_rate:.0}/s \
         ({:.0} %); engine, {writers} writers: {concurrent_rate:.0} records/s",
        100.0 * engine_rate / raw_rate
    );
    assert!(
        engine_rate >= 0.5 * raw_rate,
        "one writer through the committer: {engine_rate:.0}/s, raw {raw_rate:.0}/s"
    );
}

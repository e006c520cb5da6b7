//! Tests of the segmented log: reads, rolls, recovery from crashes (through
//! [`MemStorage::crash`]), corruption, faults, retention, and a model test.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::io::{FaultyStorage, FileStorage, MemStorage, Storage};
use crate::record::MessageRecord;

const DIR: &str = "/data/topics/orders";

fn small() -> LogOptions {
    LogOptions::default()
        .segment_size(1024)
        .index_interval_bytes(100)
}

/// A message record body of about `len` bytes whose payload encodes `i`.
fn message(i: u64, len: usize) -> Vec<u8> {
    MessageRecord {
        id: format!("m{i}"),
        payload: Bytes::from(vec![(i % 251) as u8; len]),
        ..MessageRecord::default()
    }
    .encode()
    .unwrap()
}

fn payload_of(body: &[u8]) -> (u64, Bytes) {
    let record = MessageRecord::decode(body).unwrap();
    (record.offset, record.payload)
}

fn open_topic(storage: &Arc<MemStorage>, options: LogOptions) -> (SegmentedLog, RecoveryReport) {
    let storage: Arc<dyn Storage> = storage.clone();
    SegmentedLog::open(storage, DIR, SegmentKind::TopicLog, options).unwrap()
}

fn open_journal(storage: Arc<dyn Storage>) -> Result<(SegmentedLog, RecoveryReport)> {
    SegmentedLog::open(storage, "/data/j", SegmentKind::Journal, small())
}

fn all(log: &SegmentedLog) -> Vec<(u64, Vec<u8>)> {
    log.iter_from(0).collect::<Result<_>>().unwrap()
}

fn journal_body(i: u64) -> Vec<u8> {
    let mut body = vec![16];
    body.extend_from_slice(&i.to_le_bytes());
    body.extend(std::iter::repeat_n(i as u8, (i % 37) as usize));
    body
}

/// A topic log of three committed records of the same size, closed; their byte positions.
fn three_records() -> (Arc<MemStorage>, [u64; 3]) {
    let storage = Arc::new(MemStorage::new());
    let (mut log, _) = open_topic(&storage, small());
    log.append(&[message(0, 10), message(1, 10), message(2, 10)])
        .unwrap();
    log.commit().unwrap();
    let frame = (log.total_bytes() - HEADER_LEN) / 3;
    (
        storage,
        [HEADER_LEN, HEADER_LEN + frame, HEADER_LEN + 2 * frame],
    )
}

fn seg(dir: &str, base: u64) -> PathBuf {
    segment_path(Path::new(dir), base)
}

#[test]
fn appended_records_are_readable_only_once_committed() {
    let storage = Arc::new(MemStorage::new());
    let (mut log, report) = open_topic(&storage, small());
    assert!(report.is_clean(), "a new log has nothing to recover");
    let range = log.append(&[message(0, 10), message(0, 20)]).unwrap();
    assert_eq!(range, 0..2, "the first records get offsets 0 and 1");
    assert_eq!(log.read(0).unwrap(), None, "not committed yet");
    assert_eq!(
        log.iter_from(0).count(),
        0,
        "iteration sees only committed records"
    );
    log.commit().unwrap();
    let body = log.read(1).unwrap().expect("committed");
    assert_eq!(
        payload_of(&body),
        (1, Bytes::from(vec![0; 20])),
        "offset stamped"
    );
    assert_eq!(log.end(), 2);
}

#[test]
fn reading_many_offsets_in_one_pass_sees_what_single_reads_see() {
    let storage = Arc::new(MemStorage::new());
    let (mut log, _) = open_topic(&storage, small());
    let bodies: Vec<Vec<u8>> = (0..40).map(|i| message(i, 30)).collect();
    log.append(&bodies).unwrap();
    log.commit().unwrap();
    log.append(&[message(40, 30)]).unwrap();
    let first = log.segments()[1].base;
    log.remove_segments_before(first).unwrap();
    assert!(first > 0, "the first segment is gone");

    // Removed, gaps, a segment boundary, backwards, and one not committed yet.
    let offsets = [0, first, first + 2, first + 3, 39, 5, first + 1, 40];
    let mut seen = Vec::new();
    log.read_each(&offsets, |offset, readable| {
        seen.push((
            offset,
            match readable {
                Readable::Body(body) => Some(payload_of(body)),
                Readable::Removed => None,
                Readable::NotCommitted => Some((u64::MAX, Bytes::new())),
            },
        ));
        true
    })
    .unwrap();
    let expected: Vec<_> = offsets
        .iter()
        .map(|&o| match o {
            o if o < first => (o, None),
            40 => (o, Some((u64::MAX, Bytes::new()))),
            o => (o, Some(payload_of(&log.read(o).unwrap().unwrap()))),
        })
        .collect();
    assert_eq!(seen, expected);
    assert!(seen
        .iter()
        .any(|(o, p)| *o == 39 && p.as_ref().is_some_and(|p| p.0 == 39)));

    let mut calls = 0;
    log.read_each(&[first, first + 1, first + 2], |_, _| {
        calls += 1;
        calls < 2
    })
    .unwrap();
    assert_eq!(calls, 2, "stops when told to");
}

#[test]
fn given_records_across_many_segments_when_reopening_then_every_record_reads_back() {
    let storage = Arc::new(MemStorage::new());
    let (mut log, _) = open_topic(&storage, small());
    for batch in 0..20u64 {
        let bodies: Vec<Vec<u8>> = (0..7).map(|i| message(batch * 7 + i, 30)).collect();
        log.append(&bodies).unwrap();
        log.commit().unwrap();
    }
    assert!(
        log.segments().len() > 10,
        "records rolled over many segments"
    );
    drop(log);
    storage.crash();
    let (log, report) = open_topic(&storage, small());
    assert!(report.is_clean(), "a synced log recovers cleanly: {report}");
    assert_eq!((log.first(), log.end()), (0, 140));
    let records = all(&log);
    assert_eq!(records.len(), 140, "every record is read back in order");
    for (seq, body) in &records {
        assert_eq!(payload_of(body).0, *seq, "offset {seq}");
    }
    for seq in [139, 0, 77, 78, 76, 5] {
        let (offset, payload) = payload_of(&log.read(seq).unwrap().unwrap());
        assert_eq!(offset, seq, "random read {seq}");
        assert_eq!(payload[0], (seq % 251) as u8);
    }
    assert_eq!(log.read(140).unwrap(), None, "past the end");
}

#[test]
fn given_synced_and_unsynced_appends_when_crashing_then_exactly_the_synced_records_survive() {
    let storage = Arc::new(MemStorage::new());
    let (mut log, _) = open_topic(&storage, small());
    let synced: Vec<Vec<u8>> = (0..30).map(|i| message(i, 20)).collect();
    log.append(&synced).unwrap();
    log.commit().unwrap();
    log.append(&[message(30, 20), message(31, 20)]).unwrap();
    drop(log);
    storage.crash();
    let (log, report) = open_topic(&storage, small());
    assert!(
        report.is_clean(),
        "unsynced bytes were never on disk: {report}"
    );
    assert_eq!(log.end(), 30, "exactly the synced records survive");
    assert_eq!(all(&log).len(), 30);
}

#[test]
fn given_a_torn_tail_when_reopening_then_recovery_keeps_a_valid_prefix_and_reports_the_drop() {
    let mut torn_seen = false;
    for seed in 0..300 {
        let storage = Arc::new(MemStorage::new());
        let (mut log, _) = open_topic(&storage, small());
        log.append(&[message(0, 50), message(1, 50)]).unwrap();
        log.commit().unwrap();
        log.append(&[message(2, 100)]).unwrap();
        log.append(&[message(3, 100), message(4, 100)]).unwrap();
        drop(log);
        storage.crash_torn(seed);
        let (mut log, report) = open_topic(&storage, small());
        let end = log.end();
        assert!(
            (2..=5).contains(&end),
            "seed {seed}: synced records survive"
        );
        for (seq, body) in all(&log) {
            assert_eq!(payload_of(&body).0, seq, "seed {seed}: only whole records");
        }
        if !report.is_clean() {
            torn_seen = true;
            assert_eq!(report.after_offset, Some(end - 1), "seed {seed}: {report}");
            assert_eq!(report.dropped_frames, 1, "seed {seed}");
        }
        // The log goes on after the drop: new records get the next offsets.
        assert_eq!(log.append(&[message(9, 5)]).unwrap(), end..end + 1);
        log.commit().unwrap();
        drop(log);
        storage.crash();
        let (log, report) = open_topic(&storage, small());
        assert!(
            report.is_clean(),
            "seed {seed}: the tail was zeroed: {report}"
        );
        assert_eq!(log.end(), end + 1, "seed {seed}");
    }
    assert!(torn_seen, "some seed must tear a frame");
}

#[test]
fn given_a_flipped_bit_before_the_last_record_of_the_active_segment_when_reopening_then_open_fails_as_corrupt_and_changes_nothing(
) {
    let (storage, positions) = three_records();
    let second = positions[1];
    assert!(
        storage.corrupt(&seg(DIR, 0), second + 20, &[0xFF]),
        "flip a bit"
    );
    let before = storage.file_bytes(&seg(DIR, 0)).unwrap();
    let storage_dyn: Arc<dyn Storage> = storage.clone();
    let err = SegmentedLog::open(storage_dyn, DIR, SegmentKind::TopicLog, small()).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, Error::Corrupt { position, .. } if position == second),
        "the bad frame's byte is named: {message}"
    );
    assert!(
        message.contains("offsets 1 to 2") && message.contains("docs/durability.md"),
        "it says what would be lost and what to do: {message}"
    );
    assert_eq!(
        storage.file_bytes(&seg(DIR, 0)).unwrap(),
        before,
        "no evidence is destroyed"
    );
}

#[test]
fn given_a_flipped_bit_in_the_last_record_of_the_active_segment_when_reopening_then_the_log_ends_before_it(
) {
    let (storage, positions) = three_records();
    let last = positions[2];
    assert!(storage.corrupt(&seg(DIR, 0), last + 20, &[0xFF]));
    let (log, report) = open_topic(&storage, small());
    assert_eq!(log.end(), 2, "only the torn last record is dropped");
    assert_eq!(report.after_offset, Some(1), "{report}");
    assert!(
        report
            .truncated_at
            .as_ref()
            .is_some_and(|t| t.2.contains("CRC")),
        "the reason is reported: {report:?}"
    );
}

#[test]
fn given_zeros_in_the_middle_of_the_active_segment_when_reopening_then_open_fails_as_corrupt() {
    let (storage, positions) = three_records();
    let second = positions[1];
    assert!(
        storage.corrupt(&seg(DIR, 0), second, &[0; 8]),
        "a zeroed frame header"
    );
    let storage_dyn: Arc<dyn Storage> = storage.clone();
    let err = SegmentedLog::open(storage_dyn, DIR, SegmentKind::TopicLog, small()).unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { .. }),
        "a hole followed by records is damage, not the end: {err}"
    );
}

#[test]
fn given_a_damaged_journal_record_followed_by_valid_ones_when_reopening_then_open_fails_as_corrupt()
{
    let storage: Arc<dyn Storage> = Arc::new(MemStorage::new());
    let (mut log, _) = open_journal(storage.clone()).unwrap();
    log.append(&[journal_body(1), journal_body(2), journal_body(3)])
        .unwrap();
    log.commit().unwrap();
    drop(log);
    let mem = storage.clone();
    let path = seg("/data/j", 0);
    let bytes = {
        let f = mem.open(&path, false).unwrap();
        crate::io::read_all(f.as_ref()).unwrap()
    };
    let f = mem.open(&path, false).unwrap();
    f.write_at(&[bytes[HEADER_LEN as usize + 10] ^ 0x10], HEADER_LEN + 10)
        .unwrap();
    f.sync_all().unwrap();
    assert!(matches!(open_journal(storage), Err(Error::Corrupt { .. })));
}

#[test]
fn given_a_flipped_bit_in_a_sealed_segment_when_reading_it_then_the_read_fails_as_corrupt() {
    let storage = Arc::new(MemStorage::new());
    let (mut log, _) = open_topic(&storage, small());
    for i in 0..40 {
        log.append(&[message(i, 40)]).unwrap();
    }
    log.commit().unwrap();
    assert!(log.segments()[0].sealed, "the first segment is sealed");
    drop(log);
    storage.corrupt(&seg(DIR, 0), HEADER_LEN + 30, &[0xEE]);
    let (log, report) = open_topic(&storage, small());
    assert!(
        report.is_clean(),
        "a sealed segment is trusted through its index"
    );
    let err = log.read(0).unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { ref reason, .. } if reason.contains("CRC")),
        "a bad CRC is never skipped: {err}"
    );
    let mut iter = log.iter_from(0);
    assert!(iter.next().unwrap().is_err(), "iteration fails too");
    assert!(iter.next().is_none(), "and stops");
}

#[test]
fn given_a_missing_or_damaged_index_when_reopening_then_it_is_rebuilt_by_scanning() {
    let storage = Arc::new(MemStorage::new());
    let (mut log, _) = open_topic(&storage, small());
    for i in 0..60 {
        log.append(&[message(i, 40)]).unwrap();
    }
    log.commit().unwrap();
    let expected = all(&log);
    drop(log);
    let dir = Path::new(DIR);
    storage.remove_file(&index_path(dir, 0)).unwrap();
    let second = log_segment_bases(&storage)[1];
    storage.corrupt(&index_path(dir, second), 0, &[0xAB]);
    let (log, report) = open_topic(&storage, small());
    assert_eq!(
        report.rebuilt_indexes,
        vec![index_path(dir, 0), index_path(dir, second)],
        "both indexes rebuilt"
    );
    assert_eq!(all(&log), expected, "same records as before");
    let (_, report) = open_topic(&storage, small());
    assert!(
        report.rebuilt_indexes.is_empty(),
        "rebuilt indexes were written"
    );
}

fn log_segment_bases(storage: &MemStorage) -> Vec<u64> {
    let mut bases: Vec<u64> = storage
        .list_dir(Path::new(DIR))
        .unwrap()
        .iter()
        .filter_map(|n| n.strip_suffix(".seg")?.parse().ok())
        .collect();
    bases.sort_unstable();
    bases
}

#[test]
fn given_a_bad_frame_in_a_sealed_segment_without_index_when_reopening_then_open_refuses() {
    let storage = Arc::new(MemStorage::new());
    let (mut log, _) = open_topic(&storage, small());
    for i in 0..40 {
        log.append(&[message(i, 40)]).unwrap();
    }
    log.commit().unwrap();
    drop(log);
    storage.remove_file(&index_path(Path::new(DIR), 0)).unwrap();
    storage.corrupt(&seg(DIR, 0), HEADER_LEN + 100, &[0x55]);
    let storage: Arc<dyn Storage> = storage;
    let err = SegmentedLog::open(storage, DIR, SegmentKind::TopicLog, small()).unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { .. }),
        "data after a bad frame in a sealed segment is never skipped: {err}"
    );
}

#[test]
fn given_junk_after_the_records_when_reopening_then_it_is_zeroed_and_reported() {
    let storage = Arc::new(MemStorage::new());
    let (mut log, _) = open_topic(&storage, small());
    log.append(&[message(0, 10)]).unwrap();
    log.commit().unwrap();
    let end = log.total_bytes();
    drop(log);
    // A zero gap (a lost write), then a valid-looking frame of a later write.
    let mut stale = Vec::new();
    crate::segment::encode_frame(&message(5, 10), &mut stale);
    storage.corrupt(&seg(DIR, 0), end + 16, &stale);
    let (mut log, report) = open_topic(&storage, small());
    assert_eq!(log.end(), 1, "the stale frame is not a record");
    assert_eq!(report.dropped_bytes, 16 + stale.len() as u64, "{report}");
    log.append(&[message(1, 1)]).unwrap();
    log.commit().unwrap();
    drop(log);
    let (log, report) = open_topic(&storage, small());
    assert!(report.is_clean(), "nothing stale is left: {report}");
    assert_eq!(log.end(), 2);
}

#[test]
fn given_a_half_created_last_segment_when_reopening_then_it_is_deleted_and_the_log_goes_on() {
    let storage = Arc::new(MemStorage::new());
    let (mut log, _) = open_topic(&storage, small());
    log.append(&[message(0, 10), message(1, 10)]).unwrap();
    log.commit().unwrap();
    drop(log);
    let stray = seg(DIR, 2);
    let f = storage.open(&stray, true).unwrap();
    f.set_len(1024).unwrap();
    f.write_at(b"SLCSEG0", 0).unwrap();
    let (mut log, report) = open_topic(&storage, small());
    assert_eq!(report.removed_files.first(), Some(&stray), "{report:?}");
    assert!(
        !storage.exists(&stray).unwrap(),
        "the unfinished segment is gone"
    );
    assert_eq!(log.append(&[message(2, 10)]).unwrap(), 2..3);
}

#[test]
fn a_segment_of_another_format_version_is_refused_with_a_format_error() {
    let storage = Arc::new(MemStorage::new());
    drop(open_topic(&storage, small()));
    let mut header = SegmentHeader {
        kind: SegmentKind::TopicLog,
        base: 0,
    }
    .encode();
    header[8] = 2;
    let crc = crc32c::crc32c(&header[..24]);
    header[24..28].copy_from_slice(&crc.to_le_bytes());
    storage.corrupt(&seg(DIR, 0), 0, &header);
    let storage: Arc<dyn Storage> = storage;
    let err = SegmentedLog::open(storage, DIR, SegmentKind::TopicLog, small()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "format 2 found; this build of Sluice reads format 1"
    );
}

#[test]
fn retention_removes_only_whole_sealed_segments_before_the_sequence() {
    let storage = Arc::new(MemStorage::new());
    let (mut log, _) = open_topic(&storage, small());
    for i in 0..50 {
        log.append(&[message(i, 40)]).unwrap();
    }
    log.commit().unwrap();
    let segments = log.segments();
    let second_end = segments[1].end;
    let removed = log.remove_segments_before(second_end + 1).unwrap();
    assert_eq!(removed.segments, 2, "the two segments wholly before it");
    assert_eq!(
        log.first(),
        second_end,
        "the log now starts at the third segment"
    );
    assert_eq!(
        log.read(second_end - 1).unwrap(),
        None,
        "removed records are gone"
    );
    assert_eq!(
        payload_of(&log.read(second_end).unwrap().unwrap()).0,
        second_end
    );
    assert_eq!(
        all(&log).first().map(|r| r.0),
        Some(second_end),
        "iteration starts at first"
    );
    log.remove_segments_before(u64::MAX).unwrap();
    assert_eq!(
        log.segments().len(),
        1,
        "the active segment is never removed"
    );
    drop(log);
    storage.crash();
    let (log, report) = open_topic(&storage, small());
    assert!(report.is_clean(), "removals were durable: {report}");
    assert_eq!((log.first(), log.end()), (log.segments()[0].base, 50));
}

#[test]
fn bytes_from_counts_the_frames_after_a_record_within_one_index_interval() {
    let storage = Arc::new(MemStorage::new());
    let options = small();
    let (mut log, _) = open_topic(&storage, options);
    for i in 0..50 {
        log.append(&[message(i, 40)]).unwrap();
    }
    assert!(
        log.segments().len() > 2,
        "the records span several segments"
    );
    let frames = |from: u64| -> u64 { (from..50).map(|i| frame_len(message(i, 40).len())).sum() };
    assert_eq!(log.bytes_from(0), frames(0), "from the start: every frame");
    assert_eq!(log.bytes_from(50), 0, "from the end: nothing");
    assert_eq!(log.bytes_from(u64::MAX), 0, "past the end: nothing");
    for seq in 0..50 {
        let counted = log.bytes_from(seq);
        assert!(
            (frames(seq)..=frames(seq) + u64::from(options.index_interval_bytes))
                .contains(&counted),
            "bytes from {seq}: {counted}, exact {}",
            frames(seq)
        );
    }
    let second = log.segments()[1].base;
    log.commit().unwrap();
    log.remove_segments_before(second).unwrap();
    assert_eq!(
        log.bytes_from(0),
        frames(second),
        "before the first retained record: from the first one"
    );
}

#[test]
fn empty_or_oversized_bodies_are_refused_without_poisoning_the_log() {
    let storage: Arc<dyn Storage> = Arc::new(MemStorage::new());
    let (mut log, _) = open_journal(storage).unwrap();
    let max = log.max_body_len();
    assert!(matches!(
        log.append(&[vec![]]),
        Err(Error::RecordSize { len: 0, .. })
    ));
    assert!(matches!(
        log.append(&[vec![1; max + 1]]),
        Err(Error::RecordSize { .. })
    ));
    assert_eq!(
        log.append(&[vec![1; max]]).unwrap(),
        0..1,
        "the largest body fits"
    );
    let topic: Arc<dyn Storage> = Arc::new(MemStorage::new());
    let (mut topic, _) = SegmentedLog::open(topic, DIR, SegmentKind::TopicLog, small()).unwrap();
    assert!(
        matches!(topic.append(&[vec![16, 0]]), Err(Error::Invalid { .. })),
        "a topic log holds message records only"
    );
}

#[test]
fn when_the_nth_write_fails_then_append_errs_and_the_log_refuses_further_appends() {
    let storage = Arc::new(FaultyStorage::new(MemStorage::new()));
    let (mut log, _) = open_journal(storage.clone()).unwrap();
    log.append(&[journal_body(0)]).unwrap();
    storage.fail_nth_write(1);
    let err = log.append(&[journal_body(1)]).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    let err = log.append(&[journal_body(2)]).unwrap_err();
    assert!(
        matches!(err, Error::Poisoned { .. }),
        "a failed write poisons the log: {err}"
    );
}

#[test]
fn when_a_sync_fails_then_commit_errs_and_nothing_becomes_readable() {
    let storage = Arc::new(FaultyStorage::new(MemStorage::new()));
    let (mut log, _) = open_journal(storage.clone()).unwrap();
    log.append(&[journal_body(0)]).unwrap();
    storage.fail_nth_sync(1);
    assert!(
        log.commit().is_err(),
        "the injected sync failure is reported"
    );
    assert_eq!(log.end(), 0, "unsynced records are not committed");
    assert!(matches!(
        log.append(&[journal_body(1)]),
        Err(Error::Poisoned { .. })
    ));
}

#[test]
fn given_a_fault_at_any_step_of_a_roll_when_crashing_then_no_synced_record_is_lost() {
    for step in 1..=8 {
        let storage = Arc::new(FaultyStorage::new(MemStorage::new()));
        let (mut log, _) = open_journal(storage.clone()).unwrap();
        let mut synced = 0;
        let mut next = 0;
        storage.fail_nth_sync(step);
        // Enough records to roll twice; stop at the first failure.
        while next < 80 {
            let bodies: Vec<Vec<u8>> = (next..next + 5).map(journal_body).collect();
            if log.append(&bodies).is_err() || log.commit().is_err() {
                break;
            }
            next += 5;
            synced = next;
        }
        drop(log);
        storage.inner().crash();
        let (log, report) = open_journal(storage.clone()).unwrap();
        assert!(
            log.end() >= synced,
            "step {step}: {} records survive, {synced} were synced ({report})",
            log.end()
        );
        for (seq, body) in all(&log) {
            assert_eq!(body, journal_body(seq), "step {step}: record {seq}");
        }
    }
}

#[test]
fn a_log_on_real_files_round_trips_through_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::new());
    let dir = tmp.path().join("topics/t");
    let open =
        || SegmentedLog::open(storage.clone(), &dir, SegmentKind::TopicLog, small()).unwrap();
    let (mut log, _) = open();
    for i in 0..30 {
        log.append(&[message(i, 50)]).unwrap();
    }
    log.commit().unwrap();
    drop(log);
    let (log, report) = open();
    assert!(report.is_clean(), "{report}");
    assert_eq!(all(&log).len(), 30);
    assert!(log.segments().len() > 1, "rolled on disk too");
}

mod model {
    //! The log against a `Vec` model, through random appends, commits, crashes and
    //! retention.
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Append(Vec<usize>),
        Commit,
        Crash,
        CrashTorn(u64),
        Retain(u64),
        Read(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => proptest::collection::vec(1usize..120, 1..6).prop_map(Op::Append),
            3 => Just(Op::Commit),
            1 => Just(Op::Crash),
            1 => any::<u64>().prop_map(Op::CrashTorn),
            1 => (0u64..100).prop_map(Op::Retain),
            2 => (0u64..100).prop_map(Op::Read),
        ]
    }

    fn body(seq: u64, len: usize) -> Vec<u8> {
        let mut b = vec![(seq % 200) as u8 + 1; len];
        b[0] = 16;
        b
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn the_log_agrees_with_a_vec_model(ops in proptest::collection::vec(op(), 1..40)) {
            let storage = Arc::new(MemStorage::new());
            let dyn_storage: Arc<dyn Storage> = storage.clone();
            let open = || SegmentedLog::open(dyn_storage.clone(), "/j", SegmentKind::Journal, small()).unwrap().0;
            let mut log = open();
            // model: every record written (bodies), how many are committed, the first kept.
            let mut written: Vec<Vec<u8>> = Vec::new();
            let mut committed = 0u64;
            let mut first = 0u64;
            for op in ops {
                match op {
                    Op::Append(lens) => {
                        let start = written.len() as u64;
                        let bodies: Vec<Vec<u8>> = lens.iter().enumerate()
                            .map(|(i, &len)| body(start + i as u64, len)).collect();
                        let range = log.append(&bodies).unwrap();
                        prop_assert_eq!(range, start..start + bodies.len() as u64);
                        written.extend(bodies);
                    }
                    Op::Commit => {
                        log.commit().unwrap();
                        committed = written.len() as u64;
                    }
                    Op::Crash | Op::CrashTorn(_) => {
                        drop(log);
                        match op {
                            Op::CrashTorn(seed) => storage.crash_torn(seed),
                            _ => storage.crash(),
                        }
                        log = open();
                        let end = log.end();
                        prop_assert!(end >= committed, "committed records survive");
                        prop_assert!(end <= written.len() as u64, "nothing invented");
                        written.truncate(end as usize);
                        committed = end;
                        prop_assert_eq!(log.first(), first);
                    }
                    Op::Retain(seq) => {
                        log.remove_segments_before(seq).unwrap();
                        prop_assert!(log.first() <= seq.max(first), "never past the sequence");
                        prop_assert!(log.first() <= committed, "never past the committed end");
                        first = log.first();
                    }
                    Op::Read(seq) => {
                        let expected = (first..committed).contains(&seq)
                            .then(|| written[seq as usize].clone());
                        prop_assert_eq!(log.read(seq).unwrap(), expected);
                    }
                }
                prop_assert_eq!(log.end(), committed);
            }
            let records: Vec<(u64, Vec<u8>)> = log.iter_from(0).collect::<Result<_>>().unwrap();
            let expected: Vec<(u64, Vec<u8>)> = (first..committed)
                .map(|s| (s, written[s as usize].clone())).collect();
            prop_assert_eq!(records, expected);
        }
    }
}

#[test]
fn given_a_log_of_many_segments_when_reading_it_all_then_only_a_few_segment_files_stay_open() {
    let storage = Arc::new(MemStorage::new());
    let (mut log, _) = open_topic(&storage, small());
    for i in 0..300 {
        log.append(&[message(i, 60)]).unwrap();
    }
    log.commit().unwrap();
    drop(log);
    let (log, _) = open_topic(&storage, small());
    assert!(log.segments().len() > 20, "many segments");
    let read: Vec<_> = all(&log);
    assert_eq!(read.len(), 300);
    for offset in (0..300).step_by(7) {
        assert!(log.read(offset).unwrap().is_some());
    }
    assert!(
        log.open_files() <= MAX_OPEN_SEALED + 1,
        "{} files open for {} segments",
        log.open_files(),
        log.segments().len()
    );
}

#[test]
fn given_a_torn_last_record_whose_payload_holds_a_frame_when_reopening_then_it_is_a_torn_tail() {
    let storage = Arc::new(MemStorage::new());
    let (mut log, _) = open_topic(&storage, LogOptions::default().segment_size(64 * 1024));
    log.append(&[message(0, 10)]).unwrap();
    // A payload that carries a valid frame of offset 5 (a forwarded record, say).
    let mut inner = MessageRecord {
        offset: 5,
        id: "inner".into(),
        ..MessageRecord::default()
    }
    .encode()
    .unwrap();
    stamp_offset_for_test(&mut inner, 5);
    let mut embedded = Vec::new();
    crate::segment::encode_frame(&inner, &mut embedded);
    let mut payload = vec![1u8; 64];
    payload.extend_from_slice(&embedded);
    payload.extend(vec![2u8; 4000]);
    let outer = MessageRecord {
        id: "outer".into(),
        payload: Bytes::from(payload),
        ..MessageRecord::default()
    }
    .encode()
    .unwrap();
    log.append(&[outer]).unwrap();
    log.commit().unwrap();
    let end_pos = log.segments()[0].bytes;
    drop(log);
    // The last record's tail never reached the disk.
    assert!(storage.corrupt(&seg(DIR, 0), end_pos - 2000, &[0; 2000]));
    let (log, report) = open_topic(&storage, LogOptions::default().segment_size(64 * 1024));
    assert_eq!(log.end(), 1, "the torn record is dropped: {report}");
    assert!(!report.is_clean());
}

#[test]
fn given_a_flipped_bit_in_a_length_field_mid_log_when_reopening_then_open_fails_as_corrupt() {
    let (storage, positions) = three_records();
    let second = positions[1];
    let bytes = storage.file_bytes(&seg(DIR, 0)).unwrap();
    // The length grows by 256: the claimed frame swallows the next record.
    let flipped = bytes[second as usize + 1] ^ 0x01;
    assert!(storage.corrupt(&seg(DIR, 0), second + 1, &[flipped]));
    let storage_dyn: Arc<dyn Storage> = storage.clone();
    let err = SegmentedLog::open(storage_dyn, DIR, SegmentKind::TopicLog, small()).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
}

fn stamp_offset_for_test(body: &mut [u8], offset: u64) {
    assert!(crate::record::stamp_offset(body, offset));
}

#[test]
fn given_a_segment_that_cannot_be_removed_when_enforcing_retention_then_the_log_still_lists_it() {
    let storage = Arc::new(MemStorage::new());
    let (mut log, _) = open_topic(&storage, small());
    for i in 0..60 {
        log.append(&[message(i, 60)]).unwrap();
    }
    log.commit().unwrap();
    let before = log.segments();
    assert!(before.len() > 2);
    // The file went behind the log's back: its removal fails.
    storage.remove_file(&seg(DIR, before[0].base)).unwrap();
    assert!(log.remove_segments_before(before[1].end).is_err());
    assert_eq!(
        log.segments().len(),
        before.len(),
        "a segment is forgotten only once its file is gone by the log's own removal"
    );
}

/// Journals `/data/jN` on `storage`, each with one record appended and not synced; their
/// files to sync.
fn unsynced_journals(storage: &Arc<FaultyStorage<MemStorage>>, n: usize) -> Vec<SyncSet> {
    (0..n)
        .map(|i| {
            let dyn_storage: Arc<dyn Storage> = storage.clone();
            let dir = format!("/data/j{i}");
            let (mut log, _) =
                SegmentedLog::open(dyn_storage, dir, SegmentKind::Journal, small()).unwrap();
            log.append(&[journal_body(i as u64)]).unwrap();
            log.take_unsynced()
        })
        .collect()
}

#[test]
fn syncing_together_syncs_each_file_once_and_returns_a_failure() {
    let storage = Arc::new(FaultyStorage::new(MemStorage::new()));
    let mut sets = unsynced_journals(&storage, 5);
    // The same file named twice is synced once.
    sets.push(SyncSet {
        files: sets[0].files.clone(),
    });
    let before = storage.syncs();
    sync_together(&sets).unwrap();
    assert_eq!(storage.syncs() - before, 5, "each file once");

    let sets = unsynced_journals(&storage, 5);
    storage.fail_nth_sync(3);
    let err = sync_together(&sets).unwrap_err();
    assert!(err.to_string().contains("injected fault"), "{err}");
}

#[test]
fn a_sync_never_waits_for_helpers_busy_with_another_disk() {
    let slow = Arc::new(FaultyStorage::new(MemStorage::new()));
    let fast = Arc::new(FaultyStorage::new(MemStorage::new()));
    let slow_sets = unsynced_journals(&slow, 8);
    let fast_sets = unsynced_journals(&fast, 4);
    slow.set_sync_delay(std::time::Duration::from_secs(2));
    let slow_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = slow_done.clone();
    let slow_syncs = std::thread::spawn(move || {
        sync_together(&slow_sets).unwrap();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    // The helpers are taken by the slow disk's syncs once four have begun (unless another
    // test held one: then fewer begin at once, and the check below still holds).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while slow.syncs_begun() < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let before = fast.syncs();
    sync_together(&fast_sets).unwrap();
    assert_eq!(fast.syncs() - before, 4);
    assert!(
        !slow_done.load(std::sync::atomic::Ordering::SeqCst),
        "the fast disk's syncs did not wait for the slow disk's"
    );
    slow_syncs.join().unwrap();
}

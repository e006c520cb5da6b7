//! The damaged-directory story of issue 17, as a new user meets it with the CLI only: a byte
//! flipped inside record 6 of 10 must never make later publishes vanish; `sluice check`
//! reports it, `sluice repair` salvages it.

use std::path::Path;

mod support;

use support::run_sluice as sluice;

/// Flips one byte inside the body of record `n` of a segment file.
fn flip_record(segment: &Path, n: usize) {
    let mut bytes = std::fs::read(segment).unwrap();
    let mut pos = 32;
    for _ in 0..n {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        pos += 8 + len;
    }
    bytes[pos + 8 + 20] ^= 0x01;
    std::fs::write(segment, bytes).unwrap();
}

#[test]
fn a_flipped_byte_mid_log_is_reported_by_open_and_check_and_salvaged_by_repair() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let url = format!("embedded:{}", data.display());
    let run = |args: &[&str], stdin: Option<&str>| sluice(&url, args, stdin);
    assert_eq!(run(&["topics", "create", "orders"], None).0, 0);
    assert_eq!(
        run(&["topics", "subscribe", "orders", "billing"], None).0,
        0
    );
    let ten: String = (1..=10)
        .map(|n| format!("{{\"n\":{n},\"pad\":\"{}\"}}\n", "a".repeat(80)))
        .collect();
    assert_eq!(run(&["publish", "orders"], Some(&ten)).0, 0);
    let (code, out, err) = run(&["consume", "billing", "--count", "10"], None);
    assert_eq!(code, 0, "{out}{err}");

    flip_record(&data.join("topics/orders/00000000000000000000.seg"), 6);

    let (code, out, err) = run(&["publish", "orders"], Some("{\"n\":11}\n"));
    assert_ne!(
        code, 0,
        "a damaged log refuses to open instead of dropping records: {out}"
    );
    assert!(
        err.contains("00000000000000000000.seg") && err.contains("offsets 6 to 9"),
        "the error names the file and what would be lost: {err}"
    );

    let data_arg = data.to_str().unwrap();
    let (code, out, _) = run(&["check", "--data", data_arg], None);
    assert_eq!(code, 2, "check exits 2 on damage: {out}");
    assert!(
        out.contains("DAMAGE") && out.contains("offsets 6 to 6 lost"),
        "{out}"
    );

    let (code, out, err) = run(&["repair", "--data", data_arg], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("quarantine"), "{out}");
    assert!(data.join("quarantine/REPORT.txt").exists());
    let (code, out, _) = run(&["check", "--data", data_arg], None);
    assert_eq!(code, 0, "clean after the repair: {out}");

    let four = "{\"n\":11}\n{\"n\":12}\n{\"n\":13}\n{\"n\":14}\n";
    assert_eq!(run(&["publish", "orders"], Some(four)).0, 0);
    let (code, out, err) = run(&["consume", "billing", "--idle", "2s", "--json"], None);
    assert_eq!(code, 0, "{err}");
    let delivered = out.lines().filter(|l| !l.trim().is_empty()).count();
    assert_eq!(
        delivered, 4,
        "the four new messages are delivered, nothing acked comes back: {out}"
    );
}

//! `docs/capabilities.md` is generated from the backends' declared capabilities; this test
//! fails when the two drift. Regenerate with `SLUICE_UPDATE_DOCS=1 cargo test -p sluice --test capabilities_doc`.

use std::path::PathBuf;

const START: &str =
    "<!-- generated:start (SLUICE_UPDATE_DOCS=1 cargo test -p sluice --test capabilities_doc) -->";
const END: &str = "<!-- generated:end -->";

#[test]
fn the_capability_table_in_docs_matches_the_backends() {
    let caps = vec![
        sluice::embedded::capabilities(),
        sluice::memory::capabilities(),
        sluice_remote::capabilities(sluice_embedded::MAX_MESSAGE_SIZE),
        sluice_rabbitmq::capabilities(),
        sluice_sqs::capabilities(),
        sluice_kafka::capabilities(),
    ];
    let table = sluice_conformance::capability_table(&caps);
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/capabilities.md");
    let doc = std::fs::read_to_string(&path).expect("docs/capabilities.md exists");
    let (head, rest) = doc.split_once(START).expect("start marker");
    let (_, tail) = rest.split_once(END).expect("end marker");
    let expected = format!("{head}{START}\n{table}{END}{tail}");
    if std::env::var_os("SLUICE_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &expected).expect("write docs/capabilities.md");
        return;
    }
    assert!(
        doc == expected,
        "docs/capabilities.md is out of date; regenerate it with SLUICE_UPDATE_DOCS=1 cargo test -p sluice --test capabilities_doc\n\nexpected table:\n{table}"
    );
}

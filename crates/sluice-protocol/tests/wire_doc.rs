//! `docs/protocol.md` is the wire format a client in another language is written from: every
//! variant table (index and name) and every struct's field list must match the code, in
//! order. The order comes from serde itself (the variant and field lists it hands a
//! deserializer are in declaration order, which is postcard's wire order).

use std::collections::BTreeMap;

use serde::de::{self, DeserializeOwned, Visitor};
use sluice_protocol::message::{
    Body, Frame, Hello, Published, Request, Response, Verb, Welcome, WireBacklogBound,
    WireDelivery, WireError, WireJobEntry, WireKind, WireMessage, WireStart, WireStats,
    WireSubscriptionConfig, WireTopicConfig, WireTopicInfo, WireVersioned,
};

/// A deserializer that only records the variant or field names serde asks it for.
#[derive(Default)]
struct Probe(Option<&'static [&'static str]>);

#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("probed")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Stop
    }
}

impl<'de> de::Deserializer<'de> for &mut Probe {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        self.0 = Some(variants);
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        self.0 = Some(fields);
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map identifier
        ignored_any
    }
}

/// The variant or field names of `T`, in declaration order.
fn names<T: DeserializeOwned>() -> Vec<&'static str> {
    let mut probe = Probe::default();
    let _ = T::deserialize(&mut probe);
    probe.0.expect("an enum or a struct").to_vec()
}

/// One documented table: its rows' index (variant tables) and name.
type Table = Vec<(Option<usize>, String)>;

/// The doc's tables: for a `| \`Name\` variant |` table its rows `| N \`Variant\` |`, for the
/// struct table each row's backticked `field: type` names.
fn documented() -> BTreeMap<String, Table> {
    let doc = include_str!("../../../docs/protocol.md");
    let mut tables: BTreeMap<String, Table> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut in_structs = false;
    for line in doc.lines() {
        if !line.starts_with('|') {
            current = None;
            in_structs = false;
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if let Some(name) = cells[0]
            .strip_prefix('`')
            .and_then(|c| c.strip_suffix("` variant"))
        {
            current = Some(name.to_owned());
            continue;
        }
        if cells[0] == "struct" {
            in_structs = true;
            continue;
        }
        if let Some(table) = &current {
            let Some((index, name)) = cells[0].split_once(' ') else {
                continue;
            };
            let Ok(index) = index.parse() else { continue };
            tables
                .entry(table.clone())
                .or_default()
                .push((Some(index), name.trim_matches('`').to_owned()));
        } else if in_structs && cells.len() > 1 && cells[0].starts_with('`') {
            let name = cells[0].trim_matches('`').to_owned();
            let fields = cells[1]
                .split('`')
                .skip(1)
                .step_by(2)
                .filter_map(|item| item.split_once(':').map(|(f, _)| f.to_owned()))
                .map(|f| (None, f))
                .collect();
            tables.insert(name, fields);
        }
    }
    tables
}

#[test]
fn every_table_of_the_protocol_doc_is_the_wire_order_of_the_code() {
    let code: Vec<(&str, Vec<&str>)> = vec![
        ("Body", names::<Body>()),
        ("Request", names::<Request>()),
        ("Response", names::<Response>()),
        ("Verb", names::<Verb>()),
        ("WireError", names::<WireError>()),
        ("WireStart", names::<WireStart>()),
        ("WireKind", names::<WireKind>()),
        ("Frame", names::<Frame>()),
        ("Hello", names::<Hello>()),
        ("Welcome", names::<Welcome>()),
        ("Published", names::<Published>()),
        ("WireMessage", names::<WireMessage>()),
        ("WireDelivery", names::<WireDelivery>()),
        ("WireTopicConfig", names::<WireTopicConfig>()),
        ("WireBacklogBound", names::<WireBacklogBound>()),
        ("WireSubscriptionConfig", names::<WireSubscriptionConfig>()),
        ("WireTopicInfo", names::<WireTopicInfo>()),
        ("WireStats", names::<WireStats>()),
        ("WireVersioned", names::<WireVersioned>()),
        ("WireJobEntry", names::<WireJobEntry>()),
    ];
    let doc = documented();
    for (name, in_code) in &code {
        let rows = doc
            .get(*name)
            .unwrap_or_else(|| panic!("docs/protocol.md has no table for `{name}`"));
        let in_doc: Vec<&str> = rows.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(&in_doc, in_code, "`{name}` in docs/protocol.md vs the code");
        for (position, (index, variant)) in rows.iter().enumerate() {
            if let Some(index) = index {
                assert_eq!(
                    *index, position,
                    "`{name}::{variant}` is documented at index {index}"
                );
            }
        }
    }
    assert_eq!(
        doc.len(),
        code.len(),
        "every documented table is checked: {:?}",
        doc.keys()
    );
}

#[test]
fn the_documented_index_is_the_byte_postcard_writes() {
    // A spot check that serde's order is postcard's: `Consume` is variant 19 of `Request`.
    let frame = Frame::new(
        7,
        Body::Request(Request::Consume {
            subscriber: 1,
            prefetch: 2,
        }),
    );
    let bytes = postcard::to_allocvec(&frame).unwrap();
    assert_eq!(
        bytes,
        [7, 2, 19, 1, 2],
        "id 7, Body::Request (2), Request::Consume (19)"
    );
}

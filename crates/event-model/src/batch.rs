//! The request body: `{"sent_at": <timestamp>?, "events": [...]}` or a bare array `[...]`.
//!
//! One pass over the body checks the JSON syntax and the batch shape; each event stays a borrowed
//! [`RawValue`] for [`crate::validate_event`].

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use time::OffsetDateTime;

use crate::timestamp::parse_timestamp;

/// A batch whose shape is right; its events are not validated yet.
#[derive(Debug)]
pub struct Batch<'a> {
    pub sent_at: Option<OffsetDateTime>,
    pub events: Vec<&'a RawValue>,
}

/// Why a whole body was refused. Each maps to one error code of `docs/contract.md`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The body is not JSON (or nests deeper than the parser allows).
    #[error("{0}")]
    InvalidJson(String),
    /// JSON, but not a batch.
    #[error("{0}")]
    InvalidBatch(String),
    #[error("the batch has no events")]
    Empty,
    /// Counting stops at the first event past the limit: the rest of the body is never parsed,
    /// so a body of millions of tiny elements costs no more than one of `max` events.
    #[error("the batch has more than {max} events")]
    TooManyEvents { max: usize },
}

/// Parses a request body (already decompressed) into a batch of at most `max_events` events.
pub fn parse_batch(body: &[u8], max_events: usize) -> Result<Batch<'_>, BatchError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| BatchError::InvalidJson(format!("the body is not UTF-8: {e}")))?;
    if nests_deeper_than(text, MAX_NESTING) {
        return Err(BatchError::InvalidJson(format!(
            "the body nests deeper than {MAX_NESTING} levels"
        )));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let top = de::DeserializeSeed::deserialize(TopSeed { max: max_events }, &mut de)
        .and_then(|top| de.end().map(|()| top))
        .map_err(|e| {
            if e.to_string().starts_with(TOO_MANY) {
                BatchError::TooManyEvents { max: max_events }
            } else if e.is_data() {
                BatchError::InvalidBatch(e.to_string())
            } else {
                BatchError::InvalidJson(e.to_string())
            }
        })?;
    let (sent_at, events) = match top {
        Top::Array(events) => (None, events),
        Top::Object {
            problem: Some(p), ..
        } => return Err(BatchError::InvalidBatch(p)),
        Top::Object { events: None, .. } => {
            return Err(BatchError::InvalidBatch(
                "the batch object needs an \"events\" array".into(),
            ));
        }
        Top::Object {
            events: Some(events),
            sent_at,
            ..
        } => {
            let sent_at = match sent_at {
                None => None,
                Some(raw) => Some(parse_sent_at(raw)?),
            };
            (sent_at, events)
        }
        Top::Other(kind) => {
            return Err(BatchError::InvalidBatch(format!(
                "the body must be an object with \"events\" or an array of events, not {kind}"
            )));
        }
    };
    if events.is_empty() {
        return Err(BatchError::Empty);
    }
    Ok(Batch { sent_at, events })
}

/// Deepest nesting of arrays and objects a body may have, counting the top level as 1.
/// serde_json skips a `RawValue` (each event) without a recursion limit, so the parser's own
/// limit would not apply to events: this keeps "nesting deeper than the parser allows" an
/// `invalid_json` for the whole body, as `docs/contract.md` says.
const MAX_NESTING: usize = 128;

/// Whether `[`/`{` outside strings nest deeper than `max`. Exact for valid JSON; for invalid
/// JSON either answer ends as `invalid_json`. Most of a body is string text, which is skipped
/// with `memchr` rather than walked byte by byte.
fn nests_deeper_than(text: &str, max: usize) -> bool {
    let bytes = text.as_bytes();
    let (mut depth, mut i) = (0usize, 0);
    while let Some(&b) = bytes.get(i) {
        i += 1;
        match b {
            b'"' => i = past_string(bytes, i).unwrap_or(bytes.len()),
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Where the string whose text starts at `i` (just past its opening quote) ends: just past its
/// closing quote, or `None` if it has none. A backslash escapes the byte after it.
pub(crate) fn past_string(bytes: &[u8], mut i: usize) -> Option<usize> {
    loop {
        i += memchr::memchr2(b'"', b'\\', bytes.get(i..)?)?;
        if bytes[i] == b'"' {
            return Some(i + 1);
        }
        i += 2;
    }
}

fn parse_sent_at(raw: &RawValue) -> Result<OffsetDateTime, BatchError> {
    let s: String = serde_json::from_str(raw.get())
        .map_err(|_| BatchError::InvalidBatch("sent_at: must be a timestamp string".into()))?;
    parse_timestamp(&s).map_err(|e| BatchError::InvalidBatch(format!("sent_at: {e}")))
}

/// The top level of a body. Shape problems are recorded, not raised, so that the rest of the body
/// is still read and a syntax error anywhere is reported as `invalid_json` first.
enum Top<'a> {
    Array(Vec<&'a RawValue>),
    Object {
        events: Option<Vec<&'a RawValue>>,
        sent_at: Option<&'a RawValue>,
        problem: Option<String>,
    },
    Other(&'static str),
}

/// The error message that stops the parse at the first event past the limit.
const TOO_MANY: &str = "too many events";

/// Reads the top level with the event limit in hand.
struct TopSeed {
    max: usize,
}

impl<'de> de::DeserializeSeed<'de> for TopSeed {
    type Value = Top<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Top<'de>, D::Error> {
        d.deserialize_any(TopVisitor { max: self.max })
    }
}

struct TopVisitor {
    max: usize,
}

/// Collects the events of an array, failing at the first one past `max`.
fn collect_events<'de, A: SeqAccess<'de>>(
    mut seq: A,
    max: usize,
) -> Result<Vec<&'de RawValue>, A::Error> {
    let mut events = Vec::new();
    while let Some(e) = seq.next_element::<&'de RawValue>()? {
        if events.len() == max {
            return Err(de::Error::custom(TOO_MANY));
        }
        events.push(e);
    }
    Ok(events)
}

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Top<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a batch object or an array of events")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Top<'de>, E> {
        Ok(Top::Other("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Top<'de>, E> {
        Ok(Top::Other("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Top<'de>, E> {
        Ok(Top::Other("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Top<'de>, E> {
        Ok(Top::Other("a number"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Top<'de>, E> {
        Ok(Top::Other("a string"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Top<'de>, E> {
        Ok(Top::Other("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Top<'de>, A::Error> {
        collect_events(seq, self.max).map(Top::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'de>, A::Error> {
        let mut events = None;
        let mut sent_at = None;
        let mut problem = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "events" => match map.next_value_seed(EventsSeed { max: self.max })? {
                    EventsField::Array(v) => events = Some(v),
                    EventsField::NotArray => {
                        problem.get_or_insert_with(|| "events: must be an array".to_string());
                    }
                },
                "sent_at" => {
                    let raw = map.next_value::<&'de RawValue>()?;
                    sent_at = (raw.get() != "null").then_some(raw);
                }
                other => {
                    map.next_value::<IgnoredAny>()?;
                    let shown: String = other.chars().take(64).collect();
                    problem.get_or_insert_with(|| {
                        format!("{shown}: unknown batch field (expected events, sent_at)")
                    });
                }
            }
        }
        Ok(Top::Object {
            events,
            sent_at,
            problem,
        })
    }
}

enum EventsField<'a> {
    Array(Vec<&'a RawValue>),
    NotArray,
}

/// The value of `"events"`, with the event limit in hand.
struct EventsSeed {
    max: usize,
}

impl<'de> de::DeserializeSeed<'de> for EventsSeed {
    type Value = EventsField<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        struct V {
            max: usize,
        }
        impl<'de> Visitor<'de> for V {
            type Value = EventsField<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of events")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                collect_events(seq, self.max).map(EventsField::Array)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(EventsField::NotArray)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(EventsField::NotArray)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(EventsField::NotArray)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(EventsField::NotArray)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(EventsField::NotArray)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(EventsField::NotArray)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(EventsField::NotArray)
            }
        }
        d.deserialize_any(V { max: self.max })
    }
}

#[cfg(test)]
mod tests {
    /// The byte-by-byte walk `nests_deeper_than` replaced, as the reference.
    fn nests_deeper_than_walk(text: &str, max: usize) -> bool {
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        for &b in text.as_bytes() {
            if in_string {
                match b {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => in_string = false,
                    _ => {}
                }
            } else {
                match b {
                    b'"' => in_string = true,
                    b'[' | b'{' => {
                        depth += 1;
                        if depth > max {
                            return true;
                        }
                    }
                    b']' | b'}' => depth = depth.saturating_sub(1),
                    _ => {}
                }
            }
        }
        false
    }

    #[test]
    fn the_nesting_scan_skips_strings_as_the_walk_did() {
        let pieces = [
            "[", "]", "{", "}", "\"", "\\", "\\\"", "a", "ü", ":", ",", "\"[\"", "\"\\\\\"",
        ];
        // Every sequence of up to 4 pieces, against limits 0 to 3.
        let mut texts = vec![String::new()];
        for _ in 0..4 {
            let longer: Vec<String> = texts
                .iter()
                .flat_map(|t| pieces.iter().map(move |p| format!("{t}{p}")))
                .collect();
            for t in &longer {
                for max in 0..4 {
                    assert_eq!(
                        nests_deeper_than(t, max),
                        nests_deeper_than_walk(t, max),
                        "{t:?} max {max}"
                    );
                }
            }
            texts = longer;
        }
    }

    use super::*;
    use time::macros::datetime;

    const MAX: usize = 1000;

    fn parse(body: &str) -> Result<Batch<'_>, BatchError> {
        parse_batch(body.as_bytes(), MAX)
    }

    fn texts<'a>(batch: &Batch<'a>) -> Vec<&'a str> {
        batch.events.iter().map(|e| e.get()).collect()
    }

    /// `depth` nested arrays, closed: `[[[…]]]`.
    fn arrays(depth: usize) -> String {
        "[".repeat(depth) + &"]".repeat(depth)
    }

    #[track_caller]
    fn assert_invalid_batch(body: &str, needle: &str) {
        match parse(body) {
            Err(BatchError::InvalidBatch(msg)) => {
                assert!(
                    msg.contains(needle),
                    "{body}: {msg:?} should mention {needle:?}"
                )
            }
            other => panic!("{body}: expected InvalidBatch, got {other:?}"),
        }
    }

    #[track_caller]
    fn assert_invalid_json(body: &[u8]) {
        let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
        match parse_batch(body, MAX) {
            Err(BatchError::InvalidJson(msg)) => assert!(!msg.is_empty(), "{shown}"),
            Err(other) => panic!("{shown}: expected InvalidJson, got {other:?}"),
            Ok(batch) => panic!(
                "{shown}: expected InvalidJson, got {} events",
                batch.events.len()
            ),
        }
    }

    #[test]
    fn accepts_both_shapes() {
        let t = Some(datetime!(2026-03-04 04:06:07.5 UTC));
        let cases: [(&str, Vec<&str>, Option<OffsetDateTime>); 9] = [
            (
                r#"{"events": [{"name": "a"}]}"#,
                vec![r#"{"name": "a"}"#],
                None,
            ),
            (
                r#"[{"name": "a"}, {"name": "b"}]"#,
                vec![r#"{"name": "a"}"#, r#"{"name": "b"}"#],
                None,
            ),
            (
                r#"{"sent_at": "2026-03-04T05:06:07.5+01:00", "events": [{}]}"#,
                vec!["{}"],
                t,
            ),
            (
                r#"{"events": [{}], "sent_at": "2026-03-04T04:06:07.5Z"}"#,
                vec!["{}"],
                t,
            ),
            (
                r#"{"events": [{}], "sent_at": "2026-03-04T04:06:07.5"}"#,
                vec!["{}"],
                t,
            ),
            (r#"{"sent_at": null, "events": [{}]}"#, vec!["{}"], None),
            // Key escapes are decoded: this is "events".
            (r#"{"\u0065vents": [{}]}"#, vec!["{}"], None),
            // Whitespace around the body and between events; each event is its text as sent.
            (
                "\n\t [ {\"a\" : 1} ,\r\n{ } ] \n",
                vec![r#"{"a" : 1}"#, "{ }"],
                None,
            ),
            // Events are not validated here: each is judged on its own by validate_event.
            (
                r#"[1, "x", null, [], {"foo": true}]"#,
                vec!["1", r#""x""#, "null", "[]", r#"{"foo": true}"#],
                None,
            ),
        ];
        for (body, events, sent_at) in cases {
            let batch = parse(body).unwrap_or_else(|e| panic!("{body}: {e:?}"));
            assert_eq!(texts(&batch), events, "{body}");
            assert_eq!(batch.sent_at, sent_at, "{body}");
        }
    }

    #[test]
    fn events_borrow_the_body() {
        let body = r#"{"events": [{"name": "a"}]}"#;
        let batch = parse(body).unwrap();
        let event = batch.events[0].get();
        assert!(body.as_bytes().as_ptr_range().contains(&event.as_ptr()));
    }

    #[test]
    fn other_shapes_are_invalid_batches() {
        let long = "f".repeat(100);
        let long_field = format!(r#"{{"{long}": 1, "events": [{{}}]}}"#);
        let long_shown = format!("{}: unknown batch field", &long[..64]);
        let cases = [
            ("{}", r#"needs an "events" array"#),
            (
                r#"{"sent_at": "2026-03-04T05:06:07Z"}"#,
                r#"needs an "events" array"#,
            ),
            (r#"{"events": 3}"#, "events: must be an array"),
            (r#"{"events": {"0": {}}}"#, "events: must be an array"),
            (r#"{"events": "[{}]"}"#, "events: must be an array"),
            (r#"{"events": null}"#, "events: must be an array"),
            (r#"{"events": true}"#, "events: must be an array"),
            (
                r#"{"events": [{}], "foo": 1}"#,
                "foo: unknown batch field (expected events, sent_at)",
            ),
            (
                r#"{"foo": {"deep": [1]}, "events": [{}]}"#,
                "foo: unknown batch field",
            ),
            (r#"{"Events": [{}]}"#, "Events: unknown batch field"),
            (r#"{"foo": 1}"#, "foo: unknown batch field"),
            // The first problem found is the one reported.
            (r#"{"events": 3, "foo": 1}"#, "events: must be an array"),
            (r#"{"foo": 1, "events": 3}"#, "foo: unknown batch field"),
            (long_field.as_str(), long_shown.as_str()),
        ];
        for (body, needle) in cases {
            assert_invalid_batch(body, needle);
        }
    }

    #[test]
    fn bad_sent_at_and_other_values_are_invalid_batches() {
        let cases = [
            (
                r#"{"events": [{}], "sent_at": "yesterday"}"#,
                "sent_at: must look like",
            ),
            (
                r#"{"events": [{}], "sent_at": "2026-02-30T00:00:00Z"}"#,
                "sent_at: no such date",
            ),
            (
                r#"{"events": [{}], "sent_at": ""}"#,
                "sent_at: must look like",
            ),
            (
                r#"{"events": [{}], "sent_at": 1772600767}"#,
                "sent_at: must be a timestamp string",
            ),
            (
                r#"{"events": [{}], "sent_at": {}}"#,
                "sent_at: must be a timestamp string",
            ),
            // Shape problems come before "no events".
            (r#"{"foo": 1, "events": []}"#, "foo: unknown batch field"),
            (
                r#"{"events": [], "sent_at": "soon"}"#,
                "sent_at: must look like",
            ),
            ("1", "not a number"),
            ("-2.5e3", "not a number"),
            (r#""events""#, "not a string"),
            ("null", "not null"),
            ("true", "not a boolean"),
        ];
        for (body, needle) in cases {
            assert_invalid_batch(body, needle);
        }
    }

    #[test]
    fn unparsable_bodies_are_invalid_json() {
        let cases: [&[u8]; 26] = [
            b"",
            b"   \n",
            b"{",
            b"[",
            br#"{"events": [{}]"#,
            br#"{"events": [{"name": "a""#,
            br#"[{"name": "a}]"#,
            b"[{},]",
            br#"{"events": [{}],}"#,
            b"[] []",
            b"[] x",
            b"{'events': []}",
            b"{events: []}",
            br#"[{"a": 1,}]"#,
            br#"[{"a": tru}]"#,
            b"[NaN]",
            b"[01]",
            b"[\"a\x01b\"]", // raw control character in a string
            br#"["\x"]"#,
            // A syntax error anywhere wins over a shape problem before it.
            br#"{"foo": 1, "events": [}"#,
            br#"{"events": 3, "x": }"#,
            br#"{"sent_at": "bad", "events": [}"#,
            // Not UTF-8.
            b"\xff",
            b"[\"\xff\"]",
            b"[\"\xc3\"]",       // truncated multi-byte character
            b"\xef\xbb\xbf[{}]", // a BOM is not JSON
        ];
        for body in cases {
            assert_invalid_json(body);
        }
        assert!(matches!(
            parse_batch(b"[\"\xff\"]", MAX),
            Err(BatchError::InvalidJson(m)) if m.starts_with("the body is not UTF-8")
        ));
    }

    #[test]
    fn deep_nesting_is_invalid_json_not_a_stack_overflow() {
        let deep = arrays(100_000);
        let cases = [
            deep.clone(),
            "[".repeat(100_000),
            "{\"a\":".repeat(100_000),
            format!(r#"{{"events": [{deep}]}}"#),
            format!(r#"[{{"name": "a", "properties": {{"p": {deep}}}}}]"#),
            // Nesting is refused before shape: this would otherwise be an unknown field.
            format!(r#"{{"foo": {deep}, "events": [{{}}]}}"#),
            format!(r#"{{"events": [{{}}], "sent_at": {deep}}}"#),
            arrays(MAX_NESTING + 1),
        ];
        for body in &cases {
            assert_invalid_json(body.as_bytes());
        }
        assert_eq!(
            parse(&arrays(MAX_NESTING + 1)).unwrap_err().to_string(),
            format!("the body nests deeper than {MAX_NESTING} levels")
        );
        // At the limit the batch parses; its one event is then rejected on its own.
        assert_eq!(
            texts(&parse(&arrays(MAX_NESTING)).unwrap()),
            [arrays(MAX_NESTING - 1)]
        );
        // Brackets inside strings are not nesting, escaped quotes included.
        let in_strings = [
            format!(r#"[{{"name": "{}"}}]"#, "[{".repeat(1000)),
            format!(r#"["\"{}"]"#, "[".repeat(1000)),
            format!(r#"["\\", "{}"]"#, "{".repeat(1000)),
        ];
        for body in &in_strings {
            assert!(parse(body).is_ok(), "{}", &body[..20]);
        }
        // An escaped backslash ends the string: the brackets after it count.
        assert_invalid_json(format!(r#"["\\", {}]"#, arrays(MAX_NESTING)).as_bytes());
    }

    #[test]
    fn no_events_is_empty() {
        for body in [
            "[]",
            " [ ] ",
            r#"{"events": []}"#,
            r#"{"events": [], "sent_at": "2026-03-04T05:06:07Z"}"#,
        ] {
            assert_eq!(parse(body).unwrap_err(), BatchError::Empty, "{body}");
        }
        assert_eq!(BatchError::Empty.to_string(), "the batch has no events");
        assert_eq!(parse_batch(b"[]", 0).unwrap_err(), BatchError::Empty);
    }

    #[test]
    fn event_count_limit() {
        let events = |n: usize| vec!["{}"; n].join(",");
        for (max, n, ok) in [
            (MAX, MAX, true),
            (MAX, MAX + 1, false),
            (MAX, 5 * MAX, false),
            (3, 1, true),
            (3, 3, true),
            (3, 4, false),
            (1, 1, true),
            (1, 2, false),
            (0, 1, false),
        ] {
            for body in [
                format!("[{}]", events(n)),
                format!(r#"{{"events": [{}]}}"#, events(n)),
            ] {
                match parse_batch(body.as_bytes(), max) {
                    Ok(batch) if ok => assert_eq!(batch.events.len(), n),
                    Err(BatchError::TooManyEvents { max: m }) if !ok => assert_eq!(m, max),
                    other => panic!("{n} events, max {max}: {:?}", other.map(|b| b.events.len())),
                }
            }
        }
        assert_eq!(
            BatchError::TooManyEvents { max: 1000 }.to_string(),
            "the batch has more than 1000 events"
        );
        // Counting stops at the limit: what follows is never parsed, not even its syntax.
        assert_eq!(
            parse_batch(b"[{},{},{},!!!", 2).map(|b| b.events.len()),
            Err(BatchError::TooManyEvents { max: 2 })
        );
    }
}

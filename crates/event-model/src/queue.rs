//! The Redis stream entry that carries one accepted event from ingest-api to the flusher.
//!
//! An entry has two fields: `v`, the format version, and `e`, the event as JSON. A flusher reads
//! every version it knows, so a rolling upgrade can mix releases; an entry of an unknown version
//! is dead-lettered rather than guessed at.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use uuid::Uuid;

/// The version this release writes.
pub const ENTRY_VERSION: &str = "1";
/// Stream field holding the version.
pub const VERSION_FIELD: &str = "v";
/// Stream field holding the event.
pub const EVENT_FIELD: &str = "e";

use crate::view::micros;
pub use crate::view::{EventView, Text};

/// One accepted event, exactly as its row will be stored. It serialises as its
/// [`EntryEvent`], the one definition of the entry's JSON.
#[derive(Debug, Clone, Deserialize)]
pub struct QueuedEvent {
    #[serde(rename = "t", with = "unix_micros")]
    pub time: OffsetDateTime,
    #[serde(rename = "id")]
    pub event_id: Uuid,
    #[serde(rename = "n")]
    pub name: String,
    #[serde(rename = "s")]
    pub source: String,
    #[serde(rename = "d", default)]
    pub device_id: Option<String>,
    #[serde(rename = "ss", default)]
    pub session_id: Option<String>,
    #[serde(rename = "u", default)]
    pub user_id: Option<String>,
    /// The device's own timestamp when ingest-api corrected `time` for the device's clock
    /// skew (see `crate::skew`); `None` when `time` is the device's timestamp as sent.
    #[serde(rename = "dt", default, with = "opt_unix_micros")]
    pub device_time: Option<OffsetDateTime>,
    /// The properties object as the client sent it (validated, not rebuilt).
    #[serde(rename = "p")]
    pub properties: Box<RawValue>,
    #[serde(rename = "sa", default, with = "opt_unix_micros")]
    pub sent_at: Option<OffsetDateTime>,
    #[serde(rename = "ra", with = "unix_micros")]
    pub received_at: OffsetDateTime,
}

/// An entry's event with its text borrowed from wherever it is (the request body, the token's
/// source): what [`QueuedEvent::encode`] writes, without owned copies of the strings.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct EntryEvent<'a> {
    #[serde(rename = "t", with = "unix_micros")]
    pub time: OffsetDateTime,
    #[serde(rename = "id")]
    pub event_id: Uuid,
    #[serde(rename = "n")]
    pub name: &'a str,
    #[serde(rename = "s")]
    pub source: &'a str,
    #[serde(rename = "d", skip_serializing_if = "Option::is_none")]
    pub device_id: Option<&'a str>,
    #[serde(rename = "ss", skip_serializing_if = "Option::is_none")]
    pub session_id: Option<&'a str>,
    #[serde(rename = "u", skip_serializing_if = "Option::is_none")]
    pub user_id: Option<&'a str>,
    /// The device's own timestamp when `time` was corrected for its clock's skew.
    #[serde(
        rename = "dt",
        with = "opt_unix_micros",
        skip_serializing_if = "Option::is_none"
    )]
    pub device_time: Option<OffsetDateTime>,
    /// The properties object's JSON text, written as it is.
    #[serde(rename = "p", serialize_with = "raw_json")]
    pub properties: &'a str,
    #[serde(
        rename = "sa",
        with = "opt_unix_micros",
        skip_serializing_if = "Option::is_none"
    )]
    pub sent_at: Option<OffsetDateTime>,
    #[serde(rename = "ra", with = "unix_micros")]
    pub received_at: OffsetDateTime,
}

impl EntryEvent<'_> {
    /// Appends the `e` field's value to `out`: byte for byte what serde_json writes for this
    /// struct's `Serialize` (a property test holds the two together), written directly, since
    /// ingest-api does it for every event it accepts.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let mut ints = itoa::Buffer::new();
        let mut int = |out: &mut Vec<u8>, key: &[u8], t: OffsetDateTime| {
            out.extend_from_slice(key);
            out.extend_from_slice(ints.format(unix_micros::of(t)).as_bytes());
        };
        int(out, b"{\"t\":", self.time);
        out.extend_from_slice(b",\"id\":\"");
        let mut id = Uuid::encode_buffer();
        let id = self.event_id.hyphenated().encode_lower(&mut id);
        out.extend_from_slice(id.as_bytes());
        out.push(b'"');
        push_string(out, b",\"n\":", self.name);
        push_string(out, b",\"s\":", self.source);
        let optional = [
            (&b",\"d\":"[..], self.device_id),
            (b",\"ss\":", self.session_id),
            (b",\"u\":", self.user_id),
        ];
        for (key, value) in optional {
            if let Some(v) = value {
                push_string(out, key, v);
            }
        }
        if let Some(dt) = self.device_time {
            int(out, b",\"dt\":", dt);
        }
        out.extend_from_slice(b",\"p\":");
        out.extend_from_slice(self.properties.as_bytes());
        if let Some(sa) = self.sent_at {
            int(out, b",\"sa\":", sa);
        }
        int(out, b",\"ra\":", self.received_at);
        out.push(b'}');
    }
}

/// JSON text written as it is (it was checked to be JSON where it came from).
fn raw_json<S: serde::Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
    RawValue::from_string(text.to_string())
        .map_err(serde::ser::Error::custom)?
        .serialize(s)
}

/// `key` then `s` as a JSON string, escaped as serde_json escapes (only `"`, `\\` and control
/// characters); most strings need none and are copied as they are.
#[expect(
    clippy::expect_used,
    reason = "a Vec takes every write and a str always serialises"
)]
fn push_string(out: &mut Vec<u8>, key: &[u8], s: &str) {
    out.extend_from_slice(key);
    if !crate::scan::needs_escape(s) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(out, s).expect("a str always serialises");
    }
}

impl Serialize for QueuedEvent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.as_entry().serialize(s)
    }
}

/// What serde_json reads when the entry is not in `encode`'s exact form.
#[derive(Deserialize)]
struct ViewJson<'a> {
    #[serde(rename = "t", deserialize_with = "micros::in_range")]
    time: i64,
    #[serde(rename = "id")]
    event_id: Uuid,
    #[serde(rename = "n", borrow)]
    name: Text<'a>,
    #[serde(rename = "s", borrow)]
    source: Text<'a>,
    #[serde(rename = "d", default, borrow)]
    device_id: Option<Text<'a>>,
    #[serde(rename = "ss", default, borrow)]
    session_id: Option<Text<'a>>,
    #[serde(rename = "u", default, borrow)]
    user_id: Option<Text<'a>>,
    #[serde(rename = "dt", default, deserialize_with = "micros::opt_in_range")]
    device_time: Option<i64>,
    #[serde(rename = "p", borrow)]
    properties: &'a RawValue,
    #[serde(rename = "sa", default, deserialize_with = "micros::opt_in_range")]
    sent_at: Option<i64>,
    #[serde(rename = "ra", deserialize_with = "micros::in_range")]
    received_at: i64,
}

/// Reading an entry into the view (whose type is in `view`, a leaf the scanner shares).
impl<'a> EventView<'a> {
    /// Reads an entry's event from its `v` and `e` fields, as [`QueuedEvent::decode`] does:
    /// [`crate::scan::view`] first, serde_json when the entry is not in `encode`'s exact form.
    pub fn decode(version: Option<&[u8]>, event: Option<&'a [u8]>) -> Result<Self, DecodeError> {
        let event = check_version(version, event)?;
        match crate::scan::view(event) {
            Some(view) => Ok(view),
            None => Self::decode_json(event),
        }
    }

    /// Reads the `e` field with serde_json only (what `decode` falls back to).
    pub fn decode_json(event: &'a [u8]) -> Result<Self, DecodeError> {
        let v: ViewJson<'a> =
            serde_json::from_slice(event).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        Ok(EventView {
            time: v.time,
            event_id: v.event_id,
            name: v.name,
            source: v.source,
            device_id: v.device_id,
            session_id: v.session_id,
            user_id: v.user_id,
            device_time: v.device_time,
            properties: v.properties.get(),
            sent_at: v.sent_at,
            received_at: v.received_at,
        })
    }
}

fn check_version<'a>(
    version: Option<&[u8]>,
    event: Option<&'a [u8]>,
) -> Result<&'a [u8], DecodeError> {
    let version = version.ok_or(DecodeError::MissingVersion)?;
    if version != ENTRY_VERSION.as_bytes() {
        return Err(DecodeError::UnknownVersion(
            String::from_utf8_lossy(version).into_owned(),
        ));
    }
    event.ok_or(DecodeError::MissingEvent)
}

/// How long ago a stream entry was added, from its ID (`<unix-ms>-<seq>`) and the clock `now`
/// (time since the Unix epoch). The age of the oldest entry is the flushers' lag. An ID that is
/// not of that form, or from the future, gives zero.
pub fn entry_age(id: &str, now: std::time::Duration) -> std::time::Duration {
    id.split('-')
        .next()
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(|ms| now.saturating_sub(std::time::Duration::from_millis(ms)))
        .unwrap_or_default()
}

/// Why an entry could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("entry has no version field")]
    MissingVersion,
    #[error("entry version {0:?} is not known to this release")]
    UnknownVersion(String),
    #[error("entry has no event field")]
    MissingEvent,
    #[error("entry event does not decode: {0}")]
    Malformed(String),
}

impl QueuedEvent {
    /// The event borrowed, to encode.
    pub fn as_entry(&self) -> EntryEvent<'_> {
        EntryEvent {
            time: self.time,
            event_id: self.event_id,
            name: &self.name,
            source: &self.source,
            device_id: self.device_id.as_deref(),
            session_id: self.session_id.as_deref(),
            user_id: self.user_id.as_deref(),
            device_time: self.device_time,
            properties: self.properties.get(),
            sent_at: self.sent_at,
            received_at: self.received_at,
        }
    }

    /// The `e` field's value.
    #[expect(
        clippy::expect_used,
        reason = "strings, a UUID, timestamps and a RawValue that was JSON: serialising cannot fail"
    )]
    pub fn encode(&self) -> String {
        serde_json::to_string(&self.as_entry()).expect("a QueuedEvent always serialises")
    }

    /// Reads an entry back from its `v` and `e` fields.
    pub fn decode(version: Option<&[u8]>, event: Option<&[u8]>) -> Result<Self, DecodeError> {
        let event = check_version(version, event)?;
        let e: QueuedEvent =
            serde_json::from_slice(event).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        Ok(e)
    }
}

/// Microseconds since the Unix epoch: exact for PostgreSQL's `timestamptz` and cheap to parse.
mod unix_micros {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(of(*t))
    }

    /// `t` in microseconds since the Unix epoch.
    pub fn of(t: OffsetDateTime) -> i64 {
        (t.unix_timestamp_nanos() / 1000) as i64
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let micros = i64::deserialize(d)?;
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
            .map_err(serde::de::Error::custom)
    }
}

mod opt_unix_micros {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(t: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::unix_micros::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<OffsetDateTime>, D::Error> {
        match Option::<i64>::deserialize(d)? {
            None => Ok(None),
            Some(micros) => OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;
    use time::macros::datetime;

    fn sample() -> QueuedEvent {
        QueuedEvent {
            time: datetime!(2026-01-02 03:04:05.123456 UTC),
            event_id: Uuid::parse_str("0190c5d5-9a6e-7c1f-8e4a-6f1b2c3d4e5f").unwrap(),
            name: "level_up".into(),
            source: "game".into(),
            device_id: Some("dev-1".into()),
            session_id: None,
            user_id: Some("ünïcödé".into()),
            device_time: None,
            properties: RawValue::from_string(r#"{"level": 3, "tags": ["a"]}"#.into()).unwrap(),
            sent_at: Some(datetime!(2026-01-02 03:04:06 UTC)),
            received_at: datetime!(2026-01-02 03:04:07.000001 UTC),
        }
    }

    /// The entry's bytes, as the flusher reads them: field order, names, omitted `None`s.
    #[test]
    fn encodes_the_entry_format() {
        assert_eq!(
            sample().encode(),
            r#"{"t":1767323045123456,"id":"0190c5d5-9a6e-7c1f-8e4a-6f1b2c3d4e5f","n":"level_up","s":"game","d":"dev-1","u":"ünïcödé","p":{"level": 3, "tags": ["a"]},"sa":1767323046000000,"ra":1767323047000001}"#
        );
        let e = sample();
        let mut out = Vec::new();
        e.as_entry().encode_into(&mut out);
        assert_eq!(out, e.encode().as_bytes());
        assert_eq!(serde_json::to_string(&e).unwrap(), e.encode());
        // An entry as the release before the borrowed encoder wrote it reads back to itself.
        let old = r#"{"t":1795852919225226,"id":"01e482a7-d71f-4f7a-8000-000000000000","n":"level_complete","s":"bench","d":"dev-01e482a7d71f4f7a","ss":"sess-01e482a7d71f","u":"user-260218","p":{"level":89,"score":60218,"duration_ms":260218,"difficulty":"easy","platform":"windows","build":"1.4.2+8841","fps_avg":88.8},"sa":1795852919225226,"ra":1795852919302325}"#;
        let back = QueuedEvent::decode(Some(b"1"), Some(old.as_bytes())).unwrap();
        assert_eq!(back.encode(), old);
    }

    /// A corrected event carries the device's own time as `dt`, after the optional strings and
    /// before the properties; an entry without it (every entry of the release before) reads
    /// back with none, and `dt` is read by the scanner, serde_json and the view alike.
    #[test]
    fn the_device_time_is_written_as_dt() {
        let mut e = sample();
        e.device_time = Some(datetime!(2026-01-05 03:04:05.123456 UTC));
        let text = e.encode();
        assert_eq!(
            text,
            r#"{"t":1767323045123456,"id":"0190c5d5-9a6e-7c1f-8e4a-6f1b2c3d4e5f","n":"level_up","s":"game","d":"dev-1","u":"ünïcödé","dt":1767582245123456,"p":{"level": 3, "tags": ["a"]},"sa":1767323046000000,"ra":1767323047000001}"#
        );
        let mut out = Vec::new();
        e.as_entry().encode_into(&mut out);
        assert_eq!(out, text.as_bytes());
        let back = QueuedEvent::decode(Some(b"1"), Some(text.as_bytes())).unwrap();
        assert_eq!(back.device_time, e.device_time);
        let view = EventView::decode(Some(b"1"), Some(text.as_bytes())).unwrap();
        assert_eq!(view.device_time, e.device_time.map(micros));
        assert_eq!(crate::scan::view(text.as_bytes()), Some(view));
        let without = sample().encode();
        assert!(!without.contains("\"dt\""));
        let view = EventView::decode(Some(b"1"), Some(without.as_bytes())).unwrap();
        assert_eq!(view.device_time, None);
    }

    /// Strings that need escaping, and times before the epoch, are written as serde_json
    /// writes them.
    #[test]
    fn the_direct_encoder_escapes_as_serde_does() {
        let strings = [
            "",
            "plain",
            "quo\"te",
            "back\\slash",
            "nl\nx",
            "\u{0}",
            "\u{1f}",
            "\u{7f}",
            "\u{2028}",
            "ünïcödé",
            "/",
            "\t\r\u{8}\u{c}",
        ];
        let mut e = sample();
        e.time = datetime!(1969-12-31 23:59:59.5 UTC);
        e.sent_at = None;
        for s in strings {
            e.name = s.into();
            e.session_id = Some(s.into());
            let mut out = Vec::new();
            e.as_entry().encode_into(&mut out);
            assert_eq!(out, serde_json::to_vec(&e.as_entry()).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn entry_age_reads_the_id() {
        use std::time::Duration;
        let now = Duration::from_millis(1_700_000_010_500);
        assert_eq!(
            entry_age("1700000000000-3", now),
            Duration::from_millis(10_500)
        );
        assert_eq!(
            entry_age("1700000020000-0", now),
            Duration::ZERO,
            "from the future"
        );
        assert_eq!(entry_age("garbage", now), Duration::ZERO);
    }

    #[test]
    fn round_trips() {
        let e = sample();
        let back = QueuedEvent::decode(Some(b"1"), Some(e.encode().as_bytes())).unwrap();
        assert_eq!(back.time, e.time);
        assert_eq!(back.event_id, e.event_id);
        assert_eq!(back.name, e.name);
        assert_eq!(back.source, e.source);
        assert_eq!(back.device_id, e.device_id);
        assert_eq!(back.session_id, None);
        assert_eq!(back.user_id, e.user_id);
        assert_eq!(back.properties.get(), e.properties.get());
        assert_eq!(back.sent_at, e.sent_at);
        assert_eq!(back.received_at, e.received_at);
    }

    fn micros(t: OffsetDateTime) -> i64 {
        (t.unix_timestamp_nanos() / 1000) as i64
    }

    /// The view reads every field `encode` writes, escapes and all.
    #[test]
    fn the_view_reads_what_encode_writes() {
        let mut e = sample();
        e.name = "quote \" and tab \t".into();
        let text = e.encode();
        let v = EventView::decode(Some(b"1"), Some(text.as_bytes())).unwrap();
        assert_eq!(v.time, micros(e.time));
        assert_eq!(v.event_id, e.event_id);
        assert_eq!(&*v.name, e.name);
        assert!(matches!(v.name.0, Cow::Owned(_)), "escaped: copied");
        assert_eq!(&*v.source, e.source);
        assert!(matches!(v.source.0, Cow::Borrowed(_)), "verbatim: borrowed");
        assert_eq!(v.device_id.as_deref(), e.device_id.as_deref());
        assert_eq!(v.session_id.as_deref(), None);
        assert_eq!(v.user_id.as_deref(), e.user_id.as_deref());
        assert_eq!(v.properties, e.properties.get());
        assert_eq!(v.sent_at, e.sent_at.map(micros));
        assert_eq!(v.received_at, micros(e.received_at));
    }

    /// `holdable` compares with the calendar's first and last second instead of building a
    /// date: it says what `from_unix_timestamp` says, at and around both ends.
    #[test]
    fn holdable_agrees_with_the_calendar() {
        let first = time::PrimitiveDateTime::MIN.assume_utc().unix_timestamp();
        let last = time::PrimitiveDateTime::MAX.assume_utc().unix_timestamp();
        for secs in [first - 1, first, first + 1, -1, 0, last - 1, last, last + 1] {
            for sub in [0, 999_999] {
                let m = secs * 1_000_000 + sub;
                assert_eq!(
                    super::micros::holdable(m).is_ok(),
                    OffsetDateTime::from_unix_timestamp(secs).is_ok(),
                    "{m}"
                );
            }
        }
        assert!(super::micros::holdable(i64::MIN).is_err());
        assert!(super::micros::holdable(i64::MAX).is_err());
    }

    /// The scanner reads every entry `encode` writes without escapes, as serde_json does.
    #[test]
    fn the_scanner_reads_what_encode_writes() {
        let mut bare = sample();
        (bare.device_id, bare.user_id, bare.sent_at) = (None, None, None);
        bare.session_id = Some("s".into());
        bare.properties = RawValue::from_string(
            r#"{"a":"}{\"\\","b":[{"c":{}}],"d":-1.5e3,"e":null,"f":"é"}"#.into(),
        )
        .unwrap();
        let mut early = sample();
        early.time = datetime!(1969-12-31 23:59:59.5 UTC);
        early.device_time = Some(datetime!(1969-12-31 23:59:58.25 UTC));
        let mut corrected = sample();
        corrected.device_time = Some(datetime!(2027-01-02 03:04:05 UTC));
        // The fields read back from the end, spelled inside the properties.
        let mut mimic = sample();
        mimic.properties = RawValue::from_string(
            r#"{"x":"},\"sa\":1,\"ra\":2}","sa":3,"ra":{"}":"{"},"y":[4]}"#.into(),
        )
        .unwrap();
        for e in [sample(), bare, early, corrected, mimic] {
            let text = e.encode();
            let fast = crate::scan::view(text.as_bytes()).expect("the scanner reads it");
            assert_eq!(
                fast,
                EventView::decode_json(text.as_bytes()).unwrap(),
                "{text}"
            );
            assert_eq!(fast.properties, e.properties.get());
        }
    }

    /// Every entry one byte away from a good one (cut short, or one byte replaced): the
    /// scanner gives up, or reads what serde_json reads; it only accepts what serde_json
    /// refuses when the properties object is not valid JSON (PostgreSQL refuses that row).
    #[test]
    fn the_scanner_never_reads_an_entry_otherwise_than_serde_json() {
        let mut corrected = sample();
        corrected.device_time = Some(datetime!(2027-01-02 03:04:05 UTC));
        for e in [sample(), corrected] {
            scanner_agrees_one_byte_away(e);
        }
    }

    fn scanner_agrees_one_byte_away(e: QueuedEvent) {
        let good = e.encode().into_bytes();
        let mut variants: Vec<Vec<u8>> = (0..good.len()).map(|n| good[..n].to_vec()).collect();
        for i in 0..good.len() {
            for b in [
                b'"', b'\\', b'{', b'}', b',', b'x', b'0', b'-', b' ', 0x01, 0xff,
            ] {
                let mut v = good.clone();
                v[i] = b;
                variants.push(v);
            }
        }
        let (mut read, mut bad_properties) = (0, 0);
        for v in &variants {
            let Some(fast) = crate::scan::view(v) else {
                continue;
            };
            read += 1;
            let what = String::from_utf8_lossy(v);
            match EventView::decode_json(v) {
                Ok(json) => assert_eq!(fast, json, "{what}"),
                Err(_) => {
                    bad_properties += 1;
                    assert!(
                        serde_json::from_str::<serde::de::IgnoredAny>(fast.properties).is_err(),
                        "serde_json refuses more than the properties: {what}"
                    );
                }
            }
        }
        assert!(
            read > good.len(),
            "most one-byte changes inside strings still scan"
        );
        assert!(bad_properties > 0, "some break only the properties' JSON");
    }

    /// Whatever `QueuedEvent::decode` refuses, the view refuses, and the reverse.
    #[test]
    fn the_view_refuses_what_decode_refuses() {
        let good = sample().encode();
        let out_of_range = good.replace(
            &format!("\"t\":{}", micros(sample().time)),
            "\"t\":9000000000000000000",
        );
        assert_ne!(out_of_range, good);
        for (v, e, ok) in [
            (None, Some(good.as_bytes()), false),
            (Some(&b"2"[..]), Some(good.as_bytes()), false),
            (Some(b"1"), None, false),
            (Some(b"1"), Some(&b"{not json"[..]), false),
            (Some(b"1"), Some(br#"{"n":"x"}"#), false),
            (Some(b"1"), Some(out_of_range.as_bytes()), false),
            (Some(b"1"), Some(good.as_bytes()), true),
        ] {
            let what = e.map(String::from_utf8_lossy);
            assert_eq!(QueuedEvent::decode(v, e).is_ok(), ok, "{what:?}");
            assert_eq!(EventView::decode(v, e).is_ok(), ok, "{what:?}");
        }
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let good = sample().encode();
        assert_eq!(
            QueuedEvent::decode(None, Some(good.as_bytes())).unwrap_err(),
            DecodeError::MissingVersion
        );
        assert_eq!(
            QueuedEvent::decode(Some(b"2"), Some(good.as_bytes())).unwrap_err(),
            DecodeError::UnknownVersion("2".into())
        );
        assert_eq!(
            QueuedEvent::decode(Some(b"1"), None).unwrap_err(),
            DecodeError::MissingEvent
        );
        assert!(matches!(
            QueuedEvent::decode(Some(b"1"), Some(b"{not json")),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            QueuedEvent::decode(Some(b"1"), Some(br#"{"n":"x"}"#)),
            Err(DecodeError::Malformed(_))
        ));
    }
}

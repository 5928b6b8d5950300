//! One event of a batch: the field rules of `docs/contract.md`, checked one event at a time so
//! that a bad event is reported by index while the good ones of the same batch are accepted.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::queue::EntryEvent;
use crate::skew::BatchClock;
use crate::timestamp::parse_timestamp;

/// The configurable limits of `docs/contract.md`. `Default` gives its defaults.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest `name`, `device_id`, `session_id`, `user_id`, in Unicode scalar values.
    pub max_string_chars: usize,
    /// Largest `properties` JSON text as sent, in bytes.
    pub max_properties_bytes: usize,
    /// Deepest nesting of `properties` (the object itself is depth 1).
    pub max_properties_depth: usize,
    /// Earliest accepted `timestamp`.
    pub min_timestamp: OffsetDateTime,
    /// How far past the server's clock a `timestamp` may be.
    pub max_future: Duration,
    /// How far before the server's clock a `timestamp` may be: what retention keeps, less a
    /// margin (ingest-api's `retention_window`); `None` without retention.
    pub max_age: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_string_chars: 200,
            max_properties_bytes: 32 * 1024,
            max_properties_depth: 32,
            min_timestamp: time::macros::datetime!(2000-01-01 00:00:00 UTC),
            max_future: Duration::hours(24),
            max_age: None,
        }
    }
}

/// Why one event was rejected: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventError {
    pub field: String,
    pub problem: String,
    /// Valid, but older than what retention keeps (`Limits::max_age`): counted apart.
    pub older_than_retention: bool,
}

impl EventError {
    fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        EventError {
            field: field.into(),
            problem: problem.into(),
            older_than_retention: false,
        }
    }
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

/// An event that passed every rule. `properties` borrows the JSON text the client sent.
#[derive(Debug, Clone)]
pub struct ValidEvent<'a> {
    /// `None` when the client sent none: ingest-api assigns a UUIDv7.
    pub event_id: Option<Uuid>,
    /// The strings borrow the client's text too, unless it spelled them with escapes.
    pub name: Cow<'a, str>,
    /// In UTC, truncated to the microsecond; corrected for the device's clock skew when the
    /// batch's clock has a correction.
    pub time: OffsetDateTime,
    /// The `timestamp` as sent, when `time` is corrected; `None` when `time` is it.
    pub device_time: Option<OffsetDateTime>,
    pub device_id: Option<Cow<'a, str>>,
    pub session_id: Option<Cow<'a, str>>,
    pub user_id: Option<Cow<'a, str>>,
    /// The properties object's JSON text; `None` means the default `{}`.
    pub properties: Option<&'a str>,
}

impl ValidEvent<'_> {
    /// The queue entry of this event as ingest-api queues it, borrowed from this event and
    /// `source`: with the batch's `sent_at`, `received_at` by the server's clock, `properties`
    /// `{}` when absent, and `assign_id()` as the `event_id` when the client sent none
    /// (ingest-api: a UUIDv7).
    pub fn entry<'s>(
        &'s self,
        source: &'s str,
        sent_at: Option<OffsetDateTime>,
        received_at: OffsetDateTime,
        assign_id: impl FnOnce() -> Uuid,
    ) -> EntryEvent<'s> {
        EntryEvent {
            time: self.time,
            event_id: self.event_id.unwrap_or_else(assign_id),
            name: &self.name,
            source,
            device_id: self.device_id.as_deref(),
            session_id: self.session_id.as_deref(),
            user_id: self.user_id.as_deref(),
            device_time: self.device_time,
            properties: self.properties.unwrap_or("{}"),
            sent_at,
            received_at,
        }
    }
}

/// The fields an event may have; any other key is rejected as unknown.
pub const FIELDS: [&str; 7] = [
    "event_id",
    "name",
    "timestamp",
    "device_id",
    "session_id",
    "user_id",
    "properties",
];

/// Checks one event of a batch against `docs/contract.md`, with `now` as the server's clock
/// and no correction for the device's clock.
pub fn validate_event<'a>(
    raw: &'a RawValue,
    limits: &Limits,
    now: OffsetDateTime,
) -> Result<ValidEvent<'a>, EventError> {
    validate_event_at(raw, limits, &BatchClock::uncorrected(now))
}

/// Checks one event of a batch against `docs/contract.md` with the batch's clock: its
/// timestamp is corrected by the clock's correction, if any, and the window judges the
/// corrected time.
pub fn validate_event_at<'a>(
    raw: &'a RawValue,
    limits: &Limits,
    clock: &BatchClock,
) -> Result<ValidEvent<'a>, EventError> {
    let fields = Fields::read(raw)?;
    if let Some(unknown) = fields.unknown {
        return Err(EventError::new(
            printable(&unknown),
            "unknown field (expected one of event_id, name, timestamp, device_id, session_id, user_id, properties)",
        ));
    }
    // In the order of FIELDS; an explicit null is the same as an absent field.
    let [
        event_id,
        name,
        timestamp,
        device_id,
        session_id,
        user_id,
        properties,
    ] = fields.values.map(|v| v.filter(|v| *v != "null"));

    let event_id = match event_id {
        None => None,
        Some(v) => Some(parse_uuid(&string_field("event_id", v)?)?),
    };
    let name = match name {
        None => return Err(EventError::new("name", "is required")),
        Some(v) => text_field("name", v, limits)?,
    };
    if name.is_empty() {
        return Err(EventError::new("name", "must not be empty"));
    }
    let time = match timestamp {
        None => return Err(EventError::new("timestamp", "is required")),
        Some(v) => check_time(&string_field("timestamp", v)?, limits, clock)?,
    };
    let optional_text =
        |field: &str, v: Option<&'a str>| v.map(|v| text_field(field, v, limits)).transpose();
    let device_id = optional_text("device_id", device_id)?;
    let session_id = optional_text("session_id", session_id)?;
    let user_id = optional_text("user_id", user_id)?;
    if let Some(v) = properties {
        check_properties(v, limits)?;
    }
    let (time, device_time) = time;
    Ok(ValidEvent {
        event_id,
        name,
        time,
        device_time,
        device_id,
        session_id,
        user_id,
        properties,
    })
}

/// A `timestamp` in the contract's grammar whose time, corrected by the clock's correction,
/// is inside the window the limits allow: (the time to store, the device's time when corrected).
fn check_time(
    s: &str,
    limits: &Limits,
    clock: &BatchClock,
) -> Result<(OffsetDateTime, Option<OffsetDateTime>), EventError> {
    let device = parse_timestamp(s).map_err(|e| EventError::new("timestamp", e))?;
    let (t, device_time) = match clock.correction {
        None => (device, None),
        Some(skew) => (
            device.checked_add(skew).ok_or_else(|| {
                EventError::new("timestamp", format!("is out of range{}", corrected(skew)))
            })?,
            Some(device),
        ),
    };
    let why = || clock.correction.map(corrected).unwrap_or_default();
    if t < limits.min_timestamp {
        return Err(EventError::new(
            "timestamp",
            format!(
                "is before {}{}",
                crate::timestamp::format_timestamp(limits.min_timestamp),
                why()
            ),
        ));
    }
    if let Some(max_age) = limits.max_age
        && clock
            .received_at
            .checked_sub(max_age)
            .is_some_and(|earliest| t < earliest)
    {
        return Err(EventError {
            older_than_retention: true,
            ..EventError::new(
                "timestamp",
                format!(
                    "is older than the retention keeps (more than {} seconds before the \
                     server's clock){}",
                    max_age.whole_seconds(),
                    why()
                ),
            )
        });
    }
    // Saturating: a window past the calendar's end is no window at all.
    if clock
        .received_at
        .checked_add(limits.max_future)
        .is_some_and(|latest| t > latest)
    {
        return Err(EventError::new(
            "timestamp",
            format!(
                "is more than {} seconds ahead of the server's clock{}",
                limits.max_future.whole_seconds(),
                why()
            ),
        ));
    }
    Ok((t, device_time))
}

/// What an error about a corrected time adds: the correction, in whole seconds.
fn corrected(skew: Duration) -> String {
    format!(
        " once corrected by the device's clock skew ({:+} s)",
        skew.whole_seconds()
    )
}

/// An event's known fields by their place in [`FIELDS`] (a repeated key: the last one), each as
/// its value's JSON text, and the smallest unknown key. Read without building a map: an event of
/// a million keys costs no more memory than one of seven.
struct Fields<'a> {
    values: [Option<&'a str>; FIELDS.len()],
    unknown: Option<String>,
}

impl<'a> Fields<'a> {
    /// Cut out in one pass by [`crate::members`] (the event is JSON: `parse_batch` checked
    /// it), or read by serde_json when a key has an escape or the event is not an object.
    fn read(raw: &'a RawValue) -> Result<Self, EventError> {
        let mut fields = Fields {
            values: [None; FIELDS.len()],
            unknown: None,
        };
        let cut = crate::members::members(raw.get(), |key, value| fields.set(key, value));
        if cut.is_some() {
            return Ok(fields);
        }
        let mut de = serde_json::Deserializer::from_str(raw.get());
        de::DeserializeSeed::deserialize(FieldsSeed, &mut de)
            .map_err(|_| EventError::new("event", "must be a JSON object"))
    }

    /// A known field's value, or an unknown key (kept if it is the smallest so far).
    fn set(&mut self, key: &str, value: &'a str) {
        match FIELDS.iter().position(|f| *f == key) {
            Some(i) => self.values[i] = Some(value),
            None if self.unknown.as_deref().is_none_or(|u| key < u) => {
                self.unknown = Some(key.to_string());
            }
            None => {}
        }
    }
}

struct FieldsSeed;

impl<'de> de::DeserializeSeed<'de> for FieldsSeed {
    type Value = Fields<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Fields<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FieldsSeed {
    type Value = Fields<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
        let mut fields = Fields {
            values: [None; FIELDS.len()],
            unknown: None,
        };
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if FIELDS.contains(&key.as_ref()) {
                let value: &'de RawValue = map.next_value()?;
                fields.set(&key, value.get());
            } else {
                map.next_value::<de::IgnoredAny>()?;
                fields.set(&key, "");
            }
        }
        Ok(fields)
    }
}

/// A key as it can be shown back to the client: NULs escaped, long keys cut.
fn printable(key: &str) -> String {
    let mut s: String = key
        .chars()
        .take(64)
        .collect::<String>()
        .replace('\0', "\\u0000");
    if key.chars().count() > 64 {
        s.push('…');
    }
    s
}

/// A JSON string's value, borrowed from the text when it has no escapes (the common case: no
/// allocation), decoded otherwise.
fn string_field<'a>(field: &str, text: &'a str) -> Result<Cow<'a, str>, EventError> {
    // `v` is one well-formed JSON value: quoted and free of backslashes, its inside is the
    // string itself (JSON forbids raw control characters, so nothing else needs decoding).
    if let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"'))
        && !inner.contains('\\')
    {
        return Ok(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(text)
        .map(Cow::Owned)
        .map_err(|_| EventError::new(field, "must be a string"))
}

fn text_field<'a>(field: &str, v: &'a str, limits: &Limits) -> Result<Cow<'a, str>, EventError> {
    let s = string_field(field, v)?;
    if s.contains('\0') {
        return Err(EventError::new(field, "must not contain NUL (U+0000)"));
    }
    // A string has at most as many characters as bytes: count them only when it could be long.
    if s.len() > limits.max_string_chars && s.chars().count() > limits.max_string_chars {
        return Err(EventError::new(
            field,
            format!("longer than {} characters", limits.max_string_chars),
        ));
    }
    Ok(s)
}

/// A UUID in the hyphenated 8-4-4-4-12 form, any letter case (not braced, not URN, not simple).
fn parse_uuid(s: &str) -> Result<Uuid, EventError> {
    let b = s.as_bytes();
    let shape_ok = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    if !shape_ok {
        return Err(EventError::new(
            "event_id",
            "must be a UUID in the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx",
        ));
    }
    Uuid::parse_str(s).map_err(|_| EventError::new("event_id", "must be a UUID"))
}

fn check_properties(text: &str, limits: &Limits) -> Result<(), EventError> {
    if !text.starts_with('{') {
        return Err(EventError::new("properties", "must be a JSON object"));
    }
    if text.len() > limits.max_properties_bytes {
        return Err(EventError::new(
            "properties",
            format!("larger than {} bytes", limits.max_properties_bytes),
        ));
    }
    if surely_fine(text, limits.max_properties_depth) {
        return Ok(());
    }
    let walk = |text: &str| {
        let mut de = serde_json::Deserializer::from_str(text);
        let check = PropertiesCheck {
            depth: 1,
            max_depth: limits.max_properties_depth,
        };
        de::DeserializeSeed::deserialize(check, &mut de).map_err(|e| {
            let msg = e.to_string();
            // serde_json appends " at line L column C"; the position inside one value helps nobody.
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            EventError::new("properties", msg)
        })
    };
    match walk(text) {
        // serde_json reads each number as an f64 on the way, and refuses one past its range
        // (`1e400`), which PostgreSQL's numeric stores: numbers are judged by `check_numbers`
        // against PostgreSQL's range, so the walk is done again with every number as `0`.
        Err(e) if e.problem == "number out of range" => walk(&numbers_as_zero(text))?,
        other => other?,
    }
    check_numbers(text)
}

/// Valid JSON `text` with every number replaced by `0`: the same structure, keys and strings.
fn numbers_as_zero(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped, mut in_number) = (false, false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        if in_number && matches!(c, '0'..='9' | '-' | '+' | '.' | 'e' | 'E') {
            continue;
        }
        in_number = false;
        match c {
            '-' | '0'..='9' => {
                in_number = true;
                out.push('0');
            }
            '"' => {
                in_string = true;
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// Whether valid JSON `text` certainly passes the checks below, found in one pass over its
/// bytes (what most properties are): no escape anywhere, so no key or string can hold NUL;
/// containers nested at most `max_depth` deep; every number short and without an exponent, so
/// serde_json reads it as a finite number and PostgreSQL's numeric holds it. Anything else
/// takes the full walk, which says what is wrong.
fn surely_fine(text: &str, max_depth: usize) -> bool {
    let (mut depth, mut in_string, mut number) = (0usize, false, 0usize);
    for &c in text.as_bytes() {
        if in_string {
            match c {
                b'"' => in_string = false,
                b'\\' => return false,
                _ => {}
            }
            continue;
        }
        if number > 0 {
            match c {
                b'0'..=b'9' | b'-' | b'+' | b'.' if number < 300 => {
                    number += 1;
                    continue;
                }
                b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E' => return false,
                _ => number = 0,
            }
        }
        match c {
            b'"' => in_string = true,
            b'-' | b'0'..=b'9' => number = 1,
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return false;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// Largest display scale (digits after the decimal point, as written) of PostgreSQL's numeric,
/// which stores every jsonb number: `0.1e-16383` and 16,384 fraction digits are refused (22003).
pub const PG_NUMERIC_MAX_SCALE: i64 = 16_383;
/// Most digits before the decimal point of a numeric (its weight, 32,768 base-10000 digits).
pub const PG_NUMERIC_MAX_INT_DIGITS: i64 = 131_072;

/// Every number of valid JSON `text` is one PostgreSQL's jsonb can store. serde_json reads
/// `1e-20000` as the f64 0.0; jsonb parses the text as a numeric and refuses it.
fn check_numbers(text: &str) -> Result<(), EventError> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'"' {
            i = crate::batch::past_string(bytes, i + 1).unwrap_or(bytes.len());
        } else if b == b'-' || b.is_ascii_digit() {
            let start = i;
            while i < bytes.len()
                && matches!(bytes[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
            {
                i += 1;
            }
            if !pg_numeric_fits(&text[start..i]) {
                let shown: String = text[start..i].chars().take(24).collect();
                return Err(EventError::new(
                    "properties",
                    format!(
                        "the number {shown}{} is out of PostgreSQL's range (at most {PG_NUMERIC_MAX_SCALE} digits after the decimal point and {PG_NUMERIC_MAX_INT_DIGITS} before it, exponent included)",
                        if i - start > 24 { "…" } else { "" }
                    ),
                ));
            }
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// Whether a JSON number (valid syntax) fits PostgreSQL's numeric. Its display scale is the
/// fraction digits as written less the exponent (`0e-16384` is refused though it is zero); its
/// weight counts the digits before the point from the first significant one.
pub fn pg_numeric_fits(number: &str) -> bool {
    // Without an exponent, the scale and the weight are at most the digits written.
    if number.len() <= PG_NUMERIC_MAX_SCALE as usize && !number.contains(['e', 'E']) {
        return true;
    }
    let unsigned = number.strip_prefix('-').unwrap_or(number);
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], &unsigned[at + 1..]),
        None => (unsigned, "0"),
    };
    let exponent_digits = exponent
        .trim_start_matches(['+', '-'])
        .trim_start_matches('0');
    // Beyond any limit below, and beyond what an i64 holds.
    if exponent_digits.len() > 9 {
        return false;
    }
    let mut exp: i64 = if exponent_digits.is_empty() {
        0
    } else {
        match exponent_digits.parse() {
            Ok(e) => e,
            Err(_) => return false,
        }
    };
    if exponent.starts_with('-') {
        exp = -exp;
    }
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let scale = frac.len() as i64 - exp;
    if scale > PG_NUMERIC_MAX_SCALE {
        return false;
    }
    let digits = int.bytes().chain(frac.bytes());
    match digits.clone().position(|d| d != b'0') {
        // Zero: only its scale matters.
        None => true,
        Some(first) => int.len() as i64 - first as i64 + exp <= PG_NUMERIC_MAX_INT_DIGITS,
    }
}

/// Walks a JSON value without building it: checks depth and that no key or string holds NUL.
struct PropertiesCheck {
    depth: usize,
    max_depth: usize,
}

impl PropertiesCheck {
    fn nested(&self) -> Self {
        PropertiesCheck {
            depth: self.depth + 1,
            max_depth: self.max_depth,
        }
    }
}

impl<'de> de::DeserializeSeed<'de> for PropertiesCheck {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// A map key or string value: only checked for NUL.
struct NoNul;

impl<'de> de::DeserializeSeed<'de> for NoNul {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for NoNul {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        if s.contains('\0') {
            Err(E::custom(
                "must not contain NUL (U+0000) in any key or string",
            ))
        } else {
            Ok(())
        }
    }
}

impl<'de> Visitor<'de> for PropertiesCheck {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        NoNul.visit_str(s)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth > self.max_depth {
            return Err(de::Error::custom(format!(
                "nested deeper than {} levels",
                self.max_depth
            )));
        }
        while seq.next_element_seed(self.nested())?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if self.depth > self.max_depth {
            return Err(de::Error::custom(format!(
                "nested deeper than {} levels",
                self.max_depth
            )));
        }
        while map.next_key_seed(NoNul)?.is_some() {
            map.next_value_seed(self.nested())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timestamp::format_timestamp;
    use time::macros::datetime;

    /// The server's clock in every test (not on a whole second, so the window edges are exact).
    const NOW: OffsetDateTime = datetime!(2026-03-04 05:06:07.123456 UTC);
    const TS: &str = r#""2026-03-04T05:06:07Z""#;

    /// The one-pass shortcut only ever passes what the full walk passes, and passes the
    /// common case (plain strings, literals, short numbers).
    #[test]
    fn the_properties_shortcut_passes_only_what_the_walk_passes() {
        let long = format!("{{\"n\":{}}}", "9".repeat(400));
        let cases = [
            (
                r#"{"a":1,"b":-2.5,"c":"x","t":true,"f":false,"n":null}"#,
                true,
            ),
            (r#"{"a":[{"b":{}}],"e":"e1E9"}"#, true),
            (r#"{"a":1e5}"#, false),
            (r#"{"a":1E400}"#, false),
            (r#"{"a":"\u0000"}"#, false),
            (r#"{"a\"b":1}"#, false),
            (r#"{"a":[[[[1]]]]}"#, false),
            (long.as_str(), false),
        ];
        for (text, fast) in cases {
            assert_eq!(surely_fine(text, 4), fast, "{text}");
        }
        let limits = Limits {
            max_properties_depth: 4,
            ..Limits::default()
        };
        for (text, _) in cases.iter().filter(|(t, _)| surely_fine(t, 4)) {
            let raw: Box<RawValue> = serde_json::from_str(text).unwrap();
            let mut de = serde_json::Deserializer::from_str(raw.get());
            let walk = PropertiesCheck {
                depth: 1,
                max_depth: limits.max_properties_depth,
            };
            assert!(
                de::DeserializeSeed::deserialize(walk, &mut de).is_ok(),
                "{text}"
            );
            assert!(check_numbers(text).is_ok(), "{text}");
        }
    }

    fn raw(json: &str) -> &RawValue {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("test input is not JSON: {e}: {json}"))
    }

    fn check_with<'a>(json: &'a str, limits: &Limits) -> Result<ValidEvent<'a>, EventError> {
        validate_event(raw(json), limits, NOW)
    }

    fn check(json: &str) -> Result<ValidEvent<'_>, EventError> {
        check_with(json, &Limits::default())
    }

    /// A valid minimal event (`name`, `timestamp`) with `field` set to the JSON text `value`.
    fn event_with(field: &str, value: &str) -> String {
        let mut fields = vec![
            ("name", r#""app_open""#.to_string()),
            ("timestamp", TS.to_string()),
        ];
        match fields.iter_mut().find(|(k, _)| *k == field) {
            Some(f) => f.1 = value.to_string(),
            None => fields.push((field, value.to_string())),
        }
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", body.join(","))
    }

    /// The minimal event without `field`.
    fn event_without(field: &str) -> String {
        event_with(field, "null")
            .replace(&format!(",\"{field}\":null"), "")
            .replace(&format!("\"{field}\":null,"), "")
    }

    /// A JSON string literal of `n` copies of `c`.
    fn string_of(c: &str, n: usize) -> String {
        format!("\"{}\"", c.repeat(n))
    }

    #[track_caller]
    fn assert_rejected(result: Result<ValidEvent<'_>, EventError>, field: &str, problem: &str) {
        match result {
            Ok(e) => panic!("accepted, expected `{field}: …{problem}…`: {e:?}"),
            Err(e) => {
                assert_eq!(e.field, field, "{e}");
                assert!(
                    e.problem.contains(problem),
                    "{e:?} should mention {problem:?}"
                );
                assert_eq!(e.to_string(), format!("{}: {}", e.field, e.problem));
            }
        }
    }

    #[test]
    fn minimal_event_gets_the_defaults() {
        let json = event_with("name", r#""app_open""#);
        assert_eq!(
            json,
            r#"{"name":"app_open","timestamp":"2026-03-04T05:06:07Z"}"#
        );
        assert_eq!(
            event_without("name"),
            r#"{"timestamp":"2026-03-04T05:06:07Z"}"#
        );
        assert_eq!(event_without("user_id"), json);
        let e = check(&json).unwrap();
        assert_eq!(e.event_id, None);
        assert_eq!(e.name, "app_open");
        assert_eq!(e.time, datetime!(2026-03-04 05:06:07 UTC));
        assert_eq!((e.device_id, e.session_id, e.user_id), (None, None, None));
        assert!(e.properties.is_none());
    }

    #[test]
    fn full_event_keeps_every_field() {
        let json = r#"{
            "event_id": "0190C5D5-9a6e-7c1f-8e4a-6f1b2c3d4e5f",
            "name": "level_up",
            "timestamp": "2026-03-04T06:06:07.123456789+01:00",
            "device_id": "dev-1",
            "session_id": "sess-1",
            "user_id": "ünïcödé",
            "properties": { "level": 3, "tags": ["a", {"b": null}] }
        }"#;
        let e = check(json).unwrap();
        assert_eq!(
            e.event_id,
            Some(Uuid::parse_str("0190c5d5-9a6e-7c1f-8e4a-6f1b2c3d4e5f").unwrap())
        );
        assert_eq!(e.name, "level_up");
        assert_eq!(
            e.time,
            datetime!(2026-03-04 05:06:07.123456 UTC),
            "UTC, truncated to the one_us"
        );
        assert_eq!(e.time.offset(), time::UtcOffset::UTC);
        assert_eq!(e.device_id.as_deref(), Some("dev-1"));
        assert_eq!(e.session_id.as_deref(), Some("sess-1"));
        assert_eq!(e.user_id.as_deref(), Some("ünïcödé"));
        // The text as sent, whitespace included: it is passed on, never rebuilt.
        assert_eq!(
            e.properties,
            Some(r#"{ "level": 3, "tags": ["a", {"b": null}] }"#)
        );
    }

    #[test]
    fn event_must_be_an_object() {
        for json in ["[]", r#"[{"name":"a"}]"#, r#""event""#, "1", "true", "null"] {
            assert_rejected(check(json), "event", "must be a JSON object");
        }
    }

    #[test]
    fn unknown_field_is_rejected_and_named() {
        let long = "k".repeat(100);
        let cases = [
            (event_with("foo", "1"), "foo".to_string()),
            (event_with("Name", r#""x""#), "Name".to_string()),
            (event_with("eventId", "null"), "eventId".to_string()),
            (event_with("properties ", "{}"), "properties ".to_string()),
            // Several unknown fields: the first in sorted order, so the answer is stable.
            (
                event_with("zz", "1").replace('}', r#","aa":1,"mm":1}"#),
                "aa".to_string(),
            ),
            // Reported before anything else is checked (here `name` and `timestamp` are missing).
            (r#"{"foo": 1}"#.to_string(), "foo".to_string()),
            // Shown back safely: NUL escaped, long names cut at 64 characters.
            (event_with("a\\u0000b", "1"), "a\\u0000b".to_string()),
            (event_with(&long, "1"), format!("{}…", &long[..64])),
        ];
        for (json, field) in cases {
            assert_rejected(check(&json), &field, "unknown field");
        }
        let err = check(&event_with("foo", "1")).unwrap_err();
        assert!(err.to_string().starts_with("foo: unknown field ("), "{err}");
    }

    #[test]
    fn event_id_accepts_hyphenated_uuids_in_any_case() {
        let want = Uuid::parse_str("0190c5d5-9a6e-7c1f-8e4a-6f1b2c3d4e5f").unwrap();
        for id in [
            "0190c5d5-9a6e-7c1f-8e4a-6f1b2c3d4e5f",
            "0190C5D5-9A6E-7C1F-8E4A-6F1B2C3D4E5F",
            "0190c5D5-9A6e-7c1F-8e4A-6f1B2c3D4e5F",
        ] {
            let json = event_with("event_id", &format!("\"{id}\""));
            assert_eq!(check(&json).unwrap().event_id, Some(want), "{id}");
        }
        // Any version is fine, nil included: it is the client's idempotency key.
        let nil = event_with("event_id", r#""00000000-0000-0000-0000-000000000000""#);
        assert_eq!(check(&nil).unwrap().event_id, Some(Uuid::nil()));
        assert_eq!(
            check(&event_with("event_id", "null")).unwrap().event_id,
            None
        );
        assert_eq!(check(&event_without("event_id")).unwrap().event_id, None);
    }

    #[test]
    fn event_id_rejects_every_other_form() {
        let rejected = [
            (
                r#""0190c5d59a6e7c1f8e4a6f1b2c3d4e5f""#,
                "must be a UUID in the form",
            ), // simple
            (
                r#""{0190c5d5-9a6e-7c1f-8e4a-6f1b2c3d4e5f}""#,
                "must be a UUID in the form",
            ), // braced
            (
                r#""urn:uuid:0190c5d5-9a6e-7c1f-8e4a-6f1b2c3d4e5f""#,
                "must be a UUID in the form",
            ),
            (
                r#""0190c5d5-9a6e-7c1f-8e4a-6f1b2c3d4e5""#,
                "must be a UUID in the form",
            ), // 35
            (
                r#""0190c5d5-9a6e-7c1f-8e4a-6f1b2c3d4e5ff""#,
                "must be a UUID in the form",
            ), // 37
            (
                r#""0190c5d5-9a6e-7c1f-8e4a-6f1b2c3d4e5g""#,
                "must be a UUID in the form",
            ), // non-hex
            (
                r#""0190c5d5-9a6e-7c1f-8e4a6-f1b2c3d4e5f""#,
                "must be a UUID in the form",
            ), // hyphen moved
            (
                r#"" 0190c5d5-9a6e-7c1f-8e4a-6f1b2c3d4e5f""#,
                "must be a UUID in the form",
            ),
            (
                r#""０190c5d5-9a6e-7c1f-8e4a-6f1b2c3d4e5f""#,
                "must be a UUID in the form",
            ), // full-width 0
            (r#""""#, "must be a UUID in the form"),
            ("12345", "must be a string"),
            ("true", "must be a string"),
            (
                r#"["0190c5d5-9a6e-7c1f-8e4a-6f1b2c3d4e5f"]"#,
                "must be a string",
            ),
            (
                r#"{"id": "0190c5d5-9a6e-7c1f-8e4a-6f1b2c3d4e5f"}"#,
                "must be a string",
            ),
        ];
        for (value, problem) in rejected {
            assert_rejected(check(&event_with("event_id", value)), "event_id", problem);
        }
    }

    #[test]
    fn name_rules() {
        let accepted = [
            (r#""a""#.to_string(), "a".to_string()),
            (string_of("n", 200), "n".repeat(200)),
            (string_of("é", 200), "é".repeat(200)), // 400 bytes
            (string_of("🎉", 200), "🎉".repeat(200)), // 800 bytes
            (string_of("\\u00e9", 200), "é".repeat(200)), // counted after unescaping
            (string_of("\\ud83c\\udf89", 200), "🎉".repeat(200)), // surrogate pairs are one char
            (r#"" ""#.to_string(), " ".to_string()),
        ];
        for (value, want) in accepted {
            let json = event_with("name", &value);
            assert_eq!(check(&json).map(|e| e.name.into_owned()), Ok(want));
        }
        let rejected = [
            (string_of("n", 201), "longer than 200 characters"),
            (string_of("é", 201), "longer than 200 characters"),
            (string_of("🎉", 201), "longer than 200 characters"),
            // Scalar values, not graphemes: 101 × (e + combining acute) is 202.
            (string_of("e\u{301}", 101), "longer than 200 characters"),
            (r#""""#.to_string(), "must not be empty"),
            (r#""a\u0000b""#.to_string(), "must not contain NUL"),
            (r#""\u0000""#.to_string(), "must not contain NUL"),
            ("null".to_string(), "is required"),
            ("42".to_string(), "must be a string"),
            ("false".to_string(), "must be a string"),
            (r#"["a"]"#.to_string(), "must be a string"),
            (r#"{"a":1}"#.to_string(), "must be a string"),
        ];
        for (value, problem) in rejected {
            assert_rejected(check(&event_with("name", &value)), "name", problem);
        }
        assert_rejected(check(&event_without("name")), "name", "is required");
    }

    #[test]
    fn timestamp_grammar_is_checked() {
        let accepted = [
            (
                r#""2026-03-04T05:06:07Z""#,
                datetime!(2026-03-04 05:06:07 UTC),
            ),
            (
                r#""2026-03-04T05:06:07""#,
                datetime!(2026-03-04 05:06:07 UTC),
            ),
            (
                r#""2026-03-04T07:06:07.5+02:00""#,
                datetime!(2026-03-04 05:06:07.5 UTC),
            ),
            (
                r#""2026-03-04T05:06:07.000000999Z""#,
                datetime!(2026-03-04 05:06:07 UTC),
            ),
        ];
        for (value, want) in accepted {
            assert_eq!(
                check(&event_with("timestamp", value)).map(|e| e.time),
                Ok(want),
                "{value}"
            );
        }
        let rejected = [
            (r#""2026-03-04 05:06:07Z""#, "must look like"),
            (r#""2026-03-04""#, "must look like"),
            (r#""yesterday""#, "must look like"),
            (r#""2026-02-30T05:06:07Z""#, "no such date"),
            (r#""2026-03-04T05:06:07.Z""#, "fraction of a second"),
            ("1772600767", "must be a string"),
            (r#"{"t": "2026-03-04T05:06:07Z"}"#, "must be a string"),
            ("null", "is required"),
        ];
        for (value, problem) in rejected {
            assert_rejected(check(&event_with("timestamp", value)), "timestamp", problem);
        }
        assert_rejected(
            check(&event_without("timestamp")),
            "timestamp",
            "is required",
        );
    }

    /// With a correction, the time stored and judged is `timestamp + correction`, and the
    /// device's own time is kept; the window's edges apply to the corrected time.
    #[test]
    fn a_corrected_timestamp_is_judged_and_stored_corrected() {
        let ahead = Duration::days(3);
        let clock = BatchClock {
            received_at: NOW,
            correction: Some(-ahead),
        };
        let limits = Limits::default();
        let day = Duration::hours(24);
        let one_us = Duration::microseconds(1);
        for (device, stored) in [
            // Three days ahead by its own clock: an hour ago, really.
            (
                NOW + ahead - Duration::hours(1),
                Some(NOW - Duration::hours(1)),
            ),
            (NOW + ahead + day, Some(NOW + day)),
            (NOW + ahead + day + one_us, None),
            (
                datetime!(2000-01-04 00:00:00 UTC),
                Some(datetime!(2000-01-01 00:00:00 UTC)),
            ),
            (datetime!(2000-01-03 23:59:59.999999 UTC), None),
        ] {
            let json = event_with("timestamp", &format!("\"{}\"", format_timestamp(device)));
            match (validate_event_at(raw(&json), &limits, &clock), stored) {
                (Ok(e), Some(t)) => {
                    assert_eq!((e.time, e.device_time), (t, Some(device)));
                    let entry = e.entry("s", Some(NOW + ahead), NOW, Uuid::nil);
                    assert_eq!((entry.time, entry.device_time), (t, Some(device)));
                }
                (Err(e), None) => {
                    assert_eq!(e.field, "timestamp");
                    assert!(
                        e.problem
                            .ends_with("once corrected by the device's clock skew (-259200 s)"),
                        "{e}"
                    );
                }
                (got, _) => panic!("{device}: {got:?}"),
            }
        }
        // Uncorrected: the device's time is the time, and none is kept beside it.
        let plain = event_with("timestamp", TS);
        assert_eq!(check(&plain).unwrap().device_time, None);
        // A correction past the calendar's end is refused, not a panic.
        let far = BatchClock {
            received_at: NOW,
            correction: Some(Duration::days(365 * 9000)),
        };
        let err = validate_event_at(raw(&event_with("timestamp", TS)), &limits, &far).unwrap_err();
        assert!(err.problem.starts_with("is out of range"), "{err}");
    }

    /// Checks each timestamp against `limits`: `true` when it must be accepted.
    #[track_caller]
    fn assert_window(limits: &Limits, cases: &[(&str, OffsetDateTime, bool)]) {
        for &(what, t, accepted) in cases {
            let json = event_with("timestamp", &format!("\"{}\"", format_timestamp(t)));
            match (check_with(&json, limits), accepted) {
                (Ok(e), true) => assert_eq!(e.time, t, "{what}"),
                (Err(e), false) => {
                    assert_eq!(e.field, "timestamp", "{what}: {e}");
                    assert!(e.problem.starts_with("is "), "{what}: {e}");
                }
                (got, _) => panic!("{what} ({}): {got:?}", format_timestamp(t)),
            }
        }
    }

    #[test]
    fn timestamp_window_with_the_default_limits() {
        let one_us = Duration::microseconds(1);
        let day = Duration::hours(24);
        assert_window(
            &Limits::default(),
            &[
                (
                    "exactly the minimum",
                    datetime!(2000-01-01 00:00:00 UTC),
                    true,
                ),
                (
                    "1 one_us before the minimum",
                    datetime!(1999-12-31 23:59:59.999999 UTC),
                    false,
                ),
                ("in 1999", datetime!(1999-06-15 12:00:00 UTC), false),
                ("in year 1", datetime!(0001-01-01 00:00:00 UTC), false),
                ("now", NOW, true),
                ("an hour ago", NOW - Duration::hours(1), true),
                ("now + 24h", NOW + day, true),
                ("now + 24h + 1one_us", NOW + day + one_us, false),
                ("now + 24h + 1s", NOW + day + Duration::seconds(1), false),
                ("3 days ahead", NOW + Duration::days(3), false),
                ("in 9999", datetime!(9999-01-01 00:00:00 UTC), false),
            ],
        );
        // The window is compared in UTC, whatever offset the client wrote.
        let cases = [
            (r#""2000-01-01T01:00:00+01:00""#, true),  // = the minimum
            (r#""2000-01-01T00:59:59+01:00""#, false), // 1999 in UTC
            (r#""1999-12-31T23:00:00-01:00""#, true),  // = the minimum
            (r#""2026-03-05T04:06:07.123456-01:00""#, true), // = now + 24h
            (r#""2026-03-05T06:06:07.123457+01:00""#, false), // = now + 24h + 1one_us
        ];
        for (value, accepted) in cases {
            assert_eq!(
                check(&event_with("timestamp", value)).is_ok(),
                accepted,
                "{value}"
            );
        }
        assert_rejected(
            check(&event_with("timestamp", r#""1999-12-31T23:59:59Z""#)),
            "timestamp",
            "is before 2000-01-01T00:00:00.000000Z",
        );
        assert_rejected(
            check(&event_with("timestamp", r#""2026-03-07T00:00:00Z""#)),
            "timestamp",
            "is more than 86400 seconds ahead of the server's clock",
        );
    }

    #[test]
    fn timestamp_window_follows_the_configured_limits() {
        let one_us = Duration::microseconds(1);
        let narrow = Limits {
            min_timestamp: datetime!(2020-01-01 00:00:00 UTC),
            max_future: Duration::hours(1),
            ..Limits::default()
        };
        assert_window(
            &narrow,
            &[
                (
                    "exactly the minimum",
                    datetime!(2020-01-01 00:00:00 UTC),
                    true,
                ),
                (
                    "1 one_us before the minimum",
                    datetime!(2019-12-31 23:59:59.999999 UTC),
                    false,
                ),
                (
                    "in 2010 (fine by default)",
                    datetime!(2010-01-01 00:00:00 UTC),
                    false,
                ),
                ("now + 1h", NOW + Duration::hours(1), true),
                (
                    "now + 1h + 1one_us",
                    NOW + Duration::hours(1) + one_us,
                    false,
                ),
                (
                    "now + 2h (fine by default)",
                    NOW + Duration::hours(2),
                    false,
                ),
            ],
        );
        assert_rejected(
            check_with(
                &event_with("timestamp", r#""2019-01-01T00:00:00Z""#),
                &narrow,
            ),
            "timestamp",
            "is before 2020-01-01T00:00:00.000000Z",
        );
        assert_rejected(
            check_with(
                &event_with("timestamp", r#""2026-03-04T08:00:00Z""#),
                &narrow,
            ),
            "timestamp",
            "is more than 3600 seconds ahead",
        );
    }

    #[test]
    fn an_event_older_than_the_retention_window_is_rejected_and_marked() {
        let one_us = Duration::microseconds(1);
        let kept = Limits {
            max_age: Some(Duration::days(29)),
            ..Limits::default()
        };
        assert_window(
            &kept,
            &[
                ("exactly 29 days old", NOW - Duration::days(29), true),
                (
                    "a microsecond older",
                    NOW - Duration::days(29) - one_us,
                    false,
                ),
                (
                    "in 2001 (fine without retention)",
                    datetime!(2001-06-01 00:00:00 UTC),
                    false,
                ),
            ],
        );
        let err =
            check_with(&event_with("timestamp", r#""2001-06-01T00:00:00Z""#), &kept).unwrap_err();
        assert!(err.older_than_retention, "{err}");
        assert!(
            err.problem
                .starts_with("is older than the retention keeps (more than 2505600 seconds"),
            "{err}"
        );
        // The fixed minimum is checked first and is no retention matter.
        let err =
            check_with(&event_with("timestamp", r#""1999-06-01T00:00:00Z""#), &kept).unwrap_err();
        assert!(!err.older_than_retention, "{err}");
        // A corrected time is what is judged, and the message says so.
        let late = BatchClock {
            received_at: NOW,
            correction: Some(Duration::days(-30)),
        };
        let now = format!("\"{}\"", format_timestamp(NOW));
        let err = validate_event_at(raw(&event_with("timestamp", &now)), &kept, &late).unwrap_err();
        assert!(
            err.older_than_retention && err.problem.contains("corrected"),
            "{err}"
        );
    }

    #[test]
    fn timestamp_window_can_be_widened_or_closed() {
        let one_us = Duration::microseconds(1);
        let wide = Limits {
            min_timestamp: datetime!(1970-01-01 00:00:00 UTC),
            max_future: Duration::days(7),
            ..Limits::default()
        };
        assert_window(
            &wide,
            &[
                (
                    "exactly the minimum",
                    datetime!(1970-01-01 00:00:00 UTC),
                    true,
                ),
                (
                    "1 one_us before the minimum",
                    datetime!(1969-12-31 23:59:59.999999 UTC),
                    false,
                ),
                ("in 1999", datetime!(1999-06-15 12:00:00 UTC), true),
                ("3 days ahead", NOW + Duration::days(3), true),
                ("now + 7d", NOW + Duration::days(7), true),
                (
                    "now + 7d + 1one_us",
                    NOW + Duration::days(7) + one_us,
                    false,
                ),
            ],
        );
        let no_future = Limits {
            max_future: Duration::ZERO,
            ..Limits::default()
        };
        assert_window(
            &no_future,
            &[("now", NOW, true), ("now + 1one_us", NOW + one_us, false)],
        );
    }

    #[test]
    fn optional_strings_rules() {
        type Get = fn(&ValidEvent<'_>) -> Option<String>;
        let fields: [(&str, Get); 3] = [
            ("device_id", |e| e.device_id.as_deref().map(str::to_string)),
            ("session_id", |e| {
                e.session_id.as_deref().map(str::to_string)
            }),
            ("user_id", |e| e.user_id.as_deref().map(str::to_string)),
        ];
        for (field, get) in fields {
            let accepted = [
                (event_without(field), None),
                (event_with(field, "null"), None),
                (
                    event_with(field, r#""abc-123""#),
                    Some("abc-123".to_string()),
                ),
                (event_with(field, r#""""#), Some(String::new())),
                (
                    event_with(field, &string_of("d", 200)),
                    Some("d".repeat(200)),
                ),
                (
                    event_with(field, &string_of("é", 200)),
                    Some("é".repeat(200)),
                ),
                (
                    event_with(field, &string_of("🎉", 200)),
                    Some("🎉".repeat(200)),
                ),
            ];
            for (json, want) in accepted {
                assert_eq!(check(&json).map(|e| get(&e)), Ok(want), "{json}");
            }
            let rejected = [
                (string_of("d", 201), "longer than 200 characters"),
                (string_of("é", 201), "longer than 200 characters"),
                (string_of("🎉", 201), "longer than 200 characters"),
                (r#""a\u0000""#.to_string(), "must not contain NUL"),
                ("42".to_string(), "must be a string"),
                ("4.2".to_string(), "must be a string"),
                ("true".to_string(), "must be a string"),
                (r#"["a"]"#.to_string(), "must be a string"),
                (r#"{"id":"a"}"#.to_string(), "must be a string"),
            ];
            for (value, problem) in rejected {
                assert_rejected(check(&event_with(field, &value)), field, problem);
            }
        }
    }

    #[test]
    fn string_limit_is_configurable() {
        // 8 characters: exactly the length of the minimal event's name, "app_open".
        let limits = Limits {
            max_string_chars: 8,
            ..Limits::default()
        };
        for field in ["name", "device_id", "session_id", "user_id"] {
            let at_limit = event_with(field, &string_of("é", 8));
            assert!(check_with(&at_limit, &limits).is_ok(), "{field}");
            assert_rejected(
                check_with(&event_with(field, &string_of("a", 9)), &limits),
                field,
                "longer than 8 characters",
            );
        }
    }

    #[test]
    fn numbers_past_a_double_that_numeric_stores_pass_and_the_rest_is_still_checked() {
        for raw in ["1e400", "-1.5e+9999", "12345678901234567890e300", "1E+400"] {
            let json = event_with("properties", &format!(r#"{{"a":[{raw},"x"],"b":{raw}}}"#));
            assert!(check(&json).is_ok(), "{raw}: {:?}", check(&json));
        }
        // Past numeric's range still refused, with what numeric allows.
        let json = event_with("properties", r#"{"a":1e200000}"#);
        assert_rejected(
            check(&json),
            "properties",
            "the number 1e200000 is out of PostgreSQL's range",
        );
        // The walk after a big number still finds NUL, lone surrogates and depth.
        let json = event_with("properties", r#"{"a":1e400,"b":"x\u0000"}"#);
        assert_rejected(check(&json), "properties", "must not contain NUL");
        let json = event_with("properties", r#"{"a":1e400,"b":"\ud800"}"#);
        assert!(check(&json).is_err());
        let deep = format!(r#"{{"a":1e400,"b":{}1{}}}"#, "[".repeat(40), "]".repeat(40));
        assert_rejected(
            check(&event_with("properties", &deep)),
            "properties",
            "nested deeper than 32 levels",
        );
        assert_eq!(
            numbers_as_zero(r#"{"a\"1":[-1.5e+9,"2\\",3],"b":true}"#),
            r#"{"a\"1":[0,"2\\",0],"b":true}"#
        );
    }

    #[test]
    fn properties_must_be_an_object_when_present() {
        for json in [
            event_without("properties"),
            event_with("properties", "null"),
        ] {
            assert!(check(&json).unwrap().properties.is_none(), "{json}");
        }
        for value in [
            "{}",
            r#"{ "a" : [1, 2.5, -3e2, true, false, null, "x", {}] }"#,
            "{\n}",
        ] {
            let json = event_with("properties", value);
            assert_eq!(check(&json).unwrap().properties, Some(value));
        }
        for value in ["[]", r#"[{"a":1}]"#, r#""{}""#, "0", "1.5", "true", "false"] {
            assert_rejected(
                check(&event_with("properties", value)),
                "properties",
                "must be a JSON object",
            );
        }
    }

    /// A properties object whose JSON text is exactly `len` bytes (`len` >= 8).
    fn properties_of_len(len: usize) -> String {
        let text = format!(r#"{{"p":"{}"}}"#, "x".repeat(len - 8));
        assert_eq!(text.len(), len);
        text
    }

    #[test]
    fn properties_size_limit_counts_bytes_as_sent() {
        let max = Limits::default().max_properties_bytes;
        assert_eq!(max, 32 * 1024);
        let at_limit = properties_of_len(max);
        assert!(check(&event_with("properties", &at_limit)).is_ok());
        assert_rejected(
            check(&event_with("properties", &properties_of_len(max + 1))),
            "properties",
            "larger than 32768 bytes",
        );

        let small = |max_properties_bytes| Limits {
            max_properties_bytes,
            ..Limits::default()
        };
        let cases = [
            (r#"{"a":"éé"}"#, 12),     // bytes, not characters
            (r#"{"a":"\u00e9"}"#, 14), // the escape as sent, not the decoded character
            (r#"{ "a" : 1 }"#, 11),    // whitespace counts
            ("{}", 2),
        ];
        for (value, len) in cases {
            assert_eq!(value.len(), len);
            let json = event_with("properties", value);
            assert!(
                check_with(&json, &small(len)).is_ok(),
                "{value} at a limit of {len}"
            );
            assert_rejected(
                check_with(&json, &small(len - 1)),
                "properties",
                &format!("larger than {} bytes", len - 1),
            );
        }
    }

    /// A properties object nested `depth` levels deep (the object itself is level 1), level `n`
    /// being an object or an array as `kind(n)` says (`'{'` or `'['`), with a scalar innermost.
    fn nested(depth: usize, kind: impl Fn(usize) -> char) -> String {
        let (mut open, mut close, mut parent) = (String::from("{"), String::from("}"), '{');
        for level in 2..=depth {
            if parent == '{' {
                open.push_str(r#""k":"#);
            }
            parent = kind(level);
            open.push(parent);
            close.insert(0, if parent == '{' { '}' } else { ']' });
        }
        // Scalars are not a level.
        open.push_str(if parent == '{' { r#""leaf":1"# } else { "1" });
        open + &close
    }

    #[test]
    fn properties_depth_limit() {
        let objects = |_| '{';
        let arrays = |_| '[';
        let alternating = |n: usize| if n % 2 == 1 { '{' } else { '[' };
        assert_eq!(nested(1, objects), r#"{"leaf":1}"#);
        assert_eq!(nested(3, objects), r#"{"k":{"k":{"leaf":1}}}"#);
        assert_eq!(nested(3, arrays), r#"{"k":[[1]]}"#);
        assert_eq!(nested(4, alternating), r#"{"k":[{"k":[1]}]}"#);

        let kinds: [(&str, &dyn Fn(usize) -> char); 3] = [
            ("objects", &objects),
            ("arrays", &arrays),
            ("alternating", &alternating),
        ];
        for (what, kind) in kinds {
            let ok = event_with("properties", &nested(32, kind));
            assert!(check(&ok).is_ok(), "{what}: 32 levels");
            let deep = event_with("properties", &nested(33, kind));
            assert_rejected(check(&deep), "properties", "nested deeper than 32 levels");
            // serde_json's " at line L column C" is cut off.
            assert_eq!(
                check(&deep).unwrap_err().problem,
                "nested deeper than 32 levels"
            );
        }
        // Far deeper, still within the size limit: rejected, not a stack overflow.
        let very_deep = event_with("properties", &nested(10_000, arrays));
        assert_rejected(
            check(&very_deep),
            "properties",
            "nested deeper than 32 levels",
        );

        let limits = |max_properties_depth| Limits {
            max_properties_depth,
            ..Limits::default()
        };
        for (value, max, accepted) in [
            ("{}", 1, true),
            (r#"{"a":1,"b":"x"}"#, 1, true),
            (r#"{"a":{}}"#, 1, false),
            (r#"{"a":[]}"#, 1, false),
            (r#"{"a":{},"b":[1]}"#, 2, true),
            (r#"{"a":{},"b":[[1]]}"#, 2, false),
        ] {
            let json = event_with("properties", value);
            let result = check_with(&json, &limits(max));
            assert_eq!(
                result.is_ok(),
                accepted,
                "{value} with a depth limit of {max}: {result:?}"
            );
        }
    }

    #[test]
    fn properties_reject_nul_anywhere() {
        let rejected = [
            r#"{"a\u0000":1}"#,
            r#"{"\u0000":1}"#,
            r#"{"a":"x\u0000y"}"#,
            r#"{"a":1,"b":"\u0000"}"#,
            r#"{"a":[1,[2,{"b":["ok","\u0000"]}]]}"#,
            r#"{"a":[{"b\u0000c":1}]}"#,
            r#"{"a":{"b":{"c":{"d":"\u0000"}}}}"#,
        ];
        for value in rejected {
            assert_rejected(
                check(&event_with("properties", value)),
                "properties",
                "must not contain NUL (U+0000) in any key or string",
            );
        }
        // An escaped backslash followed by "u0000" is six ordinary characters, not a NUL.
        for value in [
            r#"{"a":"\\u0000"}"#,
            r#"{"\\u0000":"\\u0000"}"#,
            r#"{"a":"\u0001"}"#,
        ] {
            assert!(check(&event_with("properties", value)).is_ok(), "{value}");
        }
    }

    #[test]
    fn error_display_is_field_colon_problem() {
        let cases = [
            (event_with("name", r#""""#), "name: must not be empty"),
            (event_without("timestamp"), "timestamp: is required"),
            (event_with("user_id", "1"), "user_id: must be a string"),
            ("[]".to_string(), "event: must be a JSON object"),
            (
                event_with("properties", "[]"),
                "properties: must be a JSON object",
            ),
            (
                event_with("event_id", r#""x""#),
                "event_id: must be a UUID in the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx",
            ),
        ];
        for (json, want) in cases {
            assert_eq!(check(&json).unwrap_err().to_string(), want);
        }
    }

    /// Each case as PostgreSQL 15 answered `SELECT '{"x": <n>}'::jsonb` (run by hand on the
    /// real server while writing this; the differential test in tests/ checks it live).
    #[test]
    fn numbers_follow_postgresql_numeric_limits() {
        let ones = |n: usize| "1".repeat(n);
        let cases: Vec<(String, bool)> = vec![
            ("1e-1000".into(), true),
            ("1e-16383".into(), true),
            ("1e-16384".into(), false),
            ("0e-16383".into(), true),
            ("0e-16384".into(), false),
            ("0.0e-16384".into(), false),
            ("10e-16384".into(), false),
            ("0.001e-16380".into(), true),
            ("0.001e-16381".into(), false),
            (format!("0.{}", ones(16383)), true),
            (format!("0.{}", ones(16384)), false),
            (format!("0.{}e-3", ones(16380)), true),
            (format!("0.{}e-4", ones(16380)), false),
            ("1e131071".into(), true),
            ("9.9e131071".into(), true),
            ("1e131072".into(), false),
            (format!("{}e130072", ones(1000)), true),
            ("1e-99999999999999999999".into(), false),
            ("1E+0999".into(), true),
            ("-0.0e1000".into(), true),
            ("-12.5".into(), true),
        ];
        for (n, ok) in cases {
            assert_eq!(pg_numeric_fits(&n), ok, "{}", &n[..n.len().min(40)]);
        }
    }

    #[test]
    fn properties_with_unstorable_numbers_are_rejected() {
        let e = event_with("properties", r#"{"a":[1,"1e-20000",{"b":1e-20000}]}"#);
        assert_rejected(check(&e), "properties", "is out of PostgreSQL's range");
        assert!(
            check(&event_with(
                "properties",
                r#"{"s":"1e-20000","n":-1.5e300}"#
            ))
            .is_ok()
        );
    }

    #[test]
    fn an_event_of_many_unknown_keys_names_the_smallest() {
        let keys: Vec<String> = (0..10_000).map(|i| format!("\"k{i:05}\":0")).collect();
        let e = format!("{{{},\"name\":\"n\"}}", keys.join(","));
        assert_rejected(check(&e), "k00000", "unknown field");
    }
}

//! The decoded view of a queue entry's event ([`EventView`]), its strings ([`Text`]) and times
//! (microseconds, [`micros`]): a leaf that the scanner (`scan`) fills in place and `queue`
//! fills with serde_json when the entry is not in the scanner's exact form.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};
use uuid::Uuid;

/// An entry's event read in place, as the flusher stores it: strings are borrowed from the
/// entry's bytes (copied only when they hold a JSON escape), the properties are the entry's own
/// JSON text, and timestamps stay microseconds since the Unix epoch, as the binary COPY wants
/// them. It reads exactly what `QueuedEvent::encode` writes (a unit test holds the two
/// together) and refuses what `QueuedEvent::decode` refuses, with one exception: the
/// properties object of an entry in `encode`'s exact form is delimited, not validated (see
/// `scan::view`); PostgreSQL refuses a bad one and the row is dead-lettered.
#[derive(Debug, PartialEq, Eq)]
pub struct EventView<'a> {
    pub time: i64,
    pub event_id: Uuid,
    pub name: Text<'a>,
    pub source: Text<'a>,
    pub device_id: Option<Text<'a>>,
    pub session_id: Option<Text<'a>>,
    pub user_id: Option<Text<'a>>,
    /// The device's own timestamp when `time` was corrected for its clock's skew.
    pub device_time: Option<i64>,
    /// The properties object's JSON text.
    pub properties: &'a str,
    pub sent_at: Option<i64>,
    pub received_at: i64,
}

/// A string of an entry: borrowed when the JSON held it verbatim, owned when it had escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text<'a>(pub Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// Microseconds kept as they are, checked to be a time `QueuedEvent` could hold.
pub(crate) mod micros {
    use serde::{Deserialize, Deserializer};
    use time::OffsetDateTime;

    /// Whether `micros` since the Unix epoch is a time `QueuedEvent` can hold (the
    /// scanner's check too).
    pub(crate) fn holdable(micros: i64) -> Result<i64, time::error::ComponentRange> {
        let secs = micros.div_euclid(1_000_000);
        if (FIRST_SECOND..=LAST_SECOND).contains(&secs) {
            return Ok(micros);
        }
        // Out of range: the calendar's own error.
        OffsetDateTime::from_unix_timestamp(secs).map(|_| micros)
    }

    /// The first and last Unix seconds an `OffsetDateTime` holds: comparing with them is what
    /// `from_unix_timestamp` checks, without building a date (the flusher does it 3 times a row).
    const FIRST_SECOND: i64 = time::PrimitiveDateTime::MIN.assume_utc().unix_timestamp();
    const LAST_SECOND: i64 = time::PrimitiveDateTime::MAX.assume_utc().unix_timestamp();

    fn check<E: serde::de::Error>(micros: i64) -> Result<i64, E> {
        holdable(micros).map_err(E::custom)
    }

    pub fn in_range<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        check(i64::deserialize(d)?)
    }

    pub fn opt_in_range<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        Option::<i64>::deserialize(d)?.map(check).transpose()
    }
}

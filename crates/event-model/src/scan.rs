//! The flusher's fast reading of an entry's `e` field: a scanner for exactly the JSON that
//! [`crate::QueuedEvent::encode`] writes (fields in its order, no whitespace, strings without
//! escapes). Anything else — an escaped string, another field order, an entry written by hand —
//! makes it give up (`None`), and [`crate::EventView::decode`] reads the entry with serde_json
//! instead, so the two agree on every entry but one kind (see [`view`]).

use std::borrow::Cow;

use uuid::Uuid;

use crate::view::{EventView, Text, micros};

/// Reads `e` as `encode` writes it, or `None` when it is not exactly that form.
///
/// One difference from serde_json: the properties object is delimited, not validated. The
/// fields after it (`sa`, `ra` and the closing brace) are read from the entry's end, and what
/// lies between them and `"p":` is the properties' text, checked only to be braced, UTF-8 and
/// free of control characters other than JSON's whitespace. PostgreSQL parses it into
/// `jsonb` and refuses anything but one JSON object, and the flusher then isolates that row and
/// dead-letters it, as it does any row PostgreSQL refuses. ingest-api only ever queues
/// validated properties.
pub fn view(e: &[u8]) -> Option<EventView<'_>> {
    // UTF-8 is checked once for the whole entry: every piece below is cut at ASCII delimiters,
    // so each is UTF-8 too (serde_json refuses an entry that is not).
    let text = std::str::from_utf8(e).ok()?;
    let mut c = Cursor { s: text, i: 0 };
    c.lit(b"{\"t\":")?;
    let time = c.micros()?;
    c.lit(b",\"id\":\"")?;
    let id = c.b().get(c.i..c.i + 36)?;
    let event_id = Uuid::try_parse_ascii(id).ok()?;
    c.i += 36;
    c.lit(b"\",\"n\":")?;
    let name = c.string()?;
    c.lit(b",\"s\":")?;
    let source = c.string()?;
    let device_id = c.optional(b",\"d\":")?;
    let session_id = c.optional(b",\"ss\":")?;
    let user_id = c.optional(b",\"u\":")?;
    let device_time = c.optional_micros(b",\"dt\":")?;
    c.lit(b",\"p\":")?;
    let (end, sent_at, received_at) = tail(text)?;
    let properties = c.object_until(end)?;
    Some(EventView {
        time,
        event_id,
        name,
        source,
        device_id,
        session_id,
        user_id,
        device_time,
        properties,
        sent_at,
        received_at,
    })
}

struct Cursor<'a> {
    /// The entry.
    s: &'a str,
    i: usize,
}

impl<'a> Cursor<'a> {
    fn b(&self) -> &'a [u8] {
        self.s.as_bytes()
    }

    fn peek_lit(&self, s: &[u8]) -> bool {
        self.b()[self.i..].starts_with(s)
    }

    fn lit(&mut self, s: &[u8]) -> Option<()> {
        self.peek_lit(s).then(|| self.i += s.len())
    }

    /// An integer as serde_json writes an i64, checked to be a time `QueuedEvent` can hold.
    /// Sixteen digits (every time from 2001-09-09 to 2286-11-20) are read eight at a time.
    fn micros(&mut self) -> Option<i64> {
        let rest = &self.b()[self.i..];
        if let (Some(high), Some(low)) = (word(rest, 0), word(rest, 8))
            && all_digits(high)
            && all_digits(low)
            && high & 0xff != u64::from(b'0')
            && !rest.get(16).is_some_and(u8::is_ascii_digit)
        {
            self.i += 16;
            let micros = eight_digits(high) * 100_000_000 + eight_digits(low);
            return micros::holdable(i64::try_from(micros).ok()?).ok();
        }
        let neg = rest.first() == Some(&b'-');
        let from = usize::from(neg);
        let (mut end, mut magnitude) = (from, 0i64);
        while let Some(d) = rest.get(end).filter(|d| d.is_ascii_digit()) {
            // At most 18 digits: no overflow.
            if end - from == 18 {
                return None;
            }
            magnitude = magnitude * 10 + i64::from(d - b'0');
            end += 1;
        }
        // No leading zero (serde_json refuses "01"), and no "-0" (serde_json reads it as the
        // float -0.0, which no i64 field takes).
        if end == from || (rest[from] == b'0' && (end - from > 1 || neg)) {
            return None;
        }
        self.i += end;
        micros::holdable(if neg { -magnitude } else { magnitude }).ok()
    }

    /// A string with no escape and no control character, borrowed.
    fn string(&mut self) -> Option<Text<'a>> {
        self.lit(b"\"")?;
        let start = self.i;
        let len = find(&self.b()[start..], ENDS_STRING)?;
        if self.b()[start + len] != b'"' {
            return None;
        }
        self.i += len + 1;
        Some(Text(Cow::Borrowed(self.s.get(start..start + len)?)))
    }

    fn optional(&mut self, key: &[u8]) -> Option<Option<Text<'a>>> {
        if !self.peek_lit(key) {
            return Some(None);
        }
        self.i += key.len();
        self.string().map(Some)
    }

    /// A time in microseconds under `key`, when the entry has that key here.
    fn optional_micros(&mut self, key: &[u8]) -> Option<Option<i64>> {
        if !self.peek_lit(key) {
            return Some(None);
        }
        self.i += key.len();
        self.micros().map(Some)
    }

    /// The properties' text, from here to `end`: braced, and free of control characters
    /// other than JSON's whitespace (the entry's UTF-8 is checked in [`view`]).
    fn object_until(&mut self, end: usize) -> Option<&'a str> {
        let text = self.s.get(self.i..end)?;
        let b = text.as_bytes();
        if b.first() != Some(&b'{') || b.last() != Some(&b'}') {
            return None;
        }
        let mut at = 0;
        while let Some(k) = b.get(at..).and_then(|rest| find(rest, CONTROL)) {
            if !matches!(b[at + k], b'\t' | b'\n' | b'\r') {
                return None;
            }
            at += k + 1;
        }
        self.i = end;
        Some(text)
    }
}

/// The entry's last fields, read back from its end: `,"sa":<micros>` if present, then
/// `,"ra":<micros>}`. Returns where they start (the properties' end), `sa` and `ra`.
fn tail(s: &str) -> Option<(usize, Option<i64>, i64)> {
    let close = s
        .len()
        .checked_sub(1)
        .filter(|&i| s.as_bytes()[i] == b'}')?;
    let (ra_at, received_at) = micros_before(s, close, b",\"ra\":")?;
    Some(match micros_before(s, ra_at, b",\"sa\":") {
        Some((sa_at, sent_at)) => (sa_at, Some(sent_at), received_at),
        None => (ra_at, None, received_at),
    })
}

/// `key` and a time in microseconds ending just before `end`: where the key starts, and the
/// time (read forwards, by [`Cursor::micros`]'s rules).
fn micros_before(s: &str, end: usize, key: &[u8]) -> Option<(usize, i64)> {
    let b = s.as_bytes();
    let read = |start: usize| {
        let at = start.checked_sub(key.len())?;
        if &b[at..start] != key {
            return None;
        }
        let mut c = Cursor { s, i: start };
        let micros = c.micros()?;
        (c.i == end).then_some((at, micros))
    };
    // Sixteen digits (see `Cursor::micros`) first, else counted back.
    end.checked_sub(16).and_then(read).or_else(|| {
        let len = b[..end]
            .iter()
            .rev()
            .take_while(|&&c| c.is_ascii_digit() || c == b'-')
            .count();
        read(end - len)
    })
}

/// Whether JSON needs `s` escaped: it holds a quote, a backslash or a control character (the
/// bytes serde_json escapes, and the ones [`Cursor::string`] stops at).
pub(crate) fn needs_escape(s: &str) -> bool {
    find(s.as_bytes(), ENDS_STRING).is_some()
}

/// Where the first byte of `b` with one of the `stops` flags of [`SPECIAL`] is. Eight bytes
/// are tested at a time (see [`specials`]), the last few one by one.
fn find(b: &[u8], stops: u8) -> Option<usize> {
    let mut at = 0;
    while let Some(w) = word(b, at) {
        let found = specials(w, stops);
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = b[at..]
        .iter()
        .position(|&c| SPECIAL[usize::from(c)] & stops != 0)?;
    Some(at + tail)
}

/// Bytes `at..at + 8` of `b` as a word, the first in its lowest byte.
fn word(b: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; 8] = b.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of every byte of `w` below `n` (at most 0x80). Exact up to the first such byte
/// (a borrow can flag a byte above it), which is all [`find`] uses.
fn bytes_below(w: u64, n: u8) -> u64 {
    w.wrapping_sub(ONES * u64::from(n)) & !w & HIGHS
}

/// The bytes of `w` that [`SPECIAL`] flags with `stops` ([`ENDS_STRING`] or [`CONTROL`]):
/// control characters, and quotes and backslashes for `ENDS_STRING`. The lowest flagged byte
/// is exact: each term's is, and a term flags a wrong byte only above its own exact one.
fn specials(w: u64, stops: u8) -> u64 {
    let is = |c: u8| bytes_below(w ^ (ONES * u64::from(c)), 1);
    let control = bytes_below(w, 0x20);
    if stops & ENDS_STRING != 0 {
        control | is(b'"') | is(b'\\')
    } else {
        control
    }
}

/// Whether all eight bytes of `w` are ASCII digits.
fn all_digits(w: u64) -> bool {
    const NIBBLES: u64 = 0xf0f0_f0f0_f0f0_f0f0;
    const THREES: u64 = 0x3030_3030_3030_3030;
    w & NIBBLES == THREES && w.wrapping_add(6 * ONES) & NIBBLES == THREES
}

/// The number eight ASCII digits spell, the first (most significant) in the lowest byte:
/// pairs, then fours, then all eight combined in place.
fn eight_digits(w: u64) -> u64 {
    let w = w - 0x30 * ONES;
    let w = (w.wrapping_mul(10) + (w >> 8)) & 0x00ff_00ff_00ff_00ff;
    let w = (w.wrapping_mul(100) + (w >> 16)) & 0x0000_ffff_0000_ffff;
    (w.wrapping_mul(10_000) + (w >> 32)) & 0xffff_ffff
}

/// [`SPECIAL`]'s flag for control characters (what the properties' text is checked for).
const CONTROL: u8 = 1;
/// [`SPECIAL`]'s flag for the bytes [`Cursor::string`] stops at: quotes, backslashes, control
/// characters.
const ENDS_STRING: u8 = 2;

/// Which bytes the scanner's searches stop at (eight at a time in [`specials`]; this table for
/// the last few bytes).
const SPECIAL: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = CONTROL | ENDS_STRING;
        c += 1;
    }
    t[b'"' as usize] = ENDS_STRING;
    t[b'\\' as usize] = ENDS_STRING;
    t
};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What [`find`] must answer: the table, byte by byte.
    fn by_table(b: &[u8], stops: u8) -> Option<usize> {
        b.iter().position(|&c| SPECIAL[usize::from(c)] & stops != 0)
    }

    proptest! {
        /// Any bytes, with the special ones common: the word-at-a-time search finds the
        /// same first byte as the table.
        #[test]
        fn find_agrees_with_the_table(
            b in prop::collection::vec(
                prop_oneof![
                    Just(b'"'), Just(b'\\'), Just(b'{'), Just(b'}'), Just(0u8), Just(0x1f),
                    Just(0x20), Just(0x7f), Just(0x80), Just(0xff), Just(0xa2), Just(0xdc),
                    any::<u8>(), b'a'..=b'z', b'a'..=b'z', b'a'..=b'z', b'a'..=b'z',
                ],
                0..40,
            ),
        ) {
            for stops in [ENDS_STRING, CONTROL] {
                prop_assert_eq!(find(&b, stops), by_table(&b, stops));
            }
        }

        /// Every number of up to 19 digits (sign, leading zeros and what follows included)
        /// reads as serde_json reads it, or not at all.
        #[test]
        fn micros_agrees_with_serde(text in "-?[0-9]{1,19}[,}0-9a]?") {
            let mut c = Cursor { s: &text, i: 0 };
            let got = c.micros();
            let number: String = text.chars().take_while(|c| *c == '-' || c.is_ascii_digit()).collect();
            let want = serde_json::from_str::<i64>(&number)
                .ok()
                .and_then(|n| micros::holdable(n).ok());
            prop_assert_eq!(got, want);
            if got.is_some() {
                prop_assert_eq!(c.i, number.len());
            }
        }
    }

    #[test]
    fn eight_digits_at_a_time() {
        for n in [
            0u64, 1, 9, 10, 12_345_678, 99_999_999, 10_000_000, 90_000_009,
        ] {
            let w = u64::from_le_bytes(format!("{n:08}").as_bytes().try_into().unwrap());
            assert!(all_digits(w));
            assert_eq!(eight_digits(w), n);
        }
        for bad in [
            *b"1234567/",
            *b"1234567:",
            *b"a2345678",
            *b"12345 78",
            [0xb5; 8],
        ] {
            assert!(!all_digits(u64::from_le_bytes(bad)), "{bad:?}");
        }
    }
}

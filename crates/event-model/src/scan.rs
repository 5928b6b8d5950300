//! The flusher's fast reading of an entry's `e` field: a scanner for exactly the JSON that
//! [`crate::QueuedEvent::encode`] writes (fields in its order, no whitespace, strings without
//! escapes). Anything else — an escaped string, another field order, an entry written by hand —
//! makes it give up (`None`), and [`crate::EventView::decode`] reads the entry with serde_json
//! instead, so the two agree on every entry but one kind (see [`view`]).

use std::borrow::Cow;

use uuid::Uuid;

use crate::batch::past_string;
use crate::queue::{EventView, Text};

/// Reads `e` as `encode` writes it, or `None` when it is not exactly that form.
///
/// One difference from serde_json: the properties object is delimited (strings and nesting
/// followed, UTF-8 checked) but its JSON is not validated here. PostgreSQL parses it into
/// `jsonb` and refuses a bad one, and the flusher then isolates that row and dead-letters it,
/// as it does any row PostgreSQL refuses. ingest-api only ever queues validated properties.
pub fn view(e: &[u8]) -> Option<EventView<'_>> {
    let mut c = Cursor { b: e, i: 0 };
    c.lit(b"{\"t\":")?;
    let time = c.micros()?;
    c.lit(b",\"id\":\"")?;
    let id = c.b.get(c.i..c.i + 36)?;
    let event_id = Uuid::try_parse_ascii(id).ok()?;
    c.i += 36;
    c.lit(b"\",\"n\":")?;
    let name = c.string()?;
    c.lit(b",\"s\":")?;
    let source = c.string()?;
    let device_id = c.optional(b",\"d\":")?;
    let session_id = c.optional(b",\"ss\":")?;
    let user_id = c.optional(b",\"u\":")?;
    c.lit(b",\"p\":")?;
    let properties = c.object()?;
    let sent_at = if c.peek_lit(b",\"sa\":") {
        c.i += 6;
        Some(c.micros()?)
    } else {
        None
    };
    c.lit(b",\"ra\":")?;
    let received_at = c.micros()?;
    c.lit(b"}")?;
    (c.i == e.len()).then_some(EventView {
        time,
        event_id,
        name,
        source,
        device_id,
        session_id,
        user_id,
        properties,
        sent_at,
        received_at,
    })
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn peek_lit(&self, s: &[u8]) -> bool {
        self.b[self.i..].starts_with(s)
    }

    fn lit(&mut self, s: &[u8]) -> Option<()> {
        self.peek_lit(s).then(|| self.i += s.len())
    }

    /// An integer as serde_json writes an i64, checked to be a time `QueuedEvent` can hold.
    fn micros(&mut self) -> Option<i64> {
        let rest = &self.b[self.i..];
        let neg = rest.first() == Some(&b'-');
        let digits = rest[usize::from(neg)..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        // No leading zero (serde_json refuses "01"), at most 18 digits: no overflow below.
        let first = rest.get(usize::from(neg))?;
        if digits == 0 || digits > 18 || (*first == b'0' && digits > 1) {
            return None;
        }
        let end = usize::from(neg) + digits;
        let magnitude = rest[usize::from(neg)..end]
            .iter()
            .fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
        self.i += end;
        crate::queue::micros::holdable(if neg { -magnitude } else { magnitude }).ok()
    }

    /// A string with no escape and no control character, borrowed.
    fn string(&mut self) -> Option<Text<'a>> {
        self.lit(b"\"")?;
        let rest = &self.b[self.i..];
        let len = memchr::memchr2(b'"', b'\\', rest)?;
        if rest[len] != b'"' || rest[..len].iter().any(|&b| b < 0x20) {
            return None;
        }
        let s = std::str::from_utf8(&rest[..len]).ok()?;
        self.i += len + 1;
        Some(Text(Cow::Borrowed(s)))
    }

    fn optional(&mut self, key: &[u8]) -> Option<Option<Text<'a>>> {
        if !self.peek_lit(key) {
            return Some(None);
        }
        self.i += key.len();
        self.string().map(Some)
    }

    /// A JSON object's text: up to the brace that closes it, following strings (and their
    /// escapes) so that braces inside them do not count; checked to be UTF-8.
    fn object(&mut self) -> Option<&'a str> {
        let start = self.i;
        let b = self.b;
        if b.get(start) != Some(&b'{') {
            return None;
        }
        let mut depth = 0usize;
        let mut i = start;
        loop {
            let k = i + memchr::memchr3(b'"', b'{', b'}', &b[i..])?;
            i = k + 1;
            match b[k] {
                b'"' => i = past_string(b, i),
                b'{' => depth += 1,
                _ => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
            }
        }
        let text = std::str::from_utf8(&b[start..i]).ok()?;
        if text
            .bytes()
            .any(|c| c < 0x20 && !matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
        {
            return None;
        }
        self.i = i;
        Some(text)
    }
}

//! The flusher's fast reading of an entry's `e` field: a scanner for exactly the JSON that
//! [`crate::QueuedEvent::encode`] writes (fields in its order, no whitespace, strings without
//! escapes). Anything else — an escaped string, another field order, an entry written by hand —
//! makes it give up (`None`), and [`crate::EventView::decode`] reads the entry with serde_json
//! instead, so the two agree on every entry but one kind (see [`view`]).

use std::borrow::Cow;

use uuid::Uuid;

use crate::queue::{EventView, Text};

/// Reads `e` as `encode` writes it, or `None` when it is not exactly that form.
///
/// One difference from serde_json: the properties object is delimited (strings and nesting
/// followed, UTF-8 checked) but its JSON is not validated here. PostgreSQL parses it into
/// `jsonb` and refuses a bad one, and the flusher then isolates that row and dead-letters it,
/// as it does any row PostgreSQL refuses. ingest-api only ever queues validated properties.
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
    fn micros(&mut self) -> Option<i64> {
        let rest = &self.b()[self.i..];
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
        // No leading zero (serde_json refuses "01").
        if end == from || (rest[from] == b'0' && end - from > 1) {
            return None;
        }
        self.i += end;
        crate::queue::micros::holdable(if neg { -magnitude } else { magnitude }).ok()
    }

    /// A string with no escape and no control character, borrowed.
    fn string(&mut self) -> Option<Text<'a>> {
        self.lit(b"\"")?;
        let start = self.i;
        let len = self.b()[start..]
            .iter()
            .position(|&c| SPECIAL[usize::from(c)] & ENDS_STRING != 0)?;
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

    /// A JSON object's text: up to the brace that closes it, following strings (and their
    /// escapes) so that braces inside them do not count; checked to be free of control
    /// characters other than JSON's whitespace (the entry's UTF-8 is checked in [`view`]).
    /// One pass: ordinary bytes are skipped by a table lookup each, and only the few special
    /// ones are looked at.
    fn object(&mut self) -> Option<&'a str> {
        let start = self.i;
        let b = &self.b()[start..];
        if b.first() != Some(&b'{') {
            return None;
        }
        let (mut depth, mut in_string) = (0usize, false);
        let mut k = 0;
        let end = loop {
            k += b
                .get(k..)?
                .iter()
                .position(|&c| SPECIAL[usize::from(c)] & IN_OBJECT != 0)?;
            match (b[k], in_string) {
                (b'"', _) => in_string = !in_string,
                (b'\\', true) => k += 1,
                (b'{', false) => depth += 1,
                (b'}', false) => {
                    depth -= 1;
                    if depth == 0 {
                        break k + 1;
                    }
                }
                (b'\t' | b'\n' | b'\r', _) | (b'{' | b'}', true) => {}
                _ => return None,
            }
            k += 1;
        };
        self.i += end;
        self.s.get(start..start + end)
    }
}

/// [`SPECIAL`]'s flag for the bytes [`Cursor::object`] stops at: quotes, backslashes, braces,
/// control characters.
const IN_OBJECT: u8 = 1;
/// [`SPECIAL`]'s flag for the bytes [`Cursor::string`] stops at: quotes, backslashes, control
/// characters.
const ENDS_STRING: u8 = 2;

/// Which bytes the scanner's loops stop at: ordinary ones cost a table lookup each.
const SPECIAL: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = IN_OBJECT | ENDS_STRING;
        c += 1;
    }
    t[b'"' as usize] = IN_OBJECT | ENDS_STRING;
    t[b'\\' as usize] = IN_OBJECT | ENDS_STRING;
    t[b'{' as usize] = IN_OBJECT;
    t[b'}' as usize] = IN_OBJECT;
    t
};

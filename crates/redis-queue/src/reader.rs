//! A connection that only reads streams: `XREADGROUP` over plain RESP2, its reply parsed
//! straight into entries whose field values are slices of the bytes read (no copy, no
//! intermediate `redis::Value` tree).
//!
//! The flusher spends most of its CPU on reading entries: redis-rs parses every reply into a
//! tree of `Value`s, an allocation per ID, field name and value, through a parser-combinator
//! library. Entries are the one large reply in the pipeline, so they get this reader of their
//! own; every other command still goes through redis-rs. It speaks to one node over TCP (a
//! `redis://` URL); a Redis Cluster or a Unix socket keeps the redis-rs connection.

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use redis::ConnectionInfo;

use crate::QueueError;
use crate::resp::{self, encode, protocol};

/// One stream entry: its ID and its field/value pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    pub id: String,
    pub fields: Vec<(Bytes, Bytes)>,
}

impl StreamEntry {
    /// The value of the first field called `name`.
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| k.as_ref() == name.as_bytes())
            .map(|(_, v)| v.as_ref())
    }
}

/// What `XREADGROUP` asks for.
pub struct ReadGroup<'a> {
    pub key: &'a str,
    pub group: &'a str,
    pub consumer: &'a str,
    pub count: usize,
    /// `None`: do not block.
    pub block: Option<Duration>,
}

/// A RESP2 connection to one Redis node, used for `XREADGROUP` only.
pub struct StreamReader {
    conn: resp::Conn,
    pieces: Pieces,
}

impl StreamReader {
    /// Connects and authenticates as the URL says. `Ok(None)`: the address is not plain TCP
    /// (a Unix socket, TLS): use a redis-rs connection instead.
    pub async fn connect(info: &ConnectionInfo) -> Result<Option<StreamReader>, QueueError> {
        Ok(resp::Conn::connect(info).await?.map(|conn| StreamReader {
            conn,
            pieces: Pieces::default(),
        }))
    }

    /// `XREADGROUP GROUP g c COUNT n [BLOCK ms] STREAMS key >`: the new entries, none when the
    /// block ran out.
    pub async fn read_group(
        &mut self,
        read: &ReadGroup<'_>,
    ) -> Result<Vec<StreamEntry>, QueueError> {
        self.read_groups(read, 1).await
    }

    /// The same read `times` times in one round trip (pipelined): up to `times` × `count`
    /// entries, in stream order. Reads after the stream ran dry return nothing.
    pub async fn read_groups(
        &mut self,
        read: &ReadGroup<'_>,
        times: usize,
    ) -> Result<Vec<StreamEntry>, QueueError> {
        let count = read.count.to_string();
        let block = read.block.map(|b| b.as_millis().to_string());
        let mut args: Vec<&[u8]> = vec![
            b"XREADGROUP",
            b"GROUP",
            read.group.as_bytes(),
            read.consumer.as_bytes(),
            b"COUNT",
            count.as_bytes(),
        ];
        if let Some(ms) = &block {
            args.extend([b"BLOCK".as_slice(), ms.as_bytes()]);
        }
        args.extend([b"STREAMS".as_slice(), read.key.as_bytes(), b">"]);
        let mut out = Vec::new();
        for _ in 0..times {
            encode(&mut out, &args);
        }
        self.conn.send(&out).await?;
        let mut entries = Vec::new();
        let mut first_error = None;
        // Every reply is read, errors too, so the connection stays in step.
        for _ in 0..times {
            match self.read_entries(&mut entries).await {
                Ok(()) => {}
                Err(e @ QueueError::Reply { .. }) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(entries),
        }
    }

    /// Reads one `XREADGROUP` reply into `out`. Usually it has arrived already (pipelined
    /// replies come together) and one pass over it finds its pieces; otherwise it is waited
    /// for first. An error reply becomes [`QueueError::Reply`].
    async fn read_entries(&mut self, out: &mut Vec<StreamEntry>) -> Result<(), QueueError> {
        loop {
            if self.conn.buf.first() == Some(&b'-') {
                return self.conn.reply().await.map(|_| ());
            }
            let mut end = 0;
            if self.pieces.find(&self.conn.buf, &mut end)? {
                let data = self.conn.buf.split_to(end).freeze();
                self.pieces.push_entries(&data, out)?;
                return Ok(());
            }
            self.conn.wait_whole().await?;
        }
    }
}

/// Where an `XREADGROUP` reply's entries are in the bytes read, found in one pass before the
/// reply is split off the read buffer (its fields become slices of that split, so they can
/// only be made after). Kept by the reader and reused: no allocation per read.
#[derive(Default)]
struct Pieces {
    /// Each entry's ID, and where its fields start in `fields`.
    entries: Vec<(Range<usize>, usize)>,
    /// Field, value, field, value … of all entries in turn.
    fields: Vec<Range<usize>>,
}

impl Pieces {
    /// Reads the reply `buf` starts with (`pos` at 0): `Ok(false)` when it has not all
    /// arrived, else `pos` is left just past it. The reply is nil when the block ran out, else
    /// `[[key, [[id, [field, value, …]], …]], …]`; another shape is a protocol error.
    fn find(&mut self, buf: &[u8], pos: &mut usize) -> Result<bool, QueueError> {
        self.entries.clear();
        self.fields.clear();
        let bad = || protocol("an XREADGROUP reply that is not [[key, [[id, [field, value, …]]]]]");
        // `Ok(None)` from a piece: the reply has not all arrived.
        macro_rules! whole {
            ($piece:expr) => {
                match $piece? {
                    Some(v) => v,
                    None => return Ok(false),
                }
            };
        }
        let Some(streams) = whole!(array(buf, pos)) else {
            return Ok(true); // nil
        };
        for _ in 0..streams {
            if whole!(array(buf, pos)) != Some(2) {
                return Err(bad());
            }
            whole!(bulk(buf, pos)).ok_or_else(bad)?; // the key
            let entries = whole!(array(buf, pos)).ok_or_else(bad)?;
            for _ in 0..entries {
                if whole!(array(buf, pos)) != Some(2) {
                    return Err(bad());
                }
                let id = whole!(bulk(buf, pos)).ok_or_else(bad)?;
                self.entries.push((id, self.fields.len()));
                // A deleted entry still pending comes back with nil fields: none here, as
                // reads are of new entries only, but an empty list is the honest reading of it.
                let values = whole!(array(buf, pos)).unwrap_or(0);
                if values % 2 != 0 {
                    return Err(bad());
                }
                for _ in 0..values {
                    let v = whole!(bulk(buf, pos)).ok_or_else(bad)?;
                    self.fields.push(v);
                }
            }
        }
        Ok(true)
    }

    /// The entries [`Pieces::find`] found, their fields slices of `data` (the reply it read).
    fn push_entries(&self, data: &Bytes, out: &mut Vec<StreamEntry>) -> Result<(), QueueError> {
        out.reserve(self.entries.len());
        for (k, (id, first)) in self.entries.iter().enumerate() {
            let last = self.entries.get(k + 1).map_or(self.fields.len(), |e| e.1);
            let id = std::str::from_utf8(&data[id.clone()])
                .map_err(|_| protocol("an entry ID that is not UTF-8"))?;
            let fields = self.fields[*first..last]
                .chunks_exact(2)
                .map(|kv| (data.slice(kv[0].clone()), data.slice(kv[1].clone())))
                .collect();
            out.push(StreamEntry {
                id: id.to_string(),
                fields,
            });
        }
        Ok(())
    }
}

/// The array header at `pos`: its length, `Some(None)` for nil (`*-1` or `$-1`), `None` when
/// it has not all arrived.
fn array(buf: &[u8], pos: &mut usize) -> Result<Option<Option<usize>>, QueueError> {
    let Some((kind, n, after)) = header(buf, *pos)? else {
        return Ok(None);
    };
    *pos = after;
    match kind {
        b'*' => Ok(Some(usize::try_from(n).ok())),
        b'$' if n == -1 => Ok(Some(None)),
        _ => Err(protocol(
            "an XREADGROUP reply with a value where an array belongs",
        )),
    }
}

/// The bulk string at `pos`: its range, `Some(None)` for nil, `None` when it has not all
/// arrived.
fn bulk(buf: &[u8], pos: &mut usize) -> Result<Option<Option<Range<usize>>>, QueueError> {
    let Some((kind, n, after)) = header(buf, *pos)? else {
        return Ok(None);
    };
    if kind != b'$' {
        return Err(protocol(
            "an XREADGROUP reply with a value where a string belongs",
        ));
    }
    let Ok(len) = usize::try_from(n) else {
        *pos = after;
        return Ok(Some(None));
    };
    let end = after
        .checked_add(len)
        .ok_or_else(|| protocol("bulk length"))?;
    let Some(crlf) = buf.get(end..end + 2) else {
        return Ok(None);
    };
    if crlf != b"\r\n" {
        return Err(protocol("a bulk string not ended by CRLF"));
    }
    *pos = end + 2;
    Ok(Some(Some(after..end)))
}

/// The line at `pos` as a type byte and a number (`*2`, `$-1`): both, and where the next line
/// starts; `None` when it has not all arrived. Read digit by digit: the lines of an entries
/// reply are a few bytes each, too short for [`line`]'s search to pay.
fn header(buf: &[u8], pos: usize) -> Result<Option<(u8, i64, usize)>, QueueError> {
    let Some(&kind) = buf.get(pos) else {
        return Ok(None);
    };
    let not_a_number = || protocol("a length or integer that is not a number");
    let negative = buf.get(pos + 1) == Some(&b'-');
    let start = pos + 1 + usize::from(negative);
    let (mut i, mut n) = (start, 0i64);
    while let Some(&d) = buf.get(i).filter(|d| d.is_ascii_digit()) {
        if i - start == 18 {
            return Err(not_a_number());
        }
        n = n * 10 + i64::from(d - b'0');
        i += 1;
    }
    match buf.get(i..i + 2) {
        None if buf.len() <= i + 1 && buf.get(i).is_none_or(|&c| c == b'\r') => Ok(None),
        Some(b"\r\n") if i > start => Ok(Some((kind, if negative { -n } else { n }, i + 2))),
        _ => Err(not_a_number()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::parse;

    const REPLY: &[u8] = b"*1\r\n*2\r\n$3\r\nkey\r\n*2\r\n\
        *2\r\n$3\r\n1-0\r\n*4\r\n$1\r\nv\r\n$1\r\n1\r\n$1\r\ne\r\n$7\r\n{\"a\":1}\r\n\
        *2\r\n$3\r\n2-0\r\n*2\r\n$1\r\nv\r\n$0\r\n\r\n";

    /// What `read_entries` makes of a reply that has arrived whole.
    fn entries_in(bytes: &[u8]) -> Result<Vec<StreamEntry>, QueueError> {
        let (mut pieces, mut end, mut out) = (Pieces::default(), 0, Vec::new());
        assert!(pieces.find(bytes, &mut end)?, "whole");
        assert_eq!(end, bytes.len(), "the reply ends where it was found to");
        pieces.push_entries(&Bytes::copy_from_slice(bytes), &mut out)?;
        Ok(out)
    }

    fn entries(bytes: &[u8]) -> Vec<StreamEntry> {
        entries_in(bytes).unwrap()
    }

    #[test]
    fn reads_entries_with_their_fields() {
        let got = entries(REPLY);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].id, "1-0");
        assert_eq!(got[0].field("v"), Some(&b"1"[..]));
        assert_eq!(got[0].field("e"), Some(&b"{\"a\":1}"[..]));
        assert_eq!(got[1].id, "2-0");
        assert_eq!(got[1].field("v"), Some(&b""[..]));
        assert_eq!(got[1].field("e"), None);
    }

    #[test]
    fn a_timed_out_block_is_no_entries() {
        assert!(entries(b"*-1\r\n").is_empty());
        assert!(entries(b"$-1\r\n").is_empty());
    }

    /// Whole replies of another shape than XREADGROUP's are protocol errors, never entries.
    #[test]
    fn replies_of_another_shape_are_refused() {
        for bad in [
            &b":1\r\n"[..],
            b"*1\r\n$3\r\nkey\r\n",
            b"*1\r\n*1\r\n$3\r\nkey\r\n",
            b"*1\r\n*2\r\n$3\r\nkey\r\n*1\r\n$3\r\n1-0\r\n",
            b"*1\r\n*2\r\n$3\r\nkey\r\n*1\r\n*2\r\n:1\r\n*0\r\n",
            b"*1\r\n*2\r\n$3\r\nkey\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*1\r\n$1\r\nv\r\n",
            b"*1\r\n*2\r\n$3\r\nkey\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nv\r\n*0\r\n",
        ] {
            let got = entries_in(bad);
            assert!(
                matches!(got, Err(QueueError::Protocol(_))),
                "{:?}: {got:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Every prefix of a reply is incomplete, never an error nor a shorter reply: the reader
    /// waits for the rest whatever way TCP cuts it.
    #[test]
    fn every_cut_of_a_reply_waits_for_the_rest() {
        for cut in 0..REPLY.len() {
            let mut pos = 0;
            assert_eq!(
                parse(&REPLY[..cut], &mut pos, true).unwrap(),
                None,
                "cut at {cut}"
            );
            assert_eq!(
                parse(&REPLY[..cut], &mut 0, false).unwrap(),
                None,
                "scan, cut at {cut}"
            );
            assert!(
                !Pieces::default().find(&REPLY[..cut], &mut 0).unwrap(),
                "entries, cut at {cut}"
            );
        }
        let mut pos = 0;
        assert!(parse(REPLY, &mut pos, false).unwrap().is_some());
        assert_eq!(pos, REPLY.len(), "the scan ends where the reply does");
    }
}

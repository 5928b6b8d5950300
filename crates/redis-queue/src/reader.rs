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

use bytes::{Bytes, BytesMut};
use redis::{ConnectionAddr, ConnectionInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::QueueError;

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
    socket: TcpStream,
    buf: BytesMut,
    pieces: Pieces,
}

impl StreamReader {
    /// Connects and authenticates as the URL says. `Ok(None)`: the address is not plain TCP
    /// (a Unix socket, TLS): use a redis-rs connection instead.
    pub async fn connect(info: &ConnectionInfo) -> Result<Option<StreamReader>, QueueError> {
        let ConnectionAddr::Tcp(host, port) = info.addr() else {
            return Ok(None);
        };
        let socket = TcpStream::connect((host.as_str(), *port))
            .await
            .map_err(io_error)?;
        socket.set_nodelay(true).map_err(io_error)?;
        let mut reader = StreamReader {
            socket,
            buf: BytesMut::with_capacity(64 * 1024),
            pieces: Pieces::default(),
        };
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            let mut auth: Vec<&[u8]> = vec![b"AUTH"];
            auth.extend(settings.username().map(str::as_bytes));
            auth.push(password.as_bytes());
            reader.command(&auth).await?;
        }
        if settings.db() != 0 {
            let db = settings.db().to_string();
            reader.command(&[b"SELECT", db.as_bytes()]).await?;
        }
        Ok(Some(reader))
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
        self.socket.write_all(&out).await.map_err(io_error)?;
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

    /// Sends one command and reads its whole reply: the reply's bytes and its frame, whose
    /// ranges index those bytes. An error reply becomes [`QueueError::Reply`].
    async fn command(&mut self, args: &[&[u8]]) -> Result<(Bytes, Frame), QueueError> {
        let mut out = Vec::new();
        encode(&mut out, args);
        self.socket.write_all(&out).await.map_err(io_error)?;
        self.reply().await
    }

    /// Reads one whole reply and parses it: the reply's bytes and its frame, whose ranges
    /// index those bytes. An error reply becomes [`QueueError::Reply`].
    async fn reply(&mut self) -> Result<(Bytes, Frame), QueueError> {
        let data = self.whole_reply().await?;
        let frame =
            parse(&data, &mut 0, true)?.ok_or_else(|| protocol("a reply that was whole is not"))?;
        if let Frame::Error(r) = &frame {
            return Err(reply_error(&data[r.clone()]));
        }
        Ok((data, frame))
    }

    /// The bytes of one whole reply.
    async fn whole_reply(&mut self) -> Result<Bytes, QueueError> {
        let end = self.wait_whole().await?;
        Ok(self.buf.split_to(end).freeze())
    }

    /// Reads until the buffer starts with a whole reply; returns where it ends. A large reply
    /// arrives in pieces: until it is whole, each attempt only checks where it would end (no
    /// frame built, no allocation), after taking in all that has arrived.
    async fn wait_whole(&mut self) -> Result<usize, QueueError> {
        loop {
            let mut end = 0;
            if parse(&self.buf, &mut end, false)?.is_some() {
                return Ok(end);
            }
            self.make_room();
            let n = self
                .socket
                .read_buf(&mut self.buf)
                .await
                .map_err(io_error)?;
            if n == 0 {
                return Err(io_error(std::io::ErrorKind::UnexpectedEof.into()));
            }
            self.take_what_arrived()?;
        }
    }

    /// Reads one `XREADGROUP` reply into `out`. Usually it has arrived already (pipelined
    /// replies come together) and one pass over it finds its pieces; otherwise it is waited
    /// for first. An error reply becomes [`QueueError::Reply`].
    async fn read_entries(&mut self, out: &mut Vec<StreamEntry>) -> Result<(), QueueError> {
        loop {
            if self.buf.first() == Some(&b'-') {
                return self.reply().await.map(|_| ());
            }
            let mut end = 0;
            if self.pieces.find(&self.buf, &mut end)? {
                let data = self.buf.split_to(end).freeze();
                self.pieces.push_entries(&data, out)?;
                return Ok(());
            }
            self.wait_whole().await?;
        }
    }

    /// At least 16 KiB free to read into; grown by 64 KiB at a time, so a partial reply is
    /// moved to a larger buffer rarely.
    fn make_room(&mut self) {
        if self.buf.capacity() - self.buf.len() < 16 * 1024 {
            self.buf.reserve(64 * 1024);
        }
    }

    /// Reads without waiting until nothing more is there.
    fn take_what_arrived(&mut self) -> Result<(), QueueError> {
        loop {
            self.make_room();
            match self.socket.try_read_buf(&mut self.buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(io_error(e)),
            }
        }
    }
}

/// One command in RESP2: an array of bulk strings.
fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.reserve(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn io_error(e: std::io::Error) -> QueueError {
    QueueError::Redis(e.into())
}

/// `-NOGROUP No such key…` → code `NOGROUP`, as redis-rs reports error replies.
fn reply_error(text: &[u8]) -> QueueError {
    let text = String::from_utf8_lossy(text);
    let (code, message) = text.split_once(' ').unwrap_or((&text, ""));
    QueueError::Reply {
        code: code.to_string(),
        message: message.to_string(),
    }
}

/// A RESP2 value whose strings are ranges of the bytes it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Frame {
    Simple(Range<usize>),
    Error(Range<usize>),
    Integer(i64),
    Bulk(Option<Range<usize>>),
    Array(Option<Vec<Frame>>),
}

fn protocol(what: &str) -> QueueError {
    QueueError::Protocol(what.to_string())
}

/// Parses one frame starting at `pos`; `Ok(None)` when the bytes end before it does. On
/// success `pos` is just past it. Without `build`, arrays come back empty: only where the
/// frame ends is learnt, with no allocation.
fn parse(buf: &[u8], pos: &mut usize, build: bool) -> Result<Option<Frame>, QueueError> {
    let Some(line) = line(buf, *pos) else {
        return Ok(None);
    };
    let (kind, text) = (buf[*pos], (*pos + 1)..line);
    let after = line + 2;
    let number = || number(&buf[text.clone()]);
    let frame = match kind {
        b'+' => Frame::Simple(text.clone()),
        b'-' => Frame::Error(text.clone()),
        b':' => Frame::Integer(number()?),
        b'$' => match usize::try_from(number()?) {
            Err(_) => Frame::Bulk(None),
            Ok(len) => {
                let end = after
                    .checked_add(len)
                    .ok_or_else(|| protocol("bulk length"))?;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err(protocol("a bulk string not ended by CRLF"));
                }
                *pos = end + 2;
                return Ok(Some(Frame::Bulk(Some(after..end))));
            }
        },
        b'*' => match usize::try_from(number()?) {
            Err(_) => Frame::Array(None),
            Ok(len) => {
                *pos = after;
                let mut items = Vec::with_capacity(if build { len.min(1024) } else { 0 });
                for _ in 0..len {
                    match parse(buf, pos, build)? {
                        Some(item) if build => items.push(item),
                        Some(_) => {}
                        None => return Ok(None),
                    }
                }
                return Ok(Some(Frame::Array(Some(items))));
            }
        },
        _ => return Err(protocol("an unknown RESP2 type byte")),
    };
    *pos = after;
    Ok(Some(frame))
}

/// A RESP2 length or integer.
fn number(digits: &[u8]) -> Result<i64, QueueError> {
    let (negative, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    let not_a_number = || protocol("a length or integer that is not a number");
    if digits.is_empty() || digits.len() > 18 {
        return Err(not_a_number());
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(not_a_number());
        }
        n = n * 10 + i64::from(d - b'0');
    }
    Ok(if negative { -n } else { n })
}

/// Where the line starting at `from` ends (the index of its CR), if the CRLF was read yet.
fn line(buf: &[u8], from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    let mut at = 0;
    loop {
        let cr = at + memchr::memchr(b'\r', rest.get(at..)?)?;
        match rest.get(cr + 1) {
            Some(b'\n') => return Some(from + cr),
            Some(_) => at = cr + 1,
            None => return None,
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
    fn integers_and_lengths() {
        for (text, want) in [
            (&b":0\r\n"[..], 0),
            (b":-12\r\n", -12),
            (b":987654321\r\n", 987_654_321),
        ] {
            let mut pos = 0;
            assert_eq!(
                parse(text, &mut pos, true).unwrap(),
                Some(Frame::Integer(want))
            );
        }
        let mut pos = 0;
        assert_eq!(
            parse(b"$-1\r\n", &mut pos, true).unwrap(),
            Some(Frame::Bulk(None))
        );
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

    #[test]
    fn error_replies_keep_their_code() {
        let mut pos = 0;
        let frame = parse(b"-NOGROUP No such key\r\n", &mut pos, true)
            .unwrap()
            .unwrap();
        let Frame::Error(r) = frame else {
            panic!("{frame:?}")
        };
        let e = reply_error(&b"-NOGROUP No such key\r\n"[r]);
        assert_eq!(e.code(), Some("NOGROUP"));
    }

    #[test]
    fn malformed_replies_are_errors() {
        for bad in [
            &b"?x\r\n"[..],
            b"$3\r\nabcd\r\n",
            b":x1\r\n",
            b":\r\n",
            b"*-\r\n",
            b":1234567890123456789\r\n",
        ] {
            let mut pos = 0;
            assert!(
                parse(bad, &mut pos, true).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}

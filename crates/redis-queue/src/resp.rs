//! RESP2 over one TCP connection to one Redis node, for the two hot paths where redis-rs's
//! `Value` trees and multiplexing cost more CPU than the work itself: the flusher's reads
//! ([`crate::reader`]) and ingest-api's appends ([`crate::writer`]). Every other command goes
//! through redis-rs.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use redis::{ConnectionAddr, ConnectionInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::QueueError;

/// A TCP connection to one node and what has been read from it but not yet taken.
pub(crate) struct Conn {
    socket: TcpStream,
    pub(crate) buf: BytesMut,
}

impl Conn {
    /// Connects and authenticates as the URL says. `Ok(None)`: the address is not plain TCP
    /// (a Unix socket, TLS): use a redis-rs connection instead.
    pub(crate) async fn connect(info: &ConnectionInfo) -> Result<Option<Conn>, QueueError> {
        let ConnectionAddr::Tcp(host, port) = info.addr() else {
            return Ok(None);
        };
        let socket = TcpStream::connect((host.as_str(), *port))
            .await
            .map_err(io_error)?;
        crate::configure(&socket).map_err(io_error)?;
        let mut conn = Conn {
            socket,
            buf: BytesMut::with_capacity(64 * 1024),
        };
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            let mut auth: Vec<&[u8]> = vec![b"AUTH"];
            auth.extend(settings.username().map(str::as_bytes));
            auth.push(password.as_bytes());
            conn.command(&auth).await?;
        }
        if settings.db() != 0 {
            let db = settings.db().to_string();
            conn.command(&[b"SELECT", db.as_bytes()]).await?;
        }
        Ok(Some(conn))
    }

    /// Whether the connection is unusable before anything is sent on it: the server closed it
    /// (Redis restarted, or dropped an idle client), or it holds bytes nobody asked for. One
    /// non-blocking peek, made even when the runtime has not yet seen the socket readable.
    pub(crate) fn is_closed(&self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        let mut probe = [std::mem::MaybeUninit::uninit(); 1];
        let peeked = socket2::SockRef::from(&self.socket).peek(&mut probe);
        !matches!(peeked, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Writes all of `bytes` (commands already in RESP).
    pub(crate) async fn send(&mut self, bytes: &[u8]) -> Result<(), QueueError> {
        self.socket.write_all(bytes).await.map_err(io_error)
    }

    /// Sends one command and reads its whole reply: the reply's bytes and its frame, whose
    /// ranges index those bytes. An error reply becomes [`QueueError::Reply`].
    pub(crate) async fn command(&mut self, args: &[&[u8]]) -> Result<(Bytes, Frame), QueueError> {
        let mut out = Vec::new();
        encode(&mut out, args);
        self.send(&out).await?;
        self.reply().await
    }

    /// Reads one whole reply and parses it: the reply's bytes and its frame, whose ranges
    /// index those bytes. An error reply becomes [`QueueError::Reply`].
    pub(crate) async fn reply(&mut self) -> Result<(Bytes, Frame), QueueError> {
        let data = self.whole_reply().await?;
        let frame =
            parse(&data, &mut 0, true)?.ok_or_else(|| protocol("a reply that was whole is not"))?;
        if let Frame::Error(r) = &frame {
            return Err(reply_error(&data[r.clone()]));
        }
        Ok((data, frame))
    }

    /// The bytes of one whole reply.
    pub(crate) async fn whole_reply(&mut self) -> Result<Bytes, QueueError> {
        let end = self.wait_whole().await?;
        Ok(self.buf.split_to(end).freeze())
    }

    /// Reads until the buffer starts with a whole reply; returns where it ends. A large reply
    /// arrives in pieces: until it is whole, each attempt only checks where it would end (no
    /// frame built, no allocation), after taking in all that has arrived.
    pub(crate) async fn wait_whole(&mut self) -> Result<usize, QueueError> {
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
pub(crate) fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.reserve(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.push(b'*');
    out.extend_from_slice(itoa::Buffer::new().format(args.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        bulk_string(out, a);
    }
}

/// One bulk string in RESP2: `$<len>\r\n<bytes>\r\n`.
pub(crate) fn bulk_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'$');
    out.extend_from_slice(itoa::Buffer::new().format(bytes.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn io_error(e: std::io::Error) -> QueueError {
    QueueError::Redis(e.into())
}

/// `-NOGROUP No such key…` → code `NOGROUP`, as redis-rs reports error replies.
pub(crate) fn reply_error(text: &[u8]) -> QueueError {
    let text = String::from_utf8_lossy(text);
    let (code, message) = text.split_once(' ').unwrap_or((&text, ""));
    QueueError::Reply {
        code: code.to_string(),
        message: message.to_string(),
    }
}

/// A RESP2 value whose strings are ranges of the bytes it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    Simple(Range<usize>),
    Error(Range<usize>),
    Integer(i64),
    Bulk(Option<Range<usize>>),
    Array(Option<Vec<Frame>>),
}

pub(crate) fn protocol(what: &str) -> QueueError {
    QueueError::Protocol(what.to_string())
}

/// Parses one frame starting at `pos`; `Ok(None)` when the bytes end before it does. On
/// success `pos` is just past it. Without `build`, arrays come back empty: only where the
/// frame ends is learnt, with no allocation.
pub(crate) fn parse(buf: &[u8], pos: &mut usize, build: bool) -> Result<Option<Frame>, QueueError> {
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
pub(crate) fn number(digits: &[u8]) -> Result<i64, QueueError> {
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
pub(crate) fn line(buf: &[u8], from: usize) -> Option<usize> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A lean connection has what every Redis connection has: keepalive probes after 10 s of
    /// silence and a user timeout (the black-box test `network` sees them armed with `ss`).
    #[tokio::test]
    async fn connections_probe_a_silent_peer() {
        use service_kit::tcp;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}/", listener.local_addr().unwrap());
        let info = redis::IntoConnectionInfo::into_connection_info(url.as_str()).unwrap();
        let conn = Conn::connect(&info).await.unwrap().unwrap();
        let sock = socket2::SockRef::from(&conn.socket);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), tcp::KEEPALIVE_IDLE);
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            tcp::KEEPALIVE_INTERVAL
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), tcp::KEEPALIVE_PROBES);
        assert_eq!(sock.tcp_user_timeout().unwrap(), Some(tcp::USER_TIMEOUT));
        assert!(sock.tcp_nodelay().unwrap());
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

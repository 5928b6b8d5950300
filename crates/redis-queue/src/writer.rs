//! ingest-api's appends over plain RESP2: a request's MULTI, XADDs and EXEC written as one
//! buffer, and their replies skimmed (`+OK`, a `+QUEUED` per XADD, EXEC's array of IDs) rather
//! than parsed into `redis::Value`s.
//!
//! Through redis-rs, packing a command per event and parsing 202 replies into values cost
//! ingest-api about a fifth of its CPU an event. Each transaction holds a connection of a small
//! pool ([`Writers`]) for its round trip; connections are opened as concurrent requests need
//! them, kept when they come back in step, and dropped after an I/O error or a timeout. A
//! connection is only ever used on the runtime that opened it: actix-web runs a runtime per
//! worker thread, and a socket is registered with its runtime's I/O driver (on another runtime
//! it waits on a driver that may be busy or, once that worker stops, gone). Like
//! [`crate::reader`], it speaks to one node over TCP; a Redis Cluster or a Unix socket keeps
//! redis-rs.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Buf;
use event_model::queue::EntryEvent;
use redis::ConnectionInfo;
use tokio::sync::Semaphore;

use crate::QueueError;
use crate::resp::{self, Frame, protocol, reply_error};

/// Connections writing at once, at most; a request past them waits for one (within its
/// timeout). Far above what a node needs to be kept busy, far below its `maxclients`.
const MAX_WRITERS: usize = 64;

/// A connection that appends event entries.
pub struct StreamWriter {
    conn: resp::Conn,
    /// The runtime it was opened on.
    runtime: Option<tokio::runtime::Id>,
    /// The transaction being sent, and one event's entry while it is encoded.
    out: Vec<u8>,
    scratch: Vec<u8>,
}

impl StreamWriter {
    /// Connects and authenticates as the URL says; `Ok(None)` for an address that is not
    /// plain TCP.
    pub async fn connect(info: &ConnectionInfo) -> Result<Option<StreamWriter>, QueueError> {
        Ok(resp::Conn::connect(info).await?.map(|conn| StreamWriter {
            conn,
            runtime: current_runtime(),
            out: Vec::with_capacity(64 * 1024),
            scratch: Vec::with_capacity(1024),
        }))
    }

    /// Appends every event to `key` in one MULTI/EXEC: all of them are in the stream, or
    /// none. An error reply (a refused XADD such as `OOM`, which aborts the transaction) is
    /// returned with its code after every reply has been read, so the connection stays in step
    /// and can be used again; any other error leaves it unusable.
    pub async fn append(&mut self, key: &str, events: &[EntryEvent<'_>]) -> Result<(), QueueError> {
        self.out.clear();
        let n = crate::append::entries_resp(
            &mut self.out,
            &mut self.scratch,
            key,
            events.iter().copied(),
        );
        self.conn.send(&self.out).await?;
        if self.out.capacity() > 4 << 20 {
            self.out = Vec::with_capacity(64 * 1024); // one huge request does not pin its buffer
        }
        // MULTI's `+OK`, then each XADD's `+QUEUED` or its refusal.
        let mut refused = None;
        for _ in 0..=n {
            let end = self.conn.wait_whole().await?;
            if self.conn.buf.first() == Some(&b'-') {
                refused.get_or_insert_with(|| reply_error(&self.conn.buf[1..end - 2]));
            }
            self.conn.buf.advance(end);
        }
        // EXEC: an array of IDs, or `-EXECABORT` after a refusal (which says less than the
        // refusal itself).
        let exec = self.conn.reply().await;
        if let Some(e) = refused {
            return Err(e);
        }
        let (data, frame) = exec?;
        let Frame::Array(Some(items)) = frame else {
            return Err(protocol("an EXEC reply that is not an array"));
        };
        if items.len() != n {
            return Err(protocol("an EXEC reply without one reply per XADD"));
        }
        // An XADD that failed as it ran (`WRONGTYPE`); the others were applied.
        match items.into_iter().find_map(|item| match item {
            Frame::Error(text) => Some(text),
            _ => None,
        }) {
            Some(text) => Err(reply_error(&data[text])),
            None => Ok(()),
        }
    }
}

/// The pool of [`StreamWriter`]s of one node; every append bounded by the timeout.
pub struct Writers {
    info: ConnectionInfo,
    idle: Mutex<Vec<StreamWriter>>,
    permits: Semaphore,
    timeout: Duration,
}

impl Writers {
    /// `None` for an address that is not plain TCP (use redis-rs for it).
    pub fn new(info: ConnectionInfo, timeout: Duration) -> Option<Writers> {
        matches!(info.addr(), redis::ConnectionAddr::Tcp(..)).then(|| Writers {
            info,
            idle: Mutex::default(),
            permits: Semaphore::new(MAX_WRITERS),
            timeout,
        })
    }

    /// [`StreamWriter::append`] on an idle connection, or a new one; within the timeout
    /// (connecting included).
    pub async fn append(&self, key: &str, events: &[EntryEvent<'_>]) -> Result<(), QueueError> {
        let attempt = async {
            let Ok(_permit) = self.permits.acquire().await else {
                return Err(protocol("the writer pool was closed"));
            };
            let idle = self.take_idle();
            let mut writer = match idle {
                Some(w) => w,
                None => StreamWriter::connect(&self.info)
                    .await?
                    .ok_or_else(|| protocol("not a TCP address"))?,
            };
            let result = writer.append(key, events).await;
            // In step after success or an error reply; dropped (closed) otherwise.
            if result.as_ref().err().is_none_or(|e| e.code().is_some()) {
                let mut idle = self.idle();
                if idle.len() == MAX_WRITERS {
                    idle.remove(0); // of a runtime that stopped
                }
                idle.push(writer);
            }
            result
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or(Err(QueueError::Timeout(self.timeout)))
    }

    /// The idle connection last used on this runtime that is still open, if any. One the
    /// server closed is dropped: after a Redis restart, every idle connection is closed, and
    /// none of them may cost a request its write.
    fn take_idle(&self) -> Option<StreamWriter> {
        let here = current_runtime();
        let mut idle = self.idle();
        while let Some(at) = idle.iter().rposition(|w| w.runtime == here) {
            let writer = idle.swap_remove(at);
            if !writer.conn.is_closed() {
                return Some(writer);
            }
        }
        None
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<StreamWriter>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn current_runtime() -> Option<tokio::runtime::Id> {
    tokio::runtime::Handle::try_current().ok().map(|h| h.id())
}

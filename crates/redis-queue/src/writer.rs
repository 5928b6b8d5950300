//! ingest-api's appends over plain RESP2: a request's MULTI, XADDs and EXEC written as one
//! buffer, and their replies skimmed (`+OK`, a `+QUEUED` per XADD, EXEC's array of IDs) rather
//! than parsed into `redis::Value`s.
//!
//! Through redis-rs, packing a command per event and parsing 202 replies into values cost
//! ingest-api about a fifth of its CPU an event. Each transaction holds a connection of a small
//! pool ([`Writers`]) for its round trip; connections are opened as concurrent requests need
//! them (at most [`MAX_WRITERS`] open in all), kept when they come back in step, and dropped
//! after an I/O error or a timeout, together with every connection that was idle then. A
//! connection is only ever used on the runtime that opened it: actix-web runs a runtime per
//! worker thread, and a socket is registered with its runtime's I/O driver (on another runtime
//! it waits on a driver that may be busy or, once that worker stops, gone). Like
//! [`crate::reader`], it speaks to one node over TCP; a Redis Cluster or a Unix socket keeps
//! redis-rs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Buf;
use event_model::queue::EntryEvent;
use redis::ConnectionInfo;
use tokio::sync::Semaphore;

use crate::QueueError;
use crate::resp::{self, Frame, protocol, reply_error};

/// Connections open at once (writing or idle), at most; a request past them waits for one
/// (within its timeout). Far above what a node needs to be kept busy, far below its
/// `maxclients`.
pub const MAX_WRITERS: usize = 64;

/// A buffer grown past this by one large request is given back after it.
const KEEP_BUFFER: usize = 256 * 1024;

/// A connection that appends event entries.
pub struct StreamWriter {
    conn: resp::Conn,
    /// The runtime it was opened on.
    runtime: Option<tokio::runtime::Id>,
    /// The pool's failure count when it was opened (see [`Writers`]).
    generation: u64,
    /// The transaction being sent, and one event's entry while it is encoded.
    out: Vec<u8>,
    scratch: Vec<u8>,
}

impl StreamWriter {
    /// Connects and authenticates as the URL says; `Ok(None)` for an address that is not
    /// plain TCP. `generation`: the pool's failure count now.
    async fn connect(
        info: &ConnectionInfo,
        generation: u64,
    ) -> Result<Option<StreamWriter>, QueueError> {
        Ok(resp::Conn::connect(info).await?.map(|conn| StreamWriter {
            conn,
            runtime: current_runtime(),
            generation,
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
        // One large request does not pin its buffers for the connection's life.
        if self.out.capacity() > KEEP_BUFFER {
            self.out = Vec::with_capacity(64 * 1024);
        }
        if self.scratch.capacity() > KEEP_BUFFER {
            self.scratch = Vec::with_capacity(1024);
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
        // refusal itself). A connection that failed reading it is out of step, refusal or not.
        let (data, frame) = match (self.conn.reply().await, refused) {
            (Err(e), _) if e.code().is_none() => return Err(e),
            (_, Some(refusal)) => return Err(refusal),
            (exec, None) => exec?,
        };
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
///
/// Every append that fails without an error reply (I/O error, timeout) counts a failure, and an
/// idle connection opened before the last failure is not used again: whatever broke one
/// connection (Redis restarted, the network path changed) has likely broken all of them, and
/// each would otherwise cost a request its write. An idle connection Redis closed is found
/// before use too.
pub struct Writers {
    info: ConnectionInfo,
    /// Least recently used first.
    idle: Mutex<Vec<StreamWriter>>,
    /// One per connection writing; with the idle ones they stay within [`MAX_WRITERS`].
    permits: Semaphore,
    failures: AtomicU64,
    timeout: Duration,
}

impl Writers {
    /// `None` for an address that is not plain TCP (use redis-rs for it).
    pub fn new(info: ConnectionInfo, timeout: Duration) -> Option<Writers> {
        matches!(info.addr(), redis::ConnectionAddr::Tcp(..)).then(|| Writers {
            info,
            idle: Mutex::default(),
            permits: Semaphore::new(MAX_WRITERS),
            failures: AtomicU64::new(0),
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
            let mut writer = match self.take_idle() {
                Some(w) => w,
                None => self.open().await?,
            };
            let result = writer.append(key, events).await;
            // In step after success or an error reply; dropped (closed) otherwise.
            match &result {
                Err(e) if e.code().is_none() => self.failed(),
                _ => self.idle().push(writer),
            }
            result
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                self.failed();
                Err(QueueError::Timeout(self.timeout))
            })
    }

    /// How many connections are open: writing (a permit each) or idle.
    pub fn open_connections(&self) -> usize {
        self.writing() + self.idle().len()
    }

    /// Connections writing (or being opened to write): one permit each.
    fn writing(&self) -> usize {
        MAX_WRITERS - self.permits.available_permits()
    }

    /// The idle connection last used on this runtime, if one is still good. Idle connections
    /// opened before the last failure, or that Redis closed, are dropped on the way.
    fn take_idle(&self) -> Option<StreamWriter> {
        let (here, now) = (current_runtime(), self.failures.load(Ordering::Relaxed));
        let mut idle = self.idle();
        idle.retain(|w| w.generation == now);
        while let Some(at) = idle.iter().rposition(|w| w.runtime == here) {
            let writer = idle.remove(at);
            if !writer.conn.is_closed() {
                return Some(writer);
            }
        }
        None
    }

    /// A new connection. With [`MAX_WRITERS`] open already (this append's permit counted),
    /// another runtime's least recently used idle connection is closed first.
    async fn open(&self) -> Result<StreamWriter, QueueError> {
        {
            let mut idle = self.idle();
            if self.writing() + idle.len() > MAX_WRITERS && !idle.is_empty() {
                idle.remove(0);
            }
        }
        let generation = self.failures.load(Ordering::Relaxed);
        StreamWriter::connect(&self.info, generation)
            .await?
            .ok_or_else(|| protocol("not a TCP address"))
    }

    fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<StreamWriter>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn current_runtime() -> Option<tokio::runtime::Id> {
    tokio::runtime::Handle::try_current().ok().map(|h| h.id())
}

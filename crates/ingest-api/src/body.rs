//! Reading a request body under the limits of `docs/contract.md`, while it streams in: the wire
//! limit on the bytes received, the decompressed limit on what gzip inflates to, a deadline for
//! the whole body, and a byte budget shared by all requests. No limit is ever exceeded in memory,
//! so a gzip bomb costs no more than the limit, and many bombs at once no more than the shared
//! budget.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// How the body is encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
}

#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub wire_bytes: usize,
    pub decompressed_bytes: usize,
    /// The whole body must arrive within this (a slow client cannot hold a worker).
    pub timeout: Duration,
    pub retry_after_secs: u32,
}

/// A body in memory, with the share of the all-requests budget it holds until dropped.
pub struct Body {
    pub bytes: Vec<u8>,
    pub budget: Budget,
}

/// Bytes held by all requests together: a semaphore with one permit per byte.
#[derive(Clone)]
pub struct SharedBudget(Arc<Semaphore>);

impl SharedBudget {
    pub fn new(bytes: usize) -> Self {
        SharedBudget(Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))))
    }

    /// Bytes not held by any request right now.
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }
}

/// One request's share of the shared budget; grows with its buffer and with what the request
/// builds from it (see [`Budget::charge`]), released on drop.
pub struct Budget {
    shared: SharedBudget,
    held: Option<OwnedSemaphorePermit>,
}

impl Budget {
    /// Adds `bytes` to the share, for memory the request is about to allocate (its queue
    /// entries, the Redis pipeline); 503 server_busy when the budget has no room.
    pub fn charge(&mut self, bytes: usize, retry_after_secs: u32) -> Result<(), ApiError> {
        let have = self.held.as_ref().map_or(0, |p| p.num_permits());
        if self.grow_to(have.saturating_add(bytes)) {
            Ok(())
        } else {
            Err(ApiError::ServerBusy {
                retry_after: retry_after_secs,
            })
        }
    }

    /// Grows the share to `total` bytes; never waits (waiting could deadlock two big requests
    /// that each hold half), so a full budget fails this request at once.
    fn grow_to(&mut self, total: usize) -> bool {
        let have = self.held.as_ref().map_or(0, |p| p.num_permits());
        if total <= have {
            return true;
        }
        let Ok(more) = u32::try_from(total - have) else {
            return false;
        };
        match self.shared.0.clone().try_acquire_many_owned(more) {
            Ok(p) => {
                match self.held.as_mut() {
                    Some(held) => held.merge(p),
                    None => self.held = Some(p),
                }
                true
            }
            Err(_) => false,
        }
    }
}

/// Reads the whole body, decompressing it if needed.
pub async fn read_body(
    payload: web::Payload,
    encoding: Encoding,
    limits: BodyLimits,
    shared: &SharedBudget,
) -> Result<Body, ApiError> {
    match tokio::time::timeout(limits.timeout, read(payload, encoding, limits, shared)).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::RequestTimeout(format!(
            "the request body did not arrive within {} ms",
            limits.timeout.as_millis()
        ))),
    }
}

async fn read(
    mut payload: web::Payload,
    encoding: Encoding,
    limits: BodyLimits,
    shared: &SharedBudget,
) -> Result<Body, ApiError> {
    let cap = match encoding {
        Encoding::Identity => limits.wire_bytes,
        Encoding::Gzip => limits.decompressed_bytes,
    };
    let buf = CappedBuf {
        buf: Vec::new(),
        cap,
        budget: Budget {
            shared: shared.clone(),
            held: None,
        },
        outcome: Outcome::Fine,
    };
    let mut received = 0usize;
    let mut sink = match encoding {
        Encoding::Gzip => Sink::Gzip(Box::new(flate2::write::MultiGzDecoder::new(buf))),
        Encoding::Identity => Sink::Plain(buf),
    };
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::InvalidJson(format!("the body could not be read: {e}")))?;
        received += chunk.len();
        if received > limits.wire_bytes {
            return Err(too_large_on_wire(limits));
        }
        let written = match &mut sink {
            Sink::Plain(b) => b.write_all(&chunk),
            Sink::Gzip(d) => d.write_all(&chunk),
        };
        if let Err(e) = written {
            return Err(sink.error(e, limits));
        }
    }
    let buf = match sink {
        Sink::Plain(b) => b,
        Sink::Gzip(mut d) => {
            if let Err(e) = d.try_finish() {
                return Err(Sink::Gzip(d).error(e, limits));
            }
            match d.finish() {
                Ok(b) => b,
                Err(e) => {
                    return Err(ApiError::InvalidGzip(format!(
                        "the body is not valid gzip: {e}"
                    )));
                }
            }
        }
    };
    Ok(Body {
        bytes: buf.buf,
        budget: buf.budget,
    })
}

enum Sink {
    Plain(CappedBuf),
    Gzip(Box<flate2::write::MultiGzDecoder<CappedBuf>>),
}

impl Sink {
    fn error(&self, e: std::io::Error, limits: BodyLimits) -> ApiError {
        let outcome = match self {
            Sink::Plain(b) => b.outcome,
            Sink::Gzip(d) => d.get_ref().outcome,
        };
        match (outcome, self) {
            (Outcome::TooLarge, Sink::Gzip(_)) => ApiError::PayloadTooLarge(format!(
                "the request body inflates to more than {} bytes",
                limits.decompressed_bytes
            )),
            (Outcome::TooLarge, Sink::Plain(_)) => too_large_on_wire(limits),
            (Outcome::Busy, _) => ApiError::ServerBusy {
                retry_after: limits.retry_after_secs,
            },
            (Outcome::Fine, _) => ApiError::InvalidGzip(format!("the body is not valid gzip: {e}")),
        }
    }
}

pub fn too_large_on_wire(limits: BodyLimits) -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "the request body is larger than {} bytes",
        limits.wire_bytes
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Fine,
    TooLarge,
    Busy,
}

/// A buffer that refuses to grow past its cap or past the shared budget, so a decoder stops as
/// soon as a bomb shows. Its capacity, not just its length, is what it holds of the budget.
struct CappedBuf {
    buf: Vec<u8>,
    cap: usize,
    budget: Budget,
    outcome: Outcome,
}

impl Write for CappedBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let want = self.buf.len() + data.len();
        if want > self.cap {
            self.outcome = Outcome::TooLarge;
            return Err(std::io::Error::other("size limit exceeded"));
        }
        if want > self.buf.capacity() {
            let new_cap = want
                .max(self.buf.capacity() * 2)
                .max(8 * 1024)
                .min(self.cap);
            if !self.budget.grow_to(new_cap) {
                self.outcome = Outcome::Busy;
                return Err(std::io::Error::other("shared body budget exhausted"));
            }
            self.buf.reserve_exact(new_cap - self.buf.len());
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

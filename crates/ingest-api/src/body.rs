//! Reading a request body under the contract's limits, while it streams in: the wire limit on
//! the bytes received and the decompressed limit on what gzip inflates to. Neither is ever
//! exceeded in memory, so a gzip bomb costs no more than the limit.

use std::io::Write;

use actix_web::web;
use futures_util::StreamExt;

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
}

/// Reads the whole body, decompressing it if needed.
pub async fn read_body(
    mut payload: web::Payload,
    encoding: Encoding,
    limits: BodyLimits,
) -> Result<Vec<u8>, ApiError> {
    let mut received = 0usize;
    let mut gzip = match encoding {
        Encoding::Gzip => Some(flate2::write::MultiGzDecoder::new(CappedBuf::new(
            limits.decompressed_bytes,
        ))),
        Encoding::Identity => None,
    };
    let mut plain = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::InvalidJson(format!("the body could not be read: {e}")))?;
        received += chunk.len();
        if received > limits.wire_bytes {
            return Err(too_large_on_wire(limits));
        }
        match gzip.as_mut() {
            Some(decoder) => {
                if let Err(e) = decoder.write_all(&chunk) {
                    return Err(gzip_error(decoder.get_ref(), e, limits));
                }
            }
            None => plain.extend_from_slice(&chunk),
        }
    }
    match gzip {
        None => Ok(plain),
        Some(mut decoder) => {
            if let Err(e) = decoder.try_finish() {
                return Err(gzip_error(decoder.get_ref(), e, limits));
            }
            let buf = decoder
                .finish()
                .map_err(|e| gzip_error(&CappedBuf::new(0), e, limits))?;
            Ok(buf.buf)
        }
    }
}

pub fn too_large_on_wire(limits: BodyLimits) -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "the request body is larger than {} bytes",
        limits.wire_bytes
    ))
}

fn gzip_error(buf: &CappedBuf, e: std::io::Error, limits: BodyLimits) -> ApiError {
    if buf.exceeded {
        ApiError::PayloadTooLarge(format!(
            "the request body inflates to more than {} bytes",
            limits.decompressed_bytes
        ))
    } else {
        ApiError::InvalidGzip(format!("the body is not valid gzip: {e}"))
    }
}

/// A `Vec` that refuses to grow past its cap, so the decoder stops as soon as a bomb shows.
struct CappedBuf {
    buf: Vec<u8>,
    cap: usize,
    exceeded: bool,
}

impl CappedBuf {
    fn new(cap: usize) -> Self {
        CappedBuf {
            buf: Vec::new(),
            cap,
            exceeded: false,
        }
    }
}

impl Write for CappedBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.cap {
            self.exceeded = true;
            return Err(std::io::Error::other("decompressed size limit exceeded"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

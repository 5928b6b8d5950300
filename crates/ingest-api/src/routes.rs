//! The HTTP handlers. The ingest handler runs the checks of `docs/contract.md` in its order:
//! 401 (before any of the body is read), 415, 413, 400; then 503 `queue_full` (the queue is too
//! long or Redis too full), 429 `rate_limited` (the source is past its limit), and 503
//! `queue_unavailable` if the write fails. `server_busy` (503) can come while the body is read
//! and again before the accepted events are built.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use event_model::queue::EntryEvent;
use event_model::{Batch, BatchClock, Limits, ValidEvent, parse_batch, validate_event_at};
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::AppState;
use crate::body::{Body, BodyLimits, Encoding, read_body, too_large_on_wire};
use crate::error::{ApiError, Rejected};
use crate::ratelimit::Admission;
use crate::telemetry;

/// Bytes an accepted event holds beyond its JSON text: its source, ids, timestamps, the
/// entry's field names and the Redis protocol framing.
const PER_EVENT_OVERHEAD: usize = 256;

#[derive(Serialize)]
struct Accepted {
    accepted: usize,
    rejected: Vec<Rejected>,
}

/// `POST /v1/events` and `POST /test`: the checks in the order of `docs/contract.md`.
pub async fn ingest(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let source = authenticate(&req, &state)?;
    let encoding = check_headers(&req, state.body_limits)?;
    let Body { bytes, mut budget } =
        read_body(payload, encoding, state.body_limits, &state.body_budget).await?;
    let now = OffsetDateTime::now_utc();
    let batch = parse_batch(&bytes, state.max_events).map_err(batch_error)?;
    // The device's clock skew, once for the whole batch.
    let clock = BatchClock::new(batch.sent_at, now, state.clock_skew_threshold);
    let (valid, rejected) = validate_all(&batch, &state, &clock);
    // What the accepted events become before the write is done: their owned copies, the
    // encoded entries and the Redis pipeline, each at most the event's text plus its fixed
    // fields. Charged before any of it is built.
    let building: usize = valid
        .iter()
        .map(|(len, _)| 3 * (len + PER_EVENT_OVERHEAD))
        .sum();
    budget.charge(building, state.retry_after_secs)?;
    let accepted: Vec<EntryEvent<'_>> = valid
        .iter()
        .map(|(_, e)| e.entry(&source, batch.sent_at, clock.received_at, Uuid::now_v7))
        .collect();
    if !rejected.is_empty() {
        telemetry::source_events(&source, "rejected", rejected.len());
    }
    if accepted.is_empty() {
        return Err(ApiError::InvalidEvents(rejected));
    }
    admit(&state, &source, accepted.len()).await?;
    enqueue(&state, &accepted).await?;
    telemetry::accepted(accepted.len());
    if clock.correction.is_some() {
        telemetry::clock_corrected(&source);
    }
    telemetry::source_events(&source, "accepted", accepted.len());
    Ok(HttpResponse::Ok().json(Accepted {
        accepted: accepted.len(),
        rejected,
    }))
}

/// 401 before any of the body is read; the token's source otherwise.
fn authenticate(req: &HttpRequest, state: &AppState) -> Result<String, ApiError> {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    state
        .credentials
        .current()
        .tokens
        .authenticate(header)
        .map(str::to_string)
        .ok_or(ApiError::Unauthorized)
}

/// 415 for the content type or encoding, 413 from `Content-Length` before reading.
fn check_headers(req: &HttpRequest, limits: BodyLimits) -> Result<Encoding, ApiError> {
    check_content_type(req)?;
    let encoding = content_encoding(req)?;
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limits.wire_bytes as u64
    {
        return Err(too_large_on_wire(limits));
    }
    Ok(encoding)
}

fn batch_error(e: event_model::BatchError) -> ApiError {
    use event_model::BatchError as B;
    match e {
        B::InvalidJson(m) => ApiError::InvalidJson(m),
        B::InvalidBatch(m) => ApiError::InvalidBatch(m),
        B::Empty => ApiError::EmptyBatch,
        e @ B::TooManyEvents { .. } => ApiError::PayloadTooLarge(e.to_string()),
    }
}

/// Each event checked on its own: the valid ones (with their text's length), and the
/// rejected ones by index.
fn validate_all<'b>(
    batch: &Batch<'b>,
    state: &AppState,
    clock: &BatchClock,
) -> (Vec<(usize, ValidEvent<'b>)>, Vec<Rejected>) {
    let mut valid = Vec::with_capacity(batch.events.len());
    let mut rejected = Vec::new();
    let limits = Limits {
        max_age: state.queue.max_age(),
        ..state.limits
    };
    for (index, raw) in batch.events.iter().enumerate() {
        match validate_event_at(raw, &limits, clock) {
            Ok(e) => valid.push((raw.get().len(), e)),
            Err(err) => {
                telemetry::rejected(&err);
                rejected.push(Rejected {
                    index,
                    error: err.to_string(),
                })
            }
        }
    }
    (valid, rejected)
}

/// 503 queue_full when the queue is too long or Redis too full; 429 past the source's rate
/// limit (checked in Redis; fail open when Redis does not answer: the write needs it anyway).
async fn admit(state: &AppState, source: &str, events: usize) -> Result<(), ApiError> {
    if state.queue.cached_length() > state.max_queue_len || state.queue.is_full() {
        return Err(ApiError::QueueFull {
            retry_after: state.retry_after_secs,
        });
    }
    match state
        .credentials
        .current()
        .rate_limiter
        .admit(state.queue.redis(), source, events)
        .await
    {
        Ok(Admission::Admitted) => Ok(()),
        Ok(Admission::Limited { retry_after_secs }) => {
            telemetry::source_events(source, "rate_limited", events);
            Err(ApiError::RateLimited {
                retry_after: retry_after_secs,
            })
        }
        Err(e) => {
            log::warn!("rate limit of {source:?} not checked: {e}");
            Ok(())
        }
    }
}

/// One atomic write of every accepted event; 503 when no shard takes it.
async fn enqueue(state: &AppState, accepted: &[EntryEvent<'_>]) -> Result<(), ApiError> {
    let Err(e) = state.queue.push(accepted).await else {
        return Ok(());
    };
    if let crate::queue::QueueError::Full = e {
        return Err(ApiError::QueueFull {
            retry_after: state.retry_after_secs,
        });
    }
    if e.is_fatal() {
        log::error!("{e}");
    }
    telemetry::redis_error();
    log::warn!("queueing {} events failed: {e}", accepted.len());
    Err(ApiError::QueueUnavailable {
        retry_after: state.retry_after_secs,
    })
}

/// `application/json`, parameters such as `charset=utf-8` allowed.
fn check_content_type(req: &HttpRequest) -> Result<(), ApiError> {
    let value = req.headers().get(header::CONTENT_TYPE).ok_or_else(|| {
        ApiError::UnsupportedMediaType("Content-Type must be application/json".into())
    })?;
    let mime = value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .unwrap_or_default();
    if mime.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(
            "Content-Type must be application/json".into(),
        ))
    }
}

/// Absent, `identity` or `gzip`; anything else (other codings, a list, several headers) is 415.
fn content_encoding(req: &HttpRequest) -> Result<Encoding, ApiError> {
    let mut values = req.headers().get_all(header::CONTENT_ENCODING);
    let unsupported = || {
        ApiError::UnsupportedMediaType("Content-Encoding must be absent, identity or gzip".into())
    };
    let Some(first) = values.next() else {
        return Ok(Encoding::Identity);
    };
    if values.next().is_some() {
        return Err(unsupported());
    }
    let v = first.to_str().map_err(|_| unsupported())?.trim();
    if v.eq_ignore_ascii_case("gzip") {
        Ok(Encoding::Gzip)
    } else if v.eq_ignore_ascii_case("identity") || v.is_empty() {
        Ok(Encoding::Identity)
    } else {
        Err(unsupported())
    }
}

/// `GET /readyz`: 503 while draining (after SIGTERM), else 200 when at least one shard's node
/// answers within the timeout. (The shard count is checked by the background task, which stops
/// the process on a mismatch, not here.)
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.shutdown.is_triggered() {
        return HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "status": "draining",
            "reason": "shutting down: the listener closes after --drain-delay-secs",
        }));
    }
    match state.queue.ping().await {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({"status": "ready"})),
        Err(e) => HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "status": "unavailable",
            "reason": e.to_string(),
        })),
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    service_kit::metrics::render(state.metrics.as_ref())
}

/// `GET /openapi.json`: the API description, built from `docs/openapi.yaml`.
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(include_str!(concat!(env!("OUT_DIR"), "/openapi.json")))
}

/// A known path with another method.
pub async fn method_not_allowed(allow: &'static str) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed(allow))
}

/// Any other path.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

//! The HTTP handlers. The ingest handler runs the checks of `docs/contract.md` in its order:
//! 401 (before any of the body is read), 415, 413, 400; then 503 `queue_full` (the queue is too
//! long or Redis too full), 429 `rate_limited` (the source is past its limit), and 503
//! `queue_unavailable` if the write fails. `server_busy` (503) can come while the body is read
//! and again before the accepted events are built.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use event_model::{QueuedEvent, parse_batch, validate_event};
use serde::Serialize;
use serde_json::value::RawValue;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::AppState;
use crate::body::{Body, Encoding, read_body, too_large_on_wire};
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

/// `POST /v1/events` and `POST /test`.
pub async fn ingest(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let source = state
        .tokens
        .authenticate(
            req.headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        )
        .ok_or(ApiError::Unauthorized)?
        .to_string();
    check_content_type(&req)?;
    let encoding = content_encoding(&req)?;
    let limits = state.body_limits;
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limits.wire_bytes as u64
    {
        return Err(too_large_on_wire(limits));
    }
    let Body { bytes, mut budget } =
        read_body(payload, encoding, limits, &state.body_budget).await?;
    let received_at = OffsetDateTime::now_utc();
    let batch = parse_batch(&bytes, state.max_events).map_err(|e| match e {
        event_model::BatchError::InvalidJson(m) => ApiError::InvalidJson(m),
        event_model::BatchError::InvalidBatch(m) => ApiError::InvalidBatch(m),
        event_model::BatchError::Empty => ApiError::EmptyBatch,
        e @ event_model::BatchError::TooManyEvents { .. } => {
            ApiError::PayloadTooLarge(e.to_string())
        }
    })?;

    let mut valid = Vec::with_capacity(batch.events.len());
    let mut rejected = Vec::new();
    for (index, raw) in batch.events.iter().enumerate() {
        match validate_event(raw, &state.limits, received_at) {
            Ok(e) => valid.push((raw.get().len(), e)),
            Err(err) => {
                telemetry::rejected(&err.field);
                rejected.push(Rejected {
                    index,
                    error: err.to_string(),
                })
            }
        }
    }
    // What the accepted events become before the write is done: their owned copies, the
    // encoded entries and the Redis pipeline, each at most the event's text plus its fixed
    // fields. Charged before any of it is built.
    let building: usize = valid
        .iter()
        .map(|(len, _)| 3 * (len + PER_EVENT_OVERHEAD))
        .sum();
    budget.charge(building, state.retry_after_secs)?;
    let accepted: Vec<QueuedEvent> = valid
        .into_iter()
        .map(|(_, e)| QueuedEvent {
            time: e.time,
            event_id: e.event_id.unwrap_or_else(Uuid::now_v7),
            name: e.name,
            source: source.clone(),
            device_id: e.device_id,
            session_id: e.session_id,
            user_id: e.user_id,
            properties: e.properties.map_or_else(empty_object, RawValue::to_owned),
            sent_at: batch.sent_at,
            received_at,
        })
        .collect();
    if !rejected.is_empty() {
        telemetry::source_events(&source, "rejected", rejected.len());
    }
    if accepted.is_empty() {
        return Err(ApiError::InvalidEvents(rejected));
    }
    if state.queue.cached_length() > state.max_queue_len || state.queue.is_full() {
        return Err(ApiError::QueueFull {
            retry_after: state.retry_after_secs,
        });
    }
    match state
        .rate_limiter
        .admit(state.queue.redis(), &source, accepted.len())
        .await
    {
        Ok(Admission::Admitted) => {}
        Ok(Admission::Limited { retry_after_secs }) => {
            telemetry::source_events(&source, "rate_limited", accepted.len());
            return Err(ApiError::RateLimited {
                retry_after: retry_after_secs,
            });
        }
        // Fail open: the write below needs Redis too, and says so if it is down.
        Err(e) => log::warn!("rate limit of {source:?} not checked: {e}"),
    }
    if let Err(e) = state.queue.push(&accepted).await {
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
        return Err(ApiError::QueueUnavailable {
            retry_after: state.retry_after_secs,
        });
    }
    telemetry::accepted(accepted.len());
    telemetry::source_events(&source, "accepted", accepted.len());
    Ok(HttpResponse::Ok().json(Accepted {
        accepted: accepted.len(),
        rejected,
    }))
}

fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".to_string()).expect("{} is JSON")
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

/// `GET /readyz`: the shard count is checked and at least one shard's node answers within the
/// timeout.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
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

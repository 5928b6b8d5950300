//! The one error type of ingest-api and its mapping to HTTP: every non-200 answer is built here.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// One rejected event of a batch.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    pub index: usize,
    pub error: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidGzip(String),
    #[error("{0}")]
    InvalidBatch(String),
    #[error("the batch has no events")]
    EmptyBatch,
    #[error("every event of the batch was rejected")]
    InvalidEvents(Vec<Rejected>),
    #[error("the queue did not answer; retry the whole batch later")]
    QueueUnavailable { retry_after: u32 },
    #[error("the queue is full; retry the whole batch later")]
    QueueFull { retry_after: u32 },
    #[error(
        "this source sends more events than its rate limit allows; retry the whole batch later"
    )]
    RateLimited { retry_after: u32 },
    #[error("the server is holding as many request bytes as it allows; retry later")]
    ServerBusy { retry_after: u32 },
    #[error("{0}")]
    RequestTimeout(String),
    #[error("no such endpoint")]
    NotFound,
    #[error("this endpoint only takes {0}")]
    MethodNotAllowed(&'static str),
}

impl ApiError {
    /// The stable snake_case code of `docs/contract.md`.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::InvalidGzip(_) => "invalid_gzip",
            ApiError::InvalidBatch(_) => "invalid_batch",
            ApiError::EmptyBatch => "empty_batch",
            ApiError::InvalidEvents(_) => "invalid_events",
            ApiError::QueueUnavailable { .. } => "queue_unavailable",
            ApiError::QueueFull { .. } => "queue_full",
            ApiError::ServerBusy { .. } => "server_busy",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    rejected: Option<&'a [Rejected]>,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::InvalidJson(_)
            | ApiError::InvalidGzip(_)
            | ApiError::InvalidBatch(_)
            | ApiError::EmptyBatch
            | ApiError::InvalidEvents(_) => StatusCode::BAD_REQUEST,
            ApiError::QueueUnavailable { .. }
            | ApiError::QueueFull { .. }
            | ApiError::ServerBusy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unauthorized => {
                res.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
            }
            ApiError::QueueUnavailable { retry_after }
            | ApiError::QueueFull { retry_after }
            | ApiError::ServerBusy { retry_after }
            | ApiError::RateLimited { retry_after } => {
                res.insert_header((header::RETRY_AFTER, retry_after.to_string()));
            }
            ApiError::MethodNotAllowed(allow) => {
                res.insert_header((header::ALLOW, *allow));
            }
            _ => {}
        }
        let rejected = match self {
            ApiError::InvalidEvents(r) => Some(r.as_slice()),
            _ => None,
        };
        res.json(ErrorBody {
            error: self.code(),
            message: self.to_string(),
            rejected,
        })
    }
}

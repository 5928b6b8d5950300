//! The process-wide Prometheus recorder and the two handlers every service serves.

use actix_web::HttpResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Histogram buckets for HTTP requests, in seconds: 0.5 ms to 5 s.
pub const BUCKETS_500US_5S: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Histogram buckets for database writes, in seconds: 1 ms to 10 s.
pub const BUCKETS_1MS_10S: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the recorder with `buckets` for every `*_duration_seconds` histogram, then runs
/// `describe` (help texts, series at 0). `None` if a recorder is installed already (a second
/// service in the same process shares the first one's metrics).
pub fn install(buckets: &[f64], describe: impl FnOnce()) -> Option<PrometheusHandle> {
    let builder = match PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), buckets)
    {
        Ok(b) => b,
        Err(e) => {
            log::warn!("metrics recorder not installed: {e}");
            return None;
        }
    };
    match builder.install_recorder() {
        Ok(handle) => {
            describe();
            Some(handle)
        }
        Err(e) => {
            log::warn!("metrics recorder not installed: {e}");
            None
        }
    }
}

/// `GET /metrics`: Prometheus text format; 404 without a recorder of our own.
pub fn render(handle: Option<&PrometheusHandle>) -> HttpResponse {
    match handle {
        Some(h) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4")
            .body(h.render()),
        None => HttpResponse::NotFound().finish(),
    }
}

/// `GET /healthz`: the process serves requests.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

//! The process-wide Prometheus recorder and the two handlers every service serves.

use actix_web::HttpResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

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

//! The flusher's Prometheus metrics, its probe/metrics HTTP endpoint, and logging.
//! Label values come from fixed sets only (a SQLSTATE class is two characters).
//!
//! Readiness tells the truth: `/readyz` answers 503 while a Redis shard cannot be reached at all,
//! PostgreSQL does not answer, or the writes keep failing ([`WriteHealth`]: a worker backing off
//! after a failed write, until its next write commits). The queue gauges are never left frozen:
//! when no shard can be read they are NaN and `eventtracker_queue_state_known` is 0.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use deadpool_postgres::Pool;
use metrics_exporter_prometheus::PrometheusHandle;

/// Installs the process-wide recorder (batch durations from 1 ms to 10 s); `None` if one is
/// installed already.
pub fn install_metrics() -> Option<PrometheusHandle> {
    service_kit::metrics::install(&service_kit::metrics::BUCKETS_1MS_10S, describe)
}

fn describe() {
    use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge};
    describe_counter!(
        "eventtracker_flusher_events_written_total",
        "Rows committed to PostgreSQL"
    );
    describe_counter!(
        "eventtracker_flusher_batches_written_total",
        "Batches committed, by path (copy, dedup, or guarded: holding events corrected for the device's clock)"
    );
    describe_histogram!(
        "eventtracker_flusher_batch_duration_seconds",
        "Time to write and commit one batch"
    );
    describe_counter!(
        "eventtracker_flusher_dead_lettered_total",
        "Entries moved to the dead-letter stream"
    );
    describe_counter!(
        "eventtracker_flusher_claimed_total",
        "Entries claimed from other (crashed or stuck) consumers"
    );
    describe_counter!(
        "eventtracker_flusher_postgres_errors_total",
        "Failed PostgreSQL writes not caused by the data, by class: the SQLSTATE's first two characters (53: insufficient resources, e.g. a full disk), or connection, timeout or other when PostgreSQL sent none"
    );
    describe_counter!(
        "eventtracker_flusher_redis_errors_total",
        "Failed or timed-out Redis calls"
    );
    describe_gauge!(
        "eventtracker_flusher_backoff_active",
        "1 while this flusher is backing off"
    );
    describe_counter!("eventtracker_flusher_backoffs_total", "Backoff waits");
    redis_queue::QueueState::describe(true);
    // Every series exists from the start: dashboards and alerts see zeros, not gaps.
    for c in [
        "eventtracker_flusher_events_written_total",
        "eventtracker_flusher_dead_lettered_total",
        "eventtracker_flusher_claimed_total",
        "eventtracker_flusher_redis_errors_total",
        "eventtracker_flusher_backoffs_total",
    ] {
        counter!(c).absolute(0);
    }
    for class in POSTGRES_ERROR_CLASSES {
        counter!("eventtracker_flusher_postgres_errors_total", "class" => class).absolute(0);
    }
    for path in ["copy", "dedup", "guarded"] {
        counter!("eventtracker_flusher_batches_written_total", "path" => path).absolute(0);
    }
    gauge!("eventtracker_flusher_backoff_active").set(0.0);
}

pub fn batch_written(events: usize, path: &'static str, took: Duration) {
    metrics::counter!("eventtracker_flusher_events_written_total").increment(events as u64);
    metrics::counter!("eventtracker_flusher_batches_written_total", "path" => path).increment(1);
    metrics::histogram!("eventtracker_flusher_batch_duration_seconds").record(took.as_secs_f64());
}

pub fn dead_lettered(n: usize) {
    metrics::counter!("eventtracker_flusher_dead_lettered_total").increment(n as u64);
}

pub fn claimed(n: usize) {
    metrics::counter!("eventtracker_flusher_claimed_total").increment(n as u64);
}

/// The classes exported at 0 from the start (others appear at their first error): no
/// connection, a timeout, 08 connection exception, 40 transaction rollback, 53 insufficient
/// resources (disk full, out of memory, too many connections), 57 operator intervention.
pub const POSTGRES_ERROR_CLASSES: [&str; 7] =
    ["connection", "timeout", "other", "08", "40", "53", "57"];

/// A failed write, by class (see [`crate::error::sqlstate_class`]).
pub fn postgres_error(class: String) {
    metrics::counter!("eventtracker_flusher_postgres_errors_total", "class" => class).increment(1);
}

pub fn redis_error() {
    metrics::counter!("eventtracker_flusher_redis_errors_total").increment(1);
}

pub fn backoff(active: bool) {
    metrics::gauge!("eventtracker_flusher_backoff_active").set(if active { 1.0 } else { 0.0 });
    if active {
        metrics::counter!("eventtracker_flusher_backoffs_total").increment(1);
    }
}

/// Whether this flusher's writes are failing, worker by worker: set when a worker backs off
/// after a failed write, cleared when its next write commits (or its batch is settled
/// otherwise). `/readyz` answers 503 while any worker's writes fail.
#[derive(Debug, Default)]
pub struct WriteHealth {
    /// Per worker: since when and why its writes fail.
    failing: Mutex<Vec<Option<(Instant, String)>>>,
}

impl WriteHealth {
    pub fn failing(&self, worker: usize, why: &str) {
        if let Ok(mut slots) = self.failing.lock() {
            if slots.len() <= worker {
                slots.resize(worker + 1, None);
            }
            let since = slots[worker]
                .as_ref()
                .map_or_else(Instant::now, |(t, _)| *t);
            slots[worker] = Some((since, why.to_string()));
        }
    }

    pub fn ok(&self, worker: usize) {
        if let Ok(mut slots) = self.failing.lock()
            && let Some(slot) = slots.get_mut(worker)
        {
            *slot = None;
        }
    }

    /// Why the writes fail, if they do: the longest-failing worker's last error.
    pub fn problem(&self) -> Option<String> {
        let slots = self.failing.lock().ok()?;
        let (since, why) = slots.iter().flatten().min_by_key(|(t, _)| *t)?;
        Some(format!(
            "writes failing for {} s: {why}",
            since.elapsed().as_secs()
        ))
    }
}

/// Probes and metrics share one small server on `--metrics-bind`.
pub struct Probes {
    pub redis: redis_queue::Shared,
    pub layout: redis_queue::Layout,
    pub pool: Pool,
    pub timeout: Duration,
    pub metrics: Option<PrometheusHandle>,
    pub writes: std::sync::Arc<WriteHealth>,
}

impl Probes {
    /// Ready while the node of at least one shard answers.
    async fn redis_ok(&self) -> Result<(), String> {
        self.layout
            .any_shard_answers(&self.redis)
            .await
            .map_err(|e| format!("redis: {e}"))
    }

    async fn postgres_ok(&self) -> Result<(), String> {
        let check = async {
            let client = self.pool.get().await.map_err(|e| e.to_string())?;
            client
                .simple_query("SELECT 1")
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(self.timeout, check).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("postgres: {e}")),
            Err(_) => Err("postgres: no answer in time".into()),
        }
    }
}

async fn readyz(probes: web::Data<Probes>) -> HttpResponse {
    let (r, p) = tokio::join!(probes.redis_ok(), probes.postgres_ok());
    let problems: Vec<String> = [r.err(), p.err(), probes.writes.problem()]
        .into_iter()
        .flatten()
        .collect();
    if problems.is_empty() {
        HttpResponse::Ok().json(serde_json::json!({"status": "ready"}))
    } else {
        HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"status": "unavailable", "reasons": problems}))
    }
}

async fn render(probes: web::Data<Probes>) -> HttpResponse {
    service_kit::metrics::render(probes.metrics.as_ref())
}

/// Starts the probe/metrics server; returns its handle so shutdown can stop it.
pub fn serve(
    listener: std::net::TcpListener,
    probes: Probes,
) -> std::io::Result<actix_web::dev::Server> {
    let probes = web::Data::new(probes);
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(probes.clone())
            .route("/healthz", web::get().to(service_kit::metrics::healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(render))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_fail_until_every_failing_worker_commits_again() {
        let health = WriteHealth::default();
        assert_eq!(health.problem(), None);
        health.failing(1, "SQLSTATE 53100: disk full");
        health.failing(0, "postgres: the COPY took longer than 300 ms");
        health.failing(1, "SQLSTATE 53100: still full");
        let problem = health.problem().unwrap();
        assert!(problem.contains("53100: still full"), "{problem}");
        health.ok(1);
        assert!(health.problem().unwrap().contains("300 ms"));
        health.ok(0);
        health.ok(7);
        assert_eq!(health.problem(), None);
    }
}

//! Prometheus metrics and logging. Label values come from fixed sets (route patterns, status
//! codes, field names): never raw paths, tokens or event names.

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

/// Installs the process-wide recorder (request durations from 0.5 ms to 5 s); `None` if one is
/// installed already (a second `run` in the same process shares the first one's metrics).
pub fn install_metrics() -> Option<PrometheusHandle> {
    service_kit::metrics::install(&service_kit::metrics::BUCKETS_500US_5S, describe)
}

fn describe() {
    use metrics::{describe_counter, describe_histogram};
    describe_counter!(
        "eventtracker_ingest_requests_total",
        "HTTP requests by route pattern and status"
    );
    describe_histogram!(
        "eventtracker_ingest_request_duration_seconds",
        "HTTP request duration by route pattern"
    );
    describe_counter!(
        "eventtracker_ingest_events_accepted_total",
        "Events accepted and queued"
    );
    describe_counter!(
        "eventtracker_ingest_events_rejected_total",
        "Events rejected, by the field that was wrong (reason), or `retention`: older than what the flushers' retention keeps"
    );
    describe_counter!(
        "eventtracker_ingest_redis_errors_total",
        "Redis calls that failed or timed out"
    );
    describe_counter!(
        "eventtracker_ingest_shard_events_total",
        "Events written, by queue shard"
    );
    describe_counter!(
        "eventtracker_ingest_shard_failovers_total",
        "Writes that a shard's node did not take, retried on another shard"
    );
    redis_queue::QueueState::describe(false);
    metrics::gauge!(redis_queue::MEMORY_RATIO_GAUGE).set(0.0);
    describe_counter!(
        "eventtracker_ingest_reloads_total",
        "Rereads of the tokens file (what=tokens) or the TLS certificate and key (what=tls) on SIGHUP or a file change, by result (error: the set in force was kept)"
    );
    // Make every series exist from the start, so dashboards and alerts see zeros, not gaps.
    for what in ["tokens", "tls"] {
        for result in ["ok", "error"] {
            metrics::counter!("eventtracker_ingest_reloads_total", "what" => what, "result" => result)
                .absolute(0);
        }
    }
    metrics::counter!("eventtracker_ingest_events_accepted_total").absolute(0);
    metrics::counter!("eventtracker_ingest_redis_errors_total").absolute(0);
}

pub fn request(route: &str, status: u16, took: Duration) {
    let route = route.to_string();
    metrics::counter!("eventtracker_ingest_requests_total", "route" => route.clone(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!("eventtracker_ingest_request_duration_seconds", "route" => route)
        .record(took.as_secs_f64());
}

/// One reread of the tokens (`what` = `tokens`) or the certificate (`tls`).
pub fn reload(what: &'static str, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    metrics::counter!("eventtracker_ingest_reloads_total", "what" => what, "result" => result)
        .increment(1);
}

/// Events of a configured source by outcome (`accepted`, `rejected`, `rate_limited`); the
/// labels are the sources of the tokens, a fixed set.
pub fn source_events(source: &str, outcome: &'static str, n: usize) {
    metrics::counter!("eventtracker_ingest_source_events_total", "source" => source.to_string(), "outcome" => outcome)
        .increment(n as u64);
}

/// Exports every source's counters at 0 from the start.
pub fn init_source_metrics(sources: &[&str]) {
    metrics::describe_counter!(
        "eventtracker_ingest_source_events_total",
        "Events per source (one per API token's source) by outcome: accepted, rejected, rate_limited"
    );
    metrics::describe_counter!(
        "eventtracker_ingest_clock_corrected_batches_total",
        "Batches per source whose events were stored at a time corrected for the device's clock skew"
    );
    for source in sources {
        for outcome in ["accepted", "rejected", "rate_limited"] {
            metrics::counter!("eventtracker_ingest_source_events_total", "source" => source.to_string(), "outcome" => outcome)
                .absolute(0);
        }
        metrics::counter!("eventtracker_ingest_clock_corrected_batches_total", "source" => source.to_string())
            .absolute(0);
    }
}

/// A batch of `source` whose events were corrected for the device's clock skew
/// (`--clock-skew-threshold-secs`).
pub fn clock_corrected(source: &str) {
    metrics::counter!("eventtracker_ingest_clock_corrected_batches_total", "source" => source.to_string())
        .increment(1);
}

pub fn accepted(n: usize) {
    metrics::counter!("eventtracker_ingest_events_accepted_total").increment(n as u64);
}

/// Counted by reason: `retention` for an event older than what retention keeps, else the field
/// it was rejected for: one of the event's known fields, `event` (not an object), or else an
/// unknown key, counted as `unknown_field` so labels stay a fixed set.
pub fn rejected(error: &event_model::EventError) {
    let field = error.field.as_str();
    let reason = if error.older_than_retention {
        "retention"
    } else {
        event_model::event::FIELDS
            .iter()
            .chain(&["event"])
            .find(|k| **k == field)
            .copied()
            .unwrap_or("unknown_field")
    };
    metrics::counter!("eventtracker_ingest_events_rejected_total", "reason" => reason).increment(1);
}

pub fn redis_error() {
    metrics::counter!("eventtracker_ingest_redis_errors_total").increment(1);
}

/// Exports the shard counters at 0 from the start, so dashboards and rate() see them before the
/// first failover.
pub fn init_shard_metrics(shards: usize) {
    metrics::counter!("eventtracker_ingest_shard_failovers_total").absolute(0);
    for shard in 0..shards {
        metrics::counter!("eventtracker_ingest_shard_events_total", "shard" => shard.to_string())
            .increment(0);
    }
}

pub fn shard_write(shard: usize, events: usize) {
    metrics::counter!("eventtracker_ingest_shard_events_total", "shard" => shard.to_string())
        .increment(events as u64);
}

pub fn shard_failover() {
    metrics::counter!("eventtracker_ingest_shard_failovers_total").increment(1);
}

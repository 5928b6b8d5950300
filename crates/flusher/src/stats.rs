//! What this flusher did, counted once for the summary log line and `/metrics` (the same
//! counts), shared by the workers of one process; and the queue as last read.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::sink::WritePath;
use crate::telemetry;

/// Counters of what this flusher did, logged periodically (the same counts are on `/metrics`).
#[derive(Debug, Default)]
pub struct Stats {
    pub events_written: AtomicU64,
    pub batches_written: AtomicU64,
    pub dedup_batches: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub claimed: AtomicU64,
    pub backoffs: AtomicU64,
    /// The queue as last read by the gauge task (`service::queue_gauges`), for the summary line.
    pub queue: std::sync::Mutex<redis_queue::QueueState>,
    /// Whether the workers' writes fail, for `/readyz`.
    pub writes: Arc<telemetry::WriteHealth>,
}

impl Stats {
    pub fn written(&self, events: usize, path: WritePath, took: Duration) {
        self.events_written
            .fetch_add(events as u64, Ordering::Relaxed);
        self.batches_written.fetch_add(1, Ordering::Relaxed);
        let label = match path {
            WritePath::Copy => "copy",
            WritePath::Dedup => {
                self.dedup_batches.fetch_add(1, Ordering::Relaxed);
                "dedup"
            }
            WritePath::Guarded => "guarded",
        };
        telemetry::batch_written(events, label, took);
        telemetry::backoff(false);
    }

    pub fn dead(&self, n: usize) {
        self.dead_lettered.fetch_add(n as u64, Ordering::Relaxed);
        telemetry::dead_lettered(n);
    }

    pub fn claimed(&self, n: usize) {
        self.claimed.fetch_add(n as u64, Ordering::Relaxed);
        telemetry::claimed(n);
    }

    pub fn backoff(&self) {
        self.backoffs.fetch_add(1, Ordering::Relaxed);
        telemetry::backoff(true);
    }

    pub fn queue(&self) -> redis_queue::QueueState {
        self.queue.lock().map(|q| *q).unwrap_or_default()
    }

    pub fn summary(&self) -> String {
        format!(
            "written={} batches={} dedup_batches={} dead_lettered={} claimed={} backoffs={}",
            self.events_written.load(Ordering::Relaxed),
            self.batches_written.load(Ordering::Relaxed),
            self.dedup_batches.load(Ordering::Relaxed),
            self.dead_lettered.load(Ordering::Relaxed),
            self.claimed.load(Ordering::Relaxed),
            self.backoffs.load(Ordering::Relaxed),
        )
    }
}

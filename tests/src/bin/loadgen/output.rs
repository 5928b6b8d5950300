//! What each `loadgen` subcommand prints: one line of JSON. Shared with the `bench` binary
//! (`#[path]`-included there), which parses these lines back.

use serde::{Deserialize, Serialize};

/// `loadgen ingest`: posting batches of events for a fixed time.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct IngestOut {
    pub events: u64,
    pub requests: u64,
    pub seconds: f64,
    pub events_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub errors: u64,
    /// Bytes of JSON a event, as sent.
    pub event_bytes: u64,
}

/// `loadgen e2e`: ingest at a paced rate, and how long accepted events took to become rows.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct E2eOut {
    #[serde(flatten)]
    pub ingest: IngestOut,
    /// The rate asked for, events/s.
    pub rate: f64,
    pub track_every: u64,
    /// Batches whose latency was measured.
    pub tracked: usize,
    pub polls: u64,
    pub poll_query_ms_avg: f64,
    pub poll_max_ids: usize,
    /// Tracked batches never seen in PostgreSQL within --wait-secs.
    pub unseen: usize,
    pub e2e_p50_ms: f64,
    pub e2e_p99_ms: f64,
    pub e2e_max_ms: f64,
    /// XLEN of the stream read right after the last request was answered (with --redis-url).
    pub backlog: Option<u64>,
}

/// `loadgen fill`: entries queued straight into the stream.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct FillOut {
    pub events: u64,
    pub seconds: f64,
    pub events_per_sec: f64,
    pub shards: usize,
}

/// `loadgen drain`: how long the flushers took to empty the queue.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct DrainOut {
    pub events: u64,
    /// From the flushers' spawn to the queue found empty, minus `ready_ms`.
    pub seconds: f64,
    pub rows_per_sec: f64,
    /// The largest `ready in N ms` the flushers logged (0 without --flusher-logs).
    pub ready_ms: u64,
    /// From the flushers' spawn to the queue found empty, start-up included.
    pub seconds_from_spawn: f64,
}

/// `loadgen copy`: a binary COPY file loaded in transactions of a fixed row count.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct CopyOut {
    pub rows: u64,
    pub seconds: f64,
    pub rows_per_sec: f64,
}

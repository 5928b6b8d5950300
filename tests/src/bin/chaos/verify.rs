//! The verdict: the pipeline drained (stream empty, nothing pending), then every acknowledged
//! event stored exactly once, no row that was never sent, no dead letter, every fault happened
//! and the flushers noticed PostgreSQL was down. Exits non-zero otherwise.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use et_tests::*;
use uuid::Uuid;

use crate::faults::Faults;
use crate::load::Sent;
use crate::{Opts, Queue};

/// How the drain went: dead letters left, and how long it took.
pub struct Drained {
    pub dead: u64,
    pub took: Duration,
}

/// Waits until every shard's stream is empty and nothing is pending (240 s at most).
pub async fn drain(queue: &Queue, key: &str) -> Drained {
    let start = Instant::now();
    loop {
        let (len, pend, dead) = queue.totals(key).await;
        if len == 0 && pend == 0 {
            return Drained {
                dead,
                took: start.elapsed(),
            };
        }
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "did not drain: stream {len}, pending {pend}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The PostgreSQL errors the running flushers counted.
pub async fn pg_errors_of(flushers: &[Flusher]) -> f64 {
    let mut sum = 0.0;
    for f in flushers {
        sum += flusher_count(f, "postgres_errors").await;
    }
    sum
}

/// The rows against what was sent and acknowledged.
pub struct Outcome {
    pub stored: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub unexpected: usize,
    /// Rows of the faults' probe events (sent outside the load).
    pub probe_rows: usize,
}

pub async fn check(db: &TestDb, sent: &Sent) -> Outcome {
    let client = db.client().await;
    let rows = client
        .query("SELECT event_id FROM events", &[])
        .await
        .unwrap();
    let stored: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
    let stored_set: HashSet<Uuid> = stored.iter().copied().collect();
    let probe_rows: i64 = client
        .query_one("SELECT count(*) FROM events WHERE name = 'probe'", &[])
        .await
        .unwrap()
        .get(0);
    let probe_rows = probe_rows as usize;
    Outcome {
        stored: stored.len() - probe_rows,
        lost: sent.acked.difference(&stored_set).count(),
        duplicated: stored.len() - stored_set.len(),
        unexpected: stored_set
            .iter()
            .filter(|id| !sent.sent.contains(id))
            .count()
            - probe_rows,
        probe_rows,
    }
}

/// Prints the faults and the counts; exits 1 on any failure.
pub fn report(
    opts: &Opts,
    faults: &Faults,
    sent: &Sent,
    load_time: Duration,
    drained: &Drained,
    o: &Outcome,
) {
    println!("faults injected:");
    for f in &faults.log {
        println!("  {f}");
    }
    println!(
        "  flushers saw PostgreSQL down {} times; clients retried {} times",
        faults.pg_errors, sent.retries
    );
    println!(
        "load {:.1}s, drain {:.1}s",
        load_time.as_secs_f64(),
        drained.took.as_secs_f64()
    );
    println!(
        "acked={} stored={} lost={} duplicated={} unexpected={} dead={} (and {} probe events)",
        sent.acked.len(),
        o.stored,
        o.lost,
        o.duplicated,
        o.unexpected,
        drained.dead,
        o.probe_rows,
    );
    let mut failures = Vec::new();
    if sent.acked.len() < opts.events {
        failures.push(format!(
            "only {} of {} events acknowledged",
            sent.acked.len(),
            opts.events
        ));
    }
    if o.lost > 0 || o.duplicated > 0 || o.unexpected > 0 || drained.dead > 0 {
        failures.push("loss, duplicate, unexpected row or dead letter".to_string());
    }
    if !faults.all_done() {
        failures.push("a fault did not happen".to_string());
    }
    if faults.pg_errors == 0.0 {
        failures.push("no flusher noticed PostgreSQL was down".to_string());
    }
    if !failures.is_empty() {
        println!("CHAOS FAILED: {}", failures.join("; "));
        std::process::exit(1);
    }
    println!("chaos passed");
}

//! The poller of `loadgen e2e`: asks PostgreSQL which tracked events are visible.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::Error;
use crate::sender::IngestCtx;

/// What the poller did, for the result line.
#[derive(Default)]
pub struct PollStats {
    pub polls: u64,
    pub query_secs: f64,
    pub max_ids: usize,
}

/// Polls PostgreSQL for the tracked ids until `stop` is set and nothing tracked is left, or
/// `give_up` passes. Each id seen is stamped with the time the answer arrived (an upper bound
/// on when it became visible). The poller must not starve the flushers it measures: it asks
/// about the oldest batches' ids only (at most about `cap`; the stream is drained oldest first,
/// so a younger batch is rarely visible before an older one, and if it is, its latency is
/// overstated, never understated), and it waits at least twice as long as its last query took.
pub async fn poller(
    ctx: Arc<IngestCtx>,
    database_url: String,
    poll: Duration,
    cap: usize,
    stop: Arc<AtomicBool>,
    give_up: Arc<Mutex<Option<Instant>>>,
) -> Result<PollStats, Error> {
    let (client, conn) = tokio_postgres::connect(&database_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    // The events table was just truncated and has no statistics: the planner would pick a
    // sequential scan with a hashed ANY, which re-reads every row at each poll.
    client.batch_execute("SET enable_seqscan = off").await?;
    let stmt = client
        .prepare("SELECT event_id FROM events WHERE event_id = ANY($1)")
        .await?;
    let tracker = ctx.tracker.as_ref().expect("e2e has a tracker");
    let mut st = PollStats::default();
    let mut wait = poll;
    loop {
        tokio::time::sleep(wait).await;
        let ids: Vec<Uuid> = {
            let t = tracker.lock().unwrap();
            if stop.load(Ordering::Relaxed) {
                if t.batches.is_empty() {
                    break;
                }
                if give_up.lock().unwrap().is_some_and(|g| Instant::now() > g) {
                    break;
                }
            }
            t.to_poll(cap)
        };
        if ids.is_empty() {
            wait = poll;
            continue;
        }
        let asked = Instant::now();
        let rows = client.query(&stmt, &[&ids]).await?;
        let at = Instant::now();
        let took = at.duration_since(asked);
        st.polls += 1;
        st.query_secs += took.as_secs_f64();
        st.max_ids = st.max_ids.max(ids.len());
        wait = poll.max(took * 2);
        let mut t = tracker.lock().unwrap();
        for row in rows {
            let id: Uuid = row.get(0);
            t.seen(&id, at);
        }
    }
    Ok(st)
}

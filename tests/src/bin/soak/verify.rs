//! The verdict: the stream drained, every acknowledged event stored exactly once, no dead
//! letter; and on runs of 3 minutes or more, no more than 20 % growth of the RSS or the open
//! descriptors of ingest-api or flusher A between minute 2 and the end. Exits non-zero otherwise.

use std::collections::HashSet;
use std::time::Duration;

use et_tests::*;
use uuid::Uuid;

use crate::load::Sent;
use crate::watch::Watched;
use crate::{KEY, Rig};

/// The rows against what was acknowledged.
pub struct Outcome {
    pub stored: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub dead: u64,
}

/// Waits for the drain, then compares the rows with the acknowledged ids.
pub async fn check(rig: &Rig, sent: &Sent) -> Outcome {
    let mut conn = redis_conn(&rig.redis.url()).await;
    wait_stream_empty(&conn, KEY).await;
    rig.db.wait_rows(sent.acked.len() as i64).await;
    let rows = rig
        .db
        .client()
        .await
        .query("SELECT event_id FROM events", &[])
        .await
        .unwrap();
    let stored: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
    let stored_set: HashSet<Uuid> = stored.iter().copied().collect();
    Outcome {
        stored: stored.len(),
        lost: sent.acked.difference(&stored_set).count(),
        duplicated: stored.len() - stored_set.len(),
        dead: xlen(&mut conn, &format!("{KEY}:dead")).await,
    }
}

/// Prints the kills, the growth and the counts; exits 1 on any failure.
pub fn report(total: Duration, watched: &Watched, sent: &Sent, o: &Outcome) {
    println!(
        "flusher B killed {} times; clients retried {} times",
        watched.kills, sent.retries
    );
    let mut failures = Vec::new();
    if o.lost > 0 || o.duplicated > 0 || o.dead > 0 {
        failures.push(format!(
            "lost {}, duplicated {}, dead {}",
            o.lost, o.duplicated, o.dead
        ));
    }
    if total >= Duration::from_secs(180) {
        failures.extend(growth(watched));
    } else {
        println!("(a run under 3 minutes checks no growth)");
    }
    println!(
        "acked={} stored={} lost={} duplicated={}",
        sent.acked.len(),
        o.stored,
        o.lost,
        o.duplicated
    );
    if !failures.is_empty() {
        println!("SOAK FAILED: {}", failures.join("; "));
        std::process::exit(1);
    }
    println!("soak passed");
}

/// The footprints that grew more than 20 % between minute 2 and the end.
fn growth(watched: &Watched) -> Vec<String> {
    let mut failures = Vec::new();
    let base = watched
        .samples
        .iter()
        .find(|s| s.0 >= Duration::from_secs(120))
        .copied()
        .expect("a sample at minute 2");
    let end = *watched.samples.last().expect("samples");
    let mut grew = |what: &str, before: u64, after: u64| {
        let pct = 100.0 * (after as f64 - before as f64) / before.max(1) as f64;
        println!(
            "{what}: {before} at {:.0}s, {after} at the end ({pct:+.1} %)",
            base.0.as_secs_f64()
        );
        if pct > 20.0 {
            failures.push(format!("{what} grew {pct:.1} %"));
        }
    };
    grew("ingest-api RSS KiB", base.1.0, end.1.0);
    grew("ingest-api fds", base.1.1, end.1.1);
    grew("flusher A RSS KiB", base.2.0, end.2.0);
    grew("flusher A fds", base.2.1, end.2.1);
    failures
}

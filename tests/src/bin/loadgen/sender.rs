//! The senders of `loadgen ingest` and `loadgen e2e`: each POSTs batches over its connection,
//! as fast as it can or paced.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use time::OffsetDateTime;

use crate::events::EventGen;
use crate::tracker::Tracker;

pub struct IngestCtx {
    pub client: reqwest::Client,
    pub url: String,
    pub auth: String,
    pub events_gen: EventGen,
    pub batch: usize,
    pub rate: Option<f64>,
    pub start: Instant,
    pub end: Instant,
    pub next_batch: AtomicU64,
    pub track_every: u64,
    pub tracker: Option<Mutex<Tracker>>,
}

#[derive(Default)]
pub struct SenderStats {
    pub events: u64,
    pub requests: u64,
    pub errors: u64,
    pub bytes: u64,
    pub latencies_ms: Vec<f64>,
    pub first_error: Option<String>,
}

pub async fn sender(ctx: Arc<IngestCtx>) -> SenderStats {
    let mut st = SenderStats::default();
    let mut ids = Vec::with_capacity(ctx.batch);
    loop {
        let k = ctx.next_batch.fetch_add(1, Ordering::Relaxed);
        match ctx.rate {
            Some(rate) => {
                let due = ctx.start + Duration::from_secs_f64(k as f64 * ctx.batch as f64 / rate);
                if due >= ctx.end {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
            }
            None => {
                if Instant::now() >= ctx.end {
                    break;
                }
            }
        }
        ids.clear();
        let body = ctx
            .events_gen
            .body(ctx.batch, OffsetDateTime::now_utc(), &mut ids);
        st.bytes += body.len() as u64;
        let tracked = ctx
            .tracker
            .as_ref()
            .filter(|_| k.checked_rem(ctx.track_every) == Some(0));
        if let Some(t) = tracked {
            t.lock().unwrap().register(k, &ids);
        }
        let sent = Instant::now();
        let outcome = post(&ctx, body).await;
        let done = Instant::now();
        st.requests += 1;
        match outcome {
            Ok(n) => {
                st.events += n;
                st.latencies_ms
                    .push(done.duration_since(sent).as_secs_f64() * 1e3);
                if let Some(t) = tracked {
                    t.lock().unwrap().acked(k, done);
                }
            }
            Err(e) => {
                st.errors += 1;
                st.first_error.get_or_insert(e);
                if let Some(t) = tracked {
                    t.lock().unwrap().forget(k);
                }
                // Do not spin on a refusing server.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    st
}

/// POSTs one batch; the events accepted (all of them) or what went wrong.
async fn post(ctx: &IngestCtx, body: String) -> Result<u64, String> {
    let res = ctx
        .client
        .post(&ctx.url)
        .header("authorization", &ctx.auth)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = res.status();
    let b = res.bytes().await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&b)));
    }
    serde_json::from_slice::<Value>(&b)
        .ok()
        .and_then(|v| v["accepted"].as_u64())
        .filter(|&n| n == ctx.batch as u64)
        .ok_or_else(|| format!("200 without all accepted: {}", String::from_utf8_lossy(&b)))
}

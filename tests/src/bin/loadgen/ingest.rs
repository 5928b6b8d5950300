//! `loadgen ingest` and `loadgen e2e`.
//!
//! ingest: POSTs batches of unique events to ingest-api for a fixed time (paced with --rate).
//! e2e: the same at a paced rate; a poller asks PostgreSQL which events of a sample of batches
//! (about --track-per-sec batches a second, all their events) are visible; a batch's latency runs
//! from its 200 to the first poll answer showing all its rows.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::Error;
use crate::events::EventGen;
use crate::output::{E2eOut, IngestOut};
use crate::poller::{PollStats, poller};
use crate::queue::{Queue, QueueArgs};
use crate::sender::{IngestCtx, SenderStats, sender};
use crate::stats::{percentile, round1, round3};
use crate::tracker::Tracker;

#[derive(clap::Args, Debug, Clone)]
pub struct IngestArgs {
    /// ingest-api's base URL (or its /v1/events URL).
    #[arg(long)]
    pub url: String,
    /// Bearer token.
    #[arg(long)]
    pub token: String,
    /// Concurrent connections, one sender each.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Events a request.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// How long to send.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Pace the load at this many events/s (required by e2e).
    #[arg(long)]
    pub rate: Option<f64>,
    /// For an https:// URL: trust this PEM CA certificate (only it; verification stays on).
    #[arg(long)]
    pub ca_file: Option<std::path::PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct E2eArgs {
    #[command(flatten)]
    pub load: IngestArgs,
    /// PostgreSQL URL of the database the flushers write to.
    #[arg(long)]
    pub database_url: String,
    /// Least time between two polls.
    #[arg(long, default_value_t = 10)]
    pub poll_ms: u64,
    /// About the most ids a poll asks about.
    #[arg(long, default_value_t = 1000)]
    pub poll_max_ids: usize,
    /// Batches a second to track.
    #[arg(long, default_value_t = 50.0)]
    pub track_per_sec: f64,
    /// After the load, how long to wait for tracked batches to become visible.
    #[arg(long, default_value_t = 30.0)]
    pub wait_secs: f64,
    /// Where ingest-api queues (optional): its length is read when the load stops (`backlog`).
    #[arg(long, requires = "stream_key")]
    pub redis_url: Option<String>,
    #[arg(long)]
    pub stream_key: Option<String>,
}

pub async fn ingest(args: &IngestArgs) -> Result<IngestOut, Error> {
    let ctx = Arc::new(context(args, None).await?);
    let all = send_all(&ctx, args.connections).await?;
    Ok(summary(&ctx, all, args.batch))
}

pub async fn e2e(args: &E2eArgs) -> Result<E2eOut, Error> {
    let rate = args.load.rate.ok_or("e2e: --rate is required")?;
    let track_every = ((rate / args.load.batch as f64) / args.track_per_sec)
        .floor()
        .max(1.0) as u64;
    let ctx = Arc::new(context(&args.load, Some(track_every)).await?);
    let stop = Arc::new(AtomicBool::new(false));
    let give_up = Arc::new(Mutex::new(None));
    let poll = tokio::spawn(poller(
        ctx.clone(),
        args.database_url.clone(),
        Duration::from_millis(args.poll_ms),
        args.poll_max_ids,
        stop.clone(),
        give_up.clone(),
    ));
    let all = send_all(&ctx, args.load.connections).await?;
    let backlog = match &args.redis_url {
        Some(url) => Some(queue_len(url, args.stream_key.as_deref().unwrap_or_default()).await?),
        None => None,
    };
    let ingest = summary(&ctx, all, args.load.batch);
    *give_up.lock().unwrap() = Some(Instant::now() + Duration::from_secs_f64(args.wait_secs));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let polls = poll.await??;
    Ok(e2e_summary(&ctx, ingest, polls, rate, backlog))
}

/// The stream's XLEN, on a connection of its own.
async fn queue_len(redis_url: &str, key: &str) -> Result<u64, Error> {
    let queue = Queue::new(&QueueArgs {
        redis_url: redis_url.to_string(),
        stream_key: key.to_string(),
        redis_cluster: false,
        shards: 1,
    })?;
    let con = queue.connect().await?;
    queue.len(&con).await
}

/// The shared state of the senders, after opening every connection (concurrent GET /healthz),
/// so that connection set-up is not measured. `track_every`: e2e's sampling.
async fn context(args: &IngestArgs, track_every: Option<u64>) -> Result<IngestCtx, Error> {
    if args.rate.is_some_and(|r| r <= 0.0)
        || args.batch == 0
        || args.connections == 0
        || args.seconds <= 0.0
    {
        return Err("--rate, --batch, --connections and --seconds must be positive".into());
    }
    let url = if args.url.ends_with("/v1/events") {
        args.url.clone()
    } else {
        format!("{}/v1/events", args.url.trim_end_matches('/'))
    };
    let mut client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30));
    if let Some(ca) = &args.ca_file {
        let pem = std::fs::read(ca)?;
        client = client
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
    }
    let client = client.build()?;
    let health = format!("{}/healthz", url.trim_end_matches("/v1/events"));
    let warm: Vec<_> = (0..args.connections)
        .map(|_| tokio::spawn(client.get(&health).send()))
        .collect();
    for w in warm {
        w.await??.error_for_status()?;
    }
    let start = Instant::now() + Duration::from_millis(200);
    Ok(IngestCtx {
        client,
        url,
        auth: format!("Bearer {}", args.token),
        events_gen: EventGen::new(),
        batch: args.batch,
        rate: args.rate,
        start,
        end: start + Duration::from_secs_f64(args.seconds),
        next_batch: AtomicU64::new(0),
        track_every: track_every.unwrap_or(1),
        tracker: track_every.map(|_| Mutex::new(Tracker::default())),
    })
}

/// Runs one sender a connection until the end; their figures added up.
async fn send_all(ctx: &Arc<IngestCtx>, connections: usize) -> Result<SenderStats, Error> {
    tokio::time::sleep_until(ctx.start.into()).await;
    let tasks: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(sender(ctx.clone())))
        .collect();
    let mut all = SenderStats::default();
    for t in tasks {
        let s = t.await?;
        all.events += s.events;
        all.requests += s.requests;
        all.errors += s.errors;
        all.bytes += s.bytes;
        all.latencies_ms.extend(s.latencies_ms);
        if all.first_error.is_none() {
            all.first_error = s.first_error;
        }
    }
    Ok(all)
}

fn summary(ctx: &IngestCtx, mut all: SenderStats, batch: usize) -> IngestOut {
    let elapsed = ctx.start.elapsed().as_secs_f64();
    all.latencies_ms.sort_by(f64::total_cmp);
    let lat = &all.latencies_ms;
    if let Some(e) = &all.first_error {
        eprintln!("loadgen: {} failed requests; the first: {e}", all.errors);
    }
    IngestOut {
        events: all.events,
        requests: all.requests,
        seconds: round3(elapsed),
        events_per_sec: round1(all.events as f64 / elapsed),
        p50_ms: round3(percentile(lat, 0.50)),
        p99_ms: round3(percentile(lat, 0.99)),
        max_ms: round3(percentile(lat, 1.0)),
        errors: all.errors,
        event_bytes: all
            .bytes
            .checked_div(all.requests * batch as u64)
            .unwrap_or(0),
    }
}

fn e2e_summary(
    ctx: &IngestCtx,
    ingest: IngestOut,
    polls: PollStats,
    rate: f64,
    backlog: Option<u64>,
) -> E2eOut {
    let t = ctx
        .tracker
        .as_ref()
        .expect("e2e has a tracker")
        .lock()
        .unwrap();
    let mut l = t.latencies_ms.clone();
    l.sort_by(f64::total_cmp);
    E2eOut {
        ingest,
        rate,
        track_every: ctx.track_every,
        tracked: l.len(),
        polls: polls.polls,
        poll_query_ms_avg: round3(polls.query_secs * 1e3 / polls.polls.max(1) as f64),
        poll_max_ids: polls.max_ids,
        unseen: t.batches.len(),
        e2e_p50_ms: round3(percentile(&l, 0.50)),
        e2e_p99_ms: round3(percentile(&l, 0.99)),
        e2e_max_ms: round3(percentile(&l, 1.0)),
        backlog,
    }
}

//! `loadgen`: the load generator and measuring tool behind `scripts/bench`.
//!
//! Every subcommand prints one line of JSON on stdout (its result) and exits non-zero on failure.
//!
//! ```text
//! loadgen ingest --url URL --token T [--connections 32] [--batch 100] [--seconds 10] [--rate EV_PER_S]
//!     POSTs batches of unique events to ingest-api for a fixed time (paced when --rate is given).
//!     {events, requests, seconds, events_per_sec, p50_ms, p99_ms, max_ms, errors, event_bytes}
//! loadgen e2e --url URL --token T --database-url URL --rate EV_PER_S [--seconds 10]
//!             [--connections 32] [--batch 100] [--poll-ms 10] [--poll-max-ids 1000]
//!             [--track-per-sec 50] [--wait-secs 30]
//!     ingest at a paced rate; a poller asks PostgreSQL which events of a sample of batches
//!     (about track-per-sec batches a second, all their events) are visible; a batch's latency
//!     runs from its 200 to the first poll answer showing all its rows.
//!     {…ingest fields…, tracked, e2e_p50_ms, e2e_p99_ms, e2e_max_ms, unseen}
//! loadgen fill --redis-url URL --stream-key K --events N [--connections 8] [--chunk 100]
//!               [--redis-cluster] [--shards 1]
//!     queues N events straight into the stream, `chunk` XADDs per MULTI/EXEC (as ingest-api does).
//!     With --shards N (or --redis-cluster; --redis-url then is a comma-separated seed list) the
//!     queue is the streams `K:{0}` … `K:{N-1}`, as ingest-api and the flusher lay it out: the
//!     events are spread evenly over them, each MULTI/EXEC going to one shard.
//!     {events, seconds, events_per_sec, shards}
//! loadgen drain --redis-url URL --stream-key K --events N [--timeout-secs 300] [--watch-pids P,P]
//!               [--redis-cluster] [--shards 1]
//!     started together with the flushers: polls XLEN (of every shard, summed) until the queue is
//!     empty; fails at once if a watched process (the flushers) exits.
//!     {events, seconds, rows_per_sec, seconds_from_start}
//! loadgen copy --database-url URL --file F [--batch 100] [--table events]
//!     loads a binary COPY file in transactions of `batch` rows over one connection.
//!     {rows, seconds, rows_per_sec}
//! loadgen entry
//!     prints one queue entry's `e` field (an event-sized payload for redis-benchmark), not JSON-wrapped.
//! ```
//!
//! Flags take a value, except the switches (`--redis-cluster`).

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_model::QueuedEvent;
use futures_util::SinkExt;
use redis_queue::{Conn, Connector, Layout};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

type Error = Box<dyn std::error::Error + Send + Sync>;

// ---- arguments --------------------------------------------------------------------------------

struct Args {
    cmd: String,
    flags: HashMap<String, String>,
}

/// Flags without a value; present means "true".
const SWITCHES: &[&str] = &["redis-cluster"];

impl Args {
    fn parse() -> Result<Args, Error> {
        let mut it = std::env::args().skip(1);
        let cmd = it.next().unwrap_or_default();
        let mut flags = HashMap::new();
        while let Some(a) = it.next() {
            let key = a
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {a:?}"))?;
            let value = if SWITCHES.contains(&key) {
                "true".to_string()
            } else {
                it.next().ok_or_else(|| format!("--{key} needs a value"))?
            };
            flags.insert(key.to_string(), value);
        }
        Ok(Args { cmd, flags })
    }

    /// Fails on any flag not in `known`.
    fn only(&self, known: &[&str]) -> Result<(), Error> {
        for k in self.flags.keys() {
            if !known.contains(&k.as_str()) {
                return Err(format!("{}: unknown flag --{k}", self.cmd).into());
            }
        }
        Ok(())
    }

    fn str(&self, key: &str) -> Result<String, Error> {
        self.flags
            .get(key)
            .cloned()
            .ok_or_else(|| format!("{}: --{key} is required", self.cmd).into())
    }

    fn switch(&self, key: &str) -> bool {
        self.flags.contains_key(key)
    }

    fn num<T: std::str::FromStr>(&self, key: &str, default: Option<T>) -> Result<T, Error> {
        match self.flags.get(key) {
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{key}: not a number: {v:?}").into()),
            None => default.ok_or_else(|| format!("{}: --{key} is required", self.cmd).into()),
        }
    }
}

const USAGE: &str = "usage: loadgen ingest|e2e|fill|drain|copy|entry [--flag value]... (see the header of tests/src/bin/loadgen.rs)";

fn main() -> ExitCode {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("loadgen: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async {
        match args.cmd.as_str() {
            "ingest" => ingest(&args, false).await,
            "e2e" => ingest(&args, true).await,
            "fill" => fill(&args).await,
            "drain" => drain(&args).await,
            "copy" => copy(&args).await,
            "entry" => {
                args.only(&[])?;
                let events_gen = EventGen::new();
                print!(
                    "{}",
                    events_gen
                        .queued(events_gen.ids.next(), OffsetDateTime::now_utc())
                        .encode()
                );
                Ok(Value::Null)
            }
            "-h" | "--help" | "help" => {
                println!("{USAGE}");
                Ok(Value::Null)
            }
            other => Err(format!("unknown subcommand {other:?}\n{USAGE}").into()),
        }
    });
    match result {
        Ok(Value::Null) => ExitCode::SUCCESS,
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen {}: {e}", args.cmd);
            ExitCode::FAILURE
        }
    }
}

// ---- events -----------------------------------------------------------------------------------

/// Unique event ids, cheaply: a random 64-bit prefix per run and a counter, shaped as a UUIDv4.
struct Ids {
    prefix: u64,
    next: AtomicU64,
}

impl Ids {
    fn next(&self) -> Uuid {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.prefix.to_be_bytes());
        b[8..].copy_from_slice(&n.to_be_bytes());
        uuid::Builder::from_random_bytes(b).into_uuid()
    }
}

/// A realistic mix of game/app telemetry events of about 300 bytes each as sent.
struct EventGen {
    ids: Ids,
    /// Per template: (name, device_id, session_id, user_id, properties JSON).
    templates: Vec<[String; 5]>,
    /// Per template: the event's JSON text after its timestamp value (pre-serialised).
    tails: Vec<String>,
}

const NAMES: [&str; 8] = [
    "level_complete",
    "session_start",
    "purchase",
    "ad_impression",
    "achievement_unlocked",
    "settings_changed",
    "frame_stats",
    "match_end",
];

impl EventGen {
    fn new() -> EventGen {
        let prefix = Uuid::new_v4().as_u64_pair().0;
        let templates: Vec<[String; 5]> = (0..64u64)
            .map(|i| {
                let r = prefix.rotate_left(i as u32) ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                [
                    NAMES[i as usize % NAMES.len()].to_string(),
                    format!("dev-{:016x}", r),
                    format!("sess-{:012x}", r >> 16),
                    format!("user-{:06}", r % 1_000_000),
                    format!(
                        r#"{{"level":{},"score":{},"duration_ms":{},"difficulty":"{}","platform":"windows","build":"1.4.2+8841","fps_avg":{}.{}}}"#,
                        r % 90 + 1,
                        r % 100_000,
                        r % 600_000,
                        ["easy", "normal", "hard"][i as usize % 3],
                        r % 120 + 30,
                        r % 10,
                    ),
                ]
            })
            .collect();
        let tails = templates
            .iter()
            .map(|[name, dev, sess, user, props]| {
                format!(
                    r#"","name":"{name}","device_id":"{dev}","session_id":"{sess}","user_id":"{user}","properties":{props}}}"#
                )
            })
            .collect();
        EventGen {
            ids: Ids {
                prefix,
                next: AtomicU64::new(0),
            },
            templates,
            tails,
        }
    }

    /// A request body of `n` events with fresh ids, all stamped `now`; also returns the ids.
    fn body(&self, n: usize, now: OffsetDateTime, ids: &mut Vec<Uuid>) -> String {
        let ts = now.format(&Rfc3339).expect("formats");
        let mut body = String::with_capacity(64 + n * 360);
        body.push_str(r#"{"sent_at":""#);
        body.push_str(&ts);
        body.push_str(r#"","events":["#);
        let mut buf = Uuid::encode_buffer();
        for i in 0..n {
            let id = self.ids.next();
            ids.push(id);
            if i > 0 {
                body.push(',');
            }
            body.push_str(r#"{"event_id":""#);
            body.push_str(id.hyphenated().encode_lower(&mut buf));
            body.push_str(r#"","timestamp":""#);
            body.push_str(&ts);
            body.push_str(&self.tails[(id.as_u64_pair().1 as usize) % self.tails.len()]);
        }
        body.push_str("]}");
        body
    }

    /// The queue entry ingest-api would write for one such event.
    fn queued(&self, id: Uuid, now: OffsetDateTime) -> QueuedEvent {
        let [name, dev, sess, user, props] =
            &self.templates[(id.as_u64_pair().1 as usize) % self.templates.len()];
        QueuedEvent {
            time: now,
            event_id: id,
            name: name.clone(),
            source: "bench".into(),
            device_id: Some(dev.clone()),
            session_id: Some(sess.clone()),
            user_id: Some(user.clone()),
            properties: RawValue::from_string(props.clone()).expect("valid JSON"),
            sent_at: Some(now),
            received_at: now,
        }
    }
}

// ---- statistics -------------------------------------------------------------------------------

/// The p-th percentile (nearest rank) of sorted values, or 0 when there are none.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

// ---- ingest / e2e -----------------------------------------------------------------------------

/// Batches whose visibility in PostgreSQL is being watched (a sample, to keep polling cheap).
#[derive(Default)]
struct Tracker {
    /// Event id → batch number, for the ids not yet seen.
    pending: HashMap<Uuid, u64>,
    /// By batch number, i.e. oldest first.
    batches: BTreeMap<u64, Tracked>,
    latencies_ms: Vec<f64>,
}

struct Tracked {
    /// The ids not yet seen.
    ids: Vec<Uuid>,
    acked: Option<Instant>,
    seen: Option<Instant>,
}

impl Tracker {
    fn register(&mut self, batch: u64, ids: &[Uuid]) {
        for id in ids {
            self.pending.insert(*id, batch);
        }
        self.batches.insert(
            batch,
            Tracked {
                ids: ids.to_vec(),
                acked: None,
                seen: None,
            },
        );
    }

    fn forget(&mut self, batch: u64) {
        if let Some(t) = self.batches.remove(&batch) {
            for id in t.ids {
                self.pending.remove(&id);
            }
        }
    }

    fn acked(&mut self, batch: u64, at: Instant) {
        if let Some(t) = self.batches.get_mut(&batch) {
            t.acked = Some(at);
        }
        self.finish(batch);
    }

    fn seen(&mut self, id: &Uuid, at: Instant) {
        if let Some(batch) = self.pending.remove(id) {
            if let Some(t) = self.batches.get_mut(&batch) {
                t.ids.retain(|i| i != id);
                if t.ids.is_empty() {
                    t.seen = Some(at);
                }
            }
            self.finish(batch);
        }
    }

    fn finish(&mut self, batch: u64) {
        if let Some(Tracked {
            acked: Some(a),
            seen: Some(s),
            ..
        }) = self.batches.get(&batch)
        {
            // Rows visible before the client read its 200 count as 0.
            self.latencies_ms
                .push(s.saturating_duration_since(*a).as_secs_f64() * 1e3);
            self.batches.remove(&batch);
        }
    }

    /// The ids to ask about: every unseen id of the oldest batches, at most about `cap`.
    fn to_poll(&self, cap: usize) -> Vec<Uuid> {
        let mut ids = Vec::new();
        for t in self.batches.values() {
            if ids.len() >= cap {
                break;
            }
            ids.extend_from_slice(&t.ids);
        }
        ids
    }
}

struct IngestCtx {
    client: reqwest::Client,
    url: String,
    auth: String,
    events_gen: EventGen,
    batch: usize,
    rate: Option<f64>,
    start: Instant,
    end: Instant,
    next_batch: AtomicU64,
    track_every: u64,
    tracker: Option<Mutex<Tracker>>,
}

#[derive(Default)]
struct SenderStats {
    events: u64,
    requests: u64,
    errors: u64,
    bytes: u64,
    latencies_ms: Vec<f64>,
    first_error: Option<String>,
}

async fn sender(ctx: Arc<IngestCtx>) -> SenderStats {
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
        let res = ctx
            .client
            .post(&ctx.url)
            .header("authorization", &ctx.auth)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        let outcome: Result<u64, String> = match res {
            Ok(r) => {
                let status = r.status();
                match r.bytes().await {
                    Ok(b) if status == 200 => serde_json::from_slice::<Value>(&b)
                        .ok()
                        .and_then(|v| v["accepted"].as_u64())
                        .filter(|&n| n == ctx.batch as u64)
                        .ok_or_else(|| {
                            format!("200 without all accepted: {}", String::from_utf8_lossy(&b))
                        }),
                    Ok(b) => Err(format!("{status}: {}", String::from_utf8_lossy(&b))),
                    Err(e) => Err(e.to_string()),
                }
            }
            Err(e) => Err(e.to_string()),
        };
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

/// What the poller did, for the result line.
#[derive(Default)]
struct PollStats {
    polls: u64,
    query_secs: f64,
    max_ids: usize,
}

/// Polls PostgreSQL for the tracked ids until `stop` is set and nothing tracked is left, or
/// `give_up` passes. Each id seen is stamped with the time the answer arrived (an upper bound
/// on when it became visible). The poller must not starve the flushers it measures: it asks
/// about the oldest batches' ids only (at most about `cap`; the stream is drained oldest first,
/// so a younger batch is rarely visible before an older one, and if it is, its latency is
/// overstated, never understated), and it waits at least twice as long as its last query took.
async fn poller(
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

async fn ingest(args: &Args, e2e: bool) -> Result<Value, Error> {
    let mut known = vec!["url", "token", "connections", "batch", "seconds", "rate"];
    if e2e {
        known.extend([
            "database-url",
            "poll-ms",
            "poll-max-ids",
            "track-per-sec",
            "wait-secs",
        ]);
    }
    args.only(&known)?;
    let url = args.str("url")?;
    let url = if url.ends_with("/v1/events") {
        url
    } else {
        format!("{}/v1/events", url.trim_end_matches('/'))
    };
    let connections: usize = args.num("connections", Some(32))?;
    let batch: usize = args.num("batch", Some(100))?;
    let seconds: f64 = args.num("seconds", Some(10.0))?;
    let rate: Option<f64> = if e2e {
        Some(args.num("rate", None)?)
    } else {
        args.flags
            .get("rate")
            .map(|_| args.num("rate", None))
            .transpose()?
    };
    if rate.is_some_and(|r| r <= 0.0) || batch == 0 || connections == 0 || seconds <= 0.0 {
        return Err("--rate, --batch, --connections and --seconds must be positive".into());
    }
    let track_every = match rate {
        Some(r) if e2e => {
            let per_sec: f64 = args.num("track-per-sec", Some(50.0))?;
            ((r / batch as f64) / per_sec).floor().max(1.0) as u64
        }
        _ => 1,
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?;
    // Warm up: open every connection first (concurrent GET /healthz), so that connection
    // set-up is not measured.
    let health = format!("{}/healthz", url.trim_end_matches("/v1/events"));
    let warm: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(client.get(&health).send()))
        .collect();
    for w in warm {
        w.await??.error_for_status()?;
    }
    let start = Instant::now() + Duration::from_millis(200);
    let ctx = Arc::new(IngestCtx {
        client,
        url,
        auth: format!("Bearer {}", args.str("token")?),
        events_gen: EventGen::new(),
        batch,
        rate,
        start,
        end: start + Duration::from_secs_f64(seconds),
        next_batch: AtomicU64::new(0),
        track_every,
        tracker: e2e.then(|| Mutex::new(Tracker::default())),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let give_up = Arc::new(Mutex::new(None));
    let poll = if e2e {
        let poll = Duration::from_millis(args.num("poll-ms", Some(10))?);
        Some(tokio::spawn(poller(
            ctx.clone(),
            args.str("database-url")?,
            poll,
            args.num("poll-max-ids", Some(1000))?,
            stop.clone(),
            give_up.clone(),
        )))
    } else {
        None
    };
    tokio::time::sleep_until(start.into()).await;
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
    let elapsed = start.elapsed().as_secs_f64();
    all.latencies_ms.sort_by(f64::total_cmp);
    let lat = &all.latencies_ms;
    let mut out = json!({
        "events": all.events,
        "requests": all.requests,
        "seconds": round3(elapsed),
        "events_per_sec": round1(all.events as f64 / elapsed),
        "p50_ms": round3(percentile(lat, 0.50)),
        "p99_ms": round3(percentile(lat, 0.99)),
        "max_ms": round3(percentile(lat, 1.0)),
        "errors": all.errors,
        "event_bytes": if all.requests > 0 { all.bytes / (all.requests * batch as u64) } else { 0 },
    });
    if let Some(e) = &all.first_error {
        eprintln!("loadgen: {} failed requests; the first: {e}", all.errors);
    }
    if let Some(poll) = poll {
        let wait: f64 = args.num("wait-secs", Some(30.0))?;
        *give_up.lock().unwrap() = Some(Instant::now() + Duration::from_secs_f64(wait));
        stop.store(true, Ordering::Relaxed);
        let polls = poll.await??;
        let t = ctx.tracker.as_ref().unwrap().lock().unwrap();
        let mut l = t.latencies_ms.clone();
        l.sort_by(f64::total_cmp);
        out["rate"] = json!(rate);
        out["track_every"] = json!(track_every);
        out["tracked"] = json!(l.len());
        out["polls"] = json!(polls.polls);
        out["poll_query_ms_avg"] =
            json!(round3(polls.query_secs * 1e3 / polls.polls.max(1) as f64));
        out["poll_max_ids"] = json!(polls.max_ids);
        out["unseen"] = json!(t.batches.len());
        out["e2e_p50_ms"] = json!(round3(percentile(&l, 0.50)));
        out["e2e_p99_ms"] = json!(round3(percentile(&l, 0.99)));
        out["e2e_max_ms"] = json!(round3(percentile(&l, 1.0)));
    }
    Ok(out)
}

// ---- fill / drain -----------------------------------------------------------------------------

/// The queue `fill` and `drain` work on: one stream on one Redis node, or (`--shards N` above 1,
/// or `--redis-cluster`) the streams `<key>:{0}` … `<key>:{N-1}`, laid out and reached as the
/// binaries do (crates/redis-queue).
struct Queue {
    keys: Vec<String>,
    connector: Connector,
}

impl Queue {
    /// From --redis-url, --stream-key, --shards and --redis-cluster.
    fn new(args: &Args) -> Result<Queue, Error> {
        let cluster = args.switch("redis-cluster");
        let layout = Layout::new(
            &args.str("stream-key")?,
            args.num("shards", Some(1))?,
            cluster,
        )?;
        Ok(Queue {
            keys: (0..layout.shards()).map(|n| layout.key(n)).collect(),
            connector: Connector::new(&args.str("redis-url")?, cluster)?,
        })
    }

    async fn connect(&self) -> Result<Conn, Error> {
        let t = Duration::from_secs(30);
        Ok(self.connector.connect(t, t).await?)
    }

    /// The entries queued in all shards together (the shards' XLENs, asked concurrently).
    async fn len(&self, con: &Conn) -> Result<u64, Error> {
        let lens = futures_util::future::try_join_all(self.keys.iter().map(|k| {
            let mut c = con.clone();
            async move { redis::cmd("XLEN").arg(k).query_async::<u64>(&mut c).await }
        }))
        .await?;
        Ok(lens.iter().sum())
    }
}

async fn fill(args: &Args) -> Result<Value, Error> {
    args.only(&[
        "redis-url",
        "stream-key",
        "events",
        "connections",
        "chunk",
        "redis-cluster",
        "shards",
    ])?;
    let queue = Queue::new(args)?;
    let events: usize = args.num("events", None)?;
    let connections: usize = args.num("connections", Some(8))?;
    let chunk: usize = args.num("chunk", Some(100))?.max(1);
    // Encode everything first: what is timed is Redis taking the MULTI/EXEC pipelines.
    // Shard n gets events / shards entries (the first events % shards one more), in pipelines
    // of `chunk` XADDs to that shard alone; the pipelines are sent shard by shard in turn.
    let events_gen = EventGen::new();
    let now = OffsetDateTime::now_utc();
    let shards = queue.keys.len();
    let mut per_shard: Vec<Vec<redis::Pipeline>> = Vec::with_capacity(shards);
    for (n, key) in queue.keys.iter().enumerate() {
        let mut left = events / shards + usize::from(n < events % shards);
        let mut pipes = Vec::with_capacity(left.div_ceil(chunk));
        while left > 0 {
            let k = left.min(chunk);
            left -= k;
            let encoded = (0..k).map(|_| events_gen.queued(events_gen.ids.next(), now).encode());
            pipes.push(redis_queue::append::events(key, encoded));
        }
        per_shard.push(pipes);
    }
    let rounds = per_shard.iter().map(Vec::len).max().unwrap_or(0);
    let mut pipes: Vec<redis::Pipeline> = Vec::with_capacity(events.div_ceil(chunk) + shards);
    let mut its: Vec<_> = per_shard.into_iter().map(Vec::into_iter).collect();
    for _ in 0..rounds {
        pipes.extend(its.iter_mut().filter_map(Iterator::next));
    }
    let pipes = Arc::new(pipes);
    let next = Arc::new(AtomicU64::new(0));
    let mut conns = Vec::new();
    for _ in 0..connections {
        conns.push(queue.connect().await?);
    }
    let start = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut con| {
            let (pipes, next) = (pipes.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(p) = pipes.get(i) else { break };
                    p.query_async::<()>(&mut con).await?;
                }
                Ok::<_, redis::RedisError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(json!({
        "events": events,
        "seconds": round3(secs),
        "events_per_sec": round1(events as f64 / secs),
        "shards": shards,
    }))
}

async fn drain(args: &Args) -> Result<Value, Error> {
    args.only(&[
        "redis-url",
        "stream-key",
        "events",
        "timeout-secs",
        "watch-pids",
        "redis-cluster",
        "shards",
    ])?;
    let launched = Instant::now();
    let watch: Vec<u32> = match args.flags.get("watch-pids") {
        Some(list) => list
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse()
                    .map_err(|_| format!("--watch-pids: not a pid: {p:?}"))
            })
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    let queue = Queue::new(args)?;
    let events: u64 = args.num("events", None)?;
    let timeout = Duration::from_secs_f64(args.num("timeout-secs", Some(300.0))?);
    let con = queue.connect().await?;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    // The clock starts at the first poll that sees the queue shrink (the flushers are up and
    // writing), so start-up is not counted; the rate is what was drained from then on.
    let mut first: Option<(Instant, u64)> = None;
    loop {
        tick.tick().await;
        let len = queue.len(&con).await?;
        let now = Instant::now();
        if len == 0 {
            let (secs, rows) = match first {
                Some((t, n)) if now > t && n > 0 => (now.duration_since(t).as_secs_f64(), n),
                _ => (now.duration_since(launched).as_secs_f64(), events),
            };
            return Ok(json!({
                "events": events,
                "seconds": round3(secs),
                "rows_per_sec": round1(rows as f64 / secs),
                "seconds_from_start": round3(now.duration_since(launched).as_secs_f64()),
            }));
        }
        if first.is_none() && len < events {
            first = Some((now, len));
        }
        if let Some(pid) = watch.iter().find(|&&p| !alive(p)) {
            return Err(format!(
                "process {pid} exited with {len} of {events} entries still queued"
            )
            .into());
        }
        if now.duration_since(launched) > timeout {
            return Err(format!("{len} of {events} entries still queued after {timeout:?}").into());
        }
    }
}

/// Whether a process runs (a zombie, exited but not yet reaped, does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    })
}

// ---- copy -------------------------------------------------------------------------------------

/// Splits a binary COPY file into its header and each tuple's bytes.
fn split_copy_file(data: &[u8]) -> Result<(&[u8], Vec<&[u8]>), Error> {
    const SIG: &[u8] = b"PGCOPY\n\xff\r\n\0";
    let bad = || -> Error { "not a binary COPY file".into() };
    if data.len() < 19 || &data[..11] != SIG {
        return Err(bad());
    }
    let rd32 = |p: usize| -> Result<i32, Error> {
        data.get(p..p + 4)
            .map(|b| i32::from_be_bytes(b.try_into().unwrap()))
            .ok_or_else(bad)
    };
    let header_len = 19 + usize::try_from(rd32(15)?).map_err(|_| bad())?;
    let mut pos = header_len;
    let mut tuples = Vec::new();
    loop {
        let fields = data
            .get(pos..pos + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(bad)?;
        if fields == -1 {
            break;
        }
        let start = pos;
        pos += 2;
        for _ in 0..fields {
            let len = rd32(pos)?;
            pos += 4;
            if len > 0 {
                pos += len as usize;
            }
        }
        if pos > data.len() {
            return Err(bad());
        }
        tuples.push(&data[start..pos]);
    }
    Ok((&data[..header_len], tuples))
}

async fn copy(args: &Args) -> Result<Value, Error> {
    args.only(&["database-url", "file", "batch", "table"])?;
    let data = std::fs::read(args.str("file")?)?;
    let batch: usize = args.num("batch", Some(100))?;
    let table = args.flags.get("table").map_or("events", |s| s.as_str());
    let (header, tuples) = split_copy_file(&data)?;
    let bodies: Vec<Vec<u8>> = tuples
        .chunks(batch.max(1))
        .map(|c| {
            let mut b = header.to_vec();
            for t in c {
                b.extend_from_slice(t);
            }
            b.extend_from_slice(&(-1i16).to_be_bytes());
            b
        })
        .collect();
    let (mut client, conn) =
        tokio_postgres::connect(&args.str("database-url")?, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let sql = format!("COPY {table} FROM STDIN (FORMAT binary)");
    let start = Instant::now();
    for body in bodies {
        let tx = client.transaction().await?;
        let sink = tx.copy_in::<_, Cursor<Vec<u8>>>(&sql).await?;
        futures_util::pin_mut!(sink);
        sink.send(Cursor::new(body)).await?;
        sink.finish().await?;
        tx.commit().await?;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(json!({
        "rows": tuples.len(),
        "seconds": round3(secs),
        "rows_per_sec": round1(tuples.len() as f64 / secs),
    }))
}

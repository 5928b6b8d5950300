//! `scripts/chaos`: a Jepsen-style total-queue check of EventTracker's delivery promise.
//!
//! Starts a private Redis (AOF, `appendfsync always`), a private PostgreSQL + TimescaleDB, one
//! ingest-api and three flushers. Concurrent clients send events with client-chosen `event_id`s,
//! retrying each batch on 503 or a connection error until it is acknowledged. Meanwhile a random
//! flusher is SIGKILLed and restarted every few seconds, Redis is SIGKILLed and restarted once, and
//! PostgreSQL is stopped for 10 s once. Then the pipeline drains and the check runs: every
//! acknowledged event stored exactly once, no row that was never sent, nothing pending.
//! Exits non-zero on any loss, duplicate, unexpected row, or fault that did not happen.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use et_tests::*;
use serde_json::{Value, json};
use uuid::Uuid;

struct Opts {
    events: usize,
    /// The load is spread over this long, so that every fault lands while events flow.
    seconds: u64,
    clients: usize,
    batch: usize,
}

fn parse_args() -> Opts {
    let mut o = Opts {
        events: 50_000,
        seconds: 25,
        clients: 8,
        batch: 50,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = || -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{a} needs a number"))
        };
        match a.as_str() {
            "--events" => o.events = num(),
            "--clients" => o.clients = num(),
            "--batch" => o.batch = num(),
            "--seconds" => o.seconds = num() as u64,
            "-h" | "--help" => {
                println!(
                    "usage: chaos [--events N (50000)] [--seconds S (25)] [--clients N (8)] [--batch N (50)]"
                );
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}"),
        }
    }
    o
}

fn flusher(redis: &str, db: &str, key: &str) -> Flusher {
    Flusher::start(
        redis,
        db,
        key,
        &["--claim-idle-ms", "2000", "--redis-timeout-ms", "1000"],
        &[],
    )
}

#[tokio::main]
async fn main() {
    let opts = parse_args();
    let started = Instant::now();
    let mut redis = RedisServer::start();
    let pg = PgServer::start();
    let db = TestDb::migrated(&pg.admin_url()).await;
    let key = "event_queue".to_string();
    let ingest = Ingest::start(&redis.url(), &key, &["--redis-timeout-ms", "1000"]);
    let mut flushers: Vec<Flusher> = (0..3)
        .map(|_| flusher(&redis.url(), &db.url, &key))
        .collect();
    println!(
        "chaos: {} events, {} clients, batches of {}, 3 flushers, Redis on :{}, PostgreSQL on :{}",
        opts.events, opts.clients, opts.batch, redis.port, pg.port
    );

    // Clients: each batch is retried with the same event_ids until it is acknowledged.
    let sent: Arc<Mutex<HashSet<Uuid>>> = Arc::default();
    let acked: Arc<Mutex<HashSet<Uuid>>> = Arc::default();
    let retries = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let per_client = opts.events.div_ceil(opts.clients);
    let mut clients = Vec::new();
    for c in 0..opts.clients {
        let (url, sent, acked, retries) = (
            ingest.url.clone(),
            sent.clone(),
            acked.clone(),
            retries.clone(),
        );
        let batch = opts.batch;
        let batches = per_client.div_ceil(batch) as u32;
        let pace = Duration::from_secs(opts.seconds) / batches.max(1);
        let load_start = tokio::time::Instant::now();
        clients.push(tokio::spawn(async move {
            let mut sent_batches = 0u32;
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let mut done = 0;
            while done < per_client {
                tokio::time::sleep_until(load_start + pace * sent_batches).await;
                sent_batches += 1;
                let n = batch.min(per_client - done);
                let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
                sent.lock().unwrap().extend(&ids);
                let body: Vec<Value> = ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| {
                        let mut e = event("chaos", c * per_client + done + i);
                        e["event_id"] = json!(id.to_string());
                        e
                    })
                    .collect();
                let body = json!(body).to_string();
                loop {
                    let res = http
                        .post(format!("{url}/v1/events"))
                        .header("Authorization", format!("Bearer {TOKEN}"))
                        .header("Content-Type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    match res {
                        Ok(r) if r.status().as_u16() == 200 => break,
                        Ok(r) if r.status().as_u16() == 503 => {}
                        Ok(r) => panic!("unexpected status {}", r.status()),
                        Err(_) => {}
                    }
                    retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                acked.lock().unwrap().extend(&ids);
                done += n;
            }
        }));
    }

    // Faults, on a schedule that overlaps the load.
    let mut faults: Vec<String> = Vec::new();
    let mut flusher_kills = 0;
    let mut redis_restarted = false;
    let mut pg_down_since: Option<Instant> = None;
    let mut pg_cycle_done = false;
    let mut rng = rand_seed();
    let mut next_kill = Instant::now() + Duration::from_secs(2);
    let mut backoffs = 0usize;
    let noticed = |f: &Flusher| {
        f.proc
            .log_text()
            .matches("writing to PostgreSQL failed")
            .count()
    };
    let fault_start = Instant::now();
    loop {
        let load_done = clients.iter().all(|c| c.is_finished());
        let all_faults = flusher_kills >= 3 && redis_restarted && pg_cycle_done;
        if load_done && all_faults {
            break;
        }
        let t = fault_start.elapsed();
        if Instant::now() >= next_kill && (!load_done || flusher_kills < 3) {
            let i = (next_rand(&mut rng) % flushers.len() as u64) as usize;
            let f = &mut flushers[i];
            let pid = f.proc.pid();
            f.proc.signal("KILL");
            let status = f.proc.wait_exit(Duration::from_secs(10));
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(9), "flusher {pid} died of SIGKILL");
            backoffs += noticed(f);
            flushers[i] = flusher(&redis.url(), &db.url, &key);
            flusher_kills += 1;
            faults.push(format!(
                "{:>5.1}s flusher pid {pid} SIGKILLed and restarted",
                t.as_secs_f64()
            ));
            next_kill = Instant::now() + Duration::from_secs(3);
        }
        if !redis_restarted && t >= Duration::from_secs(4) {
            let before = redis_len(&redis.url(), &key).await;
            redis.kill();
            let refused = post_json(
                &format!("{}/v1/events", ingest.url),
                Some(TOKEN),
                &json!([event("probe", 0)]),
            )
            .await
            .0;
            redis.restart();
            let after = redis_len(&redis.url(), &key).await;
            assert_eq!(refused, 503, "ingest-api saw Redis down");
            faults.push(format!(
                "{:>5.1}s Redis SIGKILLed and restarted (stream length {before} before, {after} after AOF reload; ingest answered {refused} while down)",
                t.as_secs_f64()
            ));
            redis_restarted = true;
        }
        if pg_down_since.is_none() && !pg_cycle_done && t >= Duration::from_secs(6) {
            pg.stop();
            pg_down_since = Some(Instant::now());
            faults.push(format!(
                "{:>5.1}s PostgreSQL stopped (immediate)",
                t.as_secs_f64()
            ));
        }
        if let Some(since) = pg_down_since
            && since.elapsed() >= Duration::from_secs(10)
        {
            pg.start_server();
            pg_down_since = None;
            pg_cycle_done = true;
            faults.push(format!(
                "{:>5.1}s PostgreSQL started again after 10 s",
                t.as_secs_f64()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for c in clients {
        c.await.expect("client task");
    }
    let load_time = started.elapsed();

    // Drain: the stream empty, nothing pending, the row count stable.
    let drain_start = Instant::now();
    let mut r = redis_conn(&redis.url()).await;
    loop {
        let len = xlen(&mut r, &key).await;
        let pend = pending(&mut r, &key, "flushers").await;
        if len == 0 && pend == 0 {
            break;
        }
        assert!(
            drain_start.elapsed() < Duration::from_secs(240),
            "did not drain: stream {len}, pending {pend}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    backoffs += flushers.iter().map(noticed).sum::<usize>();
    for mut f in flushers {
        let _ = f.proc.terminate();
    }

    // Check.
    let client = db.client().await;
    let rows = client
        .query("SELECT event_id FROM events", &[])
        .await
        .unwrap();
    let stored: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
    let stored_set: HashSet<Uuid> = stored.iter().copied().collect();
    let acked = acked.lock().unwrap().clone();
    let sent = sent.lock().unwrap().clone();
    let lost = acked.difference(&stored_set).count();
    let duplicated = stored.len() - stored_set.len();
    let probe_rows: i64 = client
        .query_one("SELECT count(*) FROM events WHERE name = 'probe'", &[])
        .await
        .unwrap()
        .get(0);
    let unexpected =
        stored_set.iter().filter(|id| !sent.contains(id)).count() - probe_rows as usize;
    let dead = xlen(&mut r, &format!("{key}:dead")).await;

    println!("faults injected:");
    for f in &faults {
        println!("  {f}");
    }
    println!(
        "  flushers saw PostgreSQL down {backoffs} times; clients retried {} times",
        retries.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!(
        "load {:.1}s, drain {:.1}s",
        load_time.as_secs_f64(),
        drain_start.elapsed().as_secs_f64()
    );
    println!(
        "acked={} stored={} lost={lost} duplicated={duplicated} unexpected={unexpected} dead={dead}",
        acked.len(),
        stored.len(),
    );
    let mut failures = Vec::new();
    if acked.len() < opts.events {
        failures.push(format!(
            "only {} of {} events acknowledged",
            acked.len(),
            opts.events
        ));
    }
    if lost > 0 || duplicated > 0 || unexpected > 0 || dead > 0 {
        failures.push("loss, duplicate, unexpected row or dead letter".to_string());
    }
    if flusher_kills < 3 || !redis_restarted || !pg_cycle_done {
        failures.push("a fault did not happen".to_string());
    }
    if backoffs == 0 {
        failures.push("no flusher noticed PostgreSQL was down".to_string());
    }
    if !failures.is_empty() {
        println!("CHAOS FAILED: {}", failures.join("; "));
        std::process::exit(1);
    }
    println!("chaos passed");
}

async fn redis_len(url: &str, key: &str) -> u64 {
    let mut c = redis_conn(url).await;
    xlen(&mut c, key).await
}

fn rand_seed() -> u64 {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("chaos seed {seed} (CHAOS_SEED to repeat)");
    seed | 1
}

/// xorshift64: enough randomness to pick a flusher, reproducible from the seed.
fn next_rand(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

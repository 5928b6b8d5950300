//! `scripts/soak`: a long run that looks for slow leaks and for loss under routine faults.
//!
//! A private Redis (AOF `always`) and PostgreSQL + TimescaleDB, one ingest-api and two flushers.
//! First the pipeline's drain rate is measured (a burst of events, ingest to rows); then a load
//! paced at half of it runs for the given time while flusher B is SIGKILLed and restarted every
//! minute (a run under 3 minutes: three times) and flusher A never is. Every 30 s it prints the RSS and open file descriptors of
//! ingest-api and flusher A; at the end `acked=… stored=… lost=… duplicated=…`. Fails on any
//! loss or duplicate, and (runs of 3 minutes or more) if the RSS or the descriptors of either
//! grew more than 20 % between minute 2 and the end.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use et_tests::*;
use uuid::Uuid;

fn parse_args() -> Duration {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut total = Duration::from_secs(600);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = || -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{a} needs a whole number"))
        };
        match a.as_str() {
            "--minutes" => total = Duration::from_secs(60 * num()),
            "--seconds" => total = Duration::from_secs(num()),
            "-h" | "--help" => {
                println!("usage: soak [--minutes M (10) | --seconds S]");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}"),
        }
    }
    total
}

/// (RSS in KiB, open file descriptors) of a process.
type Footprint = (u64, u64);

/// When, and the footprints of ingest-api and flusher A then.
type Sample = (Duration, Footprint, Footprint);

/// The [`Footprint`] of a process.
fn footprint(pid: u32) -> Footprint {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    (rss, fds)
}

/// Posts one batch with these ids until it is acknowledged (503 and connection errors retried).
async fn send_until_acked(http: &reqwest::Client, url: &str, ids: &[Uuid], retries: &AtomicU64) {
    post_until_acked(http, url, &batch_with_ids("soak", 0, ids), retries).await;
}

#[tokio::main]
async fn main() {
    let total = parse_args();
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let db = TestDb::migrated(&pg.admin_url()).await;
    let key = "event_queue";
    let ingest = Ingest::start(&redis.url(), key, &[]);
    let flags = ["--claim-idle-ms", "5000"];
    let flusher_a = Flusher::start(&redis.url(), &db.url, key, &flags, &[]);
    let mut flusher_b = Flusher::start(&redis.url(), &db.url, key, &flags, &[]);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let retries = Arc::new(AtomicU64::new(0));
    let acked: Arc<Mutex<HashSet<Uuid>>> = Arc::default();

    // The drain rate: 20,000 events from 4 clients as fast as they go, until the last row lands.
    let calibrate = 20_000usize;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (http, url, retries, acked) = (
            http.clone(),
            ingest.url.clone(),
            retries.clone(),
            acked.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for _ in 0..calibrate / 4 / 100 {
                let ids: Vec<Uuid> = (0..100).map(|_| Uuid::new_v4()).collect();
                send_until_acked(&http, &url, &ids, &retries).await;
                acked.lock().unwrap().extend(ids);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    db.wait_rows(calibrate as i64).await;
    let drain_rate = calibrate as f64 / started.elapsed().as_secs_f64();
    let rate = drain_rate / 2.0;
    println!(
        "soak: {:.0} s; drain rate {drain_rate:.0} events/s, load paced at {rate:.0} events/s; ingest-api pid {}, flusher A pid {} (never killed), flusher B killed every minute",
        total.as_secs_f64(),
        ingest.proc.pid(),
        flusher_a.proc.pid()
    );

    // The paced load.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (http, url, retries, acked, stop) = (
            http.clone(),
            ingest.url.clone(),
            retries.clone(),
            acked.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let pace = Duration::from_secs_f64(100.0 / rate);
            let start = tokio::time::Instant::now();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep_until(start + pace * n).await;
                n += 1;
                let ids: Vec<Uuid> = (0..100).map(|_| Uuid::new_v4()).collect();
                send_until_acked(&http, &url, &ids, &retries).await;
                acked.lock().unwrap().extend(ids);
            }
        })
    };

    let soak_start = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut next_sample = Duration::ZERO;
    // Every minute; a short run kills it three times.
    let kill_every = Duration::from_secs(60).min(total / 4);
    let mut next_kill = kill_every;
    let mut kills = 0;
    while soak_start.elapsed() < total {
        let t = soak_start.elapsed();
        if t >= next_sample {
            let (i, a) = (
                footprint(ingest.proc.pid()),
                footprint(flusher_a.proc.pid()),
            );
            println!(
                "{:>6.0}s ingest-api rss {} KiB fds {} | flusher A rss {} KiB fds {} | acked {}",
                t.as_secs_f64(),
                i.0,
                i.1,
                a.0,
                a.1,
                acked.lock().unwrap().len()
            );
            samples.push((t, i, a));
            next_sample += Duration::from_secs(30);
        }
        if t >= next_kill {
            flusher_b.proc.signal("KILL");
            flusher_b.proc.wait_exit(Duration::from_secs(10));
            flusher_b = Flusher::start(&redis.url(), &db.url, key, &flags, &[]);
            kills += 1;
            next_kill += kill_every;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let (i, a) = (
        footprint(ingest.proc.pid()),
        footprint(flusher_a.proc.pid()),
    );
    samples.push((soak_start.elapsed(), i, a));

    // Drain and check.
    let mut conn = redis_conn(&redis.url()).await;
    wait_stream_empty(&conn, key).await;
    let acked = acked.lock().unwrap().clone();
    db.wait_rows(acked.len() as i64).await;
    let rows = db
        .client()
        .await
        .query("SELECT event_id FROM events", &[])
        .await
        .unwrap();
    let stored: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
    let stored_set: HashSet<Uuid> = stored.iter().copied().collect();
    let lost = acked.difference(&stored_set).count();
    let duplicated = stored.len() - stored_set.len();
    let dead = xlen(&mut conn, &format!("{key}:dead")).await;
    println!(
        "flusher B killed {kills} times; clients retried {} times",
        retries.load(Ordering::Relaxed)
    );
    let mut failures = Vec::new();
    if lost > 0 || duplicated > 0 || dead > 0 {
        failures.push(format!("lost {lost}, duplicated {duplicated}, dead {dead}"));
    }
    if total >= Duration::from_secs(180) {
        let base = samples
            .iter()
            .find(|s| s.0 >= Duration::from_secs(120))
            .copied()
            .expect("a sample at minute 2");
        let end = *samples.last().expect("samples");
        let grew = |what: &str, before: u64, after: u64, failures: &mut Vec<String>| {
            let pct = 100.0 * (after as f64 - before as f64) / before.max(1) as f64;
            println!(
                "{what}: {before} at {:.0}s, {after} at the end ({pct:+.1} %)",
                base.0.as_secs_f64()
            );
            if pct > 20.0 {
                failures.push(format!("{what} grew {pct:.1} %"));
            }
        };
        grew("ingest-api RSS KiB", base.1.0, end.1.0, &mut failures);
        grew("ingest-api fds", base.1.1, end.1.1, &mut failures);
        grew("flusher A RSS KiB", base.2.0, end.2.0, &mut failures);
        grew("flusher A fds", base.2.1, end.2.1, &mut failures);
    } else {
        println!("(a run under 3 minutes checks no growth)");
    }
    println!(
        "acked={} stored={} lost={lost} duplicated={duplicated}",
        acked.len(),
        stored.len()
    );
    if !failures.is_empty() {
        println!("SOAK FAILED: {}", failures.join("; "));
        std::process::exit(1);
    }
    println!("soak passed");
}

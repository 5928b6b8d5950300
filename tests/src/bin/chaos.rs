//! `scripts/chaos`: a Jepsen-style total-queue check of EventTracker's delivery promise.
//!
//! Starts a private Redis (AOF, `appendfsync always`), a private PostgreSQL + TimescaleDB, one
//! ingest-api and three flushers. Concurrent clients send events with client-chosen `event_id`s,
//! retrying each batch on 503 or a connection error until it is acknowledged. Meanwhile a random
//! flusher is SIGKILLed and restarted every few seconds, Redis is SIGKILLed and restarted once (the
//! flushers paused around it, so the AOF reload is checked to bring back every entry),
//! PostgreSQL is stopped for 10 s once, Redis runs out of memory once (maxmemory lowered under
//! load, then lifted) and PostgreSQL is frozen (SIGSTOP) past the flushers' write timeout once. Then the pipeline drains and the check runs: every
//! acknowledged event stored exactly once, no row that was never sent, nothing pending.
//! Exits non-zero on any loss, duplicate, unexpected row, or fault that did not happen.
//!
//! With `--cluster` the queue is a local 3-master Redis Cluster with 8 shards and two ingest-api
//! processes share the clients; instead of the whole Redis, the cluster node holding the most
//! shards is SIGKILLed and restarted while the load goes on.

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
    cluster: bool,
}

/// Shards of the queue in `--cluster` mode.
const CLUSTER_SHARDS: usize = 8;

/// The queue's Redis: one server, or a cluster.
enum Queue {
    Single(RedisServer),
    Cluster(Box<RedisCluster>),
}

impl Queue {
    fn url(&self) -> String {
        match self {
            Queue::Single(r) => r.url(),
            Queue::Cluster(c) => c.urls(),
        }
    }

    /// Flags both binaries need for this queue.
    fn flags(&self) -> Vec<String> {
        match self {
            Queue::Single(_) => Vec::new(),
            Queue::Cluster(_) => vec![
                "--redis-cluster".into(),
                "--shards".into(),
                CLUSTER_SHARDS.to_string(),
            ],
        }
    }

    /// Entries, pending entries and dead letters, all shards together.
    async fn totals(&self, key: &str) -> (u64, u64, u64) {
        match self {
            Queue::Single(r) => {
                let mut c = redis_conn(&r.url()).await;
                (
                    xlen(&mut c, key).await,
                    pending(&mut c, key, "flushers").await,
                    xlen(&mut c, &format!("{key}:dead")).await,
                )
            }
            Queue::Cluster(cl) => {
                let mut c = cluster_conn(&cl.urls()).await;
                shard_totals(&mut c, key, CLUSTER_SHARDS, "flushers").await
            }
        }
    }
}

fn parse_args() -> Opts {
    let mut o = Opts {
        events: 50_000,
        seconds: 25,
        clients: 8,
        batch: 50,
        cluster: false,
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
            "--cluster" => o.cluster = true,
            "-h" | "--help" => {
                println!(
                    "usage: chaos [--events N (50000)] [--seconds S (25)] [--clients N (8)] [--batch N (50)] [--cluster]"
                );
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}"),
        }
    }
    o
}

fn flusher(queue: &Queue, db: &str, key: &str) -> Flusher {
    let mut flags = vec!["--claim-idle-ms", "2000", "--redis-timeout-ms", "1000"];
    let extra = queue.flags();
    flags.extend(extra.iter().map(String::as_str));
    Flusher::start(&queue.url(), db, key, &flags, &[])
}

#[tokio::main]
async fn main() {
    let opts = parse_args();
    let started = Instant::now();
    let mut queue = if opts.cluster {
        Queue::Cluster(Box::new(RedisCluster::start()))
    } else {
        Queue::Single(RedisServer::start())
    };
    let pg = PgServer::start();
    let db = TestDb::migrated(&pg.admin_url()).await;
    let key = "event_queue".to_string();
    let ingest_flags = {
        let mut f = vec!["--redis-timeout-ms".to_string(), "1000".to_string()];
        f.extend(queue.flags());
        f
    };
    let ingest_flags: Vec<&str> = ingest_flags.iter().map(String::as_str).collect();
    let ingests: Vec<Ingest> = (0..if opts.cluster { 2 } else { 1 })
        .map(|_| Ingest::start(&queue.url(), &key, &ingest_flags))
        .collect();
    let mut flushers: Vec<Flusher> = (0..3).map(|_| flusher(&queue, &db.url, &key)).collect();
    println!(
        "chaos: {} events, {} clients, batches of {}, {} ingest-api, 3 flushers, {}, PostgreSQL on :{}",
        opts.events,
        opts.clients,
        opts.batch,
        ingests.len(),
        match &queue {
            Queue::Single(r) => format!("Redis on :{}", r.port),
            Queue::Cluster(c) => format!(
                "Redis Cluster on :{:?} with {CLUSTER_SHARDS} shards",
                c.ports()
            ),
        },
        pg.port
    );

    // Clients: each batch is retried with the same event_ids until it is acknowledged.
    let sent: Arc<Mutex<HashSet<Uuid>>> = Arc::default();
    let acked: Arc<Mutex<HashSet<Uuid>>> = Arc::default();
    let retries = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let per_client = opts.events.div_ceil(opts.clients);
    let mut clients = Vec::new();
    for c in 0..opts.clients {
        let (url, sent, acked, retries) = (
            ingests[c % ingests.len()].url.clone(),
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
                let body = batch_with_ids("chaos", c * per_client + done, &ids);
                post_until_acked(&http, &url, &body, &retries).await;
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
    let mut redis_full_done = false;
    let mut pg_frozen_done = false;
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
        let all_faults = flusher_kills >= 3
            && redis_restarted
            && pg_cycle_done
            && redis_full_done
            && pg_frozen_done;
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
            flushers[i] = flusher(&queue, &db.url, &key);
            flusher_kills += 1;
            faults.push(format!(
                "{:>5.1}s flusher pid {pid} SIGKILLed and restarted",
                t.as_secs_f64()
            ));
            next_kill = Instant::now() + Duration::from_secs(3);
        }
        if !redis_restarted && t >= Duration::from_secs(4) {
            // One event; the status, and whether a 503 came with Retry-After.
            let probe = || async {
                let res = ingests[0].send(&json!([event("probe", 0)])).await;
                let status = res.status().as_u16();
                let retry_after = res.headers().contains_key("retry-after");
                assert!(status != 503 || retry_after, "a 503 without Retry-After");
                status
            };
            match &mut queue {
                Queue::Single(redis) => {
                    // Flushers and ingest-api paused around the crash, so the stream holds
                    // entries when Redis dies and nothing changes them: the AOF reload must
                    // bring back exactly the entries it held (up to the last ID; ingest-api
                    // adds newer ones once it runs again).
                    for f in &flushers {
                        f.proc.signal("STOP");
                    }
                    // The clients go on: wait until the stream holds entries (the flushers
                    // may have drained it just before they stopped).
                    let queued_at = Instant::now();
                    let mut conn = redis_conn(&redis.url()).await;
                    while xlen(&mut conn, &key).await == 0 {
                        assert!(
                            queued_at.elapsed() < Duration::from_secs(30),
                            "nothing was queued with the flushers paused"
                        );
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    drop(conn);
                    for i in &ingests {
                        i.proc.signal("STOP");
                    }
                    let (before, last) = stable_stream(&redis.url(), &key).await;
                    redis.kill();
                    for i in &ingests {
                        i.proc.signal("CONT");
                    }
                    let refused = probe().await;
                    redis.restart();
                    let after = entries_upto(&redis.url(), &key, &last).await;
                    for f in &flushers {
                        f.proc.signal("CONT");
                    }
                    assert_eq!(refused, 503, "ingest-api saw Redis down");
                    assert!(before > 0, "the stream was empty when Redis was killed");
                    assert_eq!(after, before, "the AOF reload lost or added entries");
                    faults.push(format!(
                        "{:>5.1}s Redis SIGKILLed and restarted (stream length {before} before, {after} after AOF reload; ingest answered {refused} while down)",
                        t.as_secs_f64()
                    ));
                }
                Queue::Cluster(cluster) => {
                    // The node holding the most shards.
                    let mut on_node = [0usize; 3];
                    for n in 0..CLUSTER_SHARDS {
                        on_node[cluster.node_for_key(&shard_key(&key, n))] += 1;
                    }
                    let node = (0..3).max_by_key(|&i| on_node[i]).unwrap_or(0);
                    let port = cluster.ports()[node];
                    // Flushers paused for a second, so the node's shards hold entries when it
                    // dies (and some are pending with a flusher): its restart must bring them.
                    for f in &flushers {
                        f.proc.signal("STOP");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let before = node_shard_len(cluster, node, &key);
                    cluster.kill(node);
                    for f in &flushers {
                        f.proc.signal("CONT");
                    }
                    assert!(
                        before > 0,
                        "the node's shards were empty when it was killed"
                    );
                    let ping = std::process::Command::new("redis-cli")
                        .args(["-p", &port.to_string(), "ping"])
                        .output()
                        .map(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
                        .unwrap_or(false);
                    assert!(!ping, "node :{port} still answers after SIGKILL");
                    // While it is down the load goes on; ingest-api writes to the other shards.
                    let mut statuses = Vec::new();
                    for _ in 0..10 {
                        statuses.push(probe().await);
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    let unreachable: f64 =
                        metric(&ingests[0].url, "eventtracker_queue_shards_unreachable").await;
                    cluster.restart(node);
                    let after = node_shard_len(cluster, node, &key);
                    let ok = statuses.iter().filter(|s| **s == 200).count();
                    assert!(
                        statuses.iter().all(|s| *s == 200 || *s == 503),
                        "ingest-api answered {statuses:?} while a node was down"
                    );
                    assert!(
                        ok > 0,
                        "no request was taken while one node of three was down: {statuses:?}"
                    );
                    assert!(
                        unreachable >= 1.0,
                        "ingest-api did not see the node's shards unreachable"
                    );
                    faults.push(format!(
                        "{:>5.1}s cluster node :{port} ({} of {CLUSTER_SHARDS} shards) SIGKILLed for 3 s and restarted (its shards held {before} entries before, {after} after AOF reload; ingest answered {ok}/{} probes 200 while it was down, saw {unreachable} shards unreachable)",
                        t.as_secs_f64(),
                        on_node[node],
                        statuses.len()
                    ));
                }
            }
            redis_restarted = true;
        }
        if !redis_full_done && pg_cycle_done && t >= Duration::from_secs(17) {
            match &queue {
                Queue::Single(redis) => {
                    faults.push(redis_full(redis, &ingests[0], &t).await);
                }
                // A cluster's nodes fill one by one; the single-node phase covers the rules.
                Queue::Cluster(_) => faults.push(format!(
                    "{:>5.1}s (Redis-full phase runs on a single Redis only)",
                    t.as_secs_f64()
                )),
            }
            redis_full_done = true;
        }
        if !pg_frozen_done && redis_full_done && t >= Duration::from_secs(19) {
            let timeouts = |fs: &[Flusher]| {
                fs.iter()
                    .map(|f| f.proc.log_text().matches("--pg-timeout-ms").count())
                    .sum::<usize>()
            };
            let before = timeouts(&flushers);
            pg.freeze();
            let frozen_at = Instant::now();
            while timeouts(&flushers) == before {
                assert!(
                    frozen_at.elapsed() < Duration::from_secs(30),
                    "no flusher timed out while PostgreSQL was frozen"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            pg.thaw();
            faults.push(format!(
                "{:>5.1}s PostgreSQL frozen (SIGSTOP) for {:.1} s; flusher writes timed out {} times",
                t.as_secs_f64(),
                frozen_at.elapsed().as_secs_f64(),
                timeouts(&flushers) - before
            ));
            pg_frozen_done = true;
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
    let mut dead;
    loop {
        let (len, pend, d) = queue.totals(&key).await;
        dead = d;
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
        "acked={} stored={} lost={lost} duplicated={duplicated} unexpected={unexpected} dead={dead} (and {probe_rows} probe events)",
        acked.len(),
        stored.len() - probe_rows as usize,
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
    if flusher_kills < 3
        || !redis_restarted
        || !pg_cycle_done
        || !redis_full_done
        || !pg_frozen_done
    {
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

/// The stream's length and last entry ID once two reads 300 ms apart agree (commands a paused
/// process sent just before it stopped may still be waiting in Redis's socket buffer).
async fn stable_stream(url: &str, key: &str) -> (u64, String) {
    let mut conn = redis_conn(url).await;
    let mut last_seen = None;
    for _ in 0..50 {
        let len = xlen(&mut conn, key).await;
        let last: Vec<(String, redis::Value)> = redis::cmd("XREVRANGE")
            .arg(key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .unwrap();
        let now = (
            len,
            last.first().map(|(id, _)| id.clone()).unwrap_or_default(),
        );
        if last_seen.as_ref() == Some(&now) {
            return now;
        }
        last_seen = Some(now);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("the stream kept changing with every writer paused");
}

/// Entries with an ID up to `last`.
async fn entries_upto(url: &str, key: &str, last: &str) -> u64 {
    let mut conn = redis_conn(url).await;
    let ids: Vec<(String, redis::Value)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg(last)
        .query_async(&mut conn)
        .await
        .unwrap();
    ids.len() as u64
}

/// Redis out of memory under load: maxmemory lowered to 1 byte, far below what Redis holds even
/// empty, so the flushers' draining cannot end it (a limit just under the use did, in a CI run:
/// the flushers freed memory faster than ingest-api looked); a direct write is refused with OOM,
/// ingest-api answers 503 queue_full, then maxmemory is lifted again.
async fn redis_full(redis: &RedisServer, ingest: &Ingest, t: &Duration) -> String {
    let used = redis_memory(redis.port, "used_memory");
    let max = "1".to_string();
    assert_eq!(
        redis_cli_out(redis.port, &["CONFIG", "SET", "maxmemory", &max]),
        "OK"
    );
    let refused = redis_cli_out(redis.port, &["XADD", "chaos-probe", "*", "f", "v"]);
    let full_at = Instant::now();
    let mut answers = Vec::new();
    loop {
        let res = ingest.send(&json!([event("probe", 0)])).await;
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        answers.push(format!("{status} {}", body["error"].as_str().unwrap_or("")));
        if status == 503 && body["error"] == "queue_full" {
            break;
        }
        assert!(
            full_at.elapsed() < Duration::from_secs(10),
            "ingest-api never answered queue_full while Redis was full: {answers:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        redis_cli_out(redis.port, &["CONFIG", "SET", "maxmemory", "0"]),
        "OK"
    );
    assert!(refused.contains("OOM"), "Redis was not full: {refused}");
    format!(
        "{:>5.1}s Redis full (maxmemory {max} < used {used}; a direct XADD got {refused:?}; ingest answered queue_full) for {:.1} s, then maxmemory lifted",
        t.as_secs_f64(),
        full_at.elapsed().as_secs_f64()
    )
}

/// Entries in the shards a cluster node holds, asked of that node alone.
fn node_shard_len(cluster: &RedisCluster, node: usize, key: &str) -> u64 {
    (0..CLUSTER_SHARDS)
        .map(|n| shard_key(key, n))
        .filter(|k| cluster.node_for_key(k) == node)
        .map(|k| {
            let out = std::process::Command::new("redis-cli")
                .args(["-p", &cluster.ports()[node].to_string(), "XLEN", &k])
                .output()
                .expect("redis-cli");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("XLEN {k}: {out:?}"))
        })
        .sum()
}

/// A gauge or counter from a /metrics page (0 when absent).
async fn metric(base: &str, name: &str) -> f64 {
    scrape(base)
        .await
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
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
